//! Access-key (HMAC) authentication through the gateway, so ACS SDKs work with only the
//! endpoint of their connection string changed.
//!
//! The SDK signs each request for the gateway's address with a *local* key; ACS checks the
//! signature against its own host and the resource key. [`SignLayer`] bridges the two.
//!
//! What it does to a request carrying `Authorization: HMAC-SHA256 …`:
//! 1. buffers the body, up to `max_signed_body` (larger: 413 at the gateway, nothing forwarded);
//! 2. unless `caller_auth = "none"`, verifies the caller's signature with the caller key: the
//!    body hash, a ±15 min window on `x-ms-date`, and the signature over the host the caller
//!    addressed (any failure: 401 at the gateway, nothing forwarded);
//! 3. re-signs it for the upstream host with the resource key (fresh `x-ms-date`, same hash).
//!
//! Every other request (`Bearer` tokens, no `Authorization`) passes through untouched, its body
//! streamed. The response is the inner service's, or the gateway's own 400/401/413 carrying an
//! [`ErrorKind`] for the record layer. With no keys configured at all, signed requests pass
//! through unchanged too (the state before this layer existed; a warning says so at start-up).

pub mod hmac;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use bytes::Bytes;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response};
use http_body::Body;
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::config::ConfigError;
use crate::error::{AnswerBody, BoxError, ErrorKind};
use crate::proxy::{Upstream, headers};
use hmac::{AccessKey, Target};

/// Environment variable holding the resource's access key (base64, as in the connection string).
pub const UPSTREAM_KEY_ENV: &str = "ACSGATE_UPSTREAM_ACCESS_KEY";
/// Environment variable holding the callers' local access key.
pub const CALLER_KEY_ENV: &str = "ACSGATE_CALLER_ACCESS_KEY";
/// Default limit on a signed request body: ACS bodies are small JSON.
pub const DEFAULT_MAX_SIGNED_BODY: u64 = 8 * 1024 * 1024;

/// Whether callers must sign their requests with the local key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CallerAuth {
    /// Verify the caller's HMAC signature with the caller key.
    #[default]
    Hmac,
    /// Re-sign without verifying; allowed only on a loopback proxy listener.
    None,
}

/// A secret as read from the environment. Its `Debug` output never shows it.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// Reads the environment variable `name`, if set.
    pub fn from_env(name: &str) -> Option<Secret> {
        std::env::var(name).ok().map(Secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where one key may come from: its environment variable or a file. Neither is a
/// command-line argument, so a key never shows in `ps`.
#[derive(Clone, Copy, Debug)]
pub struct KeySource<'a> {
    /// Config key of the file setting, for error messages.
    pub file_key: &'static str,
    /// The environment variable's value.
    pub value: Option<&'a Secret>,
    /// The file setting.
    pub file: Option<&'a Path>,
}

impl KeySource<'_> {
    fn load(self) -> Result<Option<AccessKey>, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            key: self.file_key,
            message,
        };
        let text = match (self.value, self.file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "the key is given both in the environment and as a file; keep one".into(),
                ));
            }
            (Some(secret), None) => secret.0.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?,
            (None, None) => return Ok(None),
        };
        // The message names the source, never the content.
        AccessKey::from_base64(&text)
            .map(Some)
            .map_err(|e| invalid(e.to_string()))
    }
}

/// Validated access-key settings.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// `None`: no keys configured, signed requests pass through unchanged.
    pub resign: Option<Resign>,
    /// Largest signed request body the gateway buffers, in bytes.
    pub max_signed_body: u64,
}

/// Keys for verifying callers and re-signing for the upstream.
#[derive(Clone, Debug)]
pub struct Resign {
    /// The resource's access key.
    pub upstream_key: AccessKey,
    /// The callers' local key; `None` with `caller_auth = "none"`.
    pub caller_key: Option<AccessKey>,
}

impl AuthConfig {
    /// Loads the keys and checks they fit `caller_auth` and the proxy listener `listen`.
    pub fn load(
        upstream: KeySource<'_>,
        caller: KeySource<'_>,
        caller_auth: CallerAuth,
        listen: SocketAddr,
        max_signed_body: Option<u64>,
    ) -> Result<AuthConfig, ConfigError> {
        let invalid = |key, message: &str| ConfigError::Invalid {
            key,
            message: message.to_owned(),
        };
        let max_signed_body = max_signed_body.unwrap_or(DEFAULT_MAX_SIGNED_BODY);
        if max_signed_body == 0 {
            return Err(invalid("max_signed_body", "must be at least one byte"));
        }
        if caller_auth == CallerAuth::None && !listen.ip().is_loopback() {
            return Err(invalid(
                "caller_auth",
                "\"none\" is allowed only with a loopback proxy listener: anyone who can reach \
                 the port could use the resource key",
            ));
        }
        let upstream_key = upstream.load()?;
        let caller_key = caller.load()?;
        let resign = match (upstream_key, caller_key, caller_auth) {
            (None, None, _) => None,
            (None, Some(_), _) => {
                return Err(invalid(
                    upstream.file_key,
                    "a caller key is set but no upstream key: set ACSGATE_UPSTREAM_ACCESS_KEY \
                     or upstream_access_key_file to re-sign for ACS",
                ));
            }
            (Some(_), None, CallerAuth::Hmac) => {
                return Err(invalid(
                    caller.file_key,
                    "no caller key: set ACSGATE_CALLER_ACCESS_KEY or caller_access_key_file \
                     (the accesskey your apps put in their connection string), or \
                     caller_auth = \"none\" on a loopback listener",
                ));
            }
            (Some(upstream_key), caller_key, CallerAuth::Hmac) => Some(Resign {
                upstream_key,
                caller_key,
            }),
            (Some(upstream_key), _, CallerAuth::None) => Some(Resign {
                upstream_key,
                caller_key: None,
            }),
        };
        Ok(AuthConfig {
            resign,
            max_signed_body,
        })
    }
}

