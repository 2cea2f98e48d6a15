//! Configuration: the TOML config file, plugin sidecars, and database settings.
//!
//! Database settings follow libpq: a URL (flag, `DATABASE_URL` or the config
//! file) wins, and the `PG*` environment variables fill in what it leaves out.
//! Passwords never leave this module except inside the connection config;
//! everything printable goes through [`DatabaseConfig::redacted`].

use crate::capabilities::{CapabilityLimits, GrantSettings};
use crate::dispatch::{Overflow, QueueLimits};
use crate::payload::PayloadMode;
use crate::sandbox::PluginLimits;
use crate::tls::{self, Connector, DbStream, SslMode};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_postgres::config::Host;
use tokio_postgres::Socket;

/// A configuration problem, naming the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{setting}: {reason}")]
    Invalid { setting: String, reason: String },
}

impl ConfigError {
    fn invalid(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

/// The config file (`--config FILE`). Every key is optional.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Database URL; `--database-url` and `DATABASE_URL` override it.
    pub database_url: Option<String>,
    /// The plugins folder; `--plugins` overrides it.
    pub plugins: Option<PathBuf>,
    /// Where compiled plugins are cached.
    pub cache_dir: Option<PathBuf>,
    /// How long shutdown waits for queued notifications, in milliseconds.
    pub drain_timeout_ms: Option<u64>,
    /// How long the plugins folder must be quiet before a change is applied.
    pub watch_debounce_ms: Option<u64>,
    /// First wait before reconnecting; doubles on each failure.
    pub reconnect_min_ms: Option<u64>,
    /// Longest wait between reconnection attempts.
    pub reconnect_max_ms: Option<u64>,
    /// How often the LISTEN connection is checked with a cheap query; 0 = never.
    pub heartbeat_ms: Option<u64>,
    /// Connections in the pool that plugins' `publish` and `query` share.
    pub query_pool_size: Option<usize>,
    /// Address of the admin API and metrics (default 127.0.0.1:7433).
    pub admin_addr: Option<String>,
    /// Bearer token the admin API requires; needed to bind beyond loopback.
    pub admin_token: Option<String>,
    /// Where the runtime state (mutes, subscriptions) is kept.
    pub data_dir: Option<PathBuf>,
    /// Limits for every subscriber; a sidecar overrides them per plugin.
    #[serde(default)]
    pub defaults: LimitSettings,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = crate::files::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: toml_message(&e),
        })
    }
}

impl FileConfig {
    /// The connection settings, defaults filled in and values checked.
    pub fn connection_settings(&self) -> Result<ConnectionSettings, ConfigError> {
        let mut out = ConnectionSettings::default();
        if let Some(ms) = self.reconnect_min_ms {
            check_range("reconnect_min_ms", ms, 1, 3_600_000)?;
            out.reconnect_min = Duration::from_millis(ms);
        }
        if let Some(ms) = self.reconnect_max_ms {
            check_range("reconnect_max_ms", ms, 1, 3_600_000)?;
            out.reconnect_max = Duration::from_millis(ms);
        }
        if out.reconnect_max < out.reconnect_min {
            return Err(ConfigError::invalid(
                "reconnect_max_ms",
                format!(
                    "{} ms is below reconnect_min_ms ({} ms)",
                    out.reconnect_max.as_millis(),
                    out.reconnect_min.as_millis()
                ),
            ));
        }
        if let Some(ms) = self.heartbeat_ms {
            check_range("heartbeat_ms", ms, 0, 86_400_000)?;
            out.heartbeat = (ms > 0).then(|| Duration::from_millis(ms));
        }
        Ok(out)
    }
}

impl FileConfig {
    /// `drain_timeout_ms` (default 10 s), checked.
    pub fn drain_timeout(&self) -> Result<Duration, ConfigError> {
        let ms = self.drain_timeout_ms.unwrap_or(10_000);
        check_range("drain_timeout_ms", ms, 0, 3_600_000)?;
        Ok(Duration::from_millis(ms))
    }

