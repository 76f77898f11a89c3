//! Settings from the command line, `ACSGATE_*` environment variables and a TOML file, merged
//! in that order of precedence and validated once into a [`Config`].
//!
//! [`Settings`] is both the clap argument group and the file model, so every option has one
//! name everywhere: `--response-timeout`, `ACSGATE_RESPONSE_TIMEOUT`, `response_timeout`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use http::uri::Scheme;

use crate::access::{AccessLogConfig, AccessLogFormat};
use crate::auth::{AuthConfig, CallerAuth, KeySource, Secret};
use crate::body_rate::{BodyRate, RATE_GRACE};
use crate::breaker::BreakerConfig;
use crate::events::{DEFAULT_BODY_LIMIT, EventsConfig};
use crate::metrics::{DEFAULT_BUCKETS, HISTOGRAMS, MetricsOptions};
use crate::proxy::client::ClientSettings;
use crate::proxy::{BadRoutePolicy, ForwardTimeouts, Upstream};
use crate::tls::TlsFiles;

/// Default proxy listener: loopback, so nothing is exposed until asked.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default admin listener (`/metrics`, `/healthz`, `/readyz`).
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9464";

/// Every option, as given on the command line, in the environment or in the config file.
/// `None` means "not given here".
#[derive(Clone, Debug, Default, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// ACS endpoint to forward to, e.g. `https://myresource.communication.azure.com`
    #[arg(long, env = "ACSGATE_UPSTREAM", global = true)]
    pub upstream: Option<String>,

    /// Proxy listener address [default: 127.0.0.1:8080]
    #[arg(long, env = "ACSGATE_LISTEN", global = true)]
    pub listen: Option<SocketAddr>,

    /// Admin listener address for /metrics, /healthz, /readyz [default: 127.0.0.1:9464]
    #[arg(long, env = "ACSGATE_ADMIN", global = true)]
    pub admin: Option<SocketAddr>,

    /// Extra catalogue files (TOML), comma-separated or repeated
    #[arg(long, env = "ACSGATE_CATALOGUE", value_delimiter = ',', global = true)]
    pub catalogue: Option<Vec<PathBuf>>,

    /// Whether the built-in ACS catalogue is loaded before the extra files [default: true]
    #[arg(long, env = "ACSGATE_BUILTIN_CATALOGUE", global = true)]
    pub builtin_catalogue: Option<bool>,

    /// Unknown operations: forward them to ACS, or reject them with 404 [default: forward]
    #[arg(long, env = "ACSGATE_BAD_ROUTE", value_enum, global = true)]
    pub bad_route: Option<BadRoutePolicy>,

    /// Limit on opening a TCP connection to the upstream [default: 5s]
    #[arg(long, env = "ACSGATE_CONNECT_TIMEOUT", value_parser = humantime::parse_duration, global = true)]
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,

    /// Limit from sending a request upstream to its response head [default: 30s]
    #[arg(long, env = "ACSGATE_RESPONSE_TIMEOUT", value_parser = humantime::parse_duration, global = true)]
    #[serde(default, with = "humantime_serde")]
    pub response_timeout: Option<Duration>,

    /// Longest wait for the next piece of an upstream response body [default: 30s]
    #[arg(long, env = "ACSGATE_BODY_IDLE_TIMEOUT", value_parser = humantime::parse_duration, global = true)]
    #[serde(default, with = "humantime_serde")]
    pub body_idle_timeout: Option<Duration>,

    /// How long an idle pooled upstream connection is kept [default: 90s]
    #[arg(long, env = "ACSGATE_POOL_IDLE_TIMEOUT", value_parser = humantime::parse_duration, global = true)]
    #[serde(default, with = "humantime_serde")]
    pub pool_idle_timeout: Option<Duration>,

    /// Limit on receiving a request head from a client [default: 10s]
    #[arg(long, env = "ACSGATE_HEADER_READ_TIMEOUT", value_parser = humantime::parse_duration, global = true)]
    #[serde(default, with = "humantime_serde")]
    pub header_read_timeout: Option<Duration>,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish [default: 25s]
    #[arg(long, env = "ACSGATE_DRAIN_TIMEOUT", value_parser = humantime::parse_duration, global = true)]
    #[serde(default, with = "humantime_serde")]
    pub drain_timeout: Option<Duration>,

    /// Duration histogram buckets in seconds, comma-separated, increasing
    #[arg(long, env = "ACSGATE_BUCKETS", value_delimiter = ',', global = true)]
    pub buckets: Option<Vec<f64>>,

    /// PEM file of extra CA certificates trusted for the upstream (platform roots stay trusted)
    #[arg(long, env = "ACSGATE_EXTRA_CA_FILE", global = true)]
    pub extra_ca_file: Option<PathBuf>,

    // --- limits (client-side protection) ---
    /// Open client connections at most; more are closed at once [default: 4096]
    #[arg(long, env = "ACSGATE_MAX_CONNECTIONS", global = true)]
    pub max_connections: Option<usize>,

    /// Requests served at once at most; more get 503 `overloaded` [default: 1024]
    #[arg(long, env = "ACSGATE_MAX_IN_FLIGHT", global = true)]
    pub max_in_flight: Option<usize>,

    /// Limit from accepting a connection to its first request head (TLS, protocol detection,
    /// headers) [default: 10s]
    #[arg(long, env = "ACSGATE_HANDSHAKE_TIMEOUT", value_parser = humantime::parse_duration, global = true)]
    #[serde(default, with = "humantime_serde")]
    pub handshake_timeout: Option<Duration>,

    /// Largest HTTP/1 request head (request line and headers) in bytes; larger gets 431 [default: 32768]
    #[arg(long, env = "ACSGATE_MAX_HEADER_BYTES", global = true)]
    pub max_header_bytes: Option<usize>,

    /// Most request headers; more gets 431 [default: 100]
    #[arg(long, env = "ACSGATE_MAX_HEADERS", global = true)]
    pub max_headers: Option<usize>,

    /// Longest request URI (path and query) in bytes; longer gets 414 [default: 8192]
    #[arg(long, env = "ACSGATE_MAX_URI_BYTES", global = true)]
    pub max_uri_bytes: Option<usize>,

    /// A request body must arrive completely within this time; else 408 [default: 60s]
    #[arg(long, env = "ACSGATE_REQUEST_BODY_TIMEOUT", value_parser = humantime::parse_duration, global = true)]
    #[serde(default, with = "humantime_serde")]
    pub request_body_timeout: Option<Duration>,

    /// After 5 s, a request body must average at least this many bytes per second; else 408
    /// [default: 1024]
    #[arg(long, env = "ACSGATE_REQUEST_BODY_MIN_RATE", global = true)]
    pub request_body_min_rate: Option<u64>,
    // --- inbound events (issue 4) ---
    /// Listener for Event Grid deliveries, counted per event and forwarded to
    /// --events-forward-to [default: off]
    #[arg(long, env = "ACSGATE_EVENTS_LISTEN", global = true)]
    pub events_listen: Option<SocketAddr>,

    /// The app's Event Grid webhook endpoint, e.g. http://127.0.0.1:3000 (the request path is
    /// kept)
    #[arg(long, env = "ACSGATE_EVENTS_FORWARD_TO", global = true)]
    pub events_forward_to: Option<String>,

    /// Largest event delivery taken, in bytes; larger ones get 413 [default: 1048576]
    #[arg(long, env = "ACSGATE_EVENTS_BODY_LIMIT", global = true)]
    pub events_body_limit: Option<usize>,
    // --- SDK auth and TLS listener ---
    /// Callers' HMAC signatures: `hmac` verifies them with the caller key, `none` (loopback
    /// listener only) re-signs without checking [default: hmac]
    #[arg(long, env = "ACSGATE_CALLER_AUTH", value_enum, global = true)]
    pub caller_auth: Option<CallerAuth>,

    /// Largest HMAC-signed request body buffered for hashing, in bytes [default: 8388608]
    #[arg(long, env = "ACSGATE_MAX_SIGNED_BODY", global = true)]
    pub max_signed_body: Option<u64>,

    /// File holding the ACS resource's access key (or set ACSGATE_UPSTREAM_ACCESS_KEY)
    #[arg(long, env = "ACSGATE_UPSTREAM_ACCESS_KEY_FILE", global = true)]
    pub upstream_access_key_file: Option<PathBuf>,

    /// File holding the callers' local access key (or set ACSGATE_CALLER_ACCESS_KEY)
    #[arg(long, env = "ACSGATE_CALLER_ACCESS_KEY_FILE", global = true)]
    pub caller_access_key_file: Option<PathBuf>,

    /// PEM certificate chain for TLS on the proxy listener (with --tls-key-file)
    #[arg(long, env = "ACSGATE_TLS_CERT_FILE", global = true)]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key for TLS on the proxy listener (with --tls-cert-file)
    #[arg(long, env = "ACSGATE_TLS_KEY_FILE", global = true)]
    pub tls_key_file: Option<PathBuf>,

    /// The resource's access key, from ACSGATE_UPSTREAM_ACCESS_KEY only: never a flag or a
    /// file key, so it never shows in `ps` or in a config file.
    #[arg(skip)]
    #[serde(skip)]
    pub upstream_access_key: Option<Secret>,

    /// The callers' local key, from ACSGATE_CALLER_ACCESS_KEY only.
    #[arg(skip)]
    #[serde(skip)]
    pub caller_access_key: Option<Secret>,
    // --- cardinality controls ---
    /// Whether acsgate_requests_total carries `status_code`; false keeps only `status_subclass` [default: true]
    #[arg(long, env = "ACSGATE_METRICS_STATUS_CODE", global = true)]
    pub metrics_status_code: Option<bool>,

    /// Whether acsgate_request_duration_seconds carries `operation`; false keeps only `api` [default: true]
    #[arg(long, env = "ACSGATE_METRICS_DURATION_OPERATION", global = true)]
    pub metrics_duration_operation: Option<bool>,

    /// Bucket lists by histogram name (config file only), e.g.
    /// `[histogram_buckets]` / `acsgate_request_duration_seconds = [0.05, 0.25, 1]`.
    #[arg(skip)]
    pub histogram_buckets: Option<BTreeMap<String, Vec<f64>>>,

    // --- access log ---
    /// One line per request on stdout: `json`, `logfmt` or `off` [default: off]
    #[arg(long, env = "ACSGATE_ACCESS_LOG", value_enum, global = true)]
    pub access_log: Option<AccessLogFormat>,

    /// Also log the raw request path (with its ids) in the access log [default: false]
    #[arg(long, env = "ACSGATE_LOG_RAW_PATH", global = true, num_args = 0..=1,
          default_missing_value = "true")]
    pub log_raw_path: Option<bool>,

    // --- log level ---
    /// Log level or `target=level,…` directives, e.g. `info` or `acsgate=debug,hyper=warn`; `RUST_LOG` wins [default: info]
    #[arg(long, env = "ACSGATE_LOG_LEVEL", global = true)]
    pub log_level: Option<String>,

    // --- circuit breaker ---
    /// Upstream connect failures in a row that open the circuit breaker (503 `circuit_open` at once until the cooldown ends); 0 is off [default: 0]
    #[arg(long, env = "ACSGATE_CIRCUIT_BREAKER_FAILURES", global = true)]
    pub circuit_breaker_failures: Option<u32>,

    /// How long an open circuit fails fast before a probe request may try the upstream [default: 5s]
    #[arg(long, env = "ACSGATE_CIRCUIT_BREAKER_COOLDOWN", value_parser = humantime::parse_duration, global = true)]
    #[serde(default, with = "humantime_serde")]
    pub circuit_breaker_cooldown: Option<Duration>,
}

