//! The registry: channels, subscribers and mute flags, as an immutable snapshot.
//!
//! Readers (the router, on every notification) load the current snapshot
//! without a lock. Writers serialise on a mutex, build a new snapshot from the
//! old one and swap it in, then publish the set of *active* channels for the
//! listener to LISTEN. A channel is active when it is not muted and has at
//! least one un-muted subscriber.

mod saver;
pub mod state;
mod views;

pub use views::{ChannelSubscriberView, ChannelView, SubscriberView, SubscriptionView};

use crate::channel::{self, ChannelNameError};
use crate::dispatch::{Deliver, DispatchSettings, Mailbox, QuarantineHook, RouteTable};
use crate::journal::{HostEventKind, Journal};
use crate::sync::lock;
use arc_swap::ArcSwap;
use saver::Saver;
use serde::{Deserialize, Serialize};
use state::{ChannelState, RuntimeState, SavedQuarantine, StateFile, SubscriberState};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Why a registry operation was refused. A refused operation changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    InvalidChannel(#[from] ChannelNameError),
    #[error("unknown channel {0:?}")]
    UnknownChannel(String),
    #[error("unknown subscriber {0:?}")]
    UnknownSubscriber(String),
    #[error("subscriber {0:?} already exists")]
    SubscriberExists(String),
    #[error("subscriber {id:?} is not subscribed to channel {channel:?}")]
    NotSubscribed { id: String, channel: String },
}

/// A channel: its mute flag and its received counter, which lives as long
/// as the channel does, across snapshots.
#[derive(Clone, Default)]
struct ChannelEntry {
    muted: bool,
    received: Arc<AtomicU64>,
}

/// The channels the listener must be LISTENing.
pub type ActiveChannels = Arc<BTreeSet<Arc<str>>>;

/// Where a subscriber came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum SubscriberSource {
    /// A WebAssembly plugin file.
    Plugin {
        path: PathBuf,
        /// SHA-256 of the `.wasm` file, hex.
        sha256: String,
        /// The `pgnotifier:plugin` version it targets.
        wit: Cow<'static, str>,
        /// SHA-256 of the `.wasm` and its sidecar together: unchanged means nothing to reload.
        #[serde(skip)]
        fingerprint: String,
    },
    /// A Rust closure registered through the library.
    Native,
}

#[derive(Clone)]
struct SubscriberEntry {
    mailbox: Arc<Mailbox>,
    source: SubscriberSource,
    /// Channel → this subscriber's own mute flag on it.
    channels: BTreeMap<Arc<str>, bool>,
    /// The channels the subscriber itself declared (its plugin's `register`
    /// or sidecar); the difference from `channels` was made at runtime.
    declared: BTreeSet<Arc<str>>,
    /// Why it was quarantined: muted on every channel until an explicit
    /// unmute or a reload, whatever its own mute flags say.
    quarantine: Option<String>,
}

impl SubscriberEntry {
    /// End a quarantine, if any, so deliveries flow again.
    fn release(&mut self, id: &str, journal: &Journal) {
        if self.quarantine.take().is_some() {
            self.mailbox.release_quarantine();
            tracing::info!(subscriber = %id, "released from quarantine");
            journal.record(HostEventKind::Released, id, "");
        }
    }

    /// What differs from what it declares, for the state file.
    fn saved_state(&self) -> SubscriberState {
        let sha256 = match &self.source {
            SubscriberSource::Plugin { sha256, .. } => Some(sha256.clone()),
            SubscriberSource::Native => None,
        };
        SubscriberState {
            muted: (self.channels.iter())
                .filter(|(_, muted)| **muted)
                .map(|(c, _)| c.to_string())
                .collect(),
            subscribed: (self.channels.keys())
                .filter(|c| !self.declared.contains(*c))
                .map(|c| c.to_string())
                .collect(),
            unsubscribed: (self.declared.iter())
                .filter(|c| !self.channels.contains_key(*c))
                .map(|c| c.to_string())
                .collect(),
            quarantine: self.quarantine.as_ref().map(|reason| SavedQuarantine {
                reason: reason.clone(),
                sha256,
            }),
        }
    }

