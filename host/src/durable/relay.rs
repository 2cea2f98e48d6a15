//! The WAL transport: `pgnotifier.send` writes a transactional logical
//! decoding message instead of an outbox row, and the host that dispatches
//! reads them from a replication slot and relays them into the outbox, where
//! the feeders read them as any other event; with them, the changes of the
//! tables sidecars name ([`rows`](super::rows)).
//!
//! - **Why relay, not feed from the slot.** A slot has one confirmed
//!   position and one reader. Relaying moves it as soon as the relay's own
//!   insert commits, so a stuck subscriber holds outbox rows (pruned by
//!   `outbox_retention`, with a gap event), never WAL on the primary; and
//!   positions, retries, dead letters, redelivery, skip and failover are the
//!   outbox's, the same in both transports. The writer pays for the message
//!   alone; the relay writes each event once more, many to a transaction.
//! - **Exactly once into the outbox.** Each relay transaction records how
//!   far it relayed (`pgnotifier.relayed`), and only then is the slot's
//!   position moved there. A relay that starts again asks the server for
//!   what committed after that, and skips any transaction it still sends
//!   that ends before it.
//! - **Commit order, durable first.** A slot sends a transaction only once
//!   its commit is flushed, in commit order; the relay keeps that order
//!   (one commit stamp per relay transaction, events in the order read).
//! - **One reader.** Only a host that dispatches (alone, or leading its
//!   cluster) relays, and PostgreSQL lets one session at a time read a
//!   slot: a second host finds it busy and tries again later.
//! - **The slot and its publication** share the configured name. The relay
//!   creates both when missing, and only then sets the transport, so no
//!   message is written that no slot keeps.

use super::reader::column;
use super::rows::{Bare, Relations};
use super::DurableError;
use crate::channel::quote_ident;
use crate::pg::connection::Backoff;
use crate::pg::replication::SlotRead;
use crate::pg::DatabaseSettings;
use crate::sync::{bump, AbortOnDrop, Stop, Task};
use pgwire_replication::{Lsn, ReplicationClient, ReplicationEvent};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio_postgres::types::PgLsn;

/// Where durable events travel from `pgnotifier.send` to the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// The `pgnotifier.outbox` table: any PostgreSQL.
    #[default]
    Outbox,
    /// The write-ahead log, read from the logical replication slot `slot`
    /// (and a publication of the same name): needs `wal_level = logical`.
    Wal { slot: String },
}

/// The slot a host uses unless configured: one per database, shared by
/// every host of a cluster.
pub const DEFAULT_SLOT: &str = "pgnotifier";

/// The prefix of every message `send` writes: `pgnotifier:PID:CHANNEL`.
const PREFIX: &str = "pgnotifier:";

/// Events relayed in one transaction at most.
const BATCH_EVENTS: usize = 1000;
/// Payload bytes relayed in one transaction at most (the first event always goes).
const BATCH_BYTES: usize = 16 << 20;

/// Whether a slot name is one PostgreSQL accepts: lower-case letters,
/// digits and underscores, at most 63 bytes.
pub fn valid_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The relay's counters.
#[derive(Debug, Default)]
pub(crate) struct RelayStats {
    /// Events relayed into the outbox since start.
    pub(crate) events: AtomicU64,
    /// Relay transactions committed since start.
    pub(crate) batches: AtomicU64,
    /// The WAL position relayed through, as a number.
    pub(crate) through: AtomicU64,
    /// The end of the WAL the server had sent at its last message.
    pub(crate) server_end: AtomicU64,
    /// 1 while a session reads the slot, else 0.
    pub(crate) reading: AtomicU64,
    /// Messages with `send`'s prefix that `send` never writes (another
    /// role's `pg_logical_emit_message`), not relayed.
    pub(crate) refused: AtomicU64,
}

/// What the WAL transport needs of the server and the database:
/// `wal_level = logical`, and a UTF-8 database.
pub(crate) async fn check_requirements(
    client: &tokio_postgres::Client,
) -> Result<(), DurableError> {
    check_wal_level(client).await?;
    check_encoding(client).await
}

/// The server's `wal_level`, refused unless `logical`.
async fn check_wal_level(client: &tokio_postgres::Client) -> Result<(), DurableError> {
    let row = client
        .query_one("SELECT current_setting('wal_level') AS wal_level", &[])
        .await?;
    let found: String = column(&row, "wal_level")?;
    if found == "logical" {
        Ok(())
    } else {
        Err(DurableError::WalLevel { found })
    }
}

