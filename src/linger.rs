//! [`LingerLayer`]: a request body that the request path stops reading before its end is read
//! to its end in the background, so that the client still sending it gets its answer.
//!
//! An upstream may answer before it has read the request body (ACS answers 401 or 413 at
//! once; an HTTP/2 upstream then resets the stream with `NO_ERROR`), and the gateway answers
//! some failures itself without sending the body on (connect errors, the circuit breaker).
//! hyper's HTTP/1 server closes a connection whose request body was not read to its end. A
//! client still uploading then writes into a closed socket: the kernel answers with a reset,
//! which can reach the client before it has read the answer (curl: `Send failure: Broken
//! pipe`), and the connection is lost either way. nginx lingers for the same reason.
//!
//! What it does to a request: wraps its body. While the request path reads the body, nothing
//! changes. If the wrapper is dropped before the body ended or failed, the rest is read and
//! thrown away in a task of its own. The wrapped body is the one [`crate::body_rate`] holds to
//! the request-body deadline and minimum rate, so a client that drips the rest is cut as it
//! would be anyway, and a body that failed (a client gone, a body too slow) is not read again.
//! The response is not touched.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::Request;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tower::Layer;

/// Layer that wraps every request body in a [`LingerBody`].
#[derive(Clone, Copy, Debug, Default)]
pub struct LingerLayer;

impl<S> Layer<S> for LingerLayer {
    type Service = Linger<S>;

    fn layer(&self, inner: S) -> Linger<S> {
        Linger { inner }
    }
}

/// Service that wraps request bodies; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Linger<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for Linger<S>
where
    S: tower::Service<Request<LingerBody<B>>>,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> S::Future {
        self.inner
            .call(request.map(|body| LingerBody { inner: Some(body) }))
    }
}

/// A request body that, dropped before its end, is read to its end in the background.
pub struct LingerBody<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
{
    // `None` once it has ended or failed: then nothing is left to read.
    inner: Option<B>,
}

impl<B> Body for LingerBody<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
{
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = polled {
            self.inner = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl<B> Drop for LingerBody<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
{
    fn drop(&mut self) {
        let Some(mut rest) = self.inner.take().filter(|body| !body.is_end_stream()) else {
            return;
        };
        // Outside a runtime (nothing to read from then) the body is simply dropped.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { while let Some(Ok(_)) = rest.frame().await {} });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use tokio::sync::mpsc;

    use super::*;

    /// A body of the chunks sent on a channel, counting those read.
    struct Chunks {
        rx: mpsc::Receiver<Bytes>,
        read: Arc<AtomicUsize>,
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let chunk = std::task::ready!(self.rx.poll_recv(cx));
            if chunk.is_some() {
                self.read.fetch_add(1, Ordering::Relaxed);
            }
            Poll::Ready(chunk.map(|bytes| Ok(Frame::data(bytes))))
        }
    }

    /// A wrapped body fed by the returned sender (room for one chunk at a time), and the count
    /// of chunks read from it.
    fn body() -> (mpsc::Sender<Bytes>, LingerBody<Chunks>, Arc<AtomicUsize>) {
        let (tx, rx) = mpsc::channel(1);
        let read = Arc::new(AtomicUsize::new(0));
        let inner = Chunks {
            rx,
            read: Arc::clone(&read),
        };
        (tx, LingerBody { inner: Some(inner) }, read)
    }

    const CHUNK: Bytes = Bytes::from_static(b"x");

    #[tokio::test]
    async fn a_body_dropped_before_its_end_is_read_to_its_end() {
        let (tx, mut body, read) = body();
        tx.send(CHUNK).await.unwrap();
        assert!(body.frame().await.is_some());
        drop(body);
        // With room for one chunk, each send waits until the one before was read.
        for _ in 0..10 {
            tx.send(CHUNK).await.expect("the rest is still read");
        }
        drop(tx);
        while read.load(Ordering::Relaxed) < 11 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_leaves_nothing_behind() {
        let (tx, mut body, _) = body();
        tx.send(CHUNK).await.unwrap();
        drop(tx);
        assert!(body.frame().await.is_some());
        assert!(body.frame().await.is_none());
        assert!(body.inner.is_none(), "the ended body is let go at once");
    }

    #[test]
    fn outside_a_runtime_a_dropped_body_is_dropped() {
        let (tx, body, _) = body();
        drop(body);
        assert!(tx.is_closed(), "nothing is left reading the body");
    }
}