    /// `watch_debounce_ms`, checked.
    pub fn watch_debounce(&self) -> Result<Option<Duration>, ConfigError> {
        let Some(ms) = self.watch_debounce_ms else {
            return Ok(None);
        };
        check_range("watch_debounce_ms", ms, 1, 60_000)?;
        Ok(Some(Duration::from_millis(ms)))
    }

    /// `query_pool_size`, checked.
    pub fn query_pool_size(&self) -> Result<Option<usize>, ConfigError> {
        if let Some(size) = self.query_pool_size {
            check_range("query_pool_size", size as u64, 1, 100)?;
        }
        Ok(self.query_pool_size)
    }
}

/// The admin API's default address: loopback only.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:7433";

/// Where the admin API listens, the token it requires, and where the
/// runtime state is kept: what `run` serves and `ctl` uses.
#[derive(Clone, PartialEq, Eq)]
pub struct ControlSettings {
    /// Port 0 picks a free port, written to `DATA_DIR/admin.addr` for `ctl`.
    pub admin_addr: std::net::SocketAddr,
    pub admin_token: Option<String>,
    pub data_dir: PathBuf,
}

impl std::fmt::Debug for ControlSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlSettings")
            .field("admin_addr", &self.admin_addr)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

impl ControlSettings {
    /// Fill in defaults; an empty (or all-whitespace) token is no token.
    pub fn resolve(
        admin_addr: Option<&str>,
        admin_token: Option<&str>,
        data_dir: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let text = admin_addr.unwrap_or(DEFAULT_ADMIN_ADDR);
        let admin_addr = text.parse().map_err(|_| {
            ConfigError::invalid(
                "admin_addr",
                format!("{text:?} is not an IP address and port, such as {DEFAULT_ADMIN_ADDR}"),
            )
        })?;
        let data_dir = match data_dir {
            Some(dir) => dir.to_owned(),
            None => default_data_dir().ok_or_else(|| {
                ConfigError::invalid("data_dir", "no default: HOME is not set; set data_dir")
            })?,
        };
        Ok(Self {
            admin_addr,
            admin_token: admin_token
                .filter(|t| !t.trim().is_empty())
                .map(str::to_owned),
            data_dir,
        })
    }

    /// Refuse to serve the admin API beyond loopback without a token.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if self.admin_addr.ip().is_loopback() || self.admin_token.is_some() {
            return Ok(());
        }
        Err(ConfigError::invalid(
            "admin_addr",
            format!(
                "{} is not a loopback address, and no admin_token is set: anyone on the \
                 network could control the host. Set admin_token (or PGNOTIFIER_ADMIN_TOKEN), \
                 or bind to 127.0.0.1",
                self.admin_addr
            ),
        ))
    }

    /// The file where a running host writes the address it bound.
    pub fn addr_file(&self) -> PathBuf {
        self.data_dir.join("admin.addr")
    }
}

/// `$STATE_DIRECTORY` (systemd), else `$XDG_STATE_HOME/pgnotifier`, else
/// `~/.local/state/pgnotifier`.
pub fn default_data_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("pgnotifier"))
}

/// How the LISTEN connection is kept up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// First wait before reconnecting; doubles after each failed attempt,
    /// with jitter, up to `reconnect_max`. Attempts never stop.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How often a cheap query checks the connection, so a silently dead one
    /// is noticed within about twice this; `None` turns it off (TCP keepalive
    /// still applies).
    pub heartbeat: Option<Duration>,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(30),
            heartbeat: Some(Duration::from_secs(30)),
        }
    }
}

