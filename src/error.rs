//! The bounded set of ways a proxied request can fail, and the answer the gateway gives for each.
//!
//! Every failure is classified into an [`ErrorKind`] so that the `kind` label of
//! `acsgate_upstream_errors_total` stays a small fixed set whatever the cause.

use std::error::Error as StdError;
use std::io;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

/// The error type bodies and services pass around when the cause can be anything.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Name of the response header that says why the gateway itself answered.
pub const ERROR_HEADER: &str = "x-acsgate-error";

/// Why a request did not get a complete answer from the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The upstream could not be reached: refused, unreachable, DNS failure.
    Connect,
    /// The TLS handshake with the upstream failed (certificate, protocol).
    Tls,
    /// Connecting, waiting for the response head, or waiting for body data took too long.
    Timeout,
    /// The upstream closed or reset the connection before the exchange ended.
    Reset,
    /// The upstream sent something that is not valid HTTP.
    Protocol,
    /// The request was for an unknown route and `bad_route = "reject"` is set.
    BadRoute,
    /// Too many requests in flight: the gateway sheds load instead of queueing.
    Overloaded,
    /// The drain deadline passed while the request was still in flight.
    Draining,
    /// The request URI is longer than the configured limit.
    UriTooLong,
    /// The client sent its request body too slowly (deadline or minimum rate).
    ClientTimeout,
    /// The client went away before the response was complete (recorded as status 499).
    ClientAbort,
    /// The request is well-formed HTTP the gateway will not forward (asterisk-form target,
    /// a body framed as chunked twice).
    BadRequest,
    /// `CONNECT`: the gateway is not a tunnel.
    MethodNotAllowed,
    /// An HMAC-signed request whose caller signature is missing or wrong (answered 401).
    Auth,
    /// A signed request body larger than `max_signed_body` (answered 413).
    TooLarge,
    /// A bug in the gateway (a panic while handling the request).
    Internal,
    /// The upstream failed to connect too many times in a row: the circuit breaker answers
    /// 503 at once, without dialling, until its cooldown ends.
    CircuitOpen,
}

/// A response body that can also carry one of the gateway's own answers
/// ([`ErrorKind::response`]).
///
/// The layers between the forwarder and the listener that may answer by themselves (breaker,
/// signing, admission) answer in the body type of the responses they pass on, rather than each
/// wrapping it in one more `Either`: a passing response keeps its type and is not moved into a
/// new one at every layer, and its frames go through one `Either`, not three.
pub trait AnswerBody {
    /// The gateway's own answer as this body.
    fn answer(body: Full<Bytes>) -> Self;
}

impl AnswerBody for Full<Bytes> {
    fn answer(body: Full<Bytes>) -> Self {
        body
    }
}

impl<L> AnswerBody for Either<L, Full<Bytes>> {
    fn answer(body: Full<Bytes>) -> Self {
        Either::Right(body)
    }
}

