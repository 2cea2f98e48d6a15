//! Prometheus metrics: the text exposition of every counter the host keeps.
//!
//! It sits above everything it reads and only reads: the counters are
//! atomics kept by dispatch, the listener and the plugin sync, and a scrape
//! takes no lock that dispatch takes.

use crate::cluster::{ClusterStatus, Role};
use crate::dispatch::{DurableStats, SubscriberStats};
use crate::durable::pruner::OutboxStats;
use crate::durable::relay::RelayStats;
use crate::listener::ListenerStatus;
use crate::plugins::PluginCounters;
use crate::registry::Registry;
use crate::sandbox::CacheStats;
use crate::sync::{clock, Histogram};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a scrape reads.
pub(crate) struct Sources<'a> {
    pub(crate) registry: &'a Registry,
    pub(crate) listener: &'a ListenerStatus,
    pub(crate) plugins: &'a PluginCounters,
    pub(crate) cache: Option<CacheStats>,
    /// The at-least-once subscribers' feeders, and the outbox as the
    /// pruner saw it.
    pub(crate) durable: Vec<(std::sync::Arc<str>, DurableStats)>,
    pub(crate) outbox: &'a OutboxStats,
    /// The WAL transport's relay.
    pub(crate) relay: &'a RelayStats,
    pub(crate) cluster: &'a ClusterStatus,
}

