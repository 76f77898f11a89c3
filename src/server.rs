//! The listeners: the proxy (HTTP/1.1 and h2c on one port) and the admin port, their accept
//! loops, and graceful shutdown.
//!
//! The request path of the proxy is a stack of layers, outermost first: [`ClassifyLayer`]
//! (name the operation) → [`RecordLayer`] (count it exactly once) → [`AdmissionLayer`] (URI
//! limit, load shedding, drain deadline) → [`BodyRateLayer`] (request body deadline and
//! minimum rate) → [`LingerLayer`] (a body left unread is read to its end in the background)
//! → [`SignLayer`] (verify the caller's HMAC signature, re-sign for the upstream) →
//! [`PeekBodyLayer`] (body-dependent operations) → [`BreakerLayer`] (fail fast
//! while the upstream cannot be reached, when configured) → [`Forward`] (to the upstream).
//! Each request's stack is built from the configuration current when it arrives (see
//! [`crate::reload`]).
//!
//! [`ClassifyLayer`]: crate::classify::ClassifyLayer
//! [`RecordLayer`]: crate::metrics::RecordLayer
//! [`AdmissionLayer`]: crate::admission::AdmissionLayer
//! [`BodyRateLayer`]: crate::body_rate::BodyRateLayer
//! [`LingerLayer`]: crate::linger::LingerLayer
//! [`SignLayer`]: crate::auth::SignLayer
//! [`BreakerLayer`]: crate::breaker::BreakerLayer
//!
//! Each connection is guarded before hyper sees a request: a global cap on open connections,
//! and a deadline from accept to the first request head covering the TLS handshake and
//! protocol detection (hyper-util's has none, and hyper's header timeout only starts once
//! HTTP/1 is chosen). What hyper rejects itself (malformed or oversized heads, header
//! timeouts, HTTP/2 protocol errors) never reaches the service; it is counted in
//! `acsgate_protocol_rejections_total`.
//!
//! Shutdown follows hyper-util's graceful example: stop accepting at once, let in-flight
//! requests finish up to the drain deadline (HTTP/2 gets GOAWAY, HTTP/1 closes after the
//! current response). When the deadline passes, requests still waiting for their response head
//! are answered 503 `draining` and streaming bodies are cut, then the admin port closes last so
//! the final counts can be scraped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use crate::access::AccessLog;
use crate::admin::Admin;
use crate::admission::{Admission, DrainDeadline};
use crate::auth::Sign;
use crate::body_rate::RateService;
use crate::breaker::Breaker;
use crate::catalogue::{Catalogue, CatalogueError};
use crate::classify::{Classify, PeekBody, PeekBodyLayer};
use crate::config::{Config, Limits};
use crate::error::BoxError;
use crate::events::EventsListener;
use crate::head_timeout::{Check, Progress, Track};
use crate::linger::{Linger, LingerLayer};
use crate::metrics::{Metrics, ProtocolRejections, Record, RejectionReason};
use crate::proxy::client::ClientError;
use crate::proxy::{Forward, Peer};
use crate::reload::{
    ConfigSource, ConfigWatch, Pipeline, Reload, ReloadError, ReloadHook, ReloadSummary, Reloader,
    Reloading, Shared,
};
use crate::tls::{TlsAccept, TlsError};
use crate::write_stall::WriteStall;

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

