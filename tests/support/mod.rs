//! Test harness: a real upstream server, a gateway on loopback ports, HTTP clients, and a
//! `/metrics` scraper. Everything binds `127.0.0.1:0` and stops when dropped.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod acs_hmac;
pub mod faults;
pub mod h2raw;
pub mod ids;
pub mod pki;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use acsgate::catalogue::{Catalogue, Route};
use acsgate::config::{Config, Settings};
use acsgate::demo::scrape::{self, Sample};
use acsgate::server::Gateway;

/// What the upstream received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

type Handler =
    Arc<dyn Fn(Seen) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>> + Send + Sync>;

/// A real HTTP/1.1 + h2c (or TLS) server that records every request and answers with `handler`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Starts an upstream that answers every request with `handler`.
    pub async fn start<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        Upstream::start_inner(handler, None, true).await
    }

    /// Starts a TLS upstream (h2 and http/1.1 by ALPN) with the given certificate.
    pub async fn start_tls<F, Fut>(handler: F, tls: Arc<rustls::ServerConfig>) -> Upstream
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        Upstream::start_inner(handler, Some(tls), true).await
    }

    /// Starts a TLS upstream that answers `status` at once, without reading the request body,
    /// as ACS answers a request it refuses (over h2 it then resets the stream, `NO_ERROR`).
    pub async fn early_tls(status: StatusCode, tls: Arc<rustls::ServerConfig>) -> Upstream {
        let handler = move |_| async move { json(status, r#"{"error":"early"}"#) };
        Upstream::start_inner(handler, Some(tls), false).await
    }

    /// An upstream that answers 200 with a small JSON body.
    pub async fn ok() -> Upstream {
        Upstream::start(|_| async { json(StatusCode::OK, r#"{"ok":true}"#) }).await
    }

    /// An upstream that answers 200 `{}` after `delay`.
    pub async fn slow(delay: Duration) -> Upstream {
        Upstream::start(move |_| async move {
            tokio::time::sleep(delay).await;
            json(StatusCode::OK, "{}")
        })
        .await
    }

    async fn start_inner<F, Fut>(
        handler: F,
        tls: Option<Arc<rustls::ServerConfig>>,
        read_body: bool,
    ) -> Upstream
    where
        F: Fn(Seen) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |seen| Box::pin(handler(seen)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let recorded = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = Arc::clone(&handler);
                let recorded = Arc::clone(&recorded);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let handler = Arc::clone(&handler);
                        let recorded = Arc::clone(&recorded);
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = match read_body {
                                true => body.collect().await.map_or(Bytes::new(), |c| c.to_bytes()),
                                false => Bytes::new(),
                            };
                            let seen = Seen {
                                method: parts.method,
                                uri: parts.uri,
                                version: parts.version,
                                headers: parts.headers,
                                body,
                            };
                            recorded.lock().unwrap().push(seen.clone());
                            Ok::<_, Infallible>(handler(seen).await)
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Upstream { addr, seen, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response with a JSON body.
pub fn json(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// Settings for a gateway on ephemeral loopback ports in front of `upstream`.
pub fn settings(upstream: &str) -> Settings {
    Settings {
        upstream: Some(upstream.to_owned()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        admin: Some("127.0.0.1:0".parse().unwrap()),
        drain_timeout: Some(Duration::from_secs(2)),
        ..Settings::default()
    }
}

/// Starts a gateway with `settings`.
pub async fn gateway(settings: Settings) -> Gateway {
    let config = Config::from_settings(settings).expect("valid test settings");
    Gateway::start(&config).await.expect("gateway starts")
}

/// The built-in catalogue.
pub fn catalogue() -> Arc<Catalogue> {
    Arc::new(Catalogue::load(true, &[]).expect("built-in catalogue loads"))
}

/// An HTTP/1.1 client.
pub fn h1_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An h2c (prior knowledge) client.
pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends a request and collects the response, with a 10 s limit.
pub async fn send<C>(
    client: &Client<C, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> (Response<()>, Bytes)
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("response within 10 s")
        .expect("request succeeds");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body completes").to_bytes();
    (Response::from_parts(parts, ()), body)
}

/// Builds a request to `path` on `addr`.
pub fn request(
    method: Method,
    addr: SocketAddr,
    path: &str,
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(body.into()))
        .unwrap()
}

/// The body to send for a route: Rooms participant PATCHes need a role, or the body rule would
/// turn them into RemoveParticipants.
pub fn body_for(method: &Method, template: &str) -> Bytes {
    if method == Method::PATCH && template.ends_with("/participants") {
        Bytes::from_static(br#"{"participants":{"8:acs:x":{"role":"Presenter"}}}"#)
    } else if method == Method::POST || method == Method::PATCH || method == Method::PUT {
        Bytes::from_static(br#"{"k":"v"}"#)
    } else {
        Bytes::new()
    }
}

/// A path and query that reaches `route`: ids filled in, and the api-version that selects it.
pub fn route_path(route: &Route) -> String {
    let version = route
        .when_api_version
        .first()
        .or(route.api_versions.last())
        .cloned()
        .unwrap_or_default();
    format!("{}?api-version={version}", ids::fill(&route.template))
}

/// A request for a catalogue route on `addr`: [`route_path`] with [`body_for`].
pub fn route_request(route: &Route, addr: SocketAddr) -> Request<Full<Bytes>> {
    let body = body_for(&route.method, &route.template);
    request(route.method.clone(), addr, &route_path(route), body)
}

/// Scrapes `/metrics` from the admin address and parses it.
pub async fn scrape(admin: SocketAddr) -> Metrics {
    let (response, body) = send(&h1_client(), request(Method::GET, admin, "/metrics", "")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = String::from_utf8(body.to_vec()).expect("metrics are UTF-8");
    Metrics {
        samples: scrape::parse(&text).expect("metrics parse"),
        text,
    }
}

/// Scrapes `/metrics` like [`scrape`], or `None` when the admin port does not answer (it
/// closes at the end of a shutdown).
pub async fn try_scrape(admin: SocketAddr) -> Option<Metrics> {
    let response = h1_client()
        .request(request(Method::GET, admin, "/metrics", ""))
        .await
        .ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    let text = String::from_utf8(body.to_vec()).expect("metrics are UTF-8");
    Some(Metrics {
        samples: scrape::parse(&text).expect("metrics parse"),
        text,
    })
}

/// A parsed scrape.
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Metrics {
    /// Sum of every sample called `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// `acsgate_requests_total` summed by the value of `label`.
    pub fn requests_by(&self, label: &str) -> BTreeMap<String, f64> {
        let mut by = BTreeMap::new();
        for sample in self
            .samples
            .iter()
            .filter(|s| s.name == "acsgate_requests_total")
        {
            if let Some(value) = sample.labels.get(label) {
                *by.entry(value.clone()).or_default() += sample.value;
            }
        }
        by
    }
}

/// Polls `/metrics` until `ready` holds or 5 s pass; returns the last scrape.
pub async fn scrape_until(admin: SocketAddr, ready: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = scrape(admin).await;
        if ready(&metrics) || tokio::time::Instant::now() > deadline {
            return metrics;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// On one raw HTTP/1.1 connection to `addr`: POSTs `len` bytes to `path` while reading the
/// answer, then GETs `next`. Returns the two statuses. Panics if the upload is cut short (the
/// gateway closed or reset the connection) or either answer is missing after 10 s.
pub async fn upload_then_get(addr: SocketAddr, path: &str, len: usize, next: &str) -> (u16, u16) {
    use tokio::io::AsyncWriteExt;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: acs\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    );
    let upload = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 64 << 10];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            writer.write_all(&chunk[..n]).await?;
            left -= n;
        }
        Ok::<_, std::io::Error>(writer)
    });
    let within = Duration::from_secs(10);
    let first = tokio::time::timeout(within, read_response(&mut reader))
        .await
        .expect("the upload answered within 10 s");
    let mut writer = tokio::time::timeout(within, upload)
        .await
        .expect("the upload sent within 10 s")
        .unwrap()
        .expect("the whole upload is taken, with no reset");
    let get = format!("GET {next} HTTP/1.1\r\nHost: acs\r\n\r\n");
    writer.write_all(get.as_bytes()).await.unwrap();
    let second = tokio::time::timeout(within, read_response(&mut reader))
        .await
        .expect("the next request answered on the same connection within 10 s");
    (first, second)
}

/// Reads one HTTP/1.1 response framed by Content-Length; its status.
async fn read_response(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.expect("the response arrives");
        assert_eq!(n, 1, "connection closed inside a response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("a text head");
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .map_or(0, |v| v.parse().expect("a length"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.expect("the whole body");
    head[9..12].parse().expect("a status code")
}
