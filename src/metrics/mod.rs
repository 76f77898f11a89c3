//! Prometheus metrics: the families, the handles resolved per operation, and the text encoder.
//!
//! Every label value comes from the catalogue (api and operation names), from the fixed
//! [`ErrorKind`] set, or from the three-digit status code, so the series count is bounded by
//! the catalogue size, never by what clients send.
//!
//! Handles are resolved once, when the catalogue is bound ([`Metrics::bind`]): recording a
//! request indexes arrays and bumps atomics, without hashing labels, formatting or allocating.
//! Children are created lazily, on the first request that needs them, so `/metrics` lists only
//! series that have data.

mod histogram;
mod layer;
mod text;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::StatusCode;
use prometheus::core::{Collector, Desc};
use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use histogram::{DurationHistogram, DurationHistogramVec};
pub use layer::{Reclassified, Record, RecordBody, RecordLayer, ResponseFuture};

use crate::catalogue::{Catalogue, OperationId, TemplateId};
use crate::error::ErrorKind;

/// Default histogram buckets for `acsgate_request_duration_seconds`, in seconds.
pub const DEFAULT_BUCKETS: [f64; 17] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 30.0,
    60.0,
];

/// How the per-request families are bucketed and labelled: the cardinality controls.
///
/// For very large fleets, `acsgate_requests_total` can drop `status_code` (keeping
/// `status_subclass`) and `acsgate_request_duration_seconds` can drop `operation` (keeping
/// `api`); the README's metrics reference gives the series count of each choice.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsOptions {
    /// Buckets of `acsgate_request_duration_seconds`, in seconds, strictly increasing.
    pub duration_buckets: Vec<f64>,
    /// Whether `acsgate_requests_total` carries `status_code`.
    pub status_code_label: bool,
    /// Whether `acsgate_request_duration_seconds` carries `operation`.
    pub duration_operation_label: bool,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        MetricsOptions {
            duration_buckets: DEFAULT_BUCKETS.to_vec(),
            status_code_label: true,
            duration_operation_label: true,
        }
    }
}

/// The histogram families and their configurable bucket lists, by metric name.
pub const HISTOGRAMS: [&str; 1] = ["acsgate_request_duration_seconds"];

/// The gateway's metric families, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    options: Arc<MetricsOptions>,
    requests: IntCounterVec,
    /// What the registry collects for `requests` and `duration`: a reload may replace them.
    requests_slot: Arc<ArcSwap<IntCounterVec>>,
    duration_slot: Arc<ArcSwap<DurationHistogramVec>>,
    duration: DurationHistogramVec,
    in_flight: IntGaugeVec,
    request_bytes: IntCounterVec,
    response_bytes: IntCounterVec,
    upstream_errors: IntCounterVec,
    gateway_errors: IntCounterVec,
    protocol_rejections: IntCounterVec,
    reloads: ReloadMetrics,
}

/// `acsgate_config_reloads_total{result}` and
/// `acsgate_config_last_reload_success_timestamp_seconds`.
#[derive(Clone)]
pub struct ReloadMetrics {
    success: IntCounter,
    failure: IntCounter,
    last_success: Gauge,
}

impl ReloadMetrics {
    /// Counts a reload and, when it succeeded, stamps the time.
    pub fn count(&self, succeeded: bool) {
        if succeeded {
            self.success.inc();
            self.stamp();
        } else {
            self.failure.inc();
        }
    }

    /// Sets the last-success timestamp to now (the start-up load counts as a success).
    pub fn stamp(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.last_success.set(now.as_secs_f64());
    }
}

impl Metrics {
    /// Creates and registers every family, with the given duration buckets (seconds) and
    /// every label.
    pub fn new(buckets: Vec<f64>) -> Result<Self, prometheus::Error> {
        Metrics::with_options(&MetricsOptions {
            duration_buckets: buckets,
            ..MetricsOptions::default()
        })
    }

