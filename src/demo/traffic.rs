//! The demo's traffic: a deterministic plan of requests covering every catalogue route (with
//! realistic ids and the route's newest `api-version`) plus a few unknown routes, and the
//! workers that send it through the gateway over HTTP/1.1 keep-alive and h2c.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use indicatif::ProgressBar;

use crate::catalogue::{Catalogue, Route};

/// Header the simulated upstream keys its deterministic answers on (ACS clients send it too).
pub const REQUEST_ID_HEADER: &str = "x-ms-client-request-id";

/// Share of requests sent to routes the catalogue does not know, in percent.
const BAD_ROUTE_PERCENT: u32 = 5;
/// Share of requests sent over h2c instead of HTTP/1.1, in percent.
const H2C_PERCENT: u32 = 25;

/// One planned request.
#[derive(Clone, Debug)]
pub struct Planned {
    /// Method.
    pub method: Method,
    /// Path and query, ids filled in.
    pub path_and_query: String,
    /// JSON body, for methods that carry one.
    pub body: Option<Bytes>,
    /// Sent over h2c (prior knowledge) rather than HTTP/1.1.
    pub h2c: bool,
    /// Value of [`REQUEST_ID_HEADER`].
    pub request_id: String,
}

/// Plans `count` requests, the same for the same seed and catalogue. Routes are taken from a
/// reshuffled deck, so every route is used once before any is used twice.
pub fn plan(catalogue: &Catalogue, count: u64, seed: u64) -> Vec<Planned> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let routes = catalogue.routes();
    let mut deck: Vec<usize> = Vec::new();
    let mut planned = Vec::new();
    for _ in 0..count {
        let (method, path_and_query, body) =
            if routes.is_empty() || rng.u32(0..100) < BAD_ROUTE_PERCENT {
                near_miss(&mut rng)
            } else {
                if deck.is_empty() {
                    deck = (0..routes.len()).collect();
                    rng.shuffle(&mut deck);
                }
                let route = &routes[deck.pop().unwrap_or_default()];
                let operation = &catalogue.operation(route.operation).name;
                (
                    route.method.clone(),
                    route_request(route, &mut rng),
                    body_for(&route.method, operation, &mut rng),
                )
            };
        planned.push(Planned {
            method,
            path_and_query,
            body,
            h2c: rng.u32(0..100) < H2C_PERCENT,
            request_id: guid(&mut rng),
        });
    }
    planned
}

/// The route's path with every parameter filled in, and its newest `api-version`.
pub fn route_request(route: &Route, rng: &mut fastrand::Rng) -> String {
    let path = fill_template(&route.template, rng);
    // A version-specific route only applies to its own versions.
    let versions = if route.when_api_version.is_empty() {
        &route.api_versions
    } else {
        &route.when_api_version
    };
    match versions.iter().max() {
        Some(version) => format!("{path}?api-version={version}"),
        None => path,
    }
}

