//! The pooled upstream client: HTTP/1.1 and HTTP/2 (by ALPN) over rustls, or plain HTTP.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The connector behind every upstream connection.
pub type Connector = HttpsConnector<HttpConnector>;

/// The upstream client for request bodies of type `B`.
pub type UpstreamClient<B> = Client<Connector, B>;

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The extra CA file could not be read or holds no usable certificate.
    #[error("extra CA file {path}: {reason}")]
    ExtraCa {
        /// The file.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Connection settings of the upstream client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSettings {
    /// Limit on establishing a TCP connection (the TLS handshake has the response timeout).
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// PEM file with extra trust anchors, added to the platform and Mozilla roots.
    pub extra_ca_file: Option<std::path::PathBuf>,
}

/// Builds the pooled client. TLS certificate verification is always on.
pub fn build<B>(settings: &ClientSettings) -> Result<UpstreamClient<B>, ClientError>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let roots = trust_roots(settings.extra_ca_file.as_deref())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(settings.connect_timeout));

    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);

    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .build(connector))
}

/// Platform roots, Mozilla's roots (for bare containers with no CA bundle), and the extra CA.
fn trust_roots(extra_ca_file: Option<&Path>) -> Result<RootCertStore, ClientError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // Unreadable platform certificates are skipped: the Mozilla roots still apply.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca_file {
        let fail = |reason: String| ClientError::ExtraCa {
            path: path.display().to_string(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| fail(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(e.to_string()))?;
        if certs.is_empty() {
            return Err(fail("no PEM certificate found".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| fail(e.to_string()))?;
        }
    }
    Ok(roots)
}
