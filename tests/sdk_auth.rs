//! ACS SDKs through the gateway with access keys: the client signs for the gateway with the
//! local key, the gateway verifies and re-signs for the upstream, and an upstream that checks
//! signatures with the resource key (as ACS does) accepts the result.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, StatusCode};

use acsgate::auth::Secret;
use acsgate::config::Settings;
use acsgate::error::ERROR_HEADER;
use acsgate::server::Gateway;
use support::acs_hmac::{self, BEARER, local_key, resource_key, verifying_upstream};
use support::{
    Seen, Upstream, body_for, gateway, h1_client, h2_client, json, request, route_path, scrape,
    send, settings,
};

/// Settings with both keys, as the environment would give them.
fn keyed(upstream: &Upstream) -> Settings {
    let mut s = settings(&upstream.url());
    s.upstream_access_key = Some(Secret::new(resource_key()));
    s.caller_access_key = Some(Secret::new(local_key()));
    s
}

async fn start(
    answer: fn(&Seen) -> http::Response<http_body_util::Full<Bytes>>,
) -> (Upstream, Gateway) {
    let upstream = verifying_upstream(answer).await;
    let gw = gateway(keyed(&upstream)).await;
    (upstream, gw)
}

fn ok(_: &Seen) -> http::Response<http_body_util::Full<Bytes>> {
    json(StatusCode::OK, r#"{"ok":true}"#)
}

const SEND: &str = "/emails:send?api-version=2023-03-31";

#[tokio::test]
async fn every_catalogue_operation_succeeds_signed_with_the_local_key() {
    let (upstream, gw) = start(ok).await;
    let catalogue = support::catalogue();
    let mut expected: BTreeMap<String, f64> = BTreeMap::new();
    for client in [h1_client(), h2_client()] {
        for route in catalogue.routes() {
            let path = route_path(route);
            let body = body_for(&route.method, &route.template);
            let mut req = request(route.method.clone(), gw.proxy_addr(), &path, body.clone());
            acs_hmac::sign(&mut req, &local_key(), &body, SystemTime::now());
            let (response, reply) = send(&client, req).await;
            assert_eq!(
                response.status(),
                StatusCode::OK,
                "{} {path}: {reply:?}",
                route.method
            );
            *expected
                .entry(catalogue.operation(route.operation).name.clone())
                .or_default() += 1.0;
        }
    }
    // Re-signed for the upstream: the caller's signature never went through.
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2 * catalogue.routes().len());
    assert!(
        seen.iter()
            .all(|s| acs_hmac::verify(s, &local_key()).is_err())
    );
    let metrics = scrape(gw.admin_addr()).await;
    for (operation, count) in &expected {
        assert_eq!(
            metrics.sum(
                "acsgate_requests_total",
                &[("operation", operation), ("status_code", "200")]
            ),
            *count,
            "{operation}"
        );
    }
    assert_eq!(metrics.sum("acsgate_gateway_errors_total", &[]), 0.0);
}

#[tokio::test]
async fn refused_signatures_get_401_at_the_gateway_and_never_reach_the_upstream() {
    let (upstream, gw) = start(ok).await;
    let body = Bytes::from_static(br#"{"recipients":{"to":[]}}"#);
    let now = SystemTime::now();
    let stale = now - Duration::from_secs(20 * 60);
    let future = now + Duration::from_secs(20 * 60);
    let other_key = acs_hmac::resource_key();
    let cases: [(&str, &str, &[u8], SystemTime); 4] = [
        ("wrong local key", &other_key, &body, now),
        (
            "tampered body",
            &local_key(),
            br#"{"recipients":{"to":["x"]}}"#,
            now,
        ),
        ("stale date", &local_key(), &body, stale),
        ("future date", &local_key(), &body, future),
    ];
    let client = h1_client();
    for (name, key, signed_body, date) in cases {
        let mut req = request(Method::POST, gw.proxy_addr(), SEND, body.clone());
        acs_hmac::sign(&mut req, key, signed_body, date);
        let (response, _) = send(&client, req).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(response.headers()[ERROR_HEADER], "auth", "{name}");
    }
    // An HMAC header without a signature.
    let mut req = request(Method::POST, gw.proxy_addr(), SEND, body.clone());
    req.headers_mut().insert(
        "authorization",
        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256"
            .parse()
            .unwrap(),
    );
    let (response, _) = send(&client, req).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        upstream.seen().is_empty(),
        "a refused request was forwarded"
    );
    let metrics = scrape(gw.admin_addr()).await;
    let labels = [("operation", "Email_Send"), ("status_code", "401")];
    assert_eq!(metrics.sum("acsgate_requests_total", &labels), 5.0);
    assert_eq!(
        metrics.sum(
            "acsgate_gateway_errors_total",
            &[("operation", "Email_Send"), ("kind", "auth")]
        ),
        5.0
    );
    assert_eq!(metrics.sum("acsgate_upstream_errors_total", &[]), 0.0);
}

