//! [`IdleTimeoutBody`]: a response body may go at most so long without data.
//!
//! What it does to a response body: passes every frame through, and fails with
//! [`BodyIdleError`] when the body has had nothing to give for the idle timeout.
//!
//! Its timer starts only when the body has to wait: most upstream bodies are whole by the
//! time they are polled, and tower-http's `TimeoutBody`, which made and registered a timer
//! before every poll, cost a timer-wheel insert and remove per response for them.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::error::BoxError;

/// The error a response body ends with when it has been idle too long.
#[derive(Debug, thiserror::Error)]
#[error("response body idle for longer than its timeout")]
pub struct BodyIdleError;

pin_project! {
    /// A body that fails when it has no data for `idle`; see the [module docs](self).
    pub struct IdleTimeoutBody<B> {
        #[pin]
        inner: B,
        idle: Duration,
        // Made the first time the body waits, then reset: a streaming body allocates once.
        timer: Option<Pin<Box<Sleep>>>,
        // A frame came since the timer was last set: the next wait starts a new period.
        progressed: bool,
    }
}

impl<B> IdleTimeoutBody<B> {
    /// `inner`, which may wait at most `idle` for each piece.
    pub fn new(idle: Duration, inner: B) -> Self {
        IdleTimeoutBody {
            inner,
            idle,
            timer: None,
            progressed: false,
        }
    }
}

impl<B> Body for IdleTimeoutBody<B>
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
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.progressed = true;
            return Poll::Ready(frame.map(|result| result.map_err(Into::into)));
        }
        let idle = *this.idle;
        let timer = match this.timer {
            Some(timer) if *this.progressed => {
                timer.as_mut().reset(Instant::now() + idle);
                timer
            }
            Some(timer) => timer,
            None => this.timer.insert(Box::pin(tokio::time::sleep(idle))),
        };
        *this.progressed = false;
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyIdleError)))),
            Poll::Pending => Poll::Pending,
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
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    /// A body that yields what its channel receives.
    struct ChannelBody(mpsc::Receiver<Bytes>);

    impl Body for ChannelBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|data| data.map(|d| Ok(Frame::data(d))))
        }
    }

    #[tokio::test]
    async fn a_ready_body_passes_without_a_timer() {
        let mut body = IdleTimeoutBody::new(
            Duration::from_millis(1),
            http_body_util::Full::new(Bytes::from_static(b"whole")),
        );
        let frame = body.frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().ok(), Some(Bytes::from_static(b"whole")));
        assert!(body.frame().await.is_none());
        assert!(body.timer.is_none(), "never waited, never armed");
    }

    #[tokio::test]
    async fn a_body_that_stops_sending_fails_after_the_idle_time() {
        let (tx, rx) = mpsc::channel(1);
        let mut body = IdleTimeoutBody::new(Duration::from_millis(100), ChannelBody(rx));
        // Data every 50 ms keeps it alive for longer than the idle time.
        for _ in 0..5 {
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                tx.send(Bytes::from_static(b"b")).await
            });
            assert!(body.frame().await.expect("a frame").is_ok());
        }
        let started = std::time::Instant::now();
        let error = body.frame().await.expect("an error").unwrap_err();
        assert!(error.is::<BodyIdleError>(), "{error}");
        assert!(started.elapsed() >= Duration::from_millis(90));
        drop(tx);
    }
}
