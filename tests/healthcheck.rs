//! `acsgate healthcheck` against a real gateway's admin listener, as a container runs it.

mod support;

use std::process::Output;

use support::{Upstream, gateway, settings};

async fn healthcheck(admin: &str) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_acsgate"))
        .args(["healthcheck", "--admin", admin])
        .env_remove("ACSGATE_CONFIG")
        .output()
        .await
        .expect("acsgate runs")
}

#[tokio::test]
async fn healthy_gateway_exits_0_and_a_stopped_one_exits_1() {
    let upstream = Upstream::ok().await;
    let gw = gateway(settings(&upstream.url())).await;
    let admin = gw.admin_addr();

    let output = healthcheck(&admin.to_string()).await;
    assert!(output.status.success(), "{output:?}");
    // The address a scraped gateway is configured with is asked on loopback.
    let output = healthcheck(&format!("0.0.0.0:{}", admin.port())).await;
    assert!(output.status.success(), "{output:?}");

    gw.shutdown().await;
    let output = healthcheck(&admin.to_string()).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/healthz"), "{stderr}");
}

#[tokio::test]
async fn the_proxy_port_is_not_healthy() {
    // Asking the wrong listener must fail: the proxy forwards /healthz upstream, which 404s.
    let upstream =
        Upstream::start(|_| async { support::json(http::StatusCode::NOT_FOUND, "{}") }).await;
    let gw = gateway(settings(&upstream.url())).await;
    let output = healthcheck(&gw.proxy_addr().to_string()).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("404"));
    gw.shutdown().await;
}
