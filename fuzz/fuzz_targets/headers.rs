//! The header sanitiser on arbitrary header maps: after `remove_hop_by_hop` no hop-by-hop
//! header and nothing `Connection` named survives, end-to-end headers are untouched, and
//! `add_forwarded` never panics.
#![no_main]

use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

use acsgate::proxy::headers::{add_forwarded, remove_hop_by_hop};

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

fuzz_target!(|data: &[u8]| {
    // One header per line, `name:value`; lines that are not valid headers are skipped.
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let listed: Vec<HeaderName> = headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let before = headers.clone();
    remove_hop_by_hop(&mut headers);
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(listed.iter().map(HeaderName::as_str))
    {
        assert!(!headers.contains_key(name), "{name} survived");
    }
    for name in headers.keys() {
        assert!(!name.as_str().starts_with("proxy-"), "{name} survived");
        // What is left was there before, with all its values.
        let kept: Vec<_> = headers.get_all(name).iter().collect();
        let had: Vec<_> = before.get_all(name).iter().collect();
        assert_eq!(kept, had, "{name} changed");
    }
    // Every end-to-end header that was not named in Connection is still there.
    for name in before.keys() {
        let hop = HOP_BY_HOP.contains(&name.as_str())
            || name.as_str().starts_with("proxy-")
            || listed.contains(name);
        assert!(hop || headers.contains_key(name), "{name} was dropped");
    }
    let host = before.get("host").cloned();
    add_forwarded(
        &mut headers,
        Some(([127, 0, 0, 1], 4000).into()),
        "http",
        host,
    );
    for name in HOP_BY_HOP {
        assert!(!headers.contains_key(name), "{name} came back");
    }
});
