//! Header rules for a forwarding proxy (RFC 9110 §7.6.1, RFC 7239's de-facto `X-Forwarded-*`).

use std::net::SocketAddr;

use http::Uri;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

/// Whether a header is hop-by-hop by its (lower-case) name alone, whatever `Connection`
/// lists: RFC 9110's fixed set, the de-facto `Keep-Alive`, and every `Proxy-*` header.
fn is_hop_by_hop(name: &[u8]) -> bool {
    matches!(
        name,
        b"connection" | b"keep-alive" | b"te" | b"trailer" | b"transfer-encoding" | b"upgrade"
    ) || name.starts_with(b"proxy-")
}

/// Which of the names the header rules act on a message carries, found in one pass over its
/// names, so that each rule touches the map (hashing a name, removing, collecting) only when
/// it has something to do: most messages carry none of these names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// Some hop-by-hop header.
    pub hop_by_hop: bool,
    /// `Connection` is the only hop-by-hop header.
    pub only_connection: bool,
    /// Some name with `_`.
    pub underscored: bool,
    /// `X-Forwarded-For`.
    pub forwarded_for: bool,
    /// `X-Forwarded-Host`.
    pub forwarded_host: bool,
    /// `Location` or `Operation-Location`.
    pub location: bool,
}

impl Names {
    /// What `headers` carries.
    pub fn of(headers: &HeaderMap) -> Names {
        let mut found = Names::default();
        let mut others = false;
        for name in headers.keys() {
            let name = name.as_str().as_bytes();
            // By first byte, so that most names are compared with nothing: this runs for
            // every header of every request and response.
            match name.first() {
                Some(b'c') if name == b"connection" => found.hop_by_hop = true,
                Some(b'x') if name == b"x-forwarded-for" => found.forwarded_for = true,
                Some(b'x') if name == b"x-forwarded-host" => found.forwarded_host = true,
                Some(b'l') if name == b"location" => found.location = true,
                Some(b'o') if name == b"operation-location" => found.location = true,
                Some(b'k' | b't' | b'u' | b'p') if is_hop_by_hop(name) => others = true,
                _ => {}
            }
            found.underscored |= has_underscore(name);
        }
        found.only_connection = found.hop_by_hop && !others;
        found.hop_by_hop |= others;
        found
    }
}

/// Whether `name` has a `_`, eight bytes at a time: names are short, and memchr's call costs
/// more than the search. The last word overlaps the one before it rather than leaving up to
/// seven bytes to test one by one.
// `contains` on a short name would be that memchr call.
#[allow(clippy::manual_contains)]
fn has_underscore(name: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const UNDERSCORES: u64 = u64::from_ne_bytes([b'_'; 8]);
    let has = |word: &[u8]| {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(word);
        // A zero byte in `word ^ "________"` is a `_` in `word`.
        let x = u64::from_ne_bytes(bytes) ^ UNDERSCORES;
        x.wrapping_sub(ONES) & !x & HIGHS != 0
    };
    match name.len().checked_sub(8) {
        None => name.iter().any(|&b| b == b'_'),
        Some(last) => name.chunks_exact(8).any(has) || has(&name[last..]),
    }
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
    headers
        .get(header::HOST)
        .cloned()
        .or_else(|| uri_authority(uri))
}

/// Sets `Host` to `upstream` (the upstream's authority, as TLS SNI needs) and returns the
/// authority the client addressed, as [`client_host`] would have: one lookup instead of two.
pub fn replace_host(
    headers: &mut HeaderMap,
    uri: &Uri,
    upstream: &HeaderValue,
) -> Option<HeaderValue> {
    headers
        .insert(header::HOST, upstream.clone())
        .or_else(|| uri_authority(uri))
}

fn uri_authority(uri: &Uri) -> Option<HeaderValue> {
    HeaderValue::from_str(uri.authority()?.as_str()).ok()
}

