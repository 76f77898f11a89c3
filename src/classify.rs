//! Naming the operation of a request.
//!
//! - [`ClassifyLayer`] looks the method, path and `api-version` up in the [`Catalogue`] and
//!   hands the [`Classification`] on with the request ([`Classified`]). It never touches the
//!   body.
//! - [`PeekBodyLayer`] handles the few operations that only the body can tell apart (Rooms
//!   `PATCH …/participants`): it reads at most [`PEEK_LIMIT`] bytes of such a body, applies the
//!   catalogue's body rule, and replays every frame it read to the inner service unchanged, so
//!   the upstream receives the body byte for byte. The outcome travels back as a
//!   [`Reclassified`] response extension. Every other request passes straight through.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::catalogue::{BodyRule, Catalogue, Classification};
use crate::metrics::Reclassified;

/// The most body bytes read to decide a body-dependent operation.
pub const PEEK_LIMIT: usize = 64 * 1024;

// === Classify ===

/// Layer that applies [`Classify`].
#[derive(Clone)]
pub struct ClassifyLayer {
    catalogue: Arc<Catalogue>,
}

impl ClassifyLayer {
    /// Classifies requests with `catalogue`.
    pub fn new(catalogue: Arc<Catalogue>) -> Self {
        ClassifyLayer { catalogue }
    }
}

impl<S> Layer<S> for ClassifyLayer {
    type Service = Classify<S>;

    fn layer(&self, inner: S) -> Classify<S> {
        Classify {
            inner,
            catalogue: Arc::clone(&self.catalogue),
        }
    }
}

/// A request with its [`Classification`], as [`Classify`] hands it to the service inside it
/// (the record layer).
pub struct Classified<R> {
    /// What the catalogue named the request.
    pub classification: Classification,
    /// The request.
    pub request: R,
}

/// Service that names each request's operation and hands both on as [`Classified`].
///
/// The layers further in that read the classification (the body rule of [`PeekBody`], the
/// `Bad Route` check of a forwarder that rejects them) find it in the request's extensions,
/// put there only for such requests: an extensions map costs three allocations.
#[derive(Clone)]
pub struct Classify<S> {
    inner: S,
    catalogue: Arc<Catalogue>,
}

impl<S, B> Service<Request<B>> for Classify<S>
where
    S: Service<Classified<Request<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> S::Future {
        let uri = request.uri();
        let classification = self
            .catalogue
            .classify(request.method(), uri.path(), uri.query());
        // A `Bad Route` is the classification without a template.
        if classification.body_rule.is_some() || classification.template.is_none() {
            request.extensions_mut().insert(classification.clone());
        }
        self.inner.call(Classified {
            classification,
            request,
        })
    }
}

// === PeekBody ===

/// Layer that applies [`PeekBody`].
#[derive(Clone, Copy, Default)]
pub struct PeekBodyLayer;

impl<S> Layer<S> for PeekBodyLayer {
    type Service = PeekBody<S>;

    fn layer(&self, inner: S) -> PeekBody<S> {
        PeekBody { inner }
    }
}

/// Service that applies the catalogue's body rule, if the request has one; see the
/// [module docs](self).
#[derive(Clone)]
pub struct PeekBody<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResBody> Service<Request<B>> for PeekBody<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Send,
{
    type Response = Response<ResBody>;
    type Error = Infallible;
    type Future = PeekFuture<S::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let rule = request
            .extensions()
            .get::<Classification>()
            .and_then(|c| c.body_rule.clone());
        let Some(rule) = rule else {
            return PeekFuture {
                state: PeekState::Direct {
                    inner: self.inner.call(request.map(ReplayBody::passthrough)),
                },
            };
        };
        // The ready service is the one `poll_ready` was called on; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Boxed: this path runs only for body-dependent operations, a rare case.
        PeekFuture {
            state: PeekState::Peeking {
                inner: Box::pin(async move {
                    let (parts, body) = request.into_parts();
                    let (body, verdict) = peek(body, &rule).await;
                    let mut response = match inner.call(Request::from_parts(parts, body)).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    };
                    if let Some(operation) = verdict {
                        response.extensions_mut().insert(Reclassified(operation));
                    }
                    Ok(response)
                }),
            },
        }
    }
}

/// Reads up to [`PEEK_LIMIT`] bytes of `body` and applies `rule` to them, returning a body
/// that replays what was read and then continues with the rest.
async fn peek<B>(
    mut body: B,
    rule: &BodyRule,
) -> (ReplayBody<B>, Option<crate::catalogue::OperationId>)
where
    B: Body + Unpin,
{
    let mut frames = VecDeque::new();
    let mut seen = BytesMut::new();
    let mut complete = false;
    let mut error = None;
    while seen.len() <= PEEK_LIMIT {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let mut chunk = data.chunk();
                    // Copy only up to the limit; the frame itself is replayed whole.
                    let room = (PEEK_LIMIT + 1).saturating_sub(seen.len());
                    chunk = &chunk[..chunk.len().min(room)];
                    seen.put_slice(chunk);
                }
                frames.push_back(frame);
            }
            Some(Err(e)) => {
                error = Some(e);
                break;
            }
            None => {
                complete = true;
                break;
            }
        }
        if body.is_end_stream() {
            complete = true;
            break;
        }
    }
    let verdict = if complete && error.is_none() && seen.len() <= PEEK_LIMIT {
        rule.apply(&seen)
    } else {
        None
    };
    (
        ReplayBody {
            buffered: frames,
            error,
            inner: body,
        },
        verdict,
    )
}

pin_project! {
    /// Response future of [`PeekBody`].
    pub struct PeekFuture<F, ResBody> {
        #[pin]
        state: PeekState<F, ResBody>,
    }
}

pin_project! {
    #[project = PeekStateProj]
    enum PeekState<F, ResBody> {
        // No body rule: the inner future as is.
        Direct { #[pin] inner: F },
        // Reading the body prefix, then calling the inner service.
        Peeking { inner: BoxFuture<Result<Response<ResBody>, Infallible>> },
    }
}

impl<F, ResBody> Future for PeekFuture<F, ResBody>
where
    F: Future<Output = Result<Response<ResBody>, Infallible>>,
{
    type Output = Result<Response<ResBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            PeekStateProj::Direct { inner } => inner.poll(cx),
            PeekStateProj::Peeking { inner } => inner.as_mut().poll(cx),
        }
    }
}

pin_project! {
    /// A request body that first yields the frames read while peeking, then the rest.
    pub struct ReplayBody<B: Body> {
        buffered: VecDeque<Frame<B::Data>>,
        error: Option<B::Error>,
        #[pin]
        inner: B,
    }
}

impl<B: Body> ReplayBody<B> {
    /// A body with nothing buffered.
    pub fn passthrough(inner: B) -> Self {
        ReplayBody {
            buffered: VecDeque::new(),
            error: None,
            inner,
        }
    }
}

impl<B: Body> Body for ReplayBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        if let Some(frame) = this.buffered.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(error) = this.error.take() {
            return Poll::Ready(Some(Err(error)));
        }
        Poll::Ready(ready!(this.inner.poll_frame(cx)))
    }

    fn is_end_stream(&self) -> bool {
        self.buffered.is_empty() && self.error.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self
            .buffered
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.remaining() as u64))
            .sum();
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + buffered);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + buffered);
        }
        hint
    }
}
