//! A real Prometheus server and `promtool` against the gateway and the files under `deploy/`:
//! exact counts through Prometheus's query API, every Grafana panel's PromQL, the rules (loaded
//! by the server and unit-tested by promtool), the example config and the exposition format.
//!
//! These tests need `prometheus` and `promtool` on `PATH`; `scripts/test.sh` installs them.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::{Upstream, gateway, h1_client, json, request, route_request, send, settings};

/// Header by which a test request tells the upstream which status to answer.
const STATUS_HEADER: &str = "x-test-status";
/// Header by which a test request makes the upstream answer late (milliseconds).
const DELAY_HEADER: &str = "x-test-delay-ms";
/// Statuses the catalogue routes get, in turn.
const STATUSES: [u16; 10] = [200, 200, 200, 201, 202, 400, 404, 429, 500, 503];

/// The path of an executable on `PATH`; a missing one fails the test with what to do.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not on PATH. These tests run a real Prometheus: run \
                 scripts/test.sh, which installs Debian's `prometheus` package \
                 (prometheus and promtool), or install it yourself"
            )
        })
}

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn run(command: &mut Command) -> Output {
    command.output().expect("the command runs")
}

fn show(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("acsgate-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `application/x-www-form-urlencoded` value.
fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server on a loopback port scraping one gateway every second, with
/// `deploy/prometheus/rules.yml` loaded. Killed (by PID) when dropped, even on panic.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Prometheus {
    async fn start(target: SocketAddr) -> Prometheus {
        let binary = tool("prometheus");
        let dir = TempDir::new("prometheus");
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: acsgate\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rules = deploy("prometheus/rules.yml").display(),
            ),
        )
        .expect("config written");
        // Free port by binding :0; Prometheus binds it right after.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let log = std::fs::File::create(dir.0.join("prometheus.log")).expect("log file");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let mut prometheus = Prometheus { child, addr, dir };
        prometheus.wait_ready().await;
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("prometheus.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            if let Ok((status, _)) = self.get("/-/ready").await
                && status == StatusCode::OK
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus not ready within 10 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn get(&self, path_and_query: &str) -> Result<(StatusCode, Bytes), String> {
        let request = Request::get(format!("http://{}{path_and_query}", self.addr))
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(5), h1_client().request(request))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, body.to_bytes()))
    }

    /// `GET /api/v1/…`, requiring `"status": "success"`; returns `data`.
    async fn api(&self, path_and_query: &str) -> Value {
        let (status, body) = self
            .get(path_and_query)
            .await
            .unwrap_or_else(|e| panic!("{path_and_query}: {e}"));
        let answer: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{path_and_query}: not JSON ({e})"));
        assert_eq!(
            (status, answer["status"].as_str()),
            (StatusCode::OK, Some("success")),
            "{path_and_query}: {answer}"
        );
        answer["data"].clone()
    }

    /// An instant query; returns the result vector.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let data = self
            .api(&format!("/api/v1/query?query={}", form_encode(expr)))
            .await;
        assert_eq!(data["resultType"], "vector", "{expr}: {data}");
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until a scrape that started after `after` (Unix seconds) has been ingested.
    async fn wait_for_scrape_after(&self, after: f64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let last = self
                // timestamp() of a selector is the scrape's time (of an expression, now's).
                .query(r#"timestamp(up{job="acsgate"}) and up{job="acsgate"} == 1"#)
                .await
                .first()
                .map(sample_value)
                .unwrap_or(f64::NAN);
            if last > after {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no successful scrape after {after} within 10 s (last {last}):\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sample_value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// What was sent: requests by (operation, status code).
type Ledger = BTreeMap<(String, String), u64>;

/// An upstream answering the status a request asks for, after the delay it asks for.
async fn scripted_upstream() -> Upstream {
    Upstream::start(|seen| async move {
        let header = |name: &str| {
            seen.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let Some(ms) = header(DELAY_HEADER) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let status = header(STATUS_HEADER)
            .and_then(|code| StatusCode::from_u16(u16::try_from(code).ok()?).ok())
            .unwrap_or(StatusCode::OK);
        json(status, r#"{"ok":true}"#)
    })
    .await
}

/// One wave of the traffic mix: every catalogue route with a status from [`STATUSES`], a few
/// unknown routes, one upstream timeout (504) and one client abort (499).
async fn drive(proxy: SocketAddr, upstream: &Upstream, ledger: &mut Ledger) {
    let catalogue = support::catalogue();
    let client = h1_client();
    let mut count = |operation: &str, status: &str| {
        *ledger
            .entry((operation.to_owned(), status.to_owned()))
            .or_default() += 1;
    };

    // The slow ones run while the rest is sent.
    let timeout = {
        let client = client.clone();
        let mut req = request(
            Method::GET,
            proxy,
            "/rooms?api-version=2024-04-15",
            Bytes::new(),
        );
        req.headers_mut()
            .insert(DELAY_HEADER, "3000".parse().unwrap());
        tokio::spawn(async move { send(&client, req).await.0.status() })
    };
    let seen_before = upstream.seen().len();
    let abort = tokio::spawn(async move {
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        stream
            .write_all(
                b"GET /routing/jobs/job-1?api-version=2023-11-01 HTTP/1.1\r\nHost: x\r\n\
                  x-test-delay-ms: 3000\r\n\r\n",
            )
            .await
            .unwrap();
        stream
    });
    // Hang up as soon as the aborted request is with the upstream (or the abort is not one),
    // well inside the response timeout, however slow the machine.
    let stream = abort.await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !upstream.seen()[seen_before..]
        .iter()
        .any(|s| s.uri.path() == "/routing/jobs/job-1")
    {
        assert!(tokio::time::Instant::now() < deadline, "abort never sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(stream);
    count("GetJob", "499");

    for (i, route) in catalogue.routes().iter().enumerate() {
        let status = STATUSES[i % STATUSES.len()];
        let mut req = route_request(route, proxy);
        req.headers_mut()
            .insert(STATUS_HEADER, status.to_string().parse().unwrap());
        let uri = req.uri().clone();
        let (response, _) = send(&client, req).await;
        assert_eq!(response.status().as_u16(), status, "{uri}");
        count(
            &catalogue.operation(route.operation).name,
            &status.to_string(),
        );
    }
    for (method, path) in [
        (
            Method::GET,
            "/chat/threads/19:x@thread.v2/unknown?api-version=2024-03-07",
        ),
        (Method::POST, "/sms/nothing?api-version=2026-01-23"),
        (Method::GET, "/nothing/here"),
    ] {
        let mut req = request(method, proxy, path, Bytes::new());
        req.headers_mut()
            .insert(STATUS_HEADER, "404".parse().unwrap());
        assert_eq!(send(&client, req).await.0.status(), StatusCode::NOT_FOUND);
        count("Bad Route", "404");
    }

    assert_eq!(timeout.await.unwrap(), StatusCode::GATEWAY_TIMEOUT);
    count("ListRooms", "504");
}

/// Waits until the gateway has recorded every request of `ledger` (a 499 is recorded a moment
/// after the client hangs up).
async fn all_recorded(admin: SocketAddr, ledger: &Ledger) {
    let sent = ledger.values().sum::<u64>() as f64;
    let metrics =
        support::scrape_until(admin, |m| m.sum("acsgate_requests_total", &[]) == sent).await;
    assert_eq!(metrics.sum("acsgate_requests_total", &[]), sent);
}

/// `sum by (operation, status_code)` of a query result.
fn by_operation_and_status(result: &[Value]) -> Ledger {
    result
        .iter()
        .map(|s| {
            let label = |name: &str| s["metric"][name].as_str().unwrap_or("").to_owned();
            let value = sample_value(s);
            assert!(value.fract() == 0.0 && value >= 0.0, "{s}");
            ((label("operation"), label("status_code")), value as u64)
        })
        .collect()
}

/// Every `expr` of the dashboard's panels (rows included), with its panel title.
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            if panel["type"] != "row" {
                let targets = panel["targets"].as_array().cloned().unwrap_or_default();
                assert!(!targets.is_empty(), "panel {title:?} has no query");
                assert_eq!(
                    panel["datasource"]["uid"], "${datasource}",
                    "panel {title:?} must use the datasource variable"
                );
                for target in targets {
                    let expr = target["expr"].as_str().unwrap_or_default();
                    assert!(!expr.is_empty(), "panel {title:?} has an empty query");
                    out.push((title.clone(), expr.to_owned()));
                }
            }
            walk(
                panel["panels"].as_array().map(Vec::as_slice).unwrap_or(&[]),
                out,
            );
        }
    }
    let mut out = Vec::new();
    walk(dashboard["panels"].as_array().expect("panels"), &mut out);
    out
}

/// Grafana's variables, as the test answers them: every instance, api and operation.
fn substitute(expr: &str) -> String {
    let expr = expr
        .replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("$instance", ".*")
        .replace("$operation", ".*")
        .replace("$api", ".*");
    assert!(!expr.contains('$'), "unsubstituted variable in {expr}");
    expr
}

fn load_dashboard() -> Value {
    let text = std::fs::read_to_string(deploy("grafana/acsgate.json")).expect("dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_exact_counts_and_every_dashboard_query_answers() {
    let upstream = scripted_upstream().await;
    let mut gateway_settings = settings(&upstream.url());
    gateway_settings.response_timeout = Some(Duration::from_secs(2));
    let gw = gateway(gateway_settings).await;
    let prometheus = Prometheus::start(gw.admin_addr()).await;
    prometheus.wait_for_scrape_after(0.0).await;

    // Two waves with a scrape between them, so every series has grown between two samples
    // and rate() has something to say.
    let mut ledger = Ledger::new();
    drive(gw.proxy_addr(), &upstream, &mut ledger).await;
    all_recorded(gw.admin_addr(), &ledger).await;
    prometheus.wait_for_scrape_after(now()).await;
    drive(gw.proxy_addr(), &upstream, &mut ledger).await;
    all_recorded(gw.admin_addr(), &ledger).await;
    prometheus.wait_for_scrape_after(now()).await;

    let counted = by_operation_and_status(
        &prometheus
            .query("sum by (operation, status_code) (acsgate_requests_total)")
            .await,
    );
    assert_eq!(counted, ledger);

    let quantiles = prometheus
        .query(
            "histogram_quantile(0.99, sum by (operation, le) (acsgate_request_duration_seconds_bucket))",
        )
        .await;
    let operations: std::collections::BTreeSet<&str> =
        ledger.keys().map(|(op, _)| op.as_str()).collect();
    assert_eq!(quantiles.len(), operations.len(), "{quantiles:?}");
    for sample in &quantiles {
        let value = sample_value(sample);
        assert!(value.is_finite() && value > 0.0, "{sample}");
        let operation = sample["metric"]["operation"].as_str().unwrap_or("");
        assert!(operations.contains(operation), "{sample}");
    }

    // Every panel of the dashboard answers with data, at least one value finite.
    let dashboard = load_dashboard();
    let queries = panel_queries(&dashboard);
    assert!(queries.len() >= 30, "{} queries", queries.len());
    for (title, expr) in &queries {
        let expr = substitute(expr);
        let result = prometheus.query(&expr).await;
        assert!(
            result.iter().map(sample_value).any(f64::is_finite),
            "panel {title:?}: no data for {expr}: {result:?}"
        );
    }
    // The variables' label_values(selector, label) queries list something.
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        let Some(query) = variable["definition"].as_str() else {
            continue;
        };
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("unexpected variable query {query}"));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        let path = format!(
            "/api/v1/label/{}/values?match[]={}",
            label.trim(),
            form_encode(&substitute(selector))
        );
        let values = prometheus.api(&path).await;
        assert!(
            values.as_array().is_some_and(|v| !v.is_empty()),
            "variable {}: {path}: {values}",
            variable["name"]
        );
    }

    // The server loaded rules.yml and evaluates it without errors.
    let rules = prometheus.api("/api/v1/rules").await;
    let groups = rules["groups"].as_array().expect("rule groups");
    assert_eq!(groups.len(), 3, "{rules}");
    for rule in groups.iter().flat_map(|g| g["rules"].as_array().unwrap()) {
        assert_ne!(rule["health"], "err", "{rule}");
    }
    gw.shutdown().await;
}

#[test]
fn dashboard_has_the_promised_variables_and_panels() {
    let dashboard = load_dashboard();
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(variables, ["datasource", "instance", "api", "operation"]);
    let titles: Vec<String> = panel_queries(&dashboard)
        .into_iter()
        .map(|(title, _)| title)
        .chain(
            dashboard["panels"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["type"] == "row")
                .map(|p| p["title"].as_str().unwrap_or("").to_owned()),
        )
        .collect();
    for wanted in [
        "Requests/s by operation",
        "Status subclass",
        "Error ratio",
        "Bad Route rate",
        "Latency by operation (p50 / p95 / p99)",
        "Latency heatmap",
        "In-flight requests",
        "Upstream error kinds",
        "Client aborts (499)",
        "Top operations",
        "Chat",
        "SMS",
        "Authentication",
        "Call Automation",
        "Job Router",
        "Network Traversal",
        "Rooms",
        "Email",
    ] {
        assert!(
            titles.iter().any(|t| t == wanted),
            "no panel or row {wanted:?}"
        );
    }
}

#[tokio::test]
async fn promtool_accepts_the_metrics_exposition() {
    let upstream = Upstream::ok().await;
    let gw = gateway(settings(&upstream.url())).await;
    let client = h1_client();
    for path in ["/sms?api-version=2021-03-07", "/nothing/here"] {
        send(&client, request(Method::POST, gw.proxy_addr(), path, "{}")).await;
    }
    let metrics = support::scrape(gw.admin_addr()).await;
    assert!(
        metrics
            .text
            .contains("acsgate_request_duration_seconds_bucket")
    );
    promtool_check_metrics(&metrics.text);
    gw.shutdown().await;
}

/// Runs `promtool check metrics` on an exposition and fails the test on any complaint.
fn promtool_check_metrics(text: &str) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("metrics written to promtool");
    let output = child.wait_with_output().expect("promtool finishes");
    assert!(output.status.success(), "{}", show(&output));
}

/// G2: 10,000 requests with seeded random methods and paths (catalogue routes, paths under a
/// known api, and garbage) cannot grow the label sets: `promtool` accepts the exposition,
/// every `operation` value is a catalogue operation, and `acsgate_requests_total` has at most
/// one series per (operation, status code seen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_random_paths_and_methods_keep_the_label_sets_bounded() {
    const TASKS: u64 = 16;
    const PER_TASK: u64 = 625;
    let upstream = scripted_upstream().await;
    let gw = gateway(settings(&upstream.url())).await;
    let proxy = gw.proxy_addr();
    let catalogue = support::catalogue();
    let paths: Vec<String> = catalogue.routes().iter().map(support::route_path).collect();
    let paths = std::sync::Arc::new(paths);
    let client = h1_client();
    let methods = [
        "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND",
    ];
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (client, paths) = (client.clone(), std::sync::Arc::clone(&paths));
            tokio::spawn(async move {
                // xorshift64, seeded per task: the same traffic on every run.
                let mut state = 0x9E37_79B9_7F4A_7C15 ^ (task + 1);
                let mut next = move || {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state
                };
                for _ in 0..PER_TASK {
                    let method = methods[(next() % methods.len() as u64) as usize];
                    let path = match next() % 3 {
                        0 => paths[(next() % paths.len() as u64) as usize].clone(),
                        1 => format!(
                            "/chat/threads/{:x}/x{:x}?api-version=2024-03-07",
                            next(),
                            next()
                        ),
                        _ => format!("/{:x}/{:x}?q={:x}", next(), next() % 1000, next()),
                    };
                    let status = STATUSES[(next() % STATUSES.len() as u64) as usize];
                    let mut req = request(method.parse().unwrap(), proxy, &path, "{}");
                    req.headers_mut()
                        .insert(STATUS_HEADER, status.to_string().parse().unwrap());
                    send(&client, req).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let metrics = support::scrape(gw.admin_addr()).await;
    promtool_check_metrics(&metrics.text);
    let names: std::collections::BTreeSet<&str> = catalogue
        .operations()
        .iter()
        .map(|o| o.name.as_str())
        .collect();
    for sample in &metrics.samples {
        if let Some(operation) = sample.labels.get("operation") {
            assert!(
                names.contains(operation.as_str()),
                "{}: {operation}",
                sample.name
            );
        }
    }
    let requests: Vec<_> = metrics
        .samples
        .iter()
        .filter(|s| s.name == "acsgate_requests_total")
        .collect();
    let statuses: std::collections::BTreeSet<_> = requests
        .iter()
        .filter_map(|s| s.labels.get("status_code"))
        .collect();
    assert!(
        requests.len() <= names.len() * statuses.len(),
        "{} series for {} operations × {} statuses",
        requests.len(),
        names.len(),
        statuses.len()
    );
    assert_eq!(
        metrics.sum("acsgate_requests_total", &[]),
        (TASKS * PER_TASK) as f64
    );
    gw.shutdown().await;
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    let promtool = tool("promtool");
    let check = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(deploy("prometheus/rules.yml")));
    assert!(check.status.success(), "{}", show(&check));
    let test = run(Command::new(&promtool)
        .args(["test", "rules"])
        .arg(deploy("prometheus/rules.test.yml")));
    assert!(test.status.success(), "{}", show(&test));
    assert!(String::from_utf8_lossy(&test.stdout).contains("SUCCESS"));
}

#[test]
fn promtool_accepts_the_example_config() {
    let promtool = tool("promtool");
    let path = deploy("prometheus/prometheus.yml");
    let text = std::fs::read_to_string(&path).expect("prometheus.yml");
    let mut config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("YAML");
    let jobs = config["scrape_configs"]
        .as_sequence_mut()
        .expect("scrape_configs");
    let pods = jobs
        .iter_mut()
        .find(|job| job["kubernetes_sd_configs"].is_sequence())
        .expect("a job with Kubernetes pod discovery");
    assert_eq!(pods["kubernetes_sd_configs"][0]["role"], "pod");

    let full = run(Command::new(&promtool).args(["check", "config"]).arg(&path));
    if full.status.success() {
        return;
    }
    // Debian builds Prometheus without Kubernetes discovery; check everything else.
    assert!(
        show(&full).contains("field kubernetes_sd_configs not found"),
        "{}",
        show(&full)
    );
    pods.as_mapping_mut()
        .expect("job")
        .remove("kubernetes_sd_configs");
    config["rule_files"] = serde_yaml_ng::to_value([deploy("prometheus/rules.yml")]).unwrap();
    let dir = TempDir::new("promcfg");
    let copy = dir.0.join("prometheus.yml");
    std::fs::write(&copy, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    let rest = run(Command::new(&promtool).args(["check", "config"]).arg(&copy));
    assert!(rest.status.success(), "{}", show(&rest));
}
