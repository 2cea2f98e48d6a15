//! Capabilities: what a plugin may do besides logging, each granted by its
//! sidecar's `[grants]` table. Nothing is granted by default; a call without
//! the grant returns an error to the guest, never a trap.
//!
//! - `publish`: `NOTIFY` on allow-listed channels ([`database`]);
//! - `query`: SQL on a small pool of its own, read-only unless `query_write` ([`database`]);
//! - `http`: `wasi:http` requests to allow-listed origins ([`http`]).
//!
//! Host calls block the calling thread — a subscriber's worker, or the
//! loader's blocking thread during `register` — on the notifier's runtime.

mod confinement;
mod database;
mod fixture;
mod http;

pub use database::CapabilityPool;
pub use fixture::QueryFixture;
pub(crate) use http::HttpGate;
pub use http::Origin;

use crate::channel::{self, ChannelNameError};
use crate::dispatch::CallCancel;
use crate::pg::describe;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Why a grant was refused at load, or a capability call refused or
/// failed. The guest sees the text (the WIT's `result<_, string>`).
#[derive(Debug, thiserror::Error)]
pub enum CapabilityError {
    /// The sidecar's `[grants]` are wrong; the text names the grant.
    #[error("{0}")]
    BadGrant(String),
    /// The call is not covered by the plugin's grants.
    #[error("{0}")]
    NotGranted(String),
    /// The call goes past one of its limits (a payload's size, rows).
    #[error("{0}")]
    Limit(String),
    #[error(transparent)]
    Channel(#[from] ChannelNameError),
    /// PostgreSQL refused the statement, or the connection broke.
    #[error("{}", describe(.0))]
    Database(#[from] tokio_postgres::Error),
    /// A setup step at load was refused; `step` says which.
    #[error("{step}: {}", describe(.source))]
    Setup {
        step: String,
        source: tokio_postgres::Error,
    },
    #[error("no database connection: {0}")]
    NoConnection(#[from] deadpool_postgres::PoolError),
    #[error(
        "no database here: capabilities run in `pgnotifier run`, the library's Notifier, and `pgnotifier call --database-url URL` (or, for query, `--query-fixture FILE`)"
    )]
    NoDatabase,
    #[error("the capability pool needs a tokio runtime")]
    NoRuntime,
    #[error("capability pool: {0}")]
    Pool(#[from] deadpool_postgres::BuildError),
    /// A query fixture (`pgnotifier call --query-fixture`) is malformed or
    /// has no rows for the SQL.
    #[error("{0}")]
    Fixture(String),
}

/// A sidecar's `[grants]` table, as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantSettings {
    /// Channels the plugin may `publish` to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Read-only `query`.
    #[serde(default)]
    pub query: bool,
    /// `query` that may write; implies `query`.
    #[serde(default)]
    pub query_write: bool,
    /// The database role every query of the plugin runs as.
    #[serde(default)]
    pub query_role: Option<String>,
    /// Origins (`scheme://host[:port]`) the plugin may send HTTP requests to.
    #[serde(default)]
    pub http: Vec<String>,
}

/// What a plugin may do, checked once at load.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    pub publish: Vec<String>,
    pub query: QueryAccess,
    /// The role queries run as; `None`: the host's own (refused if it is privileged).
    pub query_role: Option<String>,
    pub http: Vec<Origin>,
}

/// How far a plugin's `query` may go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueryAccess {
    #[default]
    None,
    ReadOnly,
    ReadWrite,
}