/// Limits as written in `[defaults]` or a sidecar; unset keys inherit.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub timeout_ms: Option<u64>,
    pub memory_mib: Option<u64>,
    pub queue_size: Option<usize>,
    pub overflow: Option<Overflow>,
    pub overflow_wait_ms: Option<u64>,
    pub payload: Option<PayloadMode>,
    /// Failed calls in a row that quarantine the subscriber; 0 never does.
    pub failure_threshold: Option<u32>,
    /// `statement_timeout` of a plugin's queries.
    pub query_timeout_ms: Option<u64>,
    /// Most rows a plugin's query may return.
    pub query_max_rows: Option<usize>,
    /// Timeout of a plugin's HTTP requests (connect, first byte, between bytes).
    pub http_timeout_ms: Option<u64>,
    /// Largest HTTP response body a plugin may receive.
    pub http_max_response_bytes: Option<usize>,
}

/// The effective settings of one subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscriberSettings {
    pub plugin: PluginLimits,
    pub queue: QueueLimits,
    pub payload: PayloadMode,
    /// Failed calls in a row after which the subscriber is quarantined
    /// (muted, with the reason shown); 0 turns quarantine off.
    pub failure_threshold: u32,
    pub capabilities: CapabilityLimits,
}

impl Default for SubscriberSettings {
    fn default() -> Self {
        Self {
            plugin: PluginLimits::default(),
            queue: QueueLimits::default(),
            payload: PayloadMode::default(),
            failure_threshold: 5,
            capabilities: CapabilityLimits::default(),
        }
    }
}

impl LimitSettings {
    /// Apply these settings over `base`, checking every value.
    pub fn apply_to(&self, base: SubscriberSettings) -> Result<SubscriberSettings, ConfigError> {
        let mut out = base;
        if let Some(ms) = self.timeout_ms {
            check_range("timeout_ms", ms, 1, 600_000)?;
            out.plugin.timeout = Duration::from_millis(ms);
        }
        if let Some(mib) = self.memory_mib {
            check_range("memory_mib", mib, 1, 4096)?;
            out.plugin.memory_bytes = (mib as usize) << 20;
        }
        if let Some(size) = self.queue_size {
            check_range("queue_size", size as u64, 1, 10_000_000)?;
            out.queue.capacity = size;
        }
        if let Some(overflow) = self.overflow {
            out.queue.overflow = overflow;
        }
        if let Some(ms) = self.overflow_wait_ms {
            check_range("overflow_wait_ms", ms, 0, 60_000)?;
            out.queue.overflow_wait = Duration::from_millis(ms);
        }
        if let Some(payload) = self.payload {
            out.payload = payload;
        }
        if let Some(n) = self.failure_threshold {
            check_range("failure_threshold", u64::from(n), 0, 1_000_000)?;
            out.failure_threshold = n;
        }
        if let Some(ms) = self.query_timeout_ms {
            check_range("query_timeout_ms", ms, 1, 3_600_000)?;
            out.capabilities.query_timeout = Duration::from_millis(ms);
        }
        if let Some(rows) = self.query_max_rows {
            check_range("query_max_rows", rows as u64, 1, 10_000_000)?;
            out.capabilities.query_max_rows = rows;
        }
        if let Some(ms) = self.http_timeout_ms {
            check_range("http_timeout_ms", ms, 1, 3_600_000)?;
            out.capabilities.http_timeout = Duration::from_millis(ms);
        }
        if let Some(bytes) = self.http_max_response_bytes {
            check_range("http_max_response_bytes", bytes as u64, 1, 1 << 30)?;
            out.capabilities.http_max_response_bytes = bytes;
        }
        Ok(out)
    }
}

/// TOML's message for a number too large for any setting ("invalid type:
/// integer `N` as i128, expected …") says nothing a user can act on.
fn toml_message(e: &toml::de::Error) -> String {
    let text = e.to_string();
    let Some(start) = text.find("invalid type: integer `") else {
        return text;
    };
    let rest = &text[start + "invalid type: integer `".len()..];
    let Some((number, tail)) = rest.split_once("` as i128") else {
        return text;
    };
    let end = tail.find('\n').unwrap_or(tail.len());
    format!(
        "{}{number} is too large for this setting{}",
        &text[..start],
        &tail[end..]
    )
}

