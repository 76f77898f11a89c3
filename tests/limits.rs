//! Limits and lifecycle: what a hostile or careless client cannot do to the gateway, and how
//! it drains. Plan rows C8–C10, E1, E2, E3, E4, F1, F2, F4, G3 of the reliability plan.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use acsgate::error::ERROR_HEADER;
use support::{
    Upstream, gateway, h1_client, h2_client, json, request, scrape, scrape_until, send, settings,
};

/// Sends raw bytes on a fresh connection and reads until the gateway closes it (5 s at most).
async fn raw_exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Fails unless the gateway closes `stream` within 5 s: a read sees EOF or a reset.
async fn assert_closed_by_gateway(stream: &mut TcpStream) {
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "connection left open: {read:?}"
    );
}

fn rejections(metrics: &support::Metrics, reason: &str) -> f64 {
    metrics.sum("acsgate_protocol_rejections_total", &[("reason", reason)])
}

#[tokio::test]
async fn oversized_heads_get_431_and_count_as_rejections_not_requests() {
    let upstream = Upstream::ok().await;
    let gw = gateway(settings(&upstream.url())).await;
    let big_header = format!(
        "GET /sms HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    let answer = raw_exchange(gw.proxy_addr(), big_header.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let mut many = String::from("GET /sms HTTP/1.1\r\nHost: x\r\n");
    for i in 0..101 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = raw_exchange(gw.proxy_addr(), many.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let answer = raw_exchange(
        gw.proxy_addr(),
        b"GET /sms HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    let metrics = scrape_until(gw.admin_addr(), |m| {
        rejections(m, "too_large") >= 2.0 && rejections(m, "parse") >= 1.0
    })
    .await;
    assert_eq!(rejections(&metrics, "too_large"), 2.0);
    assert_eq!(rejections(&metrics, "parse"), 1.0);
    assert_eq!(metrics.sum("acsgate_requests_total", &[]), 0.0);
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn long_uris_get_414_counted_under_their_api() {
    let upstream = Upstream::ok().await;
    let mut s = settings(&upstream.url());
    s.max_uri_bytes = Some(1024);
    let gw = gateway(s).await;
    let path = format!("/chat/threads?x={}", "y".repeat(2000));
    let (response, _) = send(
        &h1_client(),
        request(Method::GET, gw.proxy_addr(), &path, ""),
    )
    .await;
    assert_eq!(response.status(), StatusCode::URI_TOO_LONG);
    assert_eq!(response.headers()[ERROR_HEADER], "uri_too_long");
    assert!(upstream.seen().is_empty());
    let metrics = scrape(gw.admin_addr()).await;
    assert_eq!(
        metrics.sum(
            "acsgate_requests_total",
            &[("operation", "ListChatThreads"), ("status_code", "414")]
        ),
        1.0
    );
    assert_eq!(
        metrics.sum("acsgate_gateway_errors_total", &[("kind", "uri_too_long")]),
        1.0
    );
}

#[tokio::test]
async fn silent_connections_are_closed_by_the_handshake_deadline() {
    let upstream = Upstream::ok().await;
    let mut s = settings(&upstream.url());
    s.handshake_timeout = Some(Duration::from_millis(500));
    let gw = gateway(s).await;
    // 1,000 connections that never send a byte, and one that sends half a request line.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(gw.proxy_addr()).await.unwrap());
    }
    let mut partial = TcpStream::connect(gw.proxy_addr()).await.unwrap();
    partial.write_all(b"PRI * HTTP/2").await.unwrap();
    // Meanwhile the gateway keeps serving.
    let (response, _) = send(
        &h1_client(),
        request(Method::POST, gw.proxy_addr(), "/sms", "{}"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    // Every silent connection is closed by the gateway: reads see EOF (or a reset).
    for stream in idle.iter_mut().chain(std::iter::once(&mut partial)) {
        assert_closed_by_gateway(stream).await;
    }
    let metrics = scrape_until(gw.admin_addr(), |m| {
        rejections(m, "handshake_timeout") >= 1001.0
    })
    .await;
    assert_eq!(rejections(&metrics, "handshake_timeout"), 1001.0);
    assert_eq!(metrics.sum("acsgate_requests_total", &[]), 1.0);
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let upstream = Upstream::ok().await;
    let mut s = settings(&upstream.url());
    s.max_connections = Some(16);
    let gw = gateway(s).await;
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(TcpStream::connect(gw.proxy_addr()).await.unwrap());
    }
    // The cap is taken; 10 more are closed without being served.
    for _ in 0..10 {
        let answer = raw_exchange(gw.proxy_addr(), b"GET /sms HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(answer, "", "a connection over the cap was served");
    }
    let metrics = scrape_until(gw.admin_addr(), |m| rejections(m, "conn_limit") >= 10.0).await;
    assert_eq!(rejections(&metrics, "conn_limit"), 10.0);
    // Freeing the cap lets new connections in again.
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = raw_exchange(
            gw.proxy_addr(),
            b"POST /sms HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cap was never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn requests_over_the_concurrency_limit_are_shed_with_503() {
    let upstream = Upstream::slow(Duration::from_millis(500)).await;
    let mut s = settings(&upstream.url());
    s.max_in_flight = Some(8);
    let gw = gateway(s).await;
    let client = h2_client();
    let calls = (0..20).map(|_| {
        let client = client.clone();
        let addr = gw.proxy_addr();
        tokio::spawn(async move {
            send(&client, request(Method::GET, addr, "/routing/workers", "")).await
        })
    });
    let mut statuses = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        let (response, _) = call.await.unwrap();
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(response.headers()[ERROR_HEADER], "overloaded");
        }
        statuses.push(response.status().as_u16());
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let shed = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!((ok, shed), (8, 12), "{statuses:?}");
    assert_eq!(
        upstream.seen().len(),
        8,
        "shed requests never reach the upstream"
    );
    let metrics = scrape(gw.admin_addr()).await;
    let op = ("operation", "GetWorkers");
    assert_eq!(
        metrics.sum("acsgate_requests_total", &[op, ("status_code", "503")]),
        12.0
    );
    assert_eq!(
        metrics.sum("acsgate_requests_total", &[op, ("status_code", "200")]),
        8.0
    );
    assert_eq!(
        metrics.sum(
            "acsgate_gateway_errors_total",
            &[op, ("kind", "overloaded")]
        ),
        12.0
    );
    // Capacity returns once the slow requests finish.
    let (response, _) = send(
        &client,
        request(Method::GET, gw.proxy_addr(), "/routing/workers", ""),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn drain_finishes_in_flight_requests_and_refuses_new_connections() {
    let upstream = Upstream::start(|_| async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        json(StatusCode::CREATED, "{}")
    })
    .await;
    let mut gw = gateway(settings(&upstream.url())).await;
    let (proxy, admin) = (gw.proxy_addr(), gw.admin_addr());
    let mut calls = Vec::new();
    for client in [h1_client(), h2_client()] {
        for _ in 0..5 {
            let client = client.clone();
            calls.push(tokio::spawn(async move {
                send(&client, request(Method::POST, proxy, "/identities", "{}")).await
            }));
        }
    }
    // Wait until all ten are at the upstream, then start draining.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while upstream.seen().len() < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "requests never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain = tokio::spawn(async move {
        gw.drain().await;
        gw
    });
    // New connections are refused at once.
    let refused = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            if TcpStream::connect(proxy).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        refused.is_ok(),
        "the proxy port still accepts during the drain"
    );
    // The admin port answers during the drain.
    let (response, _) = send(&h1_client(), request(Method::GET, admin, "/readyz", "")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    for (i, call) in calls.into_iter().enumerate() {
        let (response, _) = call.await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        if i < 5 {
            // The drain reached each HTTP/1.1 connection: its last response closes it.
            assert_eq!(
                response
                    .headers()
                    .get(http::header::CONNECTION)
                    .map(|v| v.as_bytes()),
                Some(&b"close"[..]),
                "{:?}",
                response.headers()
            );
        }
    }
    let gw = drain.await.unwrap();
    // After the drain, the final counts are still there to scrape.
    let metrics = scrape(admin).await;
    assert_eq!(
        metrics.sum(
            "acsgate_requests_total",
            &[("operation", "CreateIdentity"), ("status_code", "201")]
        ),
        10.0
    );
    assert_eq!(metrics.sum("acsgate_requests_in_flight", &[]), 0.0);
    gw.shutdown().await;
    assert!(
        TcpStream::connect(admin).await.is_err(),
        "the admin port closes last"
    );
}

#[tokio::test]
async fn drain_deadline_answers_503_draining_counted_once() {
    drain_deadline_answers_503_draining_counted_once_over(h1_client()).await;
}

/// HTTP/2 streams run in tasks of their own, which the drain does not wake as it wakes an
/// HTTP/1 connection's task: they must still be answered when the deadline passes.
#[tokio::test]
async fn drain_deadline_answers_503_draining_counted_once_h2() {
    drain_deadline_answers_503_draining_counted_once_over(h2_client()).await;
}

async fn drain_deadline_answers_503_draining_counted_once_over(
    client: Client<HttpConnector, Full<Bytes>>,
) {
    let upstream = Upstream::slow(Duration::from_secs(30)).await;
    let mut s = settings(&upstream.url());
    s.drain_timeout = Some(Duration::from_millis(500));
    let mut gw = gateway(s).await;
    let proxy = gw.proxy_addr();
    let call =
        tokio::spawn(async move { send(&client, request(Method::GET, proxy, "/rooms", "")).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while upstream.seen().is_empty() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = std::time::Instant::now();
    gw.drain().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drain overran its deadline"
    );
    let (response, _) = call.await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[ERROR_HEADER], "draining");
    let metrics = scrape(gw.admin_addr()).await;
    assert_eq!(
        metrics.sum("acsgate_requests_total", &[("operation", "ListRooms")]),
        1.0
    );
    assert_eq!(
        metrics.sum(
            "acsgate_requests_total",
            &[("operation", "ListRooms"), ("status_code", "503")]
        ),
        1.0
    );
    assert_eq!(
        metrics.sum("acsgate_gateway_errors_total", &[("kind", "draining")]),
        1.0
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_slow_request_head_is_cut_by_the_header_timeout() {
    let upstream = Upstream::ok().await;
    let mut s = settings(&upstream.url());
    s.header_read_timeout = Some(Duration::from_millis(300));
    s.handshake_timeout = Some(Duration::from_secs(5));
    let gw = gateway(s).await;
    let mut stream = TcpStream::connect(gw.proxy_addr()).await.unwrap();
    // Slowloris: a request line, then one header byte at a time.
    stream.write_all(b"GET /sms HTTP/1.1\r\n").await.unwrap();
    let mut closed = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if stream.write_all(b"x").await.is_err() {
            closed = true;
            break;
        }
    }
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest)).await;
    assert!(
        closed || matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "slowloris connection left open"
    );
    let metrics = scrape_until(gw.admin_addr(), |m| rejections(m, "header_timeout") >= 1.0).await;
    assert_eq!(rejections(&metrics, "header_timeout"), 1.0);
    assert_eq!(metrics.sum("acsgate_requests_total", &[]), 0.0);
}

#[tokio::test]
async fn a_body_slower_than_its_deadline_gets_408_and_never_completes_upstream() {
    let upstream = Upstream::ok().await;
    let mut s = settings(&upstream.url());
    s.request_body_timeout = Some(Duration::from_millis(800));
    let gw = gateway(s).await;
    let mut stream = TcpStream::connect(gw.proxy_addr()).await.unwrap();
    stream
        .write_all(b"POST /chat/threads/19:a@thread.v2/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    // R-U-Dead-Yet: one byte every 200 ms, never the whole body.
    let drip = async {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if stream.write_all(b"x").await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), drip).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("x-acsgate-error: client_timeout"),
        "{answer}"
    );
    assert!(
        upstream.seen().iter().all(|seen| seen.body.len() < 100),
        "the upstream saw a complete body"
    );
    let metrics = scrape(gw.admin_addr()).await;
    assert_eq!(
        metrics.sum(
            "acsgate_requests_total",
            &[("operation", "SendChatMessage"), ("status_code", "408")]
        ),
        1.0
    );
    assert_eq!(
        metrics.sum(
            "acsgate_gateway_errors_total",
            &[("kind", "client_timeout")]
        ),
        1.0
    );
}

