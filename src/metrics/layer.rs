//! [`RecordLayer`]: records every request exactly once.
//!
//! Each request comes [`Classified`] (see [`crate::classify`]). On `call` a guard is created
//! that counts the request as in flight; it records the request when the response body ends,
//! when it fails, or when it is dropped, whichever comes first:
//!
//! - the client goes away before the response head is ready: the service future is dropped,
//!   and the request is recorded with status `499` and kind `client_abort`;
//! - something below this layer panics: the request is recorded as `500` `internal`, and the
//!   panic goes on to end the connection;
//! - the response body ends or errors, or the client goes away while it streams: the request
//!   is recorded with the response status (and the upstream error kind, if the body failed).
//!
//! The request body is wrapped to count its bytes; the response body, to count its bytes and
//! to carry the guard.
//!
//! The guard also carries the request's [`tracing`] span (entered while the inner service and
//! the response body are polled) and, when the access log is on, its [`access`] entry: the
//! line is written when the request is recorded, so each request is logged exactly once with
//! the status and kind the metrics got.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Buf;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prometheus::IntCounter;
use tower::{Layer, Service};
use tracing::Span;

use super::{OperationMetrics, OperationTable};
use crate::access::{self, AccessLog, Entry, Outcome};
use crate::catalogue::OperationId;
use crate::classify::Classified;
use crate::error::{BoxError, ErrorKind};

/// Response extension by which an inner layer says the request body changed its operation
/// (Rooms `PATCH …/participants` whose body removes every participant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reclassified(pub OperationId);

/// Layer that applies [`Record`].
#[derive(Clone)]
pub struct RecordLayer {
    table: Arc<OperationTable>,
    access: Option<AccessLog>,
    peer: Option<SocketAddr>,
}

impl RecordLayer {
    /// Records into the handles of `table`.
    pub fn new(table: Arc<OperationTable>) -> Self {
        RecordLayer {
            table,
            access: None,
            peer: None,
        }
    }

    /// Also writes each request to `access` (when it is `Some`).
    pub fn with_access_log(mut self, access: Option<AccessLog>) -> Self {
        self.access = access;
        self
    }

    /// This layer for the connection from `peer`, whose address the access log shows.
    pub fn for_peer(&self, peer: SocketAddr) -> Self {
        RecordLayer {
            peer: Some(peer),
            ..self.clone()
        }
    }
}

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Record<S> {
        Record {
            inner,
            table: Arc::clone(&self.table),
            access: self.access.clone(),
            peer: self.peer,
        }
    }
}

/// Service that records each request exactly once: when its response body ends or fails, or
/// when the request or the body is dropped first (a client that went away, a panic below).
#[derive(Clone)]
pub struct Record<S> {
    inner: S,
    table: Arc<OperationTable>,
    access: Option<AccessLog>,
    peer: Option<SocketAddr>,
}

impl<S, ReqBody, ResBody> Service<Classified<Request<ReqBody>>> for Record<S>
where
    S: Service<Request<CountBody<ReqBody>>, Response = Response<ResBody>, Error = Infallible>,
{
    type Response = Response<RecordBody<ResBody>>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, classified: Classified<Request<ReqBody>>) -> Self::Future {
        let start = Instant::now();
        let Classified {
            classification,
            request,
        } = classified;
        let mut guard = Guard::new(Arc::clone(&self.table), classification.operation, start);
        let (api, operation) = guard.metrics().names();
        let template = classification.template.map(|id| self.table.template(id));
        guard.span = access::request_span(&request, api, operation, template.map(|t| &**t));
        guard.access = self
            .access
            .as_ref()
            .map(|log| log.begin(&request, template.cloned(), self.peer));
        let counter = guard.metrics().api().request_bytes.clone();
        let tally = guard.access.as_ref().map(|entry| entry.bytes_in());
        let request = request.map(|body| CountBody {
            inner: body,
            counter,
            tally,
        });
        let inner = {
            let _entered = guard.span.enter();
            self.inner.call(request)
        };
        ResponseFuture {
            inner,
            guard: Some(guard),
        }
    }
}

pin_project! {
    /// Response future of [`Record`]: hands the guard to the response body.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Option<Guard>,
    }
}

impl<F, ResBody> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, Infallible>>,
{
    type Output = Result<Response<RecordBody<ResBody>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // A panic below this layer is a gateway bug: record the request as 500 `internal`
        // (not as a client abort), then let the panic end the connection's task as usual.
        let polled = {
            let _entered = this.guard.as_ref().map(|guard| guard.span.enter());
            panic::catch_unwind(AssertUnwindSafe(|| this.inner.poll(cx)))
        };
        let Ok(response) = ready!(polled.unwrap_or_else(|panic| {
            if let Some(mut guard) = this.guard.take() {
                guard.status = ErrorKind::Internal.status();
                guard.error = Some(ErrorKind::Internal);
            }
            panic::resume_unwind(panic)
        }));
        let mut guard = this.guard.take().expect("polled after completion");
        if let Some(Reclassified(operation)) = response.extensions().get::<Reclassified>() {
            guard.operation = *operation;
            guard.span.record("operation", guard.metrics().names().1);
        }
        guard.status = response.status();
        guard.error = response.extensions().get::<ErrorKind>().copied();
        access::on_response(&guard.span, guard.access.as_deref_mut(), &response);
        let counter = guard.metrics().api().response_bytes.clone();
        Poll::Ready(Ok(response.map(|body| RecordBody {
            inner: body,
            counter,
            guard: Some(guard),
        })))
    }
}