#[tokio::test]
async fn bearer_tokens_pass_through_untouched() {
    let (upstream, gw) = start(ok).await;
    let mut req = request(Method::POST, gw.proxy_addr(), SEND, "{}");
    req.headers_mut()
        .insert("authorization", BEARER.parse().unwrap());
    let (response, _) = send(&h2_client(), req).await;
    assert_eq!(response.status(), StatusCode::OK);
    let seen = upstream.seen();
    assert_eq!(seen[0].headers["authorization"], BEARER);
    assert!(seen[0].headers.get("x-ms-date").is_none());
    assert_eq!(seen[0].body.as_ref(), b"{}");
}

#[tokio::test]
async fn a_signed_body_over_the_limit_gets_413_and_nothing_is_forwarded() {
    let (upstream, gw) = start(ok).await;
    let body = Bytes::from(vec![b'x'; 9 * 1024 * 1024]);
    let mut req = request(Method::POST, gw.proxy_addr(), SEND, body.clone());
    acs_hmac::sign(&mut req, &local_key(), &body, SystemTime::now());
    let (response, _) = send(&h1_client(), req).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.headers()[ERROR_HEADER], "too_large");
    assert!(upstream.seen().is_empty());
    let metrics = scrape(gw.admin_addr()).await;
    assert_eq!(
        metrics.sum(
            "acsgate_requests_total",
            &[("operation", "Email_Send"), ("status_code", "413")]
        ),
        1.0
    );
    assert_eq!(
        metrics.sum("acsgate_gateway_errors_total", &[("kind", "too_large")]),
        1.0
    );
}

