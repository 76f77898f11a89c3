//! [`RecordLayer`]: records every request exactly once.
//!
//! The request must carry a [`Classification`] extension (see [`crate::classify`]). On `call`
//! a guard is created that counts the request as in flight; it records the request when
//! the response body ends, when it fails, or when it is dropped, whichever comes first:
//!
//! - the client goes away before the response head is ready: the service future is dropped,
//!   and the request is recorded with status `499` and kind `client_abort`;
//! - the response body ends or errors, or the client goes away while it streams: the request
//!   is recorded with the response status (and the upstream error kind, if the body failed).
//!
//! The request body is wrapped to count its bytes; the response body, to count its bytes and
//! to carry the guard.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Buf;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prometheus::IntCounter;
use tower::{Layer, Service};

use super::{OperationMetrics, OperationTable};
use crate::catalogue::{Classification, OperationId};
use crate::error::{BoxError, ErrorKind};

/// Response extension by which an inner layer says the request body changed its operation
/// (Rooms `PATCH …/participants` whose body removes every participant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reclassified(pub OperationId);

/// Layer that applies [`Record`].
#[derive(Clone)]
pub struct RecordLayer {
    table: Arc<OperationTable>,
}

impl RecordLayer {
    /// Records into the handles of `table`.
    pub fn new(table: Arc<OperationTable>) -> Self {
        RecordLayer { table }
    }
}

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Record<S> {
        Record {
            inner,
            table: Arc::clone(&self.table),
        }
    }
}

/// Service that records each request exactly once; see the [module docs](self).
#[derive(Clone)]
pub struct Record<S> {
    inner: S,
    table: Arc<OperationTable>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Record<S>
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

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let start = Instant::now();
        // The classify layer always runs first; an unclassified request is a wiring bug, and
        // recording it under no operation would make it vanish from the counts.
        let operation = request
            .extensions()
            .get::<Classification>()
            .expect("Record must run behind Classify")
            .operation;
        let guard = Guard::new(Arc::clone(&self.table), operation, start);
        let counter = guard.metrics().api().request_bytes.clone();
        let request = request.map(|body| CountBody {
            inner: body,
            counter,
        });
        ResponseFuture {
            inner: self.inner.call(request),
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
        let Ok(response) = ready!(this.inner.poll(cx));
        let mut guard = this.guard.take().expect("polled after completion");
        if let Some(Reclassified(operation)) = response.extensions().get::<Reclassified>() {
            guard.operation = *operation;
        }
        guard.status = response.status();
        guard.error = response.extensions().get::<ErrorKind>().copied();
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
        let metrics = self.metrics();
        metrics.record(self.status, self.start.elapsed(), self.error);
        metrics.api().in_flight.dec();
    }
}

pin_project! {
    /// Request body that counts the bytes it yields.
    pub struct CountBody<B> {
        #[pin]
        inner: B,
        counter: IntCounter,
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
            this.counter
                .inc_by(data.map_or(0, |d| d.remaining() as u64));
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
        match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.counter.inc_by(data.remaining() as u64);
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
