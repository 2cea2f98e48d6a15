//! Durable delivery: events that `pgnotifier.send` records in an outbox
//! table, for at-least-once subscribers that miss nothing across crashes,
//! restarts and reconnects.
//!
//! This room grows in steps. Here now: the [`schema`] (outbox, positions,
//! dead letters, `send` and the `notify_row` trigger helper) with its
//! forward-only migrations, and the [`reader`]'s core: the next committed
//! events after a position, in order, and positions kept in PostgreSQL.
//! Delivering them to subscribers (the sidecar's `delivery`, retries, dead
//! letters) comes next.

pub mod reader;
pub mod schema;
