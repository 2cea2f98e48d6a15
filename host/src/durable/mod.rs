//! Durable delivery: events that `pgnotifier.send` records in an outbox
//! table, for at-least-once subscribers that miss nothing across crashes,
//! restarts and reconnects.
//!
//! - [`schema`]: the outbox, positions, dead letters, `send` and the
//!   `notify_row` trigger helper, with forward-only migrations;
//! - [`reader`]: the next committed events after a position, in order, and
//!   positions kept in PostgreSQL;
//! - [`feeder`]: one task per at-least-once subscriber, from the outbox to
//!   its mailbox, with retries and dead letters;
//! - [`dead_letters`]: listed, and delivered again on request;
//! - [`pruner`]: the outbox emptied of what every subscriber has passed, or
//!   what is older than the retention, with a gap event for what was missed.

pub mod dead_letters;
pub mod feeder;
pub mod pruner;
pub mod reader;
pub mod schema;

pub use dead_letters::DeadLetter;
pub use feeder::{DeliveryMode, FeedError, RetryPolicy};
pub use pruner::{Pruned, DEFAULT_RETENTION};

use crate::pg::describe;

/// Why an operation on durable delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    #[error("{}", describe(.0))]
    Database(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Read(#[from] reader::ReadError),
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
    #[error("no dead letter {0}")]
    UnknownDeadLetter(i64),
    #[error("subscriber {0:?} is not an at-least-once subscriber")]
    NotDurable(String),
    #[error("this host is a standby, and its at-least-once subscribers are fed by the leader ({}): send this to the leader", .leader.as_deref().unwrap_or("none seen yet"))]
    Standby { leader: Option<String> },
    #[error("subscriber {subscriber:?} is fed by {holder}, not by this host")]
    FedElsewhere { subscriber: String, holder: String },
}
