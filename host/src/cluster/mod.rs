//! More than one host: hosts with the same cluster name (and group) on one
//! database elect a leader, and only the leader dispatches.
//!
//! - The election is a PostgreSQL session advisory lock, taken on the LISTEN
//!   connection itself ([`election`]): a leader that loses its connection
//!   loses its notifications and its leadership at the same moment, so two
//!   hosts never dispatch at once.
//! - A standby keeps its plugins loaded and its connection open, LISTENs
//!   nothing, and tries the lock every quarter of `takeover`.
//! - `ClusterStatus` is what the rest of the host reads: the role, the
//!   leader's identity, the takeovers, and whether this host may dispatch
//!   (which at-least-once feeders wait on).

pub mod election;

use crate::sync::lock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;
use tokio::sync::watch;

/// `[cluster]` of the config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    /// Hosts with the same name and group elect one leader.
    pub name: String,
    /// Splits a cluster: each group has its own leader.
    pub group: Option<String>,
    /// How soon a standby takes over from a leader that is gone.
    pub takeover: Duration,
}

/// A takeover within this, unless configured.
pub const DEFAULT_TAKEOVER: Duration = Duration::from_secs(4);

impl ClusterSettings {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            group: None,
            takeover: DEFAULT_TAKEOVER,
        }
    }

    /// The text whose `hashtextextended(…, 0)` is the advisory lock key.
    pub fn lock_name(&self) -> String {
        format!(
            "pgnotifier cluster {}/{}",
            self.name,
            self.group.as_deref().unwrap_or("")
        )
    }

    /// How often a standby tries the lock.
    pub(crate) fn poll(&self) -> Duration {
        (self.takeover / 4).max(Duration::from_millis(20))
    }

    /// The LISTEN connection's heartbeat: the configured one, at most an
    /// eighth of the takeover, so a leader whose connection stalls stands
    /// down within a quarter of it (two heartbeats), before the server
    /// frees its lock for a standby.
    pub(crate) fn heartbeat(&self, configured: Option<Duration>) -> Duration {
        let cap = (self.takeover / 8).max(Duration::from_millis(20));
        configured.map_or(cap, |every| every.min(cap))
    }
}

/// What this host is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// No cluster: it dispatches.
    Alone,
    Leader,
    /// Another host leads, or none can be seen yet: it dispatches nothing.
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Alone => "alone",
            Role::Leader => "leader",
            Role::Standby => "standby",
        }
    }
}

/// How this host stands in its cluster.
#[derive(Debug)]
pub(crate) struct ClusterStatus {
    pub(crate) settings: Option<ClusterSettings>,
    pub(crate) takeovers: AtomicU64,
    /// The leader as PostgreSQL shows it, when known.
    leader: std::sync::Mutex<Option<String>>,
    /// True while this host may dispatch: alone, or leading. The role
    /// follows from it and `settings`.
    dispatching: watch::Sender<bool>,
}

impl ClusterStatus {
    pub(crate) fn new(settings: Option<ClusterSettings>) -> Self {
        let alone = settings.is_none();
        Self {
            settings,
            takeovers: AtomicU64::new(0),
            leader: Default::default(),
            dispatching: watch::Sender::new(alone),
        }
    }

    pub(crate) fn role(&self) -> Role {
        match (&self.settings, *self.dispatching.borrow()) {
            (None, _) => Role::Alone,
            (Some(_), true) => Role::Leader,
            (Some(_), false) => Role::Standby,
        }
    }

    pub(crate) fn leader(&self) -> Option<String> {
        lock(&self.leader).clone()
    }

    /// Whether this host may dispatch, as it changes.
    pub(crate) fn watch_dispatching(&self) -> watch::Receiver<bool> {
        self.dispatching.subscribe()
    }

    pub(crate) fn lead(&self, me: String) {
        *lock(&self.leader) = Some(me);
        self.dispatching.send_replace(true);
    }

    /// Not leading (standby, or the connection is gone); `leader` if seen.
    pub(crate) fn stand_by(&self, leader: Option<String>) {
        if self.settings.is_none() {
            return;
        }
        *lock(&self.leader) = leader;
        self.dispatching.send_replace(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_is_at_most_an_eighth_of_the_takeover() {
        let mut settings = ClusterSettings::new("orders");
        assert_eq!(settings.takeover, DEFAULT_TAKEOVER);
        assert_eq!(settings.heartbeat(None), Duration::from_millis(500));
        assert_eq!(
            settings.heartbeat(Some(Duration::from_secs(30))),
            Duration::from_millis(500)
        );
        assert_eq!(
            settings.heartbeat(Some(Duration::from_millis(100))),
            Duration::from_millis(100)
        );
        settings.takeover = Duration::from_millis(1000);
        assert_eq!(settings.poll(), Duration::from_millis(250));
        assert_eq!(settings.lock_name(), "pgnotifier cluster orders/");
    }
}
