//! The upstream client: HTTP/1.1 and HTTP/2 (by ALPN) over rustls, or plain HTTP, with a
//! small pool of its own on hyper's connection API.
//!
//! What it does to a request: takes a ready pooled connection (the shared HTTP/2 one, or the
//! most recently used idle HTTP/1.1 one) or connects a new one and sends the request: over
//! HTTP/1.1 as it is (the caller sets `Host` to [`Target::host`]), over HTTP/2 with the
//! target's scheme and authority in the URI instead of `Host`. A request that a reused
//! connection refused before writing any of it (the upstream had just closed it) is sent again
//! on a fresh connection; a request that was written is never resent. What it does to a
//! response: nothing; its body is an [`UpstreamBody`], which hands an HTTP/1.1 connection back
//! to the pool once the whole response has been read.
//!
//! An HTTP/1.1 connection has no task of its own: the request that has it checked out polls
//! it, while waiting for the response head and then from the response body, and the pool's
//! reaper polls it while it is idle. So the upstream side of a request runs in the task of the client
//! connection that made it, as soon as that task is woken, rather than behind every other task
//! woken by the same batch of socket events, which put about 15 µs on the median latency under
//! paced load (docs/performance-log.md). The shared HTTP/2 connection keeps its own task.
//!
//! Compared with hyper-util's pooled client it skips the pool-key hashing, the checkout/connect
//! race, the `Host` formatting and URI rewriting per request, and the task it spawns per
//! request to wait for the connection to become idle again (docs/performance-log.md).

use std::future::{Future, poll_fn};
use std::path::Path;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::time::Instant;
use tower::Service;

use crate::error::ErrorKind;

/// The connector behind every upstream connection.
pub type Connector = HttpsConnector<HttpConnector>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The extra CA file could not be read or holds no usable certificate.
    #[error("extra CA file {path}: {reason}")]
    ExtraCa {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made (TCP, TLS, connect timeout).
    #[error("connecting to the upstream: {0}")]
    Connect(#[source] BoxError),
    /// The connection failed while the request was sent or its response head awaited.
    #[error("upstream request: {0}")]
    Send(#[source] hyper::Error),
}

impl SendError {
    /// The bounded kind of this failure. A connection that could not be made is `Connect`
    /// unless its cause says more (TLS, timeout), as a reset there is no reset of a request.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SendError::Connect(cause) => match ErrorKind::classify(cause.as_ref()) {
                ErrorKind::Reset => ErrorKind::Connect,
                kind => kind,
            },
            SendError::Send(error) => ErrorKind::classify(error),
        }
    }
}

/// Connection settings of the upstream client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSettings {
    /// Limit on establishing a TCP connection (the TLS handshake has the response timeout).
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// PEM file with extra trust anchors, added to the platform and Mozilla roots.
    pub extra_ca_file: Option<std::path::PathBuf>,
}

/// Where one client's requests go, prepared once: the base URI connections are made to and
/// the `Host` value of HTTP/1.1 requests.
#[derive(Clone, Debug)]
pub struct Target {
    base: Uri,
    host: HeaderValue,
}

impl Target {
    /// The target `scheme://authority`; `Host` leaves out the scheme's default port.
    pub fn new(scheme: Scheme, authority: Authority) -> Target {
        let default_port = match scheme.as_str() {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        };
        let host = if authority.port_u16().is_some() && authority.port_u16() == default_port {
            authority.host()
        } else {
            authority.as_str()
        };
        let host = HeaderValue::from_str(host).expect("an authority is a valid header value");
        let base = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query("/")
            .build()
            .expect("a scheme and an authority make a URI");
        Target { base, host }
    }

