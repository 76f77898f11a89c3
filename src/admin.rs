//! The admin listener's service: `/metrics`, `/healthz`, `/readyz`. Read-only, and on its own
//! port, so the proxy port never serves metrics and the admin port never reaches ACS.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;

use crate::metrics::Metrics;

/// The exposition format's content type (text format 0.0.4, UTF-8).
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// State the admin endpoints report on.
#[derive(Clone)]
pub struct Admin {
    metrics: Metrics,
    ready: Arc<AtomicBool>,
}

impl Admin {
    /// Serves `metrics`; `/readyz` answers 200 while `ready` is true.
    pub fn new(metrics: Metrics, ready: Arc<AtomicBool>) -> Self {
        Admin { metrics, ready }
    }

    /// Answers one admin request.
    pub fn respond<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n");
        }
        match request.uri().path() {
            "/metrics" => match self.metrics.encode() {
                Ok(body) => {
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(METRICS_CONTENT_TYPE),
                    );
                    response
                }
                Err(error) => {
                    tracing::error!(%error, "encoding metrics failed");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "metrics encoding failed\n",
                    )
                }
            },
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz or /readyz\n",
            ),
        }
    }
}

impl<B> tower::Service<Request<B>> for Admin {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        std::future::ready(Ok(self.respond(&request)))
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::DEFAULT_BUCKETS;

    fn admin(ready: bool) -> Admin {
        let metrics = Metrics::new(DEFAULT_BUCKETS.to_vec()).unwrap();
        Admin::new(metrics, Arc::new(AtomicBool::new(ready)))
    }

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[test]
    fn metrics_use_the_prometheus_text_content_type() {
        let response = admin(true).respond(&get("/metrics"));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
    }

    #[test]
    fn readiness_follows_the_flag() {
        assert_eq!(
            admin(true).respond(&get("/readyz")).status(),
            StatusCode::OK
        );
        assert_eq!(
            admin(false).respond(&get("/readyz")).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            admin(false).respond(&get("/healthz")).status(),
            StatusCode::OK
        );
    }

    #[test]
    fn read_only() {
        let post = Request::post("/metrics").body(()).unwrap();
        assert_eq!(
            admin(true).respond(&post).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            admin(true).respond(&get("/chat/threads")).status(),
            StatusCode::NOT_FOUND
        );
    }
}
