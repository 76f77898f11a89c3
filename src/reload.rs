//! Hot reload: `SIGHUP`, or a change to the config file or a catalogue file, rebuilds the
//! request path from the new configuration and swaps it in.
//!
//! The request path of the proxy is a `Pipeline`: the catalogue, the metric handles bound to
//! it, and every layer built from the configuration. The listener holds it behind an
//! [`ArcSwap`] and `Reloading` runs each request on a stack built from the pipeline current
//! when the request arrives, so a reload takes effect on the next request, even on a keep-alive or
//! HTTP/2 connection opened long before, and a request already in flight finishes on the
//! pipeline it started with.
//!
//! A reload is all or nothing: the new configuration is read, validated, and the new pipeline
//! built completely before it replaces the old one; if any step fails, the error is logged,
//! `acsgate_config_reloads_total{result="failure"}` counts it and the old pipeline keeps
//! serving. Counters and histograms of operations that still exist keep their values (the
//! new handles are bound by name to the same series); series of removed operations are
//! removed; new operations start from zero. What is tied to a socket (listener addresses,
//! TLS files, connection limits and timeouts, the events listener, the access log's format) needs a restart: a
//! reload that changes it says so in the log and keeps the running value.

use std::cell::RefCell;
use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower::Service;

use crate::access::AccessLog;
use crate::admission::{AdmissionLayer, DrainDeadline};
use crate::auth::SignLayer;
use crate::body_rate::BodyRateLayer;
use crate::breaker::BreakerLayer;
use crate::catalogue::{Catalogue, CatalogueError};
use crate::classify::ClassifyLayer;
use crate::config::Config;
use crate::metrics::{Metrics, OperationTable, RecordLayer};
use crate::proxy::client::{self, ClientError, UpstreamClient};
use crate::proxy::{Forward, Peer};

/// Where a reload reads the configuration from (the binary: flags, environment and the
/// config file, merged and validated as at start-up).
pub type ConfigSource = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Called with the new configuration after each successful reload, for what lives outside
/// the gateway (the binary applies `log_level` to its log filter).
pub type ReloadHook = Arc<dyn Fn(&Config) + Send + Sync>;

/// After a file event, how long to wait for the writer to finish before reading.
pub const SETTLE: Duration = Duration::from_millis(200);

/// Why a reload was refused; the old configuration keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration could not be read or is invalid.
    #[error("{0}")]
    Config(String),
    /// A catalogue file is missing or invalid.
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
    /// The upstream client could not be built (extra CA file).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The metric families could not be rebuilt.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// What a successful reload changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Routes in the new catalogue.
    pub routes: usize,
    /// Operations (`api/operation`) the new catalogue added.
    pub added: Vec<String>,
    /// Operations the new catalogue removed; their series are gone.
    pub removed: Vec<String>,
    /// Config keys that changed but need a restart; their running values were kept.
    pub needs_restart: Vec<&'static str>,
}

/// What every pipeline shares, made once at start-up: the access log's writer and the drain
/// deadline's token.
pub(crate) struct Shared {
    pub(crate) access_log: Option<AccessLog>,
    pub(crate) drain_expired: DrainDeadline,
}

/// Everything the proxy's request path reads from the configuration, built in one piece.
pub(crate) struct Pipeline<B> {
    pub(crate) config: Config,
    pub(crate) catalogue: Arc<Catalogue>,
    table: Arc<OperationTable>,
    client: UpstreamClient<B>,
    pub(crate) classify: ClassifyLayer,
    pub(crate) record: RecordLayer,
    pub(crate) admission: AdmissionLayer,
    pub(crate) body_rate: BodyRateLayer,
    pub(crate) sign: SignLayer,
    pub(crate) breaker: BreakerLayer,
    pub(crate) forward: Forward<B>,
}