/// Replaces each `{name}` (or `{*name}`) of a template by a plausible, percent-encoded id.
pub fn fill_template(template: &str, rng: &mut fastrand::Rng) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| open + c) else {
            break;
        };
        out.push_str(&rest[..open]);
        let name = &rest[open + 1..close];
        // The collection segment before the parameter says what a bare `{id}` is.
        let owner = out.trim_end_matches('/').rsplit('/').next().unwrap_or("");
        let owner = owner.to_owned();
        if let Some(name) = name.strip_prefix('*') {
            // A catch-all takes the rest of the path: two segments.
            out.push_str(&encode(&id_for(name, "", rng)));
            out.push('/');
            out.push_str(&encode(&id_for(name, "", rng)));
        } else {
            out.push_str(&encode(&id_for(name, &owner, rng)));
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// A realistic id for parameter `name`; `owner` is the collection segment before it, which
/// tells what a bare `{id}` is.
fn id_for(name: &str, owner: &str, rng: &mut fastrand::Rng) -> String {
    let owner = owner.to_ascii_lowercase();
    match name {
        "chatThreadId" => format!("19:{}@thread.v2", hex(rng, 32)),
        "chatMessageId" => format!("17{}", digits(rng, 11)),
        "chatParticipantId" | "chatMemberId" | "participantMri" => acs_user(rng),
        "participantRawId" => format!("4:+1425555{}", digits(rng, 4)),
        "roomId" => format!("99{}", digits(rng, 15)),
        "jobId" => format!("job-{}", hex(rng, 8)),
        "queueId" => format!("queue-{}", hex(rng, 6)),
        "workerId" => format!("worker-{}", hex(rng, 6)),
        "classificationPolicyId" => format!("classification-{}", hex(rng, 6)),
        "distributionPolicyId" => format!("distribution-{}", hex(rng, 6)),
        "exceptionPolicyId" => format!("exception-{}", hex(rng, 6)),
        "id" => match owner.as_str() {
            "identities" => acs_user(rng),
            "jobs" => format!("job-{}", hex(rng, 8)),
            "queues" => format!("queue-{}", hex(rng, 6)),
            "workers" => format!("worker-{}", hex(rng, 6)),
            "classificationpolicies" => format!("classification-{}", hex(rng, 6)),
            "distributionpolicies" => format!("distribution-{}", hex(rng, 6)),
            "exceptionpolicies" => format!("exception-{}", hex(rng, 6)),
            _ => guid(rng),
        },
        // callConnectionId, operationId, messageId, outgoingMessageId, offerId, assignmentId…
        _ => guid(rng),
    }
}

/// `8:acs:<resource guid>_<user guid>`, the raw id of an ACS user.
fn acs_user(rng: &mut fastrand::Rng) -> String {
    format!("8:acs:{}_{}", guid(rng), guid(rng))
}

/// A random lower-case GUID.
pub fn guid(rng: &mut fastrand::Rng) -> String {
    format!(
        "{}-{}-4{}-{}-{}",
        hex(rng, 8),
        hex(rng, 4),
        hex(rng, 3),
        hex(rng, 4),
        hex(rng, 12)
    )
}

fn hex(rng: &mut fastrand::Rng, len: usize) -> String {
    (0..len)
        .map(|_| char::from_digit(rng.u32(0..16), 16).unwrap_or('0'))
        .collect()
}

fn digits(rng: &mut fastrand::Rng, len: usize) -> String {
    (0..len).map(|_| rng.digit(10)).collect()
}

/// Percent-encodes everything but RFC 3986 unreserved characters, as the ACS SDKs do for ids
/// (so the `:` of `19:…` or `8:acs:…` never reads as a custom verb).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 2);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An unknown or near-miss request: each becomes some api's `Bad Route` (or `unknown`'s).
fn near_miss(rng: &mut fastrand::Rng) -> (Method, String, Option<Bytes>) {
    let thread = encode(&format!("19:{}@thread.v2", hex(rng, 32)));
    let call = guid(rng);
    let room = format!("99{}", digits(rng, 15));
    let (method, path, version) = match rng.u32(0..8) {
        0 => (
            Method::GET,
            format!("/chat/threads/{thread}/unknown"),
            "2025-03-15",
        ),
        1 => (Method::POST, "/sms/optouts:add".to_owned(), "2026-01-23"),
        2 => (Method::GET, "/nothing/here".to_owned(), "2024-01-01"),
        3 => (
            Method::POST,
            format!("/calling/callConnections/{call}:dance"),
            "2025-05-15",
        ),
        4 => (Method::PUT, format!("/rooms/{room}"), "2025-02-28"),
        5 => (Method::GET, "/emails:send".to_owned(), "2023-03-31"),
        6 => (
            Method::GET,
            "/routing/queues/q1/members".to_owned(),
            "2023-11-01",
        ),
        _ => (Method::DELETE, "/identities".to_owned(), "2026-09-23"),
    };
    let body = body_for(&method, "", rng);
    (method, format!("{path}?api-version={version}"), body)
}

/// A small JSON body for methods that carry one; Rooms participant patches sometimes remove
/// everyone (all-null), which the gateway names `RemoveParticipants`.
fn body_for(method: &Method, operation: &str, rng: &mut fastrand::Rng) -> Option<Bytes> {
    if !(method == Method::POST || method == Method::PATCH || method == Method::PUT) {
        return None;
    }
    let json = match operation {
        "UpdateParticipants" | "AddParticipants" | "RemoveParticipants"
            if method == Method::PATCH =>
        {
            let (a, b) = (acs_user(rng), acs_user(rng));
            if rng.bool() {
                format!(r#"{{"participants":{{"{a}":null,"{b}":null}}}}"#)
            } else {
                format!(r#"{{"participants":{{"{a}":{{"role":"Presenter"}},"{b}":null}}}}"#)
            }
        }
        "SendChatMessage" => {
            r#"{"content":"Hello from the acsgate demo","type":"text","senderDisplayName":"Demo"}"#
                .to_owned()
        }
        "CreateChatThread" => format!(
            r#"{{"topic":"Demo thread","participants":[{{"communicationIdentifier":{{"rawId":"{}"}}}}]}}"#,
            acs_user(rng)
        ),
        "SMSMessageSent" => format!(
            r#"{{"from":"+18005550100","smsRecipients":[{{"to":"+1425555{}"}}],"message":"Your code is {}"}}"#,
            digits(rng, 4),
            digits(rng, 6)
        ),
        "Email_Send" => r#"{"senderAddress":"DoNotReply@contoso.azurecomm.net","recipients":{"to":[{"address":"alice@example.com"}]},"content":{"subject":"Welcome","plainText":"Hello from the acsgate demo"}}"#.to_owned(),
        "Create Call" => format!(
            r#"{{"targets":[{{"rawId":"4:+1425555{}"}}],"callbackUri":"https://contoso.example/events"}}"#,
            digits(rng, 4)
        ),
        "CreateToken" => r#"{"scopes":["chat","voip"]}"#.to_owned(),
        _ => format!(r#"{{"demo":true,"n":{}}}"#, rng.u32(0..1000)),
    };
    Some(Bytes::from(json))
}

/// What the workers saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Requests that got a response.
    pub answered: u64,
    /// Requests that failed without one, with the first error seen.
    pub failed: u64,
    /// The first transport error, for the report.
    pub first_error: Option<String>,
}

/// Sends `plan` through the gateway at `proxy` with `concurrency` workers.
pub async fn drive(
    proxy: SocketAddr,
    plan: Vec<Planned>,
    concurrency: usize,
    progress: ProgressBar,
) -> Outcome {
    let plan = Arc::new(plan);
    let next = Arc::new(AtomicUsize::new(0));
    let h1 = client(false);
    let h2 = client(true);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (plan, next, h1, h2, progress) = (
            Arc::clone(&plan),
            Arc::clone(&next),
            h1.clone(),
            h2.clone(),
            progress.clone(),
        );
        workers.spawn(async move {
            let mut outcome = Outcome::default();
            while let Some(planned) = plan.get(next.fetch_add(1, Ordering::Relaxed)) {
                let client = if planned.h2c { &h2 } else { &h1 };
                match send(client, proxy, planned).await {
                    Ok(()) => outcome.answered += 1,
                    Err(error) => {
                        outcome.failed += 1;
                        outcome.first_error.get_or_insert(error);
                    }
                }
                progress.inc(1);
            }
            outcome
        });
    }
    let mut total = Outcome::default();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(outcome) => {
                total.answered += outcome.answered;
                total.failed += outcome.failed;
                if total.first_error.is_none() {
                    total.first_error = outcome.first_error;
                }
            }
            Err(error) => {
                total
                    .first_error
                    .get_or_insert(format!("worker failed: {error}"));
            }
        }
    }
    total
}