impl Settings {
    /// Reads a TOML config file. Unknown keys are errors, so a typo never goes unnoticed.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Settings::from_toml(&text).map_err(|message| ConfigError::File {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses TOML text; the error message names the line and key.
    pub fn from_toml(text: &str) -> Result<Settings, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// These settings, with any option they leave unset taken from `lower`.
    pub fn or(self, lower: Settings) -> Settings {
        Settings {
            upstream: self.upstream.or(lower.upstream),
            listen: self.listen.or(lower.listen),
            admin: self.admin.or(lower.admin),
            catalogue: self.catalogue.or(lower.catalogue),
            builtin_catalogue: self.builtin_catalogue.or(lower.builtin_catalogue),
            bad_route: self.bad_route.or(lower.bad_route),
            connect_timeout: self.connect_timeout.or(lower.connect_timeout),
            response_timeout: self.response_timeout.or(lower.response_timeout),
            body_idle_timeout: self.body_idle_timeout.or(lower.body_idle_timeout),
            pool_idle_timeout: self.pool_idle_timeout.or(lower.pool_idle_timeout),
            header_read_timeout: self.header_read_timeout.or(lower.header_read_timeout),
            drain_timeout: self.drain_timeout.or(lower.drain_timeout),
            buckets: self.buckets.or(lower.buckets),
            extra_ca_file: self.extra_ca_file.or(lower.extra_ca_file),
            max_connections: self.max_connections.or(lower.max_connections),
            max_in_flight: self.max_in_flight.or(lower.max_in_flight),
            handshake_timeout: self.handshake_timeout.or(lower.handshake_timeout),
            max_header_bytes: self.max_header_bytes.or(lower.max_header_bytes),
            max_headers: self.max_headers.or(lower.max_headers),
            max_uri_bytes: self.max_uri_bytes.or(lower.max_uri_bytes),
            request_body_timeout: self.request_body_timeout.or(lower.request_body_timeout),
            request_body_min_rate: self.request_body_min_rate.or(lower.request_body_min_rate),
            // --- inbound events (issue 4) ---
            events_listen: self.events_listen.or(lower.events_listen),
            events_forward_to: self.events_forward_to.or(lower.events_forward_to),
            events_body_limit: self.events_body_limit.or(lower.events_body_limit),
            // --- SDK auth and TLS listener ---
            caller_auth: self.caller_auth.or(lower.caller_auth),
            max_signed_body: self.max_signed_body.or(lower.max_signed_body),
            upstream_access_key_file: self
                .upstream_access_key_file
                .or(lower.upstream_access_key_file),
            caller_access_key_file: self.caller_access_key_file.or(lower.caller_access_key_file),
            tls_cert_file: self.tls_cert_file.or(lower.tls_cert_file),
            tls_key_file: self.tls_key_file.or(lower.tls_key_file),
            upstream_access_key: self.upstream_access_key.or(lower.upstream_access_key),
            caller_access_key: self.caller_access_key.or(lower.caller_access_key),
            // --- cardinality controls ---
            metrics_status_code: self.metrics_status_code.or(lower.metrics_status_code),
            metrics_duration_operation: self
                .metrics_duration_operation
                .or(lower.metrics_duration_operation),
            histogram_buckets: self.histogram_buckets.or(lower.histogram_buckets),
            // --- access log ---
            access_log: self.access_log.or(lower.access_log),
            log_raw_path: self.log_raw_path.or(lower.log_raw_path),
            // --- log level ---
            log_level: self.log_level.or(lower.log_level),
            // --- circuit breaker ---
            circuit_breaker_failures: self
                .circuit_breaker_failures
                .or(lower.circuit_breaker_failures),
            circuit_breaker_cooldown: self
                .circuit_breaker_cooldown
                .or(lower.circuit_breaker_cooldown),
        }
    }
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read or parsed.
    #[error("config file {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong, with line and key.
        message: String,
    },
    /// A value is missing or invalid.
    #[error("invalid `{key}`: {message}")]
    Invalid {
        /// The option's config key (also `--key-with-dashes` and `ACSGATE_KEY`).
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// `value`, or `default` when unset; zero is refused.
fn positive(
    key: &'static str,
    value: Option<Duration>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let value = value.unwrap_or(default);
    if value.is_zero() {
        Err(invalid(key, "must be longer than zero"))
    } else {
        Ok(value)
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Which catalogue files to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogueFiles {
    /// Load the built-in ACS catalogue first.
    pub builtin: bool,
    /// Extra files, in order.
    pub files: Vec<PathBuf>,
}

/// Validated configuration of a gateway.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where requests go.
    pub upstream: Upstream,
    /// Proxy listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Catalogue sources.
    pub catalogue: CatalogueFiles,
    /// What to do with unknown operations.
    pub bad_route: BadRoutePolicy,
    /// Upstream connection settings.
    pub client: ClientSettings,
    /// Per-request upstream timeouts.
    pub timeouts: ForwardTimeouts,
    /// Limit on receiving a request head.
    pub header_read_timeout: Duration,
    /// Drain deadline on shutdown.
    pub drain_timeout: Duration,
    /// Buckets and labels of the per-request families.
    pub metrics: MetricsOptions,
    // --- inbound events (issue 4) ---
    /// The events listener, when configured.
    pub events: Option<EventsConfig>,
    /// Client-side limits.
    pub limits: Limits,
    // --- SDK auth and TLS listener ---
    /// HMAC verification and re-signing.
    pub auth: AuthConfig,
    /// TLS on the proxy listener.
    pub tls: Option<TlsFiles>,
    // --- access log ---
    /// The access log.
    pub access_log: AccessLogConfig,
    // --- log level ---
    /// Log directives (`RUST_LOG` syntax), validated.
    pub log_level: String,
    // --- circuit breaker ---
    /// When the upstream circuit opens and for how long.
    pub breaker: BreakerConfig,
}

/// Limits that protect the gateway (and the app it serves) from clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open client connections at most.
    pub max_connections: usize,
    /// Requests served at once at most.
    pub max_in_flight: usize,
    /// Accept → first request head.
    pub handshake_timeout: Duration,
    /// Largest HTTP/1 request head.
    pub max_header_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Longest request URI.
    pub max_uri_bytes: usize,
    /// How fast request bodies must arrive.
    pub body_rate: BodyRate,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from_settings(&Settings::default()).expect("the defaults are valid")
    }
}