impl<B> Pipeline<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    /// Builds the pipeline for `config`. Parts whose settings did not change are taken over
    /// from `previous`: the upstream connection pool stays warm, and the in-flight limit keeps
    /// counting the requests admitted before the reload.
    pub(crate) fn build(
        config: Config,
        catalogue: Arc<Catalogue>,
        metrics: &Metrics,
        shared: &Shared,
        previous: Option<&Pipeline<B>>,
    ) -> Result<Pipeline<B>, ClientError> {
        let client = match previous {
            // The pool holds connections to one upstream; a CA file may have new contents
            // under the same name: a new client for either change.
            Some(old)
                if old.config.client == config.client
                    && old.config.upstream == config.upstream
                    && config.client.extra_ca_file.is_none() =>
            {
                old.client.clone()
            }
            _ => client::build(&config.client)?,
        };
        let limits = config.limits;
        let admission = match previous {
            Some(old)
                if old.config.limits.max_in_flight == limits.max_in_flight
                    && old.config.limits.max_uri_bytes == limits.max_uri_bytes =>
            {
                old.admission.clone()
            }
            _ => AdmissionLayer::new(
                limits.max_in_flight,
                limits.max_uri_bytes,
                shared.drain_expired.clone(),
            ),
        };
        let breaker = match previous {
            // The circuit's state (an outage in progress) outlives a reload that keeps it.
            Some(old) if old.config.breaker == config.breaker => old.breaker.clone(),
            _ => BreakerLayer::new(config.breaker),
        };
        let table = Arc::new(metrics.bind(&catalogue));
        let forward = Forward::new(
            client.clone(),
            config.upstream.clone(),
            config.timeouts,
            // The proxy listener's connection guard (`server::ConnectionGuard`).
            Some(config.header_read_timeout),
            config.bad_route,
            Arc::clone(&catalogue),
            if config.tls.is_some() {
                "https"
            } else {
                "http"
            },
        );
        Ok(Pipeline {
            classify: ClassifyLayer::new(Arc::clone(&catalogue)),
            record: RecordLayer::new(Arc::clone(&table)).with_access_log(shared.access_log.clone()),
            admission,
            body_rate: BodyRateLayer::new(limits.body_rate),
            sign: SignLayer::new(&config.auth, &config.upstream),
            breaker,
            forward,
            client,
            table,
            catalogue,
            config,
        })
    }
}

/// Service of one proxy connection: each request runs through the stack `make` builds from
/// the pipeline current when the request arrives.
///
/// The stack is built once per connection and kept with the pipeline it was built from; a
/// request finds it again by comparing pointers, and only the first request after a reload
/// builds a new one. Building it per request cost every request a dozen reference-count
/// changes, a copy of the stack into a `Oneshot` and its drop (docs/performance-log.md).
pub(crate) struct Reloading<M, B, S> {
    current: Arc<ArcSwap<Pipeline<B>>>,
    make: M,
    peer: Peer,
    // hyper calls a connection's service from that connection's task only, one call at a
    // time, and the futures it returns own what they need: the borrow ends with `call`.
    built: RefCell<Option<Built<B, S>>>,
}

/// A connection's request stack and the pipeline it was built from.
struct Built<B, S> {
    from: Arc<Pipeline<B>>,
    stack: S,
}

impl<M, B, S> Reloading<M, B, S> {
    pub(crate) fn new(current: Arc<ArcSwap<Pipeline<B>>>, make: M, peer: SocketAddr) -> Self {
        Reloading {
            current,
            make,
            peer: Peer::new(peer),
            built: RefCell::new(None),
        }
    }
}

