//! The application's config file (`--config FILE`) and its control settings:
//! where the admin API listens, its token, and where the runtime state is kept.

use pgnotifier::cluster::ClusterSettings;
use pgnotifier::durable::relay::valid_slot_name;
use pgnotifier::durable::{Transport, DEFAULT_SLOT};
use pgnotifier::plugins::LimitSettings;
use pgnotifier::settings::{check_range, toml_message, ConfigError};
use pgnotifier::ConnectionSettings;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The config file (`--config FILE`). Every key is optional.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
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
    /// Warn past this fill of PostgreSQL's notification queue, in percent.
    pub queue_usage_warn_percent: Option<u64>,
    /// Connections in the pool that plugins' `publish` and `query` share.
    pub query_pool_size: Option<usize>,
    /// Address of the admin API and metrics (default 127.0.0.1:7433).
    pub admin_addr: Option<String>,
    /// Bearer token the admin API requires; needed to bind beyond loopback.
    pub admin_token: Option<String>,
    /// Where the runtime state (mutes, subscriptions) is kept.
    pub data_dir: Option<PathBuf>,
    /// How long an outbox event is kept at most: `"7d"` unless set.
    pub outbox_retention: Option<String>,
    /// The largest payload `pgnotifier.send` accepts (default 1 MiB).
    pub max_payload_bytes: Option<u64>,
    /// Where `pgnotifier.send` writes: `"outbox"` (default) or `"wal"`.
    pub durable_transport: Option<String>,
    /// The WAL transport's replication slot and publication (`"pgnotifier"`).
    pub wal_slot: Option<String>,
    /// Limits for every subscriber; a sidecar overrides them per plugin.
    #[serde(default)]
    pub defaults: LimitSettings,
    /// Run as one host of several: `[cluster] name = "…"`.
    pub cluster: Option<ClusterTable>,
}

/// `[cluster]`: hosts with the same name and group on one database elect
/// one leader, and only it dispatches.
#[derive(Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTable {
    pub name: Option<String>,
    pub group: Option<String>,
    /// How soon a standby takes over from a leader that is gone (default 4000).
    pub takeover_ms: Option<u64>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = pgnotifier::files::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: toml_message(&e),
        })
    }
}

impl ConfigFile {
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
        if let Some(percent) = self.queue_usage_warn_percent {
            check_range("queue_usage_warn_percent", percent, 1, 100)?;
            out.queue_warn_percent = percent as u8;
        }
        Ok(out)
    }
}

impl ConfigFile {
    /// `max_payload_bytes` (default 1 MiB), checked: from 8000 bytes, what
    /// `pg_notify` takes, to 256 MiB.
    pub fn max_payload_bytes(&self) -> Result<u32, ConfigError> {
        use pgnotifier::sandbox::{DEFAULT_MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES};
        let bytes = (self.max_payload_bytes).unwrap_or(u64::from(DEFAULT_MAX_PAYLOAD_BYTES));
        let (min, max) = (MAX_PAYLOAD_BYTES.start(), MAX_PAYLOAD_BYTES.end());
        check_range("max_payload_bytes", bytes, u64::from(*min), u64::from(*max))?;
        Ok(bytes as u32)
    }

    /// `durable_transport` (default `"outbox"`) with `wal_slot`, checked.
    pub fn durable_transport(&self) -> Result<Transport, ConfigError> {
        let slot = self.wal_slot.as_deref().unwrap_or(DEFAULT_SLOT);
        if !valid_slot_name(slot) {
            return Err(ConfigError::invalid(
                "wal_slot",
                format!("{slot:?} is not a replication slot name: lower-case letters, digits and underscores, at most 63"),
            ));
        }
        match self.durable_transport.as_deref() {
            None | Some("outbox") => Ok(Transport::Outbox),
            Some("wal") => Ok(Transport::Wal {
                slot: slot.to_owned(),
            }),
            Some(other) => Err(ConfigError::invalid(
                "durable_transport",
                format!("{other:?} is not one of \"outbox\", \"wal\""),
            )),
        }
    }

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

    /// `outbox_retention`, checked: from a minute to ten years.
    pub fn outbox_retention(&self) -> Result<Option<Duration>, ConfigError> {
        let Some(text) = &self.outbox_retention else {
            return Ok(None);
        };
        let (min, max) = (Duration::from_secs(60), Duration::from_secs(3650 * 86_400));
        parse_span("outbox_retention", text, min, max).map(Some)
    }