impl Limits {
    fn from_settings(settings: &Settings) -> Result<Limits, ConfigError> {
        let count = |key: &'static str, value: Option<usize>, default: usize, min: usize| {
            let value = value.unwrap_or(default);
            if value < min {
                Err(invalid(key, format!("must be at least {min}")))
            } else {
                Ok(value)
            }
        };
        let handshake_timeout = positive(
            "handshake_timeout",
            settings.handshake_timeout,
            Duration::from_secs(10),
        )?;
        let body_timeout = positive(
            "request_body_timeout",
            settings.request_body_timeout,
            Duration::from_secs(60),
        )?;
        Ok(Limits {
            max_connections: count("max_connections", settings.max_connections, 4096, 1)?,
            max_in_flight: count("max_in_flight", settings.max_in_flight, 1024, 1)?,
            handshake_timeout,
            // hyper needs room for at least one read buffer (8 KiB) plus a header.
            max_header_bytes: count(
                "max_header_bytes",
                settings.max_header_bytes,
                32 * 1024,
                8192,
            )?,
            max_headers: count("max_headers", settings.max_headers, 100, 1)?,
            max_uri_bytes: count("max_uri_bytes", settings.max_uri_bytes, 8192, 16)?,
            body_rate: BodyRate {
                timeout: body_timeout,
                min_bytes_per_second: settings.request_body_min_rate.unwrap_or(1024),
                grace: RATE_GRACE.min(body_timeout),
            },
        })
    }
}

