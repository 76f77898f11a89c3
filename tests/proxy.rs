//! End to end over real sockets: client → gateway → a real upstream, then `/metrics`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use acsgate::error::ERROR_HEADER;
use support::{
    Upstream, gateway, h1_client, h2_client, json, request, route_request, scrape, scrape_until,
    send, settings,
};

#[tokio::test]
async fn every_catalogue_route_is_named_and_counted_over_h1_and_h2() {
    let upstream = Upstream::ok().await;
    let gw = gateway(settings(&upstream.url())).await;
    let catalogue = support::catalogue();
    let mut expected: BTreeMap<(String, String), f64> = BTreeMap::new();
    for client in [h1_client(), h2_client()] {
        for route in catalogue.routes() {
            let req = route_request(route, gw.proxy_addr());
            let uri = req.uri().clone();
            let (response, _) = send(&client, req).await;
            assert_eq!(response.status(), StatusCode::OK, "{} {uri}", route.method);
            let operation = catalogue.operation(route.operation);
            let api = catalogue.api(operation.api);
            *expected
                .entry((api.name.clone(), operation.name.clone()))
                .or_default() += 1.0;
        }
    }
    let metrics = scrape(gw.admin_addr()).await;
    let mut counted: BTreeMap<(String, String), f64> = BTreeMap::new();
    for sample in metrics
        .samples
        .iter()
        .filter(|s| s.name == "acsgate_requests_total")
    {
        assert_eq!(sample.labels["status_code"], "200");
        assert_eq!(sample.labels["status_subclass"], "2xx");
        *counted
            .entry((
                sample.labels["api"].clone(),
                sample.labels["operation"].clone(),
            ))
            .or_default() += sample.value;
    }
    assert_eq!(counted, expected);
    assert!(!counted.keys().any(|(_, op)| op == "Bad Route"));
    // The histogram saw every request too.
    let total: f64 = expected.values().sum();
    assert_eq!(
        metrics.sum("acsgate_request_duration_seconds_count", &[]),
        total
    );
    assert_eq!(upstream.seen().len() as f64, total);
    assert_eq!(metrics.sum("acsgate_requests_in_flight", &[]), 0.0);
}

#[tokio::test]
async fn requests_reach_the_upstream_with_proxy_headers() {
    let upstream = Upstream::ok().await;
    let gw = gateway(settings(&upstream.url())).await;
    let mut req = request(
        Method::POST,
        gw.proxy_addr(),
        "/chat/threads/19:abc@thread.v2/messages?api-version=2021-03-07",
        r#"{"content":"hi"}"#,
    );
    let headers = req.headers_mut();
    headers.insert(
        "authorization",
        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=abc"
            .parse()
            .unwrap(),
    );
    headers.insert(
        "x-ms-date",
        "Tue, 25 Nov 2026 09:00:00 GMT".parse().unwrap(),
    );
    headers.insert("x-ms-client-request-id", "req-1".parse().unwrap());
    headers.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            .parse()
            .unwrap(),
    );
    headers.insert("connection", "keep-alive, x-secret-hop".parse().unwrap());
    headers.insert("x-secret-hop", "drop me".parse().unwrap());
    headers.insert("proxy-authorization", "Basic eDp5".parse().unwrap());
    headers.insert("host", "sidecar.local:8080".parse().unwrap());
    let (response, _) = send(&h1_client(), req).await;
    assert_eq!(response.status(), StatusCode::OK);

    let seen = upstream.seen();
    let seen = &seen[0];
    assert_eq!(seen.uri.path(), "/chat/threads/19:abc@thread.v2/messages");
    assert_eq!(seen.uri.query(), Some("api-version=2021-03-07"));
    assert_eq!(seen.headers["host"], upstream.addr.to_string());
    assert_eq!(seen.headers["x-forwarded-host"], "sidecar.local:8080");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert!(
        seen.headers["authorization"]
            .to_str()
            .unwrap()
            .ends_with("Signature=abc")
    );
    assert_eq!(seen.headers["x-ms-date"], "Tue, 25 Nov 2026 09:00:00 GMT");
    assert_eq!(seen.headers["x-ms-client-request-id"], "req-1");
    assert!(seen.headers.contains_key("traceparent"));
    assert!(!seen.headers.contains_key("x-secret-hop"));
    assert!(!seen.headers.contains_key("proxy-authorization"));
    assert_eq!(seen.body.as_ref(), br#"{"content":"hi"}"#);
}