/// A metric read from a `T`: name, kind, help, and how to read it.
type MetricOf<T> = (&'static str, &'static str, &'static str, fn(&T) -> f64);

/// Every metric, in the Prometheus text format.
pub(crate) fn render(from: &Sources) -> String {
    let mut out = Exposition::new();
    subscribers(&mut out, from);
    durable(&mut out, from);
    calls(&mut out, from);
    channels(&mut out, from);
    listener_and_plugins(&mut out, from);
    cluster(&mut out, from);
    last_notification(&mut out, from);
    out.finish()
}

/// Each subscriber's counters, one series per subscriber.
const SUBSCRIBER_SERIES: [MetricOf<SubscriberStats>; 5] = [
    (
        "pgnotifier_subscriber_delivered_total",
        "counter",
        "Notifications the subscriber handled successfully.",
        |s| s.delivered as f64,
    ),
    (
        "pgnotifier_subscriber_failed_total",
        "counter",
        "Calls that failed (a trap, an error returned, or a timeout).",
        |s| s.failed as f64,
    ),
    (
        "pgnotifier_subscriber_timed_out_total",
        "counter",
        "Calls cut off at the subscriber's deadline.",
        |s| s.timed_out as f64,
    ),
    (
        "pgnotifier_subscriber_dropped_total",
        "counter",
        "Notifications dropped: the queue was full, or the subscriber quarantined.",
        |s| s.dropped as f64,
    ),
    (
        "pgnotifier_subscriber_queue_depth",
        "gauge",
        "Notifications waiting in the subscriber's queue.",
        |s| s.queued as f64,
    ),
];

/// Each at-least-once subscriber's feeder, one series per subscriber.
const DURABLE_SERIES: [MetricOf<DurableStats>; 6] = [
    (
        "pgnotifier_subscriber_lag_events",
        "gauge",
        "Durable events on an at-least-once subscriber's channels it has not handled yet.",
        |d| d.lag_events as f64,
    ),
    (
        "pgnotifier_subscriber_lag_seconds",
        "gauge",
        "How long ago the oldest event it has not handled was sent.",
        |d| d.lag_ms as f64 / 1000.0,
    ),
    (
        "pgnotifier_subscriber_retries_total",
        "counter",
        "Failed calls with a durable event that were retried.",
        |d| d.retries as f64,
    ),
    (
        "pgnotifier_subscriber_dead_letters_total",
        "counter",
        "Durable events that went to the dead letters.",
        |d| d.dead_letters as f64,
    ),
    (
        "pgnotifier_subscriber_feeder_restarts_total",
        "counter",
        "Times the subscriber's feeder failed and was started again from the saved position.",
        |d| d.feeder_restarts as f64,
    ),
    (
        "pgnotifier_subscriber_fed_elsewhere",
        "gauge",
        "1 while another host holds the subscriber's feed lock, so this one does not feed it.",
        |d| f64::from(u8::from(d.fed_elsewhere)),
    ),
];

/// Every subscriber's counters, and whether it is quarantined.
fn subscribers(out: &mut Exposition, from: &Sources) {
    let subscribers = from.registry.subscribers();
    let stats: Vec<(&str, &SubscriberStats)> =
        subscribers.iter().map(|s| (&*s.id, &s.stats)).collect();
    out.per_subscriber(&SUBSCRIBER_SERIES, &stats);
    out.family(
        "pgnotifier_subscriber_quarantined",
        "gauge",
        "1 while the subscriber is quarantined after repeated failures.",
    );
    for s in &subscribers {
        let quarantined = f64::from(u8::from(s.quarantine.is_some()));
        out.sample(
            "pgnotifier_subscriber_quarantined",
            &[("subscriber", &s.id)],
            quarantined,
        );
    }
}

/// The at-least-once subscribers' feeders, and the outbox.
fn durable(out: &mut Exposition, from: &Sources) {
    let durable: Vec<(&str, &DurableStats)> =
        (from.durable.iter()).map(|(id, d)| (&**id, d)).collect();
    out.per_subscriber(&DURABLE_SERIES, &durable);
    if let Some(events) = from.outbox.events() {
        let name = "pgnotifier_outbox_events";
        out.family(
            name,
            "gauge",
            "Events in the outbox, counted at each prune.",
        );
        out.sample(name, &[], events as f64);
    }
    let name = "pgnotifier_outbox_unstamped_events_total";
    out.family(
        name,
        "counter",
        "Committed events found without a commit stamp (the stamp trigger was disabled), then stamped and delivered late.",
    )
    .sample(name, &[], from.outbox.unstamped.load(Ordering::Relaxed) as f64);
    let relayed: [(&str, &str, &AtomicU64); 3] = [
        (
            "pgnotifier_relay_events_total",
            "Events the WAL transport's relay brought from the slot into the outbox.",
            &from.relay.events,
        ),
        (
            "pgnotifier_relay_batches_total",
            "Transactions the relay wrote them in.",
            &from.relay.batches,
        ),
        (
            "pgnotifier_relay_refused_total",
            "Messages with pgnotifier.send's prefix that send never writes (another role's pg_logical_emit_message), not relayed.",
            &from.relay.refused,
        ),
    ];
    for (name, help, counter) in relayed {
        out.family(name, "counter", help)
            .sample(name, &[], counter.load(Ordering::Relaxed) as f64);
    }
    let name = "pgnotifier_relay_reading";
    out.family(
        name,
        "gauge",
        "1 while this host's relay reads the WAL transport's slot, else 0.",
    )
    .sample(name, &[], from.relay.reading.load(Ordering::Relaxed) as f64);
    let name = "pgnotifier_relay_behind_bytes";
    let (end, through) = (
        from.relay.server_end.load(Ordering::Relaxed),
        from.relay.through.load(Ordering::Relaxed),
    );
    out.family(
        name,
        "gauge",
        "WAL the server had sent the relay that it had not confirmed yet, in bytes, at its last message.",
    )
    .sample(name, &[], end.saturating_sub(through) as f64);
}

/// How long calls took, per subscriber.
fn calls(out: &mut Exposition, from: &Sources) {
    let name = "pgnotifier_subscriber_call_duration_seconds";
    out.family(
        name,
        "histogram",
        "How long on-notify calls took; a batch's time is shared among its notifications.",
    );
    for mailbox in from.registry.mailboxes() {
        out.histogram(
            name,
            &[("subscriber", &mailbox.id)],
            mailbox.call_duration(),
        );
    }
}

/// Notifications received, per channel.
fn channels(out: &mut Exposition, from: &Sources) {
    let name = "pgnotifier_channel_received_total";
    out.family(
        name,
        "counter",
        "Notifications received from PostgreSQL on the channel.",
    );
    for channel in from.registry.channels() {
        out.sample(
            name,
            &[("channel", &channel.channel)],
            channel.received as f64,
        );
    }
}

/// The LISTEN connection, the plugin loads and the compile cache: one
/// series each.
fn listener_and_plugins(out: &mut Exposition, from: &Sources) {
    let status = from.listener;
    let plugins = from.plugins;
    let cache = from.cache.unwrap_or_default();
    let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed) as f64;
    let unlabelled: [(&str, &str, &str, f64); 10] = [
        (
            "pgnotifier_listener_connected",
            "gauge",
            "1 while the LISTEN connection is up.",
            f64::from(u8::from(status.connected.load(Ordering::Relaxed))),
        ),
        (
            "pgnotifier_listener_reconnects_total",
            "counter",
            "Times the LISTEN connection was lost or could not be made.",
            count(&status.reconnects),
        ),
        (
            "pgnotifier_listener_repairs_total",
            "counter",
            "Heartbeats that found the server LISTENing other channels than the host believed, and repaired it.",
            count(&status.listen_repairs),
        ),
        (
            "pgnotifier_listener_gap_events_total",
            "counter",
            "Reconnections after which subscribers were told notifications may have been missed.",
            count(&status.gap_events),
        ),
        (
            "pgnotifier_listener_channels",
            "gauge",
            "Channels LISTENed right now.",
            status.listened.borrow().len() as f64,
        ),
        (
            "pgnotifier_notification_queue_usage",
            "gauge",
            "pg_notification_queue_usage() at the last heartbeat: the fraction of PostgreSQL's notification queue in use.",
            f64::from_bits(status.queue_usage.load(Ordering::Relaxed)),
        ),
        (
            "pgnotifier_plugin_loads_total",
            "counter",
            "Plugins loaded or reloaded.",
            count(&plugins.loads),
        ),
        (
            "pgnotifier_plugin_load_failures_total",
            "counter",
            "Plugin loads and reloads refused; a running version kept running.",
            count(&plugins.load_failures),
        ),
        (
            "pgnotifier_plugin_compile_cache_hits_total",
            "counter",
            "Plugins whose compiled code came from the cache.",
            cache.hits as f64,
        ),
        (
            "pgnotifier_plugin_compile_cache_misses_total",
            "counter",
            "Plugins compiled and written to the cache.",
            cache.misses as f64,
        ),
    ];
    for (name, kind, help, value) in unlabelled {
        out.family(name, kind, help).sample(name, &[], value);
    }
}