impl Config {
    /// Validates `settings`, filling defaults. Each error names the offending key.
    pub fn from_settings(settings: Settings) -> Result<Config, ConfigError> {
        let upstream = parse_upstream(settings.upstream.as_deref().ok_or_else(|| {
            invalid(
                "upstream",
                "no upstream given: pass --upstream https://<resource>.communication.azure.com, \
                 set ACSGATE_UPSTREAM, or set `upstream` in the config file",
            )
        })?)?;
        let listen = settings
            .listen
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"));
        let admin = settings
            .admin
            .unwrap_or_else(|| DEFAULT_ADMIN.parse().expect("valid default"));
        if listen == admin && listen.port() != 0 {
            return Err(invalid(
                "admin",
                format!("the admin listener must not share the proxy's address {listen}"),
            ));
        }
        let limits = Limits::from_settings(&settings)?;
        let events = events_config(&settings, listen, admin)?;
        let metrics = metrics_options(&settings)?;
        // --- SDK auth and TLS listener ---
        let auth = AuthConfig::load(
            KeySource {
                file_key: "upstream_access_key_file",
                value: settings.upstream_access_key.as_ref(),
                file: settings.upstream_access_key_file.as_deref(),
            },
            KeySource {
                file_key: "caller_access_key_file",
                value: settings.caller_access_key.as_ref(),
                file: settings.caller_access_key_file.as_deref(),
            },
            settings.caller_auth.unwrap_or_default(),
            listen,
            settings.max_signed_body,
        )?;
        let tls = match (settings.tls_cert_file, settings.tls_key_file) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => return Err(invalid("tls_key_file", "needed with tls_cert_file")),
            (None, Some(_)) => return Err(invalid("tls_cert_file", "needed with tls_key_file")),
        };
        Ok(Config {
            upstream,
            listen,
            admin,
            catalogue: CatalogueFiles {
                builtin: settings.builtin_catalogue.unwrap_or(true),
                files: settings.catalogue.unwrap_or_default(),
            },
            bad_route: settings.bad_route.unwrap_or_default(),
            client: ClientSettings {
                connect_timeout: positive(
                    "connect_timeout",
                    settings.connect_timeout,
                    Duration::from_secs(5),
                )?,
                pool_idle_timeout: positive(
                    "pool_idle_timeout",
                    settings.pool_idle_timeout,
                    Duration::from_secs(90),
                )?,
                extra_ca_file: settings.extra_ca_file,
            },
            timeouts: ForwardTimeouts {
                response: positive(
                    "response_timeout",
                    settings.response_timeout,
                    Duration::from_secs(30),
                )?,
                body_idle: positive(
                    "body_idle_timeout",
                    settings.body_idle_timeout,
                    Duration::from_secs(30),
                )?,
            },
            header_read_timeout: positive(
                "header_read_timeout",
                settings.header_read_timeout,
                Duration::from_secs(10),
            )?,
            drain_timeout: positive(
                "drain_timeout",
                settings.drain_timeout,
                Duration::from_secs(25),
            )?,
            metrics,
            limits,
            events,
            auth,
            tls,
            // --- access log ---
            access_log: AccessLogConfig {
                format: settings.access_log.unwrap_or_default(),
                raw_path: settings.log_raw_path.unwrap_or(false),
            },
            log_level: log_level(settings.log_level)?,
            breaker: BreakerConfig {
                failures: settings.circuit_breaker_failures.unwrap_or(0),
                cooldown: positive(
                    "circuit_breaker_cooldown",
                    settings.circuit_breaker_cooldown,
                    Duration::from_secs(5),
                )?,
            },
        })
    }
}

