//! The access log end to end: the real binary with its stdout captured, in front of the fault
//! upstream. Each line is parsed (JSON with serde_json, logfmt with a small parser here) and
//! checked against what was sent and what came back; ids in the path, query values and
//! credentials must never appear.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use support::faults::{Fault, FaultUpstream, GatewayProcess};
use support::pki::TempFile;
use support::{h1_client, request, scrape, send};

const THREAD_ID: &str = "19:SECRET-THREAD-ID@thread.v2";
const QUERY_CANARY: &str = "QUERY-CANARY-5e1";
const TOKEN_CANARY: &str = "Bearer TOKEN-CANARY-eyJ0";
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const ACS_REQUEST_ID: &str = "acs-7f3c-req";

/// The gateway binary with its stdout in a temporary file.
struct Logged {
    gateway: GatewayProcess,
    stdout: TempFile,
}

impl Logged {
    async fn start(upstream: &FaultUpstream, env: &[(&str, &str)]) -> Logged {
        let stdout = TempFile::new("");
        let file = std::fs::File::create(&stdout.0).unwrap();
        let gateway = GatewayProcess::start_with_output(
            &upstream.url(),
            env,
            Stdio::from(file),
            Stdio::null(),
        )
        .await;
        Logged { gateway, stdout }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.stdout.0).unwrap()
    }

    /// Waits (up to 5 s) until `n` lines are on stdout, and returns them all.
    async fn lines(&self, n: usize) -> Vec<String> {
        wait_for_lines(&self.stdout.0, n).await
    }
}