#[tokio::test]
async fn absolute_form_uri_cannot_redirect_the_upstream() {
    let upstream = Upstream::ok().await;
    let gw = gateway(settings(&upstream.url())).await;
    let mut stream = TcpStream::connect(gw.proxy_addr()).await.unwrap();
    stream
        .write_all(b"GET http://evil.example/sms?api-version=2021-03-07 HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["host"], upstream.addr.to_string());
    assert_eq!(seen[0].uri.path(), "/sms");
}

fn random_bytes(len: usize, seed: u64) -> Bytes {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data);
    Bytes::from(data)
}

#[tokio::test]
async fn one_mebibyte_round_trips_byte_identical_both_ways() {
    // The upstream echoes the request body back.
    let upstream =
        Upstream::start(
            |seen| async move { http::Response::new(http_body_util::Full::new(seen.body)) },
        )
        .await;
    let gw = gateway(settings(&upstream.url())).await;
    let payload = random_bytes(1 << 20, 7);
    for client in [h1_client(), h2_client()] {
        let req = request(
            Method::POST,
            gw.proxy_addr(),
            "/chat/threads/19:big@thread.v2/messages?api-version=2025-03-15",
            payload.clone(),
        );
        let (response, body) = send(&client, req).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            body == payload,
            "response body differs from what the upstream sent"
        );
    }
    for seen in upstream.seen() {
        assert!(seen.body == payload, "upstream received a different body");
    }
    let metrics = scrape(gw.admin_addr()).await;
    let both_ways = 2.0 * payload.len() as f64;
    assert_eq!(
        metrics.sum("acsgate_request_body_bytes_total", &[("api", "chat")]),
        both_ways
    );
    assert_eq!(
        metrics.sum("acsgate_response_body_bytes_total", &[("api", "chat")]),
        both_ways
    );
}