/// A hyper service (called by `&self`, with no readiness of its own).
impl<M, S, B, R> hyper::service::Service<R> for Reloading<M, B, S>
where
    M: Fn(&Pipeline<B>, &Peer) -> S,
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, request: R) -> S::Future {
        let pipeline = self.current.load();
        let mut built = self.built.borrow_mut();
        let stack = match &mut *built {
            Some(built) if Arc::ptr_eq(&built.from, &pipeline) => &mut built.stack,
            slot => {
                let stack = (self.make)(&pipeline, &self.peer);
                let from = Arc::clone(&pipeline);
                &mut slot.insert(Built { from, stack }).stack
            }
        };
        // Every layer is ready when the one below is, down to the forwarder, which always is
        // (its pool connects on demand), so the stack is called at once. Debug builds, which
        // the tests run, check that this stays true.
        let readiness = stack.poll_ready(&mut Context::from_waker(Waker::noop()));
        debug_assert!(
            matches!(readiness, Poll::Ready(Ok(()))),
            "the request stack is always ready"
        );
        stack.call(request)
    }
}

/// Applies a new configuration to a running gateway.
pub trait Reload: Send + Sync {
    /// Validates `config` completely and swaps it in, or changes nothing and says why (also
    /// when the configuration could not even be read). Counts the outcome in
    /// `acsgate_config_reloads_total`.
    fn reload(&self, config: Result<Config, String>) -> Result<ReloadSummary, ReloadError>;

    /// The configuration serving now.
    fn config(&self) -> Config;
}

/// The [`Reload`] of a proxy listener: its current pipeline and the metric families.
pub(crate) struct Reloader<B> {
    current: Arc<ArcSwap<Pipeline<B>>>,
    /// The families now in use; a reload may replace some (buckets, labels). Also the lock
    /// that keeps two reloads from interleaving.
    metrics: Mutex<Metrics>,
    shared: Shared,
}

impl<B> Reloader<B> {
    pub(crate) fn new(
        current: Arc<ArcSwap<Pipeline<B>>>,
        metrics: Metrics,
        shared: Shared,
    ) -> Self {
        Reloader {
            current,
            metrics: Mutex::new(metrics),
            shared,
        }
    }
}

impl<B> Reload for Reloader<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    fn reload(&self, config: Result<Config, String>) -> Result<ReloadSummary, ReloadError> {
        let mut metrics = self.metrics.lock().unwrap_or_else(PoisonError::into_inner);
        let outcome = config
            .map_err(ReloadError::Config)
            .and_then(|config| self.apply(&mut metrics, config));
        metrics.reloads().count(outcome.is_ok());
        outcome
    }

    fn config(&self) -> Config {
        self.current.load().config.clone()
    }
}

impl<B> Reloader<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    fn apply(
        &self,
        metrics: &mut Metrics,
        mut config: Config,
    ) -> Result<ReloadSummary, ReloadError> {
        let old = self.current.load_full();
        let needs_restart = keep_socket_settings(&old.config, &mut config);
        let catalogue = Arc::new(Catalogue::load(
            config.catalogue.builtin,
            &config.catalogue.files,
        )?);
        let next_metrics = metrics.reconfigure(&config.metrics)?;
        let pipeline = Pipeline::build(
            config,
            Arc::clone(&catalogue),
            &next_metrics,
            &self.shared,
            Some(&old),
        )?;
        // Everything is built: from here on nothing can fail. The pipeline first, so requests
        // recorded into replaced families are there when the registry starts collecting them.
        self.current.store(Arc::new(pipeline));
        next_metrics.publish();
        *metrics = next_metrics;

        let names = |c: &Catalogue| -> HashSet<(String, String)> {
            c.operations()
                .iter()
                .map(|op| (c.api(op.api).name.clone(), op.name.clone()))
                .collect()
        };
        let (before, after) = (names(&old.catalogue), names(&catalogue));
        let removed: Vec<(&str, &str)> = before
            .difference(&after)
            .map(|(api, op)| (api.as_str(), op.as_str()))
            .collect();
        for op in old.catalogue.operations() {
            let api = old.catalogue.api(op.api).name.as_str();
            if removed.contains(&(api, op.name.as_str())) {
                // Requests still in flight on a removed operation must not bring it back.
                old.table.retire(op.id);
            }
        }
        metrics.remove_operations(&removed);
        let mut added: Vec<String> = after
            .difference(&before)
            .map(|(api, op)| format!("{api}/{op}"))
            .collect();
        let mut removed: Vec<String> = removed
            .iter()
            .map(|(api, op)| format!("{api}/{op}"))
            .collect();
        added.sort();
        removed.sort();
        Ok(ReloadSummary {
            routes: catalogue.routes().len(),
            added,
            removed,
            needs_restart,
        })
    }
}