type DemoClient = Client<HttpConnector, Full<Bytes>>;

/// A pooled client: HTTP/1.1 keep-alive, or h2c with prior knowledge.
pub fn client(h2c: bool) -> DemoClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new());
    if h2c {
        builder.http2_only(true);
    }
    builder.build(connector)
}

async fn send(client: &DemoClient, proxy: SocketAddr, planned: &Planned) -> Result<(), String> {
    let uri = format!("http://{proxy}{}", planned.path_and_query);
    let mut request = Request::builder()
        .method(planned.method.clone())
        .uri(&uri)
        .header(REQUEST_ID_HEADER, planned.request_id.as_str())
        .header(header::ACCEPT, "application/json");
    if planned.body.is_some() {
        let content_type = if planned.method == Method::PATCH {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        request = request.header(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    let request = request
        .body(Full::new(planned.body.clone().unwrap_or_default()))
        .map_err(|e| format!("{} {uri}: {e}", planned.method))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{} {uri}: {}", planned.method, chain(&e)))?;
    // Read the whole body: the gateway records a request when its response body ends.
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{} {uri}: reading the body: {e}", planned.method))?;
    Ok(())
}

/// An error with its causes, `a: b: c`.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_braces(path: &str) -> bool {
        !path.contains('{') && !path.contains('}')
    }

    #[test]
    fn templates_are_filled_with_realistic_encoded_ids() {
        let mut rng = fastrand::Rng::with_seed(3);
        let path = fill_template(
            "/chat/threads/{chatThreadId}/messages/{chatMessageId}",
            &mut rng,
        );
        assert!(path.starts_with("/chat/threads/19%3A"), "{path}");
        assert!(path.contains("%40thread.v2/messages/17"), "{path}");
        let path = fill_template("/identities/{id}/:issueAccessToken", &mut rng);
        assert!(path.starts_with("/identities/8%3Aacs%3A"), "{path}");
        assert!(path.ends_with("/:issueAccessToken"), "{path}");
        let path = fill_template("/routing/queues/{id}/statistics", &mut rng);
        assert!(path.starts_with("/routing/queues/queue-"), "{path}");
        let path = fill_template("/calling/callConnections/{callConnectionId}:play", &mut rng);
        let call = path.trim_start_matches("/calling/callConnections/");
        assert!(call.ends_with(":play") && call.len() == 36 + 5, "{path}");
        let path = fill_template(
            "/calling/callConnections/{callConnectionId}/participants/{participantRawId}",
            &mut rng,
        );
        assert!(path.contains("/participants/4%3A%2B1425555"), "{path}");
        let path = fill_template("/files/{*rest}", &mut rng);
        assert!(no_braces(&path) && path.matches('/').count() == 3, "{path}");
    }

    /// Every built-in route gets every parameter filled, and the filled request is classified
    /// as that very route's operation (so the ids never look like verbs or other routes).
    #[test]
    fn every_builtin_route_is_filled_and_classifies_as_itself() {
        let catalogue = Catalogue::builtin();
        assert!(!catalogue.routes().is_empty());
        let mut rng = fastrand::Rng::with_seed(11);
        for route in catalogue.routes() {
            for _ in 0..5 {
                let request = route_request(route, &mut rng);
                let (path, query) = request.split_once('?').unwrap_or((&request, ""));
                assert!(no_braces(path), "{} left {path}", route.template);
                let got = catalogue
                    .classify(&route.method, path, Some(query))
                    .operation;
                assert_eq!(
                    catalogue.operation(got).name,
                    catalogue.operation(route.operation).name,
                    "{} {request}",
                    route.method
                );
            }
        }
    }

    #[test]
    fn near_misses_are_bad_routes() {
        let catalogue = Catalogue::builtin();
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..200 {
            let (method, request, _) = near_miss(&mut rng);
            let (path, query) = request.split_once('?').unwrap_or((&request, ""));
            let operation =
                catalogue.operation(catalogue.classify(&method, path, Some(query)).operation);
            assert_eq!(operation.name, "Bad Route", "{method} {request}");
        }
    }

    #[test]
    fn the_plan_is_deterministic_and_covers_every_route() {
        let catalogue = Catalogue::builtin();
        let a = plan(&catalogue, 400, 7);
        let b = plan(&catalogue, 400, 7);
        let render = |p: &[Planned]| -> Vec<String> {
            p.iter()
                .map(|r| format!("{} {} {:?} {}", r.method, r.path_and_query, r.body, r.h2c))
                .collect()
        };
        assert_eq!(render(&a), render(&b));
        assert_ne!(render(&a), render(&plan(&catalogue, 400, 8)));
        let mut seen = std::collections::HashSet::new();
        for planned in &a {
            let (path, query) = planned
                .path_and_query
                .split_once('?')
                .unwrap_or((&planned.path_and_query, ""));
            let classification = catalogue.classify(&planned.method, path, Some(query));
            let mut operation = classification.operation;
            if let (Some(rule), Some(body)) = (&classification.body_rule, &planned.body) {
                operation = rule.apply(body).unwrap_or(operation);
            }
            seen.insert(catalogue.operation(operation).name.clone());
        }
        for route in catalogue.routes() {
            let name = &catalogue.operation(route.operation).name;
            assert!(seen.contains(name), "{name} not covered");
        }
        assert!(seen.contains("Bad Route"));
        assert!(seen.contains("RemoveParticipants"));
        assert!(a.iter().any(|p| p.h2c) && a.iter().any(|p| !p.h2c));
    }
}