    /// Creates and registers every family, bucketed and labelled as `options` says.
    pub fn with_options(options: &MetricsOptions) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = requests_family(options)?;
        let duration = duration_family(options)?;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "acsgate_requests_in_flight",
                "Requests received and not yet finished.",
            ),
            &["api"],
        )?;
        let request_bytes = IntCounterVec::new(
            Opts::new(
                "acsgate_request_body_bytes_total",
                "Request body bytes received from clients.",
            ),
            &["api"],
        )?;
        let response_bytes = IntCounterVec::new(
            Opts::new(
                "acsgate_response_body_bytes_total",
                "Response body bytes sent to clients.",
            ),
            &["api"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "acsgate_upstream_errors_total",
                "Requests that failed on the way to or from the upstream, by error kind.",
            ),
            &["api", "operation", "kind"],
        )?;
        let gateway_errors = IntCounterVec::new(
            Opts::new(
                "acsgate_gateway_errors_total",
                "Requests the gateway answered or cut short itself, by reason \
                 (bad_route, auth, too_large, overloaded, draining, …).",
            ),
            &["api", "operation", "kind"],
        )?;
        let protocol_rejections = IntCounterVec::new(
            Opts::new(
                "acsgate_protocol_rejections_total",
                "Connections or requests refused before they became requests, by reason.",
            ),
            &["reason"],
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "acsgate_config_reloads_total",
                "Configuration reloads (SIGHUP or a watched file changed), by result.",
            ),
            &["result"],
        )?;
        let last_reload_success = Gauge::new(
            "acsgate_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load (start-up or reload).",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "acsgate_build_info",
                "Always 1; labels say which build is running.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let requests_slot = Arc::new(ArcSwap::from_pointee(requests.clone()));
        let duration_slot = Arc::new(ArcSwap::from_pointee(duration.clone()));
        registry.register(Box::new(Replaceable::new(&requests_slot)))?;
        registry.register(Box::new(Replaceable::new(&duration_slot)))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(request_bytes.clone()))?;
        registry.register(Box::new(response_bytes.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(gateway_errors.clone()))?;
        registry.register(Box::new(protocol_rejections.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(last_reload_success.clone()))?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        Ok(Metrics {
            registry,
            options: Arc::new(options.clone()),
            requests,
            requests_slot,
            duration_slot,
            duration,
            in_flight,
            request_bytes,
            response_bytes,
            upstream_errors,
            gateway_errors,
            protocol_rejections,
            reloads: ReloadMetrics {
                success: config_reloads.with_label_values(&["success"]),
                failure: config_reloads.with_label_values(&["failure"]),
                last_success: last_reload_success,
            },
        })
    }

    /// The reload counters and timestamp.
    pub fn reloads(&self) -> &ReloadMetrics {
        &self.reloads
    }

    /// The per-reason counters of `acsgate_protocol_rejections_total`, resolved once.
    pub fn protocol_rejections(&self) -> ProtocolRejections {
        ProtocolRejections {
            counters: RejectionReason::ALL.map(|reason| {
                self.protocol_rejections
                    .with_label_values(&[reason.as_str()])
            }),
        }
    }

    /// The registry, for encoding or for registering more collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// These families as `options` asks. A family whose buckets or labels change is a new
    /// one, which starts empty (observations cannot be re-bucketed or re-labelled); every
    /// other family, and every value in it, is shared. Nothing changes in the registry until
    /// [`Metrics::publish`], so a reload that fails later leaves the scrape as it was.
    pub fn reconfigure(&self, options: &MetricsOptions) -> Result<Metrics, prometheus::Error> {
        let mut next = self.clone();
        if options.status_code_label != self.options.status_code_label {
            next.requests = requests_family(options)?;
        }
        if options.duration_buckets != self.options.duration_buckets
            || options.duration_operation_label != self.options.duration_operation_label
        {
            next.duration = duration_family(options)?;
        }
        next.options = Arc::new(options.clone());
        Ok(next)
    }

    /// Makes the registry collect these families (after [`Metrics::reconfigure`]).
    pub fn publish(&self) {
        self.requests_slot.store(Arc::new(self.requests.clone()));
        self.duration_slot.store(Arc::new(self.duration.clone()));
    }

    /// Removes every series of the given `(api, operation)` pairs (operations a reload took
    /// out of the catalogue), so dashboards stop listing them.
    pub fn remove_operations(&self, removed: &[(&str, &str)]) {
        if removed.is_empty() {
            return;
        }
        let matches = |labels: &HashMap<&str, &str>| {
            let pair = (labels.get("api"), labels.get("operation"));
            removed
                .iter()
                .any(|(api, op)| pair == (Some(api), Some(op)))
        };
        remove_series(&self.requests, |labels| {
            matches(labels).then(|| self.requests.remove(labels))
        });
        remove_series(&self.duration, |labels| {
            matches(labels).then(|| self.duration.remove(labels))
        });
        for family in [&self.upstream_errors, &self.gateway_errors] {
            remove_series(family, |labels| {
                matches(labels).then(|| family.remove(labels))
            });
        }
    }

    /// Encodes every family in the Prometheus text format 0.0.4.
    pub fn encode(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut buffer = Vec::with_capacity(16 * 1024);
        text::encode(&self.registry.gather(), &mut buffer)?;
        Ok(buffer)
    }

    /// Resolves the handles of every operation of `catalogue`, indexed by [`OperationId`].
    pub fn bind(&self, catalogue: &Catalogue) -> OperationTable {
        let apis: Vec<Arc<ApiMetrics>> = catalogue
            .apis()
            .iter()
            .map(|api| Arc::new(self.api_metrics(&api.name)))
            .collect();
        let operations = catalogue
            .operations()
            .iter()
            .map(|op| {
                let api = Arc::clone(&apis[op.api.index()]);
                self.operation_metrics(&catalogue.api(op.api).name, &op.name, api)
            })
            .collect();
        OperationTable {
            operations,
            templates: catalogue.templates().into(),
        }
    }

    /// Resolves the handles of one operation named outside the catalogue (inbound events).
    pub fn bind_named(&self, api: &str, operation: &str) -> OperationMetrics {
        self.operation_metrics(api, operation, Arc::new(self.api_metrics(api)))
    }

    fn api_metrics(&self, api: &str) -> ApiMetrics {
        let name = [api];
        ApiMetrics {
            in_flight: self.in_flight.with_label_values(&name),
            request_bytes: self.request_bytes.with_label_values(&name),
            response_bytes: self.response_bytes.with_label_values(&name),
        }
    }

    fn operation_metrics(
        &self,
        api_name: &str,
        name: &str,
        api: Arc<ApiMetrics>,
    ) -> OperationMetrics {
        OperationMetrics {
            api_name: api_name.to_owned(),
            name: name.to_owned(),
            api,
            families: self.clone(),
            requests: std::array::from_fn(|_| OnceLock::new()),
            durations: std::array::from_fn(|_| OnceLock::new()),
            errors: std::array::from_fn(|_| OnceLock::new()),
            retired: AtomicBool::new(false),
        }
    }
}