/// The `Host` a client sends to `upstream`: the port only when it is not the scheme's default,
/// as hyper's client writes it.
fn upstream_host(upstream: &Upstream) -> String {
    let default = if upstream.scheme == http::uri::Scheme::HTTPS {
        443
    } else {
        80
    };
    match upstream.authority.port_u16() {
        Some(port) if port != default => format!("{}:{port}", upstream.authority.host()),
        _ => upstream.authority.host().to_owned(),
    }
}

// === Sign ===

/// The request body [`Sign`] hands on: the caller's, streamed, or the buffered signed one.
pub type SignedBody<B> = Either<B, Full<Bytes>>;

/// Layer that applies [`Sign`].
#[derive(Clone)]
pub struct SignLayer {
    shared: Option<Arc<Shared>>,
}

struct Shared {
    resign: Resign,
    max_signed_body: u64,
    upstream_host: String,
}

impl SignLayer {
    /// Verifies and re-signs for `upstream` as `config` says.
    pub fn new(config: &AuthConfig, upstream: &Upstream) -> Self {
        SignLayer {
            shared: config.resign.clone().map(|resign| {
                Arc::new(Shared {
                    resign,
                    max_signed_body: config.max_signed_body,
                    upstream_host: upstream_host(upstream),
                })
            }),
        }
    }
}

impl<S> Layer<S> for SignLayer {
    type Service = Sign<S>;

