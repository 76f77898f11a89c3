//! Reliability plan G1 (CI variant) and G4: thousands of requests over HTTP/1.1 and h2c, with
//! faults drawn from a seeded RNG (upstream 4xx/5xx, connection closed, hang → 504, truncated
//! body, client abort → 499), while scrapers hit `/metrics` concurrently. The driver keeps its
//! own ledger of (operation, status) outcomes; after quiescence (in-flight gauge 0) the metric
//! deltas must equal it exactly, and every histogram `_count` must match its counter.
//!
//! `ACSGATE_ACCOUNTING_REQUESTS` sets the request count (default 5,000; the soak tier runs
//! 100,000), `ACSGATE_ACCOUNTING_SEED` the seed.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use http_body_util::BodyExt;

use support::faults::{Fault, FaultUpstream};
use support::{Metrics, gateway, request, scrape, scrape_until, settings};

/// (method, path, operation) — a mix of apis, plus a route the catalogue does not know.
const OPS: [(&str, &str, &str); 8] = [
    ("POST", "/sms?api-version=2021-03-07", "SMSMessageSent"),
    (
        "POST",
        "/identities?api-version=2022-06-01",
        "CreateIdentity",
    ),
    ("POST", "/emails:send?api-version=2023-03-31", "Email_Send"),
    ("GET", "/rooms?api-version=2024-04-15", "ListRooms"),
    (
        "GET",
        "/routing/jobs/job-1?api-version=2023-11-01",
        "GetJob",
    ),
    (
        "POST",
        "/chat/threads/19:a1B2c3D4e5@thread.v2/messages?api-version=2021-09-07",
        "SendChatMessage",
    ),
    ("POST", "/calling/callConnections:answer", "Answer Call"),
    ("GET", "/chat/no-such-route", "Bad Route"),
];

/// What the driver does to one request, and the status the ledger expects for it.
#[derive(Clone, Copy, Debug)]
enum Plan {
    Ok,
    ClientError,
    ServerError,
    Closed,
    Hang,
    Truncated,
    Abort,
}

impl Plan {
    /// 80 % ok, 5 % 4xx, 5 % 500, 3 % closed (502), 3 % hang (504 after 1 s), 2 % abort (499),
    /// 2 % truncated body (200, then the body fails).
    fn draw(rng: &mut fastrand::Rng) -> Plan {
        match rng.u32(0..100) {
            0..80 => Plan::Ok,
            80..85 => Plan::ClientError,
            85..90 => Plan::ServerError,
            90..93 => Plan::Closed,
            93..96 => Plan::Hang,
            96..98 => Plan::Abort,
            _ => Plan::Truncated,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Plan::Ok => "ok",
            Plan::ClientError => "4xx",
            Plan::ServerError => "500",
            Plan::Closed => "closed",
            Plan::Hang | Plan::Abort => "hang",
            Plan::Truncated => "truncated",
        }
    }

    fn expected(self) -> u16 {
        match self {
            Plan::Ok | Plan::Truncated => 200,
            Plan::ClientError => 404,
            Plan::ServerError => 500,
            Plan::Closed => 502,
            Plan::Hang => 504,
            Plan::Abort => 499,
        }
    }
}