/// Removes hop-by-hop headers: the fixed set, any `Proxy-*` header, and every header named
/// in `Connection`. End-to-end headers (`Authorization`, `x-ms-*`, `traceparent`…) stay.
/// `names` is what [`Names::of`] found in `headers`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, names: Names) {
    if !names.hop_by_hop {
        return;
    }
    // Nearly every upstream response says `Connection: keep-alive` and has no other
    // hop-by-hop header: removing that one name is all there is to do.
    if names.only_connection {
        // One lookup for the look and the removal.
        if let Entry::Occupied(connection) = headers.entry(header::CONNECTION) {
            if names_nothing_else(connection.iter()) {
                connection.remove();
                return;
            }
        }
    }
    // Names listed in Connection are hop-by-hop too; collect them before Connection goes.
    // `keep-alive` names a header the fixed set removes anyway.
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
    remove_where(headers, |name| is_hop_by_hop(name.as_bytes()));
}

/// Whether `Connection` (its `values`) is a single `keep-alive` or `close`, which name no
/// other header.
fn names_nothing_else<'a>(mut values: impl Iterator<Item = &'a HeaderValue>) -> bool {
    match (values.next(), values.next()) {
        (Some(value), None) => {
            let token = value.as_bytes().trim_ascii();
            token.eq_ignore_ascii_case(b"keep-alive") || token.eq_ignore_ascii_case(b"close")
        }
        _ => false,
    }
}