    fn layer(&self, inner: S) -> Sign<S> {
        Sign {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Service that verifies and re-signs HMAC-signed requests; see the [module docs](self).
#[derive(Clone)]
pub struct Sign<S> {
    inner: S,
    shared: Option<Arc<Shared>>,
}

impl<S, B, ResBody> Service<Request<B>> for Sign<S>
where
    S: Service<Request<SignedBody<B>>, Response = Response<ResBody>, Error = Infallible> + Clone,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    ResBody: AnswerBody,
{
    type Response = Response<ResBody>;
    type Error = Infallible;
    type Future = SignFuture<S, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let shared = match &self.shared {
            Some(shared) if hmac::is_signed(request.headers()) => Arc::clone(shared),
            _ => {
                return SignFuture {
                    state: SignState::Calling {
                        inner: self.inner.call(request.map(Either::Left)),
                    },
                };
            }
        };
        let (parts, body) = request.into_parts();
        if declared_length(&parts.headers).is_some_and(|length| length > shared.max_signed_body) {
            return SignFuture {
                state: SignState::answered(ErrorKind::TooLarge),
            };
        }
        // The ready service is the one `poll_ready` was called on; leave a fresh clone behind.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let limit = usize::try_from(shared.max_signed_body).unwrap_or(usize::MAX);
        SignFuture {
            state: SignState::Reading {
                body: Box::pin(Limited::new(body, limit).collect()),
                waiting: Some(Box::new((parts, inner, shared))),
            },
        }
    }
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Verifies the caller's signature over the request and `body` (when a caller key is set),
/// then signs the request for the upstream.
fn resign(shared: &Shared, parts: &mut Parts, body: &[u8]) -> Result<(), hmac::Rejection> {
    let hash = hmac::content_hash(body);
    let path_and_query = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let now = SystemTime::now();
    if let Some(caller_key) = &shared.resign.caller_key {
        let host = headers::client_host(&parts.headers, &parts.uri);
        let host = host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .ok_or(hmac::Rejection::Malformed)?;
        let target = Target {
            method: &parts.method,
            path_and_query,
            host,
        };
        hmac::verify(caller_key, target, &parts.headers, &hash, now)?;
    }
    let target = Target {
        method: &parts.method,
        path_and_query,
        host: &shared.upstream_host,
    };
    hmac::sign(
        &shared.resign.upstream_key,
        target,
        &mut parts.headers,
        &hash,
        now,
    );
    Ok(())
}

pin_project! {
    /// Response future of [`Sign`].
    pub struct SignFuture<S, B>
    where
        S: Service<Request<SignedBody<B>>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        #[pin]
        state: SignState<S, B>,
    }
}

pin_project! {
    #[project = SignStateProj]
    enum SignState<S, B>
    where
        S: Service<Request<SignedBody<B>>>,
        B: Body,
        B::Error: Into<BoxError>,
    {
        // Buffering a signed body; then verify, re-sign and call `inner`. Boxed: inline, this
        // rare state would make the future of every request (signed or not) hundreds of bytes
        // larger, and each layer outside moves that future into its own.
        Reading {
            body: Pin<Box<Collect<Limited<B>>>>,
            waiting: Option<Box<(Parts, S, Arc<Shared>)>>,
        },
        // The inner service's future: unsigned requests go straight here.
        Calling { #[pin] inner: S::Future },
        // The gateway answers itself (401, 413, 400).
        Answered { kind: Option<ErrorKind> },
    }
}

impl<S, B> SignState<S, B>
where
    S: Service<Request<SignedBody<B>>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    fn answered(kind: ErrorKind) -> Self {
        SignState::Answered { kind: Some(kind) }
    }
}

impl<S, B, ResBody> Future for SignFuture<S, B>
where
    S: Service<Request<SignedBody<B>>, Response = Response<ResBody>, Error = Infallible>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    ResBody: AnswerBody,
{
    type Output = Result<Response<ResBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut state = self.as_mut().project().state;
            let next = match state.as_mut().project() {
                SignStateProj::Calling { inner } => {
                    let Ok(response) = ready!(inner.poll(cx));
                    return Poll::Ready(Ok(response));
                }
                SignStateProj::Answered { kind } => {
                    let kind = kind.take().expect("polled after completion");
                    return Poll::Ready(Ok(kind.response().map(ResBody::answer)));
                }
                SignStateProj::Reading { body, waiting } => {
                    let collected = ready!(body.as_mut().poll(cx));
                    let (mut parts, mut inner, shared) =
                        *waiting.take().expect("polled after completion");
                    match collected {
                        Err(error) if error.is::<LengthLimitError>() => {
                            SignState::answered(ErrorKind::TooLarge)
                        }
                        Err(_) => SignState::answered(ErrorKind::BadRequest),
                        Ok(collected) => {
                            let body = collected.to_bytes();
                            match resign(&shared, &mut parts, &body) {
                                Ok(()) => SignState::Calling {
                                    inner: inner.call(Request::from_parts(
                                        parts,
                                        Either::Right(Full::new(body)),
                                    )),
                                },
                                Err(rejection) => {
                                    tracing::debug!(
                                        reason = rejection.as_str(),
                                        "caller signature refused"
                                    );
                                    SignState::answered(ErrorKind::Auth)
                                }
                            }
                        }
                    }
                }
            };
            state.set(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHM=";

    fn source<'a>(file_key: &'static str, value: Option<&'a Secret>) -> KeySource<'a> {
        KeySource {
            file_key,
            value,
            file: None,
        }
    }

    #[test]
    fn key_combinations() {
        let key = Secret::new(KEY.into());
        let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let open: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let load = |up, caller, auth, listen| {
            AuthConfig::load(
                source("upstream_access_key_file", up),
                source("caller_access_key_file", caller),
                auth,
                listen,
                None,
            )
        };
        let none = load(None, None, CallerAuth::Hmac, open).unwrap();
        assert!(none.resign.is_none());
        assert_eq!(none.max_signed_body, DEFAULT_MAX_SIGNED_BODY);
        let both = load(Some(&key), Some(&key), CallerAuth::Hmac, open).unwrap();
        assert!(both.resign.unwrap().caller_key.is_some());
        let err = load(Some(&key), None, CallerAuth::Hmac, loopback).unwrap_err();
        assert!(err.to_string().contains("caller_access_key_file"), "{err}");
        let err = load(None, Some(&key), CallerAuth::Hmac, loopback).unwrap_err();
        assert!(
            err.to_string().contains("upstream_access_key_file"),
            "{err}"
        );
        let local = load(Some(&key), None, CallerAuth::None, loopback).unwrap();
        assert!(local.resign.unwrap().caller_key.is_none());
        let err = load(Some(&key), None, CallerAuth::None, open).unwrap_err();
        assert!(err.to_string().contains("caller_auth"), "{err}");
    }

    #[test]
    fn bad_keys_are_named_never_shown() {
        let bad = Secret::new("CANARY-not-base64!".into());
        let err = AuthConfig::load(
            source("upstream_access_key_file", Some(&bad)),
            source("caller_access_key_file", None),
            CallerAuth::None,
            "127.0.0.1:0".parse().unwrap(),
            None,
        )
        .unwrap_err();
        let text = format!("{err} {err:?} {bad:?}");
        assert!(!text.contains("CANARY"), "{text}");
        assert!(text.contains("upstream_access_key_file"), "{text}");
    }

    #[test]
    fn upstream_host_omits_the_default_port() {
        let parse = |s| crate::config::parse_upstream(s).unwrap();
        assert_eq!(
            upstream_host(&parse("https://a.communication.azure.com")),
            "a.communication.azure.com"
        );
        assert_eq!(upstream_host(&parse("https://a.example:443")), "a.example");
        assert_eq!(
            upstream_host(&parse("https://a.example:8443")),
            "a.example:8443"
        );
        assert_eq!(
            upstream_host(&parse("http://127.0.0.1:9000")),
            "127.0.0.1:9000"
        );
    }
}
