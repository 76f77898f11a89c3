//! Reliability plan group H: security boundaries. The proxy port never serves the admin
//! endpoints (H1); the gateway's own error answers echo no secret and no upstream address
//! (H4); no setting switches upstream TLS verification off (H5); neither `Host` nor
//! `:authority` can point the gateway at another host (H6); the admin port binds loopback by
//! default (H2).

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;

use acsgate::proxy::BadRoutePolicy;
use support::faults::{Fault, FaultUpstream, GatewayProcess, raw_exchange, refused_addr};
use support::{Upstream, gateway, h1_client, json, request, send, settings};

const CANARY: &str = "CANARY-SECRET-7f3a";

#[tokio::test]
async fn h1_the_proxy_port_never_serves_admin_endpoints() {
    let upstream = FaultUpstream::fixed(Fault::ok()).await;
    let paths = ["/metrics", "/healthz", "/readyz", "/admin/metrics"];
    // Default policy: forwarded upstream as unknown routes, never answered from the registry.
    let gw = gateway(settings(&upstream.url())).await;
    for path in paths {
        let (response, body) = send(
            &h1_client(),
            request(Method::GET, gw.proxy_addr(), path, ""),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert!(!String::from_utf8_lossy(&body).contains("# TYPE"), "{path}");
    }
    assert_eq!(upstream.received().len(), paths.len());
    // `bad_route = "reject"`: 404 at the gateway, still no metrics.
    let mut s = settings(&upstream.url());
    s.bad_route = Some(BadRoutePolicy::Reject);
    let gw = gateway(s).await;
    for path in paths {
        let (response, body) = send(
            &h1_client(),
            request(Method::GET, gw.proxy_addr(), path, ""),
        )
        .await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert!(!String::from_utf8_lossy(&body).contains("# TYPE"), "{path}");
    }
    assert_eq!(upstream.received().len(), paths.len());
}

/// A request that carries the canary in every place a secret travels.
fn secret_request(addr: std::net::SocketAddr) -> Request<Full<Bytes>> {
    Request::post(format!(
        "http://{addr}/sms?api-version=2021-03-07&sig={CANARY}"
    ))
    .header(
        "authorization",
        format!("HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={CANARY}"),
    )
    .header("x-ms-content-sha256", CANARY)
    .body(Full::new(Bytes::from(format!("{{\"key\":\"{CANARY}\"}}"))))
    .unwrap()
}

fn assert_clean(what: &str, head: &http::HeaderMap, body: &[u8], upstream_port: u16) {
    let body = String::from_utf8_lossy(body);
    let head = format!("{head:?}");
    for text in [&*body, &*head] {
        assert!(!text.contains(CANARY), "{what}: canary echoed: {text}");
        assert!(
            !text.contains(&upstream_port.to_string()),
            "{what}: upstream address echoed: {text}"
        );
    }
}

#[tokio::test]
async fn h4_gateway_error_answers_echo_no_secret_and_no_upstream_address() {
    // 502: refused.
    let refused = refused_addr();
    let gw = gateway(settings(&format!("http://{refused}"))).await;
    let (response, body) = send(&h1_client(), secret_request(gw.proxy_addr())).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_clean("502", response.headers(), &body, refused.port());
    // 504: hang.
    let hang = FaultUpstream::fixed(Fault::Hang).await;
    let mut s = settings(&hang.url());
    s.response_timeout = Some(Duration::from_millis(200));
    let gw = gateway(s).await;
    let (response, body) = send(&h1_client(), secret_request(gw.proxy_addr())).await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_clean("504", response.headers(), &body, hang.addr.port());
    // 502: broken upstream response.
    let broken = FaultUpstream::fixed(Fault::BadStatusLine).await;
    let gw = gateway(settings(&broken.url())).await;
    let (response, body) = send(&h1_client(), secret_request(gw.proxy_addr())).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_clean(
        "502 protocol",
        response.headers(),
        &body,
        broken.addr.port(),
    );
    // 400 from the HTTP parser, with the canary in the rejected bytes.
    let input = format!("POST /sms?sig={CANARY} HTTP/1.1\r\nHost: x\r\nX-Key: {CANARY}\0\r\n\r\n");
    let reply = raw_exchange(gw.proxy_addr(), input.as_bytes(), Duration::from_secs(1)).await;
    assert_eq!(reply.statuses(), [400]);
    assert!(!String::from_utf8_lossy(&reply.bytes).contains(CANARY));
}

/// A TLS upstream on `localhost` with a self-signed certificate nobody trusts.
async fn untrusted_tls_upstream() -> Upstream {
    // Signed by a CA nobody is told about.
    let server = support::pki::TestCa::new().leaf().server_config();
    Upstream::start_tls(|_| async { json(StatusCode::OK, "{}") }, server).await
}

#[tokio::test]
async fn h5_no_environment_variable_switches_tls_verification_off() {
    let upstream = untrusted_tls_upstream().await;
    let url = format!("https://localhost:{}", upstream.addr.port());
    // Names an operator might try; none exists, and none may weaken verification.
    let gw = GatewayProcess::start(
        &url,
        &[
            ("ACSGATE_INSECURE", "true"),
            ("ACSGATE_TLS_VERIFY", "false"),
            ("ACSGATE_DANGER_ACCEPT_INVALID_CERTS", "true"),
            ("ACSGATE_INSECURE_SKIP_VERIFY", "1"),
            ("NODE_TLS_REJECT_UNAUTHORIZED", "0"),
            ("CURL_INSECURE", "1"),
        ],
    )
    .await;
    let (response, _) = send(&h1_client(), request(Method::POST, gw.proxy, "/sms", "{}")).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers()["x-acsgate-error"], "tls");
    assert!(
        upstream.seen().is_empty(),
        "no HTTP bytes reached the untrusted upstream"
    );
}

