//! Reliability plan group D: HTTP/2 abuse against the real binary, with the `h2` crate's
//! client driving frames directly.
//!
//! D1 rapid reset: HEADERS + RST_STREAM for 200 streams in one burst. The h2 server sends
//! GOAWAY(ENHANCE_YOUR_CALM) once more than 20 streams were reset before being accepted;
//! memory stays flat, other clients are unaffected, and whatever reached the service is
//! counted once as 499. D7: a body that contradicts its `content-length` never reaches the
//! upstream complete. D5: streams beyond `max_concurrent_streams` wait for a free slot.
//!
//! D2 (paced rapid reset), D3, D4, D6 and D7's connection-specific headers need frames the `h2`
//! client refuses to send or cannot pace; they use the raw-frame client of `support::h2raw`.

mod support;

use std::time::Duration;

use bytes::Bytes;
use h2::Reason;
use http::{Method, Request, StatusCode};
use tokio::net::TcpStream;

use support::faults::{Fault, FaultUpstream, GatewayProcess};
use support::h2raw::{
    self, CONTINUATION, DATA, END_HEADERS, END_STREAM, Frame, HEADERS, RawH2, frame, request_block,
    window_update,
};
use support::{Metrics, h2_client, request, scrape, scrape_until, send};

const PATH: &str = "http://acs/sms?api-version=2021-03-07";

/// Connections the gateway ended with a GOAWAY of its own (`reason="h2_protocol"`).
fn h2_rejections(m: &Metrics) -> f64 {
    m.sum(
        "acsgate_protocol_rejections_total",
        &[("reason", "h2_protocol")],
    )
}

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
        m.sum("acsgate_requests_in_flight", &[]) == 0.0 && h2_rejections(m) >= 1.0
    })
    .await;
    assert_eq!(
        h2_rejections(&after) - h2_rejections(&before),
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

/// The GOAWAY among `frames`: (last stream id, reason).
fn goaway(frames: &[Frame]) -> Option<(u32, Reason)> {
    frames.iter().find_map(Frame::goaway)
}

/// D3: HEADERS without END_HEADERS, then CONTINUATION frames without end. h2 allows a few
/// more CONTINUATION frames than the header-list limit needs and then sends
/// GOAWAY(ENHANCE_YOUR_CALM); nothing of the flood is buffered or reaches the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d3_continuation_flood_draws_goaway_at_once_and_reaches_nothing() {
    let upstream = FaultUpstream::fixed(Fault::ok()).await;
    let gw = GatewayProcess::start(&upstream.url(), &[]).await;
    let control = h2_client();
    let sms = || request(Method::POST, gw.proxy, "/sms?api-version=2021-03-07", "{}");
    assert_eq!(send(&control, sms()).await.0.status(), StatusCode::OK);
    let before = scrape(gw.admin).await;
    let baseline = gw.sample();

    let mut raw = RawH2::connect(gw.proxy).await;
    let started = tokio::time::Instant::now();
    let head = request_block("POST", "/sms?api-version=2021-03-07", &[]);
    raw.send(&frame(HEADERS, 0, 1, &head)).await.unwrap();
    let filler = h2raw::block(&[("x-flood", &"f".repeat(200))]);
    let batch: Vec<u8> = (0..100)
        .flat_map(|_| frame(CONTINUATION, 0, 1, &filler))
        .collect();
    // Up to 10,000 frames (about 2 MiB); the gateway closes long before.
    for _ in 0..100 {
        if raw.send(&batch).await.is_err() {
            break;
        }
    }
    let (frames, closed) = raw.until_closed(Duration::from_secs(2)).await;
    assert!(closed, "the gateway closes the connection");
    let closed_after = started.elapsed();
    assert!(closed_after < Duration::from_secs(1), "{closed_after:?}");
    let (_, reason) = goaway(&frames).expect("a GOAWAY before the close");
    assert_eq!(reason, Reason::ENHANCE_YOUR_CALM);

    assert_eq!(send(&control, sms()).await.0.status(), StatusCode::OK);
    let after = scrape_until(gw.admin, |m| h2_rejections(m) > h2_rejections(&before)).await;
    assert_eq!(h2_rejections(&after) - h2_rejections(&before), 1.0);
    let requests = |m: &Metrics| m.sum("acsgate_requests_total", &[]);
    assert_eq!(
        requests(&after) - requests(&before),
        1.0,
        "only the control"
    );
    assert_eq!(upstream.received().len(), 2, "warm-up and control only");
    let grew = gw.sample().rss_kib.saturating_sub(baseline.rss_kib);
    assert!(grew < 5 * 1024, "RSS grew {grew} KiB");
}

