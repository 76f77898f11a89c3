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
//! Every answer the layer gives carries `x-acsgate-error` and the [`ErrorKind`] extension, so
//! the record layer (outside this one) counts it exactly once.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tower::{Layer, Service};

use crate::error::{BoxError, DrainingError, ErrorKind};

/// Layer that applies [`Admission`].
#[derive(Clone)]
pub struct AdmissionLayer {
    permits: Arc<Semaphore>,
    drain_expired: CancellationToken,
    max_uri_bytes: usize,
}

impl AdmissionLayer {
    /// Admits at most `max_in_flight` requests at once, with URIs of at most `max_uri_bytes`;
    /// `drain_expired` is cancelled when the drain deadline passes.
    pub fn new(
        max_in_flight: usize,
        max_uri_bytes: usize,
        drain_expired: CancellationToken,
    ) -> Self {
        AdmissionLayer {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            drain_expired,
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
        } else if layer.drain_expired.is_cancelled() {
            Some(ErrorKind::Draining)
        } else {
            None
        };
        let permit = match refusal {
            None => Arc::clone(&layer.permits).try_acquire_owned().ok(),
            Some(_) => None,
        };
        let state = match (refusal, permit) {
            (None, Some(permit)) => State::Admitted {
                inner: self.inner.call(request),
                permit: Some(permit),
                token: layer.drain_expired.clone(),
                drain: layer.drain_expired.clone().cancelled_owned(),
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
            permit: Option<OwnedSemaphorePermit>,
            token: CancellationToken,
            #[pin]
            drain: WaitForCancellationFutureOwned,
        },
    }
}

impl<F, ResBody> Future for AdmissionFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, Infallible>>,
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
                token,
                drain,
            } => {
                if let Poll::Ready(Ok(response)) = inner.poll(cx) {
                    let (parts, body) = response.into_parts();
                    let body = AdmittedBody {
                        inner: Either::Left(body),
                        _permit: permit.take(),
                        drain: Some(token.clone().cancelled_owned()),
                    };
                    return Poll::Ready(Ok(Response::from_parts(parts, body)));
                }
                ready!(drain.poll(cx));
                // Dropping the future (with this state) drops the upstream call and the permit.
                gateway_answer(ErrorKind::Draining)
            }
        };
        Poll::Ready(Ok(response))
    }
}

fn gateway_answer<B>(kind: ErrorKind) -> Response<AdmittedBody<B>> {
    kind.response().map(|body| AdmittedBody {
        inner: Either::Right(body),
        _permit: None,
        drain: None,
    })
}

pin_project! {
    /// Response body of [`Admission`]: holds the request's permit until it ends, and ends early
    /// with [`DrainingError`] when the drain deadline passes.
    pub struct AdmittedBody<B> {
        #[pin]
        inner: Either<B, Full<Bytes>>,
        _permit: Option<OwnedSemaphorePermit>,
        #[pin]
        drain: Option<WaitForCancellationFutureOwned>,
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
        if let Some(drain) = this.drain.as_mut().as_pin_mut() {
            if drain.poll(cx).is_ready() {
                this.drain.set(None);
                return Poll::Ready(Some(Err(Box::new(DrainingError))));
            }
        }
        this.inner.poll_frame(cx).map_err(Into::into)
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
}
