//! Reliability plan group C: request smuggling and malformed HTTP/1 input, byte for byte on a
//! raw socket. Universal criterion: the upstream sees at most one request per client
//! connection and never the smuggled one; after a rejection or a CL + TE request the
//! connection is closed; a rejected request never lands in `acsgate_requests_total`.

mod support;

use std::time::Duration;

use support::faults::{Fault, FaultUpstream, RawReply, raw_exchange};
use support::{gateway, scrape, scrape_until, settings};

const WAIT: Duration = Duration::from_secs(2);

struct Setup {
    upstream: FaultUpstream,
    gw: acsgate::server::Gateway,
}

async fn setup() -> Setup {
    let upstream = FaultUpstream::fixed(Fault::ok()).await;
    let gw = gateway(settings(&upstream.url())).await;
    Setup { upstream, gw }
}

async fn requests_total(s: &Setup) -> f64 {
    scrape(s.gw.admin_addr())
        .await
        .sum("acsgate_requests_total", &[])
}

fn no_smuggled(s: &Setup) {
    for r in s.upstream.received() {
        assert!(
            !r.target.contains("smuggled"),
            "smuggled request ran: {r:?}"
        );
    }
}

/// Sends `input` on a fresh connection and reads what comes back within 500 ms.
async fn exchange(s: &Setup, input: &str) -> RawReply {
    raw_exchange(
        s.gw.proxy_addr(),
        input.as_bytes(),
        Duration::from_millis(500),
    )
    .await
}