/// The SQL that makes the slot `slot` and its publication, for a DBA to
/// review and run (`pgnotifier schema install --print`), after the schema
/// script: it cannot run inside a transaction that has written.
pub fn slot_script(slot: &str) -> String {
    format!(
        "\n-- The WAL transport's slot and publication (durable_transport = \"wal\"): run as a\n-- role with REPLICATION (or superuser) and CREATE on the database, outside a\n-- transaction block. The host tells senders to write to the WAL once it reads the slot.\nCREATE PUBLICATION {} WITH (publish_via_partition_root = true);\nSELECT pg_catalog.pg_create_logical_replication_slot('{}', 'pgoutput');\n",
        quote_ident(slot),
        slot.replace('\'', "''")
    )
}

/// Make the publication and the slot `slot` if missing (the slot reads
/// with `pgoutput`); whether the slot was made now. The server must have
/// `wal_level = logical`.
pub async fn ensure_slot(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<bool, DurableError> {
    check_wal_level(client).await?;
    super::rows::ensure_publication(client, slot).await?;
    let found = client
        .query_opt(
            "SELECT coalesce(database::text, '') AS database, coalesce(plugin::text, '') AS plugin
               FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    if let Some(row) = found {
        let database: String = column(&row, "database")?;
        let plugin: String = column(&row, "plugin")?;
        let here: String = column(
            &client
                .query_one("SELECT current_database()::text AS here", &[])
                .await?,
            "here",
        )?;
        if database == here && plugin == "pgoutput" {
            return Ok(false);
        }
        return Err(DurableError::SlotTaken {
            slot: slot.to_owned(),
            database,
            plugin,
        });
    }
    let created = client
        .execute(
            "SELECT pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await;
    match created {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => Ok(false),
        Err(source) => Err(DurableError::Slot {
            slot: slot.to_owned(),
            source,
        }),
    }
}

/// Whether `pgnotifier.relayed` records a position for `slot`.
async fn had_relayed(client: &tokio_postgres::Client, slot: &str) -> Result<bool, DurableError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT FROM pgnotifier.relayed WHERE slot = $1) AS had",
            &[&slot],
        )
        .await?;
    Ok(column(&row, "had")?)
}

/// A message's content is the payload in the database's encoding, which
/// the relay reads as UTF-8: any other is refused, naming it.
async fn check_encoding(client: &tokio_postgres::Client) -> Result<(), DurableError> {
    let row = client
        .query_one("SELECT current_setting('server_encoding') AS encoding", &[])
        .await?;
    let found: String = column(&row, "encoding")?;
    if found == "UTF8" {
        Ok(())
    } else {
        Err(DurableError::Encoding { found })
    }
}

/// Whether PostgreSQL invalidated the slot `slot` (`wal_status = 'lost'`).
async fn slot_lost(client: &tokio_postgres::Client, slot: &str) -> Result<bool, DurableError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_replication_slots
                             WHERE slot_name = $1 AND database = pg_catalog.current_database()
                               AND wal_status = 'lost') AS lost",
            &[&slot],
        )
        .await?;
    Ok(column(&row, "lost")?)
}

/// Set where `pgnotifier.send` writes, for every sender from their next send.
pub(crate) async fn set_transport(
    client: &tokio_postgres::Client,
    wal: bool,
) -> Result<(), DurableError> {
    let transport = if wal { "wal" } else { "outbox" };
    client
        .execute(
            "INSERT INTO pgnotifier.limits AS l (only_row, transport) VALUES (true, $1)
                 ON CONFLICT (only_row) DO UPDATE SET transport = excluded.transport
                 WHERE l.transport IS DISTINCT FROM excluded.transport",
            &[&transport],
        )
        .await?;
    Ok(())
}

/// What a relay reads, and what it tells senders.
pub(crate) struct RelaySpec {
    pub(crate) slot: Arc<str>,
    /// Senders write to the WAL (the configured transport), or to the
    /// outbox again (a host on the outbox transport draining a slot left
    /// from the WAL transport).
    pub(crate) wal: bool,
    pub(crate) max_payload_bytes: u32,
}

/// Relay `spec`'s slot into the outbox on `runtime`, while this host
/// dispatches, until stopped.
pub(crate) fn spawn(
    runtime: &tokio::runtime::Handle,
    database: DatabaseSettings,
    spec: RelaySpec,
    dispatching: watch::Receiver<bool>,
    stats: Arc<RelayStats>,
) -> Task {
    Task::spawn(runtime, |stop| async move {
        let relay = Relay {
            database,
            slot: spec.slot,
            wal: spec.wal,
            max_payload_bytes: spec.max_payload_bytes,
            dispatching,
            stop,
            stats,
        };
        relay.run().await
    })
}

