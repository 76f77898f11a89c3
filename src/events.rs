//! Inbound events: an optional listener in front of the app's Event Grid webhook.
//!
//! Two of Azure's ACS operations are not API calls but events ACS delivers to the app through
//! Event Grid: `SMSDeliveryReportsReceived` (`Microsoft.Communication.SMSDeliveryReportReceived`)
//! and `SMSMessagesReceived` (`Microsoft.Communication.SMSReceived`). Pointed at this listener
//! instead of the app, Event Grid's deliveries are counted per event and forwarded unchanged.
//!
//! [`CountEvents`] does to a request: reads the body, at most the body limit (1 MiB by
//! default; Event Grid never sends more than 1 MB in one delivery, so anything larger is
//! answered 413 here and not forwarded); takes each event's type from the Event Grid schema (a
//! JSON array of events with `eventType`) or CloudEvents (`type`, one event or a batch array,
//! or the `ce-type` header in binary mode); and hands the same bytes and headers to the
//! forwarder, which sends them to the webhook (with the usual proxy header rules).
//!
//! To the response: nothing. When the webhook's response head arrives, each event is counted
//! in `acsgate_requests_total` / `acsgate_request_duration_seconds` with the webhook's status:
//! the two SMS events under the names above (api `sms`), other ACS event types under their own
//! name from a fixed list, anything else as `Bad Route` (api `unknown`). Event Grid's own
//! subscription validation and deletion events, and requests other than POST (the CloudEvents
//! validation handshake is an OPTIONS), are forwarded without being counted: the handshake's
//! answer goes back to Event Grid as the webhook gave it.
//! A delivery whose sender hangs up before the webhook answers is not counted: Event Grid
//! retries it, and the retry is.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::{Layer, Service};

use crate::admission::DrainDeadline;
use crate::catalogue::Catalogue;
use crate::config::Config;
use crate::error::{BoxError, ERROR_HEADER, ErrorKind};
use crate::metrics::{Metrics, OperationMetrics};
use crate::proxy::client;
use crate::proxy::{BadRoutePolicy, Forward, Peer, Upstream};
use crate::server::{self, StartError};

/// Default limit on an event delivery's body, in bytes.
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;

/// Validated settings of the events listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventsConfig {
    /// Where Event Grid delivers.
    pub listen: SocketAddr,
    /// The app's webhook endpoint (scheme and authority; the request path is kept).
    pub forward_to: Upstream,
    /// Largest delivery accepted, in bytes.
    pub body_limit: usize,
}

