//! [`AdmissionLayer`]: whether a request may take the gateway's resources, and for how long.
//!
//! What it does to a request:
//! - requests the gateway will not forward are answered at once: `CONNECT` (405
//!   `method_not_allowed`: the gateway is not a tunnel), the asterisk-form target of
//!   `OPTIONS *` and a body framed as chunked twice (400 `bad_request`; RFC 9112 §6.1 forbids
//!   applying chunked twice, and hyper lets it through);
//! - a URI longer than the limit is answered 414 (`uri_too_long`) at once;
//! - when `max_in_flight` requests are already being served, the request is answered 503
//!   (`overloaded`) at once: the gateway sheds load rather than queueing without bound, so a
//!   slow upstream cannot pile up memory and latency in the sidecar;
//! - otherwise it takes a permit, held until the response body ends.
//!
//! What it does to a response: when the drain deadline passes during shutdown, a request still
//! waiting for its response head is answered 503 (`draining`) and its upstream call is dropped;
//! a response body still streaming ends with a [`DrainingError`], which aborts it.
//!
//! An HTTP/1 request waits for the drain deadline only once the drain has begun: until then
//! nothing can pass, and its connection's task, which polls it, is woken when the drain begins.
//! An HTTP/2 request runs in a task of its own that nothing else wakes, so it registers for the
//! deadline whenever it waits.
//!
//! Every answer the layer gives carries `x-acsgate-error` and the [`ErrorKind`] extension, so
//! the record layer (outside this one) counts it exactly once.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tower::{Layer, Service};

use crate::error::{AnswerBody, BoxError, DrainingError, ErrorKind};
use crate::head_timeout;

/// The drain deadline of a shutdown: begun or not, passed or not, and a way to wait for it.
/// Clones share it.
///
/// Cheaper than a cancellation token on the request path: checking it is one atomic load, and
/// a request registers to be woken only while it actually waits (for its response head, or
/// for the next piece of a streaming body), and an HTTP/1 request only once the drain has
/// begun (see the [module docs](self)).
#[derive(Clone, Default)]
pub struct DrainDeadline {
    inner: Arc<DrainState>,
}

#[derive(Default)]
struct DrainState {
    begun: AtomicBool,
    passed: AtomicBool,
    // An `Arc` of its own: a waiting request's `OwnedNotified` holds one.
    notify: Arc<Notify>,
}

impl DrainDeadline {
    /// A deadline that has not passed.
    pub fn new() -> Self {
        DrainDeadline::default()
    }

    /// Marks the drain begun. Called before the connections are told to finish, so that an
    /// HTTP/1 request polled by its woken connection registers for the deadline.
    pub fn begin(&self) {
        self.inner.begun.store(true, Ordering::Release);
    }

    /// Marks the deadline passed and wakes every request waiting on it.
    pub fn pass(&self) {
        self.inner.passed.store(true, Ordering::Release);
        self.inner.notify.notify_waiters();
    }

    /// Whether the deadline has passed.
    pub fn has_passed(&self) -> bool {
        self.inner.passed.load(Ordering::Acquire)
    }

    /// Ready once the deadline has passed. `waiter` holds the registration between polls;
    /// it is made on the first poll (for a request its connection's task polls, the first
    /// poll since the drain began), so a request that is never polled while waiting pays
    /// only the atomic loads.
    fn poll_passed(
        &self,
        mut waiter: Pin<&mut Option<OwnedNotified>>,
        polled_by_connection: bool,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        if self.has_passed() {
            return Poll::Ready(());
        }
        if waiter.is_none() {
            if polled_by_connection && !self.inner.begun.load(Ordering::Acquire) {
                // The connection's task is woken when the drain begins, and polls this again.
                return Poll::Pending;
            }
            // Made before the second look at the flag: `notify_waiters` wakes every
            // `Notified` that exists when it runs, polled yet or not.
            waiter.set(Some(Arc::clone(&self.inner.notify).notified_owned()));
            if self.has_passed() {
                return Poll::Ready(());
            }
        }
        match waiter.as_pin_mut() {
            Some(notified) => notified.poll(cx),
            None => Poll::Pending,
        }
    }
}

/// Layer that applies [`Admission`].
#[derive(Clone)]
pub struct AdmissionLayer {
    in_flight: Arc<InFlight>,
    drain: DrainDeadline,
    max_uri_bytes: usize,
}

/// Requests admitted and not yet finished, against the limit.
struct InFlight {
    count: AtomicUsize,
    max: usize,
}

