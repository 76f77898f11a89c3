//! Header rules for a forwarding proxy (RFC 9110 §7.6.1, RFC 7239's de-facto `X-Forwarded-*`).

use std::net::SocketAddr;

use http::Uri;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Whether a header is hop-by-hop by its (lower-case) name alone, whatever `Connection`
/// lists: RFC 9110's fixed set, the de-facto `Keep-Alive`, and every `Proxy-*` header.
fn is_hop_by_hop(name: &str) -> bool {
    // A string match, not a HeaderName comparison per entry of a table: it runs for every
    // header of every request and response.
    matches!(
        name,
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || name.starts_with("proxy-")
}

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The authority the client addressed: `Host` (HTTP/1.1), else the URI's (`:authority` of
/// HTTP/2, or an absolute-form request line).
pub fn client_host(headers: &HeaderMap, uri: &Uri) -> Option<HeaderValue> {
    headers.get(header::HOST).cloned().or_else(|| {
        let authority = uri.authority()?;
        HeaderValue::from_str(authority.as_str()).ok()
    })
}

/// Removes hop-by-hop headers: the fixed set, any `Proxy-*` header, and every header named
/// in `Connection`. End-to-end headers (`Authorization`, `x-ms-*`, `traceparent`…) stay.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests have none: one pass over the names, nothing hashed. Connection is itself
    // hop-by-hop, so a message without it lists nothing either.
    if !headers.keys().any(|name| is_hop_by_hop(name.as_str())) {
        return;
    }
    // Names listed in Connection are hop-by-hop too; collect them before Connection goes.
    // Upstream responses nearly all say `Connection: keep-alive`, which names a header the
    // fixed set removes anyway, so the list stays empty and unallocated.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.eq_ignore_ascii_case("keep-alive"))
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    remove_where(headers, is_hop_by_hop);
}

/// Removes headers whose names contain `_`. Many servers (CGI, nginx by default) fold `_`
/// into `-`, so `x_ms_date` next to `x-ms-date` could let a client smuggle a second value past
/// whatever checks the dashed one; no ACS header has an underscore.
pub fn remove_underscored(headers: &mut HeaderMap) {
    remove_where(headers, |name| name.contains('_'));
}

/// Removes every header whose (lower-case) name satisfies `matches`, without allocating: the
/// names found are one or two, so a fresh scan per removal costs less than collecting them.
fn remove_where(headers: &mut HeaderMap, matches: impl Fn(&str) -> bool) {
    while let Some(name) = headers.keys().find(|name| matches(name.as_str())).cloned() {
        headers.remove(&name);
    }
}

/// The client's IP as an `X-Forwarded-For` entry; made once per connection, not per request.
pub fn peer_ip(peer: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.ip().to_string()).expect("an IP address is a valid header value")
}

/// Adds `X-Forwarded-For` (the client's IP from [`peer_ip`], appended to a list the client
/// already sent), `X-Forwarded-Proto` and `X-Forwarded-Host` (the authority the client
/// addressed, when known).
pub fn add_forwarded(
    headers: &mut HeaderMap,
    peer_ip: Option<&HeaderValue>,
    proto: &'static str,
    host: Option<HeaderValue>,
) {
    if let Some(ip) = peer_ip {
        let listed = headers
            .get(&X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
            .zip(ip.to_str().ok())
            .and_then(|(existing, ip)| HeaderValue::from_str(&format!("{existing}, {ip}")).ok());
        headers.insert(X_FORWARDED_FOR, listed.unwrap_or_else(|| ip.clone()));
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match host {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn removes_hop_by_hop_and_what_connection_names() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-drop-me"),
            ("keep-alive", "timeout=5"),
            ("x-drop-me", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-connection", "keep-alive"),
            ("authorization", "HMAC-SHA256 SignedHeaders=x&Signature=y"),
            ("x-ms-date", "Tue, 25 Nov 2026 09:00:00 GMT"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ]);
        remove_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "traceparent", "x-ms-date"]);
    }

    #[test]
    fn a_lone_proxy_header_is_still_dropped() {
        let mut headers = map(&[("proxy-authorization", "Basic eA=="), ("x-ms-date", "a")]);
        remove_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-ms-date"]);
    }

    #[test]
    fn each_fixed_hop_by_hop_header_goes_without_connection_naming_it() {
        for name in [
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authenticate",
        ] {
            let mut headers = map(&[(name, "x"), ("x-ms-date", "a"), ("tea", "b")]);
            remove_hop_by_hop(&mut headers);
            let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
            left.sort_unstable();
            assert_eq!(left, ["tea", "x-ms-date"], "{name}");
        }
    }

    #[test]
    fn underscored_names_are_dropped() {
        let mut headers = map(&[("x-ms-date", "a"), ("x_ms_date", "b"), ("x_other", "c")]);
        remove_underscored(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-ms-date"]);
    }

    #[test]
    fn forwarded_headers_append_to_a_client_list() {
        let mut headers = map(&[("x-forwarded-for", "203.0.113.7")]);
        add_forwarded(
            &mut headers,
            Some(&peer_ip("127.0.0.1:4000".parse().unwrap())),
            "http",
            Some(HeaderValue::from_static("localhost:8080")),
        );
        assert_eq!(headers[X_FORWARDED_FOR], "203.0.113.7, 127.0.0.1");
        assert_eq!(headers[X_FORWARDED_PROTO], "http");
        assert_eq!(headers[X_FORWARDED_HOST], "localhost:8080");
    }
}