/// Puts the running values back into `next` for every setting tied to a socket, and names
/// the ones that differed.
fn keep_socket_settings(running: &Config, next: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($($key:literal => $($field:ident).+),+ $(,)?) => {$(
            if next.$($field).+ != running.$($field).+ {
                changed.push($key);
                next.$($field).+ = running.$($field).+.clone();
            }
        )+};
    }
    keep! {
        "listen" => listen,
        "admin" => admin,
        "tls_cert_file/tls_key_file" => tls,
        "events_*" => events,
        "max_connections" => limits.max_connections,
        "handshake_timeout" => limits.handshake_timeout,
        "max_header_bytes" => limits.max_header_bytes,
        "max_headers" => limits.max_headers,
        "header_read_timeout" => header_read_timeout,
        "drain_timeout" => drain_timeout,
        "access_log/log_raw_path" => access_log,
    }
    changed
}

/// What a reload watches for: `SIGHUP`, and changes to the contents of the config file, a
/// catalogue file or the extra CA file. Files are watched through their directories, so an
/// editor's rename-over and a Kubernetes ConfigMap's symlink swap are both seen; a change is
/// acted on when the contents differ from the last ones read.
///
/// [`ConfigWatch::start`] takes the signal and the files in hand at once, so the binary
/// starts it before its listeners: once the gateway answers, a `SIGHUP` reloads (instead of
/// terminating the process, its default action) and an edit is not missed.
pub struct ConfigWatch {
    config_file: Option<PathBuf>,
    events_tx: mpsc::UnboundedSender<()>,
    events: mpsc::UnboundedReceiver<()>,
    // Started with the first file to watch: the watcher is a thread, and a thread watching
    // nothing would only make every system call of the process pay for a multi-threaded
    // process (glibc's cancellation points: about 200 instructions per proxied request).
    watcher: Watcher,
    watched_dirs: Vec<PathBuf>,
    hangups: Hangups,
    files: Vec<PathBuf>,
    last_read: u64,
}

impl ConfigWatch {
    /// Starts watching for `SIGHUP` and for changes to the files of `config` (read from
    /// `config_file`, if any). Must be called within a Tokio runtime.
    pub fn start(config_file: Option<PathBuf>, config: &Config) -> ConfigWatch {
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut watch = ConfigWatch {
            config_file,
            events_tx,
            events,
            watcher: Watcher::NotStarted,
            watched_dirs: Vec::new(),
            hangups: Hangups::new(),
            files: Vec::new(),
            last_read: 0,
        };
        watch.watch_files_of(config, None);
        watch
    }

    /// Reloads `reloader` from `source` on every `SIGHUP` and file change, until `stop` is
    /// cancelled; `on_reload` then sees each new configuration.
    pub async fn run(
        mut self,
        reloader: Arc<dyn Reload>,
        source: ConfigSource,
        on_reload: Option<ReloadHook>,
        stop: CancellationToken,
    ) {
        loop {
            // The files are fingerprinted before the read: an edit landing while the reload
            // reads them then differs from it, and its event reloads again instead of being
            // taken as read.
            let (cause, before_read) = tokio::select! {
                () = stop.cancelled() => return,
                () = self.hangups.recv() => ("SIGHUP", fingerprint(&self.files)),
                Some(()) = self.events.recv() => {
                    tokio::time::sleep(SETTLE).await;
                    while self.events.try_recv().is_ok() {}
                    let contents = fingerprint(&self.files);
                    if contents == self.last_read {
                        continue;
                    }
                    ("file change", contents)
                }
            };
            match reloader.reload(source()) {
                Ok(summary) => {
                    if let Some(hook) = &on_reload {
                        hook(&reloader.config());
                    }
                    for key in &summary.needs_restart {
                        tracing::warn!(
                            key,
                            "setting changed; it needs a restart, keeping the running value"
                        );
                    }
                    tracing::info!(
                        cause,
                        routes = summary.routes,
                        added = ?summary.added,
                        removed = ?summary.removed,
                        "configuration reloaded"
                    );
                }
                Err(error) => {
                    tracing::error!(cause, %error, "configuration reload refused; the running configuration keeps serving")
                }
            }
            self.watch_files_of(&reloader.config(), Some(before_read));
        }
    }

