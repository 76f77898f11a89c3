//! The header-read timeout of HTTP/1.1 connections, kept per connection rather than per
//! request.
//!
//! A request head must arrive within the header-read timeout of the connection starting to
//! wait for it: when the connection opens, and each time it has answered everything it was
//! asked. The same limit closes keep-alive connections left idle that long. hyper can enforce
//! this itself, but it makes, registers and drops a timer for every request head it reads;
//! here the connection's guard holds one timer, which is re-armed only when it fires (at most
//! once per timeout period under load), and a request costs a few atomic operations.
//!
//! What it does to a request: counts it in progress from its head to the end of its response
//! body (or until it is dropped), and marks the connection as having served a request. What it
//! does to a response: wraps its body to notice the end. HTTP/2 connections are left alone:
//! they multiplex, and hyper's keep-alive pings watch them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;

/// Whether a request of `version` is polled by its connection's task: HTTP/1, whose guard
/// wakes that task at least once per header-read timeout while a request is in progress (see
/// [`Progress::check`]), and when the drain begins. HTTP/2 streams run in tasks of their own,
/// which nothing else wakes.
pub(crate) fn polled_by_connection(version: Version) -> bool {
    version < Version::HTTP_2
}

/// What one connection's guard and its requests share.
pub(crate) struct Progress {
    /// When the connection began serving (after any TLS handshake).
    opened: Instant,
    /// Whether a request head has arrived.
    started: AtomicBool,
    /// HTTP/2: no head deadline.
    multiplexed: AtomicBool,
    /// Requests between their head and the end of their response.
    in_progress: AtomicUsize,
    /// When the last request in progress finished, in nanoseconds since `opened`.
    idle_since: AtomicU64,
}

/// What the guard should do when its timer fires.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// Nothing yet; look again at this instant.
    At(Instant),
    /// No request head arrived in time; `served` says whether the connection served one
    /// before (then it was only idle).
    TimedOut {
        /// Whether a request was served on the connection.
        served: bool,
    },
    /// The connection multiplexes: stop looking.
    Never,
}

impl Progress {
    /// A connection that starts waiting for its first request head now.
    pub(crate) fn new() -> Arc<Progress> {
        Arc::new(Progress {
            opened: Instant::now(),
            started: AtomicBool::new(false),
            multiplexed: AtomicBool::new(false),
            in_progress: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
        })
    }

    /// When the connection began serving.
    pub(crate) fn opened(&self) -> Instant {
        self.opened
    }

    /// Whether a request head has arrived.
    pub(crate) fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// Whether the head deadline has passed at `now`, or when to look again.
    pub(crate) fn check(&self, now: Instant, timeout: Duration) -> Check {
        if self.multiplexed.load(Ordering::Relaxed) {
            return Check::Never;
        }
        if self.in_progress.load(Ordering::Acquire) > 0 {
            // Busy: the deadline starts when it is idle again, at least `timeout` from now.
            // The wake this schedules is also what HTTP/1 requests far from their response
            // deadline wait for instead of a timer of their own (`proxy::deadline`).
            return Check::At(now + timeout);
        }
        let idle_since = Duration::from_nanos(self.idle_since.load(Ordering::Acquire));
        let deadline = self.opened + idle_since + timeout;
        if now >= deadline {
            Check::TimedOut {
                served: self.started(),
            }
        } else {
            Check::At(deadline)
        }
    }

    fn begin<B>(self: &Arc<Self>, request: &Request<B>) -> InProgress {
        self.started.store(true, Ordering::Relaxed);
        if !polled_by_connection(request.version()) {
            self.multiplexed.store(true, Ordering::Relaxed);
        }
        self.in_progress.fetch_add(1, Ordering::AcqRel);
        InProgress(Arc::clone(self))
    }
}

/// One request in progress; dropped when its response body ends or the request is dropped.
struct InProgress(Arc<Progress>);

impl Drop for InProgress {
    fn drop(&mut self) {
        let progress = &self.0;
        // Stamped before the count drops, so the guard never sees an idle connection with an
        // old stamp.
        let idle_since = u64::try_from(progress.opened.elapsed().as_nanos()).unwrap_or(u64::MAX);
        progress.idle_since.fetch_max(idle_since, Ordering::AcqRel);
        progress.in_progress.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's service that tracks its requests in the connection's [`Progress`].
pub(crate) struct Track<S> {
    inner: S,
    progress: Arc<Progress>,
}

impl<S> Track<S> {
    /// `inner`, tracked, for a connection that starts waiting for its first request now.
    pub(crate) fn new(inner: S) -> (Arc<Progress>, Track<S>) {
        let progress = Progress::new();
        let track = Track {
            inner,
            progress: Arc::clone(&progress),
        };
        (progress, track)
    }
}

impl<S, B, ResBody> hyper::service::Service<Request<B>> for Track<S>
where
    S: hyper::service::Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = Response<TrackBody<ResBody>>;
    type Error = S::Error;
    type Future = TrackFuture<S::Future>;

    fn call(&self, request: Request<B>) -> Self::Future {
        let in_progress = self.progress.begin(&request);
        TrackFuture {
            inner: self.inner.call(request),
            in_progress: Some(in_progress),
        }
    }
}

pin_project! {
    /// Response future of [`Track`]: hands the request's place to the response body.
    pub(crate) struct TrackFuture<F> {
        #[pin]
        inner: F,
        in_progress: Option<InProgress>,
    }
}

impl<F, B, E> Future for TrackFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let in_progress = this.in_progress.take();
        Poll::Ready(Ok(response.map(|inner| TrackBody {
            inner,
            _in_progress: in_progress,
        })))
    }
}

pin_project! {
    /// Response body of [`Track`]: the request is in progress until this is dropped, which
    /// hyper does once the body has ended.
    pub(crate) struct TrackBody<B> {
        #[pin]
        inner: B,
        _in_progress: Option<InProgress>,
    }
}

impl<B: Body> Body for TrackBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
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

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[test]
    fn the_deadline_runs_while_idle_and_waits_while_busy() {
        let progress = Progress::new();
        let opened = progress.opened;
        assert_eq!(progress.check(opened, TIMEOUT), Check::At(opened + TIMEOUT));
        assert_eq!(
            progress.check(opened + TIMEOUT, TIMEOUT),
            Check::TimedOut { served: false }
        );

        let request = progress.begin(&Request::new(()));
        let later = opened + 3 * TIMEOUT;
        assert_eq!(progress.check(later, TIMEOUT), Check::At(later + TIMEOUT));
        std::thread::sleep(Duration::from_millis(20));
        drop(request);
        // Idle since the request ended: the next head is due a timeout after that.
        let Check::At(due) = progress.check(opened + TIMEOUT, TIMEOUT) else {
            panic!("not due yet");
        };
        assert!(
            due >= opened + TIMEOUT + Duration::from_millis(20),
            "{due:?}"
        );
        assert_eq!(
            progress.check(due, TIMEOUT),
            Check::TimedOut { served: true }
        );
    }

    #[test]
    fn http2_connections_have_no_head_deadline() {
        let progress = Progress::new();
        let request = Request::builder()
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        drop(progress.begin(&request));
        assert_eq!(
            progress.check(Instant::now() + TIMEOUT, TIMEOUT),
            Check::Never
        );
    }
}
