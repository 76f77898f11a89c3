//! Reliability plan group A: the upstream misbehaves (refuses, resets, hangs, stalls mid-body,
//! lies about its length, speaks broken HTTP) and the gateway answers for it, counts each
//! request exactly once, and never sends a request body upstream twice.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};

use acsgate::error::ERROR_HEADER;
use support::faults::{BlackHole, Fault, FaultUpstream, refused_addr};
use support::{Metrics, gateway, h1_client, request, scrape, send, settings, upload_then_get};

/// (method, path, operation) for four catalogue operations.
const OPS: [(&str, &str, &str); 4] = [
    (
        "POST",
        "/identities?api-version=2022-06-01",
        "CreateIdentity",
    ),
    ("POST", "/sms?api-version=2021-03-07", "SMSMessageSent"),
    ("POST", "/emails:send?api-version=2023-03-31", "Email_Send"),
    ("GET", "/rooms?api-version=2024-04-15", "ListRooms"),
];

fn count(m: &Metrics, labels: &[(&str, &str)]) -> f64 {
    m.sum("acsgate_requests_total", labels)
}

/// Asserts that each of [`OPS`] was counted `n` times with 5xx `status`, in the counter and
/// in the histogram.
fn each_operation(m: &Metrics, status: &str, n: f64) {
    for (_, _, operation) in OPS {
        let labels = [("operation", operation), ("status_code", status)];
        assert_eq!(count(m, &labels), n, "{operation}");
        let histogram = [("operation", operation), ("status_subclass", "5xx")];
        let observed = m.sum("acsgate_request_duration_seconds_count", &histogram);
        assert_eq!(observed, n, "{operation}");
    }
}

fn errors(m: &Metrics, kind: &str) -> f64 {
    m.sum("acsgate_upstream_errors_total", &[("kind", kind)])
}

/// Sends a request and reads the body to its end or its error: (status, body, body error?).
async fn send_lossy(
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
) -> (StatusCode, Vec<u8>, bool) {
    let response = tokio::time::timeout(
        Duration::from_secs(8),
        h1_client().request(request(method, addr, path, "{}")),
    )
    .await
    .expect("head within 8 s")
    .expect("head arrives");
    let status = response.status();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(8), body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
            Ok(None) => return (status, bytes, false),
            Ok(Some(Err(_))) => return (status, bytes, true),
            Err(_) => panic!("body neither ended nor failed within 8 s"),
        }
    }
}