/// Removes headers whose names contain `_`. Many servers (CGI, nginx by default) fold `_`
/// into `-`, so `x_ms_date` next to `x-ms-date` could let a client smuggle a second value past
/// whatever checks the dashed one; no ACS header has an underscore. `names` is what
/// [`Names::of`] found in `headers`.
pub fn remove_underscored(headers: &mut HeaderMap, names: Names) {
    if names.underscored {
        remove_where(headers, |name| name.contains('_'));
    }
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
/// addressed, when known). `names` is what [`Names::of`] found in `headers`.
pub fn add_forwarded(
    headers: &mut HeaderMap,
    names: Names,
    peer_ip: Option<&HeaderValue>,
    proto: &'static str,
    host: Option<HeaderValue>,
) {
    if let Some(ip) = peer_ip {
        let listed = names
            .forwarded_for
            .then(|| headers.get(&X_FORWARDED_FOR))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .zip(ip.to_str().ok())
            .and_then(|(existing, ip)| HeaderValue::from_str(&format!("{existing}, {ip}")).ok());
        headers.insert(X_FORWARDED_FOR, listed.unwrap_or_else(|| ip.clone()));
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host);
        }
        None if names.forwarded_host => {
            headers.remove(X_FORWARDED_HOST);
        }
        None => {}
    }
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
        let names = Names::of(&headers);
        remove_hop_by_hop(&mut headers, names);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "traceparent", "x-ms-date"]);
    }

    #[test]
    fn a_lone_proxy_header_is_still_dropped() {
        let mut headers = map(&[("proxy-authorization", "Basic eA=="), ("x-ms-date", "a")]);
        let names = Names::of(&headers);
        remove_hop_by_hop(&mut headers, names);
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
            let names = Names::of(&headers);
            remove_hop_by_hop(&mut headers, names);
            let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
            left.sort_unstable();
            assert_eq!(left, ["tea", "x-ms-date"], "{name}");
        }
    }

    #[test]
    fn underscored_names_are_dropped() {
        let mut headers = map(&[("x-ms-date", "a"), ("x_ms_date", "b"), ("x_other", "c")]);
        let names = Names::of(&headers);
        remove_underscored(&mut headers, names);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-ms-date"]);
    }

    #[test]
    fn forwarded_headers_append_to_a_client_list() {
        let mut headers = map(&[("x-forwarded-for", "203.0.113.7")]);
        let names = Names::of(&headers);
        add_forwarded(
            &mut headers,
            names,
            Some(&peer_ip("127.0.0.1:4000".parse().unwrap())),
            "http",
            Some(HeaderValue::from_static("localhost:8080")),
        );
        assert_eq!(headers[X_FORWARDED_FOR], "203.0.113.7, 127.0.0.1");
        assert_eq!(headers[X_FORWARDED_PROTO], "http");
        assert_eq!(headers[X_FORWARDED_HOST], "localhost:8080");
    }

    #[test]
    fn underscores_are_found_anywhere_in_a_name() {
        for name in [
            "_",
            "a_",
            "x_ms_date",
            "abcdefgh_",
            "abcdefghijklmno_",
            "_abcdefghijklmnop",
        ] {
            assert!(has_underscore(name.as_bytes()), "{name}");
        }
        for name in [
            "",
            "a",
            "x-ms-date",
            "abcdefgh",
            "x-ms-client-request-id",
            "^`~",
        ] {
            assert!(!has_underscore(name.as_bytes()), "{name}");
        }
        // Every length up to five words, with the `_` at every place or nowhere, and the
        // bytes on either side of `_` around it.
        for len in 0..=40 {
            let clean: Vec<u8> = (0..len).map(|i| [b'^', b'`', b'-'][i % 3]).collect();
            assert!(!has_underscore(&clean), "{len}");
            for at in 0..len {
                let mut name = clean.clone();
                name[at] = b'_';
                assert!(has_underscore(&name), "{len} {at}");
            }
        }
    }

    #[test]
    fn one_pass_finds_what_the_rules_act_on() {
        let none = map(&[("host", "a"), ("content-type", "b"), ("x-ms-date", "c")]);
        assert_eq!(Names::of(&none), Names::default());
        let found = Names::of(&map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-host", "h"),
            ("operation-location", "https://x/y"),
            ("x_ms_date", "d"),
            ("connection", "keep-alive"),
        ]));
        assert_eq!(
            found,
            Names {
                hop_by_hop: true,
                only_connection: true,
                underscored: true,
                forwarded_for: true,
                forwarded_host: true,
                location: true,
            }
        );
        let found = Names::of(&map(&[("connection", "close"), ("te", "trailers")]));
        assert!(found.hop_by_hop && !found.only_connection);
    }

    #[test]
    fn a_lone_keep_alive_or_close_goes_and_so_does_what_connection_names() {
        for value in ["keep-alive", " Close ", "KEEP-ALIVE"] {
            let mut headers = map(&[("connection", value), ("content-type", "a")]);
            let names = Names::of(&headers);
            remove_hop_by_hop(&mut headers, names);
            let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
            assert_eq!(left, ["content-type"], "{value}");
        }
        // Connection is the only hop-by-hop name here, but it lists another header.
        let mut headers = map(&[("connection", "x-drop-me"), ("x-drop-me", "1"), ("a", "b")]);
        let names = Names::of(&headers);
        remove_hop_by_hop(&mut headers, names);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["a"]);
        // Two Connection headers: the second may list names too.
        let mut headers = map(&[
            ("connection", "keep-alive"),
            ("connection", "x-drop-me"),
            ("x-drop-me", "1"),
        ]);
        let names = Names::of(&headers);
        remove_hop_by_hop(&mut headers, names);
        assert!(headers.is_empty(), "{headers:?}");
    }

    #[test]
    fn forwarded_headers_start_a_list_and_clear_a_stale_host() {
        let mut headers = map(&[("x-forwarded-host", "spoofed")]);
        let names = Names::of(&headers);
        add_forwarded(
            &mut headers,
            names,
            Some(&peer_ip("[::1]:4000".parse().unwrap())),
            "https",
            None,
        );
        assert_eq!(headers[X_FORWARDED_FOR], "::1");
        assert_eq!(headers[X_FORWARDED_PROTO], "https");
        assert!(!headers.contains_key(X_FORWARDED_HOST));
    }
}