/// Counts one request as in flight and records it exactly once, on [`Guard::finish`] or drop.
struct Guard {
    table: Arc<OperationTable>,
    operation: OperationId,
    start: Instant,
    status: StatusCode,
    error: Option<ErrorKind>,
    span: Span,
    /// Only when the access log is on: nothing is captured per request otherwise.
    access: Option<Box<Entry>>,
}

impl Guard {
    fn new(table: Arc<OperationTable>, operation: OperationId, start: Instant) -> Self {
        table.get(operation).api().in_flight.inc();
        Guard {
            table,
            operation,
            start,
            // Until a response exists, the client going away is the only way to end.
            status: ErrorKind::ClientAbort.status(),
            error: Some(ErrorKind::ClientAbort),
            span: Span::none(),
            access: None,
        }
    }

    fn metrics(&self) -> &OperationMetrics {
        self.table.get(self.operation)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // The in-flight gauge belongs to the api of the operation counted at the start; a body
        // rule only ever reclassifies within the same api, so the gauge balances.
        let elapsed = self.start.elapsed();
        let entry = self.access.take();
        let metrics = self.metrics();
        metrics.record(self.status, elapsed, self.error);
        metrics.api().in_flight.dec();
        let (api, operation) = metrics.names();
        let outcome = Outcome {
            api,
            operation,
            status: self.status,
            error: self.error,
            elapsed,
        };
        access::finish(&self.span, entry, &outcome);
    }
}

pin_project! {
    /// Request body that counts the bytes it yields (per api, and per request for the access
    /// log).
    pub struct CountBody<B> {
        #[pin]
        inner: B,
        counter: IntCounter,
        tally: Option<Arc<AtomicU64>>,
    }
}

impl<B: Body> Body for CountBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            let bytes = data.map_or(0, |d| d.remaining() as u64);
            this.counter.inc_by(bytes);
            if let Some(tally) = this.tally {
                tally.fetch_add(bytes, Ordering::Relaxed);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// Response body that counts its bytes and records the request when it ends, fails or
    /// is dropped.
    pub struct RecordBody<B> {
        #[pin]
        inner: B,
        counter: IntCounter,
        guard: Option<Guard>,
    }
}

impl<B> Body for RecordBody<B>
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
        let polled = {
            let _entered = this.guard.as_ref().map(|guard| guard.span.enter());
            this.inner.poll_frame(cx)
        };
        match ready!(polled) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let bytes = data.remaining() as u64;
                    this.counter.inc_by(bytes);
                    if let Some(entry) = this.guard.as_mut().and_then(|g| g.access.as_mut()) {
                        entry.add_bytes_out(bytes);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                let error: BoxError = error.into();
                if let Some(mut guard) = this.guard.take() {
                    guard.error = Some(ErrorKind::classify(&*error));
                }
                Poll::Ready(Some(Err(error)))
            }
            None => {
                this.guard.take();
                Poll::Ready(None)
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
    use crate::catalogue::Catalogue;
    use crate::metrics::{DEFAULT_BUCKETS, Metrics};
    use tower::ServiceExt;

    fn requests_with_status(metrics: &Metrics, status: &str) -> u64 {
        let text = String::from_utf8(metrics.encode().unwrap()).unwrap();
        text.lines()
            .filter(|l| l.starts_with("acsgate_requests_total{"))
            .filter(|l| l.contains(&format!("status_code=\"{status}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    #[tokio::test]
    async fn a_panic_below_is_recorded_once_as_500() {
        let catalogue = Catalogue::builtin();
        let metrics = Metrics::new(DEFAULT_BUCKETS.to_vec()).unwrap();
        let table = Arc::new(metrics.bind(&catalogue));
        let request = Request::post("/sms").body(()).unwrap();
        let classification = catalogue.classify(request.method(), "/sms", None);
        let request = Classified {
            classification,
            request,
        };
        let failing = tower::service_fn(|_: Request<CountBody<()>>| async {
            panic!("a bug below the record layer");
            #[allow(unreachable_code)]
            Ok::<Response<http_body_util::Empty<bytes::Bytes>>, Infallible>(Response::default())
        });
        let service = RecordLayer::new(table).layer(failing);
        let outcome = tokio::spawn(service.oneshot(request)).await;
        assert!(outcome.is_err_and(|e| e.is_panic()));
        assert_eq!(requests_with_status(&metrics, "500"), 1);
        assert_eq!(requests_with_status(&metrics, "499"), 0);
        let text = String::from_utf8(metrics.encode().unwrap()).unwrap();
        assert!(text.contains("kind=\"internal\""), "{text}");
    }
}
