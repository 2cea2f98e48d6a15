//! Durable delivery: events that `pgnotifier.send` records in an outbox
//! table, for at-least-once subscribers that miss nothing across crashes,
//! restarts and reconnects.
//!
//! - [`schema`]: the outbox, positions, dead letters, `send` and the
//!   `notify_row` trigger helper, with forward-only migrations;
//! - [`reader`]: the next committed events after a position, in order, and
//!   positions kept in PostgreSQL;
//! - [`feeder`]: one task per at-least-once subscriber, from the outbox to
//!   its mailbox, with retries and dead letters.

pub mod feeder;
pub mod reader;
pub mod schema;

pub use feeder::{DeliveryMode, FeedError, RetryPolicy};
