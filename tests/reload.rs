//! Hot reload (issue 7): routes added and removed, an invalid file refused while the old
//! configuration serves on, settings that need a restart, bucket and label changes, and the
//! real binary reloading on a file change and on SIGHUP under a steady stream of requests
//! without failing one or losing a count.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use acsgate::config::{Config, Settings};
use acsgate::reload::{ConfigSource, ConfigWatch, ReloadError, ReloadSummary};
use acsgate::server::Gateway;
use http::{Method, StatusCode};
use support::faults::GatewayProcess;
use support::{Upstream, h1_client, h2_client, request, scrape, scrape_until, send, settings};

/// A directory of its own for a test's files, removed when dropped (watching a shared
/// directory would see every other test's files).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("acsgate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Writes `contents` to `name`; see [`write_over`].
    fn write(&self, name: &str, contents: &str) -> PathBuf {
        write_over(&self.0, name, contents)
    }
}

/// Writes `contents` to `name` in `dir` the way editors and ConfigMaps do: aside, then renamed
/// over.
fn write_over(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    let aside = dir.join(format!(".{name}.tmp"));
    std::fs::write(&aside, contents).unwrap();
    std::fs::rename(&aside, &path).unwrap();
    path
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A catalogue file with one api, `custom`, and one GET route per `(path, operation)`.
fn custom_catalogue(routes: &[(&str, &str)]) -> String {
    let mut text = String::from("[[api]]\nname = \"custom\"\nprefixes = [\"/custom\"]\n");
    for (path, operation) in routes {
        text.push_str(&format!(
            "\n[[route]]\napi = \"custom\"\noperation = \"{operation}\"\nmethod = \"GET\"\npath = \"{path}\"\n"
        ));
    }
    text
}

/// A library gateway whose extra catalogue file, in a directory of its own, names
/// `/custom/alpha` `Alpha`.
struct Fixture {
    upstream: Upstream,
    dir: TempDir,
    file: PathBuf,
    gateway: Gateway,
}

impl Fixture {
    async fn start(name: &str) -> Fixture {
        let upstream = Upstream::ok().await;
        let dir = TempDir::new(name);
        let file = dir.write(
            "custom.toml",
            &custom_catalogue(&[("/custom/alpha", "Alpha")]),
        );
        let config = config_with(&upstream, file.clone(), |_| {});
        let gateway = Gateway::start(&config).await.unwrap();
        Fixture {
            upstream,
            dir,
            file,
            gateway,
        }
    }

    /// The catalogue file rewritten to `routes`.
    fn rewrite(&self, routes: &[(&str, &str)]) {
        self.dir.write("custom.toml", &custom_catalogue(routes));
    }

    /// Reloads the gateway with the fixture's settings, edited.
    fn reload(&self, edit: impl FnOnce(&mut Settings)) -> Result<ReloadSummary, ReloadError> {
        let config = config_with(&self.upstream, self.file.clone(), edit);
        self.gateway.reload(config)
    }
}

fn config_with(
    upstream: &Upstream,
    catalogue: PathBuf,
    edit: impl FnOnce(&mut Settings),
) -> Config {
    let mut settings = Settings {
        catalogue: Some(vec![catalogue]),
        ..settings(&upstream.url())
    };
    edit(&mut settings);
    Config::from_settings(settings).expect("valid settings")
}

async fn get(gateway: &Gateway, path: &str) -> StatusCode {
    let (response, _) = send(
        &h1_client(),
        request(Method::GET, gateway.proxy_addr(), path, ""),
    )
    .await;
    response.status()
}

fn count(metrics: &support::Metrics, operation: &str) -> f64 {
    metrics.sum("acsgate_requests_total", &[("operation", operation)])
}

/// Scrapes until `n` reloads have succeeded (the scrape gives up after a while) and checks
/// that exactly `n` did; `context` says what to show when not.
async fn assert_reloaded(
    admin: SocketAddr,
    n: f64,
    context: impl Fn(&support::Metrics) -> String,
) -> support::Metrics {
    let successes =
        |m: &support::Metrics| m.sum("acsgate_config_reloads_total", &[("result", "success")]);
    let metrics = scrape_until(admin, |m| successes(m) >= n).await;
    assert_eq!(successes(&metrics), n, "{}", context(&metrics));
    metrics
}

#[tokio::test]
async fn a_route_added_and_one_removed_keep_the_other_counts() {
    let fixture = Fixture::start("routes").await;
    let gateway = &fixture.gateway;
    for _ in 0..3 {
        assert_eq!(get(gateway, "/custom/alpha").await, StatusCode::OK);
    }
    assert_eq!(
        get(gateway, "/identities/x?api-version=2023-10-01").await,
        StatusCode::OK
    );
    let before = scrape(gateway.admin_addr()).await;
    assert_eq!(count(&before, "Alpha"), 3.0);
    let identity = before.sum("acsgate_requests_total", &[("api", "identity")]);
    assert_eq!(identity, 1.0);

    fixture.rewrite(&[("/custom/beta", "Beta")]);
    let summary = fixture.reload(|_| {}).expect("reload succeeds");
    assert_eq!(summary.added, ["custom/Beta"]);
    assert_eq!(summary.removed, ["custom/Alpha"]);
    assert!(summary.needs_restart.is_empty(), "{summary:?}");

    assert_eq!(get(gateway, "/custom/beta").await, StatusCode::OK);
    assert_eq!(get(gateway, "/custom/alpha").await, StatusCode::OK);
    let after = scrape(gateway.admin_addr()).await;
    assert!(
        !after.text.contains("operation=\"Alpha\""),
        "{}",
        after.text
    );
    assert_eq!(count(&after, "Beta"), 1.0);
    // The old path is now the custom api's Bad Route.
    assert_eq!(
        after.sum(
            "acsgate_requests_total",
            &[("api", "custom"), ("operation", "Bad Route")]
        ),
        1.0
    );
    // Operations in both catalogues kept their values.
    assert_eq!(
        after.sum("acsgate_requests_total", &[("api", "identity")]),
        identity
    );
    assert_eq!(
        after.sum("acsgate_config_reloads_total", &[("result", "success")]),
        1.0
    );
    fixture.gateway.shutdown().await;
}

#[tokio::test]
async fn an_invalid_file_is_refused_and_the_old_configuration_serves_on() {
    let fixture = Fixture::start("invalid").await;
    let gateway = &fixture.gateway;
    let started = scrape(gateway.admin_addr()).await;
    let stamp = started.sum("acsgate_config_last_reload_success_timestamp_seconds", &[]);
    assert!(
        stamp > 1.0e9,
        "start-up stamps the last successful load: {stamp}"
    );

    for broken in [
        "[[route]]\napi = \"custom\"\noperation = \"X\"\nmethod = \"GET\"\npath = \"/custom/{unclosed\"\n",
        "this is not toml",
    ] {
        fixture.dir.write("custom.toml", broken);
        let error = fixture
            .reload(|_| {})
            .expect_err("an invalid catalogue is refused");
        assert!(error.to_string().contains("custom.toml"), "{error}");
    }
    assert_eq!(get(gateway, "/custom/alpha").await, StatusCode::OK);
    let metrics = scrape(gateway.admin_addr()).await;
    assert_eq!(
        count(&metrics, "Alpha"),
        1.0,
        "the old catalogue still names it"
    );
    assert_eq!(
        metrics.sum("acsgate_config_reloads_total", &[("result", "failure")]),
        2.0
    );
    assert_eq!(
        metrics.sum("acsgate_config_reloads_total", &[("result", "success")]),
        0.0
    );
    assert_eq!(
        metrics.sum("acsgate_config_last_reload_success_timestamp_seconds", &[]),
        stamp,
        "a failed reload does not move the success stamp"
    );
    fixture.gateway.shutdown().await;
}

/// A new upstream takes effect on the next request, even on a client connection that was
/// open before, and no pooled connection to the old upstream carries it.
#[tokio::test]
async fn a_new_upstream_gets_the_next_request() {
    let fixture = Fixture::start("upstream").await;
    let gateway = &fixture.gateway;
    let client = h1_client();
    let alpha = || request(Method::GET, gateway.proxy_addr(), "/custom/alpha", "");
    assert_eq!(send(&client, alpha()).await.0.status(), StatusCode::OK);
    let next = Upstream::ok().await;
    let config = config_with(&next, fixture.file.clone(), |_| {});
    gateway.reload(config).expect("reload succeeds");
    assert_eq!(send(&client, alpha()).await.0.status(), StatusCode::OK);
    assert_eq!(
        fixture.upstream.seen().len(),
        1,
        "the old upstream saw only the first"
    );
    assert_eq!(next.seen().len(), 1, "the new upstream got the second");
    fixture.gateway.shutdown().await;
}

/// A reload that fails late (the extra CA file is not PEM; only building the client finds
/// out) changes nothing either: the histogram keeps its buckets and its counts.
#[tokio::test]
async fn a_reload_failing_late_leaves_every_metric_family_as_it_was() {
    let fixture = Fixture::start("late").await;
    let gateway = &fixture.gateway;
    assert_eq!(get(gateway, "/custom/alpha").await, StatusCode::OK);
    let not_pem = fixture.dir.write("ca.pem", "not a certificate");
    let error = fixture
        .reload(|s| {
            s.buckets = Some(vec![0.5, 2.0]);
            s.metrics_status_code = Some(false);
            s.extra_ca_file = Some(not_pem);
        })
        .expect_err("the CA file is refused");
    assert!(error.to_string().contains("ca.pem"), "{error}");
    let metrics = scrape(gateway.admin_addr()).await;
    assert_eq!(
        metrics.sum(
            "acsgate_request_duration_seconds_count",
            &[("operation", "Alpha")]
        ),
        1.0
    );
    assert!(metrics.text.contains("le=\"0.005\""), "{}", metrics.text);
    assert_eq!(
        metrics.sum("acsgate_requests_total", &[("status_code", "200")]),
        1.0
    );
    fixture.gateway.shutdown().await;
}

#[tokio::test]
async fn listener_changes_need_a_restart_and_the_old_listener_stays() {
    let fixture = Fixture::start("listen").await;
    let gateway = &fixture.gateway;
    let summary = fixture
        .reload(|s| {
            s.listen = Some("127.0.0.1:1".parse().unwrap());
            s.max_connections = Some(7);
            s.response_timeout = Some(Duration::from_secs(3));
        })
        .expect("the rest of the reload applies");
    assert_eq!(summary.needs_restart, ["listen", "max_connections"]);
    assert_eq!(get(gateway, "/custom/alpha").await, StatusCode::OK);
    fixture.gateway.shutdown().await;
}

#[tokio::test]
async fn buckets_and_labels_change_on_reload() {
    let fixture = Fixture::start("buckets").await;
    let gateway = &fixture.gateway;
    get(gateway, "/custom/alpha").await;
    fixture
        .reload(|s| {
            s.buckets = Some(vec![0.5, 2.0]);
            s.metrics_duration_operation = Some(false);
            s.metrics_status_code = Some(false);
        })
        .expect("reload succeeds");
    get(gateway, "/custom/alpha").await;
    let metrics = scrape(gateway.admin_addr()).await;
    let buckets: Vec<_> = metrics
        .samples
        .iter()
        .filter(|s| s.name == "acsgate_request_duration_seconds_bucket")
        .collect();
    assert!(!buckets.is_empty());
    for sample in &buckets {
        assert!(
            !sample.labels.contains_key("operation"),
            "{:?}",
            sample.labels
        );
        let le = sample.labels["le"].as_str();
        assert!(["0.5", "2", "+Inf"].contains(&le), "{le}");
    }
    for sample in metrics
        .samples
        .iter()
        .filter(|s| s.name == "acsgate_requests_total")
    {
        assert!(
            !sample.labels.contains_key("status_code"),
            "{:?}",
            sample.labels
        );
    }
    // Re-labelled families start over: only the request after the reload is in them.
    assert_eq!(count(&metrics, "Alpha"), 1.0);
    fixture.gateway.shutdown().await;
}

/// What a library gateway reloads from: the upstream and `catalogue`; `after_read` runs after
/// each read.
fn catalogue_source(
    upstream: &Upstream,
    catalogue: PathBuf,
    after_read: impl Fn() + Send + Sync + 'static,
) -> ConfigSource {
    let url = upstream.url();
    Arc::new(move || {
        let settings = Settings {
            catalogue: Some(vec![catalogue.clone()]),
            ..settings(&url)
        };
        let config = Config::from_settings(settings).map_err(|e| e.to_string());
        after_read();
        config
    })
}

/// A library gateway serving the catalogue file `custom.toml` in `dir` (`/custom/alpha`
/// named `Alpha`), with its watch started before it listens; the watching task is not yet
/// running.
async fn watched_gateway(
    upstream: &Upstream,
    dir: &TempDir,
    after_read: impl Fn() + Send + Sync + 'static,
) -> (Gateway, ConfigWatch, ConfigSource) {
    let file = dir.write(
        "custom.toml",
        &custom_catalogue(&[("/custom/alpha", "Alpha")]),
    );
    let source = catalogue_source(upstream, file, after_read);
    let config = source().expect("valid settings");
    let watch = ConfigWatch::start(None, &config);
    let gateway = Gateway::start(&config).await.unwrap();
    (gateway, watch, source)
}

/// The watch takes the files in hand when it starts, before the gateway serves: an edit made
/// before the watching task first runs is still reloaded.
#[tokio::test]
async fn an_edit_made_as_the_gateway_starts_is_reloaded() {
    let upstream = Upstream::ok().await;
    let dir = TempDir::new("early-edit");
    let (gateway, watch, source) = watched_gateway(&upstream, &dir, || {}).await;
    dir.write(
        "custom.toml",
        &custom_catalogue(&[("/custom/beta", "Beta")]),
    );
    gateway.watch_config(watch, source, None);

    assert_reloaded(gateway.admin_addr(), 1.0, |m| m.text.clone()).await;
    assert_eq!(get(&gateway, "/custom/beta").await, StatusCode::OK);
    assert_eq!(count(&scrape(gateway.admin_addr()).await, "Beta"), 1.0);
    gateway.shutdown().await;
}

/// An edit that lands just after a reload has read the files (here: written by the read
/// itself, once) is reloaded too: the contents the reload read are remembered as they were
/// before the read, so the edit's own event finds them changed.
#[tokio::test]
async fn an_edit_landing_as_a_reload_reads_is_reloaded_too() {
    let upstream = Upstream::ok().await;
    let dir = TempDir::new("edit-during-read");
    let reads = Arc::new(AtomicU64::new(0));
    let after_read = {
        let (dir, reads) = (dir.0.clone(), Arc::clone(&reads));
        move || {
            // Read 1 is the gateway's own, at start-up; read 2 is the reload's.
            if reads.fetch_add(1, Ordering::SeqCst) + 1 == 2 {
                let late = custom_catalogue(&[("/custom/late", "Late")]);
                write_over(&dir, "custom.toml", &late);
            }
        }
    };
    let (gateway, watch, source) = watched_gateway(&upstream, &dir, after_read).await;
    gateway.watch_config(watch, source, None);
    dir.write(
        "custom.toml",
        &custom_catalogue(&[("/custom/beta", "Beta")]),
    );

    assert_reloaded(gateway.admin_addr(), 2.0, |m| m.text.clone()).await;
    assert_eq!(reads.load(Ordering::SeqCst), 3);
    assert_eq!(get(&gateway, "/custom/late").await, StatusCode::OK);
    assert_eq!(count(&scrape(gateway.admin_addr()).await, "Late"), 1.0);
    gateway.shutdown().await;
}

/// The binary with a config file: a catalogue edit reloads it without a signal, SIGHUP reloads
/// it too, a broken config file is refused, and a steady stream of HTTP/1.1 and h2c requests
/// across all of it gets every answer, counted exactly once, the counts never going backwards.
#[tokio::test]
async fn the_binary_reloads_under_load_without_losing_a_request() {
    let upstream = Upstream::ok().await;
    let dir = TempDir::new("binary");
    let catalogue = dir.write("custom.toml", &custom_catalogue(&[("/custom/v0", "V0")]));
    let config = dir.write(
        "acsgate.toml",
        &format!(
            "catalogue = [{:?}]\nresponse_timeout = \"5s\"\n",
            catalogue.display().to_string()
        ),
    );
    let gateway = GatewayProcess::start(
        &upstream.url(),
        &[("ACSGATE_CONFIG", config.to_str().unwrap())],
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for h2 in [false, false, true, true] {
        let (stop, sent, proxy) = (Arc::clone(&stop), Arc::clone(&sent), gateway.proxy);
        clients.push(tokio::spawn(async move {
            let client = if h2 { h2_client() } else { h1_client() };
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let path = "/identities?api-version=2023-10-01";
                let (response, _) = send(&client, request(Method::POST, proxy, path, "{}")).await;
                sent.fetch_add(1, Ordering::Relaxed);
                if response.status() != StatusCode::OK {
                    failures.push(response.status());
                }
            }
            failures
        }));
    }

    let mut last_total = 0.0;
    for round in 1..=6u32 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        if round % 2 == 1 {
            // A file change alone must do it.
            let routes = [
                ("/custom/v0", "V0"),
                ("/custom/next", &*format!("V{round}")),
            ];
            dir.write("custom.toml", &custom_catalogue(&routes));
        } else {
            let status = std::process::Command::new("kill")
                .args(["-HUP", &gateway.pid().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }
        let metrics = assert_reloaded(gateway.admin, f64::from(round), |m| {
            format!("round {round}: {}", m.text)
        })
        .await;
        let total = metrics.sum("acsgate_requests_total", &[("api", "identity")]);
        assert!(
            total >= last_total,
            "counts went back: {total} < {last_total}"
        );
        last_total = total;
    }
    // A broken config file is refused while the stream goes on.
    dir.write("acsgate.toml", "response_timeout = \"soon\"\n");
    let metrics = scrape_until(gateway.admin, |m| {
        m.sum("acsgate_config_reloads_total", &[("result", "failure")]) >= 1.0
    })
    .await;
    assert_eq!(
        metrics.sum("acsgate_config_reloads_total", &[("result", "failure")]),
        1.0
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let failures = client.await.unwrap();
        assert!(failures.is_empty(), "failed answers: {failures:?}");
    }
    let sent = sent.load(Ordering::Relaxed) as f64;
    let metrics = scrape_until(gateway.admin, |m| {
        m.sum("acsgate_requests_total", &[("api", "identity")]) >= sent
    })
    .await;
    assert!(sent > 50.0, "the stream ran: {sent}");
    assert_eq!(
        metrics.sum("acsgate_requests_total", &[("api", "identity")]),
        sent
    );
    assert_eq!(
        metrics.sum(
            "acsgate_request_duration_seconds_count",
            &[("api", "identity")]
        ),
        sent
    );
    // The last file edit's route is the one serving.
    let (response, _) = send(
        &h1_client(),
        request(Method::GET, gateway.proxy, "/custom/next", ""),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let metrics = scrape_until(gateway.admin, |m| count(m, "V5") >= 1.0).await;
    assert_eq!(count(&metrics, "V5"), 1.0, "{}", metrics.text);
}

/// `log_level` from the config file applies at start-up and changes on reload, no restart.
#[tokio::test]
async fn the_log_level_changes_on_reload() {
    let upstream = Upstream::ok().await;
    let dir = TempDir::new("log-level");
    let config = dir.write("acsgate.toml", "log_level = \"warn\"\n");
    let log = dir.0.join("stderr.log");
    let gateway = GatewayProcess::start_with_output(
        &upstream.url(),
        &[("ACSGATE_CONFIG", config.to_str().unwrap())],
        std::process::Stdio::null(),
        std::fs::File::create(&log).unwrap().into(),
    )
    .await;
    let logged = || std::fs::read_to_string(&log).unwrap();

    dir.write("acsgate.toml", "log_level = \"info\"\n");
    assert_reloaded(gateway.admin, 1.0, |_| {
        format!("the edit was not reloaded: {}", logged())
    })
    .await;
    // The reload's own info line is written after the new level applies.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !logged().contains("configuration reloaded") {
        assert!(tokio::time::Instant::now() < deadline, "{}", logged());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !logged().contains("acsgate serving"),
        "warn at start-up: {}",
        logged()
    );
}