/// The slot left by the WAL transport that a host on the outbox transport
/// still relays: one `pgnotifier.relayed` names, if it exists. Senders may
/// still write to it until their transactions end.
pub(crate) async fn left_to_drain(
    client: &tokio_postgres::Client,
) -> Result<Option<String>, DurableError> {
    let row = client
        .query_one("SELECT pgnotifier.slot_to_drain() AS slot", &[])
        .await;
    // A schema from before the WAL transport (or none) has nothing to drain.
    match row {
        Ok(row) => Ok(column(&row, "slot")?),
        Err(e)
            if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_FUNCTION)
                || e.code() == Some(&tokio_postgres::error::SqlState::INVALID_SCHEMA_NAME) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

struct Relay {
    database: DatabaseSettings,
    slot: Arc<str>,
    wal: bool,
    max_payload_bytes: u32,
    dispatching: watch::Receiver<bool>,
    stop: Stop,
    stats: Arc<RelayStats>,
}

/// Why a relay session ended.
enum End {
    Stopped,
    StoodDown,
    /// Another session reads the slot.
    Busy(String),
    Failed(String),
}

impl<E: std::error::Error> From<E> for End {
    fn from(e: E) -> Self {
        End::Failed(crate::printable::with_causes(&e))
    }
}

impl Relay {
    async fn run(mut self) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut said_busy = false;
        loop {
            // Only a host that dispatches relays.
            tokio::select! {
                _ = self.dispatching.wait_for(|d| *d) => {}
                _ = self.stop.asked() => return,
            }
            let end = self.session().await;
            let wait = match end {
                End::Stopped => return,
                End::StoodDown => continue,
                End::Busy(holder) => {
                    if !said_busy {
                        tracing::info!(slot = %self.slot, "another session reads the slot ({holder}); trying again every second");
                        said_busy = true;
                    }
                    // A host that died leaves its session for as long as
                    // the server takes to notice: often at once.
                    Duration::from_secs(1)
                }
                End::Failed(e) => {
                    said_busy = false;
                    let wait = backoff.next_delay();
                    tracing::warn!(slot = %self.slot, "relaying the WAL transport's events: {e}; again in {wait:?}");
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.asked() => return,
            }
        }
    }

    /// Connect, read the slot from where the outbox has it, and relay until
    /// stopped, stood down or failed.
    async fn session(&mut self) -> End {
        let (client, connection) = match self.database.connect().await {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        let _driver = AbortOnDrop(tokio::spawn(connection));
        let mut session = match self.open(client).await {
            Ok(session) => session,
            Err(end) => return end,
        };
        tracing::info!(slot = %self.slot, from = %session.through.to_pg_string(), "relaying the slot into the outbox");
        self.stats.reading.store(1, Ordering::Relaxed);
        let end = session.relay(self).await;
        self.stats.reading.store(0, Ordering::Relaxed);
        session.replication.stop();
        end
    }

    /// A slot PostgreSQL invalidated (past `max_slot_wal_keep_size`) can
    /// never be read again: what it held is gone. Senders go back to the
    /// outbox at once; every at-least-once subscriber is told of a gap with
    /// the cause, before its next event; and the slot is dropped, for a new
    /// one to take its place.
    async fn give_up_lost_slot(&self, client: &mut tokio_postgres::Client) -> Result<(), End> {
        set_transport(client, false).await?;
        let cause = format!(
            "the WAL transport's replication slot {:?} was invalidated by PostgreSQL (it held more WAL than max_slot_wal_keep_size allows): events sent through the WAL that no host had relayed are lost",
            &*self.slot
        );
        let told = self.tell_everyone_of_a_gap(client, &cause).await?;
        let dropped = client
            .execute(
                "SELECT pg_catalog.pg_drop_replication_slot($1)",
                &[&&*self.slot],
            )
            .await;
        if let Err(e) = dropped {
            // Dropped by another host meanwhile: as good.
            if e.code() != Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT) {
                return Err(e.into());
            }
        }
        tracing::error!(slot = %self.slot, subscribers = told, "{cause}; each at-least-once subscriber is told of a gap, and the slot is made again");
        Ok(())
    }

    /// A gap with `cause` for every at-least-once subscriber, before its
    /// next event, and the slot's relayed position forgotten, in one
    /// transaction; how many subscribers are told.
    async fn tell_everyone_of_a_gap(
        &self,
        client: &mut tokio_postgres::Client,
        cause: &str,
    ) -> Result<u64, End> {
        let tx = client.transaction().await?;
        let told = tx
            .execute(
                "INSERT INTO pgnotifier.gaps (subscriber, channels, events, first_sent_at, cause)
                 SELECT p.subscriber, coalesce(p.channels, '{}'), 0,
                        coalesce((SELECT r.updated_at FROM pgnotifier.relayed r WHERE r.slot = $1),
                                 pg_catalog.now()),
                        $2
                   FROM pgnotifier.positions p",
                &[&&*self.slot, &cause],
            )
            .await?;
        tx.execute(
            "DELETE FROM pgnotifier.relayed WHERE slot = $1",
            &[&&*self.slot],
        )
        .await?;
        tx.commit().await?;
        Ok(told)
    }

    async fn open(&mut self, mut client: tokio_postgres::Client) -> Result<Session, End> {
        super::schema::install(&mut client).await?;
        if slot_lost(&client, &self.slot).await? {
            self.give_up_lost_slot(&mut client).await?;
            if !self.wal {
                return Err(End::Stopped);
            }
        }
        if self.wal {
            check_requirements(&client).await?;
            if ensure_slot(&client, &self.slot).await? {
                tracing::info!(slot = %self.slot, "created the replication slot and its publication");
                // A slot made now while the outbox records one relayed
                // before: it was dropped, or the database restored on
                // another server. Whatever was sent through the WAL without
                // it is gone, and the position recorded means nothing here.
                if had_relayed(&client, &self.slot).await? {
                    let cause = format!(
                        "the WAL transport's replication slot {:?} was missing (dropped, or the database restored elsewhere): events sent through the WAL without it are lost",
                        &*self.slot
                    );
                    let told = self.tell_everyone_of_a_gap(&mut client, &cause).await?;
                    tracing::error!(slot = %self.slot, subscribers = told, "{cause}; each at-least-once subscriber is told of a gap");
                }
            }
        } else if left_to_drain(&client).await?.as_deref() != Some(&*self.slot) {
            tracing::info!(slot = %self.slot, "the WAL transport's slot is gone: nothing left to relay");
            return Err(End::Stopped);
        }
        // The relay's commits are durable before the slot moves past them,
        // whatever the database's default.
        client.batch_execute("SET synchronous_commit = on").await?;
        // Recorded before senders write to the WAL, so that a host on the
        // outbox transport finds the slot to drain.
        let row = client
            .query_one(
                "INSERT INTO pgnotifier.relayed AS r (slot, through)
                 SELECT $1, s.confirmed_flush_lsn FROM pg_catalog.pg_replication_slots s
                  WHERE s.slot_name = $1 AND s.database = pg_catalog.current_database()
                     ON CONFLICT (slot) DO UPDATE SET updated_at = pg_catalog.now()
                 RETURNING r.through",
                &[&&*self.slot],
            )
            .await?;
        let through = Lsn(u64::from(column::<PgLsn>(&row, "through")?));
        set_transport(&client, self.wal).await?;
        // Up to 64 MiB of messages wait in the session's buffer.
        let buffer_events = ((64 << 20) / self.max_payload_bytes.max(1) as usize).clamp(16, 4096);
        let read = SlotRead {
            slot: &self.slot,
            publication: &self.slot,
            from: through,
            buffer_events,
        };
        let mut failures = Vec::new();
        for config in self.database.replication(&read)? {
            let target = config.display_connection();
            let mut replication = match ReplicationClient::connect(config).await {
                Ok(r) => r,
                Err(e) => {
                    failures.push(format!("{target}: {e}"));
                    continue;
                }
            };
            let started =
                tokio::time::timeout(Duration::from_secs(10), replication.wait_started()).await;
            match started {
                Ok(Ok(())) => {
                    let statements = Statements::prepare(&client).await?;
                    return Ok(Session {
                        client,
                        statements,
                        recorded: through,
                        replication,
                        through,
                        open: Vec::new(),
                        writer: 0,
                        relations: Relations::new(self.max_payload_bytes),
                        batch: Batch::default(),
                    });
                }
                Ok(Err(e)) => {
                    let text = e.to_string();
                    if text.contains("is active for PID") {
                        return Err(End::Busy(text));
                    }
                    failures.push(format!("{target}: {text}"));
                }
                Err(_) => failures.push(format!(
                    "{target}: no answer to START_REPLICATION within 10 s"
                )),
            }
            replication.stop();
        }
        Err(End::Failed(format!(
            "reading the replication slot {:?}: {}",
            &*self.slot,
            failures.join("; ")
        )))
    }
}

/// One event read from the slot, not yet relayed.
#[derive(Debug)]
struct Relayed {
    channel: String,
    payload: String,
    pid: i32,
    lsn: Lsn,
    /// A row change's raw event, for `pgnotifier.row_change` to render
    /// (one whose values the relay could not render itself).
    row: bool,
    /// For a row change, the bare operation: what is relayed when even its
    /// values as text cannot be.
    bare: Option<Bare>,
    /// For a row change, its table's relation oid.
    source: Option<u32>,
}

/// Committed events waiting to be relayed together.
#[derive(Default)]
struct Batch {
    channels: Vec<String>,
    payloads: Vec<String>,
    pids: Vec<i32>,
    sent_at: Vec<SystemTime>,
    lsns: Vec<PgLsn>,
    rows: Vec<bool>,
    bares: Vec<Option<Bare>>,
    sources: Vec<Option<u32>>,
    /// Each event's writing transaction, as pgoutput's Begin gives it (32
    /// bits; the insert widens it).
    writers: Vec<i64>,
    bytes: usize,
    /// The end of the last transaction taken in.
    through: Lsn,
    /// A transaction is taken in and not yet written.
    pending: bool,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    fn is_full(&self) -> bool {
        self.channels.len() >= BATCH_EVENTS || self.bytes >= BATCH_BYTES
    }

    /// The events in parts of at most [`BATCH_EVENTS`] and, past the first
    /// event of each, [`BATCH_BYTES`] of payload.
    fn parts(&self) -> Vec<std::ops::Range<usize>> {
        let mut parts = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, payload) in self.payloads.iter().enumerate() {
            if i > start && (i - start >= BATCH_EVENTS || bytes + payload.len() > BATCH_BYTES) {
                parts.push(start..i);
                (start, bytes) = (i, 0);
            }
            bytes += payload.len();
        }
        if start < self.payloads.len() {
            parts.push(start..self.payloads.len());
        }
        parts
    }

    fn take_in(&mut self, events: Vec<Relayed>, writer: u32, committed_at: SystemTime, end: Lsn) {
        for event in events {
            self.writers.push(i64::from(writer));
            self.bytes += event.payload.len();
            self.channels.push(event.channel);
            self.payloads.push(event.payload);
            self.pids.push(event.pid);
            self.sent_at.push(committed_at);
            self.lsns.push(PgLsn::from(event.lsn.0));
            self.rows.push(event.row);
            self.bares.push(event.bare);
            self.sources.push(event.source);
        }
        self.through = end;
        self.pending = true;
    }
}

