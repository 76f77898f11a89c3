//! Following one request: an opt-in access log line per request, and a `tracing` span per
//! request carrying the ACS correlation ids.
//!
//! Both are driven by [`crate::metrics::RecordLayer`], which already records every request
//! exactly once: the line is written when the request is recorded, with the same status and
//! error kind as the metrics.
//!
//! - The **access log** (`access_log = "json" | "logfmt"`) goes to stdout, one line per request,
//!   through a writer thread (see `writer`), so a slow stdout never holds up a request. A line
//!   holds the route *template*, never the raw path (ids are personal data) unless
//!   `log_raw_path = true`, and never the query string or any credential header.
//! - The **span** (`request`, target `acsgate::request`, level DEBUG) is entered while the
//!   request is forwarded and its response body streamed, so upstream errors logged there
//!   carry it; an OpenTelemetry layer exports it as is. At the default `info` level it is
//!   disabled and costs nothing.
//!
//! The correlation headers `x-ms-client-request-id`, `MS-CV`, `traceparent` (request) and
//! `x-ms-request-id` (response) pass through the proxy unchanged; this module only reads them.

mod line;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use prometheus::IntCounter;
use tracing::Span;

use crate::error::ErrorKind;
use crate::metrics::{Metrics, status_subclass};
use line::Value;

/// `x-ms-client-request-id`: the caller's id for the request (ACS SDKs send one).
pub const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-client-request-id");
/// `MS-CV`: the correlation vector ACS SDKs send.
pub const MS_CV: HeaderName = HeaderName::from_static("ms-cv");
/// `traceparent`: the W3C trace context.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `x-ms-request-id`: ACS's id for the request, on the response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-request-id");

/// Longest correlation id logged, in bytes; the rest is cut (real ones are under 100).
const MAX_ID_BYTES: usize = 256;

/// The access log's format, or `off`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// No access log (the default).
    #[default]
    Off,
    /// One JSON object per line.
    Json,
    /// One logfmt line (`key=value …`) per request.
    Logfmt,
}

/// Validated access log settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// The format, or off.
    pub format: AccessLogFormat,
    /// Log the request path as received (with its ids), next to the template.
    pub raw_path: bool,
}

/// A running access log; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    shared: Arc<Shared>,
}

struct Shared {
    json: bool,
    raw_path: bool,
    lines: writer::Lines,
}

impl AccessLog {
    /// Starts the writer thread and registers `acsgate_access_log_dropped_total` in `metrics`;
    /// `None` when the access log is off.
    pub fn start(
        config: AccessLogConfig,
        metrics: &Metrics,
    ) -> Result<Option<AccessLog>, prometheus::Error> {
        let json = match config.format {
            AccessLogFormat::Off => return Ok(None),
            AccessLogFormat::Json => true,
            AccessLogFormat::Logfmt => false,
        };
        let dropped = IntCounter::new(
            "acsgate_access_log_dropped_total",
            "Access log lines dropped because stdout could not keep up or failed.",
        )?;
        metrics.registry().register(Box::new(dropped.clone()))?;
        Ok(Some(AccessLog {
            shared: Arc::new(Shared {
                json,
                raw_path: config.raw_path,
                lines: writer::Lines::spawn(std::io::stdout(), dropped, writer::CAPACITY),
            }),
        }))
    }

    /// What the line needs from the request head; taken when the request arrives.
    pub(crate) fn begin<B>(
        &self,
        request: &Request<B>,
        template: Option<Arc<str>>,
        client: Option<SocketAddr>,
    ) -> Box<Entry> {
        let headers = request.headers();
        Box::new(Entry {
            log: self.clone(),
            method: request.method().clone(),
            template,
            path: self.shared.raw_path.then(|| request.uri().path().into()),
            client,
            client_request_id: headers.get(CLIENT_REQUEST_ID).cloned(),
            ms_cv: headers.get(MS_CV).cloned(),
            traceparent: headers.get(TRACEPARENT).cloned(),
            request_id: None,
            bytes_in: Arc::default(),
            bytes_out: 0,
        })
    }
}

/// One request's access log line in the making.
pub(crate) struct Entry {
    log: AccessLog,
    method: Method,
    template: Option<Arc<str>>,
    path: Option<Box<str>>,
    client: Option<SocketAddr>,
    client_request_id: Option<HeaderValue>,
    ms_cv: Option<HeaderValue>,
    traceparent: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    /// Shared with the request body, which may still be read by the inner service.
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
}

impl Entry {
    /// The request body's byte tally.
    pub(crate) fn bytes_in(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.bytes_in)
    }

    /// Counts response body bytes.
    pub(crate) fn add_bytes_out(&mut self, bytes: u64) {
        self.bytes_out += bytes;
    }
}

/// How a request ended, as recorded in the metrics.
pub(crate) struct Outcome<'a> {
    /// The `api` label.
    pub(crate) api: &'a str,
    /// The `operation` label.
    pub(crate) operation: &'a str,
    /// The status recorded (499 for a client abort).
    pub(crate) status: StatusCode,
    /// The error kind recorded, if any.
    pub(crate) error: Option<ErrorKind>,
    /// Request head received → end.
    pub(crate) elapsed: Duration,
}

