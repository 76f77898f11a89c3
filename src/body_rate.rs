//! [`BodyRateLayer`]: a request body must arrive within a deadline and at a minimum average
//! rate, or the request ends with 408.
//!
//! An idle timeout between reads is not enough: a client dripping one byte every few seconds
//! never trips it and holds a connection, a permit and an upstream connection for as long as
//! it likes (R-U-Dead-Yet; nginx kept 100 of 100 such connections open in the team's test).
//! After a grace period the body's average rate since the request started must stay at or
//! above the minimum, and the whole body must arrive within the deadline.
//!
//! What it does to a request: wraps its body. When the body is too slow, the body yields a
//! [`BodyTooSlowError`]; the upstream request is then aborted (so the upstream never sees a
//! complete body) and the gateway answers 408 with `x-acsgate-error: client_timeout`.
//! Bodies that arrive with the request head never start a timer.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Layer;

use crate::error::BoxError;

/// How fast a request body must arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyRate {
    /// The whole body must arrive within this time from the request head.
    pub timeout: Duration,
    /// Average bytes per second the body must keep up after [`BodyRate::grace`].
    pub min_bytes_per_second: u64,
    /// Time before the minimum rate applies (connection ramp-up, a slow first chunk).
    pub grace: Duration,
}

/// Time before the minimum rate applies (capped by the deadline).
pub const RATE_GRACE: Duration = Duration::from_secs(5);

/// How often a stalled body's rate is checked.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The error a request body ends with when it is too slow.
#[derive(Debug, thiserror::Error)]
#[error("request body too slow")]
pub struct BodyTooSlowError;

/// Layer that wraps every request body in a [`RateBody`].
#[derive(Clone, Copy, Debug)]
pub struct BodyRateLayer {
    rate: BodyRate,
}

impl BodyRateLayer {
    /// Enforces `rate` on request bodies.
    pub fn new(rate: BodyRate) -> Self {
        BodyRateLayer { rate }
    }
}

impl<S> Layer<S> for BodyRateLayer {
    type Service = RateService<S>;

    fn layer(&self, inner: S) -> RateService<S> {
        RateService {
            inner,
            rate: self.rate,
        }
    }
}

/// Service that wraps request bodies; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct RateService<S> {
    inner: S,
    rate: BodyRate,
}

impl<S, B> tower::Service<Request<B>> for RateService<S>
where
    S: tower::Service<Request<RateBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> S::Future {
        let rate = self.rate;
        self.inner.call(request.map(|inner| RateBody {
            inner,
            rate,
            started: Instant::now(),
            received: 0,
            timer: None,
        }))
    }
}

pin_project! {
    /// A request body held to a [`BodyRate`].
    pub struct RateBody<B> {
        #[pin]
        inner: B,
        rate: BodyRate,
        started: Instant,
        received: u64,
        // Allocated only once the body stalls: most bodies come with the head.
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<B> RateBody<B> {
    /// Whether the body is too slow at `now`.
    fn too_slow(rate: &BodyRate, started: Instant, received: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(started);
        if elapsed >= rate.timeout {
            return true;
        }
        elapsed >= rate.grace
            && (received as f64) < rate.min_bytes_per_second as f64 * elapsed.as_secs_f64()
    }
}

impl<B> Body for RateBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.received += data.remaining() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let rate = *this.rate;
                let first_check =
                    (*this.started + rate.grace.min(rate.timeout)).max(Instant::now());
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(first_check)));
                while timer.as_mut().poll(cx).is_ready() {
                    let now = Instant::now();
                    if Self::too_slow(&rate, *this.started, *this.received, now) {
                        return Poll::Ready(Some(Err(Box::new(BodyTooSlowError))));
                    }
                    let deadline = *this.started + rate.timeout;
                    timer.as_mut().reset((now + CHECK_INTERVAL).min(deadline));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: BodyRate = BodyRate {
        timeout: Duration::from_secs(60),
        min_bytes_per_second: 1000,
        grace: Duration::from_secs(5),
    };

    #[test]
    fn the_minimum_rate_applies_after_the_grace_period() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        assert!(!RateBody::<()>::too_slow(&RATE, start, 0, at(4)));
        assert!(RateBody::<()>::too_slow(&RATE, start, 0, at(5)));
        assert!(!RateBody::<()>::too_slow(&RATE, start, 10_000, at(10)));
        assert!(RateBody::<()>::too_slow(&RATE, start, 9_999, at(10)));
    }

    #[test]
    fn the_deadline_applies_whatever_the_rate() {
        let start = Instant::now();
        let fast = u64::MAX / 2;
        assert!(RateBody::<()>::too_slow(
            &RATE,
            start,
            fast,
            start + RATE.timeout
        ));
    }
}