/// Event types named after Azure's operations: (event type, api, operation), sorted by type.
pub const EVENT_TYPES: [(&str, &str, &str); 49] = [
    (
        "Microsoft.Communication.AdvancedMessageDeliveryStatusUpdated",
        "advanced_messaging",
        "AdvancedMessageDeliveryStatusUpdated",
    ),
    (
        "Microsoft.Communication.AdvancedMessageReceived",
        "advanced_messaging",
        "AdvancedMessageReceived",
    ),
    (
        "Microsoft.Communication.CallEnded",
        "call_automation",
        "CallEnded",
    ),
    (
        "Microsoft.Communication.CallParticipantAdded",
        "call_automation",
        "CallParticipantAdded",
    ),
    (
        "Microsoft.Communication.CallParticipantRemoved",
        "call_automation",
        "CallParticipantRemoved",
    ),
    (
        "Microsoft.Communication.CallStarted",
        "call_automation",
        "CallStarted",
    ),
    (
        "Microsoft.Communication.ChatMemberAddedToThreadWithUser",
        "chat",
        "ChatMemberAddedToThreadWithUser",
    ),
    (
        "Microsoft.Communication.ChatMemberRemovedFromThreadWithUser",
        "chat",
        "ChatMemberRemovedFromThreadWithUser",
    ),
    (
        "Microsoft.Communication.ChatMessageDeleted",
        "chat",
        "ChatMessageDeleted",
    ),
    (
        "Microsoft.Communication.ChatMessageDeletedInThread",
        "chat",
        "ChatMessageDeletedInThread",
    ),
    (
        "Microsoft.Communication.ChatMessageEdited",
        "chat",
        "ChatMessageEdited",
    ),
    (
        "Microsoft.Communication.ChatMessageEditedInThread",
        "chat",
        "ChatMessageEditedInThread",
    ),
    (
        "Microsoft.Communication.ChatMessageReceived",
        "chat",
        "ChatMessageReceived",
    ),
    (
        "Microsoft.Communication.ChatMessageReceivedInThread",
        "chat",
        "ChatMessageReceivedInThread",
    ),
    (
        "Microsoft.Communication.ChatThreadCreated",
        "chat",
        "ChatThreadCreated",
    ),
    (
        "Microsoft.Communication.ChatThreadCreatedWithUser",
        "chat",
        "ChatThreadCreatedWithUser",
    ),
    (
        "Microsoft.Communication.ChatThreadDeleted",
        "chat",
        "ChatThreadDeleted",
    ),
    (
        "Microsoft.Communication.ChatThreadParticipantAdded",
        "chat",
        "ChatThreadParticipantAdded",
    ),
    (
        "Microsoft.Communication.ChatThreadParticipantRemoved",
        "chat",
        "ChatThreadParticipantRemoved",
    ),
    (
        "Microsoft.Communication.ChatThreadPropertiesUpdated",
        "chat",
        "ChatThreadPropertiesUpdated",
    ),
    (
        "Microsoft.Communication.ChatThreadPropertiesUpdatedPerUser",
        "chat",
        "ChatThreadPropertiesUpdatedPerUser",
    ),
    (
        "Microsoft.Communication.ChatThreadWithUserDeleted",
        "chat",
        "ChatThreadWithUserDeleted",
    ),
    (
        "Microsoft.Communication.EmailDeliveryReportReceived",
        "email",
        "EmailDeliveryReportReceived",
    ),
    (
        "Microsoft.Communication.EmailEngagementTrackingReportReceived",
        "email",
        "EmailEngagementTrackingReportReceived",
    ),
    (
        "Microsoft.Communication.IncomingCall",
        "call_automation",
        "IncomingCall",
    ),
    (
        "Microsoft.Communication.RecordingFileStatusUpdated",
        "call_automation",
        "RecordingFileStatusUpdated",
    ),
    (
        "Microsoft.Communication.RouterJobCancelled",
        "job_router",
        "RouterJobCancelled",
    ),
    (
        "Microsoft.Communication.RouterJobClassificationFailed",
        "job_router",
        "RouterJobClassificationFailed",
    ),
    (
        "Microsoft.Communication.RouterJobClassified",
        "job_router",
        "RouterJobClassified",
    ),
    (
        "Microsoft.Communication.RouterJobClosed",
        "job_router",
        "RouterJobClosed",
    ),
    (
        "Microsoft.Communication.RouterJobCompleted",
        "job_router",
        "RouterJobCompleted",
    ),
    (
        "Microsoft.Communication.RouterJobExceptionTriggered",
        "job_router",
        "RouterJobExceptionTriggered",
    ),
    (
        "Microsoft.Communication.RouterJobQueued",
        "job_router",
        "RouterJobQueued",
    ),
    (
        "Microsoft.Communication.RouterJobReceived",
        "job_router",
        "RouterJobReceived",
    ),
    (
        "Microsoft.Communication.RouterJobSchedulingFailed",
        "job_router",
        "RouterJobSchedulingFailed",
    ),
    (
        "Microsoft.Communication.RouterJobUnassigned",
        "job_router",
        "RouterJobUnassigned",
    ),
    (
        "Microsoft.Communication.RouterJobWaitingForActivation",
        "job_router",
        "RouterJobWaitingForActivation",
    ),
    (
        "Microsoft.Communication.RouterJobWorkerSelectorsExpired",
        "job_router",
        "RouterJobWorkerSelectorsExpired",
    ),
    (
        "Microsoft.Communication.RouterWorkerDeregistered",
        "job_router",
        "RouterWorkerDeregistered",
    ),
    (
        "Microsoft.Communication.RouterWorkerOfferAccepted",
        "job_router",
        "RouterWorkerOfferAccepted",
    ),
    (
        "Microsoft.Communication.RouterWorkerOfferDeclined",
        "job_router",
        "RouterWorkerOfferDeclined",
    ),
    (
        "Microsoft.Communication.RouterWorkerOfferExpired",
        "job_router",
        "RouterWorkerOfferExpired",
    ),
    (
        "Microsoft.Communication.RouterWorkerOfferIssued",
        "job_router",
        "RouterWorkerOfferIssued",
    ),
    (
        "Microsoft.Communication.RouterWorkerOfferRevoked",
        "job_router",
        "RouterWorkerOfferRevoked",
    ),
    (
        "Microsoft.Communication.RouterWorkerRegistered",
        "job_router",
        "RouterWorkerRegistered",
    ),
    (
        "Microsoft.Communication.RouterWorkerUpdated",
        "job_router",
        "RouterWorkerUpdated",
    ),
    (
        "Microsoft.Communication.SMSDeliveryReportReceived",
        "sms",
        "SMSDeliveryReportsReceived",
    ),
    (
        "Microsoft.Communication.SMSReceived",
        "sms",
        "SMSMessagesReceived",
    ),
    (
        "Microsoft.Communication.UserDisconnected",
        "chat",
        "UserDisconnected",
    ),
];

