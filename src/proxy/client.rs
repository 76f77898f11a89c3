//! The upstream client: HTTP/1.1 and HTTP/2 (by ALPN) over rustls, or plain HTTP, with a
//! small pool of its own on hyper's connection API.
//!
//! What it does to a request: takes a ready pooled connection (the shared HTTP/2 one, or the
//! most recently used idle HTTP/1.1 one) or connects a new one and sends the request: over
//! HTTP/1.1 as it is (the caller sets `Host` to [`Target::host`]), over HTTP/2 with the
//! target's scheme and authority in the URI instead of `Host`. A request that a reused
//! connection refused before writing any of it (the upstream had just closed it) is sent again
//! on a fresh connection; a request that was written is never resent. What it does to a response: nothing; the connection goes
//! back to the pool when the response head arrives and serves again once its body is read.
//!
//! Compared with hyper-util's pooled client it skips the pool-key hashing, the checkout/connect
//! race, the `Host` formatting and URI rewriting per request, and the task it spawns per
//! request to wait for the connection to become idle again (README "Performance").

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderValue, Request, Response};
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
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<Incoming>, SendError>> + Send + 'static>>;

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
    /// HTTP/1.1 connections, busy (a response body still streaming) or idle; the most
    /// recently returned last.
    h1: Vec<Pooled<B>>,
}

struct Pooled<B> {
    sender: http1::SendRequest<B>,
    returned: Instant,
}

/// A connection taken for one request.
enum Taken<B> {
    H1(http1::SendRequest<B>),
    H2(http2::SendRequest<B>),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The pool holds no invariant a panic could break half-way.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Builds the pooled client. TLS certificate verification is always on.
pub fn build<B>(settings: &ClientSettings) -> Result<UpstreamClient<B>, ClientError>
where
    B: http_body::Body + Send + 'static,
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

/// Closes HTTP/1.1 connections idle longer than the pool idle timeout, until the client goes.
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
        // Closed, or idle (ready, not streaming a body) for the whole timeout: gone.
        lock(&inner.pool).h1.retain(|c| {
            let idle_too_long = c.sender.is_ready() && now - c.returned >= inner.idle_timeout;
            !(c.sender.is_closed() || idle_too_long)
        });
    }
}

/// Reaping more often than this would cost more than the sockets it frees.
const MIN_REAP_PERIOD: Duration = Duration::from_millis(50);

impl<B> UpstreamClient<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Sends `request` (its URI: path and query only) to `target`.
    pub fn request(&self, request: Request<B>, target: &Arc<Target>) -> ResponseFuture {
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
                            Ok(response) => return Ok(response),
                            Err(error) => error,
                        }
                    }
                    Taken::H1(mut sender) => match sender.try_send_request(request).await {
                        Ok(response) => {
                            inner.give_back(sender);
                            return Ok(response);
                        }
                        Err(error) => error,
                    },
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
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A ready pooled connection, dropping closed ones on the way.
    fn take(&self) -> Option<Taken<B>> {
        let mut pool = lock(&self.pool);
        match pool.h2.as_ref() {
            Some(sender) if sender.is_closed() => pool.h2 = None,
            Some(sender) => return Some(Taken::H2(sender.clone())),
            None => {}
        }
        let h1 = &mut pool.h1;
        // Newest first: the most recently returned connection is the likeliest to be idle.
        let mut i = h1.len();
        while i > 0 {
            i -= 1;
            if h1[i].sender.is_closed() {
                h1.swap_remove(i);
            } else if h1[i].sender.is_ready() {
                return Some(Taken::H1(h1.swap_remove(i).sender));
            }
        }
        None
    }

    fn give_back(&self, sender: http1::SendRequest<B>) {
        lock(&self.pool).h1.push(Pooled {
            sender,
            returned: Instant::now(),
        });
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
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "upstream connection ended");
                }
            });
            Ok(Taken::H1(sender))
        }
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
