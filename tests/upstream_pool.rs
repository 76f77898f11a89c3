//! The gateway's own upstream connection pool (src/proxy/client.rs): connections are reused,
//! one per concurrent request at most, and closed once idle for `pool_idle_timeout`.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};

use support::faults::{Fault, FaultUpstream};
use support::{gateway, h1_client, request, send, settings};

const SMS: &str = "/sms?api-version=2021-03-07";

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let upstream = FaultUpstream::fixed(Fault::ok()).await;
    let gw = gateway(settings(&upstream.url())).await;
    let client = h1_client();
    for _ in 0..20 {
        let (response, _) = send(&client, request(Method::POST, gw.proxy_addr(), SMS, "{}")).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(upstream.received().len(), 20);
    assert_eq!(
        upstream.accepted(),
        1,
        "every request after the first reused it"
    );
}

#[tokio::test]
async fn concurrent_requests_open_at_most_one_connection_each_and_keep_them() {
    let upstream = FaultUpstream::fixed(Fault::ok()).await;
    let gw = gateway(settings(&upstream.url())).await;
    let client = h1_client();
    let burst = || {
        futures_burst(8, || {
            let client = client.clone();
            let addr = gw.proxy_addr();
            async move {
                send(&client, request(Method::POST, addr, SMS, "{}"))
                    .await
                    .0
            }
        })
    };
    for response in burst().await {
        assert_eq!(response.status(), StatusCode::OK);
    }
    let opened = upstream.accepted();
    assert!(
        (1..=8).contains(&opened),
        "{opened} connections for 8 requests"
    );
    for response in burst().await {
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert!(
        upstream.accepted() <= 8,
        "a second burst opened {} connections in all",
        upstream.accepted()
    );
    assert_eq!(upstream.received().len(), 16);
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_pool_idle_timeout() {
    let upstream = FaultUpstream::fixed(Fault::ok()).await;
    let mut s = settings(&upstream.url());
    s.pool_idle_timeout = Some(Duration::from_millis(200));
    let gw = gateway(s).await;
    let client = h1_client();
    let (response, _) = send(&client, request(Method::POST, gw.proxy_addr(), SMS, "{}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while upstream.closed_by_peer() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        upstream.closed_by_peer(),
        1,
        "the idle connection was closed"
    );
    // The next request connects afresh.
    let (response, _) = send(&client, request(Method::POST, gw.proxy_addr(), SMS, "{}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.accepted(), 2);
}

#[tokio::test]
async fn a_connection_the_upstream_closes_is_not_reused() {
    let close = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_vec();
    let upstream = FaultUpstream::fixed(Fault::Raw(close)).await;
    let gw = gateway(settings(&upstream.url())).await;
    let client = h1_client();
    for _ in 0..5 {
        let (response, _) = send(&client, request(Method::POST, gw.proxy_addr(), SMS, "{}")).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(upstream.accepted(), 5, "one fresh connection per request");
}

#[tokio::test]
async fn a_connection_the_upstream_drops_while_idle_is_replaced_without_losing_a_request() {
    // The pool does not watch idle connections: the next request takes this one, finds it
    // closed before writing anything, and goes out again on a fresh connection.
    let upstream = FaultUpstream::fixed(Fault::OkThenClose {
        after: Duration::from_millis(50),
    })
    .await;
    let mut s = settings(&upstream.url());
    s.pool_idle_timeout = Some(Duration::from_secs(60));
    let gw = gateway(s).await;
    let client = h1_client();
    for i in 0..4 {
        let (response, _) = send(
            &client,
            request(Method::POST, gw.proxy_addr(), SMS, format!("{{\"n\":{i}}}")),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK, "request {i}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(upstream.received().len(), 4, "each request went out once");
    assert_eq!(upstream.accepted(), 4, "one connection per request");
}

#[tokio::test]
async fn a_response_that_ends_before_its_request_body_leaves_the_body_to_finish() {
    // The connection cannot take the next request until the upload is out, so it finishes it
    // on its own and closes; the upload must not be cut short.
    let upstream = FaultUpstream::fixed(Fault::OkBeforeBody).await;
    let gw = gateway(settings(&upstream.url())).await;
    let client = h1_client();
    let upload = vec![b'x'; 4 << 20];
    let (response, _) = send(
        &client,
        request(Method::POST, gw.proxy_addr(), SMS, upload.clone()),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !upstream.received().first().is_some_and(|r| r.body_complete)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = &upstream.received()[0];
    assert!(first.body_complete, "the upload reached the upstream whole");
    assert_eq!(first.body_len, upload.len() as u64);
    let (response, _) = send(&client, request(Method::POST, gw.proxy_addr(), SMS, "{}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.received().len(), 2);
}

/// Runs `n` futures made by `make` at once and collects their outputs.
async fn futures_burst<F, Fut>(n: usize, make: F) -> Vec<Fut::Output>
where
    F: Fn() -> Fut,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|_| tokio::spawn(make())).collect();
    let mut out = Vec::with_capacity(n);
    for task in tasks {
        out.push(task.await.expect("request task"));
    }
    out
}
