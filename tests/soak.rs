//! Soak tier (run by `scripts/soak.sh`, never by CI: every test here is `#[ignore]`): the real
//! binary under 10,000 idle connections, an h2load run, and slowhttptest's slowloris (`-H`) and
//! slow-body (`-B`) attacks. Each test prints `soak| <scenario> | <figure> | <value>` lines
//! that the script turns into its summary table; the accounting and streaming soak runs are
//! `tests/accounting.rs` and `tests/streaming.rs` with larger sizes.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tokio::net::TcpStream;
use tokio::process::Command;

use support::faults::{Fault, FaultUpstream, GatewayProcess};
use support::{h1_client, request, scrape, send};

fn report(scenario: &str, figure: &str, value: impl std::fmt::Display) {
    println!("soak| {scenario} | {figure} | {value}");
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn tool(name: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn probe(gw: &GatewayProcess) -> StatusCode {
    send(
        &h1_client(),
        request(Method::GET, gw.proxy, "/rooms?api-version=2024-04-15", ""),
    )
    .await
    .0
    .status()
}

/// E1 at soak size: `ACSGATE_SOAK_IDLE` (10,000) connections that never send a byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak tier"]
async fn soak_idle_connections() {
    let n = env_or("ACSGATE_SOAK_IDLE", 10_000);
    let wait = Duration::from_secs(env_or("ACSGATE_SOAK_IDLE_WAIT_SECS", 12) as u64);
    let upstream = FaultUpstream::fixed(Fault::ok()).await;
    // Above the default cap of 4,096 open connections, which would close the excess at once:
    // this measures what the handshake deadline does to connections that are let in.
    let cap = (n + 100).to_string();
    let gw = GatewayProcess::start(&upstream.url(), &[("ACSGATE_MAX_CONNECTIONS", &cap)]).await;
    assert_eq!(probe(&gw).await, StatusCode::OK);
    let baseline = gw.sample();
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        match TcpStream::connect(gw.proxy).await {
            Ok(c) => conns.push(c),
            Err(e) => {
                report("idle", "connect error", e);
                break;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open = gw.sample();
    let served_while_open = probe(&gw).await;
    tokio::time::sleep(wait).await;
    let closed = conns
        .iter()
        .filter(|c| {
            let mut buf = [0u8; 1];
            !matches!(c.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    let after = gw.sample();
    report("idle", "connections opened", conns.len());
    report("idle", "RSS baseline (KiB)", baseline.rss_kib);
    report("idle", "RSS while open (KiB)", open.rss_kib);
    report(
        "idle",
        "RSS per connection (bytes)",
        (open.rss_kib.saturating_sub(baseline.rss_kib) * 1024) / conns.len().max(1) as u64,
    );
    report("idle", "fds while open", open.fds);
    report("idle", "request while open", served_while_open);
    report(
        "idle",
        &format!("closed by the gateway after {wait:?}"),
        format!("{closed}/{}", conns.len()),
    );
    report("idle", "fds after", after.fds);
    assert_eq!(served_while_open, StatusCode::OK);
}

/// Runs a tool to completion (bounded by `limit`) and returns its stdout.
async fn run(program: &str, args: &[String], limit: Duration) -> String {
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} ran over {limit:?}"))
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// E8: h2load through the gateway; the gateway must count exactly what h2load saw succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak tier"]
async fn soak_h2load() {
    if !tool("h2load") {
        report("h2load", "skipped", "h2load not installed");
        return;
    }
    let n = env_or("ACSGATE_SOAK_H2LOAD_REQUESTS", 100_000);
    let upstream = FaultUpstream::fixed(Fault::ok()).await;
    let gw = GatewayProcess::start(&upstream.url(), &[]).await;
    let before = scrape(gw.admin).await;
    let url = format!("http://{}/rooms?api-version=2024-04-15", gw.proxy);
    let args: Vec<String> = ["-n", &n.to_string(), "-c", "32", "-m", "10", &url]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let cpu_before = gw.sample().cpu_ticks;
    let out = run("h2load", &args, Duration::from_secs(600)).await;
    let sample = gw.sample();
    let after = scrape(gw.admin).await;
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or("")
            .trim()
            .to_owned()
    };
    report("h2load", "finished", line("finished in"));
    report("h2load", "requests", line("requests:"));
    report("h2load", "status codes", line("status codes:"));
    report("h2load", "time for request", line("time for request:"));
    let counted =
        after.sum("acsgate_requests_total", &[]) - before.sum("acsgate_requests_total", &[]);
    report("h2load", "counted by the gateway", counted);
    report(
        "h2load",
        "gateway CPU (s)",
        (sample.cpu_ticks - cpu_before) as f64 / 100.0,
    );
    report("h2load", "gateway VmHWM (KiB)", sample.hwm_kib);
}

/// B5 / slowloris: slowhttptest against the binary with a 2 s header timeout.
async fn slowhttptest(mode: &str, scenario: &str) {
    if !tool("slowhttptest") {
        report(scenario, "skipped", "slowhttptest not installed");
        return;
    }
    let upstream = FaultUpstream::fixed(Fault::ok()).await;
    let gw = GatewayProcess::start(&upstream.url(), &[("ACSGATE_HEADER_READ_TIMEOUT", "2s")]).await;
    let url = format!("http://{}/sms?api-version=2021-03-07", gw.proxy);
    let prefix = std::env::temp_dir().join(format!("acsgate-{scenario}-{}", std::process::id()));
    let args: Vec<String> = [
        mode, "-c", "200", "-r", "100", "-i", "3", "-x", "10", "-s", "8192", "-l", "15", "-p", "3",
        "-u", &url, "-g", "-o",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([prefix.display().to_string()])
    .collect();
    let started = Instant::now();
    run("slowhttptest", &args, Duration::from_secs(60)).await;
    let csv = std::fs::read_to_string(prefix.with_extension("csv")).unwrap_or_default();
    let _ = std::fs::remove_file(prefix.with_extension("csv"));
    let _ = std::fs::remove_file(prefix.with_extension("html"));
    // Columns: Seconds, Closed, Pending, Connected, Service Available.
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let column = |row: &Vec<&str>, i: usize| -> usize {
        row.get(i).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    let peak = rows.iter().map(|r| column(r, 3)).max().unwrap_or(0);
    let last = rows.last();
    let unavailable = rows.iter().filter(|r| column(r, 4) == 0).count();
    report(scenario, "peak connections open", peak);
    report(
        scenario,
        "connections open at the last second",
        last.map_or("?".to_owned(), |r| {
            format!("{} (t = {} s)", column(r, 3), column(r, 0))
        }),
    );
    report(
        scenario,
        "connections closed by the gateway",
        last.map_or(0, |r| column(r, 1)),
    );
    report(
        scenario,
        "seconds the probe found the service unavailable",
        unavailable,
    );
    report(scenario, "run time (s)", started.elapsed().as_secs());
    report(scenario, "probe after", probe(&gw).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak tier"]
async fn soak_slowloris() {
    slowhttptest("-H", "slowloris (-H)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak tier"]
async fn soak_slow_body() {
    slowhttptest("-B", "slow body (-B)").await;
}