/// D4 "MadeYouReset" (CVE-2025-8671): each stream carries a complete request which the
/// gateway forwards (the upstream holds it), and then the client makes the stream invalid (a
/// WINDOW_UPDATE that overflows the stream's send window), so the server resets it itself.
/// Unlike a client RST_STREAM this does not count toward the rapid-reset limit, and the
/// upstream work has already started. h2 counts these resets
/// (`max_local_error_reset_streams`, 1024) and then sends GOAWAY(ENHANCE_YOUR_CALM). Each cut
/// request is counted once as 499 and its upstream call cancelled; memory and CPU stay
/// bounded; other clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_made_you_reset_flood_draws_goaway_after_the_local_reset_limit() {
    const STREAMS: u32 = 1100;
    let flood = PacedFlood::start().await;
    let mut raw = RawH2::connect(flood.gw.proxy).await;
    // A WINDOW_UPDATE that overflows the stream's window: the server must reset the stream.
    let sent = flood
        .send(&mut raw, STREAMS, |id| window_update(id, 0x7fff_ffff))
        .await;
    let (frames, closed) = raw.until_closed(Duration::from_secs(5)).await;
    assert!(
        closed,
        "the gateway closes the connection ({sent} streams sent)"
    );
    let (_, reason) = goaway(&frames).expect("a GOAWAY before the close");
    assert_eq!(reason, Reason::ENHANCE_YOUR_CALM);
    let resets = frames.iter().filter_map(Frame::reset).count();
    assert!(resets <= 1024, "{resets} RST_STREAM before the GOAWAY");

    let after = flood
        .settle(|m| h2_rejections(m) > h2_rejections(&flood.before))
        .await;
    assert_eq!(h2_rejections(&after) - h2_rejections(&flood.before), 1.0);
    let cut = flood.cut_requests(&after).await;
    assert!(cut >= 1024 && cut <= STREAMS as usize, "{cut} counted");
}

/// A request on a connection of its own is answered.
async fn control_is_served(proxy: std::net::SocketAddr) {
    let rooms = request(Method::GET, proxy, "/rooms?api-version=2024-04-15", "");
    assert_eq!(send(&h2_client(), rooms).await.0.status(), StatusCode::OK);
}

/// A paced flood against the binary: an upstream that holds every `/sms` call, a client on
/// another connection, and the gateway's counts and `/proc` sample from before the flood.
struct PacedFlood {
    upstream: FaultUpstream,
    gw: GatewayProcess,
    before: Metrics,
    baseline: support::faults::ProcSample,
}

impl PacedFlood {
    /// Streams sent before each wait for the upstream.
    const BATCH: u32 = 50;

    async fn start() -> PacedFlood {
        let upstream = FaultUpstream::hanging("/sms").await;
        let gw = GatewayProcess::start(&upstream.url(), &[]).await;
        // The control client's first request warms h2 up before the baseline is taken.
        control_is_served(gw.proxy).await;
        PacedFlood {
            before: scrape(gw.admin).await,
            baseline: gw.sample(),
            upstream,
            gw,
        }
    }

    /// `/sms` calls that reached the upstream.
    fn at_upstream(&self) -> usize {
        self.upstream
            .received()
            .iter()
            .filter(|r| r.target.starts_with("/sms"))
            .count()
    }