/// Move the slot's relayed position, only from where this session found
/// it: a relay that read the slot meanwhile (a host whose write was held up
/// while another took the slot over) has relayed what this one holds.
const MOVE_THROUGH: &str = "
UPDATE pgnotifier.relayed SET through = $2, updated_at = pg_catalog.now()
 WHERE slot = $1 AND through = $3";

/// Events into the outbox, in order; `$6`: the first of the transaction.
/// A row change (`$7`) is rendered within `$8` bytes, its values typed
/// unless `$9` is false. A writer's 32-bit transaction id (`$10`) is
/// widened to the full one: the latest before the next one handed out.
/// A row change's table is its source (`$11`).
const INSERT_EVENTS: &str = "
INSERT INTO pgnotifier.outbox (channel, payload, pid, sent_at, lsn, first_in_transaction, writer,
                               source)
SELECT e.channel,
       CASE WHEN e.row THEN pgnotifier.row_change(e.payload::jsonb, $8, $9) ELSE e.payload END,
       e.pid, e.sent_at, e.lsn, e.n = 1 AND $6,
       (x.next - (x.next - e.writer) % 4294967296)::text::xid8, e.source
  FROM unnest($1::text[], $2::text[], $3::int4[], $4::timestamptz[], $5::pg_lsn[], $7::bool[],
              $10::int8[], $11::oid[])
       WITH ORDINALITY AS e(channel, payload, pid, sent_at, lsn, row, writer, source, n)
 CROSS JOIN (SELECT pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text::bigint
               AS next) x
 ORDER BY e.n";