/// Event Grid's own events (the webhook validation handshake, and the notice that the
/// subscription is gone): forwarded, not counted.
pub const UNCOUNTED: [&str; 2] = [
    "Microsoft.EventGrid.SubscriptionValidationEvent",
    "Microsoft.EventGrid.SubscriptionDeletedEvent",
];

/// What one event counts as: an index into [`EVENT_TYPES`], or `Bad Route`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Counted {
    Known(usize),
    BadRoute,
}

/// What an event of `event_type` counts as; `None` for Event Grid's own events.
fn count_as(event_type: &str) -> Option<Counted> {
    if UNCOUNTED.contains(&event_type) {
        return None;
    }
    Some(
        EVENT_TYPES
            .binary_search_by(|(known, _, _)| (*known).cmp(event_type))
            .map_or(Counted::BadRoute, Counted::Known),
    )
}

/// Just the type of an event, in either schema; the rest is skipped.
#[derive(serde::Deserialize)]
struct TypeOnly<'a> {
    #[serde(rename = "eventType", borrow, default)]
    event_grid: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow, default)]
    cloud_events: Option<Cow<'a, str>>,
}

impl TypeOnly<'_> {
    fn counted(&self) -> Option<Counted> {
        match self.event_grid.as_deref().or(self.cloud_events.as_deref()) {
            Some(event_type) => count_as(event_type),
            None => Some(Counted::BadRoute),
        }
    }
}

/// The events of one delivery: a JSON array (Event Grid schema, CloudEvents batch), one
/// CloudEvent, or a binary-mode CloudEvent typed by its `ce-type` header. A body that is none
/// of these counts as one `Bad Route`.
fn events_of(headers: &http::HeaderMap, body: &[u8]) -> Vec<Counted> {
    if let Some(ce_type) = headers.get("ce-type") {
        return ce_type
            .to_str()
            .map_or(Some(Counted::BadRoute), count_as)
            .into_iter()
            .collect();
    }
    let array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let parsed = if array {
        serde_json::from_slice::<Vec<TypeOnly<'_>>>(body)
            .map(|events| events.iter().filter_map(TypeOnly::counted).collect())
    } else {
        serde_json::from_slice::<TypeOnly<'_>>(body)
            .map(|event| event.counted().into_iter().collect())
    };
    parsed.unwrap_or_else(|_| vec![Counted::BadRoute])
}

