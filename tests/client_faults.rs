//! Reliability plan group B: the client misbehaves (hangs up while waiting, hangs up mid-upload,
//! resets its h2 stream, never sends the body it announced) and the gateway counts it once,
//! cancels the upstream call, and never lets a partial body pass as complete.

mod support;

use std::time::Duration;

use bytes::Bytes;
use h2::Reason;
use http::Request;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::faults::{Fault, FaultUpstream, raw_exchange};
use support::{Metrics, gateway, scrape_until, settings};

fn count(m: &Metrics, labels: &[(&str, &str)]) -> f64 {
    m.sum("acsgate_requests_total", labels)
}

/// Scrapes until the request counter reaches `n` and nothing is in flight.
async fn settled(admin: std::net::SocketAddr, n: f64) -> Metrics {
    scrape_until(admin, |m| {
        count(m, &[]) >= n && m.sum("acsgate_requests_in_flight", &[]) == 0.0
    })
    .await
}

#[tokio::test]
async fn b1_client_hangup_while_waiting_is_499_once_and_cancels_the_upstream_call() {
    let upstream = FaultUpstream::fixed(Fault::Hang).await;
    let gw = gateway(settings(&upstream.url())).await;
    let mut stream = TcpStream::connect(gw.proxy_addr()).await.unwrap();
    stream
        .write_all(
            b"POST /sms?api-version=2021-03-07 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        )
        .await
        .unwrap();
    upstream.wait_for_requests(1).await;
    drop(stream);
    let m = settled(gw.admin_addr(), 1.0).await;
    assert_eq!(
        count(
            &m,
            &[
                ("operation", "SMSMessageSent"),
                ("status_code", "499"),
                ("status_subclass", "4xx")
            ]
        ),
        1.0
    );
    assert_eq!(count(&m, &[]), 1.0);
    // The upstream call is cancelled: its connection is closed, not left hanging.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while upstream.closed_by_peer() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(upstream.closed_by_peer(), 1);
}

#[tokio::test]
async fn b2_client_hangup_mid_upload_never_completes_the_upstream_body() {
    let upstream = FaultUpstream::fixed(Fault::ok()).await;
    let gw = gateway(settings(&upstream.url())).await;
    let mut input =
        b"POST /sms?api-version=2021-03-07 HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n"
            .to_vec();
    input.extend_from_slice(&vec![b'a'; 100 * 1024]);
    // Sends the head and 100 KiB of the announced 1 MiB, then closes.
    raw_exchange(gw.proxy_addr(), &input, Duration::from_millis(300)).await;
    let m = settled(gw.admin_addr(), 1.0).await;
    let received = upstream.received();
    assert!(received.len() <= 1);
    for r in &received {
        assert!(!r.body_complete, "upstream saw a complete body");
        assert!(r.body_len < 1048576);
    }
    assert_eq!(count(&m, &[]), 1.0);
    assert_eq!(
        count(&m, &[("status_code", "499")]) + count(&m, &[("status_code", "400")]),
        1.0,
        "{:?}",
        m.requests_by("status_code")
    );
    assert_eq!(m.sum("acsgate_upstream_errors_total", &[]), 0.0);
}

#[tokio::test]
async fn b3_h2_stream_reset_is_499_once_and_the_connection_stays_usable() {
    let upstream = FaultUpstream::hanging("/sms").await;
    let gw = gateway(settings(&upstream.url())).await;
    let tcp = TcpStream::connect(gw.proxy_addr()).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = Request::post("http://x/sms?api-version=2021-03-07")
        .body(())
        .unwrap();
    let (_response, mut stream) = client.send_request(request, false).unwrap();
    stream
        .send_data(Bytes::from_static(b"{\"partial\":"), false)
        .unwrap();
    upstream.wait_for_requests(1).await;
    stream.send_reset(Reason::CANCEL);

    // Same connection, next stream: still served.
    let mut client = client.ready().await.unwrap();
    let request = Request::post("http://x/identities?api-version=2022-06-01")
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);

    let m = settled(gw.admin_addr(), 2.0).await;
    assert_eq!(
        count(
            &m,
            &[("operation", "SMSMessageSent"), ("status_code", "499")]
        ),
        1.0
    );
    assert_eq!(
        count(
            &m,
            &[("operation", "CreateIdentity"), ("status_code", "200")]
        ),
        1.0
    );
    assert_eq!(count(&m, &[]), 2.0);
    let sms: Vec<_> = upstream
        .received()
        .into_iter()
        .filter(|r| r.target.starts_with("/sms"))
        .collect();
    assert_eq!(sms.len(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!upstream.received()[0].body_complete);
}

#[tokio::test]
async fn b4_expect_continue_without_a_body_is_ended_by_the_body_deadline() {
    let upstream = FaultUpstream::fixed(Fault::ok()).await;
    let gw = gateway(settings(&upstream.url())).await;
    let input =
        b"POST /sms HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n";
    // Plan: body deadline 5 s in tests; the connection must be answered (408) or closed by then.
    let reply = raw_exchange(gw.proxy_addr(), input, Duration::from_secs(7)).await;
    assert!(
        reply.closed,
        "connection still open after the body deadline"
    );
    let m = settled(gw.admin_addr(), 1.0).await;
    assert_eq!(count(&m, &[]), 1.0);
    assert!(upstream.received().iter().all(|r| !r.body_complete));
}

#[tokio::test]
async fn b5_a_body_dripped_at_one_byte_per_second_is_cut_off() {
    let upstream = FaultUpstream::fixed(Fault::ok()).await;
    let gw = gateway(settings(&upstream.url())).await;
    let mut stream = TcpStream::connect(gw.proxy_addr()).await.unwrap();
    stream
        .write_all(b"POST /sms HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    // Plan: 1 KiB/s minimum rate, 5 s body deadline in tests.
    let mut closed = false;
    for _ in 0..8 {
        if stream.write_all(b"a").await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(closed, "a 1 byte/s body was still accepted after 8 s");
    assert!(upstream.received().iter().all(|r| !r.body_complete));
}

/// B6, slow reader over HTTP/1.1: the client reads the head and a little of a 256 MiB download,
/// then stops reading. The gateway holds nothing beyond its socket buffers (its peak RSS stays
/// flat, so the upstream is back-pressured: the body cannot be anywhere else), ends the
/// connection once its writes have made no progress for the body idle timeout, and counts the
/// request once, with the status it sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b6_slow_reader_is_back_pressured_then_cut_by_the_body_idle_timeout() {
    use support::faults::GatewayProcess;
    use tokio::io::AsyncReadExt;
    const LEN: u64 = 256 << 20;
    let idle = Duration::from_secs(1);
    let upstream = FaultUpstream::fixed(Fault::Stream { len: LEN, seed: 6 }).await;
    let gw = GatewayProcess::start(&upstream.url(), &[("ACSGATE_BODY_IDLE_TIMEOUT", "1s")]).await;
    let baseline = gw.sample();
    let mut stream = TcpStream::connect(gw.proxy).await.unwrap();
    let sent = tokio::time::Instant::now();
    stream
        .write_all(b"GET /rooms?api-version=2024-04-15 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0usize;
    while read < 64 * 1024 {
        read += stream.read(&mut buf).await.unwrap();
    }
    // Stop reading. The request stays in flight while the buffers fill and the writes stall,
    // then ends once they have stalled for the body idle timeout.
    let stopped = tokio::time::Instant::now();
    let m = scrape_until(gw.admin, |m| {
        m.sum("acsgate_requests_in_flight", &[]) == 0.0
    })
    .await;
    let cut_after = stopped.elapsed();
    assert_eq!(
        m.sum("acsgate_requests_in_flight", &[]),
        0.0,
        "still in flight"
    );
    // The writes may stall before the client stops (its window opens only after it has read
    // enough), but never before the request was sent.
    assert!(sent.elapsed() >= idle, "{:?}", sent.elapsed());
    assert!(cut_after < idle * 3, "{cut_after:?}");
    let stalled = gw.sample();
    let grew = stalled.hwm_kib - baseline.hwm_kib;
    assert!(grew < 32 * 1024, "VmHWM grew {grew} KiB");
    assert_eq!(
        count(&m, &[("operation", "ListRooms"), ("status_code", "200")]),
        1.0
    );
    assert_eq!(count(&m, &[]), 1.0);

    // What was already in the socket buffers can still be read; then the connection ends
    // (never a clean end of the 256 MiB body).
    loop {
        match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => read += n,
            Err(_) => panic!("the gateway left the connection open"),
        }
    }
    assert!((read as u64) < LEN / 16, "{read} bytes reached the client");
}