/// One wake-up per channel for the feeders.
const WAKE: &str = "
SELECT pg_catalog.pg_notify('pgnotifier.outbox', c)
  FROM (SELECT DISTINCT unnest($1::text[]) AS c) d";

/// The relay's statements, prepared once per session.
struct Statements {
    move_through: tokio_postgres::Statement,
    insert_events: tokio_postgres::Statement,
    wake: tokio_postgres::Statement,
}

impl Statements {
    async fn prepare(client: &tokio_postgres::Client) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            move_through: client.prepare(MOVE_THROUGH).await?,
            insert_events: client.prepare(INSERT_EVENTS).await?,
            wake: client.prepare(WAKE).await?,
        })
    }
}

struct Session {
    client: tokio_postgres::Client,
    statements: Statements,
    replication: ReplicationClient,
    /// Relayed through here: a transaction that ends here or before is had.
    through: Lsn,
    /// What `pgnotifier.relayed` holds, as this session last wrote it.
    recorded: Lsn,
    /// The messages of the transaction being read, and its id.
    open: Vec<Relayed>,
    writer: u32,
    /// The published tables as the server described them.
    relations: Relations,
    batch: Batch,
}

/// PostgreSQL's epoch (2000-01-01) as Unix time.
const PG_EPOCH: Duration = Duration::from_secs(946_684_800);