#[tokio::test]
async fn a_chunked_signed_body_is_cut_off_at_the_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = verifying_upstream(ok).await;
    let mut s = keyed(&upstream);
    s.max_signed_body = Some(16);
    let gw = gateway(s).await;
    // No Content-Length: the limit can only be seen while reading.
    let mut stream = tokio::net::TcpStream::connect(gw.proxy_addr())
        .await
        .unwrap();
    let head = format!(
        "POST {SEND} HTTP/1.1\r\nhost: {}\r\nauthorization: HMAC-SHA256 \
         SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=AA==\r\n\
         transfer-encoding: chunked\r\n\r\n20\r\n{}\r\n0\r\n\r\n",
        gw.proxy_addr(),
        "x".repeat(32)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn email_send_polling_comes_back_through_the_gateway() {
    let upstream = verifying_upstream(|seen| {
        if seen.method == Method::POST {
            // ACS answers with its own address; the test upstream is on loopback http.
            let host = seen.headers["x-test-upstream"].to_str().unwrap();
            http::Response::builder()
                .status(StatusCode::ACCEPTED)
                .header(
                    "operation-location",
                    format!("http://{host}/emails/operations/op-1?api-version=2023-03-31"),
                )
                .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
                .unwrap()
        } else {
            json(StatusCode::OK, r#"{"status":"Succeeded"}"#)
        }
    })
    .await;
    let gw = gateway(keyed(&upstream)).await;
    let client = h1_client();
    let body = Bytes::from_static(b"{}");
    let mut req = request(Method::POST, gw.proxy_addr(), SEND, body.clone());
    req.headers_mut().insert(
        "x-test-upstream",
        upstream.addr.to_string().parse().unwrap(),
    );
    acs_hmac::sign(&mut req, &local_key(), &body, SystemTime::now());
    let (response, _) = send(&client, req).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let poll = response.headers()["operation-location"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        poll,
        format!(
            "http://{}/emails/operations/op-1?api-version=2023-03-31",
            gw.proxy_addr()
        )
    );
    // The SDK polls where it was told, signing for that address.
    let mut req = http::Request::builder()
        .uri(&poll)
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    acs_hmac::sign(&mut req, &local_key(), b"", SystemTime::now());
    let (response, _) = send(&client, req).await;
    assert_eq!(response.status(), StatusCode::OK);
    let metrics = scrape(gw.admin_addr()).await;
    assert_eq!(
        metrics.sum(
            "acsgate_requests_total",
            &[("operation", "Email_GetSendResult"), ("status_code", "200")]
        ),
        1.0
    );
}

/// Bearer token and query signature carrying canaries, for the log-leak test.
const CANARY_TOKEN: &str = "Bearer CANARY-TOKEN-eyJhbGciOi.x.y";
const CANARY_SIG: &str = "CANARY-SIG-3f9a";

/// H3: with `RUST_LOG=trace`, signed requests (good and bad), a bearer token, a `?sig=` query,
/// a 502 and a 504 leave no key, token or signature in anything the process writes.
#[test]
fn key_material_never_reaches_the_logs() {
    use support::faults::{Fault, FaultUpstream};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let upstream = FaultUpstream::start(|r| match r.header("x-fault") {
            Some("reset") => Fault::ResetAfterRequest,
            Some("hang") => Fault::Hang,
            _ => Fault::ok(),
        })
        .await;
        let log = support::pki::TempFile::new("");
        let out = log.0.with_extension("out");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_acsgate"))
            .args([
                "--log-format",
                "json",
                // The access log is covered too, even with raw paths.
                "--access-log",
                "json",
                "--log-raw-path",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
            ])
            .args(["--upstream", &upstream.url()])
            .env("RUST_LOG", "trace")
            .env("ACSGATE_UPSTREAM_ACCESS_KEY", resource_key())
            .env("ACSGATE_CALLER_ACCESS_KEY", local_key())
            .env("ACSGATE_RESPONSE_TIMEOUT", "300ms")
            .env_remove("ACSGATE_CONFIG")
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&log.0).unwrap())
            .spawn()
            .unwrap();
        let proxy = proxy_addr_from_log(&log.0).await;
        let client = h1_client();
        let mut statuses = Vec::new();
        for key in [local_key(), resource_key()] {
            let body = Bytes::from_static(b"{}");
            let mut req = request(Method::POST, proxy, SEND, body.clone());
            acs_hmac::sign(&mut req, &key, &body, SystemTime::now());
            statuses.push(send(&client, req).await.0.status().as_u16());
        }
        let sms = format!("/sms?api-version=2021-03-07&sig={CANARY_SIG}");
        for fault in ["none", "reset", "hang"] {
            let mut req = request(Method::POST, proxy, &sms, "{}");
            let headers = req.headers_mut();
            headers.insert("authorization", CANARY_TOKEN.parse().unwrap());
            headers.insert("x-fault", fault.parse().unwrap());
            statuses.push(send(&client, req).await.0.status().as_u16());
        }
        // Each request's access line is written just after its response: give them time.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&out).unwrap().lines().count() < statuses.len()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        let access = std::fs::read_to_string(&out).unwrap();
        let logs = std::fs::read_to_string(&log.0).unwrap() + &access;
        let _ = std::fs::remove_file(&out);
        assert_eq!(statuses, [200, 401, 200, 502, 504]);
        assert_eq!(
            upstream.received().len(),
            4,
            "all but the refused one forwarded"
        );
        // The logs are there (trace level, the refusal reason), the secrets are not.
        assert!(logs.contains("caller signature refused"), "{logs}");
        assert_eq!(
            access
                .lines()
                .filter(|l| l.contains("\"operation\""))
                .count(),
            statuses.len(),
            "one access log line per request: {access}"
        );
        for secret in [local_key(), resource_key()] {
            let decoded = String::from_utf8(
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &secret)
                    .unwrap(),
            )
            .unwrap();
            assert!(!logs.contains(&secret), "base64 key in the logs");
            assert!(!logs.contains(&decoded), "raw key in the logs");
        }
        let leaks: Vec<&str> = logs.lines().filter(|l| l.contains("CANARY")).collect();
        assert!(leaks.is_empty(), "secret material in the logs: {leaks:#?}");
    });
}

/// Waits (up to 5 s) for the "acsgate serving" log line and returns its proxy address.
async fn proxy_addr_from_log(path: &std::path::Path) -> std::net::SocketAddr {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let found = text.lines().find_map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).ok()?;
            value["fields"]["proxy_addr"].as_str()?.parse().ok()
        });
        if let Some(addr) = found {
            return addr;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gateway did not start: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