    /// The `Host` value of HTTP/1.1 requests to this target.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// The absolute URI of `path_and_query` at this target (HTTP/2 needs scheme and authority).
    fn absolute(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, http::Error> {
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = path_and_query.cloned();
        Ok(Uri::from_parts(parts)?)
    }
}

/// Response future of [`UpstreamClient::request`].
pub type ResponseFuture<B> =
    Pin<Box<dyn Future<Output = Result<Response<UpstreamBody<B>>, SendError>> + Send + 'static>>;

/// The pooled upstream client for request bodies of type `B`; clones share the pool.
pub struct UpstreamClient<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for UpstreamClient<B> {
    fn clone(&self) -> Self {
        UpstreamClient {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<B> {
    connector: Connector,
    /// One lock for both kinds: a request takes and gives back under it once each.
    pool: Mutex<Pool<B>>,
    idle_timeout: Duration,
}

struct Pool<B> {
    /// The shared HTTP/2 connection, when the upstream negotiated h2.
    h2: Option<http2::SendRequest<B>>,
    /// Idle HTTP/1.1 connections, the most recently returned last. Busy ones are held by
    /// their request.
    h1: Vec<Idle<B>>,
}

struct Idle<B> {
    connection: H1Connection<B>,
    returned: Instant,
}

/// An upstream HTTP/1.1 connection: the handle requests go out on, and the connection
/// itself, which does the I/O whenever its holder polls it (see the [module docs](self)).
struct H1Connection<B> {
    sender: http1::SendRequest<B>,
    /// Boxed once per connection: `http1::Connection` bounds its body type, and those bounds
    /// would spread to every type that holds one. `None` once it has ended: it is dropped at
    /// once, which fails a request still queued on it with the request given back.
    connection: Option<Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>>,
}

impl<B> H1Connection<B> {
    /// Does the connection's pending I/O; true when it has ended (closed or failed).
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(connection) = self.connection.as_mut() else {
            return true;
        };
        match connection.as_mut().poll(cx) {
            Poll::Pending => false,
            Poll::Ready(result) => {
                if let Err(error) = result {
                    tracing::debug!(%error, "upstream connection ended");
                }
                self.connection = None;
                true
            }
        }
    }

    /// [`poll_ended`](Self::poll_ended) leaving no waker behind, for a poll whose outcome the
    /// caller checks at once: a kept waker would wake its task again, for nothing, when the
    /// next request goes in on this connection (perhaps from another task) or its response
    /// body is read.
    fn poll_ended_without_waker(&mut self) -> bool {
        self.poll_ended(&mut Context::from_waker(Waker::noop()))
    }
}

/// A connection taken for one request.
enum Taken<B> {
    H1(H1Connection<B>),
    H2(http2::SendRequest<B>),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The pool holds no invariant a panic could break half-way.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Builds the pooled client. TLS certificate verification is always on.
pub fn build<B>(settings: &ClientSettings) -> Result<UpstreamClient<B>, ClientError>
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    let roots = trust_roots(settings.extra_ca_file.as_deref())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.connect_timeout));

    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);

    let inner = Arc::new(Inner {
        connector,
        pool: Mutex::new(Pool {
            h2: None,
            h1: Vec::new(),
        }),
        idle_timeout: settings.pool_idle_timeout,
    });
    // Outside a runtime (a config check) there is nothing to reap.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(reap_idle(Arc::downgrade(&inner)));
    }
    Ok(UpstreamClient { inner })
}

impl<B> Inner<B> {
    /// Puts an idle HTTP/1.1 connection back, as the most recently returned.
    fn give_back(&self, connection: H1Connection<B>) {
        lock(&self.pool).h1.push(Idle {
            connection,
            returned: Instant::now(),
        });
    }
}

/// Closes HTTP/1.1 connections idle longer than the pool idle timeout, and drops those the
/// upstream closed, until the client goes.
async fn reap_idle<B: Send + 'static>(inner: Weak<Inner<B>>) {
    let Some(period) = inner
        .upgrade()
        .map(|i| (i.idle_timeout / 2).max(MIN_REAP_PERIOD))
    else {
        return;
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let now = Instant::now();
        // An upstream's close is noticed here or when the connection is next taken,
        // whichever comes first.
        lock(&inner.pool).h1.retain_mut(|idle| {
            now - idle.returned < inner.idle_timeout && !idle.connection.poll_ended_without_waker()
        });
    }
}

/// Reaping more often than this would cost more than the sockets it frees.
const MIN_REAP_PERIOD: Duration = Duration::from_millis(50);