/// Handles shared by every operation of one api.
#[derive(Debug)]
pub struct ApiMetrics {
    /// `acsgate_requests_in_flight{api}`.
    pub in_flight: IntGauge,
    /// `acsgate_request_body_bytes_total{api}`.
    pub request_bytes: IntCounter,
    /// `acsgate_response_body_bytes_total{api}`.
    pub response_bytes: IntCounter,
}

/// The metric handles of every operation of a catalogue, indexed by [`OperationId`].
pub struct OperationTable {
    operations: Vec<OperationMetrics>,
    /// The catalogue's route templates, for request spans and access logs.
    templates: Box<[Arc<str>]>,
}

impl OperationTable {
    /// The handles of one operation.
    ///
    /// # Panics
    /// If `id` is not from the catalogue this table was bound to.
    pub fn get(&self, id: OperationId) -> &OperationMetrics {
        &self.operations[id.index()]
    }

    /// A route template of the catalogue this table was bound to; see
    /// [`Catalogue::template`].
    ///
    /// # Panics
    /// If `id` is not from the catalogue this table was bound to.
    pub fn template(&self, id: TemplateId) -> &Arc<str> {
        &self.templates[id.index()]
    }

    /// Stops one operation from recording: a reload removed it, and its series with it.
    pub fn retire(&self, id: OperationId) {
        self.get(id).retired.store(true, Ordering::Relaxed);
    }
}

/// Status codes that get a pre-allocated handle slot; others take a slower labelled lookup.
const COMMON_STATUS: [u16; 44] = [
    100, 101, 200, 201, 202, 203, 204, 205, 206, 207, 208, 301, 302, 303, 304, 307, 308, 400, 401,
    403, 404, 405, 406, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422, 424, 428, 429,
    431, 499, 500, 501, 502, 503,
];
/// 504 and the rest of the 5xx a gateway commonly sees.
const MORE_STATUS: [u16; 4] = [504, 505, 507, 511];
const STATUS_SLOTS: usize = COMMON_STATUS.len() + MORE_STATUS.len();
const NO_SLOT: u8 = u8::MAX;

