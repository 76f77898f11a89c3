//! [`Forward`]: the innermost service, which sends each request to the upstream ACS endpoint
//! and streams the answer back.
//!
//! What it does to a request: drops hop-by-hop headers and headers with `_` in their name,
//! points the URI at the upstream (only
//! the client's path and query are kept, so neither `Host` nor an absolute-form URI can steer
//! it elsewhere), sets `Host` to the upstream authority, adds `X-Forwarded-*`,
//! and passes everything else (`Authorization`, `x-ms-*`, `traceparent`…) untouched. The body
//! is streamed, never collected.
//!
//! What it does to a response: drops hop-by-hop headers, points `Location` and
//! `Operation-Location` URLs that name the upstream back at the gateway (see [`location`]), and limits how long the body may go
//! without data. When the upstream cannot answer, the gateway does: 502 (unreachable, TLS,
//! reset, invalid response) or 504 (timeout), with an `x-acsgate-error` header and the
//! [`ErrorKind`] in the response extensions for the record layer. With
//! `bad_route = "reject"`, unknown operations get 404 without reaching the upstream.

pub mod client;
mod deadline;
pub mod headers;
pub mod idle;
pub mod location;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body::Body;
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use tower::Service;

use crate::catalogue::{Catalogue, Classification};
use crate::error::{AnswerBody, ErrorKind};
use crate::head_timeout;
use client::{Target, UpstreamBody, UpstreamClient};
use deadline::ResponseDeadline;
use headers::Names;
use idle::IdleTimeoutBody;
use location::ClientOrigin;

/// The body of every response the gateway sends: the upstream's, or the gateway's own. `B` is
/// the request body type, as an upstream HTTP/1.1 body drives the connection it arrives on.
pub type ProxyBody<B> = Either<IdleTimeoutBody<UpstreamBody<B>>, Full<Bytes>>;

/// Where requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// `https` (or `http` for a loopback upstream).
    pub scheme: Scheme,
    /// Host and port of the ACS endpoint.
    pub authority: Authority,
}

/// What to do with requests the catalogue does not know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BadRoutePolicy {
    /// Forward them and let the upstream answer (new ACS routes keep working).
    #[default]
    Forward,
    /// Answer 404 at the gateway.
    Reject,
}

/// Timeouts applied to each forwarded request.
#[derive(Clone, Copy, Debug)]
pub struct ForwardTimeouts {
    /// From sending the request to receiving the response head (includes connect and TLS).
    pub response: Duration,
    /// Longest wait for the next piece of the response body.
    pub body_idle: Duration,
}

/// The client at the other end of one proxy connection, with its `X-Forwarded-For` entry
/// made once for the connection rather than once per request.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The client's socket address.
    pub addr: SocketAddr,
    forwarded_for: HeaderValue,
}

impl Peer {
    /// The client at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Peer {
            addr,
            forwarded_for: headers::peer_ip(addr),
        }
    }
}

/// Service that forwards a request upstream; see the [module docs](self).
pub struct Forward<B> {
    client: UpstreamClient<B>,
    shared: Arc<ForwardShared>,
    /// The client's `X-Forwarded-For` entry, made once per connection.
    peer_ip: Option<HeaderValue>,
}

struct ForwardShared {
    upstream: Upstream,
    target: Arc<Target>,
    timeouts: ForwardTimeouts,
    http1_woken_every: Option<Duration>,
    bad_route: BadRoutePolicy,
    catalogue: Arc<Catalogue>,
    inbound_proto: &'static str,
}

impl<B> Clone for Forward<B> {
    fn clone(&self) -> Self {
        Forward {
            client: self.client.clone(),
            shared: Arc::clone(&self.shared),
            peer_ip: self.peer_ip.clone(),
        }
    }
}

impl<B> Forward<B> {
    /// A forwarder to `upstream` through `client`. `http1_woken_every` is how often at most
    /// the listener wakes an HTTP/1 connection's task while a request is in flight (the
    /// connection guard's header-read timeout), if it does: such requests then arm their
    /// response-head timer only when the deadline is nearer than that (see the `deadline`
    /// module).
    pub fn new(
        client: UpstreamClient<B>,
        upstream: Upstream,
        timeouts: ForwardTimeouts,
        http1_woken_every: Option<Duration>,
        bad_route: BadRoutePolicy,
        catalogue: Arc<Catalogue>,
        inbound_proto: &'static str,
    ) -> Self {
        Forward {
            client,
            shared: Arc::new(ForwardShared {
                target: Arc::new(Target::new(
                    upstream.scheme.clone(),
                    upstream.authority.clone(),
                )),
                upstream,
                timeouts,
                http1_woken_every,
                bad_route,
                catalogue,
                inbound_proto,
            }),
            peer_ip: None,
        }
    }

    /// The same forwarder for requests from `peer` (for `X-Forwarded-For`).
    pub fn for_peer(&self, peer: &Peer) -> Self {
        Forward {
            peer_ip: Some(peer.forwarded_for.clone()),
            ..self.clone()
        }
    }

