//! TLS on the proxy listener: HTTP/1.1 and HTTP/2 by ALPN with a test CA, and a certificate
//! swapped on disk while connections are open.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Version};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use acsgate::server::Gateway;
use support::pki::{Leaf, TempFile, TestCa};
use support::{Upstream, gateway, send, settings};

struct Listener {
    ca: TestCa,
    leaf: Leaf,
    cert: TempFile,
    key: TempFile,
    gw: Gateway,
}

async fn tls_gateway(upstream: &Upstream) -> Listener {
    let ca = TestCa::new();
    let leaf = ca.leaf();
    let cert = TempFile::new(&leaf.cert_pem);
    let key = TempFile::new(&leaf.key_pem);
    let mut s = settings(&upstream.url());
    s.tls_cert_file = Some(cert.0.clone());
    s.tls_key_file = Some(key.0.clone());
    let gw = gateway(s).await;
    Listener {
        ca,
        leaf,
        cert,
        key,
        gw,
    }
}

fn https_request(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::GET)
        .uri(format!("https://localhost:{}{path}", addr.port()))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn http1_and_http2_over_tls_with_https_polling_urls() {
    let upstream = Upstream::start(|seen| async move {
        let proto = seen.headers["x-forwarded-proto"]
            .to_str()
            .unwrap()
            .to_owned();
        let host = seen.headers["host"].to_str().unwrap().to_owned();
        http::Response::builder()
            .status(StatusCode::ACCEPTED)
            .header(
                "operation-location",
                format!("http://{host}/emails/operations/op-1?api-version=2023-03-31"),
            )
            .body(Full::new(Bytes::from(proto)))
            .unwrap()
    })
    .await;
    let listener = tls_gateway(&upstream).await;
    let addr = listener.gw.proxy_addr();
    for h2 in [false, true] {
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(listener.ca.client_config(&[]))
            .https_only();
        let connector = if h2 {
            builder.enable_http2().build()
        } else {
            builder.enable_http1().build()
        };
        let client = Client::builder(TokioExecutor::new())
            .http2_only(h2)
            .build(connector);
        let path = "/emails/operations/op-0?api-version=2023-03-31";
        let (response, body) = send(&client, https_request(addr, path)).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let expected = if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        assert_eq!(response.version(), expected);
        assert_eq!(body.as_ref(), b"https", "X-Forwarded-Proto");
        assert_eq!(
            response.headers()["operation-location"],
            format!(
                "https://localhost:{}/emails/operations/op-1?api-version=2023-03-31",
                addr.port()
            )
            .as_str()
        );
    }
}

/// Opens a TLS connection to the listener and returns it with the certificate it presented.
async fn connect(
    addr: SocketAddr,
    ca: &TestCa,
) -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    CertificateDer<'static>,
) {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(ca.client_config(&[b"http/1.1"])));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .expect("handshake within 5 s")
        .expect("handshake succeeds");
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    (tls, presented)
}

async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
) -> StatusCode {
    let request = https_request(addr, "/chat/threads?api-version=2025-03-15");
    tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .expect("answer within 5 s")
        .expect("request succeeds")
        .status()
}

#[tokio::test]
async fn a_certificate_swapped_on_disk_serves_new_connections_and_keeps_open_ones() {
    let upstream = Upstream::ok().await;
    let listener = tls_gateway(&upstream).await;
    let addr = listener.gw.proxy_addr();
    let (tls, presented) = connect(addr, &listener.ca).await;
    let original = listener.leaf.der();
    assert_eq!(presented, original);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    assert_eq!(get(&mut sender, addr).await, StatusCode::OK);

    let next = listener.ca.leaf();
    assert_ne!(next.der(), original);
    listener.cert.write(&next.cert_pem);
    listener.key.write(&next.key_pem);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, presented) = connect(addr, &listener.ca).await;
        if presented == next.der() {
            break;
        }
        assert_eq!(presented, original, "only the old or the new certificate");
        assert!(
            tokio::time::Instant::now() < deadline,
            "new certificate not served within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection opened before the swap still works.
    assert_eq!(get(&mut sender, addr).await, StatusCode::OK);
    assert_eq!(upstream.seen().len(), 2);
}

#[tokio::test]
async fn an_unusable_certificate_is_a_start_up_error_naming_the_problem() {
    let ca = TestCa::new();
    let (leaf, other) = (ca.leaf(), ca.leaf());
    let cert = TempFile::new(&leaf.cert_pem);
    let wrong_key = TempFile::new(&other.key_pem);
    let cases = [
        (
            cert.0.clone(),
            "/nonexistent/key.pem".into(),
            "/nonexistent/key.pem",
        ),
        (cert.0.clone(), wrong_key.0.clone(), "certificate and key"),
        (wrong_key.0.clone(), wrong_key.0.clone(), "CERTIFICATE"),
    ];
    for (cert_file, key_file, needle) in cases {
        let mut s = settings("http://127.0.0.1:1");
        s.tls_cert_file = Some(cert_file);
        s.tls_key_file = Some(key_file);
        let config = acsgate::config::Config::from_settings(s).unwrap();
        let err = Gateway::start(&config).await.err().expect("start fails");
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
}

#[test]
fn a_certificate_without_its_key_is_a_configuration_error() {
    let mut s = settings("http://127.0.0.1:1");
    s.tls_cert_file = Some("/etc/acsgate/tls.crt".into());
    let err = acsgate::config::Config::from_settings(s).unwrap_err();
    assert!(err.to_string().contains("tls_key_file"), "{err}");
}
