//! The ACS access-key scheme written again from its specification, independently of
//! `acsgate::auth::hmac`, for the test client (signs with the local key) and the test upstream
//! (verifies with the resource key, as ACS does):
//! `base64(HMAC-SHA256(key, "{METHOD}\n{path?query}\n{x-ms-date};{host};{x-ms-content-sha256}"))`.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use ring::{digest, hmac};

use super::{Seen, Upstream};

/// The key the application puts in its connection string (base64).
pub fn local_key() -> String {
    B64.encode("CANARY-LOCAL-KEY-the-app-holds-0123456789")
}

/// The ACS resource's key (base64).
pub fn resource_key() -> String {
    B64.encode("CANARY-RESOURCE-KEY-acs-holds-9876543210")
}

fn hash(body: &[u8]) -> String {
    B64.encode(digest::digest(&digest::SHA256, body))
}

fn signature(key: &str, text: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &B64.decode(key).unwrap());
    B64.encode(hmac::sign(&key, text.as_bytes()))
}

/// Signs `request` as an ACS SDK does: for the host in its URI, with `key`, dated `date`,
/// claiming `body` as its content.
pub fn sign(request: &mut Request<Full<Bytes>>, key: &str, body: &[u8], date: SystemTime) {
    let date = httpdate::fmt_http_date(date);
    let host = request.uri().authority().unwrap().as_str().to_owned();
    let path_and_query = request.uri().path_and_query().unwrap().as_str().to_owned();
    let hash = hash(body);
    let text = format!(
        "{}\n{path_and_query}\n{date};{host};{hash}",
        request.method()
    );
    let authorization = format!(
        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={}",
        signature(key, &text)
    );
    let headers = request.headers_mut();
    headers.insert("x-ms-date", date.parse().unwrap());
    headers.insert("x-ms-content-sha256", hash.parse().unwrap());
    headers.insert("authorization", authorization.parse().unwrap());
}

/// Checks a received request as ACS would, with `key`.
pub fn verify(seen: &Seen, key: &str) -> Result<(), &'static str> {
    let header = |name| {
        seen.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(name)
    };
    let authorization = header("authorization")?;
    let date = header("x-ms-date")?;
    let claimed = header("x-ms-content-sha256")?;
    let host = seen
        .headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .or(seen.uri.authority().map(|a| a.as_str()))
        .ok_or("host")?;
    if claimed != hash(&seen.body) {
        return Err("content hash");
    }
    let signed_at = httpdate::parse_http_date(date).map_err(|_| "date format")?;
    let now = SystemTime::now();
    let skew = now
        .duration_since(signed_at)
        .unwrap_or_else(|e| e.duration());
    if skew > Duration::from_secs(15 * 60) {
        return Err("date window");
    }
    let path_and_query = seen.uri.path_and_query().ok_or("path")?.as_str();
    let text = format!("{}\n{path_and_query}\n{date};{host};{claimed}", seen.method);
    let expected = format!(
        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={}",
        signature(key, &text)
    );
    if authorization == expected {
        Ok(())
    } else {
        Err("signature")
    }
}

/// The bearer token the test upstream accepts as an Entra ID token.
pub const BEARER: &str = "Bearer test-entra-token";

/// An upstream that, like ACS, answers 401 unless the request is signed with the resource
/// key or carries [`BEARER`]; accepted requests get `answer`.
pub async fn verifying_upstream<F>(answer: F) -> Upstream
where
    F: Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    Upstream::start(move |seen| {
        let bearer = seen
            .headers
            .get("authorization")
            .is_some_and(|v| v == BEARER);
        let response = match verify(&seen, &resource_key()) {
            _ if bearer => answer(&seen),
            Ok(()) => answer(&seen),
            Err(why) => Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .body(Full::new(Bytes::from(why)))
                .unwrap(),
        };
        async move { response }
    })
    .await
}