fn check_range(setting: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            setting,
            format!("{value} is outside {min}..={max}"),
        ))
    }
}

/// A plugin's optional `NAME.toml`, beside `NAME.wasm`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Sidecar {
    /// Channels to subscribe to, overriding what `register` returns.
    pub channels: Option<Vec<String>>,
    /// Key/value pairs passed to `register`.
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
    /// Capabilities granted to the plugin; none by default.
    #[serde(default)]
    pub grants: GrantSettings,
    #[serde(flatten)]
    pub limits: LimitSettings,
    /// Keys nobody asked for, refused in `load`.
    #[serde(flatten)]
    unknown: BTreeMap<String, toml::Value>,
}

impl Sidecar {
    /// Parse a sidecar's text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let sidecar: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: toml_message(&e),
        })?;
        if let Some(key) = sidecar.unknown.keys().next() {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                message: format!(
                    "unknown key `{key}`; expected channels, config, grants, payload, timeout_ms, memory_mib, queue_size, overflow, overflow_wait_ms, failure_threshold, query_timeout_ms, query_max_rows, http_timeout_ms or http_max_response_bytes"
                ),
            });
        }
        Ok(sidecar)
    }

    /// `config` as the string pairs `register` takes; non-strings are written as TOML.
    pub fn config_pairs(&self) -> Vec<(String, String)> {
        self.config
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), value)
            })
            .collect()
    }
}

/// Where and how to connect to PostgreSQL.
#[derive(Clone)]
pub struct DatabaseConfig {
    pg: tokio_postgres::Config,
    ssl_mode: SslMode,
    tls: Connector,
}

impl DatabaseConfig {
    /// From a URL or key=value string, with the `PG*` variables filling gaps.
    /// `sslmode` takes libpq's five values, and `sslrootcert` names the CA file.
    pub fn from_url(url: &str) -> Result<Self, ConfigError> {
        let (rest, tls) = take_tls_params(url);
        // The parser's message never repeats the input, so no password leaks here.
        let pg: tokio_postgres::Config = rest.parse().map_err(|e: tokio_postgres::Error| {
            ConfigError::invalid("database URL", e.to_string())
        })?;
        Self::completed(pg, tls)
    }

