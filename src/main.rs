//! The `acsgate` binary: parse the command line, set up logging, run the chosen command.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

use acsgate::catalogue::Catalogue;
use acsgate::cli::{Cli, Command, LogFormat};
use acsgate::config::{Config, DEFAULT_ADMIN, DEFAULT_LOG_LEVEL, Settings};
use acsgate::reload::{ConfigWatch, ReloadHook};
use acsgate::server::Gateway;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{Registry, reload};

mod allocator;

#[global_allocator]
static ALLOCATOR: allocator::MiMalloc = allocator::MiMalloc;

fn main() -> ExitCode {
    allocator::tune();
    let cli = Cli::parse();
    // The settings are merged again (and their errors reported) once logging is up.
    let log_level = cli.merged_settings().ok().and_then(|s| s.log_level);
    let log_filter = init_logging(cli.log_format, log_level.as_deref());
    let mut builder = match cli.worker_threads {
        // One worker: the current-thread scheduler runs every task on this thread, without the
        // work-stealing scheduler's cross-thread wake-ups (measured: docs/performance-log.md).
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        threads => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(threads) = threads {
                builder.worker_threads(usize::from(threads));
            }
            builder
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return fail(format!("cannot start the async runtime: {error}")),
    };
    match runtime.block_on(run(cli, log_filter)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(message),
    }
}

async fn run(cli: Cli, log_filter: Option<LogFilter>) -> Result<(), String> {
    let settings = cli.merged_settings().map_err(|e| e.to_string())?;
    let reload_source = cli.config_source();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let config = Config::from_settings(settings).map_err(|e| e.to_string())?;
            // Watching before listening: once the gateway answers, no edit or SIGHUP is lost.
            // The configuration is read again once the files are watched, so that an edit
            // landing between the first read and the watch is not lost either.
            let watch = ConfigWatch::start(cli.config.clone(), &config);
            let config = reload_source()?;
            let gateway = Gateway::start(&config).await.map_err(|e| e.to_string())?;
            let apply_log_level = log_filter.map(|filter| -> ReloadHook {
                Arc::new(move |config: &Config| filter.apply(&config.log_level))
            });
            gateway.watch_config(watch, reload_source, apply_log_level);
            gateway.run_until_signal().await;
            Ok(())
        }
        Command::Demo(args) => acsgate::demo::run(args, settings).await,
        Command::CheckConfig { file } => check_config(&file, settings),
        Command::Routes => {
            let catalogue = load_catalogue(&settings)?;
            print!("{}", acsgate::cli::render_routes(&catalogue));
            Ok(())
        }
        Command::Healthcheck => {
            let admin = settings
                .admin
                .unwrap_or_else(|| DEFAULT_ADMIN.parse().expect("valid default"));
            acsgate::healthcheck::check(admin, std::time::Duration::from_secs(3))
                .await
                .map_err(|e| e.to_string())
        }
    }
}

/// Validates `file` (with any command-line and environment overrides), including the
/// catalogues it names, and says what it found.
fn check_config(file: &std::path::Path, overrides: Settings) -> Result<(), String> {
    let settings = overrides.or(Settings::from_file(file).map_err(|e| e.to_string())?);
    let config = Config::from_settings(settings.clone()).map_err(|e| e.to_string())?;
    let catalogue = load_catalogue(&settings)?;
    println!(
        "{}: ok (upstream {}://{}, proxy {}, admin {}, {} operations in {} apis)",
        file.display(),
        config.upstream.scheme,
        config.upstream.authority,
        config.listen,
        config.admin,
        catalogue.operations().len(),
        catalogue.apis().len(),
    );
    Ok(())
}

fn load_catalogue(settings: &Settings) -> Result<Arc<Catalogue>, String> {
    let files = settings.catalogue.clone().unwrap_or_default();
    Catalogue::load(settings.builtin_catalogue.unwrap_or(true), &files)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// The log filter, when `log_level` (not `RUST_LOG`) sets it: a reload can change it.
struct LogFilter(reload::Handle<Targets, Registry>);

impl LogFilter {
    /// Applies new `log_level` directives (already validated with the configuration).
    fn apply(&self, directives: &str) {
        if let Ok(filter) = directives.parse::<Targets>()
            && self.0.reload(filter).is_ok()
        {
            tracing::debug!(log_level = directives, "log level applied");
        }
    }
}

/// Logs go to stderr. The level is `RUST_LOG` when set, else `log_level` from the flags,
/// environment or config file, else [`DEFAULT_LOG_LEVEL`]; both take `level` or
/// `target=level,…`. An invalid `RUST_LOG` is reported and ignored (an invalid `log_level` is
/// a config error, reported once the settings are validated). Returns the handle that
/// reloads apply `log_level` through, unless `RUST_LOG` is in charge.
fn init_logging(format: LogFormat, log_level: Option<&str>) -> Option<LogFilter> {
    let parse = |text: &str| text.parse::<Targets>();
    let default = || parse(DEFAULT_LOG_LEVEL).expect("valid default");
    let configured = log_level.and_then(|text| parse(text).ok());
    let (filter, from_rust_log, bad_filter) = match std::env::var("RUST_LOG") {
        Ok(text) => match parse(&text) {
            Ok(filter) => (filter, true, None),
            Err(error) => (
                configured.unwrap_or_else(default),
                false,
                Some((text, error)),
            ),
        },
        Err(_) => (configured.unwrap_or_else(default), false, None),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry.with(layer).init(),
        LogFormat::Json => registry.with(layer.json()).init(),
    }
    if let Some((text, error)) = bad_filter {
        tracing::warn!(%error, "ignoring RUST_LOG={text:?}");
    }
    (!from_rust_log).then_some(LogFilter(handle))
}

fn fail(message: String) -> ExitCode {
    eprintln!("acsgate: error: {message}");
    ExitCode::FAILURE
}
