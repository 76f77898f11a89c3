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

mod layer;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::StatusCode;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub use layer::{Reclassified, Record, RecordBody, RecordLayer, ResponseFuture};

use crate::catalogue::{Catalogue, OperationId};
use crate::error::ErrorKind;

/// Default histogram buckets for `acsgate_request_duration_seconds`, in seconds.
pub const DEFAULT_BUCKETS: [f64; 17] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 30.0,
    60.0,
];

/// The gateway's metric families, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGaugeVec,
    request_bytes: IntCounterVec,
    response_bytes: IntCounterVec,
    upstream_errors: IntCounterVec,
    gateway_errors: IntCounterVec,
    protocol_rejections: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every family, with the given duration buckets (seconds).
    pub fn new(buckets: Vec<f64>) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "acsgate_requests_total",
                "Requests proxied, by ACS api, operation and response status.",
            ),
            &["api", "operation", "status_code", "status_subclass"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "acsgate_request_duration_seconds",
                "Time from request head received to response body end, in seconds.",
            )
            .buckets(buckets),
            &["api", "operation", "status_subclass"],
        )?;
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

        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(request_bytes.clone()))?;
        registry.register(Box::new(response_bytes.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(gateway_errors.clone()))?;
        registry.register(Box::new(protocol_rejections.clone()))?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        Ok(Metrics {
            registry,
            requests,
            duration,
            in_flight,
            request_bytes,
            response_bytes,
            upstream_errors,
            gateway_errors,
            protocol_rejections,
        })
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

    /// Encodes every family in the Prometheus text format 0.0.4.
    pub fn encode(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut buffer = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
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
        OperationTable { operations }
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
}

impl OperationTable {
    /// The handles of one operation.
    ///
    /// # Panics
    /// If `id` is not from the catalogue this table was bound to.
    pub fn get(&self, id: OperationId) -> &OperationMetrics {
        &self.operations[id.index()]
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
    durations: [OnceLock<Histogram>; 5],
    errors: [OnceLock<IntCounter>; ErrorKind::ALL.len()],
}

impl OperationMetrics {
    /// The api-level handles (in-flight gauge, byte counters).
    pub fn api(&self) -> &ApiMetrics {
        &self.api
    }

    /// Records one finished request: its status and how long it took.
    pub fn record(&self, status: StatusCode, elapsed: Duration, error: Option<ErrorKind>) {
        let (class_index, class) = subclass(status);
        // `StatusCode::as_str` is a static string for every valid code: no formatting.
        let labels = [
            self.api_name.as_str(),
            self.name.as_str(),
            status.as_str(),
            class,
        ];
        match status_slot(status) {
            Some(slot) => self.requests[slot]
                .get_or_init(|| self.families.requests.with_label_values(&labels))
                .inc(),
            None => self.families.requests.with_label_values(&labels).inc(),
        }
        self.durations[class_index]
            .get_or_init(|| {
                self.families
                    .duration
                    .with_label_values(&[labels[0], labels[1], class])
            })
            .observe(elapsed.as_secs_f64());
        if let Some(kind) = error {
            self.errors[kind.index()]
                .get_or_init(|| {
                    let family = if kind.is_upstream() {
                        &self.families.upstream_errors
                    } else {
                        &self.families.gateway_errors
                    };
                    family.with_label_values(&[labels[0], labels[1], kind.as_str()])
                })
                .inc();
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

    #[test]
    fn encode_is_text_format() {
        let metrics = Metrics::new(DEFAULT_BUCKETS.to_vec()).unwrap();
        let text = String::from_utf8(metrics.encode().unwrap()).unwrap();
        assert!(text.contains("acsgate_build_info{version=\""), "{text}");
    }
}