/// One admitted request's place under the in-flight limit, given back on drop.
struct Permit(Arc<InFlight>);

impl Permit {
    /// A place, unless `max` requests are in flight already.
    fn try_acquire(in_flight: &Arc<InFlight>) -> Option<Permit> {
        let taken = in_flight.count.fetch_add(1, Ordering::Relaxed);
        if taken >= in_flight.max {
            in_flight.count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Permit(Arc::clone(in_flight)))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AdmissionLayer {
    /// Admits at most `max_in_flight` requests at once, with URIs of at most `max_uri_bytes`;
    /// requests still waiting when `drain` passes are cut short.
    pub fn new(max_in_flight: usize, max_uri_bytes: usize, drain: DrainDeadline) -> Self {
        AdmissionLayer {
            in_flight: Arc::new(InFlight {
                count: AtomicUsize::new(0),
                max: max_in_flight,
            }),
            drain,
            max_uri_bytes,
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            layer: self.clone(),
        }
    }
}

/// Service that admits, sheds or cuts short requests; see the [module docs](self).
#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

impl<S, B, ResBody> Service<Request<B>> for Admission<S>
where
    S: Service<Request<B>, Response = Response<ResBody>, Error = Infallible>,
    ResBody: AnswerBody,
{
    type Response = Response<AdmittedBody<ResBody>>;
    type Error = Infallible;
    type Future = AdmissionFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let layer = &self.layer;
        let uri_bytes = request
            .uri()
            .path_and_query()
            .map_or(0, |pq| pq.as_str().len());
        let refusal = if let Some(kind) = unforwardable(&request) {
            Some(kind)
        } else if uri_bytes > layer.max_uri_bytes {
            Some(ErrorKind::UriTooLong)
        } else if layer.drain.has_passed() {
            Some(ErrorKind::Draining)
        } else {
            None
        };
        let permit = match refusal {
            None => Permit::try_acquire(&layer.in_flight),
            Some(_) => None,
        };
        let state = match (refusal, permit) {
            (None, Some(permit)) => State::Admitted {
                polled_by_connection: head_timeout::polled_by_connection(request.version()),
                inner: self.inner.call(request),
                permit: Some(permit),
                drain: layer.drain.clone(),
                waiter: None,
            },
            (refusal, _) => State::Refused {
                kind: Some(refusal.unwrap_or(ErrorKind::Overloaded)),
            },
        };
        AdmissionFuture { state }
    }
}

/// Why the gateway will not forward `request`, if it will not.
fn unforwardable<B>(request: &Request<B>) -> Option<ErrorKind> {
    if request.method() == Method::CONNECT {
        return Some(ErrorKind::MethodNotAllowed);
    }
    if request.uri().path() == "*" {
        return Some(ErrorKind::BadRequest);
    }
    let chunked = request
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .filter(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
        .count();
    (chunked > 1).then_some(ErrorKind::BadRequest)
}

pin_project! {
    /// Response future of [`Admission`].
    pub struct AdmissionFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // Answered by the gateway without calling the inner service.
        Refused { kind: Option<ErrorKind> },
        // Waiting for the inner response, unless the drain deadline passes first.
        Admitted {
            #[pin]
            inner: F,
            permit: Option<Permit>,
            drain: DrainDeadline,
            #[pin]
            waiter: Option<OwnedNotified>,
            // HTTP/1: the connection's task polls this future (see the module docs).
            polled_by_connection: bool,
        },
    }
}

impl<F, ResBody> Future for AdmissionFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, Infallible>>,
    ResBody: AnswerBody,
{
    type Output = Result<Response<AdmittedBody<ResBody>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = match self.project().state.project() {
            StateProj::Refused { kind } => {
                let kind = kind.take().expect("polled after completion");
                gateway_answer(kind)
            }
            StateProj::Admitted {
                inner,
                permit,
                drain,
                waiter,
                polled_by_connection,
            } => {
                if let Poll::Ready(Ok(response)) = inner.poll(cx) {
                    let (parts, body) = response.into_parts();
                    let body = AdmittedBody {
                        inner: body,
                        _permit: permit.take(),
                        drain: Some(drain.clone()),
                        waiter: None,
                        polled_by_connection: *polled_by_connection,
                    };
                    return Poll::Ready(Ok(Response::from_parts(parts, body)));
                }
                ready!(drain.poll_passed(waiter, *polled_by_connection, cx));
                // Dropping the future (with this state) drops the upstream call and the permit.
                gateway_answer(ErrorKind::Draining)
            }
        };
        Poll::Ready(Ok(response))
    }
}