impl<B> UpstreamClient<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Sends `request` (its URI: path and query only) to `target`.
    pub fn request(&self, request: Request<B>, target: &Arc<Target>) -> ResponseFuture<B> {
        let inner = Arc::clone(&self.inner);
        let target = Arc::clone(target);
        Box::pin(async move {
            let mut request = request;
            // After a refused send the retry connects afresh, so it happens at most once.
            let mut fresh = false;
            loop {
                let pooled = if fresh { None } else { inner.take() };
                let (taken, reused) = match pooled {
                    Some(taken) => (taken, true),
                    // Boxed: the connect and TLS handshake state is kilobytes, and inline
                    // it would be copied into every request's future, pooled or not.
                    None => (Box::pin(inner.connect(&target)).await?, false),
                };
                let error = match taken {
                    Taken::H2(mut sender) => {
                        let uri = target
                            .absolute(request.uri().path_and_query())
                            .map_err(|e| SendError::Connect(e.into()))?;
                        *request.uri_mut() = uri;
                        // HTTP/2 names the authority in the URI (`:authority`).
                        request.headers_mut().remove(http::header::HOST);
                        match sender.try_send_request(request).await {
                            Ok(response) => return Ok(response.map(UpstreamBody::h2)),
                            Err(error) => error,
                        }
                    }
                    Taken::H1(mut connection) => {
                        let mut response = pin!(connection.sender.try_send_request(request));
                        let mut written = false;
                        let sent = poll_fn(|cx| {
                            let idle = &mut Context::from_waker(Waker::noop());
                            // Only the connection's progress, made in this task, completes
                            // `response`. After the first poll a wake-up is usually the
                            // response: it is read with no waker, or hyper's body channel
                            // would keep this task's waker and wake it again, for nothing,
                            // once the body has been read. If it has not come, the poll
                            // below leaves the waker where the socket wakes it.
                            if written && !connection.poll_ended_without_waker() {
                                if let Poll::Ready(sent) = response.as_mut().poll(idle) {
                                    return Poll::Ready(sent);
                                }
                            }
                            written = true;
                            let ended = connection.poll_ended(cx);
                            response.as_mut().poll(if ended { cx } else { idle })
                        })
                        .await;
                        match sent {
                            Ok(response) => {
                                return Ok(response.map(|incoming| {
                                    UpstreamBody::h1(incoming, connection, &inner)
                                }));
                            }
                            Err(error) => error,
                        }
                    }
                };
                // Only a request the connection gave back untouched may go out again.
                let mut error = error;
                match error.take_message() {
                    Some(unsent) if reused => {
                        tracing::trace!(error = %error.error(), "unsent request, retrying");
                        request = unsent;
                        fresh = true;
                    }
                    _ => return Err(SendError::Send(error.into_error())),
                }
            }
        })
    }
}

impl<B> Inner<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A pooled connection: the shared HTTP/2 one unless it has closed, else the most
    /// recently returned idle HTTP/1.1 one, the likeliest to be still open. One the upstream
    /// closed since is not polled here to find out: sending on it finds out before writing,
    /// and [`UpstreamClient::request`] sends again on a fresh connection.
    fn take(&self) -> Option<Taken<B>> {
        let mut pool = lock(&self.pool);
        match pool.h2.as_ref() {
            Some(sender) if sender.is_closed() => pool.h2 = None,
            Some(sender) => return Some(Taken::H2(sender.clone())),
            None => {}
        }
        pool.h1.pop().map(|idle| Taken::H1(idle.connection))
    }

    /// A new connection to `target`: HTTP/2 if TLS negotiated it (then shared), else HTTP/1.1.
    async fn connect(&self, target: &Target) -> Result<Taken<B>, SendError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(SendError::Connect)?;
        let io = connector
            .call(target.base.clone())
            .await
            .map_err(SendError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(SendError::Send)?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "upstream h2 connection ended");
                }
            });
            lock(&self.pool).h2 = Some(sender.clone());
            Ok(Taken::H2(sender))
        } else {
            // One buffer and one write per message, as on the listener
            // (`server::connection_builder`).
            let (sender, connection) = http1::Builder::new()
                .writev(false)
                .handshake(io)
                .await
                .map_err(SendError::Send)?;
            Ok(Taken::H1(H1Connection {
                sender,
                connection: Some(Box::pin(connection)),
            }))
        }
    }
}