    /// From the `PG*` environment variables alone, like `psql` with no arguments.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::completed(tokio_postgres::Config::new(), TlsParams::default())
    }

    /// `url` if given, else `DATABASE_URL`, else the `PG*` variables.
    pub fn resolve(url: Option<&str>) -> Result<Self, ConfigError> {
        match url {
            Some(url) => Self::from_url(url),
            None => match std::env::var("DATABASE_URL") {
                Ok(url) if !url.is_empty() => Self::from_url(&url),
                _ => Self::from_env(),
            },
        }
    }

    fn completed(mut pg: tokio_postgres::Config, tls: TlsParams) -> Result<Self, ConfigError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let ssl_mode = match tls.mode.or_else(|| env("PGSSLMODE")) {
            None => SslMode::default(),
            Some(value) => SslMode::parse(&value).ok_or_else(|| {
                ConfigError::invalid(
                    "sslmode",
                    format!("{value:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"),
                )
            })?,
        };
        let root_cert = tls
            .root_cert
            .or_else(|| env("PGSSLROOTCERT"))
            .map(PathBuf::from);
        let tls = tls::connector(ssl_mode, root_cert.as_deref())
            .map_err(|reason| ConfigError::invalid("sslmode", reason))?;
        if pg.get_hosts().is_empty() && pg.get_hostaddrs().is_empty() {
            match env("PGHOST") {
                Some(hosts) => hosts.split(',').for_each(|h| {
                    pg.host(h.trim());
                }),
                None => match default_socket_dir(default_port(&pg)) {
                    Some(dir) => {
                        pg.host_path(dir);
                    }
                    None => {
                        pg.host("localhost");
                    }
                },
            }
        }
        pg.ssl_mode(negotiation(ssl_mode, pg.get_hosts())?);
        if pg.get_ports().is_empty() {
            if let Some(port) = env("PGPORT") {
                let port = port.parse::<u16>().map_err(|_| {
                    ConfigError::invalid("PGPORT", format!("{port:?} is not a port number"))
                })?;
                pg.port(port);
            }
        }
        if pg.get_user().is_none() {
            let user = env("PGUSER")
                .or_else(|| env("USER"))
                .unwrap_or_else(|| "postgres".to_owned());
            pg.user(&user);
        }
        if pg.get_password().is_none() {
            if let Some(password) = env("PGPASSWORD") {
                pg.password(password);
            }
        }
        if pg.get_dbname().is_none() {
            if let Some(db) = env("PGDATABASE") {
                pg.dbname(&db);
            }
        }
        if pg.get_application_name().is_none() {
            pg.application_name("pgnotifier");
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(10));
        }
        // A peer that vanished without a FIN is noticed in about a minute
        // even while idle; the heartbeat bounds it more tightly.
        pg.keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3);
        Ok(Self { pg, ssl_mode, tls })
    }

    /// The settings as a URL without the password, for logs and messages.
    pub fn redacted(&self) -> String {
        let user = self.pg.get_user().unwrap_or("");
        let ports = self.pg.get_ports();
        let hosts: Vec<String> = self
            .pg
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let name = match host {
                    Host::Tcp(h) => h.clone(),
                    Host::Unix(p) => format!("[{}]", p.display()),
                };
                match ports.get(i).or(ports.first()) {
                    Some(port) => format!("{name}:{port}"),
                    None => name,
                }
            })
            .collect();
        let db = self.pg.get_dbname().unwrap_or(user);
        let password = if self.pg.get_password().is_some() {
            ":***"
        } else {
            ""
        };
        let ssl = match self.ssl_mode {
            SslMode::Prefer => String::new(),
            mode => format!("?sslmode={}", mode.as_str()),
        };
        format!("postgres://{user}{password}@{}/{db}{ssl}", hosts.join(","))
    }

    /// The driver's settings, for the capability pool.
    pub(crate) fn pg_config(&self) -> &tokio_postgres::Config {
        &self.pg
    }

    pub(crate) fn tls_connector(&self) -> Connector {
        self.tls.clone()
    }

    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// Whether any configured host accepts a TCP (or Unix socket) connection
    /// on its port. No PostgreSQL protocol is spoken.
    pub(crate) async fn accepts_connections(&self) -> bool {
        let ports = self.pg.get_ports();
        for (i, host) in self.pg.get_hosts().iter().enumerate() {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            let attempt = async {
                match host {
                    Host::Tcp(name) => tokio::net::TcpStream::connect((name.as_str(), port))
                        .await
                        .is_ok(),
                    Host::Unix(dir) => {
                        tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}")))
                            .await
                            .is_ok()
                    }
                }
            };
            if let Ok(true) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
                return true;
            }
        }
        false
    }

    /// Open a connection with these settings, TLS as `sslmode` says.
    pub(crate) async fn connect(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<Socket, DbStream>,
        ),
        tokio_postgres::Error,
    > {
        self.pg.connect(self.tls.clone()).await
    }
}

/// libpq's default: the socket directory where a server listens on `port`
/// (Debian's, then upstream's `/tmp`), else Debian's if it exists.
fn default_socket_dir(port: u16) -> Option<&'static Path> {
    let dirs = ["/var/run/postgresql", "/tmp"].map(Path::new);
    dirs.into_iter()
        .find(|dir| dir.join(format!(".s.PGSQL.{port}")).exists())
        .or_else(|| {
            dirs.into_iter()
                .find(|dir| dir.ends_with("postgresql") && dir.is_dir())
        })
}