const SMUGGLE: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test]
async fn c1_c2_content_length_with_transfer_encoding_is_framed_by_te_and_closes() {
    let s = setup().await;
    let heads = [
        // C1, both orders, body `0\r\n\r\n` then a smuggled request.
        "POST /sms HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /sms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n",
        // C2: TE body longer than CL.
        "POST /sms HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ];
    for (i, head) in heads.iter().enumerate() {
        let reply = raw_exchange(
            s.gw.proxy_addr(),
            format!("{head}{SMUGGLE}").as_bytes(),
            WAIT,
        )
        .await;
        assert_eq!(reply.statuses(), [200], "case {i}: exactly one response");
        assert!(reply.closed, "case {i}: connection closed after CL + TE");
        s.upstream.wait_for_requests(i + 1).await;
        let received = s.upstream.received();
        assert_eq!(received.len(), i + 1, "case {i}: one upstream request");
        let last = received.last().unwrap();
        assert!(last.target.starts_with("/sms"));
        assert!(last.body_complete);
        let expected: &[u8] = if i == 2 { b"hello" } else { b"" };
        assert_eq!(
            last.body_sha256,
            support::faults::sha256(expected),
            "case {i}: TE framing"
        );
        assert_ne!(last.header("content-length"), Some("6"));
        assert_ne!(last.header("content-length"), Some("3"));
    }
    no_smuggled(&s);
    assert_eq!(requests_total(&s).await, 3.0);
}

/// Sends each input and expects 400 (or 501), a closed connection, nothing upstream, nothing
/// counted as a request.
async fn expect_rejected(s: &Setup, corpus: &[(&str, &str)]) {
    for (name, input) in corpus {
        let reply: RawReply = raw_exchange(s.gw.proxy_addr(), input.as_bytes(), WAIT).await;
        let statuses = reply.statuses();
        assert!(
            statuses == [400] || statuses == [501],
            "{name}: got {statuses:?} ({:?})",
            String::from_utf8_lossy(&reply.bytes)
        );
        assert!(reply.closed, "{name}: connection closed");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(s.upstream.received().is_empty(), "upstream untouched");
    assert_eq!(requests_total(s).await, 0.0);
}

#[tokio::test]
async fn c3_obfuscated_transfer_encoding_is_rejected() {
    let s = setup().await;
    let body = "\r\n\r\n0\r\n\r\n";
    let te = |header: &str, version: &str| {
        format!("POST /sms HTTP/{version}\r\nHost: x\r\n{header}{body}{SMUGGLE}")
    };
    let cases = [
        ("xchunked", te("Transfer-Encoding: xchunked", "1.1")),
        (
            "chunked, identity",
            te("Transfer-Encoding: chunked, identity", "1.1"),
        ),
        ("gzip", te("Transfer-Encoding: gzip", "1.1")),
        (
            "space before colon",
            te("Transfer-Encoding : chunked", "1.1"),
        ),
        (
            "chunked on HTTP/1.0",
            te("Transfer-Encoding: chunked", "1.0"),
        ),
    ];
    let corpus: Vec<(&str, &str)> = cases.iter().map(|(n, c)| (*n, c.as_str())).collect();
    expect_rejected(&s, &corpus).await;
}

#[tokio::test]
async fn c3_chunked_applied_twice_is_rejected() {
    let s = setup().await;
    let input = format!(
        "POST /sms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLE}"
    );
    // hyper parses this head, so the gateway itself refuses it: 400 and the connection closed
    // (the smuggled request after it is never read), counted as a request of its operation.
    let reply = raw_exchange(s.gw.proxy_addr(), input.as_bytes(), WAIT).await;
    assert_eq!(
        reply.statuses(),
        [400],
        "{:?}",
        String::from_utf8_lossy(&reply.bytes)
    );
    assert!(reply.closed, "connection closed");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(s.upstream.received().is_empty(), "upstream untouched");
    no_smuggled(&s);
    let m = scrape(s.gw.admin_addr()).await;
    assert_eq!(
        m.sum(
            "acsgate_requests_total",
            &[("operation", "SMSMessageSent"), ("status_code", "400")]
        ),
        1.0
    );
    assert_eq!(
        m.sum("acsgate_gateway_errors_total", &[("kind", "bad_request")]),
        1.0
    );
}

#[tokio::test]
async fn c4_malformed_content_length_is_rejected() {
    let s = setup().await;
    let cl =
        |value: &str| format!("POST /sms HTTP/1.1\r\nHost: x\r\n{value}\r\n\r\nabcdef{SMUGGLE}");
    let cases = [
        (
            "two differing",
            cl("Content-Length: 6\r\nContent-Length: 5"),
        ),
        ("list", cl("Content-Length: 6, 6")),
        ("plus", cl("Content-Length: +6")),
        ("negative", cl("Content-Length: -1")),
        (
            "overflow",
            cl("Content-Length: 000000000000000000000018446744073709551616"),
        ),
        ("inner space", cl("Content-Length: 6 6")),
    ];
    let corpus: Vec<(&str, &str)> = cases.iter().map(|(n, c)| (*n, c.as_str())).collect();
    expect_rejected(&s, &corpus).await;
}

#[tokio::test]
async fn c5_broken_chunked_bodies_never_reach_the_upstream_complete() {
    let s = setup().await;
    let chunked = |body: &str| {
        format!("POST /sms HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
    };
    let cases = [
        chunked("ffffffffffffffffff1\r\nabc\r\n0\r\n\r\n"),
        chunked("zz\r\nabc\r\n0\r\n\r\n"),
        chunked("3\r\nabcXX0\r\n\r\n"),
        chunked(&format!("3;{}\r\nabc\r\n0\r\n\r\n", "e".repeat(64 * 1024))),
    ];
    for (i, case) in cases.iter().enumerate() {
        let reply = raw_exchange(s.gw.proxy_addr(), case.as_bytes(), WAIT).await;
        let statuses = reply.statuses();
        assert!(statuses.len() <= 1, "case {i}: {statuses:?}");
        assert!(statuses.iter().all(|s| *s >= 400), "case {i}: {statuses:?}");
        assert!(reply.closed, "case {i}: connection closed");
    }
    for r in s.upstream.received() {
        assert!(
            !r.body_complete,
            "a broken body reached the upstream complete: {r:?}"
        );
    }
    // Each request the service saw is counted once; none twice.
    let seen = s.upstream.received().len() as f64;
    let m = scrape_until(s.gw.admin_addr(), |m| {
        m.sum("acsgate_requests_in_flight", &[]) == 0.0
    })
    .await;
    let counted = m.sum("acsgate_requests_total", &[]);
    assert!(
        counted >= seen && counted <= cases.len() as f64,
        "{counted} vs {seen}"
    );
}

#[tokio::test]
async fn c6_malformed_header_lines_are_rejected() {
    let s = setup().await;
    let cases = [
        (
            "obs-fold",
            "GET /sms HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n".to_owned(),
        ),
        (
            "NUL in value",
            "GET /sms HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".to_owned(),
        ),
        (
            "CR in value",
            "GET /sms HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n".to_owned(),
        ),
        (
            "bad name byte",
            "GET /sms HTTP/1.1\r\nHost: x\r\nX(A): a\r\n\r\n".to_owned(),
        ),
    ];
    let corpus: Vec<(&str, &str)> = cases.iter().map(|(n, c)| (*n, c.as_str())).collect();
    expect_rejected(&s, &corpus).await;
}

#[tokio::test]
async fn c7_bare_lf_requests_go_upstream_framed_with_crlf() {
    let s = setup().await;
    let input = "POST /sms?api-version=2021-03-07 HTTP/1.1\nHost: x\nContent-Length: 5\nX-Ms-Client-Request-Id: 1\n\nhello";
    let reply = exchange(&s, input).await;
    assert_eq!(reply.statuses(), [200]);
    s.upstream.wait_for_requests(1).await;
    let received = s.upstream.received();
    assert_eq!(received.len(), 1);
    let head = &received[0].raw_head;
    assert!(head.ends_with(b"\r\n\r\n"));
    for (i, byte) in head.iter().enumerate() {
        if *byte == b'\n' {
            assert_eq!(
                head.get(i.wrapping_sub(1)),
                Some(&b'\r'),
                "bare LF upstream at {i}"
            );
        }
    }
    assert_eq!(received[0].body_sha256, support::faults::sha256(b"hello"));
}

#[tokio::test]
async fn c11_hop_by_hop_headers_are_removed_and_host_is_the_upstream() {
    let s = setup().await;
    let input = "POST /sms?api-version=2021-03-07 HTTP/1.1\r\nHost: client.example\r\n\
        Connection: keep-alive, x-foo\r\nx-foo: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
        Upgrade: websocket\r\nProxy-Authorization: Basic eDp5\r\n\
        Authorization: HMAC-SHA256 Signature=abc\r\nContent-Length: 2\r\n\r\n{}";
    let reply = exchange(&s, input).await;
    assert_eq!(reply.statuses(), [200]);
    s.upstream.wait_for_requests(1).await;
    let r = &s.upstream.received()[0];
    for name in [
        "x-foo",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
    ] {
        assert_eq!(r.header(name), None, "{name} was forwarded");
    }
    assert_ne!(r.header("connection"), Some("keep-alive, x-foo"));
    assert_eq!(r.header("host"), Some(s.upstream.addr.to_string().as_str()));
    assert_eq!(r.header("authorization"), Some("HMAC-SHA256 Signature=abc"));
}

#[tokio::test]
async fn c12_underscore_header_names_never_reach_the_upstream_next_to_their_dash_twin() {
    let s = setup().await;
    let input = "GET /sms HTTP/1.1\r\nHost: x\r\nx-ms-date: a\r\nx_ms_date: b\r\n\r\n";
    let reply = exchange(&s, input).await;
    let forwarded = s.upstream.received();
    // Either rejected at the gateway, or forwarded without the underscore variant.
    if reply.statuses() == [400] {
        assert!(forwarded.is_empty());
    } else {
        assert_eq!(forwarded.len(), 1);
        assert_eq!(forwarded[0].header("x_ms_date"), None);
    }
}

#[tokio::test]
async fn c13_connect_and_asterisk_form_are_refused_at_the_gateway() {
    let s = setup().await;
    for input in [
        "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let reply = exchange(&s, input).await;
        let statuses = reply.statuses();
        assert!(
            statuses == [400] || statuses == [405],
            "{input:?}: {statuses:?}, upstream saw {:?}",
            s.upstream
                .received()
                .iter()
                .map(|r| (&r.method, &r.target))
                .collect::<Vec<_>>()
        );
    }
    assert!(s.upstream.received().is_empty());
}

#[tokio::test]
async fn c13_absolute_form_and_encoded_traversal_keep_the_configured_upstream_and_path() {
    let s = setup().await;
    let input = "GET http://evil.example/chat/threads/..%2f..%2fadmin?api-version=2021-09-07 HTTP/1.1\r\n\
        Host: evil.example\r\n\r\n";
    let reply = exchange(&s, input).await;
    assert_eq!(reply.statuses(), [200]);
    s.upstream.wait_for_requests(1).await;
    let r = &s.upstream.received()[0];
    // Origin-form to the configured upstream, the path byte for byte (never decoded).
    assert_eq!(
        r.target,
        "/chat/threads/..%2f..%2fadmin?api-version=2021-09-07"
    );
    assert_eq!(r.header("host"), Some(s.upstream.addr.to_string().as_str()));
}

#[tokio::test]
async fn c14_random_chunkings_and_header_case_reach_the_upstream_byte_identical() {
    let s = setup().await;
    let mut rng = fastrand::Rng::with_seed(0xC14);
    let cases = 40;
    for case in 0..cases {
        let body: Vec<u8> = (0..rng.usize(0..4096)).map(|_| rng.u8(..)).collect();
        // Random chunk boundaries (and random-case hex sizes), random-case header names.
        let mut framed = Vec::new();
        let mut rest = &body[..];
        while !rest.is_empty() {
            let n = rng.usize(1..=rest.len().min(700));
            let size = if rng.bool() {
                format!("{n:x}")
            } else {
                format!("{n:X}")
            };
            framed.extend_from_slice(format!("{size}\r\n").as_bytes());
            framed.extend_from_slice(&rest[..n]);
            framed.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        framed.extend_from_slice(b"0\r\n\r\n");
        let mut name = |n: &str| -> String {
            n.chars()
                .map(|c| {
                    if rng.bool() {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect()
        };
        let mut input = format!(
            "POST /sms?api-version=2021-03-07 HTTP/1.1\r\n{}: x\r\n{}: chunked\r\n{}: close\r\n\r\n",
            name("host"),
            name("transfer-encoding"),
            name("connection"),
        )
        .into_bytes();
        input.extend_from_slice(&framed);
        let reply = raw_exchange(s.gw.proxy_addr(), &input, WAIT).await;
        assert_eq!(reply.statuses(), [200], "case {case}");
        s.upstream.wait_for_requests(case + 1).await;
        let r = &s.upstream.received()[case];
        assert!(r.body_complete, "case {case}");
        assert_eq!(r.body_sha256, support::faults::sha256(&body), "case {case}");
    }
    let m = scrape(s.gw.admin_addr()).await;
    assert_eq!(
        m.sum("acsgate_requests_total", &[("operation", "SMSMessageSent")]),
        cases as f64,
        "every chunking names the same operation"
    );
}