/// The request's span (disabled unless `acsgate::request` is enabled at DEBUG).
pub(crate) fn request_span<B>(
    request: &Request<B>,
    api: &str,
    operation: &str,
    template: Option<&str>,
) -> Span {
    let headers = request.headers();
    tracing::debug_span!(
        target: "acsgate::request",
        "request",
        api,
        operation,
        method = request.method().as_str(),
        template = template.unwrap_or("-"),
        client_request_id = header_str(headers, &CLIENT_REQUEST_ID),
        ms_cv = header_str(headers, &MS_CV),
        traceparent = header_str(headers, &TRACEPARENT),
        x_ms_request_id = tracing::field::Empty,
        status = tracing::field::Empty,
        error = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    )
}

/// Takes `x-ms-request-id` from the response head into the span and the entry.
pub(crate) fn on_response<B>(span: &Span, entry: Option<&mut Entry>, response: &Response<B>) {
    // A header lookup is a hash of the name: only when someone will show the id.
    if span.is_disabled() && entry.is_none() {
        return;
    }
    let Some(id) = response.headers().get(REQUEST_ID) else {
        return;
    };
    if !span.is_disabled() {
        span.record("x_ms_request_id", id.to_str().ok());
    }
    if let Some(entry) = entry {
        entry.request_id = Some(id.clone());
    }
}

/// Closes the span's fields and writes the access log line, if either is on.
#[inline]
pub(crate) fn finish(span: &Span, entry: Option<Box<Entry>>, outcome: &Outcome<'_>) {
    if !span.is_disabled() {
        span.record("status", outcome.status.as_u16());
        span.record("error", outcome.error.map(ErrorKind::as_str));
        span.record("duration_ms", millis(outcome.elapsed));
    }
    if let Some(entry) = entry {
        entry.write(outcome);
    }
}

impl Entry {
    fn write(self, outcome: &Outcome<'_>) {
        let time = humantime::format_rfc3339_millis(
            SystemTime::now()
                .checked_sub(outcome.elapsed)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        );
        let id = |value: &Option<HeaderValue>| value.as_ref().map(id_text);
        let (client_request_id, ms_cv, traceparent, request_id) = (
            id(&self.client_request_id),
            id(&self.ms_cv),
            id(&self.traceparent),
            id(&self.request_id),
        );
        let client = self
            .client
            .as_ref()
            .map_or(Value::Absent, |c| Value::Plain(c));
        let status = outcome.status.as_u16();
        let duration = millis(outcome.elapsed);
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        let mut fields = vec![
            ("time", Value::Plain(&time)),
            ("api", Value::Str(outcome.api)),
            ("operation", Value::Str(outcome.operation)),
            ("method", Value::Str(self.method.as_str())),
            (
                "template",
                Value::Str(self.template.as_deref().unwrap_or("-")),
            ),
            ("status", Value::Num(&status)),
            ("subclass", Value::Str(status_subclass(outcome.status))),
            ("duration_ms", Value::Num(&duration)),
            ("bytes_in", Value::Num(&bytes_in)),
            ("bytes_out", Value::Num(&self.bytes_out)),
            ("error", outcome.error.map(ErrorKind::as_str).into()),
            ("client", client),
            ("client_request_id", client_request_id.as_deref().into()),
            ("ms_cv", ms_cv.as_deref().into()),
            ("traceparent", traceparent.as_deref().into()),
            ("x_ms_request_id", request_id.as_deref().into()),
        ];
        if let Some(path) = &self.path {
            fields.insert(5, ("path", Value::Str(path)));
        }
        let shared = &self.log.shared;
        let line = if shared.json {
            line::json(&fields)
        } else {
            line::logfmt(&fields)
        };
        shared.lines.send(line);
    }
}

/// Milliseconds with microsecond precision.
fn millis(elapsed: Duration) -> f64 {
    (elapsed.as_micros() as f64) / 1000.0
}

fn header_str<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A correlation id as text: non-ASCII bytes replaced, cut at [`MAX_ID_BYTES`].
fn id_text(value: &HeaderValue) -> String {
    let bytes = value.as_bytes();
    let mut text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_ID_BYTES)]).into_owned();
    // Each replacement character is 3 bytes: cut again, on a character boundary.
    let mut end = text.len().min(MAX_ID_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_cut_and_made_text() {
        assert_eq!(id_text(&HeaderValue::from_static("abc-123")), "abc-123");
        let long = HeaderValue::from_str(&"x".repeat(1000)).unwrap();
        assert_eq!(id_text(&long).len(), MAX_ID_BYTES);
        let odd = HeaderValue::from_bytes(b"id\xffend").unwrap();
        assert_eq!(id_text(&odd), "id\u{fffd}end");
        let all_odd = HeaderValue::from_bytes(&[0xff; 300]).unwrap();
        assert!(id_text(&all_odd).len() <= MAX_ID_BYTES);
    }
}
