//! Reliability plan group D: HTTP/2 abuse against the real binary, with the `h2` crate's
//! client driving frames directly.
//!
//! D1 rapid reset: HEADERS + RST_STREAM for 200 streams in one burst. The h2 server sends
//! GOAWAY(ENHANCE_YOUR_CALM) once more than 20 streams were reset before being accepted;
//! memory stays flat, other clients are unaffected, and whatever reached the service is
//! counted once as 499. D7: a body that contradicts its `content-length` never reaches the
//! upstream complete. D5: streams beyond `max_concurrent_streams` wait for a free slot.

mod support;

use std::time::Duration;

use bytes::Bytes;
use h2::Reason;
use http::{Method, Request, StatusCode};
use tokio::net::TcpStream;

use support::faults::{Fault, FaultUpstream, GatewayProcess};
use support::{h2_client, request, scrape, scrape_until, send};

const PATH: &str = "http://acs/sms?api-version=2021-03-07";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_rapid_reset_draws_goaway_and_leaves_the_gateway_healthy() {
    let upstream = FaultUpstream::fixed(Fault::Hang).await;
    let gw = GatewayProcess::start(&upstream.url(), &[("ACSGATE_RESPONSE_TIMEOUT", "300ms")]).await;
    // A control client; its first request warms h2 up so the baseline includes its buffers.
    let control = h2_client();
    let rooms = || request(Method::GET, gw.proxy, "/rooms?api-version=2024-04-15", "");
    let (response, _) = send(&control, rooms()).await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let before = scrape(gw.admin).await;
    let baseline = gw.sample();

    let tcp = TcpStream::connect(gw.proxy).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let started = tokio::time::Instant::now();
    for _ in 0..200 {
        client = match client.ready().await {
            Ok(client) => client,
            Err(_) => break,
        };
        let request = Request::post(PATH).body(()).unwrap();
        match client.send_request(request, false) {
            Ok((_, mut stream)) => stream.send_reset(Reason::CANCEL),
            Err(_) => break,
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(2), connection)
        .await
        .expect("the server closes the connection")
        .unwrap();
    let closed_after = started.elapsed();
    let error = ended.expect_err("the server ends the connection");
    // The client sees the GOAWAY, or, when it is still writing as the server closes, a broken
    // pipe first; the server's own count below says which reason it closed for.
    assert!(
        error.reason() == Some(Reason::ENHANCE_YOUR_CALM) || error.is_io(),
        "{error:?}"
    );
    assert!(closed_after < Duration::from_secs(1), "{closed_after:?}");

    // Another client is served right away (the hung upstream answers nothing, so 504 proves
    // the request went through the whole gateway).
    let (response, _) = send(&control, rooms()).await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);

    let after = scrape_until(gw.admin, |m| {
        m.sum("acsgate_requests_in_flight", &[]) == 0.0
            && m.sum(
                "acsgate_protocol_rejections_total",
                &[("reason", "h2_protocol")],
            ) >= 1.0
    })
    .await;
    let rejected = |m: &support::Metrics| {
        m.sum(
            "acsgate_protocol_rejections_total",
            &[("reason", "h2_protocol")],
        )
    };
    assert_eq!(
        rejected(&after) - rejected(&before),
        1.0,
        "one GOAWAY for the flood"
    );
    let delta = |labels: &[(&str, &str)]| {
        after.sum("acsgate_requests_total", labels) - before.sum("acsgate_requests_total", labels)
    };
    let reached = upstream
        .received()
        .iter()
        .filter(|r| r.target.starts_with("/sms"))
        .count() as f64;
    // Streams that reached the service are counted once, as 499; the rest never existed.
    let aborted = delta(&[("operation", "SMSMessageSent"), ("status_code", "499")]);
    assert_eq!(delta(&[("operation", "SMSMessageSent")]), aborted);
    assert!(
        aborted < 200.0 && reached <= aborted,
        "{aborted} counted, {reached} upstream"
    );
    let grew = gw.sample().rss_kib.saturating_sub(baseline.rss_kib);
    assert!(grew < 5 * 1024, "RSS grew {grew} KiB");
}

/// Opens a stream with `content-length: declared`, sends `sent` bytes and ends the stream.
async fn lying_length(gw: &GatewayProcess, declared: usize, sent: usize) {
    let tcp = TcpStream::connect(gw.proxy).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = Request::post(PATH)
        .header("content-length", declared)
        .body(())
        .unwrap();
    let (response, mut stream) = client.send_request(request, false).unwrap();
    let _ = stream.send_data(Bytes::from(vec![b'a'; sent]), true);
    // The stream is reset or answered with an error; either way, not a clean 2xx.
    if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(3), response).await {
        assert!(!response.status().is_success(), "{}", response.status());
    }
}

#[tokio::test]
async fn d7_content_length_contradicting_the_data_never_reaches_the_upstream_complete() {
    let upstream = FaultUpstream::fixed(Fault::ok()).await;
    let gw = GatewayProcess::start(&upstream.url(), &[]).await;
    lying_length(&gw, 5, 10).await;
    lying_length(&gw, 10, 5).await;
    let m = scrape_until(gw.admin, |m| {
        m.sum("acsgate_requests_in_flight", &[]) == 0.0
            && m.sum("acsgate_requests_total", &[]) >= 2.0
    })
    .await;
    for r in upstream.received() {
        assert!(
            !r.body_complete,
            "a contradicted body reached the upstream whole: {r:?}"
        );
    }
    assert!(m.sum("acsgate_requests_total", &[]) <= 2.0);
    assert_eq!(
        m.sum("acsgate_requests_total", &[("status_code", "200")]),
        0.0
    );
}

/// D5: the gateway advertises `SETTINGS_MAX_CONCURRENT_STREAMS` 100 on h2. With the upstream
/// holding every request, 101 requests on one h2 connection put exactly 100 at the upstream at
/// once; the client queues the 101st until a stream closes, and then it is served too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_streams_beyond_max_concurrent_streams_wait_for_a_free_slot() {
    let upstream = FaultUpstream::fixed(Fault::Delay {
        after: Duration::from_secs(2),
        status: 200,
        body: b"{}".to_vec(),
    })
    .await;
    let gw = support::gateway(support::settings(&upstream.url())).await;
    let client = h2_client();
    let calls: Vec<_> = (0..101)
        .map(|_| {
            let (client, proxy) = (client.clone(), gw.proxy_addr());
            tokio::spawn(async move {
                send(
                    &client,
                    request(Method::POST, proxy, "/sms?api-version=2021-03-07", "{}"),
                )
                .await
                .0
                .status()
            })
        })
        .collect();
    upstream.wait_for_requests(100).await;
    // Give a 101st stream time to arrive if the limit did not hold.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        upstream.received().len(),
        100,
        "streams at the upstream at once"
    );
    for call in calls {
        assert_eq!(call.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(upstream.received().len(), 101);
}