/// The port a lone default host would use: the URL's, `PGPORT`, or 5432.
fn default_port(pg: &tokio_postgres::Config) -> u16 {
    pg.get_ports()
        .first()
        .copied()
        .or_else(|| std::env::var("PGPORT").ok()?.parse().ok())
        .unwrap_or(5432)
}

/// What tokio-postgres negotiates for these hosts. A Unix socket never uses
/// TLS (as in libpq), so a list of sockets alone negotiates none. One
/// `sslmode` covers every host of a list, so a list that mixes sockets with
/// TCP hosts cannot also require TLS of the TCP ones.
fn negotiation(
    mode: SslMode,
    hosts: &[Host],
) -> Result<tokio_postgres::config::SslMode, ConfigError> {
    let sockets = hosts.iter().filter(|h| matches!(h, Host::Unix(_))).count();
    if sockets > 0 && sockets == hosts.len() {
        return Ok(tokio_postgres::config::SslMode::Disable);
    }
    let negotiated = mode.negotiation();
    if sockets > 0 && negotiated == tokio_postgres::config::SslMode::Require {
        return Err(ConfigError::invalid(
            "sslmode",
            format!(
                "sslmode={} cannot apply to a host list that mixes Unix socket directories with TCP hosts: sockets never use TLS; list only one kind",
                mode.as_str()
            ),
        ));
    }
    Ok(negotiated)
}

/// `sslmode` and `sslrootcert` as written in a URL, which tokio-postgres
/// does not take (it knows neither `verify-*` nor `sslrootcert`).
#[derive(Default)]
struct TlsParams {
    mode: Option<String>,
    root_cert: Option<String>,
}