/// Default log directives: `info`, with hyper's own warnings (a client's header timeout, say)
/// left to the rejection counters.
pub const DEFAULT_LOG_LEVEL: &str = "info,hyper=error";

/// The `log_level` directives, checked; [`DEFAULT_LOG_LEVEL`] when unset.
fn log_level(value: Option<String>) -> Result<String, ConfigError> {
    let value = value.unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned());
    value
        .parse::<tracing_subscriber::filter::Targets>()
        .map_err(|e| invalid("log_level", format!("`{value}`: {e}")))?;
    Ok(value)
}

/// The events listener's settings: both addresses or neither, on a port of its own.
fn events_config(
    settings: &Settings,
    listen: SocketAddr,
    admin: SocketAddr,
) -> Result<Option<EventsConfig>, ConfigError> {
    let (addr, forward_to) = match (settings.events_listen, &settings.events_forward_to) {
        (None, None) => return Ok(None),
        (Some(addr), Some(forward_to)) => (addr, forward_to),
        (Some(_), None) => {
            return Err(invalid(
                "events_forward_to",
                "events_listen is set: say where the app's webhook is",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                "events_listen",
                "events_forward_to is set: say where Event Grid delivers",
            ));
        }
    };
    if addr.port() != 0 && (addr == listen || addr == admin) {
        return Err(invalid(
            "events_listen",
            format!("{addr} is already the proxy or admin listener"),
        ));
    }
    // The same rules as the upstream (https, or http to loopback), reported under this key.
    let forward_to = parse_upstream(forward_to).map_err(|error| match error {
        ConfigError::Invalid { message, .. } => invalid("events_forward_to", message),
        other => other,
    })?;
    let body_limit = settings.events_body_limit.unwrap_or(DEFAULT_BODY_LIMIT);
    if body_limit == 0 {
        return Err(invalid("events_body_limit", "must be at least one byte"));
    }
    Ok(Some(EventsConfig {
        listen: addr,
        forward_to,
        body_limit,
    }))
}

