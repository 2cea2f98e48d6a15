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
//!   what is older than the retention, with a gap event for what was missed;
//! - [`relay`]: the WAL transport, where `send` writes a logical decoding
//!   message, and the dispatching host relays a slot's into the outbox;
//! - [`rows`]: row changes of the tables sidecars name, read from the WAL
//!   transport's publication and relayed the same way;
//! - [`backfill`]: a new subscriber's tables as one snapshot's rows, then
//!   every change that snapshot did not see.

pub mod backfill;
pub mod dead_letters;
pub mod feeder;
pub mod pruner;
pub mod reader;
pub mod relay;
pub mod rows;
pub mod schema;

pub use dead_letters::DeadLetter;
pub use feeder::{DeliveryMode, FeedError, RetryPolicy};
pub use pruner::{Pruned, DEFAULT_RETENTION};
pub use relay::{Transport, DEFAULT_SLOT};

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
    #[error("durable_transport = \"wal\" needs wal_level = logical, and the server has wal_level = {found}. Set it (ALTER SYSTEM SET wal_level = logical, or in postgresql.conf) and restart PostgreSQL: wal_level takes effect only at a server start. On a managed service: Amazon RDS and Aurora, rds.logical_replication = 1 in the parameter group; Google Cloud SQL, the flag cloudsql.logical_decoding = on; Azure Database for PostgreSQL, wal_level = LOGICAL in the server parameters; each needs a restart. Or keep durable_transport = \"outbox\", which works at any wal_level")]
    WalLevel { found: String },
    #[error("the WAL transport's replication slot {slot:?} (and its publication): {}. Its role needs the REPLICATION attribute (or superuser) and CREATE on the database", describe(.source))]
    Slot {
        slot: String,
        source: tokio_postgres::Error,
    },
    #[error("durable_transport = \"wal\" needs a database whose encoding is UTF8, and this one's is {found}: use durable_transport = \"outbox\" with it")]
    Encoding { found: String },
    #[error("the replication slot {slot:?} is not this database's pgoutput slot (database {database:?}, plugin {plugin:?}): slot names are one namespace for the whole server, so give each database's hosts a wal_slot of its own")]
    SlotTaken {
        slot: String,
        database: String,
        plugin: String,
    },
    #[error("tables: {table}: on the outbox transport a table's row changes come from its trigger, and it has none: CREATE TRIGGER ... AFTER INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION pgnotifier.notify_row('channel'); or set durable_transport = \"wal\" in the host's config, whose publication needs no trigger")]
    NoTrigger { table: String },
    #[error("tables: {table}: {why}")]
    Table { table: String, why: String },
    #[error("subscriber {subscriber:?} is fed by {holder}, not by this host")]
    FedElsewhere { subscriber: String, holder: String },
}