async fn wait_for_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<String> = text.lines().map(String::from).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} lines: {text}",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn json_line(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// An ACS-like answer: 201 with `x-ms-request-id` and a JSON body.
fn acs_created() -> Fault {
    let body = r#"{"id":"1727193000123"}"#;
    Fault::Raw(
        format!(
            "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n\
             x-ms-request-id: {ACS_REQUEST_ID}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

fn with_correlation(
    method: Method,
    proxy: SocketAddr,
    path: &str,
    body: &'static str,
    client_request_id: &str,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = request(method, proxy, path, body);
    let headers = req.headers_mut();
    headers.insert("x-ms-client-request-id", client_request_id.parse().unwrap());
    headers.insert("ms-cv", "cv.1.2".parse().unwrap());
    headers.insert("traceparent", TRACEPARENT.parse().unwrap());
    headers.insert("authorization", TOKEN_CANARY.parse().unwrap());
    req
}

#[tokio::test]
async fn a_json_line_carries_operation_template_status_and_correlation_ids() {
    let upstream = FaultUpstream::fixed(acs_created()).await;
    let logged = Logged::start(&upstream, &[("ACSGATE_ACCESS_LOG", "json")]).await;
    let proxy = logged.gateway.proxy;
    let path =
        format!("/chat/threads/{THREAD_ID}/messages?api-version=2025-03-15&sig={QUERY_CANARY}");
    let body = r#"{"content":"hello"}"#;
    let req = with_correlation(Method::POST, proxy, &path, body, "client-req-1");
    let (response, response_body) = send(&h1_client(), req).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["x-ms-request-id"], ACS_REQUEST_ID);
    // The correlation headers reach ACS unchanged.
    let seen = upstream.received();
    assert_eq!(
        seen[0].header("x-ms-client-request-id"),
        Some("client-req-1")
    );
    assert_eq!(seen[0].header("ms-cv"), Some("cv.1.2"));
    assert_eq!(seen[0].header("traceparent"), Some(TRACEPARENT));

    // A Bad Route with an id in its path: template "-", and still no raw path.
    let bad = format!("/chat/nowhere/{THREAD_ID}?x={QUERY_CANARY}");
    let req = with_correlation(Method::GET, proxy, &bad, "", "client-req-2");
    send(&h1_client(), req).await;

    let lines = logged.lines(2).await;
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let line = json_line(&lines[0]);
    assert_eq!(line["api"], "chat");
    assert_eq!(line["operation"], "SendChatMessage");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["template"], "/chat/threads/{chatThreadId}/messages");
    assert_eq!(line["status"], 201);
    assert_eq!(line["subclass"], "2xx");
    assert_eq!(line["bytes_in"], body.len());
    assert_eq!(line["bytes_out"], response_body.len());
    assert_eq!(line["error"], Value::Null);
    assert_eq!(line["client_request_id"], "client-req-1");
    assert_eq!(line["ms_cv"], "cv.1.2");
    assert_eq!(line["traceparent"], TRACEPARENT);
    assert_eq!(line["x_ms_request_id"], ACS_REQUEST_ID);
    assert!(line["duration_ms"].as_f64().unwrap() > 0.0, "{line}");
    let client: SocketAddr = line["client"].as_str().unwrap().parse().unwrap();
    assert!(client.ip().is_loopback(), "{line}");
    assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
    assert!(line.get("path").is_none(), "{line}");

    let bad = json_line(&lines[1]);
    assert_eq!(bad["operation"], "Bad Route");
    assert_eq!(bad["template"], "-");
    assert_eq!(bad["client_request_id"], "client-req-2");

    let text = logged.text();
    for secret in ["SECRET-THREAD-ID", QUERY_CANARY, "TOKEN-CANARY"] {
        assert!(!text.contains(secret), "{secret} in the access log: {text}");
    }
}

/// Parses one logfmt line: `key=bare` or `key="quoted \" value"`.
fn parse_logfmt(line: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut rest = line.trim_end();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=').expect("key=value");
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next().expect("closing quote") {
                    (i, '"') => break i + 1,
                    (_, '\\') => match chars.next().expect("escape").1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            (value, &quoted[end..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        assert!(
            fields.insert(key.to_owned(), value).is_none(),
            "{key} twice: {line}"
        );
        rest = after.trim_start();
    }
    fields
}

#[tokio::test]
async fn a_logfmt_line_parses_and_shows_the_raw_path_only_when_asked() {
    let upstream = FaultUpstream::fixed(acs_created()).await;
    let logged = Logged::start(
        &upstream,
        &[
            ("ACSGATE_ACCESS_LOG", "logfmt"),
            ("ACSGATE_LOG_RAW_PATH", "true"),
        ],
    )
    .await;
    let bad = format!("/chat/nowhere/{THREAD_ID}?x={QUERY_CANARY}");
    let req = with_correlation(
        Method::GET,
        logged.gateway.proxy,
        &bad,
        "",
        "id with \"quotes\"",
    );
    send(&h1_client(), req).await;
    let lines = logged.lines(1).await;
    let fields = parse_logfmt(&lines[0]);
    assert_eq!(fields["operation"], "Bad Route");
    assert_eq!(fields["template"], "-");
    assert_eq!(fields["path"], format!("/chat/nowhere/{THREAD_ID}"));
    assert_eq!(fields["status"], "201");
    assert_eq!(fields["client_request_id"], "id with \"quotes\"");
    assert_eq!(fields["x_ms_request_id"], ACS_REQUEST_ID);
    assert!(
        !fields.contains_key("error"),
        "absent fields are left out: {fields:?}"
    );
    let text = logged.text();
    assert!(!text.contains(QUERY_CANARY), "{text}");
    assert!(!text.contains("TOKEN-CANARY"), "{text}");
}

#[tokio::test]
async fn a_client_abort_and_a_502_are_logged_exactly_once_each() {
    let upstream = FaultUpstream::start(|r| match r.header("x-fault") {
        Some("hang") => Fault::Hang,
        Some("reset") => Fault::ResetAfterRequest,
        _ => Fault::ok(),
    })
    .await;
    let logged = Logged::start(&upstream, &[("ACSGATE_ACCESS_LOG", "json")]).await;
    let proxy = logged.gateway.proxy;

    // The client goes away while the upstream is still thinking: 499.
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(
            b"POST /sms?api-version=2021-03-07 HTTP/1.1\r\nhost: x\r\n\
              x-ms-client-request-id: abort-1\r\nx-request-id: abort-1\r\nx-fault: hang\r\n\
              content-length: 2\r\n\r\n{}",
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), upstream.wait_for_id("abort-1"))
        .await
        .expect("the request reached the upstream");
    drop(stream);
    let lines = logged.lines(1).await;

    // The upstream resets the connection: 502.
    let mut req = request(Method::POST, proxy, "/sms?api-version=2021-03-07", "{}");
    req.headers_mut()
        .insert("x-ms-client-request-id", "reset-1".parse().unwrap());
    req.headers_mut()
        .insert("x-fault", "reset".parse().unwrap());
    assert_eq!(
        send(&h1_client(), req).await.0.status(),
        StatusCode::BAD_GATEWAY
    );
    // A last request: once its line is out, every earlier one is too.
    let mut req = request(Method::POST, proxy, "/sms?api-version=2021-03-07", "{}");
    req.headers_mut()
        .insert("x-ms-client-request-id", "last".parse().unwrap());
    send(&h1_client(), req).await;
    wait_for_lines(&logged.stdout.0, lines.len() + 2).await;
    // Nothing arrives late either.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines: Vec<Value> = logged.text().lines().map(json_line).collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let by_id = |id: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| l["client_request_id"] == id)
            .collect()
    };
    let abort = by_id("abort-1");
    assert_eq!(abort.len(), 1, "{lines:#?}");
    assert_eq!(abort[0]["status"], 499);
    assert_eq!(abort[0]["error"], "client_abort");
    assert_eq!(abort[0]["operation"], "SMSMessageSent");
    let reset = by_id("reset-1");
    assert_eq!(reset.len(), 1, "{lines:#?}");
    assert_eq!(reset[0]["status"], 502);
    assert_eq!(reset[0]["subclass"], "5xx");
    assert_eq!(reset[0]["error"], "reset");

    // The same statuses as the metrics, and no line dropped.
    let metrics = scrape(logged.gateway.admin).await;
    for status in ["499", "502", "200"] {
        assert_eq!(
            metrics.sum("acsgate_requests_total", &[("status_code", status)]),
            1.0,
            "{status}"
        );
    }
    assert_eq!(metrics.sum("acsgate_access_log_dropped_total", &[]), 0.0);
}