/// After SIGTERM/SIGINT, how long the admin port outlives the drained proxy.
pub const ADMIN_LINGER: Duration = Duration::from_secs(1);

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
    // --- inbound events (issue 4) ---
    events: Option<EventsListener>,
    // --- hot reload ---
    reloader: Arc<dyn Reload>,
    stop_watching: CancellationToken,
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
        let metrics = Metrics::with_options(&config.metrics)?;
        metrics.reloads().stamp();
        // Only a real (https) ACS endpoint refuses calls signed for the sidecar's host.
        if config.auth.resign.is_none() && config.upstream.scheme == http::uri::Scheme::HTTPS {
            tracing::warn!(
                "no access keys configured: HMAC-signed calls pass through unchanged and ACS \
                 will refuse them unless signed for its own host (see ACSGATE_UPSTREAM_ACCESS_KEY)"
            );
        }
        let tls = match &config.tls {
            Some(files) => Some(TlsAccept::start(
                files.clone(),
                config.limits.handshake_timeout,
            )?),
            None => None,
        };
        let drain_expired = DrainDeadline::new();
        let shared = Shared {
            access_log: AccessLog::start(config.access_log, &metrics)?,
            drain_expired: drain_expired.clone(),
        };
        let pipeline = Pipeline::build(
            config.clone(),
            Arc::clone(&catalogue),
            &metrics,
            &shared,
            None,
        )?;
        let current = Arc::new(ArcSwap::from_pointee(pipeline));
        let reloader = Arc::new(Reloader::new(Arc::clone(&current), metrics.clone(), shared));

        let proxy = bind("proxy", config.listen).await?;
        let admin = bind("admin", config.admin).await?;
        let proxy_addr = local_addr("proxy", &proxy, config.listen)?;
        let admin_addr = local_addr("admin", &admin, config.admin)?;

        // --- inbound events (issue 4): an optional listener in front of the app's webhook ---
        let events = match &config.events {
            Some(events) => Some(EventsListener::start(events, config, &metrics, catalogue).await?),
            None => None,
        };

        let ready = Arc::new(AtomicBool::new(false));
        let (stop_proxy, proxy_stopped) = watch::channel(false);
        let (stop_admin, admin_stopped) = watch::channel(false);

        let proxy_policy =
            ConnectionPolicy::guarded(config, tls, metrics.protocol_rejections(), drain_expired);
        let admin_policy = ConnectionPolicy::plain(config.header_read_timeout);
        let proxy_task = tokio::spawn(serve(
            proxy,
            proxy_policy,
            move |peer| Reloading::new(Arc::clone(&current), request_stack, peer),
            proxy_stopped,
        ));
        let admin_service = Admin::new(metrics.clone(), Arc::clone(&ready));
        let admin_task = tokio::spawn(serve(
            admin,
            admin_policy,
            move |_| TowerToHyperService::new(admin_service.clone()),
            admin_stopped,
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
            events,
            reloader,
            stop_watching: CancellationToken::new(),
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

    /// The bound events listener address, when one is configured.
    pub fn events_addr(&self) -> Option<SocketAddr> {
        self.events.as_ref().map(EventsListener::addr)
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Applies a new configuration without a restart; see [`crate::reload`]. On error the
    /// running configuration keeps serving.
    pub fn reload(&self, config: Config) -> Result<ReloadSummary, ReloadError> {
        self.reloader.reload(Ok(config))
    }

    /// Reloads from `source` whenever `watch` sees a `SIGHUP` or a file change, until the
    /// gateway drains; `on_reload` then sees each new configuration.
    pub fn watch_config(
        &self,
        watch: ConfigWatch,
        source: ConfigSource,
        on_reload: Option<ReloadHook>,
    ) {
        tokio::spawn(watch.run(
            Arc::clone(&self.reloader),
            source,
            on_reload,
            self.stop_watching.clone(),
        ));
    }

    /// Stops accepting proxy connections and drains in-flight requests up to the drain
    /// deadline. The admin port stays open, so the final counts can still be scraped.
    pub async fn drain(&mut self) {
        self.ready.store(false, Ordering::Release);
        self.stop_watching.cancel();
        let _ = self.stop_proxy.send(true);
        if let Err(error) = (&mut self.proxy_task).await {
            tracing::error!(%error, "proxy listener task failed");
        }
        if let Some(events) = self.events.take() {
            events.shutdown().await;
        }
    }

    /// [`Gateway::drain`], then closes the admin port.
    pub async fn shutdown(mut self) {
        if !self.proxy_task.is_finished() {
            self.drain().await;
        }
        let _ = self.stop_admin.send(true);
        let _ = self.admin_task.await;
        tracing::info!("acsgate stopped");
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully; the admin port stays open
    /// [`ADMIN_LINGER`] after the proxy has drained.
    pub async fn run_until_signal(mut self) {
        shutdown_signal().await;
        tracing::info!("shutdown signal received; draining");
        self.drain().await;
        // Requests cut by the drain deadline are counted as the drain ends; give a scraper
        // watching the shutdown a moment to read those final counts before the port closes.
        tokio::time::sleep(ADMIN_LINGER).await;
        self.shutdown().await;
    }
}

/// The proxy's layers, outermost first; see the [module docs](self).
type RequestStack<B> =
    Classify<Record<Admission<RateService<Linger<Sign<PeekBody<Breaker<Forward<B>>>>>>>>>;

/// Builds a connection's [`RequestStack`] from the pipeline current when a request arrives
/// (again after a reload).
fn request_stack<B>(pipeline: &Pipeline<B>, peer: &Peer) -> RequestStack<B> {
    ServiceBuilder::new()
        .layer(pipeline.classify.clone())
        .layer(pipeline.record.for_peer(peer.addr))
        .layer(pipeline.admission.clone())
        .layer(pipeline.body_rate)
        .layer(LingerLayer)
        .layer(pipeline.sign.clone())
        .layer(PeekBodyLayer)
        .layer(pipeline.breaker.clone())
        .service(pipeline.forward.for_peer(peer))
}

pub(crate) async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

pub(crate) fn local_addr(
    what: &'static str,
    listener: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// HTTP/1.1 and h2c (prior knowledge) on one port. The HTTP/1.1 header-read timeout is the
/// connection guard's (see [`crate::head_timeout`]), so hyper's is off; HTTP/2 gets hyper's timer for
/// its keep-alive pings.
pub(crate) fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        // Head and body copied into one buffer and written with one call: for ACS's small
        // bodies the copy costs less than queueing them for `writev` (-850 instructions per
        // proxied request with the client's, below), and an upload's many small chunks go
        // out in fewer, larger writes (see docs/performance-log.md).
        .writev(false)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        // Explicit, not implied: h2's defaults against reset floods (hyper #3782).
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        .keep_alive_interval(Some(Duration::from_secs(20)));
    builder
}

/// How a listener treats its connections.
pub(crate) struct ConnectionPolicy {
    pub(crate) builder: auto::Builder<TokioExecutor>,
    /// TLS for the listener, when configured; the handshake counts against the deadline.
    pub(crate) tls: Option<TlsAccept>,
    /// Permits for open connections; none left means the connection is closed at once.
    pub(crate) max_connections: Arc<Semaphore>,
    /// Accept → first request head.
    pub(crate) handshake_timeout: Duration,
    /// How long a connection may wait for a request head (HTTP/1.1), from the first on.
    pub(crate) header_read_timeout: Duration,
    /// Where refused connections and hyper's rejections are counted (proxy listener only).
    pub(crate) rejections: Option<ProtocolRejections>,
    /// How long in-flight requests may take once shutdown starts.
    pub(crate) drain: Duration,
    /// Cancelled when the drain deadline passes.
    pub(crate) drain_expired: DrainDeadline,
    // --- slow readers ---
    /// How long a write to the client may stay pending before the connection is ended.
    pub(crate) write_stall: Duration,
}

impl ConnectionPolicy {
    /// The configured limits, for listeners clients reach (the proxy, the events listener).
    pub(crate) fn guarded(
        config: &Config,
        tls: Option<TlsAccept>,
        rejections: ProtocolRejections,
        drain_expired: DrainDeadline,
    ) -> Self {
        let limits = &config.limits;
        ConnectionPolicy {
            builder: connection_builder(limits),
            header_read_timeout: config.header_read_timeout,
            tls,
            max_connections: Arc::new(Semaphore::new(limits.max_connections)),
            handshake_timeout: limits.handshake_timeout,
            rejections: Some(rejections),
            drain: config.drain_timeout,
            drain_expired,
            // A client that reads nothing is held to the same limit as an upstream that sends
            // nothing.
            write_stall: config.timeouts.body_idle,
        }
    }

    /// Defaults for listeners nobody hostile should reach (admin, the demo's simulated ACS).
    pub(crate) fn plain(header_read_timeout: Duration) -> Self {
        let limits = Limits::default();
        ConnectionPolicy {
            builder: connection_builder(&limits),
            header_read_timeout,
            tls: None,
            max_connections: Arc::new(Semaphore::new(limits.max_connections)),
            handshake_timeout: limits.handshake_timeout,
            rejections: None,
            drain: Duration::from_secs(1),
            drain_expired: DrainDeadline::new(),
            write_stall: header_read_timeout,
        }
    }
}

/// Accepts connections until `stop` fires, then drains them; see the [module docs](self).
/// Each connection's TLS handshake and protocol detection run in its own task, so a slow
/// client never holds up accepting.
///
/// `make_service` gives each connection its service: a hyper service, so that the proxy's
/// calls its connection's request stack directly, without an adapter or `Oneshot` in front
/// ([`crate::reload`]); tower services go in through [`TowerToHyperService`].
pub(crate) async fn serve<M, S, B>(
    listener: TcpListener,
    policy: ConnectionPolicy,
    make_service: M,
    mut stop: watch::Receiver<bool>,
) where
    M: Fn(SocketAddr) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let drain = Drain::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = Arc::clone(&policy.max_connections).try_acquire_owned() else {
                        // Closing at once is cheaper than queueing: the client sees a reset.
                        count(&policy.rejections, RejectionReason::ConnLimit);
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let service = make_service(peer);
                    let guard = ConnectionGuard {
                        peer,
                        deadline: tokio::time::Instant::now() + policy.handshake_timeout,
                        header_read_timeout: policy.header_read_timeout,
                        rejections: policy.rejections.clone(),
                        _permit: permit,
                    };
                    let (builder, tls, watcher) =
                        (policy.builder.clone(), policy.tls.clone(), drain.watcher());
                    let write_stall = policy.write_stall;
                    tokio::spawn(async move {
                        let Some(tls) = tls else {
                            let stream = WriteStall::new(stream, write_stall);
                            let (progress, service) = Track::new(service);
                            let connection = builder.serve_connection(TokioIo::new(stream), service);
                            return guard.run(progress, watcher, connection.into_owned()).await;
                        };
                        match tokio::time::timeout_at(guard.deadline, tls.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                let stream = WriteStall::new(stream, write_stall);
                                let (progress, service) = Track::new(service);
                                let connection =
                                    builder.serve_connection(TokioIo::new(stream), service);
                                guard.run(progress, watcher, connection.into_owned()).await;
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(%peer, %error, "TLS handshake failed");
                                count(&guard.rejections, RejectionReason::TlsHandshake);
                            }
                            Err(_) => count(&guard.rejections, RejectionReason::HandshakeTimeout),
                        }
                    });
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
    // Before the connections are told: an HTTP/1 request waits for the deadline from then on.
    policy.drain_expired.begin();
    let shutdown = drain.shutdown();
    tokio::pin!(shutdown);
    if tokio::time::timeout(policy.drain, &mut shutdown)
        .await
        .is_err()
    {
        tracing::warn!(drain = ?policy.drain, "drain deadline passed; cutting the remaining requests short");
        policy.drain_expired.pass();
        // Time for the 503s to be written and the cut bodies to abort their connections.
        let _ = tokio::time::timeout(Duration::from_millis(500), shutdown).await;
    }
}

/// Tells every connection of a listener to finish, and waits until they have: what
/// hyper-util's `GracefulShutdown` does, with a flag beside its watch channel so that a busy
/// connection checks the signal with one atomic load per wake instead of polling the
/// channel's `changed()` future each time (see `should_poll`).
struct Drain {
    started: Arc<AtomicBool>,
    /// Each connection holds a receiver until it ends; `closed` is every connection gone.
    tx: watch::Sender<()>,
}

/// One connection's end of a [`Drain`].
struct DrainWatcher {
    started: Arc<AtomicBool>,
    rx: watch::Receiver<()>,
}

impl Drain {
    fn new() -> Self {
        Drain {
            started: Arc::new(AtomicBool::new(false)),
            tx: watch::channel(()).0,
        }
    }

    fn watcher(&self) -> DrainWatcher {
        DrainWatcher {
            started: Arc::clone(&self.started),
            rx: self.tx.subscribe(),
        }
    }

    /// Asks every connection to finish, then waits until the last one has ended.
    async fn shutdown(self) {
        // Set before the wake-up, so a woken connection sees it.
        self.started.store(true, Ordering::Release);
        // No receiver left means no connection left: nothing to tell.
        let _ = self.tx.send(());
        self.tx.closed().await;
    }
}

/// One accepted connection's bookkeeping: its permit under the connection cap, the deadline
/// for its first request, and where its rejection (if any) is counted.
struct ConnectionGuard {
    peer: SocketAddr,
    /// Accept → first request head.
    deadline: tokio::time::Instant,
    /// Waiting for a request head (HTTP/1.1), from the first on; see [`crate::head_timeout`].
    header_read_timeout: Duration,
    rejections: Option<ProtocolRejections>,
    _permit: OwnedSemaphorePermit,
}

impl ConnectionGuard {
    /// Serves `connection`, closing it if no request head arrives before the handshake
    /// deadline or the header-read timeout (an idle keep-alive connection is closed the same
    /// way), and counts how it ended when that was a rejection.
    async fn run<C>(self, progress: Arc<Progress>, drain: DrainWatcher, connection: C)
    where
        C: GracefulConnection<Error = BoxError>,
    {
        tokio::pin!(connection);
        // One timer for the connection's life, re-armed only when it fires.
        let timer = tokio::time::sleep_until(
            self.deadline
                .min(progress.opened() + self.header_read_timeout),
        );
        tokio::pin!(timer);
        let mut watching = true;
        // The timer and the drain signal are polled only when `should_poll` says so: the timer's
        // `is_elapsed` and the drain's flag say when they may be ready.
        let mut timer_registered = false;
        let DrainWatcher {
            started: drain_begun,
            mut rx,
        } = drain;
        let drain_signal = rx.changed();
        tokio::pin!(drain_signal);
        let (mut drain_registered, mut draining) = (false, false);
        let result = loop {
            let fired = std::future::poll_fn(|cx| {
                if !draining
                    && should_poll(&mut drain_registered, || {
                        drain_begun.load(Ordering::Acquire)
                    })
                    && drain_signal.as_mut().poll(cx).is_ready()
                {
                    // HTTP/1 closes after the current response, HTTP/2 sends GOAWAY.
                    connection.as_mut().graceful_shutdown();
                    draining = true;
                }
                // The connection comes first: a request head that arrives with the deadline
                // is served.
                if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                    return Poll::Ready(Some(result));
                }
                if watching
                    && should_poll(&mut timer_registered, || timer.is_elapsed())
                    && timer.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await;
            let Some(result) = fired else {
                let now = tokio::time::Instant::now();
                let started = progress.started();
                if !started && now >= self.deadline {
                    count(&self.rejections, RejectionReason::HandshakeTimeout);
                    return;
                }
                match progress.check(now, self.header_read_timeout) {
                    Check::TimedOut { served } => {
                        // After a request it is an idle keep-alive connection closing.
                        if !served {
                            count(&self.rejections, RejectionReason::HeaderTimeout);
                        }
                        return;
                    }
                    Check::At(at) if started => timer.as_mut().reset(at),
                    Check::At(at) => timer.as_mut().reset(at.min(self.deadline)),
                    Check::Never => watching = false,
                }
                timer_registered = false;
                continue;
            };
            break result;
        };
        if let Err(error) = result {
            let served = progress.started();
            match rejection_reason(&*error, served) {
                Some(reason) => count(&self.rejections, reason),
                None => {
                    tracing::debug!(peer = %self.peer, %error, "connection ended with an error")
                }
            }
        }
    }
}

/// Whether to poll a future that wakes the task itself once registered: the first time,
/// which registers the task's waker, and again only when `may_be_ready` says so. Polling a
/// timer or a watch channel on every wake of a busy connection re-registered the waker each
/// time (callgrind: about 300 instructions per request for the header timer, 350 for the
/// drain signal).
#[inline]
fn should_poll(registered: &mut bool, may_be_ready: impl FnOnce() -> bool) -> bool {
    if *registered && !may_be_ready() {
        return false;
    }
    *registered = true;
    true
}

fn count(rejections: &Option<ProtocolRejections>, reason: RejectionReason) {
    if let Some(rejections) = rejections {
        rejections.inc(reason);
    }
}

/// Which rejection a connection error is, if any. A header timeout after the connection served
/// a request is an idle keep-alive connection closing, not a rejection.
fn rejection_reason(
    error: &(dyn std::error::Error + 'static),
    served: bool,
) -> Option<RejectionReason> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                return (!served).then_some(RejectionReason::HeaderTimeout);
            }
            if h.is_parse_too_large() {
                return Some(RejectionReason::TooLarge);
            }
            if h.is_parse() {
                return Some(RejectionReason::Parse);
            }
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            // A GOAWAY we sent (reset flood, bad frames) ends the connection with our reason.
            if h2.is_go_away() && !h2.is_remote() && h2.reason() != Some(h2::Reason::NO_ERROR) {
                return Some(RejectionReason::H2Protocol);
            }
            return None;
        }
        current = e.source();
    }
    None
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