/// `SLOT_OF[code - 100]` is the slot of a status code, or [`NO_SLOT`]; built at compile time.
const SLOT_OF: [u8; 500] = {
    let mut table = [NO_SLOT; 500];
    let mut i = 0;
    while i < COMMON_STATUS.len() {
        table[(COMMON_STATUS[i] - 100) as usize] = i as u8;
        i += 1;
    }
    let mut j = 0;
    while j < MORE_STATUS.len() {
        table[(MORE_STATUS[j] - 100) as usize] = (COMMON_STATUS.len() + j) as u8;
        j += 1;
    }
    table
};

fn status_slot(status: StatusCode) -> Option<usize> {
    let code = status.as_u16();
    let slot = *SLOT_OF.get(usize::from(code).checked_sub(100)?)?;
    (slot != NO_SLOT).then_some(usize::from(slot))
}

/// `2xx`, `4xx`, ... and its index (0 for `1xx`).
fn subclass(status: StatusCode) -> (usize, &'static str) {
    const NAMES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    let index = usize::from(status.as_u16() / 100).saturating_sub(1).min(4);
    (index, NAMES[index])
}

/// The handles of one operation. Children are created on first use and then reused.
pub struct OperationMetrics {
    api_name: String,
    name: String,
    api: Arc<ApiMetrics>,
    families: Metrics,
    requests: [OnceLock<IntCounter>; STATUS_SLOTS],
    durations: [OnceLock<DurationHistogram>; 5],
    errors: [OnceLock<IntCounter>; ErrorKind::ALL.len()],
    retired: AtomicBool,
}

impl OperationMetrics {
    /// The api-level handles (in-flight gauge, byte counters).
    pub fn api(&self) -> &ApiMetrics {
        &self.api
    }

    /// Records one finished request: its status and how long it took.
    pub fn record(&self, status: StatusCode, elapsed: Duration, error: Option<ErrorKind>) {
        if self.retired.load(Ordering::Relaxed) {
            // Removed from the catalogue by a reload while this request was in flight: its
            // series are gone, and creating them again would resurrect a dead operation.
            return;
        }
        let (class_index, class) = subclass(status);
        // The label values are only read when a child is created, so they are fetched
        // there: the hot path keeps fewer values live.
        let labels = || [self.api_name.as_str(), self.name.as_str()];
        let options = &self.families.options;
        // Without `status_code`, every status of a subclass shares one child.
        let requests = || {
            let family = &self.families.requests;
            let [api, name] = labels();
            if options.status_code_label {
                // `StatusCode::as_str` is a static string for every valid code: no formatting.
                family.with_label_values(&[api, name, status.as_str(), class])
            } else {
                family.with_label_values(&[api, name, class])
            }
        };
        match status_slot(status) {
            Some(slot) => self.requests[slot].get_or_init(requests).inc(),
            None => requests().inc(),
        }
        self.durations[class_index]
            .get_or_init(|| {
                let family = &self.families.duration;
                let [api, name] = labels();
                if options.duration_operation_label {
                    family.with_label_values(&[api, name, class])
                } else {
                    family.with_label_values(&[api, class])
                }
            })
            .observe(elapsed);
        if let Some(kind) = error {
            self.errors[kind.index()]
                .get_or_init(|| {
                    let family = if kind.is_upstream() {
                        &self.families.upstream_errors
                    } else {
                        &self.families.gateway_errors
                    };
                    let [api, name] = labels();
                    family.with_label_values(&[api, name, kind.as_str()])
                })
                .inc();
        }
    }
}

fn requests_family(options: &MetricsOptions) -> Result<IntCounterVec, prometheus::Error> {
    let labels: &[&str] = if options.status_code_label {
        &["api", "operation", "status_code", "status_subclass"]
    } else {
        &["api", "operation", "status_subclass"]
    };
    IntCounterVec::new(
        Opts::new(
            "acsgate_requests_total",
            "Requests proxied, by ACS api, operation and response status.",
        ),
        labels,
    )
}

fn duration_family(options: &MetricsOptions) -> Result<DurationHistogramVec, prometheus::Error> {
    let labels: &[&str] = if options.duration_operation_label {
        &["api", "operation", "status_subclass"]
    } else {
        &["api", "status_subclass"]
    };
    DurationHistogramVec::new(
        "acsgate_request_duration_seconds",
        "Time from request head received to response body end, in seconds.",
        labels,
        &options.duration_buckets,
    )
}