impl GrantSettings {
    /// Check every entry; the error names the grant at fault.
    pub fn validate(&self) -> Result<Grants, CapabilityError> {
        let bad = |grant: &str, e: &dyn std::fmt::Display| {
            CapabilityError::BadGrant(format!("grants.{grant}: {e}"))
        };
        for name in &self.publish {
            channel::validate(name).map_err(|e| bad("publish", &e))?;
        }
        let http = self
            .http
            .iter()
            .map(|text| Origin::parse(text).map_err(|e| bad("http", &e)))
            .collect::<Result<Vec<_>, _>>()?;
        let query = match (self.query, self.query_write) {
            (_, true) => QueryAccess::ReadWrite,
            (true, false) => QueryAccess::ReadOnly,
            (false, false) => QueryAccess::None,
        };
        if let Some(role) = &self.query_role {
            if query == QueryAccess::None {
                return Err(CapabilityError::BadGrant(
                    "grants.query_role: set query = true (or query_write = true) too".into(),
                ));
            }
            if role.is_empty() || role.len() > channel::MAX_CHANNEL_BYTES || role.contains('\0') {
                return Err(CapabilityError::BadGrant(format!(
                    "grants.query_role: {role:?} is not a PostgreSQL role name (1 to {} bytes, no NUL)",
                    channel::MAX_CHANNEL_BYTES
                )));
            }
        }
        Ok(Grants {
            publish: self.publish.clone(),
            query,
            query_role: self.query_role.clone(),
            http,
        })
    }
}

impl Grants {
    pub fn is_empty(&self) -> bool {
        self.publish.is_empty() && self.query == QueryAccess::None && self.http.is_empty()
    }
}

/// `none`, or e.g. `publish to a, b; query (read-only); http to https://x:443`.
impl std::fmt::Display for Grants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.publish.is_empty() {
            parts.push(format!("publish to {}", self.publish.join(", ")));
        }
        let role = (self.query_role.as_ref())
            .map(|r| format!(" as role {r}"))
            .unwrap_or_default();
        match self.query {
            QueryAccess::None => {}
            QueryAccess::ReadOnly => parts.push(format!("query (read-only){role}")),
            QueryAccess::ReadWrite => parts.push(format!("query (read-write){role}")),
        }
        if !self.http.is_empty() {
            let origins: Vec<String> = self.http.iter().map(ToString::to_string).collect();
            parts.push(format!("http to {}", origins.join(", ")));
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// Limits on capability calls; `[defaults]` sets them, a sidecar overrides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CapabilityLimits {
    /// `statement_timeout` of each query, and the longest wait for a pooled connection.
    pub query_timeout: Duration,
    /// A query returning more rows than this fails.
    pub query_max_rows: usize,
    /// Bound on connecting, on the first response byte and between later ones.
    pub http_timeout: Duration,
    /// A response body longer than this fails.
    pub http_max_response_bytes: usize,
}

impl Default for CapabilityLimits {
    fn default() -> Self {
        Self {
            query_timeout: Duration::from_secs(5),
            query_max_rows: 1000,
            http_timeout: Duration::from_secs(10),
            http_max_response_bytes: 1 << 20,
        }
    }
}

/// One plugin's grants and limits, with the services that carry them out.
pub(crate) struct PluginCapabilities {
    pub(crate) id: Arc<str>,
    pub(crate) grants: Grants,
    pub(crate) limits: CapabilityLimits,
    pub(crate) pool: Option<Arc<CapabilityPool>>,
    pub(crate) offline: Offline,
}

/// How capabilities behave for a plugin run offline (`pgnotifier call`);
/// the default is the host's own behaviour.
#[derive(Clone, Debug, Default)]
pub(crate) struct Offline {
    /// `publish` logs what it would send instead of sending it.
    pub(crate) publish_dry_run: bool,
    /// HTTP is refused even to granted origins, saying how to allow it.
    pub(crate) refuse_http: bool,
    /// `query` answers from these rows instead of a database.
    pub(crate) query_fixture: Option<Arc<QueryFixture>>,
}

impl PluginCapabilities {
    /// The hooks that decide each `wasi:http` request of this plugin.
    pub(crate) fn http_gate(&self, cancel: Arc<CallCancel>) -> HttpGate {
        HttpGate::new(
            self.id.clone(),
            self.grants.http.clone(),
            self.limits,
            self.offline.refuse_http,
            cancel,
        )
    }
}
