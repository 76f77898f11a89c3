//! The real `acsgate` binary: commands, configuration errors, serving and SIGTERM.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};

fn acsgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_acsgate"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("ACSGATE_UPSTREAM")
        .env_remove("ACSGATE_CONFIG")
        .output()
        .expect("acsgate runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("acsgate-{}-{name}", std::process::id()));
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .unwrap();
    path
}

#[test]
fn check_config_accepts_the_annotated_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/acsgate.toml");
    let output = acsgate(&["check-config", example]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(": ok ("), "{stdout}");
}

#[test]
fn check_config_names_the_bad_key() {
    let cases = [
        (
            "typo.toml",
            "upstream = \"https://a.b\"\nrespone_timeout = \"1s\"\n",
            "respone_timeout",
        ),
        (
            "type.toml",
            "upstream = \"https://a.b\"\nlisten = 8080\n",
            "listen",
        ),
        (
            "plain.toml",
            "upstream = \"http://acs.example.com\"\n",
            "upstream",
        ),
        (
            "buckets.toml",
            "upstream = \"https://a.b\"\nbuckets = [1, 0.5]\n",
            "buckets",
        ),
        (
            "level.toml",
            "upstream = \"https://a.b\"\nlog_level = \"acsgate=loud\"\n",
            "log_level",
        ),
    ];
    for (name, text, key) in cases {
        let path = temp_file(name, text);
        let output = acsgate(&["check-config", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        assert!(!output.status.success(), "{name} was accepted");
        let err = stderr(&output);
        assert!(
            err.contains(key) && err.starts_with("acsgate: error:"),
            "{name}: {err}"
        );
    }
}

#[test]
fn a_malformed_catalogue_stops_start_up_naming_file_and_line() {
    let catalogue = temp_file(
        "bad-catalogue.toml",
        "[[route]]\napi = \"chat\"\noperation = \"X\"\nmethod = \"GET\"\npath = \"/chat/{a\"\n",
    );
    let output = acsgate(&[
        "check-config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/config/acsgate.toml"),
        "--catalogue",
        catalogue.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&catalogue);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("bad-catalogue.toml:"), "{err}");
}

#[test]
fn no_upstream_is_a_clear_error() {
    let output = acsgate(&["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("--upstream"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn routes_lists_every_operation() {
    let output = acsgate(&["routes"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let catalogue = support::catalogue();
    for route in catalogue.routes() {
        assert!(
            stdout.contains(&route.template),
            "missing {}",
            route.template
        );
    }
    for operation in [
        "SendChatMessage",
        "Create Call",
        "GetQueues",
        "Email_Send",
        "IssueRelayConfiguration",
    ] {
        assert!(stdout.contains(operation), "missing {operation}");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_binary_serves_from_environment_settings_and_exits_0_on_sigterm() {
    let log = serves_and_exits_0_on_sigterm(&[]).await;
    assert!(log.contains("acsgate serving"), "{log}");
}

/// `log_level` (here from the environment) sets the level when `RUST_LOG` is unset.
#[tokio::test]
async fn log_level_warn_leaves_out_the_info_lines() {
    let log = serves_and_exits_0_on_sigterm(&[("ACSGATE_LOG_LEVEL", "warn")]).await;
    assert!(!log.contains("acsgate serving"), "{log}");
}

/// One worker thread takes the current-thread runtime: the same serving and shutdown.
#[tokio::test]
async fn one_worker_thread_serves_and_exits_0_on_sigterm() {
    serves_and_exits_0_on_sigterm(&[("ACSGATE_WORKER_THREADS", "1")]).await;
}

/// Runs the binary, checks it serves and stops cleanly, and returns what it logged.
async fn serves_and_exits_0_on_sigterm(env: &[(&str, &str)]) -> String {
    let upstream = support::Upstream::ok().await;
    let (proxy, admin) = (free_port(), free_port());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_acsgate"))
        .envs(env.iter().copied())
        .env("ACSGATE_UPSTREAM", upstream.url())
        .env("ACSGATE_LISTEN", format!("127.0.0.1:{proxy}"))
        .env("ACSGATE_ADMIN", format!("127.0.0.1:{admin}"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let proxy_addr = format!("127.0.0.1:{proxy}").parse().unwrap();
    let admin_addr = format!("127.0.0.1:{admin}").parse().unwrap();
    // Wait for readiness, as a Kubernetes probe would.
    let client = support::h1_client();
    let start = Instant::now();
    loop {
        let probe = support::request(Method::GET, admin_addr, "/readyz", "");
        let ready = match tokio::time::timeout(Duration::from_secs(1), client.request(probe)).await
        {
            Ok(Ok(response)) => response.status() == StatusCode::OK,
            _ => false,
        };
        if ready {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (response, _) = support::send(
        &client,
        support::request(
            Method::POST,
            proxy_addr,
            "/sms?api-version=2021-03-07",
            "{}",
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let metrics = support::scrape(admin_addr).await;
    assert_eq!(
        metrics.sum("acsgate_requests_total", &[("operation", "SMSMessageSent")]),
        1.0
    );

    let pid = child.id().expect("running") as i32;
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits within the drain deadline")
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    let mut log = String::new();
    let mut stderr = child.stderr.take().expect("piped");
    tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut log)
        .await
        .unwrap();
    log
}