#[tokio::test]
async fn rooms_participants_body_decides_the_operation_and_is_forwarded_untouched() {
    let upstream = Upstream::ok().await;
    let gw = gateway(settings(&upstream.url())).await;
    let path = "/rooms/99466898241024408/participants?api-version=2024-04-15";
    let remove = r#"{"participants":{"8:acs:a":null,"8:acs:b":null}}"#;
    let update = r#"{"participants":{"8:acs:a":{"role":"Attendee"},"8:acs:b":null}}"#;
    let client = h1_client();
    for body in [remove, update, update] {
        let (response, _) =
            send(&client, request(Method::PATCH, gw.proxy_addr(), path, body)).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let bodies: Vec<Bytes> = upstream.seen().into_iter().map(|s| s.body).collect();
    assert_eq!(
        bodies,
        [remove, update, update].map(|b| Bytes::from(b.to_string()))
    );
    let by_operation = scrape(gw.admin_addr()).await.requests_by("operation");
    assert_eq!(by_operation.get("RemoveParticipants"), Some(&1.0));
    assert_eq!(by_operation.get("UpdateParticipants"), Some(&2.0));
}

#[tokio::test]
async fn bad_routes_are_forwarded_by_default_and_named_within_their_api() {
    let upstream = Upstream::start(|_| async {
        json(StatusCode::NOT_FOUND, r#"{"error":{"code":"NotFound"}}"#)
    })
    .await;
    let gw = gateway(settings(&upstream.url())).await;
    let client = h1_client();
    for path in [
        "/chat/threads/x/nothing",
        "/sms/optouts:nope",
        "/metrics",
        "/what/is/this",
    ] {
        let (response, _) = send(&client, request(Method::GET, gw.proxy_addr(), path, "")).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(
        upstream.seen().len(),
        4,
        "bad routes still reach the upstream"
    );
    let metrics = scrape(gw.admin_addr()).await;
    assert_eq!(
        metrics.sum(
            "acsgate_requests_total",
            &[
                ("api", "chat"),
                ("operation", "Bad Route"),
                ("status_code", "404")
            ]
        ),
        1.0
    );
    assert_eq!(
        metrics.sum(
            "acsgate_requests_total",
            &[("api", "sms"), ("operation", "Bad Route")]
        ),
        1.0
    );
    assert_eq!(
        metrics.sum(
            "acsgate_requests_total",
            &[("api", "unknown"), ("operation", "Bad Route")]
        ),
        2.0
    );
    // The proxy port never serves the gateway's own metrics.
    assert!(upstream.seen().iter().any(|s| s.uri.path() == "/metrics"));
}

#[tokio::test]
async fn bad_route_reject_answers_404_at_the_gateway() {
    let upstream = Upstream::ok().await;
    let mut s = settings(&upstream.url());
    s.bad_route = Some(acsgate::proxy::BadRoutePolicy::Reject);
    let gw = gateway(s).await;
    let (response, _) = send(
        &h1_client(),
        request(Method::DELETE, gw.proxy_addr(), "/chat/threads", ""),
    )
    .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()[ERROR_HEADER], "bad_route");
    let (response, _) = send(
        &h1_client(),
        request(Method::GET, gw.proxy_addr(), "/chat/threads", ""),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        upstream.seen().len(),
        1,
        "the rejected request never reached the upstream"
    );
    let metrics = scrape(gw.admin_addr()).await;
    assert_eq!(
        metrics.sum(
            "acsgate_requests_total",
            &[("operation", "Bad Route"), ("status_code", "404")]
        ),
        1.0
    );
    assert_eq!(metrics.sum("acsgate_upstream_errors_total", &[]), 0.0);
}

#[tokio::test]
async fn unreachable_upstream_gives_502_counted_once() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = gateway(settings(&format!("http://127.0.0.1:{port}"))).await;
    let (response, body) = send(
        &h1_client(),
        request(
            Method::POST,
            gw.proxy_addr(),
            "/identities?api-version=2022-06-01",
            "{}",
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers()[ERROR_HEADER], "connect");
    assert!(
        !String::from_utf8_lossy(&body).contains(&port.to_string()),
        "no upstream address in the body"
    );
    let metrics = scrape(gw.admin_addr()).await;
    let labels = [("api", "identity"), ("operation", "CreateIdentity")];
    assert_eq!(
        metrics.sum(
            "acsgate_requests_total",
            &[
                labels[0],
                labels[1],
                ("status_code", "502"),
                ("status_subclass", "5xx")
            ]
        ),
        1.0
    );
    assert_eq!(metrics.sum("acsgate_requests_total", &[]), 1.0);
    assert_eq!(
        metrics.sum(
            "acsgate_upstream_errors_total",
            &[labels[0], labels[1], ("kind", "connect")]
        ),
        1.0
    );
}

#[tokio::test]
async fn slow_upstream_gives_504_counted_once() {
    let upstream = Upstream::slow(Duration::from_secs(3)).await;
    let mut s = settings(&upstream.url());
    s.response_timeout = Some(Duration::from_millis(300));
    let gw = gateway(s).await;
    let (response, _) = send(
        &h1_client(),
        request(
            Method::GET,
            gw.proxy_addr(),
            "/rooms?api-version=2024-04-15",
            "",
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(response.headers()[ERROR_HEADER], "timeout");
    let metrics = scrape(gw.admin_addr()).await;
    assert_eq!(
        metrics.sum(
            "acsgate_requests_total",
            &[("operation", "ListRooms"), ("status_code", "504")]
        ),
        1.0
    );
    assert_eq!(metrics.sum("acsgate_requests_total", &[]), 1.0);
    assert_eq!(
        metrics.sum(
            "acsgate_upstream_errors_total",
            &[("operation", "ListRooms"), ("kind", "timeout")]
        ),
        1.0
    );
}

/// A response timeout longer than the header-read timeout: an HTTP/1 request then arms no
/// timer at first and is woken by its connection's guard, an HTTP/2 one arms its timer at once
/// (`src/proxy/deadline.rs`). Either way the 504 comes at the timeout, not when the upstream
/// finally answers.
#[tokio::test]
async fn a_response_timeout_longer_than_the_header_timeout_fires_on_time() {
    let upstream = Upstream::slow(Duration::from_secs(30)).await;
    let mut s = settings(&upstream.url());
    s.response_timeout = Some(Duration::from_secs(1));
    s.header_read_timeout = Some(Duration::from_millis(200));
    let gw = gateway(s).await;
    for (protocol, client) in [("HTTP/1.1", h1_client()), ("HTTP/2", h2_client())] {
        let started = std::time::Instant::now();
        let call = send(
            &client,
            request(
                Method::GET,
                gw.proxy_addr(),
                "/rooms?api-version=2024-04-15",
                "",
            ),
        );
        let (response, _) = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .unwrap_or_else(|_| panic!("{protocol}: no answer 10 s after a 1 s timeout"));
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT, "{protocol}");
        assert_eq!(response.headers()[ERROR_HEADER], "timeout", "{protocol}");
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "{protocol}: answered before the timeout"
        );
    }
}

#[tokio::test]
async fn client_abort_is_counted_once_as_499() {
    let upstream = Upstream::slow(Duration::from_secs(3)).await;
    let gw = gateway(settings(&upstream.url())).await;
    let mut stream = TcpStream::connect(gw.proxy_addr()).await.unwrap();
    stream
        .write_all(b"GET /routing/jobs/job-1?api-version=2023-11-01 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Wait until the request is in flight upstream, then hang up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while upstream.seen().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(stream);
    let metrics = scrape_until(gw.admin_addr(), |m| {
        m.sum("acsgate_requests_total", &[]) >= 1.0
    })
    .await;
    assert_eq!(
        metrics.sum(
            "acsgate_requests_total",
            &[
                ("api", "job_router"),
                ("operation", "GetJob"),
                ("status_code", "499"),
                ("status_subclass", "4xx")
            ]
        ),
        1.0
    );
    assert_eq!(metrics.sum("acsgate_requests_total", &[]), 1.0);
    assert_eq!(metrics.sum("acsgate_requests_in_flight", &[]), 0.0);
    // Still exactly once a while later, when the upstream would have answered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        scrape(gw.admin_addr())
            .await
            .sum("acsgate_requests_total", &[]),
        1.0
    );
}

#[tokio::test]
async fn status_codes_and_subclasses_come_from_the_upstream() {
    let upstream = Upstream::start(|seen| async move {
        let status = match seen.uri.path() {
            "/sms" => StatusCode::ACCEPTED,
            "/emails:send" => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        json(status, "{}")
    })
    .await;
    let gw = gateway(settings(&upstream.url())).await;
    let client = h2_client();
    for path in ["/sms", "/emails:send", "/calling/callConnections:answer"] {
        send(&client, request(Method::POST, gw.proxy_addr(), path, "{}")).await;
    }
    let metrics = scrape(gw.admin_addr()).await;
    assert_eq!(
        metrics.sum(
            "acsgate_requests_total",
            &[
                ("operation", "SMSMessageSent"),
                ("status_code", "202"),
                ("status_subclass", "2xx")
            ]
        ),
        1.0
    );
    assert_eq!(
        metrics.sum(
            "acsgate_requests_total",
            &[
                ("operation", "Email_Send"),
                ("status_code", "429"),
                ("status_subclass", "4xx")
            ]
        ),
        1.0
    );
    assert_eq!(
        metrics.sum(
            "acsgate_requests_total",
            &[
                ("operation", "Answer Call"),
                ("status_code", "503"),
                ("status_subclass", "5xx")
            ]
        ),
        1.0
    );
    assert_eq!(
        metrics.sum(
            "acsgate_request_duration_seconds_count",
            &[("operation", "Answer Call"), ("status_subclass", "5xx")]
        ),
        1.0
    );
    // Upstream answers are not upstream errors.
    assert_eq!(metrics.sum("acsgate_upstream_errors_total", &[]), 0.0);
}
