//! The command line: `acsgate [run]`, `acsgate demo`, `acsgate check-config FILE`,
//! `acsgate routes`, `acsgate healthcheck`. Every gateway option is global, so it can follow
//! any subcommand.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::auth::{CALLER_KEY_ENV, Secret, UPSTREAM_KEY_ENV};
use crate::catalogue::Catalogue;
use crate::config::{Config, ConfigError, Settings};
use crate::reload::ConfigSource;

/// A metering reverse proxy for the Azure Communication Services REST APIs.
#[derive(Debug, Parser)]
#[command(name = "acsgate", version, about, long_about = None)]
pub struct Cli {
    /// Config file (TOML); command-line options and ACSGATE_* variables override it
    #[arg(long, short = 'c', env = "ACSGATE_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Log format on stderr
    #[arg(
        long,
        env = "ACSGATE_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,

    /// Gateway options.
    #[command(flatten)]
    pub settings: Settings,

    /// What to do (default: run the gateway).
    #[command(subcommand)]
    pub command: Option<Command>,

    // --- runtime ---
    /// Async runtime worker threads (default: one per CPU)
    #[arg(long, env = "ACSGATE_WORKER_THREADS", global = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default)
    Run,
    /// Run a simulated ACS upstream, the gateway in front of it, and a traffic mix; then print
    /// the per-operation table read from /metrics and keep serving until Ctrl-C
    Demo(DemoArgs),
    /// Validate a config file (and the catalogues it names), then exit
    CheckConfig {
        /// The file to check
        file: PathBuf,
    },
    /// Print the operation catalogue: api, operation, method, path template
    Routes,
    /// Ask a running gateway's admin listener (--admin) for /healthz: exit 0 when healthy,
    /// 1 when not (a container HEALTHCHECK; 0.0.0.0 is asked on loopback)
    Healthcheck,
}

/// Options of `acsgate demo`.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Requests to send through the gateway
    #[arg(long, default_value_t = 2000)]
    pub requests: u64,
    /// Concurrent client connections
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seed of the traffic mix and simulated answers (same seed, same run)
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Exit right after printing the table instead of serving /metrics until Ctrl-C
    #[arg(long)]
    pub once: bool,
    /// After the table, keep serving for this long, then exit (e.g. 30s)
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "once")]
    pub duration: Option<Duration>,
}

impl Cli {
    /// The merged settings: command line and environment over the config file.
    pub fn merged_settings(&self) -> Result<Settings, ConfigError> {
        merge(self.config.as_deref(), &self.settings)
    }

    /// What a reload reads: the config file again, under the same flags and environment.
    pub fn config_source(&self) -> ConfigSource {
        let (file, settings) = (self.config.clone(), self.settings.clone());
        Arc::new(move || {
            merge(file.as_deref(), &settings)
                .and_then(Config::from_settings)
                .map_err(|e| e.to_string())
        })
    }
}

fn merge(file: Option<&Path>, settings: &Settings) -> Result<Settings, ConfigError> {
    let file = match file {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let mut settings = settings.clone().or(file);
    // Keys come from the environment only, never from a flag or the file.
    settings.upstream_access_key = Secret::from_env(UPSTREAM_KEY_ENV);
    settings.caller_access_key = Secret::from_env(CALLER_KEY_ENV);
    Ok(settings)
}

/// Renders the catalogue as an aligned table, one route per line (`acsgate routes`).
pub fn render_routes(catalogue: &Catalogue) -> String {
    let rows: Vec<[String; 5]> = catalogue
        .routes()
        .iter()
        .map(|route| {
            let operation = catalogue.operation(route.operation);
            let only = if route.when_api_version.is_empty() {
                String::new()
            } else {
                format!("api-version {}", route.when_api_version.join("|"))
            };
            [
                catalogue.api(operation.api).name.clone(),
                operation.name.clone(),
                route.method.to_string(),
                route.template.clone(),
                only,
            ]
        })
        .collect();
    let header = ["API", "OPERATION", "METHOD", "PATH", "ONLY FOR"].map(String::from);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn options_may_follow_a_subcommand() {
        let cli = Cli::try_parse_from([
            "acsgate",
            "demo",
            "--once",
            "--listen",
            "127.0.0.1:0",
            "--response-timeout",
            "2s",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Demo(DemoArgs { once: true, .. }))
        ));
        assert_eq!(cli.settings.listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(cli.settings.response_timeout, Some(Duration::from_secs(2)));
    }

    #[test]
    fn bad_values_are_rejected_by_name() {
        let err = Cli::try_parse_from(["acsgate", "--connect-timeout", "soon"]).unwrap_err();
        assert!(err.to_string().contains("--connect-timeout"), "{err}");
        let err = Cli::try_parse_from(["acsgate", "--bad-route", "drop"]).unwrap_err();
        assert!(err.to_string().contains("--bad-route"), "{err}");
    }

    #[test]
    fn log_raw_path_is_a_bare_flag_or_a_value() {
        let cli = Cli::try_parse_from(["acsgate", "--log-raw-path", "--access-log", "json"]);
        let settings = cli.unwrap().settings;
        assert_eq!(settings.log_raw_path, Some(true));
        assert_eq!(
            settings.access_log,
            Some(crate::access::AccessLogFormat::Json)
        );
        let cli = Cli::try_parse_from(["acsgate", "--log-raw-path=false"]).unwrap();
        assert_eq!(cli.settings.log_raw_path, Some(false));
    }

    #[test]
    fn worker_threads_is_a_positive_count() {
        let cli = Cli::try_parse_from(["acsgate", "run", "--worker-threads", "2"]).unwrap();
        assert_eq!(cli.worker_threads, Some(2));
        let err = Cli::try_parse_from(["acsgate", "--worker-threads", "0"]).unwrap_err();
        assert!(err.to_string().contains("--worker-threads"), "{err}");
    }
}