/// The body of an upstream response. Over HTTP/1.1 it drives the connection it arrives on,
/// and hands the connection back to the pool once it has all been read; a body dropped before
/// its end closes the connection, which cannot carry another request until then.
///
/// An error (the upstream cut the body short) is passed on one poll after it arrives: hyper's
/// server drops the output it has not flushed when a body fails, and a truncated body that
/// arrived in one read with its head would take the head with it. So the client gets what
/// came before the cut, as from nginx, and then the error.
pub struct UpstreamBody<B> {
    incoming: Incoming,
    checkout: Option<Checkout<B>>,
    failed: Option<hyper::Error>,
}

/// An HTTP/1.1 connection checked out by a response body, and the pool it goes back to.
struct Checkout<B> {
    connection: H1Connection<B>,
    inner: Arc<Inner<B>>,
}

impl<B> UpstreamBody<B> {
    fn h2(incoming: Incoming) -> Self {
        UpstreamBody {
            incoming,
            checkout: None,
            failed: None,
        }
    }

    /// The body `incoming` of a response that came on `connection`. A connection that has
    /// ended already passed the whole body on; one whose response has no body goes back to
    /// the pool at once.
    fn h1(incoming: Incoming, connection: H1Connection<B>, inner: &Arc<Inner<B>>) -> Self {
        let open = connection.connection.is_some();
        let mut body = UpstreamBody {
            incoming,
            checkout: open.then(|| Checkout {
                connection,
                inner: Arc::clone(inner),
            }),
            failed: None,
        };
        if body.incoming.is_end_stream() {
            release(&mut body.checkout);
        }
        body
    }
}

/// Called at the end of a response body: its connection goes back to the pool if it is
/// ready for another request, else (the upstream asked to close, or the request body is still
/// going out) it finishes on a task of its own and closes.
fn release<B>(checkout: &mut Option<Checkout<B>>) {
    let Some(Checkout {
        mut connection,
        inner,
    }) = checkout.take()
    else {
        return;
    };
    // It usually went idle as it read the end of the body. If not, this poll moves it on.
    if !connection.sender.is_ready() {
        connection.poll_ended_without_waker();
    }
    if connection.sender.is_ready() {
        inner.give_back(connection);
    } else if let Some(unfinished) = connection.connection {
        // Without its sender the connection closes once it has nothing left to do.
        tokio::spawn(async move {
            if let Err(error) = unfinished.await {
                tracing::debug!(%error, "upstream connection ended");
            }
        });
    }
}

impl<B> Body for UpstreamBody<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(error) = this.failed.take() {
            return Poll::Ready(Some(Err(error)));
        }
        let mut frame = Pin::new(&mut this.incoming).poll_frame(cx);
        // The connection is polled only when the body waits for it: a small body is whole
        // by the time it is first polled.
        if let (Poll::Pending, Some(checkout)) = (&frame, this.checkout.as_mut()) {
            if checkout.connection.poll_ended(cx) {
                this.checkout = None;
            }
            frame = Pin::new(&mut this.incoming).poll_frame(cx);
        }
        let frame = std::task::ready!(frame);
        match frame {
            Some(Ok(_)) if !this.incoming.is_end_stream() => {}
            // The whole body is in: the connection may serve the next request.
            Some(Ok(_)) | None => release(&mut this.checkout),
            Some(Err(error)) => {
                // A connection that failed a body is not used again.
                this.checkout = None;
                this.failed = Some(error);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.failed.is_none() && self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

/// Platform roots, Mozilla's roots (for bare containers with no CA bundle), and the extra CA.
fn trust_roots(extra_ca_file: Option<&Path>) -> Result<RootCertStore, ClientError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // Unreadable platform certificates are skipped: the Mozilla roots still apply.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca_file {
        let fail = |reason: String| ClientError::ExtraCa {
            path: path.display().to_string(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| fail(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(e.to_string()))?;
        if certs.is_empty() {
            return Err(fail("no PEM certificate found".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| fail(e.to_string()))?;
        }
    }
    Ok(roots)
}
