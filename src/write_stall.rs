//! [`WriteStall`]: ends a client connection whose writes make no progress for too long.
//!
//! hyper stops polling a response body while the client's socket buffer is full, so no body
//! timeout can fire for a client that stops reading (a slow-read attack, or a stuck client):
//! the response, its upstream connection and its in-flight slot would be held forever. This
//! wrapper sits around the accepted connection's IO. When a write, flush or shutdown returns
//! `Pending` it starts a timer; any progress disarms it; if it runs out first, the pending
//! operation fails with `TimedOut`, hyper ends the connection, and the request is recorded
//! as its response body is dropped. Reads pass through untouched (the header-read and
//! request-body timeouts cover a client that stops sending).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pin_project! {
    /// Connection IO whose writes fail once they have been pending for `limit`.
    pub struct WriteStall<T> {
        #[pin]
        inner: T,
        // Boxed so the IO stays `Unpin`, as hyper-util's server needs; one per connection.
        timer: Pin<Box<Sleep>>,
        armed: bool,
        limit: Duration,
    }
}

impl<T> WriteStall<T> {
    /// Wraps `inner`; a write may stay pending for at most `limit`.
    pub fn new(inner: T, limit: Duration) -> Self {
        WriteStall {
            inner,
            timer: Box::pin(tokio::time::sleep(limit)),
            armed: false,
            limit,
        }
    }
}

/// Passes a ready result through (progress disarms the timer); on `Pending`, arms the timer
/// if needed and fails once it runs out.
fn watch<R>(
    poll: Poll<io::Result<R>>,
    timer: &mut Pin<Box<Sleep>>,
    armed: &mut bool,
    limit: Duration,
    cx: &mut Context<'_>,
) -> Poll<io::Result<R>> {
    if poll.is_ready() {
        *armed = false;
        return poll;
    }
    if !*armed {
        timer.as_mut().reset(Instant::now() + limit);
        *armed = true;
    }
    ready!(timer.as_mut().poll(cx));
    Poll::Ready(Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "the client read nothing for the body idle timeout",
    )))
}

impl<T: AsyncRead> AsyncRead for WriteStall<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for WriteStall<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let poll = this.inner.poll_write(cx, buf);
        watch(poll, this.timer, this.armed, *this.limit, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let poll = this.inner.poll_write_vectored(cx, bufs);
        watch(poll, this.timer, this.armed, *this.limit, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let poll = this.inner.poll_flush(cx);
        watch(poll, this.timer, this.armed, *this.limit, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let poll = this.inner.poll_shutdown(cx);
        watch(poll, this.timer, this.armed, *this.limit, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_nobody_reads_fails_after_the_limit_and_progress_resets_it() {
        // A 1 KiB pipe: the first write fits, the next ones stall until the reader reads.
        let (client, mut server) = tokio::io::duplex(1024);
        let mut io = WriteStall::new(client, Duration::from_millis(100));
        io.write_all(&[0; 1024]).await.unwrap();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            // Reads slowly but within the limit, then stops.
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                tokio::io::AsyncReadExt::read_exact(&mut server, &mut buf)
                    .await
                    .unwrap();
            }
            server
        });
        io.write_all(&[0; 3 * 1024]).await.unwrap();
        let started = Instant::now();
        let error = io.write_all(&[0; 2048]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(100));
        drop(reader.await.unwrap());
    }
}