/// This host's role, its cluster, and its takeovers.
fn cluster(out: &mut Exposition, from: &Sources) {
    let name = "pgnotifier_cluster_role";
    out.family(
        name,
        "gauge",
        "1 for this host's role: leader, standby, or alone (no cluster).",
    );
    let role = from.cluster.role();
    for each in [Role::Leader, Role::Standby, Role::Alone] {
        out.sample(
            name,
            &[("role", each.as_str())],
            f64::from(u8::from(each == role)),
        );
    }
    if let Some(settings) = &from.cluster.settings {
        let name = "pgnotifier_cluster_info";
        let leader = from.cluster.leader().unwrap_or_default();
        out.family(
            name,
            "gauge",
            "1, labelled with this host's cluster, group, and the leader as PostgreSQL shows its backend.",
        )
        .sample(
            name,
            &[
                ("cluster", &settings.name),
                ("group", settings.group.as_deref().unwrap_or("")),
                ("leader", &leader),
            ],
            1.0,
        );
    }
    let name = "pgnotifier_cluster_takeovers_total";
    out.family(
        name,
        "counter",
        "Times this host took over from another leader.",
    )
    .sample(
        name,
        &[],
        from.cluster.takeovers.load(Ordering::Relaxed) as f64,
    );
}

/// How long ago the last notification came.
fn last_notification(out: &mut Exposition, from: &Sources) {
    let status = from.listener;
    let name = "pgnotifier_listener_last_notification_age_seconds";
    out.family(
        name,
        "gauge",
        "Seconds since the last notification was received; absent before the first.",
    );
    let last = status.last_notification.load(Ordering::Relaxed);
    if last > 0 {
        let age = clock().delta_as_nanos(last, clock().raw());
        out.sample(name, &[], age as f64 / 1e9);
    }
}