fn pg_time(micros: i64) -> SystemTime {
    let since = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        SystemTime::UNIX_EPOCH + PG_EPOCH + since
    } else {
        SystemTime::UNIX_EPOCH + PG_EPOCH - since
    }
}

impl Session {
    async fn relay(&mut self, relay: &mut Relay) -> End {
        enum Next {
            Event(pgwire_replication::Result<Option<ReplicationEvent>>),
            Stop,
            StandDown,
            Due,
        }
        loop {
            // In this order: a batch goes as soon as nothing more is in
            // hand, so it waits for no timer when the stream is quiet, and
            // grows on its own while a write is under way.
            let next = tokio::select! {
                biased;
                _ = relay.stop.asked() => Next::Stop,
                _ = relay.dispatching.wait_for(|d| !*d) => Next::StandDown,
                event = self.replication.recv() => Next::Event(event),
                _ = std::future::ready(()), if self.batch.pending => Next::Due,
            };
            let done = match next {
                Next::Event(Ok(Some(event))) => self.take(event, relay).await,
                Next::Event(Ok(None)) => {
                    Err(End::Failed("the replication stream ended".to_owned()))
                }
                Next::Event(Err(e)) => Err(e.into()),
                Next::Stop => return self.finish(relay, End::Stopped).await,
                Next::StandDown => return End::StoodDown,
                Next::Due => self.write(relay).await,
            };
            if let Err(end) = done {
                return end;
            }
        }
    }

    /// Relay what is in hand before stopping: it is committed, and read.
    async fn finish(&mut self, relay: &Relay, end: End) -> End {
        match self.write(relay).await {
            Ok(()) => end,
            Err(failed) => failed,
        }
    }