/// Split `sslmode` and `sslrootcert` off a URL or key=value string.
fn take_tls_params(url: &str) -> (String, TlsParams) {
    let mut tls = TlsParams::default();
    let mut take = |key: &str, value: String| match key {
        "sslmode" => {
            tls.mode = Some(value);
            true
        }
        "sslrootcert" => {
            tls.root_cert = Some(value);
            true
        }
        _ => false,
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| {
                        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                        !take(key, percent_decode(value))
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        url.split_whitespace()
            .filter(|word| match word.split_once('=') {
                Some((key, value)) => !take(key, value.trim_matches('\'').to_owned()),
                None => true,
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rest, tls)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_url_hides_the_password() {
        let db = DatabaseConfig::from_url("postgres://alice:s3cret@db.example:6543/app").unwrap();
        let shown = db.redacted();
        assert_eq!(shown, "postgres://alice:***@db.example:6543/app");
        assert!(!format!("{db:?}").contains("s3cret"));
    }

    #[test]
    fn sslmode_and_sslrootcert_are_taken_from_urls_in_both_forms() {
        let (rest, tls) = take_tls_params(
            "postgres://u@h/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u@h/db?application_name=x");
        assert_eq!(tls.mode.as_deref(), Some("verify-full"));
        assert_eq!(tls.root_cert.as_deref(), Some("/tmp/ca.pem"));
        let (rest, tls) = take_tls_params("host=h sslmode=require dbname=db");
        assert_eq!(rest, "host=h dbname=db");
        assert_eq!(tls.mode.as_deref(), Some("require"));
        let db = DatabaseConfig::from_url("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!(db.ssl_mode(), SslMode::Require);
        assert_eq!(db.redacted(), "postgres://u@h:5432/db?sslmode=require");
    }

    #[test]
    fn a_bad_sslmode_or_a_missing_root_certificate_is_a_clear_error() {
        let err = DatabaseConfig::from_url("postgres://u@h/db?sslmode=sure").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("sslmode: \"sure\" is not one of"),
            "{err}"
        );
        let err = DatabaseConfig::from_url(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("sslrootcert /nonexistent/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn bad_url_is_a_clear_error_without_the_input() {
        let err = DatabaseConfig::from_url("postgres://bob:pw@host:notaport/db").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("database URL:"), "{text}");
        assert!(!text.contains("pw@"), "{text}");
    }

    #[test]
    fn sidecar_limits_apply_and_are_checked() {
        let sidecar: Sidecar =
            toml::from_str("timeout_ms = 250\nqueue_size = 8\npayload = \"raw\"").unwrap();
        let s = sidecar
            .limits
            .apply_to(SubscriberSettings::default())
            .unwrap();
        assert_eq!(s.plugin.timeout, Duration::from_millis(250));
        assert_eq!(s.queue.capacity, 8);
        assert_eq!(s.payload, PayloadMode::Raw);
        let bad: Sidecar = toml::from_str("memory_mib = 0").unwrap();
        let err = bad
            .limits
            .apply_to(SubscriberSettings::default())
            .unwrap_err();
        assert_eq!(err.to_string(), "memory_mib: 0 is outside 1..=4096");
    }

    #[test]
    fn a_number_too_large_for_its_setting_is_a_clear_error() {
        let err = Sidecar::parse(Path::new("p.toml"), "memory_mib = 99999999999999999999")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("99999999999999999999 is too large for this setting"),
            "{err}"
        );
        assert!(!err.contains("i128"), "{err}");
        let file: Result<FileConfig, _> =
            toml::from_str("[defaults]\nmemory_mib = 99999999999999999999");
        let err = toml_message(&file.unwrap_err());
        assert!(
            err.contains("99999999999999999999 is too large for this setting"),
            "{err}"
        );
    }

    #[test]
    fn the_failure_threshold_defaults_to_five_and_is_checked() {
        assert_eq!(SubscriberSettings::default().failure_threshold, 5);
        let off: Sidecar = toml::from_str("failure_threshold = 0").unwrap();
        let s = off.limits.apply_to(SubscriberSettings::default()).unwrap();
        assert_eq!(s.failure_threshold, 0);
        let huge: Sidecar = toml::from_str("failure_threshold = 2000000").unwrap();
        let err = huge
            .limits
            .apply_to(SubscriberSettings::default())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "failure_threshold: 2000000 is outside 0..=1000000"
        );
        let negative = Sidecar::parse(Path::new("p.toml"), "failure_threshold = -1").unwrap_err();
        assert!(negative.to_string().starts_with("p.toml:"), "{negative}");
    }

    #[test]
    fn the_admin_api_binds_beyond_loopback_only_with_a_token() {
        let dir = Some(Path::new("/tmp/x"));
        let local = ControlSettings::resolve(Some("127.0.0.1:0"), None, dir).unwrap();
        assert!(local.check_exposure().is_ok());
        for blank in ["", " \t "] {
            let open = ControlSettings::resolve(Some("0.0.0.0:7433"), Some(blank), dir).unwrap();
            let err = open.check_exposure().unwrap_err().to_string();
            assert!(
                err.contains("0.0.0.0:7433 is not a loopback address"),
                "{blank:?}: {err}"
            );
        }
        let guarded = ControlSettings::resolve(Some("[::]:7433"), Some("t0ken"), dir).unwrap();
        assert!(guarded.check_exposure().is_ok());
        assert!(!format!("{guarded:?}").contains("t0ken"));
        let bad = ControlSettings::resolve(Some("localhost"), None, dir).unwrap_err();
        assert!(bad.to_string().starts_with("admin_addr:"), "{bad}");
    }

    #[test]
    fn the_sample_config_parses_and_shows_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pgnotifier.toml");
        let file = FileConfig::load(&path).unwrap();
        assert_eq!(
            file.connection_settings().unwrap(),
            ConnectionSettings::default()
        );
        let defaults = file
            .defaults
            .apply_to(SubscriberSettings::default())
            .unwrap();
        assert_eq!(defaults, SubscriberSettings::default());
        DatabaseConfig::from_url(file.database_url.as_deref().unwrap()).unwrap();
        let control = ControlSettings::resolve(file.admin_addr.as_deref(), None, None).unwrap();
        assert_eq!(control.admin_addr.to_string(), DEFAULT_ADMIN_ADDR);
    }
}
