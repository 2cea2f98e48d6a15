//! Durable delivery: events that `pgnotifier.send` records in an outbox
//! table, for at-least-once subscribers that miss nothing across crashes,
//! restarts and reconnects.
//!
//! This room grows in steps. Here now: the [`schema`] (outbox, positions,
//! dead letters, `send` and the `notify_row` trigger helper) and its
//! forward-only migrations. The reader that delivers from the outbox comes
//! next.

pub mod schema;
