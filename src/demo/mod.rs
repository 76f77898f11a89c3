//! `acsgate demo`: the gateway in front of a simulated ACS, a traffic mix through it, and the
//! per-operation table read back from its own `/metrics`. Needs no Azure account.
//!
//! 1. [`sim::SimUpstream`] answers every catalogue route on a loopback port.
//! 2. A [`Gateway`] starts with the user's settings, its upstream replaced by the simulator.
//! 3. [`traffic`] sends a deterministic mix of every route (and some unknown ones) through it.
//! 4. `/metrics` is scraped and parsed with [`scrape`], and [`report`] prints the table.
//! 5. The gateway keeps serving until Ctrl-C, for `--duration`, or not at all (`--once`).

pub mod report;
pub mod scrape;
pub mod sim;
pub mod traffic;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::catalogue::Catalogue;
use crate::cli::DemoArgs;
use crate::config::{Config, Settings};
use crate::server::{Gateway, StartError, shutdown_signal};
use report::Report;
use sim::SimUpstream;

/// How long to wait for the last requests to show up in `/metrics` (a request is recorded when
/// the gateway finishes its response body, which can be just after the client has read it).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs the demo. Every failure is returned as one line.
pub async fn run(args: DemoArgs, mut settings: Settings) -> Result<(), String> {
    if let Some(upstream) = settings.upstream.take() {
        tracing::info!(%upstream, "the demo ignores the configured upstream and uses its simulated ACS");
    }
    let files = settings.catalogue.clone().unwrap_or_default();
    let catalogue = Catalogue::load(settings.builtin_catalogue.unwrap_or(true), &files)
        .map(Arc::new)
        .map_err(|e| e.to_string())?;
    let sim = SimUpstream::start(Arc::clone(&catalogue), args.seed)
        .await
        .map_err(|e| format!("cannot start the simulated ACS upstream: {e}"))?;
    settings.upstream = Some(sim.url());
    let gateway = match start_gateway(settings, Arc::clone(&catalogue)).await {
        Ok(gateway) => gateway,
        Err(message) => {
            sim.shutdown().await;
            return Err(message);
        }
    };
    let result = demonstrate(&args, &catalogue, &sim, &gateway).await;
    if result.is_err() {
        gateway.shutdown().await;
        sim.shutdown().await;
        return result;
    }

    let proxy = format!("http://{}", gateway.proxy_addr());
    let metrics = format!("http://{}/metrics", gateway.admin_addr());
    if args.once {
        println!("--once: shutting down.");
        gateway.shutdown().await;
    } else if let Some(duration) = args.duration {
        println!(
            "Serving the proxy at {proxy} and metrics at {metrics} for {} (Ctrl-C stops sooner).",
            humantime::format_duration(duration)
        );
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = shutdown_signal() => {}
        }
        gateway.shutdown().await;
    } else {
        println!(
            "Still serving: the proxy at {proxy} (in front of the simulated ACS) and metrics at \
             {metrics}. Try `curl -i '{proxy}/chat/threads?api-version=2025-03-15'`, then look \
             at the metrics again. Press Ctrl-C to stop."
        );
        gateway.run_until_signal().await;
    }
    sim.shutdown().await;
    Ok(())
}

async fn start_gateway(settings: Settings, catalogue: Arc<Catalogue>) -> Result<Gateway, String> {
    let config = Config::from_settings(settings).map_err(|e| e.to_string())?;
    Gateway::start_with(&config, catalogue)
        .await
        .map_err(|error| match &error {
            StartError::Bind { what, source, .. }
                if source.kind() == std::io::ErrorKind::AddrInUse =>
            {
                let option = if *what == "admin" { "--admin" } else { "--listen" };
                format!("{error} (another process uses it; pass {option} with a free port, or 127.0.0.1:0 for any)")
            }
            _ => error.to_string(),
        })
}

/// Sends the traffic, then prints the table read from `/metrics`.
async fn demonstrate(
    args: &DemoArgs,
    catalogue: &Catalogue,
    sim: &SimUpstream,
    gateway: &Gateway,
) -> Result<(), String> {
    let plan = traffic::plan(catalogue, args.requests, args.seed);
    let metrics_url = format!("http://{}/metrics", gateway.admin_addr());
    println!(
        "acsgate demo: simulated ACS at {}, gateway proxy at http://{}, metrics at {metrics_url}",
        sim.url(),
        gateway.proxy_addr()
    );
    println!(
        "Sending {} requests over {} routes (+ unknown ones) with {} workers, seed {}…",
        plan.len(),
        catalogue.routes().len(),
        args.concurrency.max(1),
        args.seed
    );

    let progress = progress_bar(plan.len() as u64);
    let started = Instant::now();
    let outcome = traffic::drive(
        gateway.proxy_addr(),
        plan,
        args.concurrency,
        progress.clone(),
    )
    .await;
    progress.finish_and_clear();
    let elapsed = started.elapsed();

    let report = settled_report(gateway.admin_addr(), outcome.answered).await?;
    println!();
    print!("{}", report.render());
    println!();
    let rate = outcome.answered as f64 / elapsed.as_secs_f64().max(1e-3);
    println!(
        "{} answered in {:.2}s ({rate:.0} requests/s), {} failed without an answer{}",
        outcome.answered,
        elapsed.as_secs_f64(),
        outcome.failed,
        outcome
            .first_error
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    println!("Metrics: {metrics_url}");
    Ok(())
}

fn progress_bar(len: u64) -> ProgressBar {
    // Only a person watching a terminal wants the bar; logs and pipes would get escape codes.
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:40.cyan/blue} {pos}/{len} requests ({per_sec}, {elapsed})",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Scrapes until every answered request is counted, or [`SETTLE_TIMEOUT`] passes.
async fn settled_report(admin: SocketAddr, answered: u64) -> Result<Report, String> {
    let client = traffic::client(false);
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let text = fetch_metrics(&client, admin).await?;
        let samples = scrape::parse(&text).map_err(|e| format!("reading {admin}/metrics: {e}"))?;
        let report = Report::from_samples(&samples);
        if report.total().count >= answered || Instant::now() >= deadline {
            return Ok(report);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn fetch_metrics(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    admin: SocketAddr,
) -> Result<String, String> {
    let url = format!("http://{admin}/metrics");
    let request = Request::get(&url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("GET {url}: {e}"))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("GET {url}: {}", traffic::chain(&e)))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("GET {url}: reading the body: {e}"))?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(format!("GET {url}: status {status}"));
    }
    String::from_utf8(body.to_vec()).map_err(|_| format!("GET {url}: the body is not UTF-8"))
}
