//! The ACS access-key scheme (HMAC-SHA256), on top of `ring`:
//!
//! ```text
//! x-ms-content-sha256: base64(SHA-256(body))
//! Authorization: HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=S
//! S = base64(HMAC-SHA256(base64-decode(key),
//!         "{METHOD}\n{path and query}\n{x-ms-date};{host};{x-ms-content-sha256}"))
//! ```

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::Method;
use http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use ring::{digest, hmac};

/// The `Authorization` scheme of the ACS access-key scheme.
pub const SCHEME: &str = "HMAC-SHA256";
/// The only signed-header list ACS accepts.
pub const SIGNED_HEADERS: &str = "x-ms-date;host;x-ms-content-sha256";
/// `x-ms-date`: when the request was signed (IMF-fixdate).
pub const X_MS_DATE: HeaderName = HeaderName::from_static("x-ms-date");
/// `x-ms-content-sha256`: base64 SHA-256 of the body.
pub const X_MS_CONTENT_SHA256: HeaderName = HeaderName::from_static("x-ms-content-sha256");
/// How far `x-ms-date` may be from the gateway's clock, either way.
pub const DATE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// An access key, decoded and ready to sign. Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct AccessKey(hmac::Key);

/// An access key that is not valid base64. The message never contains the key.
#[derive(Debug, thiserror::Error)]
#[error("the access key is not valid base64")]
pub struct InvalidKey;

impl AccessKey {
    /// Decodes a key as it appears in a connection string (`accesskey=…`, base64).
    pub fn from_base64(text: &str) -> Result<AccessKey, InvalidKey> {
        let bytes = BASE64.decode(text.trim()).map_err(|_| InvalidKey)?;
        if bytes.is_empty() {
            return Err(InvalidKey);
        }
        Ok(AccessKey(hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
    }

    fn signature(&self, string_to_sign: &str) -> String {
        BASE64.encode(hmac::sign(&self.0, string_to_sign.as_bytes()))
    }
}

impl fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessKey(<redacted>)")
    }
}

/// `base64(SHA-256(body))`, the value of `x-ms-content-sha256`.
pub fn content_hash(body: &[u8]) -> String {
    BASE64.encode(digest::digest(&digest::SHA256, body))
}

fn string_to_sign(
    method: &Method,
    path_and_query: &str,
    date: &str,
    host: &str,
    hash: &str,
) -> String {
    format!("{method}\n{path_and_query}\n{date};{host};{hash}")
}

/// Whether `headers` carry an `Authorization: HMAC-SHA256 …` header.
pub fn is_signed(headers: &HeaderMap) -> bool {
    headers.get(AUTHORIZATION).is_some_and(|value| {
        value
            .as_bytes()
            .get(..SCHEME.len() + 1)
            .is_some_and(|prefix| {
                prefix[..SCHEME.len()].eq_ignore_ascii_case(SCHEME.as_bytes())
                    && prefix[SCHEME.len()] == b' '
            })
    })
}

/// Why a caller's signature was refused. Says what was wrong, never with which values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The `Authorization`, `x-ms-date`, `x-ms-content-sha256` or host is missing or unreadable,
    /// or other headers were signed.
    Malformed,
    /// `x-ms-content-sha256` is not the hash of the body received.
    ContentHash,
    /// `x-ms-date` is more than [`DATE_WINDOW`] away from now.
    Date,
    /// The signature does not match the caller key.
    Signature,
}

impl Rejection {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::ContentHash => "content_hash",
            Rejection::Date => "date",
            Rejection::Signature => "signature",
        }
    }
}

/// The request line and host a signature covers.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The method.
    pub method: &'a Method,
    /// Path and query, exactly as sent.
    pub path_and_query: &'a str,
    /// `Host` (or `:authority`) as sent.
    pub host: &'a str,
}

/// Checks the caller's signature over `target` and `headers` with `key`, that the signed
/// content hash is `body_hash`, and that `x-ms-date` is within [`DATE_WINDOW`] of `now`.
pub fn verify(
    key: &AccessKey,
    target: Target<'_>,
    headers: &HeaderMap,
    body_hash: &str,
    now: SystemTime,
) -> Result<(), Rejection> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .ok_or(Rejection::Malformed)
    };
    let signature = parse_authorization(text(AUTHORIZATION)?)?;
    let date = text(X_MS_DATE)?;
    let hash = text(X_MS_CONTENT_SHA256)?;
    if hash != body_hash {
        return Err(Rejection::ContentHash);
    }
    let signed_at = httpdate::parse_http_date(date).map_err(|_| Rejection::Date)?;
    let skew = now
        .duration_since(signed_at)
        .or_else(|_| signed_at.duration_since(now))
        .unwrap_or(Duration::MAX);
    if skew > DATE_WINDOW {
        return Err(Rejection::Date);
    }
    let signature = BASE64.decode(signature).map_err(|_| Rejection::Signature)?;
    let string_to_sign = string_to_sign(
        target.method,
        target.path_and_query,
        date,
        target.host,
        hash,
    );
    // ring compares in constant time.
    hmac::verify(&key.0, string_to_sign.as_bytes(), &signature).map_err(|_| Rejection::Signature)
}

