//! The path normaliser and operation namer on arbitrary method, path and query: never panics,
//! always names one of the catalogue's operations, and names it the same way every time.
#![no_main]

use std::sync::OnceLock;

use acsgate::catalogue::Catalogue;
use http::Method;
use libfuzzer_sys::fuzz_target;

const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT",
];

fuzz_target!(|data: &[u8]| {
    static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();
    let catalogue = CATALOGUE.get_or_init(Catalogue::builtin);
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    // The low bits pick a common method; otherwise the text before the first space is one.
    let (method, target) = if selector < 0xf0 {
        (
            Method::from_bytes(METHODS[usize::from(selector) % METHODS.len()].as_bytes()).unwrap(),
            &*text,
        )
    } else {
        match text.split_once(' ') {
            Some((m, t)) => match Method::from_bytes(m.as_bytes()) {
                Ok(m) => (m, t),
                Err(_) => return,
            },
            None => return,
        }
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let first = catalogue.classify(&method, path, query);
    assert!(first.operation.index() < catalogue.operations().len());
    let again = catalogue.classify(&method, path, query);
    assert_eq!(first.operation, again.operation);
});