impl ErrorKind {
    /// Every kind, in label order.
    pub const ALL: [ErrorKind; 17] = [
        ErrorKind::Connect,
        ErrorKind::Tls,
        ErrorKind::Timeout,
        ErrorKind::Reset,
        ErrorKind::Protocol,
        ErrorKind::BadRoute,
        ErrorKind::Overloaded,
        ErrorKind::Draining,
        ErrorKind::UriTooLong,
        ErrorKind::ClientTimeout,
        ErrorKind::ClientAbort,
        ErrorKind::BadRequest,
        ErrorKind::MethodNotAllowed,
        ErrorKind::Auth,
        ErrorKind::TooLarge,
        ErrorKind::Internal,
        ErrorKind::CircuitOpen,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Protocol => "protocol",
            ErrorKind::BadRoute => "bad_route",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Draining => "draining",
            ErrorKind::UriTooLong => "uri_too_long",
            ErrorKind::ClientTimeout => "client_timeout",
            ErrorKind::ClientAbort => "client_abort",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::Auth => "auth",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Internal => "internal",
            ErrorKind::CircuitOpen => "circuit_open",
        }
    }

    /// Position in [`ErrorKind::ALL`], for per-kind handle arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The status the gateway answers with when it must answer itself.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::BadRoute => StatusCode::NOT_FOUND,
            ErrorKind::Overloaded | ErrorKind::Draining | ErrorKind::CircuitOpen => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorKind::UriTooLong => StatusCode::URI_TOO_LONG,
            ErrorKind::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::ClientAbort => StatusCode::from_u16(499).expect("499 is a valid status"),
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Auth => StatusCode::UNAUTHORIZED,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Connect | ErrorKind::Tls | ErrorKind::Reset | ErrorKind::Protocol => {
                StatusCode::BAD_GATEWAY
            }
        }
    }

    /// Whether the upstream failed (counted in `acsgate_upstream_errors_total`), as opposed
    /// to the gateway refusing or cutting short the request itself
    /// (`acsgate_gateway_errors_total`).
    pub fn is_upstream(self) -> bool {
        matches!(
            self,
            ErrorKind::Connect
                | ErrorKind::Tls
                | ErrorKind::Timeout
                | ErrorKind::Reset
                | ErrorKind::Protocol
        )
    }

    /// Classifies an error from the upstream client or an upstream body by walking its
    /// `source()` chain: the outermost wrapper rarely says what went wrong.
    pub fn classify(err: &(dyn StdError + 'static)) -> ErrorKind {
        let mut connect = false;
        let mut current: Option<&(dyn StdError + 'static)> = Some(err);
        while let Some(e) = current {
            if e.is::<DrainingError>() {
                return ErrorKind::Draining;
            }
            if e.is::<crate::body_rate::BodyTooSlowError>() {
                return ErrorKind::ClientTimeout;
            }
            if e.is::<rustls::Error>() {
                return ErrorKind::Tls;
            }
            if e.is::<crate::proxy::idle::BodyIdleError>() || e.is::<tokio::time::error::Elapsed>()
            {
                return ErrorKind::Timeout;
            }
            if let Some(legacy) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
                connect |= legacy.is_connect();
            }
            if let Some(io) = e.downcast_ref::<io::Error>() {
                match io.kind() {
                    io::ErrorKind::TimedOut => return ErrorKind::Timeout,
                    io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
                        if !connect =>
                    {
                        return ErrorKind::Reset;
                    }
                    _ => {}
                }
            }
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                // The client's own request body failed while being sent upstream: the client
                // went away or was too slow; the upstream did nothing wrong.
                if h.is_user() && h.source().is_some() {
                    return ErrorKind::classify_request_body(h);
                }
                if h.is_timeout() {
                    return ErrorKind::Timeout;
                }
                if h.is_parse() || h.is_parse_status() {
                    return ErrorKind::Protocol;
                }
                if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                    return ErrorKind::Reset;
                }
            }
            // io::Error's `source()` skips the error it wraps (hyper-rustls wraps the
            // rustls::Error of a failed handshake in two of them), so descend by hand.
            current = match e.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
                Some(inner) => Some(inner as &(dyn StdError + 'static)),
                None => e.source(),
            };
        }
        if connect {
            ErrorKind::Connect
        } else {
            ErrorKind::Reset
        }
    }

    /// Classifies the failure of a request body being streamed upstream.
    fn classify_request_body(err: &(dyn StdError + 'static)) -> ErrorKind {
        let mut current = Some(err);
        while let Some(e) = current {
            if e.is::<crate::body_rate::BodyTooSlowError>() {
                return ErrorKind::ClientTimeout;
            }
            current = e.source();
        }
        ErrorKind::ClientAbort
    }

    /// The response the gateway sends when it answers for the upstream. The body is
    /// generic on purpose: no upstream address, header or secret is ever echoed.
    pub fn response(self) -> Response<Full<Bytes>> {
        let status = self.status();
        let text = match self {
            ErrorKind::Connect => "acsgate: upstream unreachable\n",
            ErrorKind::Tls => "acsgate: upstream TLS handshake failed\n",
            ErrorKind::Timeout => "acsgate: upstream timed out\n",
            ErrorKind::Reset => "acsgate: upstream closed the connection\n",
            ErrorKind::Protocol => "acsgate: upstream sent an invalid response\n",
            ErrorKind::BadRoute => "acsgate: unknown ACS operation\n",
            ErrorKind::Overloaded => "acsgate: too many requests in flight, retry later\n",
            ErrorKind::Draining => "acsgate: shutting down\n",
            ErrorKind::UriTooLong => "acsgate: request URI too long\n",
            ErrorKind::ClientTimeout => "acsgate: request body too slow\n",
            ErrorKind::ClientAbort => "acsgate: client closed the request\n",
            ErrorKind::BadRequest => "acsgate: bad request\n",
            ErrorKind::MethodNotAllowed => "acsgate: CONNECT is not supported\n",
            ErrorKind::Auth => "acsgate: caller signature missing or invalid\n",
            ErrorKind::TooLarge => "acsgate: signed request body too large\n",
            ErrorKind::Internal => "acsgate: internal error\n",
            ErrorKind::CircuitOpen => "acsgate: upstream unreachable, failing fast\n",
        };
        let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(ERROR_HEADER, HeaderValue::from_static(self.as_str()));
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self.closes_connection() {
            // HTTP/1: what follows on the connection cannot be trusted (an ambiguous body
            // framing, tunnel bytes after CONNECT, an unread body). hyper drops this header
            // on HTTP/2, where streams are framed independently.
            headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        response.extensions_mut().insert(self);
        response
    }

    /// Whether the gateway closes an HTTP/1 connection after answering with this kind.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorKind::BadRequest | ErrorKind::MethodNotAllowed | ErrorKind::ClientTimeout
        )
    }
}

/// The error a response body ends with when the drain deadline cuts it short.
#[derive(Debug, thiserror::Error)]
#[error("the gateway is shutting down and the drain deadline passed")]
pub struct DrainingError;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_gateway_statuses() {
        assert_eq!(ErrorKind::Connect.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(ErrorKind::Tls.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(ErrorKind::Timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(ErrorKind::BadRoute.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn index_matches_position_in_all() {
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }

    #[test]
    fn classify_walks_the_source_chain() {
        // As hyper-rustls reports a failed handshake: io::Error inside io::Error.
        let tls = io::Error::other(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        assert_eq!(ErrorKind::classify(&tls), ErrorKind::Tls);
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(ErrorKind::classify(&reset), ErrorKind::Reset);
        let timed_out = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(ErrorKind::classify(&timed_out), ErrorKind::Timeout);
    }

    #[test]
    fn gateway_response_names_the_kind_and_leaks_nothing() {
        let response = ErrorKind::Timeout.response();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(response.headers()[ERROR_HEADER], "timeout");
        assert_eq!(
            response.extensions().get::<ErrorKind>(),
            Some(&ErrorKind::Timeout)
        );
    }
}