    /// Watches the files `config` was read from and remembers their contents: as they were
    /// before the read (`before_read`) when they are the same files, else as they are now,
    /// read once the watcher is on them, so that a later change raises an event.
    fn watch_files_of(&mut self, config: &Config, before_read: Option<u64>) {
        let files = watched_files(self.config_file.as_deref(), config);
        if !files.is_empty()
            && let Some(watcher) = self.watcher.started(&self.events_tx)
        {
            watch_dirs(watcher, &files, &mut self.watched_dirs);
        }
        self.last_read = match before_read {
            Some(before_read) if files == self.files => before_read,
            _ => fingerprint(&files),
        };
        self.files = files;
    }
}

/// The file watcher of a [`ConfigWatch`], started when there is a file to watch.
enum Watcher {
    NotStarted,
    Started(RecommendedWatcher),
    Failed,
}

impl Watcher {
    /// The watcher, started now (sending to `events` on every file event) if it was not.
    fn started(&mut self, events: &mpsc::UnboundedSender<()>) -> Option<&mut RecommendedWatcher> {
        if let Watcher::NotStarted = self {
            let events = events.clone();
            *self = match notify::recommended_watcher(move |_: notify::Result<notify::Event>| {
                let _ = events.send(());
            }) {
                Ok(watcher) => Watcher::Started(watcher),
                Err(error) => {
                    tracing::warn!(%error, "cannot watch the config files; reload with SIGHUP");
                    Watcher::Failed
                }
            };
        }
        match self {
            Watcher::Started(watcher) => Some(watcher),
            Watcher::NotStarted | Watcher::Failed => None,
        }
    }
}

/// The files whose contents make up the configuration.
fn watched_files(config_file: Option<&Path>, config: &Config) -> Vec<PathBuf> {
    config_file
        .into_iter()
        .map(Path::to_path_buf)
        .chain(config.catalogue.files.iter().cloned())
        .chain(config.client.extra_ca_file.iter().cloned())
        .collect()
}

/// A hash of the files' contents (a missing file hashes as missing).
fn fingerprint(files: &[PathBuf]) -> u64 {
    let mut hasher = DefaultHasher::new();
    for file in files {
        std::fs::read(file).ok().hash(&mut hasher);
    }
    hasher.finish()
}

/// Watches the directory of every file, once each.
fn watch_dirs(watcher: &mut RecommendedWatcher, files: &[PathBuf], watched: &mut Vec<PathBuf>) {
    for file in files {
        let dir = match file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if watched.contains(&dir) {
            continue;
        }
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => watched.push(dir),
            Err(error) => {
                tracing::warn!(dir = %dir.display(), %error, "cannot watch; reload with SIGHUP");
            }
        }
    }
}

/// Resolves on each `SIGHUP`; never, when the signal cannot be listened for.
struct Hangups(Option<tokio::signal::unix::Signal>);

impl Hangups {
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        // Registering replaces SIGHUP's default action (terminate) for the whole process.
        Hangups(
            signal(SignalKind::hangup())
                .inspect_err(|error| tracing::warn!(%error, "cannot listen for SIGHUP"))
                .ok(),
        )
    }

    async fn recv(&mut self) {
        let received = match &mut self.0 {
            Some(signal) => signal.recv().await.is_some(),
            None => false,
        };
        if !received {
            std::future::pending::<()>().await;
        }
    }
}
