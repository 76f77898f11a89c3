//! Reliability plan F3: SIGTERM arriving while an upload streams through the real binary.
//! With a drain deadline long enough, the upload finishes whole and the process exits 0; with
//! a short one, the upstream never sees the body complete, the request is counted once, and
//! the admin port answers until the proxy has drained.

mod support;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body::{Body, Frame};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use support::faults::{Fault, FaultUpstream, GatewayProcess, Pattern, pattern_sha256};

const PIECE: usize = 64 * 1024;
const SEED: u64 = 0xF3;
const SMS: &str = "/sms?api-version=2021-03-07";

/// A request body fed piece by piece from the test through a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|piece| piece.map(|p| Ok(Frame::data(p))))
    }
}

/// Starts a `len`-byte upload of the pattern (Content-Length framed) and returns the sender
/// for its pieces and the pending response.
fn start_upload(
    gw: &GatewayProcess,
    len: u64,
) -> (
    mpsc::Sender<Bytes>,
    tokio::task::JoinHandle<Result<http::Response<hyper::body::Incoming>, String>>,
) {
    let (tx, rx) = mpsc::channel(4);
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}{SMS}", gw.proxy))
        .header("content-length", len)
        .body(ChannelBody(rx))
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response =
        tokio::spawn(async move { client.request(request).await.map_err(|e| format!("{e:?}")) });
    (tx, response)
}

/// Sends `pieces` pieces of the pattern, sleeping `pause` between them.
async fn feed(tx: &mpsc::Sender<Bytes>, pattern: &mut Pattern, pieces: usize, pause: Duration) {
    for _ in 0..pieces {
        let mut buf = vec![0u8; PIECE];
        pattern.fill(&mut buf);
        if tx.send(Bytes::from(buf)).await.is_err() {
            return;
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

async fn exit_code(gw: &mut GatewayProcess) -> Option<i32> {
    tokio::time::timeout(Duration::from_secs(8), gw.child.wait())
        .await
        .expect("gateway exits after SIGTERM")
        .expect("wait works")
        .code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_sigterm_mid_upload_finishes_it_within_the_drain_deadline() {
    let pieces = 512; // 32 MiB
    let len = (pieces * PIECE) as u64;
    let upstream = FaultUpstream::fixed(Fault::ok()).await;
    let mut gw = GatewayProcess::start(&upstream.url(), &[("ACSGATE_DRAIN_TIMEOUT", "8s")]).await;
    let (tx, response) = start_upload(&gw, len);
    let mut pattern = Pattern::new(SEED);
    feed(&tx, &mut pattern, pieces / 2, Duration::ZERO).await;
    upstream.wait_for_requests(1).await;
    gw.terminate();
    feed(&tx, &mut pattern, pieces - pieces / 2, Duration::ZERO).await;
    drop(tx);
    let response = response.await.unwrap().expect("the upload is answered");
    assert_eq!(response.status(), 200);
    let received = upstream.received();
    assert_eq!(received.len(), 1);
    assert!(received[0].body_complete, "the upload was cut");
    assert_eq!(received[0].body_len, len);
    assert_eq!(received[0].body_sha256, pattern_sha256(len, SEED));
    assert_eq!(exit_code(&mut gw).await, Some(0));
}

/// SIGTERM with a 500 ms drain deadline while an upload drips in: checks everything but the
/// count and returns the last scrape the admin port answered during the drain.
async fn cut_upload_past_the_drain_deadline() -> support::Metrics {
    let pieces = 256; // 16 MiB at 64 KiB per 20 ms: far longer than the drain deadline
    let len = (pieces * PIECE) as u64;
    let upstream = FaultUpstream::fixed(Fault::ok()).await;
    let mut gw =
        GatewayProcess::start(&upstream.url(), &[("ACSGATE_DRAIN_TIMEOUT", "500ms")]).await;
    let admin = gw.admin;
    let (tx, response) = start_upload(&gw, len);
    let mut pattern = Pattern::new(SEED);
    feed(&tx, &mut pattern, 4, Duration::ZERO).await;
    upstream.wait_for_requests(1).await;
    gw.terminate();
    // Keep dripping while scraping the admin port until it closes.
    let drip = tokio::spawn(async move {
        feed(&tx, &mut pattern, pieces - 4, Duration::from_millis(20)).await;
    });
    let mut last = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), support::try_scrape(admin)).await {
            Ok(Some(metrics)) => last = Some(metrics),
            _ => break,
        }
    }
    assert_eq!(exit_code(&mut gw).await, Some(0));
    drip.abort();
    // The client gets a 503 `draining` or a cut connection, never a 200.
    if let Ok(response) = response.await.unwrap() {
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[acsgate::error::ERROR_HEADER], "draining");
    }
    let received = upstream.received();
    assert_eq!(received.len(), 1);
    assert!(
        !received[0].body_complete,
        "the upstream saw the whole body"
    );
    assert!(received[0].body_len < len);
    last.expect("the admin port answered during the drain")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_sigterm_mid_upload_past_the_drain_deadline_never_completes_upstream() {
    cut_upload_past_the_drain_deadline().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_the_request_cut_by_the_drain_deadline_can_be_scraped_counted_once() {
    let last = cut_upload_past_the_drain_deadline().await;
    let labels = [("operation", "SMSMessageSent")];
    assert_eq!(last.sum("acsgate_requests_total", &labels), 1.0);
    assert_eq!(
        last.sum("acsgate_gateway_errors_total", &[("kind", "draining")]),
        1.0
    );
}
