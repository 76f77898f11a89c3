//! `acsgate healthcheck`: asks a running gateway's admin listener for `/healthz`, for a
//! container `HEALTHCHECK` (the runtime image has no curl). An unspecified admin address
//! (`0.0.0.0:9464`, as set for scraping) is asked on loopback.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The admin path the check asks.
pub const HEALTHZ_PATH: &str = "/healthz";

/// Why the gateway is not healthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// No answer: nothing listens, or the connection failed.
    #[error("no answer from http://{addr}{HEALTHZ_PATH}: {reason}")]
    Unreachable {
        /// The address asked.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// No answer within the time limit.
    #[error("no answer from http://{addr}{HEALTHZ_PATH} within {timeout:?}")]
    Timeout {
        /// The address asked.
        addr: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
    /// An answer other than 200.
    #[error("http://{addr}{HEALTHZ_PATH} answered {status}")]
    Status {
        /// The address asked.
        addr: SocketAddr,
        /// The status.
        status: StatusCode,
    },
}

/// The address to ask for a gateway whose admin listener is bound to `admin`.
pub fn target(admin: SocketAddr) -> SocketAddr {
    match admin.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, admin.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, admin.port()).into(),
        _ => admin,
    }
}

/// `GET /healthz` on the gateway whose admin listener is `admin`; healthy means 200.
pub async fn check(admin: SocketAddr, timeout: Duration) -> Result<(), HealthError> {
    let addr = target(admin);
    let uri: Uri =
        format!("http://{addr}{HEALTHZ_PATH}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| HealthError::Unreachable {
                addr,
                reason: e.to_string(),
            })?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let response = tokio::time::timeout(timeout, client.get(uri))
        .await
        .map_err(|_| HealthError::Timeout { addr, timeout })?
        .map_err(|e| HealthError::Unreachable {
            addr,
            reason: e.to_string(),
        })?;
    match response.status() {
        StatusCode::OK => Ok(()),
        status => Err(HealthError::Status { addr, status }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_asked_on_loopback() {
        let ask = |admin: &str| target(admin.parse().unwrap()).to_string();
        assert_eq!(ask("0.0.0.0:9464"), "127.0.0.1:9464");
        assert_eq!(ask("[::]:9464"), "[::1]:9464");
        assert_eq!(ask("10.1.2.3:9000"), "10.1.2.3:9000");
    }
}