#[test]
fn h5_no_config_key_switches_tls_verification_off() {
    let dir = std::env::temp_dir().join(format!("acsgate-h5-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for key in [
        "insecure = true",
        "tls_verify = false",
        "danger_accept_invalid_certs = true",
    ] {
        let path = dir.join("insecure.toml");
        std::fs::write(
            &path,
            format!("upstream = \"https://example.com\"\n{key}\n"),
        )
        .unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_acsgate"))
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(!output.status.success(), "`{key}` was accepted");
        let key_name = key.split(' ').next().unwrap();
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(key_name),
            "the error names `{key_name}`"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn h6_d8_host_and_authority_cannot_redirect_the_upstream() {
    let upstream = FaultUpstream::fixed(Fault::ok()).await;
    let gw = gateway(settings(&upstream.url())).await;
    let configured = upstream.addr.to_string();
    // HTTP/1.1 Host.
    let reply = raw_exchange(
        gw.proxy_addr(),
        b"GET /rooms?api-version=2024-04-15 HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(reply.statuses(), [200]);
    // h2 :authority.
    let tcp = tokio::net::TcpStream::connect(gw.proxy_addr())
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    // D8: `:authority` and `host` disagree; neither may steer the upstream.
    let request = Request::get("http://evil.example:443/rooms?api-version=2024-04-15")
        .header("host", "other.example")
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), StatusCode::OK);
    let received = upstream.received();
    assert_eq!(received.len(), 2, "both reached the configured upstream");
    for r in received {
        assert_eq!(r.header("host"), Some(configured.as_str()));
        assert!(r.target.starts_with("/rooms"), "origin-form: {}", r.target);
    }
}

/// H2: with no admin address configured, the admin listener binds loopback only, so
/// `/metrics` is never exposed beyond the pod/host by default.
#[tokio::test]
async fn h2_the_default_admin_address_is_loopback() {
    let default: std::net::SocketAddr = acsgate::config::DEFAULT_ADMIN.parse().unwrap();
    assert!(default.ip().is_loopback(), "{default}");
    let upstream = Upstream::ok().await;
    let mut s = settings(&upstream.url());
    s.admin = None;
    let mut config = acsgate::config::Config::from_settings(s).unwrap();
    assert_eq!(config.admin, default);
    // Defaults other than the port, which must be free in a test.
    config.admin.set_port(0);
    let gw = acsgate::server::Gateway::start(&config).await.unwrap();
    assert_eq!(
        gw.admin_addr().ip(),
        std::net::Ipv4Addr::LOCALHOST,
        "admin bound beyond loopback"
    );
    let (response, _) = send(
        &h1_client(),
        request(Method::GET, gw.admin_addr(), "/metrics", ""),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
}