#[tokio::test]
async fn a1_refused_connections_give_502_connect_counted_once_each() {
    let gw = gateway(settings(&format!("http://{}", refused_addr()))).await;
    let client = h1_client();
    for i in 0..20 {
        let (method, path, _) = OPS[i % 4];
        let started = Instant::now();
        let (response, _) = send(
            &client,
            request(method.parse().unwrap(), gw.proxy_addr(), path, "{}"),
        )
        .await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(response.headers()[ERROR_HEADER], "connect");
        // Refused is immediate: well inside the 5 s default connect timeout.
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    let m = scrape(gw.admin_addr()).await;
    each_operation(&m, "502", 5.0);
    assert_eq!(count(&m, &[]), 20.0);
    assert_eq!(errors(&m, "connect"), 20.0);
}

/// A12: with the breaker on, connect failures in a row open the circuit: 503 `circuit_open`
/// with `Retry-After`, counted as gateway errors and never dialled, until the cooldown ends;
/// then a probe that reaches the restored upstream closes it again.
#[tokio::test]
async fn a12_the_circuit_breaker_fails_fast_while_the_upstream_is_down_and_recovers() {
    let addr = refused_addr();
    let mut s = settings(&format!("http://{addr}"));
    s.circuit_breaker_failures = Some(3);
    s.circuit_breaker_cooldown = Some(Duration::from_millis(500));
    let gw = gateway(s).await;
    let client = h1_client();
    let sms = || {
        request(
            Method::POST,
            gw.proxy_addr(),
            "/sms?api-version=2021-03-07",
            "{}",
        )
    };
    for _ in 0..3 {
        let (response, _) = send(&client, sms()).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(response.headers()[ERROR_HEADER], "connect");
    }
    for _ in 0..5 {
        let (response, _) = send(&client, sms()).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[ERROR_HEADER], "circuit_open");
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "1");
    }
    // The upstream comes back where it was; after the cooldown the probe finds it.
    let upstream = FaultUpstream::start_on(addr, |_| Fault::ok()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..4 {
        let (response, _) = send(&client, sms()).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(
        upstream.received().len(),
        4,
        "nothing else was dialled through"
    );
    let m = scrape(gw.admin_addr()).await;
    assert_eq!(errors(&m, "connect"), 3.0);
    assert_eq!(
        m.sum("acsgate_gateway_errors_total", &[("kind", "circuit_open")]),
        5.0
    );
    assert_eq!(count(&m, &[("status_code", "503")]), 5.0);
    assert_eq!(count(&m, &[("status_code", "200")]), 4.0);
}

#[tokio::test]
async fn a2_unresolvable_upstream_host_gives_502_connect() {
    // `.invalid` never resolves (RFC 6761); the response timeout bounds a slow resolver.
    let mut s = settings("https://acsgate-test.invalid");
    s.response_timeout = Some(Duration::from_secs(5));
    let gw = gateway(s).await;
    let (response, _) = send(
        &h1_client(),
        request(Method::POST, gw.proxy_addr(), OPS[0].1, "{}"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers()[ERROR_HEADER], "connect");
    let m = scrape(gw.admin_addr()).await;
    assert_eq!(count(&m, &[("status_code", "502")]), 1.0);
    assert_eq!(errors(&m, "connect"), 1.0);
}

#[tokio::test]
async fn a4_reset_after_a_post_gives_502_and_is_never_retried() {
    let upstream = FaultUpstream::fixed(Fault::ResetAfterRequest).await;
    let gw = gateway(settings(&upstream.url())).await;
    let client = h1_client();
    for i in 0..5 {
        let (response, _) = send(
            &client,
            request(
                Method::POST,
                gw.proxy_addr(),
                OPS[1].1,
                format!("{{\"n\":{i}}}"),
            ),
        )
        .await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(response.headers()[ERROR_HEADER], "reset");
    }
    // Exactly one upstream send per client request: a POST that reached the upstream is
    // never sent again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(upstream.received().len(), 5);
    let m = scrape(gw.admin_addr()).await;
    assert_eq!(
        count(
            &m,
            &[("operation", "SMSMessageSent"), ("status_code", "502")]
        ),
        5.0
    );
    assert_eq!(errors(&m, "reset"), 5.0);
}

#[tokio::test]
async fn a4_a_pooled_connection_dying_under_a_post_is_not_retried() {
    // The first request leaves a pooled keep-alive connection; the second POST goes out on
    // it and the upstream closes it after reading the head. The pool retries only requests
    // that were never written, so this one must not be resent.
    let upstream = FaultUpstream::start(|r| {
        if r.target.starts_with("/identities") {
            Fault::ok()
        } else {
            Fault::CloseOnAccept
        }
    })
    .await;
    let gw = gateway(settings(&upstream.url())).await;
    let client = h1_client();
    let (first, _) = send(
        &client,
        request(Method::POST, gw.proxy_addr(), OPS[0].1, "{}"),
    )
    .await;
    assert_eq!(first.status(), StatusCode::OK);
    let (second, _) = send(
        &client,
        request(Method::POST, gw.proxy_addr(), OPS[1].1, "{}"),
    )
    .await;
    assert_eq!(second.status(), StatusCode::BAD_GATEWAY);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sms = upstream
        .received()
        .iter()
        .filter(|r| r.target.starts_with("/sms"))
        .count();
    assert_eq!(sms, 1, "the POST reached the upstream once and only once");
    assert_eq!(
        upstream.accepted(),
        1,
        "no second connection was opened to resend it"
    );
}

#[tokio::test]
async fn a5_upstream_hang_gives_504_and_the_upstream_connection_is_closed() {
    let upstream = FaultUpstream::fixed(Fault::Hang).await;
    let mut s = settings(&upstream.url());
    s.response_timeout = Some(Duration::from_millis(500));
    let gw = gateway(s).await;
    let started = Instant::now();
    let (response, _) = send(
        &h1_client(),
        request(Method::GET, gw.proxy_addr(), OPS[3].1, ""),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(response.headers()[ERROR_HEADER], "timeout");
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    // Dropping the response future drops the upstream connection.
    let deadline = Instant::now() + Duration::from_secs(1);
    while upstream.closed_by_peer() < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(upstream.closed_by_peer(), 1);
    let m = scrape(gw.admin_addr()).await;
    assert_eq!(
        count(&m, &[("operation", "ListRooms"), ("status_code", "504")]),
        1.0
    );
    assert_eq!(count(&m, &[]), 1.0);
    assert_eq!(errors(&m, "timeout"), 1.0);
}

#[tokio::test]
async fn a6_body_stalling_mid_way_aborts_the_client_body_counted_once() {
    let upstream = FaultUpstream::fixed(Fault::Stall {
        declared: 1000,
        sent: 100,
    })
    .await;
    let mut s = settings(&upstream.url());
    s.body_idle_timeout = Some(Duration::from_millis(300));
    let gw = gateway(s).await;
    let (status, body, failed) = send_lossy(gw.proxy_addr(), Method::GET, OPS[3].1).await;
    assert_eq!(status, StatusCode::OK);
    assert!(failed, "the client must never see a clean end of body");
    assert!(body.len() < 1000);
    let m = support::scrape_until(gw.admin_addr(), |m| count(m, &[]) >= 1.0).await;
    assert_eq!(
        count(&m, &[("operation", "ListRooms"), ("status_code", "200")]),
        1.0
    );
    assert_eq!(count(&m, &[]), 1.0);
    assert_eq!(errors(&m, "timeout"), 1.0);
    assert_eq!(m.sum("acsgate_requests_in_flight", &[]), 0.0);
}

#[tokio::test]
async fn a7_truncated_body_never_reaches_the_client_as_complete() {
    let upstream = FaultUpstream::fixed(Fault::Truncate {
        declared: 100,
        sent: 50,
    })
    .await;
    let gw = gateway(settings(&upstream.url())).await;
    let (status, body, failed) = send_lossy(gw.proxy_addr(), Method::GET, OPS[3].1).await;
    assert_eq!(status, StatusCode::OK);
    assert!(failed, "a short body must end in an error, not a clean EOF");
    assert!(body.len() < 100);
    let m = support::scrape_until(gw.admin_addr(), |m| count(m, &[]) >= 1.0).await;
    assert_eq!(count(&m, &[("status_code", "200")]), 1.0);
    assert_eq!(count(&m, &[]), 1.0);
    assert_eq!(errors(&m, "reset"), 1.0);
}

#[tokio::test]
async fn a8_malformed_upstream_responses_give_502_protocol_and_the_gateway_stays_healthy() {
    let upstream = FaultUpstream::start(|r| {
        if r.target.starts_with("/sms") {
            Fault::BadStatusLine
        } else if r.target.starts_with("/emails") {
            Fault::HugeHeaders
        } else {
            Fault::ok()
        }
    })
    .await;
    let gw = gateway(settings(&upstream.url())).await;
    let client = h1_client();
    for path in [OPS[1].1, OPS[2].1] {
        let (response, _) = send(&client, request(Method::POST, gw.proxy_addr(), path, "{}")).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY, "{path}");
        assert_eq!(response.headers()[ERROR_HEADER], "protocol", "{path}");
    }
    let (response, _) = send(
        &client,
        request(Method::POST, gw.proxy_addr(), OPS[0].1, "{}"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let m = scrape(gw.admin_addr()).await;
    assert_eq!(count(&m, &[("status_code", "502")]), 2.0);
    assert_eq!(count(&m, &[("status_code", "200")]), 1.0);
    assert_eq!(errors(&m, "protocol"), 2.0);
}

#[tokio::test]
async fn a11_throttling_answers_pass_through_unchanged_and_are_not_retried() {
    let upstream = FaultUpstream::fixed(Fault::Raw(
        b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: 2\r\n\r\n{}".to_vec(),
    ))
    .await;
    let gw = gateway(settings(&upstream.url())).await;
    let (response, body) = send(
        &h1_client(),
        request(Method::POST, gw.proxy_addr(), OPS[2].1, "{}"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "7");
    assert!(response.headers().get(ERROR_HEADER).is_none());
    assert_eq!(&body[..], b"{}");
    assert_eq!(upstream.received().len(), 1);
    let m = scrape(gw.admin_addr()).await;
    assert_eq!(
        count(&m, &[("operation", "Email_Send"), ("status_code", "429")]),
        1.0
    );
    assert_eq!(m.sum("acsgate_upstream_errors_total", &[]), 0.0);
}

#[tokio::test]
async fn repeatability_headers_pass_through_unchanged() {
    let upstream = FaultUpstream::fixed(Fault::ok()).await;
    let gw = gateway(settings(&upstream.url())).await;
    let id = "2f8a5c1e-7b9d-4e3f-a6b2-0c1d2e3f4a5b";
    let first_sent = "Tue, 25 Nov 2026 09:00:00 GMT";
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}{}", gw.proxy_addr(), OPS[2].1))
        .header("Repeatability-Request-Id", id)
        .header("Repeatability-First-Sent", first_sent)
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let (response, _) = send(&h1_client(), request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let received = upstream.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].header("repeatability-request-id"), Some(id));
    assert_eq!(
        received[0].header("repeatability-first-sent"),
        Some(first_sent)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a3_connect_black_hole_gives_504_at_the_connect_timeout_and_others_are_served() {
    let hole = BlackHole::new().await;
    let timeout = Duration::from_millis(500);
    let mut s = settings(&hole.url());
    s.connect_timeout = Some(timeout);
    s.bad_route = Some(acsgate::proxy::BadRoutePolicy::Reject);
    let gw = gateway(s).await;
    let proxy = gw.proxy_addr();
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let (method, path, operation) = OPS[i % 4];
            tokio::spawn(async move {
                let started = Instant::now();
                let (response, _) = send(
                    &h1_client(),
                    request(method.parse().unwrap(), proxy, path, "{}"),
                )
                .await;
                (response, started.elapsed(), operation)
            })
        })
        .collect();
    // While every connect hangs, the gateway still answers: the admin port shows all eight in
    // flight at once, and the proxy port answers a request that needs no upstream.
    let m = support::scrape_until(gw.admin_addr(), |m| {
        m.sum("acsgate_requests_in_flight", &[]) == 8.0
    })
    .await;
    assert_eq!(m.sum("acsgate_requests_in_flight", &[]), 8.0);
    let (local, _) = send(&h1_client(), request(Method::GET, proxy, "/nowhere", "")).await;
    assert_eq!(local.status(), StatusCode::NOT_FOUND);

    for call in calls {
        let (response, took, operation) = call.await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::GATEWAY_TIMEOUT,
            "{operation}"
        );
        assert_eq!(response.headers()[ERROR_HEADER], "timeout", "{operation}");
        // Each one waited out its own connect timeout, concurrently, not one after another.
        assert!(took >= timeout, "{operation}: {took:?}");
        assert!(took < timeout * 2, "{operation}: {took:?}");
    }
    let m = support::scrape_until(gw.admin_addr(), |m| {
        m.sum("acsgate_requests_in_flight", &[]) == 0.0
    })
    .await;
    each_operation(&m, "504", 2.0);
    assert_eq!(count(&m, &[("status_code", "504")]), 8.0);
    assert_eq!(errors(&m, "timeout"), 8.0);
    assert_eq!(m.sum("acsgate_upstream_errors_total", &[]), 8.0);
}

#[tokio::test]
async fn an_upload_answered_before_it_is_read_is_read_to_its_end_and_keeps_its_connection() {
    // The upstream closes each connection once it has the head, so the gateway answers 502
    // with most of a 32 MiB upload still coming. The client gets its answer without a reset,
    // every byte it sends is taken, and the connection then serves the next request.
    let upstream = FaultUpstream::fixed(Fault::CloseOnAccept).await;
    let gw = gateway(settings(&upstream.url())).await;
    let statuses = upload_then_get(gw.proxy_addr(), OPS[2].1, 32 << 20, OPS[3].1).await;
    assert_eq!(statuses, (502, 502));
    let m = scrape(gw.admin_addr()).await;
    assert_eq!(
        m.sum("acsgate_requests_total", &[("status_code", "502")]),
        2.0,
        "each request counted once"
    );
}