/// The signature of `HMAC-SHA256 SignedHeaders=…&Signature=…`, if the signed headers are
/// the ones ACS uses.
fn parse_authorization(value: &str) -> Result<&str, Rejection> {
    let params = value
        .get(SCHEME.len() + 1..)
        .ok_or(Rejection::Malformed)?
        .trim();
    let mut signed_headers = None;
    let mut signature = None;
    for param in params.split('&') {
        // Base64 padding is `=`: split at the first one only.
        let (name, value) = param.split_once('=').ok_or(Rejection::Malformed)?;
        if name.trim().eq_ignore_ascii_case("SignedHeaders") {
            signed_headers = Some(value);
        } else if name.trim().eq_ignore_ascii_case("Signature") {
            signature = Some(value);
        }
    }
    match (signed_headers, signature) {
        (Some(headers), Some(signature)) if headers.eq_ignore_ascii_case(SIGNED_HEADERS) => {
            Ok(signature)
        }
        _ => Err(Rejection::Malformed),
    }
}

/// Signs a request for `target` with `key`: sets a fresh `x-ms-date` (`now`),
/// `x-ms-content-sha256` (`body_hash`) and `Authorization`.
pub fn sign(
    key: &AccessKey,
    target: Target<'_>,
    headers: &mut HeaderMap,
    body_hash: &str,
    now: SystemTime,
) {
    let date = httpdate::fmt_http_date(now);
    let signature = key.signature(&string_to_sign(
        target.method,
        target.path_and_query,
        &date,
        target.host,
        body_hash,
    ));
    let authorization = format!("{SCHEME} SignedHeaders={SIGNED_HEADERS}&Signature={signature}");
    // Dates, base64 and the scheme are visible ASCII: these conversions cannot fail.
    for (name, value) in [
        (X_MS_DATE, date),
        (X_MS_CONTENT_SHA256, body_hash.to_owned()),
        (AUTHORIZATION, authorization),
    ] {
        if let Ok(mut value) = HeaderValue::try_from(value) {
            value.set_sensitive(name == AUTHORIZATION);
            headers.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHM="; // "secret-key-for-tests"

    fn target<'a>(method: &'a Method, host: &'a str) -> Target<'a> {
        Target {
            method,
            path_and_query: "/emails:send?api-version=2023-03-31",
            host,
        }
    }

    #[test]
    fn content_hash_of_empty_body_is_the_known_value() {
        assert_eq!(
            content_hash(b""),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
    }

    #[test]
    fn signature_matches_an_independent_hmac() {
        // HMAC-SHA256("secret-key-for-tests", "GET\n/x\nd;h;c"), computed with
        // `printf 'GET\n/x\nd;h;c' | openssl dgst -sha256 -hmac secret-key-for-tests -binary | base64`.
        let key = AccessKey::from_base64(KEY).unwrap();
        let got = key.signature(&string_to_sign(&Method::GET, "/x", "d", "h", "c"));
        assert_eq!(got, "jOQguKW/CeY1Iu+Ww+dGa7686tkYd+4uj2y8ijudAlw=");
    }

    #[test]
    fn sign_then_verify_and_every_rejection() {
        let key = AccessKey::from_base64(KEY).unwrap();
        let other = AccessKey::from_base64("b3RoZXI=").unwrap();
        let now = SystemTime::now();
        let post = Method::POST;
        let hash = content_hash(b"{}");
        let mut headers = HeaderMap::new();
        sign(&key, target(&post, "gw:8080"), &mut headers, &hash, now);
        assert_eq!(
            verify(&key, target(&post, "gw:8080"), &headers, &hash, now),
            Ok(())
        );
        assert_eq!(
            verify(&other, target(&post, "gw:8080"), &headers, &hash, now),
            Err(Rejection::Signature)
        );
        assert_eq!(
            verify(&key, target(&post, "acs.example"), &headers, &hash, now),
            Err(Rejection::Signature)
        );
        assert_eq!(
            verify(
                &key,
                target(&post, "gw:8080"),
                &headers,
                &content_hash(b"{ }"),
                now
            ),
            Err(Rejection::ContentHash)
        );
        let later = now + DATE_WINDOW + Duration::from_secs(5);
        assert_eq!(
            verify(&key, target(&post, "gw:8080"), &headers, &hash, later),
            Err(Rejection::Date)
        );
        headers.remove(X_MS_DATE);
        assert_eq!(
            verify(&key, target(&post, "gw:8080"), &headers, &hash, now),
            Err(Rejection::Malformed)
        );
    }

    #[test]
    fn authorization_parsing() {
        assert_eq!(
            parse_authorization(
                "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=ab+/c=="
            ),
            Ok("ab+/c==")
        );
        for bad in [
            "HMAC-SHA256 SignedHeaders=host&Signature=abc",
            "HMAC-SHA256 Signature=abc",
            "HMAC-SHA256",
            "HMAC-SHA256 junk",
        ] {
            assert_eq!(parse_authorization(bad), Err(Rejection::Malformed), "{bad}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("hmac-sha256 SignedHeaders=x"),
        );
        assert!(is_signed(&headers));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer eyJ0"));
        assert!(!is_signed(&headers));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("HMAC-SHA256X"));
        assert!(!is_signed(&headers));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = AccessKey::from_base64(KEY).unwrap();
        assert_eq!(format!("{key:?}"), "AccessKey(<redacted>)");
        assert!(AccessKey::from_base64("not base64!").is_err());
        assert!(InvalidKey.to_string().find(KEY).is_none());
    }
}