/// Parses the upstream URL. Plain `http` is allowed only to a loopback address (tests, demo):
/// a request signed for ACS must never cross a network unencrypted.
pub fn parse_upstream(text: &str) -> Result<Upstream, ConfigError> {
    let uri: Uri = text
        .parse()
        .map_err(|e| invalid("upstream", format!("`{text}` is not a URL: {e}")))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| invalid("upstream", format!("`{text}` needs a scheme (https://…)")))?;
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| invalid("upstream", format!("`{text}` has no host")))?;
    if authority.as_str().contains('@') {
        return Err(invalid(
            "upstream",
            "credentials in the URL are not supported",
        ));
    }
    if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
        return Err(invalid(
            "upstream",
            format!("`{text}` must be a bare endpoint, without path or query"),
        ));
    }
    if scheme == Scheme::HTTPS {
        Ok(Upstream { scheme, authority })
    } else if scheme == Scheme::HTTP {
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if loopback {
            Ok(Upstream { scheme, authority })
        } else {
            Err(invalid(
                "upstream",
                format!("plain http is only allowed to a loopback address; use https for `{text}`"),
            ))
        }
    } else {
        Err(invalid(
            "upstream",
            format!("unsupported scheme `{scheme}` (use https)"),
        ))
    }
}

/// The cardinality controls: `buckets` (shorthand for the duration histogram) or
/// `histogram_buckets` by metric name, and the two optional labels.
fn metrics_options(settings: &Settings) -> Result<MetricsOptions, ConfigError> {
    let mut duration = settings.buckets.clone().map(|buckets| ("buckets", buckets));
    for (name, buckets) in settings.histogram_buckets.iter().flatten() {
        if !HISTOGRAMS.contains(&name.as_str()) {
            return Err(invalid(
                "histogram_buckets",
                format!(
                    "`{name}` is not a histogram (there is {})",
                    HISTOGRAMS.join(", ")
                ),
            ));
        }
        if duration.is_some() {
            return Err(invalid(
                "histogram_buckets",
                format!("`{name}` is also set by `buckets`: set one of them"),
            ));
        }
        duration = Some(("histogram_buckets", buckets.clone()));
    }
    let duration_buckets = match duration {
        Some((key, buckets)) => validate_buckets(key, buckets)?,
        None => DEFAULT_BUCKETS.to_vec(),
    };
    Ok(MetricsOptions {
        duration_buckets,
        status_code_label: settings.metrics_status_code.unwrap_or(true),
        duration_operation_label: settings.metrics_duration_operation.unwrap_or(true),
    })
}