/// The pre-resolved handles of every counted event type.
pub struct EventTable {
    known: Vec<OperationMetrics>,
    bad_route: OperationMetrics,
}

impl EventTable {
    /// Resolves the handles of every entry of [`EVENT_TYPES`] in `metrics`.
    pub fn bind(metrics: &Metrics) -> EventTable {
        EventTable {
            known: EVENT_TYPES
                .iter()
                .map(|(_, api, operation)| metrics.bind_named(api, operation))
                .collect(),
            bad_route: metrics.bind_named("unknown", "Bad Route"),
        }
    }

    fn get(&self, counted: Counted) -> &OperationMetrics {
        match counted {
            Counted::Known(index) => &self.known[index],
            Counted::BadRoute => &self.bad_route,
        }
    }
}

/// Layer that applies [`CountEvents`].
#[derive(Clone)]
pub struct CountEventsLayer {
    table: Arc<EventTable>,
    body_limit: usize,
}

impl CountEventsLayer {
    /// Counts into `table`, reading bodies of at most `body_limit` bytes.
    pub fn new(table: Arc<EventTable>, body_limit: usize) -> Self {
        CountEventsLayer { table, body_limit }
    }
}

impl<S> Layer<S> for CountEventsLayer {
    type Service = CountEvents<S>;

    fn layer(&self, inner: S) -> CountEvents<S> {
        CountEvents {
            inner,
            table: Arc::clone(&self.table),
            body_limit: self.body_limit,
        }
    }
}

/// Service that counts the events of each delivery; see the [module docs](self).
#[derive(Clone)]
pub struct CountEvents<S> {
    inner: S,
    table: Arc<EventTable>,
    body_limit: usize,
}

/// The response body: the inner service's, or the gateway's own short answer.
pub type EventsBody<B> = Either<B, Full<Bytes>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CountEvents<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
{
    type Response = Response<EventsBody<ResBody>>;
    type Error = Infallible;
    // Boxed: one delivery reads its whole body before forwarding, an async step a named
    // future would only spell out by hand, and deliveries are far from the proxy's hot path.
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The clone that was made ready is the one that forwards.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let table = Arc::clone(&self.table);
        let limit = self.body_limit;
        Box::pin(async move {
            let start = Instant::now();
            let (parts, body) = request.into_parts();
            let counted = parts.method == Method::POST;
            let declared_too_large = parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|length| length > limit as u64);
            let body = if declared_too_large {
                Err(StatusCode::PAYLOAD_TOO_LARGE)
            } else {
                match Limited::new(body, limit).collect().await {
                    Ok(collected) => Ok(collected.to_bytes()),
                    Err(error) if error.is::<LengthLimitError>() => {
                        Err(StatusCode::PAYLOAD_TOO_LARGE)
                    }
                    Err(_) => Err(StatusCode::BAD_REQUEST),
                }
            };
            let body = match body {
                Ok(body) => body,
                Err(status) => {
                    if counted && status == StatusCode::PAYLOAD_TOO_LARGE {
                        table.bad_route.record(status, start.elapsed(), None);
                    }
                    return Ok(refuse(status).map(Either::Right));
                }
            };
            let events = if counted {
                events_of(&parts.headers, &body)
            } else {
                Vec::new()
            };
            let Ok(response) = inner
                .call(Request::from_parts(parts, Full::new(body)))
                .await;
            let error = response.extensions().get::<ErrorKind>().copied();
            let elapsed = start.elapsed();
            for event in events {
                table.get(event).record(response.status(), elapsed, error);
            }
            Ok(response.map(Either::Left))
        })
    }
}