fn fault_for(name: Option<&str>) -> Fault {
    match name {
        Some("4xx") => Fault::status(404),
        Some("500") => Fault::status(500),
        Some("closed") => Fault::CloseOnAccept,
        Some("hang") => Fault::Hang,
        Some("truncated") => Fault::Truncate {
            declared: 64,
            sent: 10,
        },
        _ => Fault::ok(),
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

type Ledger = BTreeMap<(String, u16), u64>;

fn ledger_from_metrics(before: &Metrics, after: &Metrics) -> Ledger {
    let mut ledger = Ledger::new();
    for (metrics, sign) in [(after, 1i64), (before, -1i64)] {
        for s in metrics
            .samples
            .iter()
            .filter(|s| s.name == "acsgate_requests_total")
        {
            let key = (
                s.label("operation").to_owned(),
                s.label("status_code").parse().unwrap(),
            );
            let entry = ledger.entry(key).or_default();
            *entry = (*entry as i64 + sign * s.value as i64) as u64;
        }
    }
    ledger.retain(|_, n| *n > 0);
    ledger
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_every_request_is_counted_exactly_once_under_random_faults() {
    let total = env_or("ACSGATE_ACCOUNTING_REQUESTS", 5_000) as usize;
    let seed = env_or("ACSGATE_ACCOUNTING_SEED", 0x5eed);
    let upstream = Arc::new(FaultUpstream::start(|r| fault_for(r.header("x-fault"))).await);
    let mut s = settings(&upstream.url());
    s.response_timeout = Some(Duration::from_secs(1));
    s.body_idle_timeout = Some(Duration::from_secs(2));
    let gw = gateway(s).await;
    let (proxy, admin) = (gw.proxy_addr(), gw.admin_addr());

    let mut rng = fastrand::Rng::with_seed(seed);
    let plans: Arc<Vec<(usize, Plan, bool)>> = Arc::new(
        (0..total)
            .map(|_| (rng.usize(0..OPS.len()), Plan::draw(&mut rng), rng.bool()))
            .collect(),
    );
    let mut expected = Ledger::new();
    for (op, plan, _) in plans.iter() {
        *expected
            .entry((OPS[*op].2.to_owned(), plan.expected()))
            .or_default() += 1;
    }

    let before = scrape(admin).await;
    // G4: scrapers run throughout and must not perturb the counts.
    let scraping = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let scrapers: Vec<_> = (0..2)
        .map(|_| {
            let scraping = Arc::clone(&scraping);
            tokio::spawn(async move {
                let mut scrapes = 0u32;
                while scraping.load(std::sync::atomic::Ordering::Relaxed) {
                    scrape(admin).await;
                    scrapes += 1;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                scrapes
            })
        })
        .collect();

    const WORKERS: usize = 128;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let plans = Arc::clone(&plans);
        let upstream = Arc::clone(&upstream);
        workers.spawn(async move {
            let (h1, h2) = support::faults::fast_clients();
            let mut seen = Ledger::new();
            for i in (w..plans.len()).step_by(WORKERS) {
                let (op, plan, use_h2) = plans[i];
                let (method, path, operation) = OPS[op];
                let mut req = request(method.parse::<Method>().unwrap(), proxy, path, "{}");
                let id = i.to_string();
                let headers = req.headers_mut();
                headers.insert("x-fault", plan.name().parse().unwrap());
                headers.insert("x-request-id", id.parse().unwrap());
                let client = if use_h2 { &h2 } else { &h1 };
                let status = if let Plan::Abort = plan {
                    // Hang up only once the request reached the upstream, so the gateway has
                    // surely begun it; then the 499 is the only possible record.
                    let response = client.request(req);
                    tokio::pin!(response);
                    let wait = upstream.wait_for_id(&id);
                    tokio::select! {
                        _ = wait => {}
                        r = &mut response => panic!("request {i} answered before the abort: {r:?}"),
                    }
                    499
                } else {
                    let response =
                        tokio::time::timeout(Duration::from_secs(10), client.request(req))
                            .await
                            .expect("answer within 10 s");
                    match response {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            // A truncated body must fail; everything else ends cleanly.
                            let body = response.into_body().collect().await;
                            assert_eq!(
                                body.is_err(),
                                matches!(plan, Plan::Truncated),
                                "request {i}"
                            );
                            status
                        }
                        // The 200 head, the first bytes and the abort can reach the client
                        // together (h2: HEADERS, DATA and RST_STREAM in one read), or hyper can
                        // fail the connection before it flushed the head (h1): the client then
                        // reports only the error. The gateway produced the 200, and counts that.
                        Err(_) if matches!(plan, Plan::Truncated) => 200,
                        Err(error) => panic!("request {i} ({plan:?}) got no answer: {error:?}"),
                    }
                };
                assert_eq!(status, plan.expected(), "request {i} ({plan:?})");
                *seen.entry((operation.to_owned(), status)).or_default() += 1;
            }
            seen
        });
    }
    let mut seen = Ledger::new();
    while let Some(ledger) = workers.join_next().await {
        for (k, n) in ledger.unwrap() {
            *seen.entry(k).or_default() += n;
        }
    }
    scraping.store(false, std::sync::atomic::Ordering::Relaxed);
    for scraper in scrapers {
        assert!(scraper.await.unwrap() > 0);
    }
    assert_eq!(seen, expected, "the clients saw what the seed planned");

    let after = scrape_until(admin, |m| {
        m.sum("acsgate_requests_in_flight", &[]) == 0.0
            && m.sum("acsgate_requests_total", &[]) - before.sum("acsgate_requests_total", &[])
                >= total as f64
    })
    .await;
    assert_eq!(after.sum("acsgate_requests_in_flight", &[]), 0.0);
    assert_eq!(ledger_from_metrics(&before, &after), expected);
    assert_eq!(
        after.sum("acsgate_requests_total", &[]) - before.sum("acsgate_requests_total", &[]),
        total as f64
    );
    println!("soak| accounting (seed {seed:#x}) | requests sent | {total}");
    println!(
        "soak| accounting (seed {seed:#x}) | requests counted | {}",
        after.sum("acsgate_requests_total", &[]) - before.sum("acsgate_requests_total", &[])
    );
    // Histogram `_count` equals the counter for every (operation, status subclass).
    for (_, _, operation) in OPS {
        for subclass in ["2xx", "4xx", "5xx"] {
            let labels = [("operation", operation), ("status_subclass", subclass)];
            let delta = |name: &str| after.sum(name, &labels) - before.sum(name, &labels);
            assert_eq!(
                delta("acsgate_request_duration_seconds_count"),
                delta("acsgate_requests_total"),
                "{operation} {subclass}"
            );
        }
    }
    // Every upstream failure the plan injected is an upstream error, and nothing else is.
    let errors = |kind: &str| after.sum("acsgate_upstream_errors_total", &[("kind", kind)]);
    let planned = |p: fn(&Plan) -> bool| plans.iter().filter(|(_, plan, _)| p(plan)).count() as f64;
    assert_eq!(errors("timeout"), planned(|p| matches!(p, Plan::Hang)));
    assert_eq!(
        errors("reset"),
        planned(|p| matches!(p, Plan::Closed | Plan::Truncated))
    );
    assert_eq!(
        after.sum("acsgate_upstream_errors_total", &[]),
        errors("timeout") + errors("reset")
    );
}