/// Builds the text exposition format, one metric family at a time.
pub(crate) struct Exposition {
    out: String,
}

impl Exposition {
    pub(crate) fn new() -> Self {
        Self {
            out: String::with_capacity(4096),
        }
    }

    /// Start a family: its `# HELP` and `# TYPE` lines.
    pub(crate) fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        self
    }

    /// One sample; `labels` are `(name, value)` pairs, escaped here.
    /// A family per row of `table`, each with one sample per subscriber.
    fn per_subscriber<T>(&mut self, table: &[MetricOf<T>], rows: &[(&str, &T)]) {
        for (name, kind, help, stat) in table {
            self.family(name, kind, help);
            for (id, value) in rows {
                self.sample(name, &[("subscriber", id)], stat(value));
            }
        }
    }

    pub(crate) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let _ = writeln!(self.out, "{name}{} {value}", label_set(labels));
        self
    }

    pub(crate) fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        histogram: &Histogram,
    ) -> &mut Self {
        let set = label_set(labels);
        let labels = set.trim_start_matches('{').trim_end_matches('}');
        let mut cumulative = 0;
        for (bound, count) in histogram.buckets() {
            cumulative += count;
            let le = bound.map_or_else(|| "+Inf".to_owned(), seconds);
            let _ = writeln!(
                self.out,
                "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = seconds(histogram.sum_ns());
        let _ = writeln!(self.out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(self.out, "{name}_count{{{labels}}} {cumulative}");
        self
    }

    pub(crate) fn finish(self) -> String {
        self.out
    }
}

fn seconds(ns: u64) -> String {
    format!("{}", ns as f64 / 1e9)
}

/// `{a="x",b="y"}`, or nothing without labels.
fn label_set(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let mut out = String::from("{");
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quantile_is_the_bound_of_the_bucket_that_holds_it() {
        let h = Histogram::default();
        assert_eq!(h.quantile_ns(0.5), None, "no calls yet");
        h.record(10_000, 98);
        h.record(3_000_000, 1);
        h.record(60_000_000_000, 1);
        assert_eq!(h.quantile_ns(0.5), Some(50_000));
        assert_eq!(h.quantile_ns(0.99), Some(5_000_000));
        assert_eq!(
            h.quantile_ns(1.0),
            Some(10_000_000_000),
            "past the last bound"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf() {
        let h = Histogram::default();
        h.record(10_000, 1);
        h.record(3_000_000, 1);
        h.record(60_000_000_000, 1);
        let mut out = Exposition::new();
        out.histogram("d", &[("subscriber", "a\"b")], &h);
        let text = out.finish();
        assert!(
            text.contains("d_bucket{subscriber=\"a\\\"b\",le=\"0.00005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("d_bucket{subscriber=\"a\\\"b\",le=\"0.005\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("d_bucket{subscriber=\"a\\\"b\",le=\"10\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("d_bucket{subscriber=\"a\\\"b\",le=\"+Inf\"} 3"),
            "{text}"
        );
        assert!(text.contains("d_count{subscriber=\"a\\\"b\"} 3"), "{text}");
        assert!(
            text.contains("d_sum{subscriber=\"a\\\"b\"} 60.00301"),
            "{text}"
        );
    }
}
