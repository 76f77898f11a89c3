//! Reliability plan E5/E6 (CI variants): large bodies stream through the real binary in both
//! directions over HTTP/1.1 and h2c, byte-identical (SHA-256), without the gateway buffering
//! them: its peak RSS (`VmHWM`) may grow by less than 32 MiB for a 64 MiB body.
//!
//! E7 (CI variant): a slow upstream back-pressures an upload instead of the gateway buffering it.
//!
//! `ACSGATE_STREAM_MIB` sets the body size (default 64; the soak tier uses 1024).

mod support;

use std::time::Duration;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ring::digest::{Context, SHA256};

use support::faults::{Fault, FaultUpstream, GatewayProcess, Pattern, pattern_sha256};

const PIECE: usize = 64 * 1024;
const SEED: u64 = 0xE5E6;
/// Peak-RSS growth allowed for one streamed body, whatever its size.
const HWM_BUDGET_KIB: u64 = 32 * 1024;

fn stream_len() -> u64 {
    let mib: u64 = std::env::var("ACSGATE_STREAM_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    mib * 1024 * 1024
}

fn client(h2: bool) -> Client<HttpConnector, PatternBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http()
}

/// Uploads `len` bytes of the pattern, written in 64 KiB pieces, and returns the status.
async fn upload(gw: &GatewayProcess, h2: bool, len: u64) -> StatusCode {
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/sms?api-version=2021-03-07", gw.proxy))
        .body(PatternBody::new(len))
        .unwrap();
    // Generous: 30 s plus 1 s per 8 MiB, for debug builds on a busy machine.
    let limit = Duration::from_secs(30 + (len >> 23));
    let response = tokio::time::timeout(limit, client(h2).request(request))
        .await
        .expect("answered")
        .expect("request succeeds");
    response.status()
}

/// Asserts that the upstream received two `len`-byte uploads, whole and uncorrupted.
fn assert_two_whole_uploads(upstream: &FaultUpstream, len: u64) {
    let expected = pattern_sha256(len, SEED);
    let big: Vec<_> = upstream
        .received()
        .into_iter()
        .filter(|r| r.body_len == len)
        .collect();
    assert_eq!(big.len(), 2, "both uploads arrived whole");
    for r in big {
        assert!(r.body_complete);
        assert_eq!(r.body_sha256, expected, "upload corrupted");
    }
}

/// Downloads the whole body; returns (status, bytes, SHA-256).
async fn download(gw: &GatewayProcess, h2: bool) -> (StatusCode, u64, [u8; 32]) {
    let request = Request::get(format!("http://{}/rooms?api-version=2024-04-15", gw.proxy))
        .body(PatternBody::new(0))
        .unwrap();
    let response = client(h2).request(request).await.expect("head arrives");
    let status = response.status();
    let mut body = response.into_body();
    let mut sha = Context::new(&SHA256);
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("body streams without error").into_data() {
            let data: Bytes = data;
            sha.update(&data);
            len += data.len() as u64;
        }
    }
    (status, len, sha.finish().as_ref().try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e5_large_uploads_stream_byte_identical_with_bounded_memory() {
    let len = stream_len();
    let upstream = FaultUpstream::fixed(Fault::ok()).await;
    let gw = GatewayProcess::start(&upstream.url(), &[]).await;
    // Warm up both protocols so that the baseline includes pools and buffers.
    for h2 in [false, true] {
        assert_eq!(upload(&gw, h2, 1024).await, StatusCode::OK);
    }
    let baseline = gw.sample();
    for h2 in [false, true] {
        assert_eq!(upload(&gw, h2, len).await, StatusCode::OK);
    }
    let peak = gw.sample();
    assert_two_whole_uploads(&upstream, len);
    let grew = peak.hwm_kib.saturating_sub(baseline.hwm_kib);
    println!(
        "soak| upload {} MiB, h1 + h2 | gateway VmHWM growth (KiB) | {grew}",
        len >> 20
    );
    assert!(grew < HWM_BUDGET_KIB, "gateway peak RSS grew {grew} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e6_large_downloads_stream_byte_identical_with_bounded_memory() {
    let len = stream_len();
    let upstream = FaultUpstream::start(move |r| {
        if r.header("x-warmup").is_some() {
            Fault::ok()
        } else {
            Fault::Stream { len, seed: SEED }
        }
    })
    .await;
    let gw = GatewayProcess::start(&upstream.url(), &[]).await;
    for h2 in [false, true] {
        let warm = Request::get(format!("http://{}/rooms?api-version=2024-04-15", gw.proxy))
            .header("x-warmup", "1")
            .body(PatternBody::new(0))
            .unwrap();
        let response = client(h2).request(warm).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let baseline = gw.sample();
    let expected = pattern_sha256(len, SEED);
    for h2 in [false, true] {
        let (status, got, sha) = download(&gw, h2).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(got, len, "h2={h2}");
        assert_eq!(sha, expected, "download corrupted (h2={h2})");
    }
    let peak = gw.sample();
    let grew = peak.hwm_kib.saturating_sub(baseline.hwm_kib);
    println!(
        "soak| download {} MiB, h1 + h2 | gateway VmHWM growth (KiB) | {grew}",
        len >> 20
    );
    assert!(grew < HWM_BUDGET_KIB, "gateway peak RSS grew {grew} KiB");
}

/// A request body of `len` bytes of [`Pattern`]`(SEED)` in 64 KiB frames, made as it is sent.
struct PatternBody {
    pattern: Pattern,
    left: u64,
}

impl PatternBody {
    fn new(len: u64) -> PatternBody {
        PatternBody {
            pattern: Pattern::new(SEED),
            left: len,
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(PIECE as u64) as usize;
        let mut buf = vec![0u8; n];
        self.pattern.fill(&mut buf);
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// E7 (CI variant): a fast client uploads to an upstream that reads at 16 MiB/s. Flow control
/// pushes back to the client through the gateway (h1: TCP; h2: stream windows) instead of the
/// gateway buffering the difference: the upload takes as long as the upstream needs, arrives
/// whole, and the gateway's peak RSS grows by far less than the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e7_a_slow_upstream_back_pressures_the_upload() {
    const RATE: u64 = 16 << 20;
    const LEN: u64 = 24 << 20;
    let upstream = FaultUpstream::fixed(Fault::SlowRead {
        bytes_per_sec: RATE,
    })
    .await;
    let gw = GatewayProcess::start(&upstream.url(), &[]).await;
    for h2 in [false, true] {
        assert_eq!(upload(&gw, h2, 1024).await, StatusCode::OK);
    }
    let baseline = gw.sample();
    for h2 in [false, true] {
        let started = tokio::time::Instant::now();
        assert_eq!(upload(&gw, h2, LEN).await, StatusCode::OK);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs_f64(LEN as f64 / RATE as f64),
            "{took:?}"
        );
    }
    let grew = gw.sample().hwm_kib.saturating_sub(baseline.hwm_kib);
    assert_two_whole_uploads(&upstream, LEN);
    // Buffering the difference between the client's and the upstream's speeds would cost
    // most of the body.
    assert!(grew < (LEN >> 10) / 3, "gateway peak RSS grew {grew} KiB");
}