/// A family a reload may replace with one of other buckets or labels. The registry refuses a
/// second label set under a name for the life of the process, so it holds this stand-in,
/// registered under the first family's description, which collects whichever family is
/// current.
struct Replaceable<C> {
    descs: Vec<Desc>,
    current: Arc<ArcSwap<C>>,
}

impl<C: Collector> Replaceable<C> {
    fn new(current: &Arc<ArcSwap<C>>) -> Self {
        Replaceable {
            descs: current.load().desc().into_iter().cloned().collect(),
            current: Arc::clone(current),
        }
    }
}

impl<C: Collector> Collector for Replaceable<C> {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.current.load().collect()
    }
}

/// Calls `remove` with the labels of every series of `family`; it removes the ones it wants.
fn remove_series<C: Collector>(
    family: &C,
    mut remove: impl FnMut(&HashMap<&str, &str>) -> Option<Result<(), prometheus::Error>>,
) {
    for metric_family in family.collect() {
        for metric in metric_family.get_metric() {
            let labels: HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|pair| (pair.name(), pair.value()))
                .collect();
            // Not found means a concurrent removal got there first: nothing left to do.
            let _ = remove(&labels);
        }
    }
}

/// Why a connection or request was refused before it became a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectionReason {
    /// Malformed HTTP (bad request line, header, framing): hyper answered 400 and closed.
    Parse,
    /// Request head or URI over the limits: hyper answered 431 or 414.
    TooLarge,
    /// The request head did not arrive within the header read timeout.
    HeaderTimeout,
    /// No request within the connection deadline (TLS handshake, first byte, protocol).
    HandshakeTimeout,
    /// The TLS handshake failed (no shared protocol or cipher, not TLS at all).
    TlsHandshake,
    /// The global connection cap was reached; the connection was closed at once.
    ConnLimit,
    /// An HTTP/2 protocol error ended the connection (e.g. GOAWAY after a reset flood).
    H2Protocol,
}

impl RejectionReason {
    /// Every reason, in label order.
    pub const ALL: [RejectionReason; 7] = [
        RejectionReason::Parse,
        RejectionReason::TooLarge,
        RejectionReason::HeaderTimeout,
        RejectionReason::HandshakeTimeout,
        RejectionReason::TlsHandshake,
        RejectionReason::ConnLimit,
        RejectionReason::H2Protocol,
    ];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectionReason::Parse => "parse",
            RejectionReason::TooLarge => "too_large",
            RejectionReason::HeaderTimeout => "header_timeout",
            RejectionReason::HandshakeTimeout => "handshake_timeout",
            RejectionReason::TlsHandshake => "tls_handshake",
            RejectionReason::ConnLimit => "conn_limit",
            RejectionReason::H2Protocol => "h2_protocol",
        }
    }
}

/// Handles of `acsgate_protocol_rejections_total`, one per [`RejectionReason`].
#[derive(Clone)]
pub struct ProtocolRejections {
    counters: [IntCounter; RejectionReason::ALL.len()],
}

impl ProtocolRejections {
    /// Counts one rejection.
    pub fn inc(&self, reason: RejectionReason) {
        self.counters[reason as usize].inc();
    }
}

// --- access log ---
impl OperationMetrics {
    /// The `api` and `operation` label values, for logs and spans.
    pub fn names(&self) -> (&str, &str) {
        (&self.api_name, &self.name)
    }
}