    /// Refuse, naming the first one, if any of `channels` is not subscribed.
    fn check_subscribed(&self, id: &str, channels: &[String]) -> Result<(), RegistryError> {
        match channels
            .iter()
            .find(|c| !self.channels.contains_key(c.as_str()))
        {
            Some(missing) => Err(RegistryError::NotSubscribed {
                id: id.to_owned(),
                channel: missing.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// One immutable state of the registry.
#[derive(Clone, Default)]
pub(crate) struct Snapshot {
    channels: BTreeMap<Arc<str>, ChannelEntry>,
    subscribers: BTreeMap<Arc<str>, SubscriberEntry>,
    /// Saved state of subscribers not loaded yet, applied when they are.
    dormant: BTreeMap<String, SubscriberState>,
    /// Derived: where each channel's notifications go.
    routes: RouteTable,
}

impl Snapshot {
    /// Where each channel's notifications go, for the router.
    pub(crate) fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// What differs from what the subscribers declare, for the state file.
    fn runtime_state(&self) -> RuntimeState {
        let declared = |channel: &Arc<str>| {
            (self.subscribers.values()).any(|entry| entry.declared.contains(channel))
        };
        let mut subscribers = self.dormant.clone();
        for (id, entry) in &self.subscribers {
            let saved = entry.saved_state();
            if !saved.is_empty() {
                subscribers.insert(id.to_string(), saved);
            }
        }
        RuntimeState {
            version: 0,
            channels: (self.channels.iter())
                .filter(|(name, entry)| entry.muted || !declared(name))
                .map(|(name, entry)| (name.to_string(), ChannelState { muted: entry.muted }))
                .collect(),
            subscribers,
        }
    }

    /// The saved state of a subscriber being inserted, applied to its entry.
    /// A saved channel name that is not valid (a hand-edited file) is skipped,
    /// so the subscriber still loads.
    fn restore(&mut self, id: &str, entry: &mut SubscriberEntry) {
        let Some(saved) = self.dormant.remove(id) else {
            return;
        };
        let (valid, invalid): (Vec<String>, Vec<String>) =
            (saved.subscribed.iter().cloned()).partition(|name| channel::validate(name).is_ok());
        if !invalid.is_empty() {
            tracing::warn!(subscriber = %id, channels = ?invalid, "saved subscriptions to invalid channel names skipped");
        }
        let added = self.add_channels(&valid).unwrap_or_default();
        for key in added {
            entry.channels.entry(key).or_insert(false);
        }
        for name in &saved.unsubscribed {
            entry.channels.remove(name.as_str());
        }
        for (channel, muted) in entry.channels.iter_mut() {
            *muted = saved.muted.contains(&**channel);
        }
        let sha256 = match &entry.source {
            SubscriberSource::Plugin { sha256, .. } => Some(sha256),
            SubscriberSource::Native => None,
        };
        if let Some(quarantine) = saved.quarantine {
            if quarantine.sha256.as_ref() == sha256 {
                entry.quarantine = Some(quarantine.reason);
            } else {
                tracing::info!(subscriber = %id, "a new version: the saved quarantine ends");
            }
        }
        tracing::info!(subscriber = %id, "saved mutes and subscriptions restored");
    }

    /// Each subscriber that receives any of `channels`, with those it receives.
    pub(crate) fn gap_targets(
        &self,
        channels: &BTreeSet<Arc<str>>,
    ) -> Vec<(Arc<Mailbox>, Vec<String>)> {
        self.subscribers
            .values()
            .filter(|entry| entry.quarantine.is_none())
            .filter_map(|entry| {
                let missed: Vec<String> = entry
                    .channels
                    .iter()
                    .filter(|(c, muted)| {
                        !**muted && channels.contains(*c) && self.routes.is_active(c)
                    })
                    .map(|(c, _)| c.to_string())
                    .collect();
                (!missed.is_empty()).then(|| (entry.mailbox.clone(), missed))
            })
            .collect()
    }

    fn rebuild_routes(&mut self) {
        let mut routes: BTreeMap<&Arc<str>, Vec<Arc<Mailbox>>> = BTreeMap::new();
        for entry in self.subscribers.values() {
            if entry.quarantine.is_some() {
                continue;
            }
            for (channel, muted) in &entry.channels {
                let channel_muted = self.channels.get(channel).is_none_or(|c| c.muted);
                if !muted && !channel_muted {
                    routes
                        .entry(channel)
                        .or_default()
                        .push(entry.mailbox.clone());
                }
            }
        }
        self.routes = RouteTable::new(self.channels.iter().map(|(channel, entry)| {
            let mailboxes = routes.remove(channel).unwrap_or_default();
            (channel.clone(), entry.received.clone(), mailboxes)
        }));
    }

    fn channel_key(&self, name: &str) -> Result<Arc<str>, RegistryError> {
        self.channels
            .get_key_value(name)
            .map(|(k, _)| k.clone())
            .ok_or_else(|| RegistryError::UnknownChannel(name.to_owned()))
    }

    fn subscriber_mut(&mut self, id: &str) -> Result<&mut SubscriberEntry, RegistryError> {
        self.subscribers
            .get_mut(id)
            .ok_or_else(|| RegistryError::UnknownSubscriber(id.to_owned()))
    }

    /// The named channels, or every channel when `names` is `None`; all must exist.
    fn select_channels(&self, names: Option<&[String]>) -> Result<Vec<Arc<str>>, RegistryError> {
        match names {
            None => Ok(self.channels.keys().cloned().collect()),
            Some(names) => names.iter().map(|n| self.channel_key(n)).collect(),
        }
    }

    fn add_channels(&mut self, names: &[String]) -> Result<Vec<Arc<str>>, RegistryError> {
        for name in names {
            channel::validate(name)?;
        }
        Ok(names
            .iter()
            .map(|name| match self.channels.get_key_value(name.as_str()) {
                Some((key, _)) => key.clone(),
                None => {
                    let key: Arc<str> = name.as_str().into();
                    self.channels.insert(key.clone(), ChannelEntry::default());
                    key
                }
            })
            .collect())
    }
}

/// A durable subscriber's channels, as its feeder reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DurableChannels {
    /// Every channel it subscribes to, muted or not.
    pub(crate) names: Vec<String>,
    /// Quarantined, or muted on a channel: nothing is read for it.
    pub(crate) paused: bool,
}

/// The registry: a snapshot for readers, a mutex for writers.
pub(crate) struct Registry {
    current: ArcSwap<Snapshot>,
    /// Held by writers.
    writer: Mutex<()>,
    active: watch::Sender<ActiveChannels>,
    /// Writes the state file, if the runtime state is persisted.
    saver: Option<Saver>,
    journal: Journal,
}

impl Registry {
    pub(crate) fn new() -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
            writer: Mutex::new(()),
            active: watch::Sender::new(Arc::new(BTreeSet::new())),
            saver: None,
            journal: Journal::default(),
        }
    }

    /// A registry that starts from `saved` and writes every change to `file`.
    /// Saved channels exist at once; a saved subscriber's state is applied
    /// when a subscriber with its id is inserted.
    pub(crate) fn persisted(file: StateFile, saved: RuntimeState) -> std::io::Result<Self> {
        let mut snapshot = Snapshot::default();
        for (name, channel) in saved.channels {
            if crate::channel::validate(&name).is_ok() {
                let entry = ChannelEntry {
                    muted: channel.muted,
                    ..ChannelEntry::default()
                };
                snapshot.channels.insert(name.as_str().into(), entry);
            } else {
                tracing::warn!(channel = ?name, "the state file names an invalid channel; skipped");
            }
        }
        snapshot.dormant = saved.subscribers;
        Ok(Self {
            current: ArcSwap::from_pointee(snapshot),
            writer: Mutex::new(()),
            active: watch::Sender::new(Arc::new(BTreeSet::new())),
            saver: Some(Saver::start(file)?),
            journal: Journal::default(),
        })
    }

    /// Why changes are not being saved to the state file, while they are not.
    pub(crate) fn unsaved(&self) -> Option<Arc<String>> {
        self.saver.as_ref().and_then(Saver::unsaved)
    }

    /// Wait until every change made so far is in the state file, or known
    /// not to be ([`unsaved`](Self::unsaved)).
    pub(crate) async fn saved(&self) {
        if let Some(saver) = &self.saver {
            saver.flushed().await;
        }
    }

    /// The current snapshot; lock-free.
    pub(crate) fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned pointer, for holding across awaits.
    pub(crate) fn snapshot_arc(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Follow the set of active channels.
    pub(crate) fn watch_active(&self) -> watch::Receiver<ActiveChannels> {
        self.active.subscribe()
    }

    /// Apply `change` to a copy of the snapshot and swap it in if it succeeds.
    fn update<T>(
        &self,
        change: impl FnOnce(&mut Snapshot) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let _writer = lock(&self.writer);
        let mut next = Snapshot::clone(&self.current.load());
        let out = change(&mut next)?;
        next.rebuild_routes();
        let active = next.routes.active_channels();
        if let Some(saver) = &self.saver {
            saver.queue(next.runtime_state());
        }
        self.current.store(Arc::new(next));
        self.active.send_if_modified(|current| {
            if **current == active {
                false
            } else {
                *current = Arc::new(active);
                true
            }
        });
        Ok(out)
    }

    pub(crate) fn add_channels(&self, names: &[String]) -> Result<(), RegistryError> {
        self.update(|s| s.add_channels(names).map(drop))
    }

    /// Remove channels and every subscription to them.
    pub(crate) fn remove_channels(&self, names: &[String]) -> Result<(), RegistryError> {
        self.update(|s| {
            let keys = s.select_channels(Some(names))?;
            for key in keys {
                s.channels.remove(&key);
                for entry in s.subscribers.values_mut() {
                    entry.channels.remove(&key);
                }
            }
            Ok(())
        })
    }

    /// Start a subscriber's worker; when it keeps failing, its quarantine
    /// hook mutes it here.
    pub(crate) fn spawn_mailbox(
        self: &Arc<Self>,
        id: Arc<str>,
        settings: DispatchSettings,
        deliver: Box<dyn Deliver>,
    ) -> std::io::Result<Arc<Mailbox>> {
        let registry = Arc::downgrade(self);
        let on_quarantine: QuarantineHook = Arc::new(move |id, reason| {
            if let Some(registry) = registry.upgrade() {
                // Fails only if the subscriber was removed meanwhile.
                let _ = registry.quarantine(id, reason);
            }
        });
        Mailbox::spawn(id, settings, deliver, on_quarantine)
    }

    /// Register a new subscriber on `channels`, creating missing channels.
    /// Refused, its worker is stopped.
    pub(crate) fn insert_subscriber(
        &self,
        mailbox: Arc<Mailbox>,
        source: SubscriberSource,
        channels: &[String],
    ) -> Result<(), RegistryError> {
        self.update(|s| {
            if s.subscribers.contains_key(&mailbox.id) {
                return Err(RegistryError::SubscriberExists(mailbox.id.to_string()));
            }
            let keys = s.add_channels(channels)?;
            let mut entry = SubscriberEntry {
                mailbox: mailbox.clone(),
                source,
                channels: keys.iter().map(|k| (k.clone(), false)).collect(),
                declared: keys.into_iter().collect(),
                quarantine: None,
            };
            s.restore(&mailbox.id, &mut entry);
            s.subscribers.insert(mailbox.id.clone(), entry);
            Ok(())
        })
        .inspect_err(|_| mailbox.abandon())
    }

    /// Record a reloaded plugin: its new source and declared channels.
    /// Channels subscribed or unsubscribed at runtime stay so. Mute flags of
    /// the channels it keeps are kept; new channels start un-muted, unless
    /// the subscriber was muted on every channel it had. A reload ends a
    /// quarantine.
    pub(crate) fn reload_subscriber(
        &self,
        id: &str,
        source: SubscriberSource,
        channels: &[String],
    ) -> Result<(), RegistryError> {
        self.update(|s| {
            s.subscriber_mut(id)?;
            let keys = s.add_channels(channels)?;
            let entry = s.subscriber_mut(id)?;
            let old = std::mem::take(&mut entry.channels);
            let old_declared = std::mem::take(&mut entry.declared);
            let all_muted = !old.is_empty() && old.values().all(|m| *m);
            let added_at_runtime = old.keys().filter(|c| !old_declared.contains(*c));
            let removed_at_runtime =
                |c: &Arc<str>| old_declared.contains(c) && !old.contains_key(c);
            entry.channels = (keys.iter().filter(|k| !removed_at_runtime(k)))
                .chain(added_at_runtime)
                .map(|k| {
                    let muted = old.get(k).copied().unwrap_or(all_muted);
                    (k.clone(), muted)
                })
                .collect();
            entry.declared = keys.into_iter().collect();
            entry.source = source;
            entry.release(id, &self.journal);
            Ok(())
        })
    }

    /// The files of the plugin subscribers loaded from `dir`.
    pub(crate) fn plugins_in(&self, dir: &std::path::Path) -> Vec<PathBuf> {
        self.snapshot()
            .subscribers
            .values()
            .filter_map(|e| match &e.source {
                SubscriberSource::Plugin { path, .. } if path.parent() == Some(dir) => {
                    Some(path.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// A durable subscriber's channels, and whether it is paused: while it
    /// is quarantined or muted anywhere, nothing is read for it (it keeps
    /// its position, and catches up when released). `None` once it is
    /// removed.
    pub(crate) fn durable_channels(&self, id: &str) -> Option<DurableChannels> {
        let snapshot = self.snapshot();
        let entry = snapshot.subscribers.get(id)?;
        let channel_muted = |c: &Arc<str>| snapshot.channels.get(c).is_none_or(|c| c.muted);
        Some(DurableChannels {
            names: entry.channels.keys().map(|c| c.to_string()).collect(),
            paused: entry.quarantine.is_some()
                || (entry.channels.iter()).any(|(c, muted)| *muted || channel_muted(c)),
        })
    }

    /// Where a subscriber came from, if it exists.
    pub(crate) fn source(&self, id: &str) -> Option<SubscriberSource> {
        self.snapshot()
            .subscribers
            .get(id)
            .map(|e| e.source.clone())
    }

    /// Remove a subscriber entirely; what is already queued for it is
    /// delivered first (for up to five seconds), off the async runtime.
    pub(crate) async fn remove_subscriber(&self, id: &str) -> Result<(), RegistryError> {
        let mailbox = self.update(|s| {
            s.subscribers
                .remove(id)
                .map(|e| e.mailbox)
                .ok_or_else(|| RegistryError::UnknownSubscriber(id.to_owned()))
        })?;
        let _ = tokio::task::spawn_blocking(move || mailbox.drain(Duration::from_secs(5))).await;
        Ok(())
    }

    /// Subscribe an existing subscriber to more channels, creating missing ones.
    pub(crate) fn subscribe_to(&self, id: &str, channels: &[String]) -> Result<(), RegistryError> {
        self.update(|s| {
            s.subscriber_mut(id)?;
            let keys = s.add_channels(channels)?;
            let entry = s.subscriber_mut(id)?;
            for key in keys {
                entry.channels.entry(key).or_insert(false);
            }
            Ok(())
        })
    }

    /// Unsubscribe from channels; the subscriber stays registered.
    pub(crate) fn unsubscribe(&self, id: &str, channels: &[String]) -> Result<(), RegistryError> {
        self.update(|s| {
            let entry = s.subscriber_mut(id)?;
            entry.check_subscribed(id, channels)?;
            for channel in channels {
                entry.channels.remove(channel.as_str());
            }
            Ok(())
        })
    }

    /// Set the mute flag of the named channels, or of all when `None`.
    /// Subscribers' own mute flags are untouched.
    pub(crate) fn set_channels_muted(
        &self,
        names: Option<&[String]>,
        muted: bool,
    ) -> Result<(), RegistryError> {
        self.update(|s| {
            for key in s.select_channels(names)? {
                if let Some(entry) = s.channels.get_mut(&key) {
                    entry.muted = muted;
                }
            }
            Ok(())
        })
    }

    /// Quarantine a subscriber that keeps failing: no channel routes to it
    /// until it is unmuted or reloaded.
    pub(crate) fn quarantine(&self, id: &str, reason: &str) -> Result<(), RegistryError> {
        self.update(|s| {
            s.subscriber_mut(id)?.quarantine = Some(reason.to_owned());
            Ok(())
        })?;
        self.journal.record(HostEventKind::Quarantined, id, reason);
        Ok(())
    }

    /// What happened to the host lately: loads, failures, quarantines,
    /// gaps, leadership.
    pub(crate) fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Set a subscriber's mute flag on the named channels, or on all of its
    /// channels when `None`. Unmuting also ends a quarantine.
    pub(crate) fn set_subscriber_muted(
        &self,
        id: &str,
        channels: Option<&[String]>,
        muted: bool,
    ) -> Result<(), RegistryError> {
        self.update(|s| {
            let entry = s.subscriber_mut(id)?;
            match channels {
                None => entry.channels.values_mut().for_each(|m| *m = muted),
                Some(names) => {
                    entry.check_subscribed(id, names)?;
                    for name in names {
                        if let Some(flag) = entry.channels.get_mut(name.as_str()) {
                            *flag = muted;
                        }
                    }
                }
            }
            if !muted {
                entry.release(id, &self.journal);
            }
            Ok(())
        })
    }

    pub(crate) fn channels(&self) -> Vec<ChannelView> {
        let s = self.snapshot();
        s.channels
            .iter()
            .map(|(name, channel)| ChannelView {
                channel: name.to_string(),
                muted: channel.muted,
                active: s.routes.is_active(name),
                received: channel.received.load(Ordering::Relaxed),
                subscribers: s
                    .subscribers
                    .iter()
                    .filter_map(|(id, e)| {
                        e.channels.get(name).map(|m| ChannelSubscriberView {
                            id: id.to_string(),
                            muted: *m,
                            quarantined: e.quarantine.is_some(),
                        })
                    })
                    .collect(),
            })
            .collect()
    }

    pub(crate) fn subscribers(&self) -> Vec<SubscriberView> {
        let s = self.snapshot();
        s.subscribers
            .iter()
            .map(|(id, e)| SubscriberView {
                id: id.to_string(),
                source: e.source.clone(),
                channels: e
                    .channels
                    .iter()
                    .map(|(c, m)| SubscriptionView {
                        channel: c.to_string(),
                        muted: *m,
                        channel_muted: s.channels.get(c).is_some_and(|c| c.muted),
                    })
                    .collect(),
                quarantine: e.quarantine.clone(),
                stats: e.mailbox.stats(),
                durable: None,
            })
            .collect()
    }

    /// Every mailbox, for shutdown.
    pub(crate) fn mailboxes(&self) -> Vec<Arc<Mailbox>> {
        self.snapshot()
            .subscribers
            .values()
            .map(|e| e.mailbox.clone())
            .collect()
    }

    /// The mailbox of one subscriber.
    pub(crate) fn mailbox(&self, id: &str) -> Option<Arc<Mailbox>> {
        self.snapshot()
            .subscribers
            .get(id)
            .map(|e| e.mailbox.clone())
    }
}
