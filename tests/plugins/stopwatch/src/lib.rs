//! pgnotifier bench fixture: a subscriber that times what it receives from
//! the inside, through the WASI wall clock, so a benchmark of the real
//! `pgnotifier run` reads the same figures a user's plugin would see.
//!
//! Every `n` notifications it logs one line and starts over:
//! `stopwatch n=N first_to_last_us=T` and, with `latency = "true"`,
//! ` p50_us=A p99_us=B`: how long after it was sent each notification
//! arrived. A stamped payload carries its send time in microseconds since
//! the Unix epoch, as the whole payload (an integer) or as the first key of
//! an object (`{"sent_us": …, …}`).
//!
//! It takes batches (`on-notify-batch`), as plugins built with the Rust SDK
//! do, and times each notification of a batch as it comes to it. Without
//! `latency` it reads the clock only at the first and the last of a round.
//!
//! Sidecar `[config]`: `channels` (default `bench`), `n` (required),
//! `latency` (default `false`).

wit_bindgen::generate!({
    inline: "package bench:stopwatch;
             world stopwatch {
                 include pgnotifier:plugin/batched-plugin@0.5.0;
                 import wasi:clocks/wall-clock@0.2.0;
             }",
    path: ["../../../wit", "wit"],
    generate_all,
});

use exports::pgnotifier::plugin::batch::{self, Failure};
use exports::pgnotifier::plugin::subscriber::{Guest, Payload, Registration};
use pgnotifier::plugin::host::{log, Level};
use std::cell::RefCell;
use wasi::clocks::wall_clock;

struct Stopwatch;

#[derive(Default)]
struct Round {
    every: usize,
    latency: bool,
    seen: usize,
    first_us: u64,
    last_us: u64,
    latencies_us: Vec<u64>,
}

thread_local! {
    static ROUND: RefCell<Round> = RefCell::default();
}

fn now_us() -> u64 {
    let now = wall_clock::now();
    now.seconds * 1_000_000 + u64::from(now.nanoseconds / 1_000)
}

/// When a stamped payload was sent, in microseconds since the epoch.
fn sent_us(payload: &Payload) -> Option<u64> {
    match payload {
        Payload::Integer(stamp) => u64::try_from(*stamp).ok(),
        Payload::Json(json) => {
            let rest = json.strip_prefix("{\"sent_us\":")?;
            let end = rest.find(|c: char| !c.is_ascii_digit())?;
            rest[..end].parse().ok()
        }
        _ => None,
    }
}

/// The sample at quantile `per_cent`, rounded to the nearest rank.
fn percentile(sorted: &[u64], per_cent: usize) -> u64 {
    let rank = (sorted.len().saturating_sub(1) * per_cent + 50) / 100;
    sorted.get(rank).copied().unwrap_or(0)
}

impl Round {
    fn report(&mut self) {
        let mut line = format!(
            "stopwatch n={} first_to_last_us={}",
            self.seen,
            // The wall clock may step back; a garbage figure must not wrap.
            self.last_us.saturating_sub(self.first_us)
        );
        if self.latency {
            self.latencies_us.sort_unstable();
            let (p50, p99) = (
                percentile(&self.latencies_us, 50),
                percentile(&self.latencies_us, 99),
            );
            line.push_str(&format!(" p50_us={p50} p99_us={p99}"));
        }
        log(Level::Info, &line);
        self.seen = 0;
        self.latencies_us.clear();
    }
}

impl Guest for Stopwatch {
    fn register(_id: String, config: Vec<(String, String)>) -> Result<Registration, String> {
        let get = |key: &str| {
            config
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let every = get("n").ok_or("config n (notifications per report) is missing")?;
        let every: usize = every
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("config n = {every:?} is not a positive whole number"))?;
        let latency = get("latency") == Some("true");
        ROUND.with_borrow_mut(|round| {
            *round = Round {
                every,
                latency,
                latencies_us: Vec::with_capacity(if latency { every } else { 0 }),
                ..Round::default()
            }
        });
        let channels = get("channels").unwrap_or("bench");
        Ok(Registration {
            channels: channels.split(',').map(|c| c.trim().to_string()).collect(),
        })
    }

    fn on_notify(_id: String, _channel: String, payload: Payload, _pid: i32) -> Result<(), String> {
        see(&payload)
    }

    fn on_gap(_id: String, _channels: Vec<String>) {}
}

impl batch::Guest for Stopwatch {
    fn on_notify_batch(
        _id: String,
        _channel: String,
        notifications: Vec<batch::Notification>,
    ) -> Vec<Failure> {
        (0u32..)
            .zip(&notifications)
            .filter_map(|(index, n)| {
                see(&n.payload)
                    .err()
                    .map(|message| Failure { index, message })
            })
            .collect()
    }
}

/// One notification, at the time it reaches the plugin. The clock is read
/// only where a figure needs it (every notification for latency, else the
/// first and the last of a round): a host call per notification would time
/// the instrument more than the host.
fn see(payload: &Payload) -> Result<(), String> {
    ROUND.with_borrow_mut(|round| {
        round.seen += 1;
        let (first, last) = (round.seen == 1, round.seen == round.every);
        if round.latency || first || last {
            round.last_us = now_us();
        }
        if first {
            round.first_us = round.last_us;
        }
        if round.latency {
            let sent = sent_us(payload).ok_or("the payload carries no send stamp")?;
            round.latencies_us.push(round.last_us.saturating_sub(sent));
        }
        if round.seen == round.every {
            round.report();
        }
        Ok(())
    })
}

export!(Stopwatch);