    /// `[cluster]`, checked: a name is required, and a takeover from 100 ms to 10 min.
    pub fn cluster(&self) -> Result<Option<ClusterSettings>, ConfigError> {
        let Some(table) = &self.cluster else {
            return Ok(None);
        };
        let name = match table.name.as_deref().map(str::trim) {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => {
                return Err(ConfigError::invalid(
                    "cluster.name",
                    "is required in [cluster]: hosts with the same name elect one leader",
                ))
            }
        };
        let mut settings = ClusterSettings::new(name);
        settings.group = table.group.clone().filter(|g| !g.trim().is_empty());
        if let Some(ms) = table.takeover_ms {
            check_range("cluster.takeover_ms", ms, 100, 600_000)?;
            settings.takeover = Duration::from_millis(ms);
        }
        Ok(Some(settings))
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

/// A span written as a whole number and a unit, `30s`, `15m`, `12h` or
/// `7d`, checked to lie within `min..=max`.
fn parse_span(
    setting: &str,
    text: &str,
    min: std::time::Duration,
    max: std::time::Duration,
) -> Result<std::time::Duration, ConfigError> {
    let bad = || {
        ConfigError::invalid(
            setting,
            format!("{text:?} is not a span like \"30s\", \"15m\", \"12h\" or \"7d\""),
        )
    };
    let text = text.trim();
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let span = std::time::Duration::from_secs(number.saturating_mul(seconds));
    if span < min || span > max {
        return Err(ConfigError::invalid(
            setting,
            format!("{text} is outside {min:?}..={max:?}"),
        ));
    }
    Ok(span)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgnotifier::plugins::SubscriberSettings;
    use pgnotifier::DatabaseSettings;
    use std::collections::BTreeSet;

    /// The keys a table of the config file accepts, as serde names them
    /// when it refuses an unknown one.
    fn accepted<T: serde::de::DeserializeOwned + std::fmt::Debug>(
        prefix: &str,
    ) -> BTreeSet<String> {
        let refused = toml::from_str::<T>("not_a_key = 1")
            .unwrap_err()
            .to_string();
        let expected = refused
            .split_once("expected")
            .map(|(_, list)| list)
            .unwrap_or_else(|| panic!("no list of keys in {refused:?}"));
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(|key| format!("{prefix}{key}"))
            .collect()
    }

    /// The config-file keys the reference table in docs/configuration.md
    /// names: backticked names in its "config file" column, outside
    /// parentheses, each under the `[defaults]` or `[cluster]` it follows.
    fn documented() -> BTreeSet<String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let mut keys = BTreeSet::new();
        let rows = doc
            .lines()
            .skip_while(|l| !l.starts_with("| setting |"))
            .skip(2);
        for row in rows.take_while(|l| l.starts_with('|')) {
            let cell = row.split('|').nth(2).unwrap_or("");
            let (mut table, mut depth) = ("", 0);
            for (i, part) in cell.split('`').enumerate() {
                if i % 2 == 0 {
                    depth += part.matches('(').count() as i32 - part.matches(')').count() as i32;
                    continue;
                }
                if depth > 0 {
                    continue;
                }
                let name = match part.split_once("] ") {
                    Some((heading, name)) => {
                        table = if heading == "[defaults" {
                            "defaults."
                        } else {
                            "cluster."
                        };
                        name
                    }
                    None => part,
                };
                keys.insert(format!("{table}{name}"));
            }
        }
        keys
    }

    #[test]
    fn the_configuration_reference_names_every_key_and_only_those() {
        let mut keys = accepted::<ConfigFile>("");
        keys.retain(|key| key != "defaults" && key != "cluster");
        keys.extend(accepted::<LimitSettings>("defaults."));
        keys.extend(accepted::<ClusterTable>("cluster."));
        let documented = documented();
        let missing: Vec<&String> = keys.difference(&documented).collect();
        let unknown: Vec<&String> = documented.difference(&keys).collect();
        assert!(
            missing.is_empty(),
            "accepted, not in docs/configuration.md: {missing:?}"
        );
        assert!(
            unknown.is_empty(),
            "in docs/configuration.md, not accepted: {unknown:?}"
        );
    }

    #[test]
    fn a_cluster_needs_a_name_and_a_sane_takeover() {
        let cluster = |text: &str| toml::from_str::<ConfigFile>(text).unwrap().cluster();
        let settings =
            cluster("[cluster]\nname = \"orders\"\ngroup = \"hooks\"\ntakeover_ms = 500")
                .unwrap()
                .unwrap();
        assert_eq!(settings.lock_name(), "pgnotifier cluster orders/hooks");
        assert_eq!(settings.takeover, Duration::from_millis(500));
        assert_eq!(cluster("").unwrap(), None);
        let err = cluster("[cluster]\ngroup = \"hooks\"")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cluster.name: is required"), "{err}");
        let err = cluster("[cluster]\nname = \"x\"\ntakeover_ms = 5")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cluster.takeover_ms"), "{err}");
    }

    #[test]
    fn a_number_too_large_for_a_default_is_a_clear_error() {
        let file: Result<ConfigFile, _> =
            toml::from_str("[defaults]\nmemory_mib = 99999999999999999999");
        let err = toml_message(&file.unwrap_err());
        assert!(
            err.contains("99999999999999999999 is too large for this setting"),
            "{err}"
        );
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
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/pgnotifier.toml");
        let file = ConfigFile::load(&path).unwrap();
        assert_eq!(
            file.connection_settings().unwrap(),
            ConnectionSettings::default()
        );
        let defaults = file
            .defaults
            .apply_to(SubscriberSettings::default())
            .unwrap();
        assert_eq!(defaults, SubscriberSettings::default());
        assert_eq!(
            file.outbox_retention().unwrap(),
            Some(pgnotifier::durable::DEFAULT_RETENTION)
        );
        assert_eq!(
            file.max_payload_bytes().unwrap(),
            pgnotifier::sandbox::DEFAULT_MAX_PAYLOAD_BYTES
        );
        assert_eq!(file.durable_transport().unwrap(), Transport::Outbox);
        DatabaseSettings::from_url(file.database_url.as_deref().unwrap()).unwrap();
        let control = ControlSettings::resolve(file.admin_addr.as_deref(), None, None).unwrap();
        assert_eq!(control.admin_addr.to_string(), DEFAULT_ADMIN_ADDR);
    }

    #[test]
    fn max_payload_bytes_runs_from_what_pg_notify_takes_to_256_mib() {
        let bytes = |text: &str| {
            let file: ConfigFile = toml::from_str(text).unwrap();
            file.max_payload_bytes().map_err(|e| e.to_string())
        };
        assert_eq!(bytes(""), Ok(1 << 20));
        assert_eq!(bytes("max_payload_bytes = 8000"), Ok(8000));
        assert_eq!(
            bytes("max_payload_bytes = 7999"),
            Err("max_payload_bytes: 7999 is outside 8000..=268435456".to_owned())
        );
        assert!(bytes("max_payload_bytes = 268435457").is_err());
    }

    #[test]
    fn the_durable_transport_is_outbox_or_wal_with_a_slot_postgresql_takes() {
        let transport = |text: &str| {
            let file: ConfigFile = toml::from_str(text).unwrap();
            file.durable_transport().map_err(|e| e.to_string())
        };
        assert_eq!(transport(""), Ok(Transport::Outbox));
        assert_eq!(
            transport("durable_transport = \"wal\""),
            Ok(Transport::Wal {
                slot: "pgnotifier".to_owned()
            })
        );
        assert_eq!(
            transport("durable_transport = \"wal\"\nwal_slot = \"eu_1\""),
            Ok(Transport::Wal {
                slot: "eu_1".to_owned()
            })
        );
        let bad = transport("durable_transport = \"kafka\"").unwrap_err();
        assert!(bad.starts_with("durable_transport: "), "{bad}");
        let bad = transport("wal_slot = \"Bad-Name\"").unwrap_err();
        assert!(bad.starts_with("wal_slot: "), "{bad}");
    }

    #[test]
    fn a_span_has_a_number_and_a_unit_within_range() {
        let (min, max) = (Duration::from_secs(60), Duration::from_secs(86_400 * 30));
        let span = |text| parse_span("outbox_retention", text, min, max);
        assert_eq!(span("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(span("90m").unwrap(), Duration::from_secs(5400));
        for bad in ["7 days", "d", "", "7w", "-1h"] {
            let err = span(bad).unwrap_err().to_string();
            assert!(err.starts_with("outbox_retention: "), "{bad}: {err}");
        }
        let err = span("10s").unwrap_err().to_string();
        assert!(err.contains("outside"), "{err}");
    }
}
