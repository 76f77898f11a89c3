//! The upstream over real TLS (rustls, a test CA minted with rcgen), as ACS is reached.

mod support;

use std::sync::Arc;

use http::{Method, StatusCode};

use acsgate::error::ERROR_HEADER;
use support::pki::{TempFile, TestCa};
use support::{
    Upstream, gateway, h1_client, h2_client, json, request, scrape, send, settings, upload_then_get,
};

struct TestPki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

/// A CA and a `localhost` server certificate signed by it.
fn pki() -> TestPki {
    pki_with(|_| {})
}

/// A CA and a server certificate signed by it, its parameters changed by `edit` first.
fn pki_with(edit: impl FnOnce(&mut rcgen::CertificateParams)) -> TestPki {
    let ca = TestCa::new();
    TestPki {
        server: ca.leaf_with(edit).server_config(),
        ca_pem: ca.pem,
    }
}

#[tokio::test]
async fn https_upstream_trusted_through_the_extra_ca() {
    let pki = pki();
    let upstream = Upstream::start_tls(
        |seen| async move {
            // Tell the client which protocol the upstream leg used.
            let body = if seen.version == http::Version::HTTP_2 {
                "h2"
            } else {
                "h1"
            };
            json(StatusCode::CREATED, body)
        },
        pki.server,
    )
    .await;
    let ca = TempFile::new(&pki.ca_pem);
    let mut s = settings(&format!("https://localhost:{}", upstream.addr.port()));
    s.extra_ca_file = Some(ca.0.clone());
    let gw = gateway(s).await;
    for client in [h1_client(), h2_client()] {
        let (response, body) = create_identity(&client, &gw).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        // ALPN negotiated HTTP/2 with the upstream, whatever the client spoke.
        assert_eq!(body.as_ref(), b"h2");
    }
    let seen = upstream.seen();
    assert_eq!(
        seen[0].uri.authority().map(|a| a.as_str()),
        Some(format!("localhost:{}", upstream.addr.port()).as_str())
    );
    let metrics = scrape(gw.admin_addr()).await;
    assert_eq!(
        metrics.sum(
            "acsgate_requests_total",
            &[("operation", "CreateIdentity"), ("status_code", "201")]
        ),
        2.0
    );
}

#[tokio::test]
async fn untrusted_upstream_certificate_gives_502_tls() {
    let pki = pki();
    let upstream = Upstream::start_tls(|_| async { json(StatusCode::OK, "{}") }, pki.server).await;
    // No extra CA: the test CA is not trusted, and verification cannot be turned off.
    let gw = gateway(settings(&format!(
        "https://localhost:{}",
        upstream.addr.port()
    )))
    .await;
    let (response, _) = send(
        &h1_client(),
        request(
            Method::GET,
            gw.proxy_addr(),
            "/chat/threads?api-version=2025-03-15",
            "",
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.headers()[ERROR_HEADER], "tls");
    assert!(upstream.seen().is_empty());
    let metrics = scrape(gw.admin_addr()).await;
    assert_eq!(
        metrics.sum(
            "acsgate_upstream_errors_total",
            &[("operation", "ListChatThreads"), ("kind", "tls")]
        ),
        1.0
    );
    assert_eq!(
        metrics.sum(
            "acsgate_requests_total",
            &[("operation", "ListChatThreads"), ("status_code", "502")]
        ),
        1.0
    );
}

/// `POST /identities` (CreateIdentity) through the gateway.
async fn create_identity(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    gw: &acsgate::server::Gateway,
) -> (http::Response<()>, bytes::Bytes) {
    let path = "/identities?api-version=2022-06-01";
    send(client, request(Method::POST, gw.proxy_addr(), path, "{}")).await
}

/// Plan A9: a certificate from the trusted CA that names another host, or has expired, fails
/// the handshake; no HTTP byte reaches the upstream.
#[tokio::test]
async fn wrong_name_or_expired_certificate_from_a_trusted_ca_gives_502_tls() {
    let wrong_name = pki_with(|p| {
        p.subject_alt_names = vec![rcgen::SanType::DnsName("wrong.example".try_into().unwrap())];
    });
    let expired = pki_with(|p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    for (what, pki) in [("wrong name", wrong_name), ("expired", expired)] {
        let upstream =
            Upstream::start_tls(|_| async { json(StatusCode::OK, "{}") }, pki.server).await;
        let ca = TempFile::new(&pki.ca_pem);
        let mut s = settings(&format!("https://localhost:{}", upstream.addr.port()));
        s.extra_ca_file = Some(ca.0.clone());
        let gw = gateway(s).await;
        let (response, _) = create_identity(&h1_client(), &gw).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY, "{what}");
        assert_eq!(response.headers()[ERROR_HEADER], "tls", "{what}");
        assert!(
            upstream.seen().is_empty(),
            "{what}: bytes reached the upstream"
        );
    }
}

#[tokio::test]
async fn an_upload_acs_refuses_over_h2_before_reading_it_gets_the_answer_and_keeps_its_connection()
{
    // ACS answers a refused request (401, 413) before reading its body, over h2, and resets
    // the stream. The HTTP/1.1 client still sending 32 MiB must get that answer, not a reset,
    // and keep its connection.
    let pki = pki();
    let upstream = Upstream::early_tls(StatusCode::UNAUTHORIZED, pki.server).await;
    let ca = TempFile::new(&pki.ca_pem);
    let mut s = settings(&format!("https://localhost:{}", upstream.addr.port()));
    s.extra_ca_file = Some(ca.0.clone());
    let gw = gateway(s).await;
    let path = "/emails:send?api-version=2023-03-31";
    let statuses = upload_then_get(gw.proxy_addr(), path, 32 << 20, path).await;
    assert_eq!(statuses, (401, 401));
    assert_eq!(upstream.seen().len(), 2);
    assert!(
        upstream
            .seen()
            .iter()
            .all(|s| s.version == http::Version::HTTP_2)
    );
}

#[test]
fn an_unreadable_extra_ca_file_is_a_start_up_error() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut s = settings("https://localhost:1");
        s.extra_ca_file = Some("/nonexistent/ca.pem".into());
        let config = acsgate::config::Config::from_settings(s).unwrap();
        let err = acsgate::server::Gateway::start(&config)
            .await
            .err()
            .expect("start fails");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    });
}