fn gateway_answer<B: AnswerBody>(kind: ErrorKind) -> Response<AdmittedBody<B>> {
    kind.response().map(|body| AdmittedBody {
        inner: B::answer(body),
        _permit: None,
        drain: None,
        waiter: None,
        polled_by_connection: true,
    })
}

pin_project! {
    /// Response body of [`Admission`]: holds the request's permit until it ends, and ends early
    /// with [`DrainingError`] when the drain deadline passes.
    pub struct AdmittedBody<B> {
        #[pin]
        inner: B,
        _permit: Option<Permit>,
        drain: Option<DrainDeadline>,
        #[pin]
        waiter: Option<OwnedNotified>,
        // HTTP/1: the connection's task polls this body (see the module docs).
        polled_by_connection: bool,
    }
}

impl<B> Body for AdmittedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        // Checked before the inner body: a stream that always has data is cut all the same.
        let cut = |drain: &mut Option<DrainDeadline>| {
            *drain = None;
            Poll::Ready(Some(Err::<Frame<Bytes>, BoxError>(Box::new(DrainingError))))
        };
        if this.drain.as_ref().is_some_and(DrainDeadline::has_passed) {
            return cut(this.drain);
        }
        let polled = this.inner.poll_frame(cx).map_err(Into::into);
        if polled.is_pending()
            && let Some(drain) = this.drain.as_ref()
            && drain
                .poll_passed(this.waiter.as_mut(), *this.polled_by_connection, cx)
                .is_ready()
        {
            return cut(this.drain);
        }
        polled
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

    fn request(method: Method, target: &str, te: &[&str]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(target);
        for value in te {
            builder = builder.header(header::TRANSFER_ENCODING, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn what_is_never_forwarded() {
        assert_eq!(
            unforwardable(&request(Method::CONNECT, "evil.example:443", &[])),
            Some(ErrorKind::MethodNotAllowed)
        );
        assert_eq!(
            unforwardable(&request(Method::OPTIONS, "*", &[])),
            Some(ErrorKind::BadRequest)
        );
        for twice in [&["chunked", "chunked"][..], &["chunked, Chunked"][..]] {
            assert_eq!(
                unforwardable(&request(Method::POST, "/sms", twice)),
                Some(ErrorKind::BadRequest),
                "{twice:?}"
            );
        }
        assert_eq!(
            unforwardable(&request(Method::POST, "/sms", &["chunked"])),
            None
        );
        assert_eq!(unforwardable(&request(Method::OPTIONS, "/sms", &[])), None);
    }

    #[test]
    fn the_in_flight_limit_counts_permits_until_they_drop() {
        let layer = AdmissionLayer::new(2, 1024, DrainDeadline::new());
        let first = Permit::try_acquire(&layer.in_flight).expect("room for one");
        let second = Permit::try_acquire(&layer.in_flight).expect("room for two");
        assert!(Permit::try_acquire(&layer.in_flight).is_none(), "full");
        drop(first);
        let third = Permit::try_acquire(&layer.in_flight).expect("a place came back");
        drop((second, third));
        assert_eq!(layer.in_flight.count.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_request_waiting_when_the_deadline_passes_is_woken() {
        let drain = DrainDeadline::new();
        let waiting = {
            let drain = drain.clone();
            tokio::spawn(async move {
                let mut waiter = std::pin::pin!(None);
                std::future::poll_fn(|cx| drain.poll_passed(waiter.as_mut(), false, cx)).await
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drain.pass();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("no panic");
        assert!(drain.has_passed());
    }

    #[test]
    fn an_http1_request_registers_for_the_deadline_only_once_the_drain_has_begun() {
        let drain = DrainDeadline::new();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut waiter = std::pin::pin!(None);
        assert!(
            drain
                .poll_passed(waiter.as_mut(), true, &mut cx)
                .is_pending()
        );
        assert!(waiter.is_none(), "no registration before the drain");
        drain.begin();
        assert!(
            drain
                .poll_passed(waiter.as_mut(), true, &mut cx)
                .is_pending()
        );
        assert!(waiter.is_some(), "registered once the drain has begun");
        drain.pass();
        assert!(drain.poll_passed(waiter.as_mut(), true, &mut cx).is_ready());
    }
}
