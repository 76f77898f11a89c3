//! The per-request work the gateway adds on top of forwarding: naming the operation
//! (catalogue lookup) and recording it (pre-resolved metric handles); and the cost of a
//! `/metrics` scrape with every operation populated.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Method, StatusCode};

use acsgate::catalogue::Catalogue;
use acsgate::metrics::{DEFAULT_BUCKETS, Metrics};

/// An ACS request mix: plain, parameterised, verb-suffixed, colon-laden ids, and misses.
fn mix() -> Vec<(Method, &'static str, Option<&'static str>)> {
    vec![
        (
            Method::POST,
            "/chat/threads/19:a1B2c3D4e5@thread.v2/messages",
            Some("api-version=2025-03-15"),
        ),
        (
            Method::GET,
            "/chat/threads/19:a1B2c3D4e5@thread.v2/messages/1727193000123",
            Some("api-version=2025-03-15"),
        ),
        (Method::POST, "/sms", Some("api-version=2026-01-23")),
        (Method::POST, "/identities", Some("api-version=2022-06-01")),
        (
            Method::POST,
            "/identities/8:acs:1b2c3d4e_0000-1111/:issueAccessToken",
            Some("api-version=2022-06-01"),
        ),
        (
            Method::POST,
            "/calling/callConnections/421f0b00-2b3c:terminate",
            Some("api-version=2023-03-06"),
        ),
        (
            Method::DELETE,
            "/calling/callConnections/421f0b00-2b3c",
            Some("api-version=2021-11-15-preview"),
        ),
        (
            Method::POST,
            "/routing/jobs/job-42/assignments/assign-7:complete",
            Some("api-version=2023-11-01"),
        ),
        (
            Method::PATCH,
            "/rooms/99466898241024408/participants",
            Some("api-version=2024-04-15"),
        ),
        (Method::POST, "/emails:send", Some("api-version=2025-09-01")),
        (Method::GET, "/chat/threads/x/unknown/thing", None),
        (Method::GET, "/nothing/here", None),
    ]
}

fn hot_path(c: &mut Criterion) {
    let catalogue = Catalogue::builtin();
    let metrics = Metrics::new(DEFAULT_BUCKETS.to_vec()).expect("metrics");
    let table = metrics.bind(&catalogue);
    let mix = mix();
    let per_request = |f: &dyn Fn(&Method, &str, Option<&str>)| {
        for (method, path, query) in &mix {
            f(method, path, *query);
        }
    };

    let mut group = c.benchmark_group("per request (mean over a 12-request ACS mix)");
    group.throughput(criterion::Throughput::Elements(mix.len() as u64));
    group.bench_function("classify", |b| {
        b.iter(|| {
            per_request(&|method, path, query| {
                black_box(catalogue.classify(black_box(method), black_box(path), query));
            })
        })
    });
    group.bench_function("classify + record", |b| {
        b.iter(|| {
            per_request(&|method, path, query| {
                let classification = catalogue.classify(black_box(method), black_box(path), query);
                table.get(classification.operation).record(
                    StatusCode::OK,
                    black_box(Duration::from_micros(1500)),
                    None,
                );
            })
        })
    });
    group.finish();

    // Every operation with six statuses populated: the largest scrape a pod normally serves.
    for operation in catalogue.operations() {
        for status in [200u16, 201, 400, 404, 429, 500] {
            let status = StatusCode::from_u16(status).expect("valid status");
            table
                .get(operation.id)
                .record(status, Duration::from_millis(20), None);
        }
    }
    c.bench_function("encode /metrics, every operation x 6 statuses", |b| {
        b.iter(|| black_box(metrics.encode().expect("encodes")))
    });
    // The baseline: the same scrape through the prometheus crate's own text encoder.
    c.bench_function(
        "encode /metrics with prometheus::TextEncoder (baseline)",
        |b| {
            b.iter(|| {
                let mut buffer = Vec::with_capacity(16 * 1024);
                let families = metrics.registry().gather();
                prometheus::Encoder::encode(
                    &prometheus::TextEncoder::new(),
                    &families,
                    &mut buffer,
                )
                .expect("encodes");
                black_box(buffer)
            })
        },
    );
}

/// What an HMAC-signed request costs on top: hash a 1 KiB JSON body, verify the caller's
/// signature, re-sign for the upstream.
fn resign(c: &mut Criterion) {
    use acsgate::auth::hmac::{self, AccessKey, Target};
    let local = AccessKey::from_base64("bG9jYWwta2V5LWZvci10aGUtYmVuY2g=").expect("key");
    let resource = AccessKey::from_base64("cmVzb3VyY2Uta2V5LWZvci10aGUtYmVuY2g=").expect("key");
    let body = vec![b'x'; 1024];
    let method = Method::POST;
    let target = |host| Target {
        method: &method,
        path_and_query: "/emails:send?api-version=2023-03-31",
        host,
    };
    let now = std::time::SystemTime::now();
    let mut signed = http::HeaderMap::new();
    hmac::sign(
        &local,
        target("127.0.0.1:8080"),
        &mut signed,
        &hmac::content_hash(&body),
        now,
    );
    c.bench_function("verify + re-sign, 1 KiB body", |b| {
        b.iter(|| {
            let hash = hmac::content_hash(black_box(&body));
            hmac::verify(&local, target("127.0.0.1:8080"), &signed, &hash, now).expect("valid");
            let mut headers = signed.clone();
            hmac::sign(
                &resource,
                target("res.communication.azure.com"),
                &mut headers,
                &hash,
                now,
            );
            black_box(headers)
        })
    });
}

criterion_group!(benches, hot_path, resign);
criterion_main!(benches);
