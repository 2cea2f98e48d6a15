//! What a plugin writes to the host log — its `log` calls, stdout and
//! stderr — tagged with its id, cut to a bounded length, and rate-limited per
//! subscriber, so a flooding plugin cannot drown the log or the host.

use crate::bindings::Level;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Lines a subscriber may write per second, on average.
pub(crate) const LINES_PER_SECOND: f64 = 200.0;
/// Lines it may write at once before the rate applies.
pub(crate) const BURST: f64 = 1000.0;

/// One subscriber's log: its id and its line budget (a token bucket).
pub(crate) struct GuestLog {
    id: Arc<str>,
    budget: Mutex<Budget>,
}

struct Budget {
    tokens: f64,
    refilled: Instant,
    /// Lines refused since the last one written.
    suppressed: u64,
}

impl GuestLog {
    pub(crate) fn new(id: Arc<str>) -> Arc<Self> {
        Arc::new(Self {
            id,
            budget: Mutex::new(Budget {
                tokens: BURST,
                refilled: Instant::now(),
                suppressed: 0,
            }),
        })
    }

    /// Write one line if the budget allows; `stream` names stdout or stderr.
    pub(crate) fn write(&self, level: Level, stream: Option<&str>, text: &str, truncated: bool) {
        let suppressed = {
            let mut budget = crate::sync::lock(&self.budget);
            let now = Instant::now();
            let earned = now.duration_since(budget.refilled).as_secs_f64() * LINES_PER_SECOND;
            budget.tokens = (budget.tokens + earned).min(BURST);
            budget.refilled = now;
            // The notice of what was suppressed costs a line too.
            let cost = if budget.suppressed > 0 { 2.0 } else { 1.0 };
            if budget.tokens < cost {
                if budget.suppressed > 0 && budget.tokens >= 1.0 {
                    // Room for the notice only: give it, and suppress this line.
                    budget.tokens -= 1.0;
                    let suppressed = std::mem::replace(&mut budget.suppressed, 1);
                    drop(budget);
                    self.report_suppressed(suppressed);
                } else {
                    budget.suppressed += 1;
                }
                return;
            }
            budget.tokens -= cost;
            std::mem::take(&mut budget.suppressed)
        };
        if suppressed > 0 {
            self.report_suppressed(suppressed);
        }
        let id = &*self.id;
        let cut = if truncated { " [truncated]" } else { "" };
        match level {
            Level::Trace => {
                tracing::trace!(target: "pgnotifier::plugin", subscriber = %id, stream, "{text}{cut}")
            }
            Level::Debug => {
                tracing::debug!(target: "pgnotifier::plugin", subscriber = %id, stream, "{text}{cut}")
            }
            Level::Info => {
                tracing::info!(target: "pgnotifier::plugin", subscriber = %id, stream, "{text}{cut}")
            }
            Level::Warn => {
                tracing::warn!(target: "pgnotifier::plugin", subscriber = %id, stream, "{text}{cut}")
            }
            Level::Error => {
                tracing::error!(target: "pgnotifier::plugin", subscriber = %id, stream, "{text}{cut}")
            }
        }
    }
}

impl GuestLog {
    fn report_suppressed(&self, lines: u64) {
        tracing::warn!(target: "pgnotifier::plugin", subscriber = %self.id, "{lines} log lines suppressed (over {LINES_PER_SECOND} lines/s)");
    }
}

/// `text` cut to at most `max` bytes on a character boundary, and whether it was cut.
pub(crate) fn cut_at(text: &str, max: usize) -> (&str, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
}