/// The `status_subclass` label value of a status (`2xx`…), for logs.
pub fn status_subclass(status: StatusCode) -> &'static str {
    subclass(status).1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_status_has_its_own_slot() {
        let mut seen = std::collections::HashSet::new();
        for code in COMMON_STATUS.iter().chain(MORE_STATUS.iter()) {
            let slot = status_slot(StatusCode::from_u16(*code).unwrap()).unwrap();
            assert!(seen.insert(slot), "slot {slot} used twice");
        }
        assert_eq!(status_slot(StatusCode::from_u16(599).unwrap()), None);
        assert_eq!(status_slot(StatusCode::from_u16(999).unwrap()), None);
    }

    #[test]
    fn subclass_names() {
        assert_eq!(subclass(StatusCode::OK).1, "2xx");
        assert_eq!(subclass(StatusCode::from_u16(499).unwrap()).1, "4xx");
        assert_eq!(subclass(StatusCode::from_u16(599).unwrap()).1, "5xx");
        assert_eq!(subclass(StatusCode::from_u16(999).unwrap()).1, "5xx");
        assert_eq!(subclass(StatusCode::CONTINUE).1, "1xx");
    }

    /// Every operation of the built-in catalogue answered with six statuses in three
    /// subclasses: the series counts the README's metrics reference gives for each setting.
    #[test]
    fn series_count_per_cardinality_setting() {
        let catalogue = Catalogue::builtin();
        let (operations, apis) = (catalogue.operations().len(), catalogue.apis().len());
        let series_per_histogram = DEFAULT_BUCKETS.len() + 1 + 2; // buckets, +Inf, _sum, _count
        for (status_code_label, duration_operation_label, requests, histogram) in [
            (
                true,
                true,
                operations * 6,
                operations * 3 * series_per_histogram,
            ),
            (
                false,
                true,
                operations * 3,
                operations * 3 * series_per_histogram,
            ),
            (true, false, operations * 6, apis * 3 * series_per_histogram),
            (
                false,
                false,
                operations * 3,
                apis * 3 * series_per_histogram,
            ),
        ] {
            let metrics = Metrics::with_options(&MetricsOptions {
                status_code_label,
                duration_operation_label,
                ..MetricsOptions::default()
            })
            .unwrap();
            let table = metrics.bind(&catalogue);
            for op in catalogue.operations() {
                for code in [200, 201, 400, 404, 429, 500] {
                    let status = StatusCode::from_u16(code).unwrap();
                    table
                        .get(op.id)
                        .record(status, Duration::from_millis(3), None);
                }
            }
            let text = String::from_utf8(metrics.encode().unwrap()).unwrap();
            let lines = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
            assert_eq!(lines("acsgate_requests_total{"), requests);
            assert_eq!(lines("acsgate_request_duration_seconds_"), histogram);
        }
    }

    #[test]
    fn reconfigure_keeps_what_does_not_change_and_removes_operations() {
        let catalogue = Catalogue::builtin();
        let metrics = Metrics::new(DEFAULT_BUCKETS.to_vec()).unwrap();
        let table = metrics.bind(&catalogue);
        let mut named = catalogue
            .operations()
            .iter()
            .filter(|op| op.name != crate::catalogue::BAD_ROUTE);
        let (first, second) = (named.next().unwrap(), named.next().unwrap());
        for op in [first, second] {
            table
                .get(op.id)
                .record(StatusCode::OK, Duration::ZERO, None);
        }
        let count = |metrics: &Metrics, op: &str| {
            let text = String::from_utf8(metrics.encode().unwrap()).unwrap();
            let needle = format!("operation=\"{op}\"");
            text.lines()
                .filter(|l| l.starts_with("acsgate_requests_total{") && l.contains(&needle))
                .count()
        };
        // New buckets replace the histogram only, once published; the counter keeps its series.
        let next = metrics
            .reconfigure(&MetricsOptions {
                duration_buckets: vec![1.0],
                ..MetricsOptions::default()
            })
            .unwrap();
        let text = String::from_utf8(next.encode().unwrap()).unwrap();
        assert!(
            text.contains("acsgate_request_duration_seconds_count"),
            "not yet published"
        );
        next.publish();
        assert_eq!(count(&next, &first.name), 1);
        let text = String::from_utf8(next.encode().unwrap()).unwrap();
        assert!(
            !text.contains("acsgate_request_duration_seconds_count"),
            "{text}"
        );

        let api = catalogue.api(first.api).name.as_str();
        next.remove_operations(&[(api, first.name.as_str())]);
        table.retire(first.id);
        table
            .get(first.id)
            .record(StatusCode::OK, Duration::ZERO, None);
        assert_eq!(
            count(&next, &first.name),
            0,
            "removed, and not brought back"
        );
        assert_eq!(count(&next, &second.name), 1);
    }

    #[test]
    fn encode_is_text_format() {
        let metrics = Metrics::new(DEFAULT_BUCKETS.to_vec()).unwrap();
        let text = String::from_utf8(metrics.encode().unwrap()).unwrap();
        assert!(text.contains("acsgate_build_info{version=\""), "{text}");
    }
}
