//! The router: each notification, decoded once per payload mode wanted, to
//! the mailboxes of its channel, as the route table says.

use super::reuse::Reused;
use super::{Mailbox, Notification};
use crate::payload::PayloadMode;
use crate::sync::bump;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The mailboxes that receive one active channel, in subscriber order.
pub(crate) type Route = Arc<[Arc<Mailbox>]>;

/// An active channel: where it goes, and how many notifications came on it.
#[derive(Clone)]
pub(crate) struct ActiveRoute {
    pub(crate) mailboxes: Route,
    pub(crate) received: Arc<AtomicU64>,
}

/// Where each channel's notifications go. The registry builds one with
/// every snapshot; the router reads it without a lock.
#[derive(Clone, Default)]
pub(crate) struct RouteTable {
    /// Distinct for every table built, so a run knows its table is current.
    generation: u64,
    active: HashMap<Arc<str>, ActiveRoute>,
    /// The received counters of known channels no one receives now (muted
    /// or emptied since they were LISTENed).
    idle: HashMap<Arc<str>, Arc<AtomicU64>>,
}

impl RouteTable {
    /// From each known channel, its counter, and the mailboxes that receive
    /// it (none: the channel is idle).
    pub(crate) fn new(
        channels: impl IntoIterator<Item = (Arc<str>, Arc<AtomicU64>, Vec<Arc<Mailbox>>)>,
    ) -> Self {
        static GENERATIONS: AtomicU64 = AtomicU64::new(0);
        let mut table = Self {
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed) + 1,
            ..Self::default()
        };
        for (channel, received, mailboxes) in channels {
            if mailboxes.is_empty() {
                table.idle.insert(channel, received);
            } else {
                let route = ActiveRoute {
                    mailboxes: mailboxes.into(),
                    received,
                };
                table.active.insert(channel, route);
            }
        }
        table
    }

    /// The channel's shared name and its route, if it is active.
    pub(crate) fn route(&self, channel: &str) -> Option<(&Arc<str>, &ActiveRoute)> {
        self.active.get_key_value(channel)
    }

    pub(crate) fn is_active(&self, channel: &str) -> bool {
        self.active.contains_key(channel)
    }

    /// The channels to LISTEN.
    pub(crate) fn active_channels(&self) -> BTreeSet<Arc<str>> {
        self.active.keys().cloned().collect()
    }

    /// Count a notification that came on a channel no one receives now.
    fn count_unrouted(&self, channel: &str) {
        if let Some(received) = self.idle.get(channel) {
            bump(received, 1);
        }
    }
}

/// The longest run the router holds before queueing it. Each run queued
/// may wake a sleeping worker, and a wake-up costs a worker more than a
/// few dozen notifications do: 256 woke workers a third as often as 64 in
/// a drain, for about a sixth less CPU per notification.
const RUN_LIMIT: usize = 256;

/// Routes notifications in runs: consecutive notifications on the same
/// channel, under the same route table, are queued together, one lock and
/// at most one wake-up per subscriber, when the run ends, reaches
/// [`RUN_LIMIT`], or the connection has nothing more buffered
/// ([`Router::take`]). Each payload is decoded at most once per mode, and
/// only if someone wants it.
#[derive(Default)]
pub(crate) struct Router {
    run: Option<Run>,
    /// Emptied lists of queued runs, to hold the next ones without allocating.
    spare: Vec<Vec<Arc<Notification>>>,
    reused: Reused,
}

/// Notifications routed to the same mailboxes, not yet queued.
pub(crate) struct Run {
    /// The channel and table the run was looked up in: a notification on
    /// the same channel, while the table is the same, needs no lookup.
    channel: Arc<str>,
    generation: u64,
    received: Arc<AtomicU64>,
    route: Route,
    /// Decoded as typed, if a subscriber in the route wants that.
    typed: Option<Vec<Arc<Notification>>>,
    raw: Option<Vec<Arc<Notification>>>,
}

impl Router {
    /// Add one notification. Returns a run to queue now: the previous one
    /// if this notification starts another, or this one if it is full.
    pub(crate) fn add(
        &mut self,
        routes: &RouteTable,
        channel: &str,
        raw_payload: &str,
        pid: i32,
    ) -> Option<Run> {
        let same_run = self
            .run
            .as_ref()
            .is_some_and(|run| run.generation == routes.generation && *run.channel == *channel);
        let mut finished = None;
        if !same_run {
            let Some((channel, active)) = routes.route(channel) else {
                routes.count_unrouted(channel);
                return None;
            };
            let run = Run::new(channel, routes.generation, active, &mut self.spare);
            finished = self.run.replace(run);
        }
        let run = self.run.as_mut()?;
        // The listener's task is the only writer of these counters.
        bump(&run.received, 1);
        for (slot, mode) in [
            (&mut run.typed, PayloadMode::Typed),
            (&mut run.raw, PayloadMode::Raw),
        ] {
            if let Some(list) = slot {
                list.push(self.reused.fill(&run.channel, raw_payload, mode, pid));
            }
        }
        if run.len() >= RUN_LIMIT {
            debug_assert!(finished.is_none(), "a new run holds one notification");
            return self.run.take();
        }
        finished
    }

    /// The run in progress, to queue now.
    pub(crate) fn take(&mut self) -> Option<Run> {
        self.run.take()
    }

    /// Keep a queued run's lists for the next runs.
    pub(crate) fn recycle(&mut self, run: Run) {
        for mut list in [run.typed, run.raw].into_iter().flatten() {
            if self.spare.len() < 2 {
                list.clear();
                self.spare.push(list);
            }
        }
    }
}

impl Run {
    fn new(
        channel: &Arc<str>,
        generation: u64,
        active: &ActiveRoute,
        spare: &mut Vec<Vec<Arc<Notification>>>,
    ) -> Self {
        let route = active.mailboxes.clone();
        let mut list = |mode| {
            let wanted = route.iter().any(|m: &Arc<Mailbox>| m.mode() == mode);
            wanted.then(|| spare.pop().unwrap_or_else(|| Vec::with_capacity(RUN_LIMIT)))
        };
        let (typed, raw) = (list(PayloadMode::Typed), list(PayloadMode::Raw));
        Self {
            // A name of the run's own: the worker drops its notifications
            // while the listener makes the next run's, and one counter
            // shared by both would bounce between their cores.
            channel: Arc::from(&**channel),
            generation,
            received: active.received.clone(),
            route,
            typed,
            raw,
        }
    }

    fn len(&self) -> usize {
        self.typed
            .as_ref()
            .or(self.raw.as_ref())
            .map_or(0, Vec::len)
    }

    /// Queue the run with every mailbox on its route, in order. The last
    /// mailbox takes the notifications themselves, not copies of their
    /// pointers, so the listener does not touch them again.
    pub(crate) async fn queue(&mut self) {
        let last = self.route.len().saturating_sub(1);
        for (at, mailbox) in self.route.iter().enumerate() {
            // A mode switched by a reload since the run began takes the
            // other list: either is a valid payload.
            let notifications = match mailbox.mode() {
                PayloadMode::Typed => self.typed.as_mut().or(self.raw.as_mut()),
                PayloadMode::Raw => self.raw.as_mut().or(self.typed.as_mut()),
            };
            let Some(notifications) = notifications else {
                continue;
            };
            if at == last {
                mailbox.push_all(notifications.drain(..)).await;
            } else {
                mailbox.push_all(notifications.iter().cloned()).await;
            }
        }
    }
}
