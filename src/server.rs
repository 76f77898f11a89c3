//! The listeners: the proxy (HTTP/1.1 and h2c on one port) and the admin port, their accept
//! loops, and graceful shutdown.
//!
//! The request path of the proxy is a stack of layers, outermost first:
//! [`ClassifyLayer`] (name the operation) → [`RecordLayer`] (count it exactly once) →
//! [`SignLayer`] (verify the caller's HMAC signature, re-sign for the upstream) →
//! [`PeekBodyLayer`] (body-dependent operations) → [`Forward`] (to the upstream).
//! With TLS configured, the proxy listener's handshakes run in each connection's own task.
//!
//! Shutdown follows hyper-util's graceful example: stop accepting at once, let in-flight
//! requests finish up to the drain deadline (HTTP/2 gets GOAWAY, HTTP/1 closes after the
//! current response), then close the admin port last so the final counts can be scraped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::{Service, ServiceBuilder};

use crate::admin::Admin;
use crate::auth::SignLayer;
use crate::catalogue::{Catalogue, CatalogueError};
use crate::classify::{ClassifyLayer, PeekBodyLayer};
use crate::config::Config;
use crate::error::BoxError;
use crate::metrics::{Metrics, RecordLayer};
use crate::proxy::Forward;
use crate::proxy::client::{self, ClientError};
use crate::tls::{TlsAccept, TlsError};

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// `proxy` or `admin`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The catalogue is invalid.
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
    /// The upstream client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The metric families could not be created.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The proxy listener's certificate could not be loaded.
    #[error("proxy listener TLS: {0}")]
    Tls(#[from] TlsError),
}

/// A running gateway: both listeners bound and serving.
pub struct Gateway {
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    stop_proxy: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    proxy_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
}

impl Gateway {
    /// Loads the catalogue named by `config` and starts serving.
    pub async fn start(config: &Config) -> Result<Gateway, StartError> {
        let catalogue = Catalogue::load(config.catalogue.builtin, &config.catalogue.files)?;
        Gateway::start_with(config, Arc::new(catalogue)).await
    }

    /// Starts serving with an already loaded catalogue.
    pub async fn start_with(
        config: &Config,
        catalogue: Arc<Catalogue>,
    ) -> Result<Gateway, StartError> {
        let metrics = Metrics::new(config.buckets.clone())?;
        let table = Arc::new(metrics.bind(&catalogue));
        let forward = Forward::new(
            client::build(&config.client)?,
            config.upstream.clone(),
            config.timeouts,
            config.bad_route,
            Arc::clone(&catalogue),
            if config.tls.is_some() {
                "https"
            } else {
                "http"
            },
        );
        let sign = SignLayer::new(&config.auth, &config.upstream);
        if config.auth.resign.is_none() {
            tracing::warn!(
                "no access keys configured: HMAC-signed calls pass through unchanged and ACS \
                 will refuse them unless signed for its own host (see ACSGATE_UPSTREAM_ACCESS_KEY)"
            );
        }
        let tls = match &config.tls {
            Some(files) => Some(TlsAccept::start(files.clone(), config.header_read_timeout)?),
            None => None,
        };
        let classify = ClassifyLayer::new(catalogue);
        let record = RecordLayer::new(table);

        let proxy = bind("proxy", config.listen).await?;
        let admin = bind("admin", config.admin).await?;
        let proxy_addr = local_addr("proxy", &proxy, config.listen)?;
        let admin_addr = local_addr("admin", &admin, config.admin)?;

        let ready = Arc::new(AtomicBool::new(false));
        let (stop_proxy, proxy_stopped) = watch::channel(false);
        let (stop_admin, admin_stopped) = watch::channel(false);

        let builder = connection_builder(config.header_read_timeout);
        let proxy_task = tokio::spawn(serve(
            proxy,
            tls,
            builder.clone(),
            move |peer| {
                ServiceBuilder::new()
                    .layer(classify.clone())
                    .layer(record.clone())
                    .layer(sign.clone())
                    .layer(PeekBodyLayer)
                    .service(forward.for_peer(peer))
            },
            proxy_stopped,
            config.drain_timeout,
        ));
        let admin_service = Admin::new(metrics.clone(), Arc::clone(&ready));
        let admin_task = tokio::spawn(serve(
            admin,
            None,
            builder,
            move |_| admin_service.clone(),
            admin_stopped,
            Duration::from_secs(1),
        ));
        ready.store(true, Ordering::Release);
        tracing::info!(%proxy_addr, %admin_addr, upstream = %config.upstream.authority, "acsgate serving");
        Ok(Gateway {
            proxy_addr,
            admin_addr,
            metrics,
            ready,
            stop_proxy,
            stop_admin,
            proxy_task,
            admin_task,
        })
    }

    /// The bound proxy address (useful when the configured port was 0).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stops accepting, drains in-flight requests up to the drain deadline, then closes the
    /// admin port.
    pub async fn shutdown(self) {
        self.ready.store(false, Ordering::Release);
        let _ = self.stop_proxy.send(true);
        let _ = self.proxy_task.await;
        let _ = self.stop_admin.send(true);
        let _ = self.admin_task.await;
        tracing::info!("acsgate stopped");
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully.
    pub async fn run_until_signal(self) {
        shutdown_signal().await;
        tracing::info!("shutdown signal received; draining");
        self.shutdown().await;
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

fn local_addr(
    what: &'static str,
    listener: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// HTTP/1.1 and h2c (prior knowledge) on one port. hyper enforces its header-read timeout only
/// when a timer is set, so both protocols get one.
pub(crate) fn connection_builder(header_read_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100)
        .keep_alive_interval(Some(Duration::from_secs(20)));
    builder
}

/// Accepts connections until `stop` fires, then drains them for at most `drain`. With `tls`,
/// each connection's handshake runs in its own task, so a slow one never holds up accepting.
pub(crate) async fn serve<M, S, B>(
    listener: TcpListener,
    tls: Option<TlsAccept>,
    builder: auto::Builder<TokioExecutor>,
    make_service: M,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) where
    M: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let service = TowerToHyperService::new(make_service(peer));
                    match &tls {
                        Some(tls) => {
                            let (tls, builder) = (tls.clone(), builder.clone());
                            let watcher = graceful.watcher();
                            tokio::spawn(async move {
                                let stream = match tls.accept(stream).await {
                                    Ok(stream) => stream,
                                    Err(error) => {
                                        tracing::debug!(%peer, %error, "TLS handshake failed");
                                        return;
                                    }
                                };
                                let connection =
                                    builder.serve_connection(TokioIo::new(stream), service);
                                if let Err(error) = watcher.watch(connection.into_owned()).await {
                                    tracing::debug!(%peer, %error, "connection ended with an error");
                                }
                            });
                        }
                        None => {
                            let connection = builder.serve_connection(TokioIo::new(stream), service);
                            let connection = graceful.watch(connection.into_owned());
                            tokio::spawn(async move {
                                if let Err(error) = connection.await {
                                    tracing::debug!(%peer, %error, "connection ended with an error");
                                }
                            });
                        }
                    }
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "drain deadline passed with requests still in flight"
        );
    }
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