    fn is_rejected_bad_route(&self, request: &Request<B>) -> bool {
        let shared = &self.shared;
        shared.bad_route == BadRoutePolicy::Reject
            && request
                .extensions()
                .get::<Classification>()
                .is_some_and(|c| {
                    let operation = shared.catalogue.operation(c.operation);
                    shared.catalogue.api(operation.api).bad_route == c.operation
                })
    }
}

impl<B> Service<Request<B>> for Forward<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<ProxyBody<B>>;
    type Error = Infallible;
    type Future = ForwardFuture<B>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The pool connects when it has no idle connection; it is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> ForwardFuture<B> {
        if self.is_rejected_bad_route(&request) {
            return ForwardFuture::gateway(ErrorKind::BadRoute);
        }
        let shared = &self.shared;
        // Before the version is rewritten below: an HTTP/1 request is polled by its
        // connection's task, which the listener wakes while the request is in flight.
        let woken_every = shared
            .http1_woken_every
            .filter(|_| head_timeout::polled_by_connection(request.version()));
        // Changed in place: taking the request apart and putting it together again moved it
        // twice (callgrind: a `memcpy` of its parts each time).
        let client_uri = std::mem::take(request.uri_mut());
        let headers = request.headers_mut();
        let names = Names::of(headers);
        headers::remove_hop_by_hop(headers, names);
        headers::remove_underscored(headers, names);
        let client_host = headers::replace_host(headers, &client_uri, shared.target.host());
        let origin = client_host.clone().map(|host| ClientOrigin {
            scheme: shared.inbound_proto,
            host,
        });
        headers::add_forwarded(
            headers,
            names,
            self.peer_ip.as_ref(),
            shared.inbound_proto,
            client_host,
        );
        // Only the client's path and query go on: the client aims them at the upstream.
        *request.uri_mut() = Uri::from(
            client_uri
                .into_parts()
                .path_and_query
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        // The pooled connection decides h1 or h2; an h2 client's request goes out as either.
        *request.version_mut() = Version::HTTP_11;
        // Extensions are this gateway's bookkeeping, not the upstream's business.
        request.extensions_mut().clear();
        let response = self.client.request(request, &shared.target);
        ForwardFuture {
            state: ForwardState::Upstream {
                response,
                deadline: ResponseDeadline::after(shared.timeouts.response, woken_every),
                body_idle: shared.timeouts.body_idle,
                origin,
                shared: Arc::clone(shared),
            },
        }
    }
}

pin_project! {
    /// Response future of [`Forward`].
    pub struct ForwardFuture<B> {
        #[pin]
        state: ForwardState<B>,
    }
}

pin_project! {
    #[project = ForwardStateProj]
    enum ForwardState<B> {
        // The gateway answers itself: only the kind is kept until then, which keeps this
        // future (moved into every layer's future outside) small.
        Gateway { kind: Option<ErrorKind> },
        // Waiting for the upstream's response head, within the response timeout.
        Upstream {
            response: client::ResponseFuture<B>,
            deadline: ResponseDeadline,
            body_idle: Duration,
            origin: Option<ClientOrigin>,
            shared: Arc<ForwardShared>,
        },
    }
}

impl<B> ForwardFuture<B> {
    fn gateway(kind: ErrorKind) -> Self {
        ForwardFuture {
            state: ForwardState::Gateway { kind: Some(kind) },
        }
    }
}

impl<B> Future for ForwardFuture<B> {
    type Output = Result<Response<ProxyBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            ForwardStateProj::Gateway { kind } => {
                let kind = kind.take().expect("polled after completion");
                Poll::Ready(Ok(kind.response().map(ProxyBody::<B>::answer)))
            }
            ForwardStateProj::Upstream {
                response,
                deadline,
                body_idle,
                origin,
                shared,
            } => {
                let response = match response.as_mut().poll(cx) {
                    Poll::Ready(Ok(response)) => response,
                    Poll::Ready(Err(error)) => {
                        let kind = error.kind();
                        tracing::debug!(kind = kind.as_str(), error = %error, "upstream request failed");
                        return Poll::Ready(Ok(kind.response().map(ProxyBody::<B>::answer)));
                    }
                    Poll::Pending => {
                        ready!(deadline.poll_passed(cx));
                        tracing::debug!("upstream response head timed out");
                        return Poll::Ready(Ok(ErrorKind::Timeout
                            .response()
                            .map(ProxyBody::<B>::answer)));
                    }
                };
                let (mut parts, body) = response.into_parts();
                let names = Names::of(&parts.headers);
                headers::remove_hop_by_hop(&mut parts.headers, names);
                if let Some(origin) = origin.as_ref().filter(|_| names.location) {
                    location::rewrite(&mut parts.headers, &shared.upstream, origin);
                }
                let body = Either::Left(IdleTimeoutBody::new(*body_idle, body));
                Poll::Ready(Ok(Response::from_parts(parts, body)))
            }
        }
    }
}
