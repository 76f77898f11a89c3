//! The inbound events listener with real Event Grid payloads: Event Grid schema batches,
//! CloudEvents (single, batch, binary mode), both validation handshakes, an oversize delivery.
//! Event Grid → gateway events listener → a real webhook, then `/metrics`.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;

use acsgate::error::ERROR_HEADER;
use support::{Seen, Upstream, gateway, h1_client, json, scrape, send, settings};

/// Header by which a test delivery tells the webhook which status to answer.
const STATUS_HEADER: &str = "x-test-status";
const BODY_LIMIT: usize = 64 * 1024;

fn payload(name: &str) -> Bytes {
    let path = format!("{}/tests/data/events/{name}", env!("CARGO_MANIFEST_DIR"));
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

/// The app's webhook: answers Event Grid's validation handshake (echoing the code), the
/// CloudEvents OPTIONS handshake (allowing the origin), and otherwise the status asked for.
async fn webhook(seen: Seen) -> Response<Full<Bytes>> {
    if seen.method == Method::OPTIONS {
        let origin = seen
            .headers
            .get("webhook-request-origin")
            .cloned()
            .unwrap_or(HeaderValue::from_static("*"));
        return Response::builder()
            .header("webhook-allowed-origin", origin)
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    if seen
        .headers
        .get("aeg-event-type")
        .map(HeaderValue::as_bytes)
        == Some(b"SubscriptionValidation")
    {
        let events: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
        let code = events[0]["data"]["validationCode"].as_str().unwrap();
        let body = format!(r#"{{"validationResponse":"{code}"}}"#);
        return Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
    }
    let status = seen
        .headers
        .get(STATUS_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::OK);
    json(status, "")
}

fn delivery(
    method: Method,
    addr: SocketAddr,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{addr}/api/events?code=secret"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(body)).unwrap()
}

#[tokio::test]
async fn deliveries_are_forwarded_unchanged_and_counted_per_event() {
    let webhook = Upstream::start(webhook).await;
    let mut settings = settings("https://contoso.communication.azure.com");
    settings.events_listen = Some("127.0.0.1:0".parse().unwrap());
    settings.events_forward_to = Some(webhook.url());
    settings.events_body_limit = Some(BODY_LIMIT);
    let gw = gateway(settings).await;
    let events = gw.events_addr().expect("the events listener runs");
    let client = h1_client();
    let event_grid = [
        ("content-type", "application/json"),
        ("aeg-event-type", "Notification"),
        ("aeg-subscription-name", "SMS-EVENTS"),
        ("aeg-delivery-count", "0"),
        ("aeg-data-version", "1.0"),
        ("aeg-metadata-version", "1"),
    ];

    // Event Grid schema: a batch of three SMS events.
    let sms = payload("sms-batch.eventgrid.json");
    let (response, _) = send(
        &client,
        delivery(Method::POST, events, &event_grid, sms.clone()),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);

    // Event Grid's subscription validation: the webhook's answer comes back, nothing counted.
    let validation = payload("validation.eventgrid.json");
    let mut headers = event_grid;
    headers[1] = ("aeg-event-type", "SubscriptionValidation");
    let (response, body) = send(
        &client,
        delivery(Method::POST, events, &headers, validation),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        body,
        r#"{"validationResponse":"512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}"#
    );

    // CloudEvents: the abuse-protection handshake, one event, a batch, and binary mode.
    let (response, _) = send(
        &client,
        delivery(
            Method::OPTIONS,
            events,
            &[
                ("webhook-request-origin", "eventgrid.azure.net"),
                ("webhook-request-rate", "120"),
            ],
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["webhook-allowed-origin"],
        "eventgrid.azure.net"
    );
    let binary_mode = [
        ("ce-specversion", "1.0"),
        ("ce-type", "Microsoft.Communication.SMSReceived"),
        ("ce-id", "b1"),
        ("ce-source", "/contoso-acs"),
        ("content-type", "application/json"),
    ];
    for (headers, body, status) in [
        (
            &[
                (
                    "content-type",
                    "application/cloudevents+json; charset=utf-8",
                ),
                (STATUS_HEADER, "500"),
            ][..],
            payload("chat.cloudevent.json"),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
        (
            &[
                (
                    "content-type",
                    "application/cloudevents-batch+json; charset=utf-8",
                ),
                (STATUS_HEADER, "202"),
            ],
            payload("calls.cloudevents-batch.json"),
            StatusCode::ACCEPTED,
        ),
        (
            &binary_mode,
            Bytes::from_static(br#"{"From":"+14255550123","Message":"hi"}"#),
            StatusCode::OK,
        ),
    ] {
        let (response, _) = send(&client, delivery(Method::POST, events, headers, body)).await;
        assert_eq!(response.status(), status, "{headers:?}");
    }

    // Larger than the limit: refused here, never forwarded.
    let (response, _) = send(
        &client,
        delivery(
            Method::POST,
            events,
            &event_grid,
            Bytes::from(vec![b' '; BODY_LIMIT + 1]),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.headers()[ERROR_HEADER], "body_too_large");

    // The webhook got every other delivery, byte for byte, with Event Grid's headers and path.
    let seen = webhook.seen();
    assert_eq!(seen.len(), 6);
    assert_eq!(seen[0].body, sms);
    assert_eq!(
        seen[0].uri.path_and_query().unwrap(),
        "/api/events?code=secret"
    );
    for (name, value) in event_grid {
        assert_eq!(seen[0].headers[name], value, "{name}");
    }
    assert_eq!(
        seen[5].headers["ce-type"],
        "Microsoft.Communication.SMSReceived"
    );

    let metrics = scrape(gw.admin_addr()).await;
    let mut counted = BTreeMap::new();
    for sample in metrics
        .samples
        .iter()
        .filter(|s| s.name == "acsgate_requests_total")
    {
        let key = ["api", "operation", "status_code"].map(|l| sample.labels[l].clone());
        counted.insert(key, sample.value);
    }
    let expected: BTreeMap<[String; 3], f64> = [
        (["sms", "SMSMessagesReceived", "200"], 2.0),
        (["sms", "SMSDeliveryReportsReceived", "200"], 2.0),
        (["chat", "ChatMessageReceived", "500"], 1.0),
        (["call_automation", "IncomingCall", "202"], 1.0),
        (["unknown", "Bad Route", "202"], 1.0),
        (["unknown", "Bad Route", "413"], 1.0),
    ]
    .into_iter()
    .map(|(key, value)| (key.map(String::from), value))
    .collect();
    assert_eq!(counted, expected);
    assert_eq!(
        metrics.sum("acsgate_request_duration_seconds_count", &[]),
        8.0
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_webhook_is_counted_as_an_upstream_error() {
    // A port nothing listens on: bind, note the port, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut settings = settings("https://contoso.communication.azure.com");
    settings.events_listen = Some("127.0.0.1:0".parse().unwrap());
    settings.events_forward_to = Some(format!("http://{closed}"));
    let gw = gateway(settings).await;
    let events = gw.events_addr().unwrap();
    let (response, _) = send(
        &h1_client(),
        delivery(
            Method::POST,
            events,
            &[("aeg-event-type", "Notification")],
            payload("sms-batch.eventgrid.json"),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let metrics = scrape(gw.admin_addr()).await;
    assert_eq!(
        metrics.sum(
            "acsgate_requests_total",
            &[
                ("operation", "SMSDeliveryReportsReceived"),
                ("status_code", "502")
            ]
        ),
        2.0
    );
    assert_eq!(
        metrics.sum(
            "acsgate_upstream_errors_total",
            &[("api", "sms"), ("kind", "connect")]
        ),
        3.0
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn no_events_listener_unless_configured() {
    let upstream = Upstream::ok().await;
    let gw = gateway(settings(&upstream.url())).await;
    assert_eq!(gw.events_addr(), None);
    gw.shutdown().await;
}
