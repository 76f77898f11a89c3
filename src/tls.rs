//! TLS on the proxy listener: rustls (ring), ALPN `h2` and `http/1.1`, certificate and key
//! from PEM files, re-read when the files change.
//!
//! The certificate lives behind a [`ResolvesServerCert`] that hands each new handshake the
//! current [`CertifiedKey`]; a reload swaps it, so open connections keep the certificate they
//! were made with and are never dropped. The files are re-read every [`RELOAD_INTERVAL`] and
//! compared by content rather than watched: that also sees a Kubernetes Secret mount's
//! symlink swap and an edit that keeps the modification time, and needs no OS notification
//! API. A pair that does not parse (half written, key not matching) is reported and the
//! current certificate stays.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How often the certificate files are re-read.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The certificate chain and key files of the proxy listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why the listener's certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file is not the PEM expected.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the key or the pair (unsupported key, key not matching the certificate).
    #[error("certificate and key: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Accepts TLS connections for the proxy listener.
#[derive(Clone)]
pub struct TlsAccept {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
}

impl TlsAccept {
    /// Loads the certificate from `files` and starts re-reading them every
    /// [`RELOAD_INTERVAL`] until the returned acceptor and all its clones are dropped.
    /// A handshake may take at most `handshake_timeout`.
    pub fn start(files: TlsFiles, handshake_timeout: Duration) -> Result<TlsAccept, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (contents, key) = load(&files, &provider)?;
        let resolver = Arc::new(ReloadingCert {
            current: RwLock::new(Arc::new(key)),
        });
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio::spawn(reload(Arc::downgrade(&resolver), files, provider, contents));
        Ok(TlsAccept {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshake_timeout,
        })
    }

    /// Runs the server side of a handshake on `stream`.
    pub async fn accept(&self, stream: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }
}

/// Hands every handshake the current certificate.
struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.write_str("ReloadingCert")
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

/// The raw bytes of both files, to tell a change.
type Contents = (Vec<u8>, Vec<u8>);

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn load(files: &TlsFiles, provider: &CryptoProvider) -> Result<(Contents, CertifiedKey), TlsError> {
    let contents = (read(&files.cert)?, read(&files.key)?);
    let key = parse(files, &contents, provider)?;
    Ok((contents, key))
}

fn parse(
    files: &TlsFiles,
    (cert, key): &Contents,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let pem = |path: &Path, message: String| TlsError::Pem {
        path: path.to_owned(),
        message,
    };
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(&files.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem(&files.cert, "no CERTIFICATE block".into()));
    }
    // The error names the PEM problem, never the key bytes.
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| pem(&files.key, e.to_string()))?;
    Ok(CertifiedKey::from_der(chain, key, provider)?)
}

/// Re-reads the files until the resolver is gone; swaps in a changed pair that parses.
async fn reload(
    resolver: Weak<ReloadingCert>,
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    mut last: Contents,
) {
    let mut interval = tokio::time::interval(RELOAD_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(resolver) = resolver.upgrade() else {
            return;
        };
        let contents = match (read(&files.cert), read(&files.key)) {
            (Ok(cert), Ok(key)) => (cert, key),
            // Mid-rotation a file may be missing for a moment: try again next tick.
            _ => continue,
        };
        if contents == last {
            continue;
        }
        match parse(&files, &contents, &provider) {
            Ok(key) => {
                *resolver
                    .current
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
                tracing::info!(cert = %files.cert.display(), "listener certificate reloaded");
            }
            Err(error) => {
                tracing::warn!(%error, "listener certificate changed but cannot be used; keeping the current one");
            }
        }
        last = contents;
    }
}