    async fn take(&mut self, event: ReplicationEvent, relay: &Relay) -> Result<(), End> {
        match event {
            ReplicationEvent::Begin { xid, .. } => {
                self.open.clear();
                self.writer = xid;
            }
            ReplicationEvent::Message {
                transactional: true,
                lsn,
                prefix,
                content,
            } => match parse_message(&prefix, &content, lsn, relay.max_payload_bytes) {
                Some(Ok(event)) => self.open.push(event),
                Some(Err(refused)) => {
                    bump(&relay.stats.refused, 1);
                    tracing::error!(slot = %relay.slot, "not relayed, since pgnotifier.send never writes it: {refused}");
                }
                None => {}
            },
            ReplicationEvent::XLogData {
                wal_start, data, ..
            } => {
                for change in self.relations.read(&data, wal_start)? {
                    self.open.push(Relayed {
                        channel: change.channel,
                        payload: change.payload,
                        // The WAL does not say which backend wrote a change.
                        pid: 0,
                        lsn: wal_start,
                        row: !change.rendered,
                        bare: Some(change.bare),
                        source: Some(change.source),
                    });
                }
            }
            ReplicationEvent::Commit {
                end_lsn,
                commit_time_micros,
                ..
            } => {
                relay
                    .stats
                    .server_end
                    .fetch_max(end_lsn.0, Ordering::Relaxed);
                let events = std::mem::take(&mut self.open);
                // Relayed before this session (the server starts at the
                // slot's confirmed position, which may lag `relayed`).
                if end_lsn <= self.through {
                    return Ok(());
                }
                if events.is_empty() && self.batch.is_empty() {
                    self.through = end_lsn;
                    self.confirm(relay, end_lsn);
                    return Ok(());
                }
                self.batch
                    .take_in(events, self.writer, pg_time(commit_time_micros), end_lsn);
                if self.batch.is_full() {
                    self.write(relay).await?;
                }
            }
            // Nothing read is waiting: the slot may move to what the server
            // has sent.
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                relay
                    .stats
                    .server_end
                    .fetch_max(wal_end.0, Ordering::Relaxed);
                if self.open.is_empty() && self.batch.is_empty() && wal_end > self.through {
                    self.confirm(relay, wal_end);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Relay the batch in one transaction with how far it goes; then move
    /// the slot there.
    async fn write(&mut self, relay: &Relay) -> Result<(), End> {
        if !self.batch.pending {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        // A row change PostgreSQL cannot render (a value that no longer
        // reads as its type, a domain's constraint added since, a value
        // past what jsonb holds) must not stop the relay: the batch goes
        // again with the row changes' values as text, then as the bare
        // operations.
        let has_rows = batch.bares.iter().any(Option::is_some);
        let mut written = self.write_batch(relay, &batch, Render::Typed).await;
        for fallback in [Render::Text, Render::Bare] {
            match &written {
                Err(e) if has_rows && is_about_the_data(e) => {
                    tracing::error!(slot = %relay.slot, "row changes relayed {}, since {}", fallback.describe(), crate::pg::describe(e));
                    written = self.write_batch(relay, &batch, fallback).await;
                }
                _ => break,
            }
        }
        if !written? {
            return Err(End::Failed(
                "another relay moved the slot's relayed position meanwhile; reading on from there"
                    .to_owned(),
            ));
        }
        self.recorded = batch.through;
        self.through = batch.through;
        self.confirm(relay, batch.through);
        bump(&relay.stats.events, batch.channels.len() as u64);
        bump(&relay.stats.batches, 1);
        Ok(())
    }

    /// Write `batch` and how far it goes in one transaction, row changes
    /// rendered as `render` says; false, writing nothing, if another relay
    /// moved the relayed position since this session recorded it.
    async fn write_batch(
        &mut self,
        relay: &Relay,
        batch: &Batch,
        render: Render,
    ) -> Result<bool, tokio_postgres::Error> {
        let through = PgLsn::from(batch.through.0);
        // One transaction: its commit stamps the events (the outbox's
        // deferred trigger). Written in parts, so that no statement passes
        // what the server takes in one message, however large the
        // sending transaction was.
        let tx = self.client.transaction().await?;
        let moved = tx
            .execute(
                &self.statements.move_through,
                &[&&*relay.slot, &through, &PgLsn::from(self.recorded.0)],
            )
            .await?;
        if moved != 1 {
            return Ok(false);
        }
        let (payloads, rows) = match render {
            Render::Bare => {
                let payloads: Vec<String> = (batch.payloads.iter().zip(&batch.bares))
                    .map(|(payload, bare)| {
                        bare.as_ref().map_or_else(|| payload.clone(), Bare::event)
                    })
                    .collect();
                (
                    std::borrow::Cow::Owned(payloads),
                    vec![false; batch.rows.len()],
                )
            }
            Render::Typed | Render::Text => (
                std::borrow::Cow::Borrowed(&batch.payloads),
                batch.rows.clone(),
            ),
        };
        let typed = matches!(render, Render::Typed);
        let mut first = true;
        for part in batch.parts() {
            tx.execute(
                &self.statements.insert_events,
                &[
                    &&batch.channels[part.clone()],
                    &&payloads[part.clone()],
                    &&batch.pids[part.clone()],
                    &&batch.sent_at[part.clone()],
                    &&batch.lsns[part.clone()],
                    &first,
                    &&rows[part.clone()],
                    &(relay.max_payload_bytes.min(i32::MAX as u32) as i32),
                    &typed,
                    &&batch.writers[part.clone()],
                    &&batch.sources[part],
                ],
            )
            .await?;
            first = false;
        }
        if !batch.is_empty() {
            tx.execute(&self.statements.wake, &[&batch.channels])
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Let the slot move to `lsn`: everything before it is relayed.
    fn confirm(&self, relay: &Relay, lsn: Lsn) {
        self.replication.update_applied_lsn(lsn);
        relay.stats.through.fetch_max(lsn.0, Ordering::Relaxed);
    }
}

/// How a batch's row changes are written.
#[derive(Clone, Copy)]
enum Render {
    /// Each value as `to_jsonb` renders its type.
    Typed,
    /// Each value as its text.
    Text,
    /// The operation and the table alone, with `"truncated": true`.
    Bare,
}

impl Render {
    fn describe(self) -> &'static str {
        match self {
            Render::Typed => "with their values typed",
            Render::Text => "with their values as text",
            Render::Bare => "as their bare operations",
        }
    }
}

/// Whether a write failed on what it wrote, not on the server or the
/// connection: an error PostgreSQL raised that is not of a class that says
/// the server (connection, resources, shut down, internal) or the
/// transaction (serialisation) failed.
fn is_about_the_data(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        !["08", "40", "53", "57", "58", "XX"]
            .iter()
            .any(|class| db.code().code().starts_with(class))
    })
}

/// An event from a message with `send`'s prefix (`pgnotifier:PID:CHANNEL`,
/// the payload as content); `None` for anyone else's message. Any role may
/// call `pg_logical_emit_message`, so what `send` would refuse is refused
/// here too, naming why: it is logged and counted, and never stops the
/// relay (a payload with a NUL byte could never be written to the outbox).
fn parse_message(
    prefix: &str,
    content: &[u8],
    lsn: Lsn,
    max_payload_bytes: u32,
) -> Option<Result<Relayed, String>> {
    let rest = prefix.strip_prefix(PREFIX)?;
    let refused = |why: &str| {
        Some(Err(format!(
            "a message with prefix {prefix:?} at {}: {why}",
            lsn.to_pg_string()
        )))
    };
    let Some((pid, channel)) = rest.split_once(':') else {
        return refused("no pid and channel");
    };
    let Ok(pid) = pid.parse() else {
        return refused("no pid");
    };
    if channel.is_empty() || channel.len() > 63 {
        return refused("not a channel name pgnotifier.send accepts");
    }
    if content.len() > max_payload_bytes as usize {
        return refused(&format!(
            "a payload of {} bytes, over max_payload_bytes ({max_payload_bytes})",
            content.len()
        ));
    }
    if content.contains(&0) {
        return refused("a payload with a NUL byte, which no text holds");
    }
    let payload = match std::str::from_utf8(content) {
        Ok(text) => text.to_owned(),
        Err(_) => return refused("a payload that is not UTF-8"),
    };
    Some(Ok(Relayed {
        channel: channel.to_owned(),
        payload,
        pid,
        lsn,
        row: false,
        bare: None,
        source: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_from_send_names_its_pid_and_channel() {
        let event = parse_message("pgnotifier:4242:orders:eu", b"{\"id\": 7}", Lsn(16), 8000)
            .unwrap()
            .unwrap();
        assert_eq!(
            (event.pid, event.channel.as_str(), event.payload.as_str()),
            (4242, "orders:eu", "{\"id\": 7}")
        );
        assert!(parse_message("other:1:orders", b"", Lsn(1), 8000).is_none());
    }

    #[test]
    fn a_message_send_would_never_write_is_refused_naming_why() {
        let refused = |prefix: &str, content: &[u8]| {
            parse_message(prefix, content, Lsn(16), 8)
                .expect("send's prefix")
                .expect_err("refused")
        };
        assert!(refused("pgnotifier:x:orders", b"").ends_with("no pid"));
        assert!(refused("pgnotifier:1", b"").ends_with("no pid and channel"));
        assert!(refused("pgnotifier:1:", b"").contains("channel name"));
        assert!(refused(&format!("pgnotifier:1:{}", "c".repeat(64)), b"").contains("channel name"));
        assert!(refused("pgnotifier:1:orders", b"a\0b").contains("NUL"));
        assert!(refused("pgnotifier:1:orders", b"123456789").contains("over max_payload_bytes (8)"));
        assert!(refused("pgnotifier:1:orders", b"\xff").contains("not UTF-8"));
    }

    #[test]
    fn a_batch_is_written_in_parts_within_the_budgets_each_with_one_event_at_least() {
        let mut batch = Batch::default();
        let big = |n: usize| Relayed {
            channel: "c".to_owned(),
            payload: "x".repeat(n),
            pid: 1,
            lsn: Lsn(1),
            row: false,
            bare: None,
            source: None,
        };
        let events = vec![big(BATCH_BYTES), big(1), big(BATCH_BYTES - 1), big(2)];
        batch.take_in(events, 1, SystemTime::now(), Lsn(9));
        assert_eq!(batch.parts(), vec![0..1, 1..3, 3..4]);
        let mut many = Batch::default();
        many.take_in(
            (0..BATCH_EVENTS + 1).map(|_| big(1)).collect(),
            1,
            SystemTime::now(),
            Lsn(9),
        );
        assert_eq!(
            many.parts(),
            vec![0..BATCH_EVENTS, BATCH_EVENTS..BATCH_EVENTS + 1]
        );
    }

    #[test]
    fn slot_names_are_those_postgresql_takes() {
        assert!(valid_slot_name("pgnotifier_eu1"));
        for bad in ["", "Upper", "with-dash", "a b", &"x".repeat(64)] {
            assert!(!valid_slot_name(bad), "{bad:?}");
        }
    }
}