    /// Opens up to `streams` POST streams on `raw` in batches, each batch made invalid with the
    /// frames of `reset` only once its requests are at the upstream: the work a paced attack
    /// makes the gateway waste. Returns the streams sent before the server closed.
    async fn send(&self, raw: &mut RawH2, streams: u32, reset: impl Fn(u32) -> Vec<u8>) -> u32 {
        let head = request_block("POST", "/sms?api-version=2021-03-07", &[]);
        let mut sent = 0;
        for n in 0..streams / Self::BATCH {
            let ids: Vec<u32> = (0..Self::BATCH)
                .map(|i| 2 * (n * Self::BATCH + i) + 1)
                .collect();
            let heads: Vec<u8> = ids
                .iter()
                .flat_map(|&id| frame(HEADERS, END_HEADERS | END_STREAM, id, &head))
                .collect();
            if raw.send(&heads).await.is_err() {
                break;
            }
            let arrived = self.at_upstream() + Self::BATCH as usize;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while self.at_upstream() < arrived && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let resets: Vec<u8> = ids.iter().flat_map(|&id| reset(id)).collect();
            if raw.send(&resets).await.is_err() {
                break;
            }
            sent += Self::BATCH;
        }
        sent
    }

    /// After the flood: others are still served, nothing is left in flight once `done` holds,
    /// memory and CPU stayed bounded. Returns the scrape.
    async fn settle(&self, done: impl Fn(&Metrics) -> bool) -> Metrics {
        control_is_served(self.gw.proxy).await;
        let after = scrape_until(self.gw.admin, |m| {
            m.sum("acsgate_requests_in_flight", &[]) == 0.0 && done(m)
        })
        .await;
        assert_eq!(after.sum("acsgate_requests_in_flight", &[]), 0.0);
        let now = self.gw.sample();
        let grew = now.rss_kib.saturating_sub(self.baseline.rss_kib);
        assert!(grew < 16 * 1024, "RSS grew {grew} KiB");
        // Clock ticks are 1/100 s on Linux; a debug build stays under 2 core-seconds for a
        // flood and its upstream calls.
        let cpu = now.cpu_ticks - self.baseline.cpu_ticks;
        assert!(cpu < 200, "{cpu} ticks of CPU");
        after
    }

    /// Checks that every flood request that reached the upstream was cut: counted once, as
    /// 499, and its upstream connection closed rather than left hanging. Returns how many.
    async fn cut_requests(&self, after: &Metrics) -> usize {
        let delta = |labels: &[(&str, &str)]| {
            after.sum("acsgate_requests_total", labels)
                - self.before.sum("acsgate_requests_total", labels)
        };
        let counted = delta(&[("operation", "SMSMessageSent")]);
        let cut = delta(&[("operation", "SMSMessageSent"), ("status_code", "499")]);
        assert_eq!(counted, cut, "{counted} counted, {cut} as 499");
        let reached = self.at_upstream();
        assert_eq!(
            reached as f64, counted,
            "{reached} upstream, {counted} counted"
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while self.upstream.closed_by_peer() < reached && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(self.upstream.closed_by_peer(), reached);
        reached
    }
}

/// D2, rapid reset paced: each stream is reset by the client only once its request reached
/// the upstream, the variant of CVE-2023-44487 that h2's limit on resets before accept cannot
/// see. Resetting an accepted stream is legal, so the connection stays up; what holds the
/// gateway is that each reset cancels its upstream call at once (the upstream connection is
/// closed), is counted once as 499, and memory and CPU stay bounded while others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_paced_rapid_reset_cancels_every_upstream_call_and_counts_each_once() {
    const STREAMS: u32 = 500;
    let flood = PacedFlood::start().await;
    let mut raw = RawH2::connect(flood.gw.proxy).await;
    let cancel = u32::from(Reason::CANCEL).to_be_bytes();
    let sent = flood
        .send(&mut raw, STREAMS, |id| {
            frame(h2raw::RST_STREAM, 0, id, &cancel)
        })
        .await;
    assert_eq!(sent, STREAMS, "the connection stays open");
    let after = flood
        .settle(|m| {
            m.sum("acsgate_requests_total", &[("status_code", "499")]) >= f64::from(STREAMS)
        })
        .await;
    assert_eq!(flood.cut_requests(&after).await, STREAMS as usize);
    assert_eq!(h2_rejections(&after), h2_rejections(&flood.before));
}

