//! A plugin's settings: its sidecar (`NAME.toml`), and the limits that
//! `[defaults]` and the sidecar set, checked and resolved.

use crate::capabilities::{CapabilityLimits, GrantSettings, Grants};
use crate::dispatch::{DispatchSettings, Overflow};
use crate::durable::{DeliveryMode, RetryPolicy};
use crate::payload::PayloadMode;
use crate::sandbox::{PluginLimits, EPOCH_TICK};
use crate::settings::{check_range, toml_message, ConfigError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

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
    /// `"at-most-once"` (live `NOTIFY` only) or `"at-least-once"` (also
    /// every event `pgnotifier.send` records on the plugin's channels).
    pub delivery: Option<Delivery>,
    /// At-least-once: calls of one event before it is dead-lettered.
    pub retry_max_attempts: Option<u32>,
    /// At-least-once: the wait after the first failed call; it doubles.
    pub retry_backoff_ms: Option<u64>,
}

/// A sidecar's `delivery`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    AtMostOnce,
    AtLeastOnce,
}

/// A sidecar's `start`: where a new at-least-once subscriber begins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Start {
    /// With what is sent from now on.
    #[default]
    Now,
    /// With its tables' current rows, then every change after them.
    Snapshot,
}

/// The effective settings of one plugin subscriber: its sandbox limits,
/// how it is dispatched to, and the limits of its capabilities.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubscriberSettings {
    pub plugin: PluginLimits,
    pub dispatch: DispatchSettings,
    pub capabilities: CapabilityLimits,
    pub delivery: DeliveryMode,
}

impl SubscriberSettings {
    /// The longest one call can still run once the host cut it short (see
    /// the feeder): its deadline, on the wall clock; or, for a plugin with
    /// `grants`, whose deadline counts CPU time, the longest capability
    /// call it may be waiting in (a query waits for a pooled connection,
    /// then runs), and the epoch tick at which it then stops.
    pub(crate) fn longest_call(&self, grants: &Grants) -> Duration {
        if grants.is_empty() {
            return self.plugin.timeout;
        }
        let limits = &self.capabilities;
        (2 * limits.query_timeout).max(limits.http_timeout) + EPOCH_TICK
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
            out.dispatch.queue.capacity = size;
        }
        if let Some(overflow) = self.overflow {
            out.dispatch.queue.overflow = overflow;
        }
        if let Some(ms) = self.overflow_wait_ms {
            check_range("overflow_wait_ms", ms, 0, 60_000)?;
            out.dispatch.queue.overflow_wait = Duration::from_millis(ms);
        }
        if let Some(payload) = self.payload {
            out.dispatch.payload = payload;
        }
        if let Some(n) = self.failure_threshold {
            check_range("failure_threshold", u64::from(n), 0, 1_000_000)?;
            out.dispatch.failure_threshold = n;
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
        let mut retry = match out.delivery {
            DeliveryMode::AtLeastOnce(retry) => retry,
            DeliveryMode::AtMostOnce => RetryPolicy::default(),
        };
        if let Some(n) = self.retry_max_attempts {
            check_range("retry_max_attempts", u64::from(n), 1, 1000)?;
            retry.max_attempts = n;
        }
        if let Some(ms) = self.retry_backoff_ms {
            check_range("retry_backoff_ms", ms, 1, 3_600_000)?;
            retry.backoff = Duration::from_millis(ms);
        }
        out.delivery = match (self.delivery, out.delivery) {
            (Some(Delivery::AtMostOnce), _) => DeliveryMode::AtMostOnce,
            (Some(Delivery::AtLeastOnce), _) | (None, DeliveryMode::AtLeastOnce(_)) => {
                DeliveryMode::AtLeastOnce(retry)
            }
            (None, DeliveryMode::AtMostOnce) => DeliveryMode::AtMostOnce,
        };
        Ok(out)
    }
}

/// A plugin's optional `NAME.toml`, beside `NAME.wasm`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Sidecar {
    /// Channels to subscribe to, overriding what `register` returns.
    pub channels: Option<Vec<String>>,
    /// Tables whose row changes the subscriber receives, each on the
    /// channel `schema.table` (the WAL transport; at-least-once delivery).
    pub tables: Option<Vec<String>>,
    /// Where the subscriber begins, the first time it is fed.
    #[serde(default)]
    pub start: Start,
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
                    "unknown key `{key}`; expected channels, tables, start, config, grants, payload, timeout_ms, memory_mib, queue_size, overflow, overflow_wait_ms, failure_threshold, query_timeout_ms, query_max_rows, http_timeout_ms, http_max_response_bytes, delivery, retry_max_attempts or retry_backoff_ms"
                ),
            });
        }
        Ok(sidecar)
    }

    /// `config` as the string pairs `register` takes: a string (or a
    /// date-time) as its text, anything else as JSON, so that numbers, booleans and lists keep their
    /// type for a plugin that reads them back (the Rust SDK's `Config::get`).
    pub fn config_pairs(&self) -> Vec<(String, String)> {
        self.config
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Datetime(d) => d.to_string(),
                    other => json_of(other).to_string(),
                };
                (k.clone(), value)
            })
            .collect()
    }
}

/// A TOML value as JSON; a date-time becomes its RFC 3339 text.
fn json_of(value: &toml::Value) -> serde_json::Value {
    use serde_json::Value as Json;
    match value {
        toml::Value::String(s) => Json::String(s.clone()),
        toml::Value::Integer(i) => Json::from(*i),
        toml::Value::Float(f) => Json::from(*f),
        toml::Value::Boolean(b) => Json::Bool(*b),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(items) => Json::Array(items.iter().map(json_of).collect()),
        toml::Value::Table(table) => {
            Json::Object(table.iter().map(|(k, v)| (k.clone(), json_of(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_values_keep_their_type_as_json() {
        let sidecar: Sidecar = toml::from_str(
            "[config]\ns = \"5\"\nn = 5\nf = 2.5\nb = true\nl = [\"a\", 1]\nt = { k = \"v\" }\nd = 1979-05-27",
        )
        .unwrap();
        let pairs: BTreeMap<String, String> = sidecar.config_pairs().into_iter().collect();
        assert_eq!(pairs["s"], "5");
        assert_eq!(pairs["n"], "5");
        assert_eq!(pairs["f"], "2.5");
        assert_eq!(pairs["b"], "true");
        assert_eq!(pairs["l"], r#"["a",1]"#);
        assert_eq!(pairs["t"], r#"{"k":"v"}"#);
        assert_eq!(pairs["d"], "1979-05-27");
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
        assert_eq!(s.dispatch.queue.capacity, 8);
        assert_eq!(s.dispatch.payload, PayloadMode::Raw);
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
    }

    #[test]
    fn the_failure_threshold_defaults_to_five_and_is_checked() {
        assert_eq!(SubscriberSettings::default().dispatch.failure_threshold, 5);
        let off: Sidecar = toml::from_str("failure_threshold = 0").unwrap();
        let s = off.limits.apply_to(SubscriberSettings::default()).unwrap();
        assert_eq!(s.dispatch.failure_threshold, 0);
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
}
