//! The host's own events, as an operator wants to see them: plugins loaded
//! and reloaded, reloads that failed and why, quarantines, gaps, and
//! leadership taken over. The last [`KEPT`] are kept in memory, numbered in
//! order, for the admin API and its console; the log has them too.
//!
//! Written on control paths only (never per notification), so a mutex is
//! cheap here.

use crate::sync::{lock, unix_ms};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

/// How many events the journal keeps.
pub const KEPT: usize = 200;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostEventKind {
    /// A plugin was loaded for the first time.
    Loaded,
    /// A plugin was loaded again (its file or sidecar changed, or asked).
    Reloaded,
    /// A plugin's file went away, and its subscriber with it.
    Unloaded,
    /// A plugin could not be loaded or reloaded; its detail says why. A
    /// subscriber loaded before keeps running as it was.
    LoadFailed,
    /// A subscriber failed too often in a row and was muted.
    Quarantined,
    /// A quarantine ended (unmuted, or a new version loaded).
    Released,
    /// Notifications may have been missed on these channels.
    Gap,
    /// This host began to lead its cluster (and dispatch).
    Leading,
}

/// One event of the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEvent {
    /// Its number, from 1, rising: a reader asks for what follows one.
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub kind: HostEventKind,
    /// What it is about: a subscriber, a plugin file, or channels.
    pub subject: String,
    /// What happened, in words; empty when the kind says it all.
    pub detail: String,
}

/// The last [`KEPT`] events.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    events: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    last_seq: u64,
    events: VecDeque<HostEvent>,
}

impl Journal {
    /// Note that `kind` happened to `subject`.
    pub(crate) fn record(&self, kind: HostEventKind, subject: &str, detail: impl Into<String>) {
        let at_ms = unix_ms(SystemTime::now());
        let mut kept = lock(&self.events);
        kept.last_seq += 1;
        let event = HostEvent {
            seq: kept.last_seq,
            at_ms,
            kind,
            subject: subject.to_owned(),
            detail: detail.into(),
        };
        if kept.events.len() == KEPT {
            kept.events.pop_front();
        }
        kept.events.push_back(event);
    }

    /// The events kept that follow event `seq` (0: all), oldest first.
    pub(crate) fn after(&self, seq: u64) -> Vec<HostEvent> {
        let kept = lock(&self.events);
        let newer = kept.events.iter().filter(|e| e.seq > seq);
        newer.cloned().collect()
    }

    /// The number of the latest event (0: none yet).
    pub(crate) fn last_seq(&self) -> u64 {
        lock(&self.events).last_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_keeps_the_last_events_numbered_in_order() {
        let journal = Journal::default();
        for n in 0..KEPT + 5 {
            journal.record(HostEventKind::Loaded, &format!("p{n}"), "");
        }
        let recent = journal.after(0);
        assert_eq!(recent.len(), KEPT);
        assert_eq!(journal.last_seq(), (KEPT + 5) as u64);
        assert_eq!(journal.after((KEPT + 3) as u64).len(), 2);
        assert_eq!(recent[0].seq, 6);
        assert_eq!(recent[0].subject, "p5");
        assert_eq!(recent[KEPT - 1].seq, (KEPT + 5) as u64);
        assert!(recent.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    }

    #[test]
    fn a_kind_reads_as_snake_case() {
        let json = serde_json::to_string(&HostEventKind::LoadFailed).unwrap();
        assert_eq!(json, "\"load_failed\"");
    }
}