/// D4, single violations: a zero WINDOW_UPDATE, or DATA on a stream the client already
/// ended, is a connection error in h2: the gateway sends GOAWAY(PROTOCOL_ERROR), ends only
/// that connection, counts it under `h2_protocol`, and counts the cut request once (499).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_a_frame_violating_the_protocol_ends_only_its_connection() {
    let upstream = FaultUpstream::fixed(Fault::Hang).await;
    let mut s = support::settings(&upstream.url());
    s.response_timeout = Some(Duration::from_secs(5));
    let gw = support::gateway(s).await;
    let head = request_block("GET", "/rooms?api-version=2024-04-15", &[]);
    let violations = [window_update(1, 0), frame(DATA, 0, 1, b"x")];
    for violation in &violations {
        let mut raw = RawH2::connect(gw.proxy_addr()).await;
        raw.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &head))
            .await
            .unwrap();
        // Once the request is at the upstream, the stream is half-closed on the server.
        let seen = upstream.received().len();
        upstream.wait_for_requests(seen + 1).await;
        raw.send(violation).await.unwrap();
        let (frames, closed) = raw.until_closed(Duration::from_secs(2)).await;
        assert!(closed, "{violation:?}");
        assert_eq!(
            goaway(&frames),
            Some((1, Reason::PROTOCOL_ERROR)),
            "{violation:?}"
        );
    }
    let m = scrape_until(gw.admin_addr(), |m| {
        m.sum("acsgate_requests_in_flight", &[]) == 0.0 && h2_rejections(m) >= 2.0
    })
    .await;
    assert_eq!(h2_rejections(&m), 2.0);
    assert_eq!(
        m.sum("acsgate_requests_total", &[("status_code", "499")]),
        2.0
    );
    assert_eq!(m.sum("acsgate_requests_total", &[]), 2.0);
    assert_eq!(upstream.received().len(), 2);
}

/// D7, RFC 9113 §8.2.2: an h2 request carrying a connection-specific header is malformed. Each
/// such stream is reset with PROTOCOL_ERROR before it becomes a request (nothing forwarded,
/// nothing counted), and the connection goes on serving: `te: trailers`, the one allowed
/// value, is served on the same connection.
#[tokio::test]
async fn d7_connection_specific_headers_reset_the_stream_and_are_never_forwarded() {
    let upstream = FaultUpstream::fixed(Fault::ok()).await;
    let gw = support::gateway(support::settings(&upstream.url())).await;
    let bad = [
        ("connection", "keep-alive"),
        ("te", "gzip"),
        ("transfer-encoding", "chunked"),
        ("keep-alive", "timeout=5"),
        ("upgrade", "h2c"),
        ("proxy-connection", "keep-alive"),
    ];
    let mut raw = RawH2::connect(gw.proxy_addr()).await;
    let path = "/sms?api-version=2021-03-07";
    for (i, header) in bad.iter().enumerate() {
        let head = request_block("POST", path, &[*header]);
        let id = 2 * i as u32 + 1;
        raw.send(&frame(HEADERS, END_HEADERS | END_STREAM, id, &head))
            .await
            .unwrap();
    }
    let control = 2 * bad.len() as u32 + 1;
    let head = request_block("POST", path, &[("te", "trailers")]);
    raw.send(&frame(HEADERS, END_HEADERS | END_STREAM, control, &head))
        .await
        .unwrap();

    let mut frames = Vec::new();
    while !frames
        .iter()
        .any(|f: &Frame| f.stream == control && f.kind == HEADERS)
    {
        let frame = raw.next(Duration::from_secs(5)).await;
        frames.push(frame.expect("the control stream is answered on the same connection"));
    }
    for (i, header) in bad.iter().enumerate() {
        let on_stream: Vec<_> = frames
            .iter()
            .filter(|f| f.stream == 2 * i as u32 + 1)
            .collect();
        assert_eq!(on_stream.len(), 1, "{header:?}: {on_stream:?}");
        assert_eq!(
            on_stream[0].reset(),
            Some(Reason::PROTOCOL_ERROR),
            "{header:?}"
        );
    }
    let answer = frames
        .iter()
        .find(|f| f.stream == control && f.kind == HEADERS);
    assert_eq!(answer.and_then(Frame::status), Some(200));
    assert!(goaway(&frames).is_none(), "the connection survives");

    let received = upstream.received();
    assert_eq!(received.len(), 1, "only the control request is forwarded");
    for (name, _) in bad {
        assert!(received[0].header(name).is_none(), "{name} forwarded");
    }
    let m = scrape(gw.admin_addr()).await;
    assert_eq!(m.sum("acsgate_requests_total", &[]), 1.0);
    assert_eq!(h2_rejections(&m), 0.0);
}