/// E2 (CI variant): 200 keep-alive connections that each made one request and then went quiet
/// are closed by the header-read timeout, and an idle keep-alive connection closed that way is
/// not a protocol rejection: `header_timeout` stays 0.
#[tokio::test]
async fn idle_keep_alive_connections_are_closed_without_counting_rejections() {
    let upstream = Upstream::ok().await;
    let mut s = settings(&upstream.url());
    s.header_read_timeout = Some(Duration::from_millis(500));
    let gw = gateway(s).await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(gw.proxy_addr()).await.unwrap();
        stream
            .write_all(b"GET /rooms?api-version=2024-04-15 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Read the whole response (head, then its Content-Length body) and keep the connection.
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .expect("response arrives")
                .unwrap();
            assert!(n > 0, "closed before the response: {answer:?}");
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .expect("content-length");
                if body.len() >= length {
                    break;
                }
            }
        }
        idle.push(stream);
    }
    for stream in &mut idle {
        assert_closed_by_gateway(stream).await;
    }
    let metrics = scrape(gw.admin_addr()).await;
    assert_eq!(metrics.sum("acsgate_requests_total", &[]), 200.0);
    assert_eq!(rejections(&metrics, "header_timeout"), 0.0);
    assert_eq!(metrics.sum("acsgate_protocol_rejections_total", &[]), 0.0);
}