/// A running events listener.
pub struct EventsListener {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl EventsListener {
    /// Binds `events.listen` and serves it: counts deliveries into `metrics` and forwards them
    /// to the webhook with the gateway's client settings and timeouts.
    pub(crate) async fn start(
        events: &EventsConfig,
        config: &Config,
        metrics: &Metrics,
        catalogue: Arc<Catalogue>,
    ) -> Result<EventsListener, StartError> {
        let listener = server::bind("events", events.listen).await?;
        let addr = server::local_addr("events", &listener, events.listen)?;
        // The catalogue only matters to a forwarder that rejects bad routes; this one never does.
        let forward = Forward::<Full<Bytes>>::new(
            client::build(&config.client)?,
            events.forward_to.clone(),
            config.timeouts,
            // The events listener's connection guard (`server::ConnectionGuard`).
            Some(config.header_read_timeout),
            BadRoutePolicy::Forward,
            catalogue,
            "http",
        );
        let count = CountEventsLayer::new(Arc::new(EventTable::bind(metrics)), events.body_limit);
        let (stop, stopped) = watch::channel(false);
        let policy = server::ConnectionPolicy::guarded(
            config,
            None,
            metrics.protocol_rejections(),
            DrainDeadline::new(),
        );
        let task = tokio::spawn(server::serve(
            listener,
            policy,
            move |peer| TowerToHyperService::new(count.layer(forward.for_peer(&Peer::new(peer)))),
            stopped,
        ));
        tracing::info!(%addr, webhook = %events.forward_to.authority, "events listener serving");
        Ok(EventsListener { addr, stop, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and drains deliveries in flight.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The gateway's own answer to a delivery it cannot take.
fn refuse(status: StatusCode) -> Response<Full<Bytes>> {
    let (kind, text) = if status == StatusCode::PAYLOAD_TOO_LARGE {
        ("body_too_large", "acsgate: event delivery too large\n")
    } else {
        ("body_read", "acsgate: could not read the event delivery\n")
    };
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static(kind));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_are_sorted_and_unique() {
        assert!(
            EVENT_TYPES.windows(2).all(|w| w[0].0 < w[1].0),
            "EVENT_TYPES must stay sorted for the binary search"
        );
    }

    #[test]
    fn both_schemas_single_and_batched() {
        let none = http::HeaderMap::new();
        let sms = count_as("Microsoft.Communication.SMSReceived").unwrap();
        let report = count_as("Microsoft.Communication.SMSDeliveryReportReceived").unwrap();
        let event_grid = br#"[{"id":"1","eventType":"Microsoft.Communication.SMSReceived","data":{"message":"hi"}},
            {"id":"2","eventType":"Microsoft.Communication.SMSDeliveryReportReceived","data":{}},
            {"id":"3","eventType":"Contoso.Other"}]"#;
        assert_eq!(
            events_of(&none, event_grid),
            [sms, report, Counted::BadRoute]
        );
        let cloud_one =
            br#" {"specversion":"1.0","type":"Microsoft.Communication.SMSReceived","id":"1"}"#;
        assert_eq!(events_of(&none, cloud_one), [sms]);
        let cloud_batch = br#"[{"specversion":"1.0","type":"Microsoft.Communication.SMSReceived"},{"type":"Microsoft.Communication.SMSReceived"}]"#;
        assert_eq!(events_of(&none, cloud_batch), [sms, sms]);
        let mut binary = http::HeaderMap::new();
        binary.insert(
            "ce-type",
            "Microsoft.Communication.SMSDeliveryReportReceived"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            events_of(&binary, b"{\"deliveryStatus\":\"Delivered\"}"),
            [report]
        );
    }

    #[test]
    fn validation_is_not_counted_and_garbage_is_one_bad_route() {
        let none = http::HeaderMap::new();
        let validation = br#"[{"id":"v","eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","data":{"validationCode":"512d38b6"}}]"#;
        assert_eq!(events_of(&none, validation), []);
        assert_eq!(events_of(&none, b"not json"), [Counted::BadRoute]);
        assert_eq!(events_of(&none, b"[{\"id\":1}]"), [Counted::BadRoute]);
        assert_eq!(events_of(&none, b""), [Counted::BadRoute]);
    }
}