/// D6: a header list over `max_header_bytes` (32 KiB by default; here 40 KiB in one value,
/// sent as HEADERS and CONTINUATION frames) is refused on its stream (h2 answers 431, or resets
/// it with REFUSED_STREAM) before it becomes a request: nothing forwarded, nothing counted, and
/// the connection goes on serving. (hyper gives no hook for this refusal, so unlike HTTP/1's 431
/// it is not in `acsgate_protocol_rejections_total`.)
#[tokio::test]
async fn d6_an_oversized_header_list_is_refused_on_its_stream_only() {
    let upstream = FaultUpstream::fixed(Fault::ok()).await;
    let gw = support::gateway(support::settings(&upstream.url())).await;
    let mut raw = RawH2::connect(gw.proxy_addr()).await;
    let path = "/sms?api-version=2021-03-07";
    let big = "x".repeat(40 * 1024);
    let head = request_block("POST", path, &[("x-big", &big)]);
    // The default SETTINGS_MAX_FRAME_SIZE is 16 KiB: the block goes out in pieces.
    let pieces: Vec<&[u8]> = head.chunks(16 * 1024).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let last = if i + 1 == pieces.len() {
            END_HEADERS
        } else {
            0
        };
        let (kind, flags) = if i == 0 {
            (HEADERS, END_STREAM | last)
        } else {
            (CONTINUATION, last)
        };
        raw.send(&frame(kind, flags, 1, piece)).await.unwrap();
    }
    let control = request_block("POST", path, &[]);
    raw.send(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &control))
        .await
        .unwrap();

    let mut frames = Vec::new();
    while !frames
        .iter()
        .any(|f: &Frame| f.stream == 3 && f.kind == HEADERS)
    {
        let frame = raw.next(Duration::from_secs(5)).await;
        frames.push(frame.expect("the next stream is answered on the same connection"));
    }
    // h2 answers 431 and ends the stream (or resets it with REFUSED_STREAM when it cannot).
    let on_first: Vec<_> = frames.iter().filter(|f| f.stream == 1).collect();
    let ended = on_first.iter().any(|f| {
        (f.kind == HEADERS && f.flags & END_STREAM != 0 && f.status() != Some(200))
            || f.reset() == Some(Reason::REFUSED_STREAM)
    });
    assert!(ended, "{on_first:?}");
    let answer = frames.iter().find(|f| f.stream == 3 && f.kind == HEADERS);
    assert_eq!(answer.and_then(Frame::status), Some(200));
    assert!(goaway(&frames).is_none(), "the connection survives");

    let received = upstream.received();
    assert_eq!(received.len(), 1, "only the second request is forwarded");
    assert!(received[0].header("x-big").is_none());
    let m = scrape(gw.admin_addr()).await;
    assert_eq!(m.sum("acsgate_requests_total", &[]), 1.0);
}
