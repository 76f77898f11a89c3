//! Keeps polling on the gateway: `Location` and `Operation-Location` response headers that
//! point at the upstream's scheme and authority are rewritten to the scheme and authority the
//! client used, so long-running-operation polls (Email send status, Call Automation) come back
//! through the gateway and are counted. Any other URL is left alone.

use http::Uri;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};

use super::Upstream;

/// `Operation-Location`, where ACS says to poll a long-running operation.
pub const OPERATION_LOCATION: HeaderName = HeaderName::from_static("operation-location");

/// The origin a client addressed: the listener's scheme and the client's `Host`.
#[derive(Clone, Debug)]
pub struct ClientOrigin {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// `Host` or `:authority` as sent.
    pub host: HeaderValue,
}

/// Rewrites the upstream-pointing location headers of a response to `client`'s origin.
pub fn rewrite(headers: &mut HeaderMap, upstream: &Upstream, client: &ClientOrigin) {
    for name in [header::LOCATION, OPERATION_LOCATION] {
        let rewritten = headers
            .get(&name)
            .and_then(|value| rewrite_one(value, upstream, client));
        if let Some(value) = rewritten {
            headers.insert(name, value);
        }
    }
}

fn rewrite_one(
    value: &HeaderValue,
    upstream: &Upstream,
    client: &ClientOrigin,
) -> Option<HeaderValue> {
    let uri: Uri = value.to_str().ok()?.parse().ok()?;
    let scheme = uri.scheme()?;
    if *scheme != upstream.scheme || !same_authority(uri.authority()?, &upstream.authority, scheme)
    {
        return None;
    }
    let path_and_query = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let host = client.host.to_str().ok()?;
    HeaderValue::try_from(format!("{}://{host}{path_and_query}", client.scheme)).ok()
}

/// Host equal ignoring case, port equal once the scheme's default is filled in.
fn same_authority(a: &Authority, b: &Authority, scheme: &Scheme) -> bool {
    let default = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    a.host().eq_ignore_ascii_case(b.host())
        && a.port_u16().unwrap_or(default) == b.port_u16().unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(location: &str) -> String {
        let upstream =
            crate::config::parse_upstream("https://res.communication.azure.com").unwrap();
        let client = ClientOrigin {
            scheme: "http",
            host: HeaderValue::from_static("127.0.0.1:8080"),
        };
        let mut headers = HeaderMap::new();
        headers.insert(OPERATION_LOCATION, HeaderValue::from_str(location).unwrap());
        rewrite(&mut headers, &upstream, &client);
        headers[OPERATION_LOCATION].to_str().unwrap().to_owned()
    }

    #[test]
    fn only_upstream_urls_move_to_the_client_origin() {
        assert_eq!(
            rewritten(
                "https://res.communication.azure.com/emails/operations/x?api-version=2023-03-31"
            ),
            "http://127.0.0.1:8080/emails/operations/x?api-version=2023-03-31"
        );
        assert_eq!(
            rewritten("https://RES.communication.azure.com:443/a"),
            "http://127.0.0.1:8080/a"
        );
        for other in [
            "https://other.communication.azure.com/a",
            "http://res.communication.azure.com/a",
            "https://res.communication.azure.com:8443/a",
            "/relative/path",
        ] {
            assert_eq!(rewritten(other), other);
        }
    }
}
