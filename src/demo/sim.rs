//! A simulated ACS upstream: a real HTTP/1.1 + h2c server that answers every catalogue route
//! with a plausible status and a small JSON body, and unknown routes with ACS's 404.
//!
//! Some answers are errors or slow, decided from the seed and the request's
//! `x-ms-client-request-id`, so a run is the same whatever order concurrent requests arrive in.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::traffic::REQUEST_ID_HEADER;
use crate::catalogue::Catalogue;
use crate::server;

/// Largest request body the simulator reads.
const BODY_LIMIT: usize = 1 << 20;

/// A running simulated upstream on a loopback port.
pub struct SimUpstream {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl SimUpstream {
    /// Binds `127.0.0.1:0` and serves until [`SimUpstream::shutdown`].
    pub async fn start(
        catalogue: Arc<Catalogue>,
        seed: u64,
    ) -> Result<SimUpstream, std::io::Error> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let state = Arc::new(Sim {
            catalogue,
            seed,
            addr,
            unnamed: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, state, stopped));
        Ok(SimUpstream { addr, stop, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to give the gateway as its upstream.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and lets open connections finish (at most one second).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(listener: TcpListener, sim: Arc<Sim>, stop: watch::Receiver<bool>) {
    let service = tower::service_fn(move |request| {
        let sim = Arc::clone(&sim);
        async move { Ok::<_, Infallible>(sim.answer(request).await) }
    });
    let policy = server::ConnectionPolicy::plain(Duration::from_secs(10));
    server::serve(
        listener,
        policy,
        move |_| TowerToHyperService::new(service.clone()),
        stop,
    )
    .await;
}

struct Sim {
    catalogue: Arc<Catalogue>,
    seed: u64,
    addr: SocketAddr,
    /// Numbers requests that carry no request id (e.g. sent by hand with curl).
    unnamed: AtomicU64,
}

/// What the simulator decided for one request.
#[derive(Debug, PartialEq)]
struct Decision {
    status: StatusCode,
    delay: Option<Duration>,
}

impl Sim {
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        // Read the body so HTTP/1.1 connections stay reusable; its content does not matter.
        let body = Limited::new(body, BODY_LIMIT)
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        let path = parts.uri.path();
        let query = parts.uri.query();
        let classification = self.catalogue.classify(&parts.method, path, query);
        let operation_id = classification
            .body_rule
            .as_ref()
            .and_then(|rule| rule.apply(&body))
            .unwrap_or(classification.operation);
        let operation = self.catalogue.operation(operation_id);
        let bad_route = self.catalogue.api(operation.api).bad_route == operation_id;

        let mut rng = self.rng_for(parts.headers.get(REQUEST_ID_HEADER));
        let decision = decide(&mut rng, &parts.method, path, &operation.name, bad_route);
        if let Some(delay) = decision.delay {
            tokio::time::sleep(delay).await;
        }
        let id = super::traffic::guid(&mut rng);
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = decision.status;
        let json = match decision.status.as_u16() {
            204 => None,
            202 if operation.name == "Email_Send" => {
                let version = api_version(query).unwrap_or("2023-03-31");
                let location = format!(
                    "http://{}/emails/operations/{id}?api-version={version}",
                    self.addr
                );
                if let Ok(value) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert("operation-location", value);
                }
                Some(format!(r#"{{"id":"{id}","status":"Running"}}"#))
            }
            200..=299 => Some(format!(
                r#"{{"id":"{id}","operation":"{}"}}"#,
                json_escape(&operation.name)
            )),
            status => {
                if status == 429 {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                let (code, message) = if bad_route {
                    (
                        "NotFound",
                        format!("No route matches {} {path}.", parts.method),
                    )
                } else {
                    error_text(status)
                };
                Some(format!(
                    r#"{{"error":{{"code":"{code}","message":"{}"}}}}"#,
                    json_escape(&message)
                ))
            }
        };
        if let Some(json) = json {
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            *response.body_mut() = Full::new(Bytes::from(json));
        }
        response
    }

    /// One generator per request, from the seed and the request id: same id, same answer.
    fn rng_for(&self, request_id: Option<&HeaderValue>) -> fastrand::Rng {
        let key = match request_id {
            Some(value) => fnv1a(value.as_bytes()),
            None => fnv1a(&self.unnamed.fetch_add(1, Ordering::Relaxed).to_le_bytes()),
        };
        fastrand::Rng::with_seed(self.seed.rotate_left(32) ^ key)
    }
}

/// The status and delay of one answer: ~6% 4xx, ~3% 5xx, ~5% slow (50–400 ms).
fn decide(
    rng: &mut fastrand::Rng,
    method: &Method,
    path: &str,
    operation: &str,
    bad_route: bool,
) -> Decision {
    let roll = rng.u32(0..1000);
    let delay = (rng.u32(0..100) < 5).then(|| Duration::from_millis(rng.u64(50..=400)));
    let status = if bad_route {
        StatusCode::NOT_FOUND
    } else if roll < 60 {
        const CLIENT: [u16; 6] = [400, 401, 403, 404, 409, 429];
        StatusCode::from_u16(CLIENT[rng.usize(0..CLIENT.len())]).unwrap_or(StatusCode::BAD_REQUEST)
    } else if roll < 90 {
        if rng.bool() {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    } else {
        success(method, path, operation)
    };
    Decision { status, delay }
}

/// The success status ACS gives for this kind of call.
fn success(method: &Method, path: &str, operation: &str) -> StatusCode {
    let last_segment = path.rsplit('/').next().unwrap_or("");
    if *method == Method::DELETE {
        StatusCode::NO_CONTENT
    } else if operation == "Email_Send"
        || matches!(
            operation,
            "Play" | "Recognize" | "Cancel All Media Operations"
        )
    {
        // Long-running: accepted now, finished later.
        StatusCode::ACCEPTED
    } else if *method == Method::POST
        && (!last_segment.contains(':') || operation.starts_with("Create"))
    {
        // A POST to a collection creates or sends something.
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

fn error_text(status: u16) -> (&'static str, String) {
    let (code, message) = match status {
        400 => ("BadRequest", "The request is invalid."),
        401 => (
            "Unauthorized",
            "Denied by the simulated upstream: invalid HMAC signature.",
        ),
        403 => (
            "Forbidden",
            "The identity is not allowed to perform this operation.",
        ),
        404 => ("NotFound", "The resource was not found."),
        409 => ("Conflict", "The resource was modified concurrently."),
        429 => (
            "TooManyRequests",
            "Rate limit exceeded; retry after 1 second.",
        ),
        503 => (
            "ServiceUnavailable",
            "The service is temporarily unavailable.",
        ),
        _ => ("InternalServerError", "An internal error occurred."),
    };
    (code, message.to_owned())
}

fn api_version(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("api-version="))
}

fn json_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_statuses_follow_acs() {
        let post = Method::POST;
        assert_eq!(
            success(&post, "/chat/threads/x/messages", "SendChatMessage"),
            201
        );
        assert_eq!(
            success(&post, "/calling/callConnections", "Create Call"),
            201
        );
        assert_eq!(success(&post, "/emails:send", "Email_Send"), 202);
        assert_eq!(
            success(&post, "/calling/callConnections/c:play", "Play"),
            202
        );
        assert_eq!(
            success(
                &post,
                "/calling/callConnections/c:terminate",
                "Terminate Call"
            ),
            200
        );
        assert_eq!(success(&Method::DELETE, "/rooms/1", "DeleteRoom"), 204);
        assert_eq!(success(&Method::GET, "/rooms/1", "GetRoom"), 200);
        assert_eq!(success(&Method::PATCH, "/rooms/1", "PatchRoom"), 200);
    }

    #[test]
    fn faults_are_mixed_in_at_the_advertised_rates() {
        let (mut client, mut server, mut slow) = (0, 0, 0);
        for i in 0..20_000u64 {
            let mut rng = fastrand::Rng::with_seed(i);
            let decision = decide(&mut rng, &Method::GET, "/rooms/1", "GetRoom", false);
            match decision.status.as_u16() {
                400..=499 => client += 1,
                500..=599 => server += 1,
                _ => assert_eq!(decision.status, 200),
            }
            if let Some(delay) = decision.delay {
                assert!((50..=400).contains(&delay.as_millis()), "{delay:?}");
                slow += 1;
            }
        }
        // 6%, 3% and 5% of 20 000, within a generous margin.
        assert!((1000..1400).contains(&client), "{client}");
        assert!((450..750).contains(&server), "{server}");
        assert!((800..1200).contains(&slow), "{slow}");
        let mut rng = fastrand::Rng::with_seed(1);
        let bad = decide(&mut rng, &Method::GET, "/nothing", "Bad Route", true);
        assert_eq!(bad.status, 404);
    }

    #[test]
    fn answers_are_keyed_on_seed_and_request_id() {
        let sim = |seed| Sim {
            catalogue: Arc::new(Catalogue::builtin()),
            seed,
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            unnamed: AtomicU64::new(0),
        };
        let (one, two) = (sim(1), sim(2));
        let id = HeaderValue::from_static("0f8fad5b-d9cb-469f-a165-70867728950e");
        let other = HeaderValue::from_static("7c9e6679-7425-40de-944b-e07fc1f90ae7");
        let draw = |sim: &Sim, id: Option<&HeaderValue>| sim.rng_for(id).u64(..);
        assert_eq!(draw(&one, Some(&id)), draw(&one, Some(&id)));
        assert_ne!(draw(&one, Some(&id)), draw(&one, Some(&other)));
        assert_ne!(draw(&one, Some(&id)), draw(&two, Some(&id)));
        // Without an id, consecutive requests still differ.
        assert_ne!(draw(&one, None), draw(&one, None));
    }
}