fn validate_buckets(key: &'static str, buckets: Vec<f64>) -> Result<Vec<f64>, ConfigError> {
    if buckets.is_empty() {
        return Err(invalid(key, "at least one bucket is needed"));
    }
    if let Some(bad) = buckets.iter().find(|b| !b.is_finite() || **b <= 0.0) {
        return Err(invalid(
            key,
            format!("{bad} is not a positive number of seconds"),
        ));
    }
    if let Some(pair) = buckets.windows(2).find(|w| w[0] >= w[1]) {
        return Err(invalid(
            key,
            format!("must increase strictly ({} then {})", pair[0], pair[1]),
        ));
    }
    Ok(buckets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_upstream(upstream: &str) -> Settings {
        Settings {
            upstream: Some(upstream.into()),
            ..Settings::default()
        }
    }

    #[test]
    fn defaults_are_loopback_and_safe() {
        let config =
            Config::from_settings(with_upstream("https://example.communication.azure.com"))
                .unwrap();
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(config.admin, DEFAULT_ADMIN.parse().unwrap());
        assert_eq!(config.bad_route, BadRoutePolicy::Forward);
        assert!(config.catalogue.builtin);
        assert_eq!(config.metrics, MetricsOptions::default());
        assert_eq!(config.timeouts.response, Duration::from_secs(30));
    }

    #[test]
    fn upstream_rules() {
        assert!(parse_upstream("https://x.communication.azure.com/").is_ok());
        assert!(parse_upstream("http://127.0.0.1:9000").is_ok());
        assert!(parse_upstream("http://[::1]:9000").is_ok());
        assert!(parse_upstream("http://localhost:9000").is_ok());
        for bad in [
            "http://x.communication.azure.com",
            "http://10.0.0.1",
            "ftp://x",
            "x.communication.azure.com",
            "https://x.communication.azure.com/chat",
            "https://user:pw@x.communication.azure.com",
        ] {
            let err = parse_upstream(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid `upstream`"), "{bad}: {err}");
        }
    }

    #[test]
    fn missing_upstream_names_every_way_to_set_it() {
        let err = Config::from_settings(Settings::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--upstream") && err.contains("ACSGATE_UPSTREAM"),
            "{err}"
        );
    }

    #[test]
    fn file_values_parse_and_higher_layers_win() {
        let file = Settings::from_toml(
            r#"
            upstream = "https://a.communication.azure.com"
            listen = "127.0.0.1:18080"
            response_timeout = "2s"
            bad_route = "reject"
            buckets = [0.1, 1.0]
            "#,
        )
        .unwrap();
        let cli = Settings {
            listen: Some("127.0.0.1:28080".parse().unwrap()),
            ..Settings::default()
        };
        let config = Config::from_settings(cli.or(file)).unwrap();
        assert_eq!(config.listen.port(), 28080);
        assert_eq!(config.timeouts.response, Duration::from_secs(2));
        assert_eq!(config.bad_route, BadRoutePolicy::Reject);
        assert_eq!(config.metrics.duration_buckets, vec![0.1, 1.0]);
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = Settings::from_toml("listen = 5").unwrap_err();
        assert!(err.contains("listen"), "{err}");
        let err = Settings::from_toml("lisen = \"127.0.0.1:1\"").unwrap_err();
        assert!(err.contains("lisen"), "{err}");
        let err = Settings::from_toml("response_timeout = \"soon\"").unwrap_err();
        assert!(err.contains("response_timeout"), "{err}");
        for (buckets, needle) in [
            (vec![], "at least one"),
            (vec![1.0, 0.5], "increase"),
            (vec![-1.0], "positive"),
        ] {
            let settings = Settings {
                buckets: Some(buckets),
                ..with_upstream("https://a.b")
            };
            let err = Config::from_settings(settings).unwrap_err().to_string();
            assert!(err.contains("`buckets`") && err.contains(needle), "{err}");
        }
        let settings = Settings {
            connect_timeout: Some(Duration::ZERO),
            ..with_upstream("https://a.b")
        };
        let err = Config::from_settings(settings).unwrap_err().to_string();
        assert!(err.contains("`connect_timeout`"), "{err}");
    }

    #[test]
    fn cardinality_controls() {
        let file = Settings::from_toml(
            r#"
            upstream = "https://a.communication.azure.com"
            metrics_status_code = false
            metrics_duration_operation = false
            [histogram_buckets]
            acsgate_request_duration_seconds = [0.05, 0.25, 1]
            "#,
        )
        .unwrap();
        let config = Config::from_settings(file.clone()).unwrap();
        assert_eq!(
            config.metrics,
            MetricsOptions {
                duration_buckets: vec![0.05, 0.25, 1.0],
                status_code_label: false,
                duration_operation_label: false,
            }
        );
        let both = Settings {
            buckets: Some(vec![1.0]),
            ..file
        };
        let err = Config::from_settings(both).unwrap_err().to_string();
        assert!(
            err.contains("`histogram_buckets`") && err.contains("buckets"),
            "{err}"
        );
        let unknown = Settings::from_toml(
            "upstream = \"https://a.b\"\n[histogram_buckets]\nacsgate_requests_total = [1]\n",
        )
        .unwrap();
        let err = Config::from_settings(unknown).unwrap_err().to_string();
        assert!(err.contains("not a histogram"), "{err}");
        let unordered = Settings::from_toml(
            "upstream = \"https://a.b\"\n[histogram_buckets]\nacsgate_request_duration_seconds = [2, 1]\n",
        )
        .unwrap();
        let err = Config::from_settings(unordered).unwrap_err().to_string();
        assert!(
            err.contains("`histogram_buckets`") && err.contains("increase"),
            "{err}"
        );
    }

    #[test]
    fn log_level_is_checked() {
        let config = Config::from_settings(with_upstream("https://a.b")).unwrap();
        assert_eq!(config.log_level, DEFAULT_LOG_LEVEL);
        let settings = Settings {
            log_level: Some("acsgate=debug,hyper=warn".into()),
            ..with_upstream("https://a.b")
        };
        assert!(Config::from_settings(settings).is_ok());
        let settings = Settings {
            log_level: Some("acsgate=loud".into()),
            ..with_upstream("https://a.b")
        };
        let err = Config::from_settings(settings).unwrap_err().to_string();
        assert!(err.contains("`log_level`"), "{err}");
    }

    #[test]
    fn access_log_is_off_unless_asked() {
        let config = Config::from_settings(with_upstream("https://a.b")).unwrap();
        assert_eq!(config.access_log, AccessLogConfig::default());
        let file = Settings::from_toml("access_log = \"logfmt\"\nlog_raw_path = true").unwrap();
        let config = Config::from_settings(with_upstream("https://a.b").or(file)).unwrap();
        assert_eq!(config.access_log.format, AccessLogFormat::Logfmt);
        assert!(config.access_log.raw_path);
        let err = Settings::from_toml("access_log = \"xml\"").unwrap_err();
        assert!(err.contains("access_log"), "{err}");
    }

    #[test]
    fn events_listener_needs_both_addresses() {
        let with = |listen: Option<&str>, forward_to: Option<&str>| Settings {
            events_listen: listen.map(|l| l.parse().unwrap()),
            events_forward_to: forward_to.map(String::from),
            ..with_upstream("https://a.b")
        };
        let config = Config::from_settings(with(None, None)).unwrap();
        assert!(config.events.is_none());
        let config =
            Config::from_settings(with(Some("0.0.0.0:8090"), Some("http://127.0.0.1:3000")))
                .unwrap();
        let events = config.events.unwrap();
        assert_eq!(events.forward_to.authority, "127.0.0.1:3000");
        assert_eq!(events.body_limit, 1 << 20);
        for (settings, key) in [
            (with(Some("0.0.0.0:8090"), None), "`events_forward_to`"),
            (with(None, Some("http://127.0.0.1:3000")), "`events_listen`"),
            (
                with(Some("0.0.0.0:8090"), Some("http://10.0.0.1:3000")),
                "`events_forward_to`",
            ),
            (
                with(Some("127.0.0.1:9464"), Some("http://127.0.0.1:3000")),
                "`events_listen`",
            ),
        ] {
            let err = Config::from_settings(settings).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }
}
