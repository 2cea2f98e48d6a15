//! The `pgnotifier` schema: the outbox that `pgnotifier.send` writes, the
//! trigger helper `pgnotifier.notify_row`, subscribers' positions, dead
//! letters, and the gaps pruning leaves.
//!
//! Migrations only go forward. Migration N brings the schema from version
//! N-1 to N; the versions installed are rows of `pgnotifier.schema_version`.
//! An install takes an advisory lock inside its one transaction, so hosts
//! that start together install once, and a failed step leaves the schema as
//! it was.
//!
//! Advisory locks use two-part keys, a space that the one-number locks
//! applications take (`pg_advisory_lock(bigint)`) never touch:
//! - `(1885826676, 1)`: a schema install; `(1885826676, 2)`: a prune;
//!   `(1885826676, 3)`: installing a `query_role`'s barrier function;
//! - `(1885826680, xid)`: a sending transaction as it commits, on its own
//!   32-bit transaction id, so a reader waits for that sender alone;
//! - a cluster's election and a subscriber's feeder use one-number keys
//!   hashed from their names (`hashtextextended('pgnotifier cluster
//!   NAME/GROUP', 0)`, `hashtextextended('pgnotifier feed ID', 0)`).
//!
//! `send` keeps `pg_notify`'s semantics: the event exists only if the
//! transaction commits, and an empty or too long channel name is refused
//! with `pg_notify`'s own words. A payload may be as large as
//! `pgnotifier.limits.max_payload_bytes`, which the host writes. It wakes
//! the host with a plain NOTIFY on [`WAKE_CHANNEL`] whose payload is the
//! event's channel: PostgreSQL folds identical notifications of one
//! transaction, so a batch of sends wakes the host once per channel.

use crate::pg::describe;
use crate::sandbox::MAX_PAYLOAD_BYTES;

/// The channel `pgnotifier.send` NOTIFYs to wake the host.
pub const WAKE_CHANNEL: &str = "pgnotifier.outbox";

/// The version this host installs and reads.
pub const VERSION: u32 = MIGRATIONS.len() as u32;

/// Migration N (from 1) brings the schema to version N.
const MIGRATIONS: [&str; 15] = [
    // 1: the outbox, positions, dead letters, and send.
    r#"
CREATE TABLE pgnotifier.outbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The sending transaction: the reader orders by (txid, id).
    txid xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    channel text NOT NULL,
    payload text NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
CREATE INDEX outbox_order ON pgnotifier.outbox (txid, id);
CREATE TABLE pgnotifier.positions (
    subscriber text PRIMARY KEY,
    txid xid8 NOT NULL DEFAULT '0',
    id bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE TABLE pgnotifier.dead_letters (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscriber text NOT NULL,
    event_id bigint NOT NULL,
    channel text NOT NULL,
    payload text NOT NULL,
    sent_at timestamptz NOT NULL,
    error text NOT NULL,
    attempts integer NOT NULL,
    dead_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
-- SECURITY DEFINER: producers need only EXECUTE, not the outbox itself;
-- like pg_notify, any role may send.
CREATE FUNCTION pgnotifier.send(channel text, payload text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $send$
#variable_conflict use_variable
DECLARE
    event_id bigint;
BEGIN
    IF channel IS NULL OR channel = '' THEN
        RAISE EXCEPTION 'pgnotifier.send: channel name cannot be empty' USING ERRCODE = '22023';
    END IF;
    IF octet_length(channel) > 63 THEN
        RAISE EXCEPTION 'pgnotifier.send: channel name too long' USING ERRCODE = '22023';
    END IF;
    IF octet_length(coalesce(payload, '')) >= 8000 THEN
        RAISE EXCEPTION 'pgnotifier.send: payload string too long' USING ERRCODE = '22023';
    END IF;
    INSERT INTO pgnotifier.outbox (channel, payload)
        VALUES (channel, coalesce(payload, '')) RETURNING id INTO event_id;
    PERFORM pg_notify('pgnotifier.outbox', channel);
    RETURN event_id;
END
$send$;
"#,
    // 2: the trigger helper.
    r#"
CREATE FUNCTION pgnotifier.notify_row() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $notify_row$
DECLARE
    event jsonb;
BEGIN
    IF TG_NARGS <> 1 OR TG_LEVEL <> 'ROW' THEN
        RAISE EXCEPTION 'pgnotifier.notify_row is a row trigger with one argument, the channel: EXECUTE FUNCTION pgnotifier.notify_row(''orders'')'
            USING ERRCODE = '22023';
    END IF;
    event := jsonb_build_object('op', lower(TG_OP), 'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME);
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        event := event || jsonb_build_object('new', to_jsonb(NEW));
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        event := event || jsonb_build_object('old', to_jsonb(OLD));
    END IF;
    PERFORM pgnotifier.send(TG_ARGV[0], event::text);
    RETURN NULL;
END
$notify_row$;
"#,
    // 3: the sender's backend pid, as a notification carries it.
    r#"
ALTER TABLE pgnotifier.outbox
    ADD COLUMN pid integer NOT NULL DEFAULT pg_catalog.pg_backend_pid();
"#,
    // 4: a dead letter an operator asked to deliver again.
    r#"
ALTER TABLE pgnotifier.dead_letters
    ADD COLUMN redeliver boolean NOT NULL DEFAULT false;
"#,
    // 5: pruning: each position's channels (NULL: all), events by age, and
    // the gaps pruning leaves, until the subscriber is told.
    r#"
ALTER TABLE pgnotifier.positions ADD COLUMN channels text[];
CREATE INDEX outbox_sent_at ON pgnotifier.outbox (sent_at);
CREATE TABLE pgnotifier.gaps (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscriber text NOT NULL,
    channels text[] NOT NULL,
    events bigint NOT NULL,
    first_sent_at timestamptz NOT NULL,
    pruned_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
"#,
    // 6: commit order. Each sending transaction gets a stamp from a
    // sequence as it commits; the reader orders by stamp (reader.rs says why
    // this is commit order, and never skips). Events already there are
    // stamped in transaction-id order, as they were read until now.
    r#"
-- Senders still running finish first; new ones wait until this commits.
LOCK TABLE pgnotifier.outbox IN SHARE MODE;
CREATE SEQUENCE pgnotifier.commit_stamps;
CREATE TABLE pgnotifier.commits (
    txid xid8 PRIMARY KEY,
    stamp bigint NOT NULL UNIQUE
);
INSERT INTO pgnotifier.commits (txid, stamp)
SELECT t.txid, row_number() OVER (ORDER BY t.txid)
  FROM (SELECT DISTINCT txid FROM pgnotifier.outbox) t;
SELECT pg_catalog.setval('pgnotifier.commit_stamps', greatest(count(*), 1), count(*) > 0)
  FROM pgnotifier.commits;
-- A position (txid, id) becomes (its transaction's stamp, id), or, if that
-- transaction's events are gone, the end of the last stamp before it.
ALTER TABLE pgnotifier.positions ADD COLUMN stamp bigint NOT NULL DEFAULT 0;
UPDATE pgnotifier.positions p
   SET stamp = coalesce((SELECT c.stamp FROM pgnotifier.commits c WHERE c.txid = p.txid),
                        (SELECT max(c.stamp) FROM pgnotifier.commits c WHERE c.txid < p.txid), 0),
       id = CASE WHEN EXISTS (SELECT FROM pgnotifier.commits c WHERE c.txid = p.txid)
                 THEN p.id ELSE 9223372036854775807 END;
ALTER TABLE pgnotifier.positions DROP COLUMN txid;

-- At commit, once per sending transaction: the shared lock is held until
-- the commit is visible, which is what pgnotifier.horizon waits for.
CREATE FUNCTION pgnotifier.stamp_commit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $stamp$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtext('pgnotifier commits'));
    INSERT INTO pgnotifier.commits (txid, stamp)
        VALUES (pg_current_xact_id(), nextval('pgnotifier.commit_stamps'))
        ON CONFLICT (txid) DO NOTHING;
    RETURN NULL;
END
$stamp$;
-- send marks only the first event of its transaction, so the trigger is
-- queued once per transaction, and a column test is all the others cost.
-- A row written another way (or by a send that began before this
-- migration) is marked by the default: stamped all the same.
ALTER TABLE pgnotifier.outbox
    ADD COLUMN first_in_transaction boolean NOT NULL DEFAULT true;
CREATE CONSTRAINT TRIGGER stamp_commit AFTER INSERT ON pgnotifier.outbox
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.first_in_transaction)
    EXECUTE FUNCTION pgnotifier.stamp_commit();

CREATE OR REPLACE FUNCTION pgnotifier.send(channel text, payload text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $send$
#variable_conflict use_variable
DECLARE
    event_id bigint;
    -- Transaction-local, so it is unset again at the next transaction and
    -- undone with a savepoint rolled back.
    first_event boolean := current_setting('pgnotifier.stamping', true) IS DISTINCT FROM 'on';
BEGIN
    IF channel IS NULL OR channel = '' THEN
        RAISE EXCEPTION 'pgnotifier.send: channel name cannot be empty' USING ERRCODE = '22023';
    END IF;
    IF octet_length(channel) > 63 THEN
        RAISE EXCEPTION 'pgnotifier.send: channel name too long' USING ERRCODE = '22023';
    END IF;
    IF octet_length(coalesce(payload, '')) >= 8000 THEN
        RAISE EXCEPTION 'pgnotifier.send: payload string too long' USING ERRCODE = '22023';
    END IF;
    INSERT INTO pgnotifier.outbox (channel, payload, first_in_transaction)
        VALUES (channel, coalesce(payload, ''), first_event) RETURNING id INTO event_id;
    IF first_event THEN
        PERFORM set_config('pgnotifier.stamping', 'on', true);
    END IF;
    PERFORM pg_notify('pgnotifier.outbox', channel);
    RETURN event_id;
END
$send$;

-- The last stamp handed out, once every transaction that holds a stamp up
-- to it has finished committing (or aborted).
CREATE FUNCTION pgnotifier.horizon() RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $horizon$
DECLARE
    last_stamp bigint;
BEGIN
    SELECT CASE WHEN s.is_called THEN s.last_value ELSE 0 END INTO last_stamp
      FROM pgnotifier.commit_stamps s;
    PERFORM pg_advisory_lock(hashtext('pgnotifier commits'));
    PERFORM pg_advisory_unlock(hashtext('pgnotifier commits'));
    RETURN last_stamp;
END
$horizon$;

-- The events after (after_stamp, after_id) on channels, in commit order,
-- at most max_events. Each statement here takes its own snapshot, after
-- the horizon's wait: hence read committed.
CREATE FUNCTION pgnotifier.read(after_stamp bigint, after_id bigint, channels text[], max_events integer)
RETURNS TABLE (id bigint, stamp bigint, channel text, payload text, sent_at timestamptz, pid integer)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $read$
DECLARE
    last_stamp bigint;
    got bigint;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'pgnotifier.read needs read committed isolation, not %',
            current_setting('transaction_isolation') USING ERRCODE = '25000';
    END IF;
    last_stamp := pgnotifier.horizon();
    -- The rest of the transaction the position is in, then the ones after.
    RETURN QUERY
    SELECT o.id, c.stamp, o.channel, o.payload, o.sent_at, o.pid
      FROM pgnotifier.commits c
      JOIN pgnotifier.outbox o ON o.txid = c.txid
     WHERE c.stamp = after_stamp AND o.id > after_id AND o.channel = ANY (channels)
     ORDER BY o.id
     LIMIT max_events;
    GET DIAGNOSTICS got = ROW_COUNT;
    IF got < max_events THEN
        RETURN QUERY
        SELECT o.id, c.stamp, o.channel, o.payload, o.sent_at, o.pid
          FROM pgnotifier.commits c
         CROSS JOIN LATERAL (
               SELECT e.id, e.channel, e.payload, e.sent_at, e.pid
                 FROM pgnotifier.outbox e
                WHERE e.txid = c.txid AND e.channel = ANY (channels)
                ORDER BY e.id
                LIMIT max_events - got) o
         WHERE c.stamp > after_stamp AND c.stamp <= last_stamp
         ORDER BY c.stamp, o.id
         LIMIT max_events - got;
    END IF;
END
$read$;
"#,
    // 7: no lock that senders queue on, every session stamps, durable
    // before delivered, keys never reused, pruning that trusts only what it
    // was told, gaps that list their events, one dead letter per event.
    r#"
-- Senders still running finish first, stamped the old way; new ones wait
-- until this commits, and then stamp the new way.
LOCK TABLE pgnotifier.outbox IN SHARE ROW EXCLUSIVE MODE;
-- A sending transaction is waited for on a key of its own, never on a key
-- every sender shares: a reader waits only for the senders committing as
-- it reads, and no sender ever queues behind a reader. Keys live in class
-- 1885826680 ('pgnx'), a two-part key space that one-number advisory locks
-- never touch; the second part is the transaction's 32-bit id.
ALTER TABLE pgnotifier.commits ADD COLUMN durable boolean NOT NULL DEFAULT true;
CREATE OR REPLACE FUNCTION pgnotifier.stamp_commit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $stamp$
BEGIN
    -- Taken before the stamp and held until the commit is visible: a
    -- reader that sees the stamp handed out finds this key, and waits for
    -- it. The key is the transaction's 32-bit id, as an integer.
    PERFORM pg_advisory_xact_lock(1885826680, (txid_current() % 4294967296 - 2147483648)::integer);
    -- An asynchronous commit is visible before it is durable: a reader
    -- flushes the WAL before it delivers such a transaction's events.
    INSERT INTO pgnotifier.commits (txid, stamp, durable)
        VALUES (pg_current_xact_id(), nextval('pgnotifier.commit_stamps'),
                current_setting('synchronous_commit') <> 'off')
        ON CONFLICT (txid) DO NOTHING;
    RETURN NULL;
END
$stamp$;
-- Fires in every session, `session_replication_role = replica` included
-- (ETL scripts, logical replication's apply workers).
ALTER TABLE pgnotifier.outbox ENABLE ALWAYS TRIGGER stamp_commit;

-- The last stamp handed out, once every transaction that held a stamp up
-- to it has finished committing or aborted. It waits for those senders
-- alone, each on its own key, with transaction-level locks: nothing is
-- left held when a wait is cancelled or times out.
CREATE OR REPLACE FUNCTION pgnotifier.horizon() RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $horizon$
DECLARE
    last_stamp bigint;
    sender integer;
BEGIN
    SELECT CASE WHEN s.is_called THEN s.last_value ELSE 0 END INTO last_stamp
      FROM pgnotifier.commit_stamps s;
    -- A sender takes its key before its stamp: every stamp up to
    -- last_stamp belongs to a sender that has finished or is listed here.
    FOR sender IN
        SELECT (l.objid::bigint - CASE WHEN l.objid::bigint >= 2147483648 THEN 4294967296 ELSE 0 END)::integer
          FROM pg_catalog.pg_locks l
         WHERE l.locktype = 'advisory' AND l.classid = 1885826680 AND l.objsubid = 2 AND l.granted
           AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())
    LOOP
        PERFORM pg_advisory_xact_lock_shared(1885826680, sender);
    END LOOP;
    RETURN last_stamp;
END
$horizon$;

-- The same, for a reader whose stamps up to `settled` are settled (it
-- read there before), without waiting when it need not: when every stamp
-- after `settled` up to some stamp is already visible, no sender holds one
-- of those, and the reader can go that far at once. It waits only when the
-- very next stamp is not visible yet (a sender still committing, or one
-- that aborted, which only the wait can tell).
CREATE FUNCTION pgnotifier.horizon(settled bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $horizon$
DECLARE
    last_stamp bigint;
    visible bigint;
    first_missing bigint;
BEGIN
    SELECT CASE WHEN s.is_called THEN s.last_value ELSE 0 END INTO last_stamp
      FROM pgnotifier.commit_stamps s;
    IF last_stamp <= settled THEN
        RETURN last_stamp;
    END IF;
    IF last_stamp - settled > 1000 THEN
        RETURN pgnotifier.horizon();
    END IF;
    SELECT count(*), min(v.expected) FILTER (WHERE v.stamp <> v.expected)
      INTO visible, first_missing
      FROM (SELECT c.stamp, settled + row_number() OVER (ORDER BY c.stamp) AS expected
              FROM pgnotifier.commits c
             WHERE c.stamp > settled AND c.stamp <= last_stamp) v;
    IF first_missing IS NULL AND visible < last_stamp - settled THEN
        first_missing := settled + visible + 1;
    END IF;
    IF first_missing IS NULL THEN
        RETURN last_stamp;
    ELSIF first_missing > settled + 1 THEN
        RETURN first_missing - 1;
    END IF;
    RETURN pgnotifier.horizon();
END
$horizon$;

-- send marks the first event of its transaction in a transaction-local
-- setting that holds the transaction's own id: a value left over in the
-- session, or set for the session, names no transaction that sends.
CREATE OR REPLACE FUNCTION pgnotifier.send(channel text, payload text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $send$
#variable_conflict use_variable
DECLARE
    event_id bigint;
    sender text := pg_current_xact_id()::text;
    -- Undone with a savepoint rolled back, as the event it marks is.
    first_event boolean := current_setting('pgnotifier.stamping', true) IS DISTINCT FROM sender;
BEGIN
    IF channel IS NULL OR channel = '' THEN
        RAISE EXCEPTION 'pgnotifier.send: channel name cannot be empty' USING ERRCODE = '22023';
    END IF;
    IF octet_length(channel) > 63 THEN
        RAISE EXCEPTION 'pgnotifier.send: channel name too long' USING ERRCODE = '22023';
    END IF;
    IF octet_length(coalesce(payload, '')) >= 8000 THEN
        RAISE EXCEPTION 'pgnotifier.send: payload string too long' USING ERRCODE = '22023';
    END IF;
    INSERT INTO pgnotifier.outbox (channel, payload, first_in_transaction)
        VALUES (channel, coalesce(payload, ''), first_event) RETURNING id INTO event_id;
    IF first_event THEN
        PERFORM set_config('pgnotifier.stamping', sender, true);
    END IF;
    PERFORM pg_notify('pgnotifier.outbox', channel);
    RETURN event_id;
END
$send$;

-- A key per event that is never handed out twice, unlike an id after a
-- crash that lost an asynchronous commit, or a failover to a replica that
-- lagged: its transaction's random salt with the event's id folded into
-- the low half. The salt costs one random number per transaction, not one
-- per event. Events stamped before this version get a key made from their id.
ALTER TABLE pgnotifier.commits ADD COLUMN salt uuid;
ALTER TABLE pgnotifier.commits ALTER COLUMN salt SET DEFAULT pg_catalog.gen_random_uuid();
CREATE FUNCTION pgnotifier.event_key(salt uuid, id bigint) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $key$
    SELECT CASE
        WHEN salt IS NULL THEN ('00000000-0000-4000-8000-' || lpad(to_hex(id), 12, '0'))::uuid
        ELSE (left(replace(salt::text, '-', ''), 16)
              || lpad(to_hex(('x' || right(replace(salt::text, '-', ''), 16))::bit(64)::bigint # id), 16, '0'))::uuid
    END
$key$;

-- Pruning trusts a position's channels only up to channels_through: the
-- stamp before which every channel the subscriber had was recorded. A
-- channel added later keeps its events until the subscriber passes them.
-- fed_by: the host feeding the subscriber now (NULL: none, or it stopped
-- cleanly).
ALTER TABLE pgnotifier.positions
    ADD COLUMN channels_through bigint NOT NULL DEFAULT 0,
    ADD COLUMN fed_by text;

-- A gap lists the events it removed, so a subscriber is told of those it
-- had not read, not of those it already had.
ALTER TABLE pgnotifier.gaps
    ADD COLUMN stamps bigint[],
    ADD COLUMN ids bigint[],
    ADD COLUMN event_channels text[];

-- One dead letter per event and subscriber, whatever a crash repeats.
ALTER TABLE pgnotifier.dead_letters ADD COLUMN event_key uuid;
DELETE FROM pgnotifier.dead_letters d
 WHERE EXISTS (SELECT FROM pgnotifier.dead_letters e
                WHERE e.subscriber = d.subscriber AND e.event_id = d.event_id AND e.id < d.id);
CREATE UNIQUE INDEX dead_letters_event ON pgnotifier.dead_letters (subscriber, event_id);

-- What a subscriber reads next, in one snapshot taken once the horizon is
-- known: the horizon (and the WAL position to flush first, when an
-- asynchronous commit is not durable yet), the events after the position
-- on its channels up to the horizon, each with its transaction's salt
-- (the reader makes the key, as event_key does), and the gaps pruning left
-- it, each with the events it removed that come after the position.
CREATE FUNCTION pgnotifier.read_batch(subscriber text, after_stamp bigint, after_id bigint,
                                      channels text[], max_events integer)
RETURNS TABLE (kind "char", id bigint, stamp bigint, channel text, payload text,
               sent_at timestamptz, pid integer, salt uuid, durable boolean,
               events bigint, gap_channels text[], flush_to pg_lsn)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $read$
#variable_conflict use_variable
DECLARE
    last_stamp bigint;
    written pg_lsn;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'pgnotifier.read_batch needs read committed isolation, not %',
            current_setting('transaction_isolation') USING ERRCODE = '25000';
    END IF;
    last_stamp := pgnotifier.horizon(after_stamp);
    -- Every commit waited for wrote its record before this point.
    written := pg_current_wal_insert_lsn();
    RETURN QUERY
    SELECT 'h'::"char", NULL::bigint, last_stamp, NULL::text, NULL::text, NULL::timestamptz,
           NULL::integer, NULL::uuid, NULL::boolean, NULL::bigint, NULL::text[],
           CASE WHEN pg_current_wal_flush_lsn() >= written THEN NULL ELSE written END
    UNION ALL
    (SELECT 'e', o.id, c.stamp, o.channel, o.payload, o.sent_at, o.pid,
            c.salt, c.durable, NULL, NULL, NULL
       FROM pgnotifier.commits c
       JOIN pgnotifier.outbox o ON o.txid = c.txid
      WHERE c.stamp = after_stamp AND o.id > after_id AND o.channel = ANY (channels)
      ORDER BY o.id
      LIMIT max_events)
    UNION ALL
    (SELECT 'e', o.id, c.stamp, o.channel, o.payload, o.sent_at, o.pid,
            c.salt, c.durable, NULL, NULL, NULL
       FROM pgnotifier.commits c
      CROSS JOIN LATERAL (
            SELECT e.id, e.channel, e.payload, e.sent_at, e.pid
              FROM pgnotifier.outbox e
             WHERE e.txid = c.txid AND e.channel = ANY (channels)
             ORDER BY e.id
             LIMIT max_events) o
      WHERE c.stamp > after_stamp AND c.stamp <= last_stamp
      ORDER BY c.stamp, o.id
      LIMIT max_events)
    UNION ALL
    SELECT 'g', g.id, NULL, NULL, NULL, g.first_sent_at, NULL, NULL, NULL,
           CASE WHEN g.stamps IS NULL THEN g.events
                ELSE (SELECT count(*) FROM unnest(g.stamps, g.ids) u(s, i)
                       WHERE (u.s, u.i) > (after_stamp, after_id)) END,
           CASE WHEN g.stamps IS NULL THEN g.channels
                ELSE ARRAY(SELECT DISTINCT u.c FROM unnest(g.stamps, g.ids, g.event_channels) u(s, i, c)
                            WHERE (u.s, u.i) > (after_stamp, after_id) ORDER BY 1) END,
           NULL
      FROM pgnotifier.gaps g
     WHERE g.subscriber = subscriber;
END
$read$;

-- Events whose transaction committed without a stamp (the trigger
-- disabled with ALTER TABLE ... DISABLE TRIGGER) and sent before `grace`
-- ago: stamped now, as a sender would be, so they are delivered after the
-- events stamped so far. How many, and when the oldest was sent.
CREATE FUNCTION pgnotifier.stamp_unstamped(grace interval)
RETURNS TABLE (events bigint, oldest timestamptz)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $repair$
BEGIN
    PERFORM pg_advisory_xact_lock(1885826680, (txid_current() % 4294967296 - 2147483648)::integer);
    RETURN QUERY
    WITH unstamped AS (
        SELECT o.txid, count(*) AS events, min(o.sent_at) AS oldest
          FROM pgnotifier.outbox o
         WHERE NOT EXISTS (SELECT FROM pgnotifier.commits c WHERE c.txid = o.txid)
           AND o.sent_at < pg_catalog.now() - grace
         GROUP BY o.txid
    ), stamped AS (
        INSERT INTO pgnotifier.commits (txid, stamp)
        SELECT u.txid, nextval('pgnotifier.commit_stamps')
          FROM (SELECT u.txid FROM unstamped u ORDER BY u.oldest, u.txid) u
            ON CONFLICT (txid) DO NOTHING
    )
    SELECT coalesce(sum(u.events), 0)::bigint, min(u.oldest) FROM unstamped u;
END
$repair$;
"#,
    // 8: durability is judged by the reader from the WAL, not recorded per
    // commit by the sender; a feeder records how long a host that takes
    // over from it waits.
    r#"
-- Senders still running finish first, stamped the version 7 way; new ones
-- wait until this commits, and then stamp without the dropped column.
LOCK TABLE pgnotifier.outbox IN SHARE ROW EXCLUSIVE MODE;
CREATE OR REPLACE FUNCTION pgnotifier.stamp_commit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $stamp$
BEGIN
    -- Taken before the stamp and held until the commit is visible: a
    -- reader that sees the stamp handed out finds this key, and waits for
    -- it. The key is the transaction's 32-bit id, as an integer.
    PERFORM pg_advisory_xact_lock(1885826680, (txid_current() % 4294967296 - 2147483648)::integer);
    INSERT INTO pgnotifier.commits (txid, stamp)
        VALUES (pg_current_xact_id(), nextval('pgnotifier.commit_stamps'))
        ON CONFLICT (txid) DO NOTHING;
    RETURN NULL;
END
$stamp$;
DROP FUNCTION pgnotifier.read_batch(text, bigint, bigint, text[], integer);
ALTER TABLE pgnotifier.commits DROP COLUMN durable;

-- takeover_ms: how long a host that takes over from fed_by waits for a
-- call of it that may still run (its heartbeats and longest call, by its
-- own settings, which the next host's may not match). calls_end_by: when
-- a call of a feeder that did not stop cleanly has ended at the latest;
-- every feeder that starts waits until then, whoever claimed since.
ALTER TABLE pgnotifier.positions
    ADD COLUMN takeover_ms bigint,
    ADD COLUMN calls_end_by timestamptz;

-- What a subscriber reads next, in one snapshot taken once the horizon is
-- known: the horizon (and the WAL position up to which the events' commits
-- are durable, when it is not flushed yet: a commit with
-- synchronous_commit = off is visible before it is durable), the events
-- after the position on its channels up to the horizon, each with its
-- transaction's salt (the reader makes the key, as event_key does), and
-- the gaps pruning left it, each with the events it removed that come
-- after the position.
CREATE FUNCTION pgnotifier.read_batch(subscriber text, after_stamp bigint, after_id bigint,
                                      channels text[], max_events integer)
RETURNS TABLE (kind "char", id bigint, stamp bigint, channel text, payload text,
               sent_at timestamptz, pid integer, salt uuid,
               events bigint, gap_channels text[], flush_to pg_lsn)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $read$
#variable_conflict use_variable
DECLARE
    last_stamp bigint;
    written pg_lsn;
    look integer;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'pgnotifier.read_batch needs read committed isolation, not %',
            current_setting('transaction_isolation') USING ERRCODE = '25000';
    END IF;
    last_stamp := pgnotifier.horizon(after_stamp);
    RETURN QUERY
    (SELECT 'e'::"char", o.id, c.stamp, o.channel, o.payload, o.sent_at, o.pid,
            c.salt, NULL::bigint, NULL::text[], NULL::pg_lsn
       FROM pgnotifier.commits c
       JOIN pgnotifier.outbox o ON o.txid = c.txid
      WHERE c.stamp = after_stamp AND o.id > after_id AND o.channel = ANY (channels)
      ORDER BY o.id
      LIMIT max_events)
    UNION ALL
    (SELECT 'e', o.id, c.stamp, o.channel, o.payload, o.sent_at, o.pid,
            c.salt, NULL, NULL, NULL
       FROM pgnotifier.commits c
      CROSS JOIN LATERAL (
            SELECT e.id, e.channel, e.payload, e.sent_at, e.pid
              FROM pgnotifier.outbox e
             WHERE e.txid = c.txid AND e.channel = ANY (channels)
             ORDER BY e.id
             LIMIT max_events) o
      WHERE c.stamp > after_stamp AND c.stamp <= last_stamp
      ORDER BY c.stamp, o.id
      LIMIT max_events)
    UNION ALL
    SELECT 'g', g.id, NULL, NULL, NULL, g.first_sent_at, NULL, NULL,
           CASE WHEN g.stamps IS NULL THEN g.events
                ELSE (SELECT count(*) FROM unnest(g.stamps, g.ids) u(s, i)
                       WHERE (u.s, u.i) > (after_stamp, after_id)) END,
           CASE WHEN g.stamps IS NULL THEN g.channels
                ELSE ARRAY(SELECT DISTINCT u.c FROM unnest(g.stamps, g.ids, g.event_channels) u(s, i, c)
                            WHERE (u.s, u.i) > (after_stamp, after_id) ORDER BY 1) END,
           NULL
      FROM pgnotifier.gaps g
     WHERE g.subscriber = subscriber;
    -- Every commit read above (the senders' and the prunes') wrote its
    -- record before this point. WAL past it is most often a transaction in
    -- flight, whose own commit flushes it within a millisecond: look twice
    -- (a sleep of any length takes about a millisecond), then leave the
    -- flush to the reader.
    written := pg_current_wal_insert_lsn();
    FOR look IN 1..2 LOOP
        EXIT WHEN pg_current_wal_flush_lsn() >= written;
        PERFORM pg_sleep(0.0001);
    END LOOP;
    RETURN QUERY
    SELECT 'h'::"char", NULL::bigint, last_stamp, NULL::text, NULL::text, NULL::timestamptz,
           NULL::integer, NULL::uuid, NULL::bigint, NULL::text[],
           CASE WHEN pg_current_wal_flush_lsn() >= written THEN NULL ELSE written END;
END
$read$;
"#,
    // 9: payloads up to max_payload_bytes, which the host writes here;
    // notify_row within it, whatever the row's size; reads bounded in bytes.
    r#"
CREATE TABLE pgnotifier.limits (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    max_payload_bytes integer NOT NULL DEFAULT 1048576
        CHECK (max_payload_bytes BETWEEN 8000 AND 268435456)
);
INSERT INTO pgnotifier.limits DEFAULT VALUES;

-- The cap, for any role (a writer's notify_row runs as the writer); the
-- default when the row is gone.
CREATE FUNCTION pgnotifier.max_payload_bytes() RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $cap$
    SELECT coalesce((SELECT l.max_payload_bytes FROM pgnotifier.limits l LIMIT 1), 1048576)
$cap$;

CREATE OR REPLACE FUNCTION pgnotifier.send(channel text, payload text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $send$
#variable_conflict use_variable
DECLARE
    event_id bigint;
    sender text := pg_current_xact_id()::text;
    -- Undone with a savepoint rolled back, as the event it marks is.
    first_event boolean := current_setting('pgnotifier.stamping', true) IS DISTINCT FROM sender;
    bytes integer := octet_length(coalesce(payload, ''));
    max_bytes integer;
BEGIN
    IF channel IS NULL OR channel = '' THEN
        RAISE EXCEPTION 'pgnotifier.send: channel name cannot be empty' USING ERRCODE = '22023';
    END IF;
    IF octet_length(channel) > 63 THEN
        RAISE EXCEPTION 'pgnotifier.send: channel name too long' USING ERRCODE = '22023';
    END IF;
    -- Most payloads are small: the cap is looked up only past the least it can be.
    IF bytes > 8000 THEN
        max_bytes := pgnotifier.max_payload_bytes();
        IF bytes > max_bytes THEN
            RAISE EXCEPTION 'pgnotifier.send: a payload of % bytes is over max_payload_bytes (%)',
                bytes, max_bytes
                USING ERRCODE = '54000',
                      HINT = 'Raise max_payload_bytes in the host''s configuration, or send a key and let the subscriber read the rest.';
        END IF;
    END IF;
    INSERT INTO pgnotifier.outbox (channel, payload, first_in_transaction)
        VALUES (channel, coalesce(payload, ''), first_event) RETURNING id INTO event_id;
    IF first_event THEN
        PERFORM set_config('pgnotifier.stamping', sender, true);
    END IF;
    PERFORM pg_notify('pgnotifier.outbox', channel);
    RETURN event_id;
END
$send$;

-- send for notify_row: the first of `payloads` within the cap, read once,
-- so a cap that changes meanwhile fails no writer (send reads it again).
-- Its insert is send's.
CREATE FUNCTION pgnotifier.send_first_within(channel text, payloads text[]) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $within$
#variable_conflict use_variable
DECLARE
    event_id bigint;
    sender text := pg_current_xact_id()::text;
    first_event boolean := current_setting('pgnotifier.stamping', true) IS DISTINCT FROM sender;
    max_bytes integer := pgnotifier.max_payload_bytes();
    payload text;
BEGIN
    IF channel IS NULL OR channel = '' THEN
        RAISE EXCEPTION 'pgnotifier.send: channel name cannot be empty' USING ERRCODE = '22023';
    END IF;
    IF octet_length(channel) > 63 THEN
        RAISE EXCEPTION 'pgnotifier.send: channel name too long' USING ERRCODE = '22023';
    END IF;
    FOREACH payload IN ARRAY payloads LOOP
        EXIT WHEN octet_length(payload) <= max_bytes;
    END LOOP;
    IF octet_length(payload) > max_bytes THEN
        RAISE EXCEPTION 'pgnotifier.send: a payload of % bytes is over max_payload_bytes (%)',
            octet_length(payload), max_bytes USING ERRCODE = '54000';
    END IF;
    INSERT INTO pgnotifier.outbox (channel, payload, first_in_transaction)
        VALUES (channel, payload, first_event) RETURNING id INTO event_id;
    IF first_event THEN
        PERFORM set_config('pgnotifier.stamping', sender, true);
    END IF;
    PERFORM pg_notify('pgnotifier.outbox', channel);
    RETURN event_id;
END
$within$;

-- A row change over max_payload_bytes goes as its key columns (those of
-- the primary key, else of the replica identity index; none without
-- either) and "truncated": true; when even that is over, as the table and
-- the operation alone. So a large row never fails the writer's
-- transaction, and costs no subtransaction.
CREATE OR REPLACE FUNCTION pgnotifier.notify_row() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $notify_row$
DECLARE
    event jsonb;
    whole jsonb;
    payload text;
    key_columns text[];
    bare text;
BEGIN
    IF TG_NARGS <> 1 OR TG_LEVEL <> 'ROW' THEN
        RAISE EXCEPTION 'pgnotifier.notify_row is a row trigger with one argument, the channel: EXECUTE FUNCTION pgnotifier.notify_row(''orders'')'
            USING ERRCODE = '22023';
    END IF;
    event := jsonb_build_object('op', lower(TG_OP), 'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME);
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        event := event || jsonb_build_object('new', to_jsonb(NEW));
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        event := event || jsonb_build_object('old', to_jsonb(OLD));
    END IF;
    payload := event::text;
    IF octet_length(payload) <= 8000 THEN
        PERFORM pgnotifier.send(TG_ARGV[0], payload);
        RETURN NULL;
    END IF;
    bare := jsonb_build_object('op', lower(TG_OP), 'schema', TG_TABLE_SCHEMA,
                               'table', TG_TABLE_NAME, 'truncated', true)::text;
    key_columns := ARRAY(
        SELECT a.attname
          FROM (SELECT i.indkey::int2[] AS columns, i.indnkeyatts FROM pg_index i
                 WHERE i.indrelid = TG_RELID AND (i.indisprimary OR i.indisreplident)
                 ORDER BY i.indisprimary DESC LIMIT 1) k
          JOIN pg_attribute a ON a.attrelid = TG_RELID
                             AND a.attnum = ANY (k.columns[0:k.indnkeyatts - 1])
         ORDER BY array_position(k.columns, a.attnum));
    whole := event;
    event := bare::jsonb;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        event := event || jsonb_build_object('new', (
            SELECT coalesce(jsonb_object_agg(c, whole -> 'new' -> c), '{}')
              FROM unnest(key_columns) c));
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        event := event || jsonb_build_object('old', (
            SELECT coalesce(jsonb_object_agg(c, whole -> 'old' -> c), '{}')
              FROM unnest(key_columns) c));
    END IF;
    PERFORM pgnotifier.send_first_within(TG_ARGV[0], ARRAY[payload, event::text, bare]);
    RETURN NULL;
END
$notify_row$;

-- read_batch as in version 8, with a budget in bytes: an event whose
-- payload starts past max_bytes (at least 1), in the order read, comes as
-- kind 'o' without its payload, and the reader stops before it. An event
-- that starts within it comes whole, the first always: every read moves on.
DROP FUNCTION pgnotifier.read_batch(text, bigint, bigint, text[], integer);
CREATE FUNCTION pgnotifier.read_batch(subscriber text, after_stamp bigint, after_id bigint,
                                      channels text[], max_events integer, max_bytes bigint)
RETURNS TABLE (kind "char", id bigint, stamp bigint, channel text, payload text,
               sent_at timestamptz, pid integer, salt uuid,
               events bigint, gap_channels text[], flush_to pg_lsn)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $read$
#variable_conflict use_variable
DECLARE
    last_stamp bigint;
    written pg_lsn;
    look integer;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'pgnotifier.read_batch needs read committed isolation, not %',
            current_setting('transaction_isolation') USING ERRCODE = '25000';
    END IF;
    last_stamp := pgnotifier.horizon(after_stamp);
    RETURN QUERY
    WITH found AS (
        (SELECT 'e'::"char", o.id, c.stamp, o.channel, o.payload, o.sent_at, o.pid,
                c.salt, NULL::bigint, NULL::text[], NULL::pg_lsn
           FROM pgnotifier.commits c
           JOIN pgnotifier.outbox o ON o.txid = c.txid
          WHERE c.stamp = after_stamp AND o.id > after_id AND o.channel = ANY (channels)
          ORDER BY o.id
          LIMIT max_events)
        UNION ALL
        (SELECT 'e', o.id, c.stamp, o.channel, o.payload, o.sent_at, o.pid,
                c.salt, NULL, NULL, NULL
           FROM pgnotifier.commits c
          CROSS JOIN LATERAL (
                SELECT e.id, e.channel, e.payload, e.sent_at, e.pid
                  FROM pgnotifier.outbox e
                 WHERE e.txid = c.txid AND e.channel = ANY (channels)
                 ORDER BY e.id
                 LIMIT max_events) o
          WHERE c.stamp > after_stamp AND c.stamp <= last_stamp
          ORDER BY c.stamp, o.id
          LIMIT max_events)
    ), sized AS (
        SELECT f.*, coalesce(sum(octet_length(f.payload)) OVER (
                   ORDER BY f.stamp, f.id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                   AS bytes_before
          FROM found f
    )
    SELECT CASE WHEN z.bytes_before < greatest(max_bytes, 1) THEN 'e'::"char" ELSE 'o'::"char" END,
           z.id, z.stamp, z.channel,
           CASE WHEN z.bytes_before < greatest(max_bytes, 1) THEN z.payload END,
           z.sent_at, z.pid, z.salt, NULL::bigint, NULL::text[], NULL::pg_lsn
      FROM sized z
    UNION ALL
    SELECT 'g', g.id, NULL, NULL, NULL, g.first_sent_at, NULL, NULL,
           CASE WHEN g.stamps IS NULL THEN g.events
                ELSE (SELECT count(*) FROM unnest(g.stamps, g.ids) u(s, i)
                       WHERE (u.s, u.i) > (after_stamp, after_id)) END,
           CASE WHEN g.stamps IS NULL THEN g.channels
                ELSE ARRAY(SELECT DISTINCT u.c FROM unnest(g.stamps, g.ids, g.event_channels) u(s, i, c)
                            WHERE (u.s, u.i) > (after_stamp, after_id) ORDER BY 1) END,
           NULL
      FROM pgnotifier.gaps g
     WHERE g.subscriber = subscriber;
    -- Every commit read above (the senders' and the prunes') wrote its
    -- record before this point. WAL past it is most often a transaction in
    -- flight, whose own commit flushes it within a millisecond: look twice
    -- (a sleep of any length takes about a millisecond), then leave the
    -- flush to the reader.
    written := pg_current_wal_insert_lsn();
    FOR look IN 1..2 LOOP
        EXIT WHEN pg_current_wal_flush_lsn() >= written;
        PERFORM pg_sleep(0.0001);
    END LOOP;
    RETURN QUERY
    SELECT 'h'::"char", NULL::bigint, last_stamp, NULL::text, NULL::text, NULL::timestamptz,
           NULL::integer, NULL::uuid, NULL::bigint, NULL::text[],
           CASE WHEN pg_current_wal_flush_lsn() >= written THEN NULL ELSE written END;
END
$read$;
"#,
    // 10: the WAL transport: send writes a logical decoding message, and
    // the host that reads the slot relays it into the outbox.
    r#"
-- Where send writes: 'outbox' (this schema's table, on any PostgreSQL) or
-- 'wal' (a transactional logical decoding message, for a host that reads
-- the slot to relay; wal_level = logical). A host writes it, once its slot
-- exists, so no message is written that no slot keeps.
ALTER TABLE pgnotifier.limits ADD COLUMN transport text NOT NULL DEFAULT 'outbox'
    CHECK (transport IN ('outbox', 'wal'));
-- The WAL position of a relayed event's message.
ALTER TABLE pgnotifier.outbox ADD COLUMN lsn pg_lsn;
-- How far each slot is relayed, written in the transaction that relays: a
-- relay that starts again never relays a transaction twice.
CREATE TABLE pgnotifier.relayed (
    slot name PRIMARY KEY,
    through pg_lsn NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
-- A slot the WAL transport used that still exists: a host on the outbox
-- transport relays what senders still write to it.
CREATE FUNCTION pgnotifier.slot_to_drain() RETURNS name
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $drain$
    SELECT r.slot FROM pgnotifier.relayed r
      JOIN pg_replication_slots s ON s.slot_name = r.slot AND s.database = current_database()
     ORDER BY r.updated_at DESC LIMIT 1
$drain$;

-- In the WAL transport, a message whose prefix carries the sender's pid
-- and the channel ('pgnotifier:PID:CHANNEL') and whose content is the
-- payload: nothing is written to a table, no lock is taken, and nothing
-- is NOTIFYed, so a send costs about what the message's WAL does. It
-- returns the message's WAL position as a number.
CREATE OR REPLACE FUNCTION pgnotifier.send(channel text, payload text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $send$
#variable_conflict use_variable
DECLARE
    event_id bigint;
    sender text;
    first_event boolean;
    bytes integer := octet_length(coalesce(payload, ''));
    max_bytes integer;
    transport text;
BEGIN
    IF channel IS NULL OR channel = '' THEN
        RAISE EXCEPTION 'pgnotifier.send: channel name cannot be empty' USING ERRCODE = '22023';
    END IF;
    IF octet_length(channel) > 63 THEN
        RAISE EXCEPTION 'pgnotifier.send: channel name too long' USING ERRCODE = '22023';
    END IF;
    -- One row, or none (the defaults): an aggregate gives one either way.
    SELECT coalesce(max(l.transport), 'outbox'), coalesce(max(l.max_payload_bytes), 1048576)
      INTO transport, max_bytes FROM pgnotifier.limits l;
    IF bytes > max_bytes THEN
        RAISE EXCEPTION 'pgnotifier.send: a payload of % bytes is over max_payload_bytes (%)',
            bytes, max_bytes
            USING ERRCODE = '54000',
                  HINT = 'Raise max_payload_bytes in the host''s configuration, or send a key and let the subscriber read the rest.';
    END IF;
    IF transport = 'wal' THEN
        RETURN (pg_logical_emit_message(true, 'pgnotifier:' || pg_backend_pid() || ':' || channel,
                                        coalesce(payload, '')) - '0/0')::bigint;
    END IF;
    sender := pg_current_xact_id()::text;
    -- Undone with a savepoint rolled back, as the event it marks is.
    first_event := current_setting('pgnotifier.stamping', true) IS DISTINCT FROM sender;
    INSERT INTO pgnotifier.outbox (channel, payload, first_in_transaction)
        VALUES (channel, coalesce(payload, ''), first_event) RETURNING id INTO event_id;
    IF first_event THEN
        PERFORM set_config('pgnotifier.stamping', sender, true);
    END IF;
    PERFORM pg_notify('pgnotifier.outbox', channel);
    RETURN event_id;
END
$send$;

CREATE OR REPLACE FUNCTION pgnotifier.send_first_within(channel text, payloads text[]) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $within$
#variable_conflict use_variable
DECLARE
    event_id bigint;
    sender text;
    first_event boolean;
    max_bytes integer;
    transport text;
    payload text;
BEGIN
    IF channel IS NULL OR channel = '' THEN
        RAISE EXCEPTION 'pgnotifier.send: channel name cannot be empty' USING ERRCODE = '22023';
    END IF;
    IF octet_length(channel) > 63 THEN
        RAISE EXCEPTION 'pgnotifier.send: channel name too long' USING ERRCODE = '22023';
    END IF;
    -- One row, or none (the defaults): an aggregate gives one either way.
    SELECT coalesce(max(l.transport), 'outbox'), coalesce(max(l.max_payload_bytes), 1048576)
      INTO transport, max_bytes FROM pgnotifier.limits l;
    FOREACH payload IN ARRAY payloads LOOP
        EXIT WHEN octet_length(payload) <= max_bytes;
    END LOOP;
    IF octet_length(payload) > max_bytes THEN
        RAISE EXCEPTION 'pgnotifier.send: a payload of % bytes is over max_payload_bytes (%)',
            octet_length(payload), max_bytes USING ERRCODE = '54000';
    END IF;
    IF transport = 'wal' THEN
        RETURN (pg_logical_emit_message(true, 'pgnotifier:' || pg_backend_pid() || ':' || channel,
                                        payload) - '0/0')::bigint;
    END IF;
    sender := pg_current_xact_id()::text;
    first_event := current_setting('pgnotifier.stamping', true) IS DISTINCT FROM sender;
    INSERT INTO pgnotifier.outbox (channel, payload, first_in_transaction)
        VALUES (channel, payload, first_event) RETURNING id INTO event_id;
    IF first_event THEN
        PERFORM set_config('pgnotifier.stamping', sender, true);
    END IF;
    PERFORM pg_notify('pgnotifier.outbox', channel);
    RETURN event_id;
END
$within$;
"#,
    // 11: a gap with a cause of its own: the WAL transport's slot lost.
    r#"
-- Why a gap's events are gone when pruning did not remove them (a lost
-- replication slot): told to the subscriber. NULL for pruning's gaps.
ALTER TABLE pgnotifier.gaps ADD COLUMN cause text;

-- read_batch as in version 9; a gap row brings its cause as its payload.
CREATE OR REPLACE FUNCTION pgnotifier.read_batch(subscriber text, after_stamp bigint, after_id bigint,
                                      channels text[], max_events integer, max_bytes bigint)
RETURNS TABLE (kind "char", id bigint, stamp bigint, channel text, payload text,
               sent_at timestamptz, pid integer, salt uuid,
               events bigint, gap_channels text[], flush_to pg_lsn)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $read$
#variable_conflict use_variable
DECLARE
    last_stamp bigint;
    written pg_lsn;
    look integer;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'pgnotifier.read_batch needs read committed isolation, not %',
            current_setting('transaction_isolation') USING ERRCODE = '25000';
    END IF;
    last_stamp := pgnotifier.horizon(after_stamp);
    RETURN QUERY
    WITH found AS (
        (SELECT 'e'::"char", o.id, c.stamp, o.channel, o.payload, o.sent_at, o.pid,
                c.salt, NULL::bigint, NULL::text[], NULL::pg_lsn
           FROM pgnotifier.commits c
           JOIN pgnotifier.outbox o ON o.txid = c.txid
          WHERE c.stamp = after_stamp AND o.id > after_id AND o.channel = ANY (channels)
          ORDER BY o.id
          LIMIT max_events)
        UNION ALL
        (SELECT 'e', o.id, c.stamp, o.channel, o.payload, o.sent_at, o.pid,
                c.salt, NULL, NULL, NULL
           FROM pgnotifier.commits c
          CROSS JOIN LATERAL (
                SELECT e.id, e.channel, e.payload, e.sent_at, e.pid
                  FROM pgnotifier.outbox e
                 WHERE e.txid = c.txid AND e.channel = ANY (channels)
                 ORDER BY e.id
                 LIMIT max_events) o
          WHERE c.stamp > after_stamp AND c.stamp <= last_stamp
          ORDER BY c.stamp, o.id
          LIMIT max_events)
    ), sized AS (
        SELECT f.*, coalesce(sum(octet_length(f.payload)) OVER (
                   ORDER BY f.stamp, f.id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                   AS bytes_before
          FROM found f
    )
    SELECT CASE WHEN z.bytes_before < greatest(max_bytes, 1) THEN 'e'::"char" ELSE 'o'::"char" END,
           z.id, z.stamp, z.channel,
           CASE WHEN z.bytes_before < greatest(max_bytes, 1) THEN z.payload END,
           z.sent_at, z.pid, z.salt, NULL::bigint, NULL::text[], NULL::pg_lsn
      FROM sized z
    UNION ALL
    SELECT 'g', g.id, NULL, NULL, g.cause, g.first_sent_at, NULL, NULL,
           CASE WHEN g.stamps IS NULL THEN g.events
                ELSE (SELECT count(*) FROM unnest(g.stamps, g.ids) u(s, i)
                       WHERE (u.s, u.i) > (after_stamp, after_id)) END,
           CASE WHEN g.stamps IS NULL THEN g.channels
                ELSE ARRAY(SELECT DISTINCT u.c FROM unnest(g.stamps, g.ids, g.event_channels) u(s, i, c)
                            WHERE (u.s, u.i) > (after_stamp, after_id) ORDER BY 1) END,
           NULL
      FROM pgnotifier.gaps g
     WHERE g.subscriber = subscriber;
    -- Every commit read above (the senders' and the prunes') wrote its
    -- record before this point. WAL past it is most often a transaction in
    -- flight, whose own commit flushes it within a millisecond: look twice
    -- (a sleep of any length takes about a millisecond), then leave the
    -- flush to the reader.
    written := pg_current_wal_insert_lsn();
    FOR look IN 1..2 LOOP
        EXIT WHEN pg_current_wal_flush_lsn() >= written;
        PERFORM pg_sleep(0.0001);
    END LOOP;
    RETURN QUERY
    SELECT 'h'::"char", NULL::bigint, last_stamp, NULL::text, NULL::text, NULL::timestamptz,
           NULL::integer, NULL::uuid, NULL::bigint, NULL::text[],
           CASE WHEN pg_current_wal_flush_lsn() >= written THEN NULL ELSE written END;
END
$read$;
"#,
    // 12: row changes read from the WAL transport's publication, rendered
    // as notify_row renders them.
    r#"
-- The JSON of a column's text as to_jsonb renders its type: the text read
-- back through the input of the type (of a domain's base type, so that a
-- constraint added since refuses no row already written). A type gone
-- since comes as the text.
CREATE FUNCTION pgnotifier.typed_json(type_oid oid, value text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $typed_json$
DECLARE
    base oid := type_oid;
    kind "char";
    result jsonb;
BEGIN
    IF value IS NULL THEN
        RETURN 'null';
    END IF;
    LOOP
        SELECT t.typtype, CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
          INTO kind, base FROM pg_type t WHERE t.oid = base;
        EXIT WHEN kind IS DISTINCT FROM 'd';
    END LOOP;
    IF kind IS NULL THEN
        RETURN to_jsonb(value);
    END IF;
    CASE base
        WHEN 25, 1043, 1042, 19, 18, 2950 THEN RETURN to_jsonb(value);
        WHEN 16 THEN RETURN to_jsonb(value::boolean);
        WHEN 20, 21, 23, 26 THEN RETURN to_jsonb(value::bigint);
        WHEN 1700 THEN RETURN to_jsonb(value::numeric);
        WHEN 700 THEN RETURN to_jsonb(value::real);
        WHEN 701 THEN RETURN to_jsonb(value::double precision);
        WHEN 114, 3802 THEN RETURN value::jsonb;
        WHEN 1184 THEN RETURN to_jsonb(value::timestamptz);
        WHEN 1114 THEN RETURN to_jsonb(value::timestamp);
        WHEN 1082 THEN RETURN to_jsonb(value::date);
        ELSE
            EXECUTE format('SELECT pg_catalog.to_jsonb($1::%s)', base::regtype) INTO result USING value;
            RETURN result;
    END CASE;
END
$typed_json$;

-- A row change the WAL transport read from its publication, as the JSON
-- pgnotifier.notify_row sends: `raw` holds the columns' text ("new",
-- "old"), their types, the replica identity's columns and the TOASTed
-- columns an update left unchanged (not in "new": the WAL does not carry
-- them). Over max_bytes, the key columns as notify_row picks them (the
-- primary key, else the replica identity index; the replica identity's
-- columns for a table gone since) and "truncated": true; over that still,
-- the table and the operation. Not typed: every value as its text, for a
-- row whose text no longer reads back as its type.
CREATE FUNCTION pgnotifier.row_change(raw jsonb, max_bytes integer, typed boolean)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $row_change$
DECLARE
    bare jsonb := jsonb_build_object('op', raw->>'op', 'schema', raw->>'schema', 'table', raw->>'table');
    whole jsonb := bare;
    keyed jsonb := bare || '{"truncated": true}';
    part text;
    values jsonb;
    payload text;
    relation regclass := to_regclass(format('%I.%I', raw->>'schema', raw->>'table'));
    key_columns text[] := ARRAY(SELECT jsonb_array_elements_text(raw->'key'));
BEGIN
    IF relation IS NOT NULL THEN
        key_columns := ARRAY(
            SELECT a.attname::text
              FROM (SELECT i.indkey::int2[] AS columns, i.indnkeyatts FROM pg_index i
                     WHERE i.indrelid = relation AND (i.indisprimary OR i.indisreplident)
                     ORDER BY i.indisprimary DESC LIMIT 1) k
              JOIN pg_attribute a ON a.attrelid = relation
                                 AND a.attnum = ANY (k.columns[0:k.indnkeyatts - 1]));
    END IF;
    FOREACH part IN ARRAY ARRAY['new', 'old'] LOOP
        CONTINUE WHEN NOT raw ? part;
        SELECT coalesce(jsonb_object_agg(c.key, CASE WHEN typed
                            THEN pgnotifier.typed_json((raw->'types'->>c.key)::oid, c.value #>> '{}')
                            ELSE c.value END), '{}')
          INTO values FROM jsonb_each(raw->part) c;
        whole := whole || jsonb_build_object(part, values);
        keyed := keyed || jsonb_build_object(part, (
            SELECT coalesce(jsonb_object_agg(k.key, values->k.key), '{}')
              FROM unnest(key_columns) k(key) WHERE values ? k.key));
    END LOOP;
    IF jsonb_array_length(coalesce(raw->'unchanged', '[]')) > 0 THEN
        whole := whole || jsonb_build_object('unchanged', raw->'unchanged');
    END IF;
    payload := whole::text;
    IF octet_length(payload) <= max_bytes THEN
        RETURN payload;
    END IF;
    payload := keyed::text;
    IF octet_length(payload) <= max_bytes THEN
        RETURN payload;
    END IF;
    RETURN (bare || '{"truncated": true}')::text;
END
$row_change$;
"#,
    // 13: a row change's key columns looked up only when it is over the
    // cap; the reg* types rendered as their text.
    r#"
CREATE OR REPLACE FUNCTION pgnotifier.typed_json(type_oid oid, value text) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $typed_json$
DECLARE
    base oid := type_oid;
    kind "char";
    result jsonb;
BEGIN
    IF value IS NULL THEN
        RETURN 'null';
    END IF;
    LOOP
        SELECT t.typtype, CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
          INTO kind, base FROM pg_type t WHERE t.oid = base;
        EXIT WHEN kind IS DISTINCT FROM 'd';
    END LOOP;
    IF kind IS NULL THEN
        RETURN to_jsonb(value);
    END IF;
    CASE base
        -- Text, and names as the walsender's search path wrote them (the
        -- reg* types: read back under another search path, a name may
        -- name nothing).
        WHEN 25, 1043, 1042, 19, 18, 2950, 24, 2202, 2203, 2204, 2205, 2206, 3734, 3769,
             4089, 4096, 4191 THEN RETURN to_jsonb(value);
        WHEN 16 THEN RETURN to_jsonb(value::boolean);
        WHEN 20, 21, 23, 26 THEN RETURN to_jsonb(value::bigint);
        WHEN 1700 THEN RETURN to_jsonb(value::numeric);
        WHEN 700 THEN RETURN to_jsonb(value::real);
        WHEN 701 THEN RETURN to_jsonb(value::double precision);
        WHEN 114, 3802 THEN RETURN value::jsonb;
        WHEN 1184 THEN RETURN to_jsonb(value::timestamptz);
        WHEN 1114 THEN RETURN to_jsonb(value::timestamp);
        WHEN 1082 THEN RETURN to_jsonb(value::date);
        ELSE
            EXECUTE format('SELECT pg_catalog.to_jsonb($1::%s)', base::regtype) INTO result USING value;
            RETURN result;
    END CASE;
END
$typed_json$;

CREATE OR REPLACE FUNCTION pgnotifier.row_change(raw jsonb, max_bytes integer, typed boolean)
RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $row_change$
DECLARE
    bare jsonb := jsonb_build_object('op', raw->>'op', 'schema', raw->>'schema', 'table', raw->>'table');
    whole jsonb := bare;
    keyed jsonb := bare || '{"truncated": true}';
    part text;
    values jsonb;
    payload text;
    relation regclass;
    key_columns text[];
BEGIN
    FOREACH part IN ARRAY ARRAY['new', 'old'] LOOP
        CONTINUE WHEN NOT raw ? part;
        SELECT coalesce(jsonb_object_agg(c.key, CASE WHEN typed
                            THEN pgnotifier.typed_json((raw->'types'->>c.key)::oid, c.value #>> '{}')
                            ELSE c.value END), '{}')
          INTO values FROM jsonb_each(raw->part) c;
        whole := whole || jsonb_build_object(part, values);
    END LOOP;
    IF jsonb_array_length(coalesce(raw->'unchanged', '[]')) > 0 THEN
        whole := whole || jsonb_build_object('unchanged', raw->'unchanged');
    END IF;
    payload := whole::text;
    IF octet_length(payload) <= max_bytes THEN
        RETURN payload;
    END IF;
    relation := to_regclass(format('%I.%I', raw->>'schema', raw->>'table'));
    key_columns := CASE WHEN relation IS NULL
        THEN ARRAY(SELECT jsonb_array_elements_text(raw->'key'))
        ELSE ARRAY(
            SELECT a.attname::text
              FROM (SELECT i.indkey::int2[] AS columns, i.indnkeyatts FROM pg_index i
                     WHERE i.indrelid = relation AND (i.indisprimary OR i.indisreplident)
                     ORDER BY i.indisprimary DESC LIMIT 1) k
              JOIN pg_attribute a ON a.attrelid = relation
                                 AND a.attnum = ANY (k.columns[0:k.indnkeyatts - 1])) END;
    FOREACH part IN ARRAY ARRAY['new', 'old'] LOOP
        CONTINUE WHEN NOT whole ? part;
        keyed := keyed || jsonb_build_object(part, (
            SELECT coalesce(jsonb_object_agg(k.key, whole->part->k.key), '{}')
              FROM unnest(key_columns) k(key) WHERE whole->part ? k.key));
    END LOOP;
    payload := keyed::text;
    IF octet_length(payload) <= max_bytes THEN
        RETURN payload;
    END IF;
    RETURN (bare || '{"truncated": true}')::text;
END
$row_change$;
"#,
    // 14: backfill: a new subscriber's tables as one snapshot's rows,
    // then every change its snapshot did not see.
    r#"
-- The writing transaction of a relayed event (pgoutput's Begin): the
-- relay's own is `txid`. NULL where the writer wrote the outbox itself.
ALTER TABLE pgnotifier.outbox ADD COLUMN writer xid8;
-- A subscriber's backfill. The subscriber starts at (stamp, 2^62 - 1):
-- after every event of `stamp` (outbox ids stay far below 2^62), and
-- before its snapshot's rows, whose ids are 2^62 and up. Then come the
-- events after `stamp` whose writer `snapshot` does not see. NULL
-- `snapshot`: not taken yet (the feeder takes it before it reads).
CREATE TABLE pgnotifier.backfills (
    subscriber text PRIMARY KEY,
    stamp bigint NOT NULL,
    tables text[] NOT NULL,
    channels text[] NOT NULL,
    snapshot pg_snapshot,
    taken_at timestamptz,
    row_count bigint,
    -- The WAL's end as the snapshot was taken, and the stamp by which
    -- every event the snapshot saw is stamped (NULL: not known yet).
    lsn pg_lsn,
    end_stamp bigint,
    salt uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid()
);
CREATE SEQUENCE pgnotifier.snapshot_row_ids;
CREATE TABLE pgnotifier.snapshot_rows (
    subscriber text NOT NULL,
    -- 2^62 and up, rising in delivery order; never the same twice.
    id bigint NOT NULL DEFAULT (4611686018427387904 + pg_catalog.nextval('pgnotifier.snapshot_row_ids')),
    channel text NOT NULL,
    payload text NOT NULL,
    PRIMARY KEY (subscriber, id)
);

-- read_batch as in version 11, for a subscriber that started from a
-- snapshot: its snapshot's rows first, then every event on the snapshot's
-- channels whose writer the snapshot does not see (what it saw, the rows
-- hold). The seam ends once every event it saw is behind the position.
CREATE OR REPLACE FUNCTION pgnotifier.read_batch(subscriber text, after_stamp bigint, after_id bigint,
                                      channels text[], max_events integer, max_bytes bigint)
RETURNS TABLE (kind "char", id bigint, stamp bigint, channel text, payload text,
               sent_at timestamptz, pid integer, salt uuid,
               events bigint, gap_channels text[], flush_to pg_lsn)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $read$
#variable_conflict use_variable
DECLARE
    last_stamp bigint;
    written pg_lsn;
    look integer;
    seam pgnotifier.backfills;
    seen_channels text[] := '{}';
    taken pg_snapshot;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'pgnotifier.read_batch needs read committed isolation, not %',
            current_setting('transaction_isolation') USING ERRCODE = '25000';
    END IF;
    last_stamp := pgnotifier.horizon(after_stamp);
    SELECT * INTO seam FROM pgnotifier.backfills b WHERE b.subscriber = subscriber;
    IF seam.snapshot IS NOT NULL THEN
        IF (after_stamp, after_id) >= (seam.stamp, 9223372036854775807) THEN
            DELETE FROM pgnotifier.snapshot_rows r WHERE r.subscriber = subscriber;
        END IF;
        -- Every writer the snapshot saw committed before `seam.lsn`: once
        -- each slot still relayed is past it (its events relayed, or the
        -- slot confirmed past it with nothing to relay), their events are
        -- stamped, and by the last stamp handed out after that is seen.
        IF seam.end_stamp IS NULL AND NOT EXISTS (
            SELECT FROM pgnotifier.relayed r
              JOIN pg_replication_slots s ON s.slot_name = r.slot AND s.database = current_database()
             WHERE greatest(r.through, s.confirmed_flush_lsn) < seam.lsn) THEN
            SELECT CASE WHEN s.is_called THEN s.last_value ELSE 0 END INTO seam.end_stamp
              FROM pgnotifier.commit_stamps s;
            UPDATE pgnotifier.backfills b SET end_stamp = seam.end_stamp WHERE b.subscriber = subscriber;
        END IF;
        IF after_stamp >= seam.end_stamp
           AND (after_stamp, after_id) >= (seam.stamp, 9223372036854775807) THEN
            DELETE FROM pgnotifier.backfills b WHERE b.subscriber = subscriber;
        ELSE
            seen_channels := seam.channels;
            taken := seam.snapshot;
        END IF;
    END IF;
    RETURN QUERY
    WITH found AS (
        (SELECT 'e'::"char", r.id, seam.stamp AS stamp, r.channel, r.payload,
                seam.taken_at AS sent_at, 0 AS pid, seam.salt AS salt,
                NULL::bigint, NULL::text[], NULL::pg_lsn
           FROM pgnotifier.snapshot_rows r
          WHERE seam.stamp = after_stamp
            AND r.subscriber = subscriber AND r.id > after_id AND r.channel = ANY (channels)
          ORDER BY r.id
          LIMIT max_events)
        UNION ALL
        (SELECT 'e'::"char", o.id, c.stamp, o.channel, o.payload, o.sent_at, o.pid,
                c.salt, NULL::bigint, NULL::text[], NULL::pg_lsn
           FROM pgnotifier.commits c
           JOIN pgnotifier.outbox o ON o.txid = c.txid
          WHERE c.stamp = after_stamp AND o.id > after_id AND o.channel = ANY (channels)
            AND NOT (o.channel = ANY (seen_channels)
                     AND pg_visible_in_snapshot(coalesce(o.writer, o.txid), taken))
          ORDER BY o.id
          LIMIT max_events)
        UNION ALL
        (SELECT 'e', o.id, c.stamp, o.channel, o.payload, o.sent_at, o.pid,
                c.salt, NULL, NULL, NULL
           FROM pgnotifier.commits c
          CROSS JOIN LATERAL (
                SELECT e.id, e.channel, e.payload, e.sent_at, e.pid
                  FROM pgnotifier.outbox e
                 WHERE e.txid = c.txid AND e.channel = ANY (channels)
                   AND NOT (e.channel = ANY (seen_channels)
                            AND pg_visible_in_snapshot(coalesce(e.writer, e.txid), taken))
                 ORDER BY e.id
                 LIMIT max_events) o
          WHERE c.stamp > after_stamp AND c.stamp <= last_stamp
          ORDER BY c.stamp, o.id
          LIMIT max_events)
    ), sized AS (
        SELECT f.*, coalesce(sum(octet_length(f.payload)) OVER (
                   ORDER BY f.stamp, f.id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                   AS bytes_before
          FROM found f
    )
    SELECT CASE WHEN z.bytes_before < greatest(max_bytes, 1) THEN 'e'::"char" ELSE 'o'::"char" END,
           z.id, z.stamp, z.channel,
           CASE WHEN z.bytes_before < greatest(max_bytes, 1) THEN z.payload END,
           z.sent_at, z.pid, z.salt, NULL::bigint, NULL::text[], NULL::pg_lsn
      FROM sized z
    UNION ALL
    SELECT 'g', g.id, NULL, NULL, g.cause, g.first_sent_at, NULL, NULL,
           CASE WHEN g.stamps IS NULL THEN g.events
                ELSE (SELECT count(*) FROM unnest(g.stamps, g.ids) u(s, i)
                       WHERE (u.s, u.i) > (after_stamp, after_id)) END,
           CASE WHEN g.stamps IS NULL THEN g.channels
                ELSE ARRAY(SELECT DISTINCT u.c FROM unnest(g.stamps, g.ids, g.event_channels) u(s, i, c)
                            WHERE (u.s, u.i) > (after_stamp, after_id) ORDER BY 1) END,
           NULL
      FROM pgnotifier.gaps g
     WHERE g.subscriber = subscriber;
    -- Every commit read above (the senders' and the prunes') wrote its
    -- record before this point. WAL past it is most often a transaction in
    -- flight, whose own commit flushes it within a millisecond: look twice
    -- (a sleep of any length takes about a millisecond), then leave the
    -- flush to the reader.
    written := pg_current_wal_insert_lsn();
    FOR look IN 1..2 LOOP
        EXIT WHEN pg_current_wal_flush_lsn() >= written;
        PERFORM pg_sleep(0.0001);
    END LOOP;
    RETURN QUERY
    SELECT 'h'::"char", NULL::bigint, last_stamp, NULL::text, NULL::text, NULL::timestamptz,
           NULL::integer, NULL::uuid, NULL::bigint, NULL::text[],
           CASE WHEN pg_current_wal_flush_lsn() >= written THEN NULL ELSE written END;
END
$read$;
"#,
    // 15: each event's source table, so that a backfill's seam skips only
    // its tables' own changes.
    r#"
-- The table a row change came from, a partition's as its partitioned
-- table's (the top of its tree): notify_row's, or, relayed, pgoutput's
-- (published through the root). NULL for what pgnotifier.send wrote.
ALTER TABLE pgnotifier.outbox ADD COLUMN source oid;
-- The tables a backfill's changes come from, each with its channel: those
-- its names meant as it started and as its snapshot was taken (a table
-- swapped for another meanwhile is both). NULL for a backfill started
-- before this version, whose seam stays by channel.
ALTER TABLE pgnotifier.backfills ADD COLUMN relations oid[], ADD COLUMN relation_channels text[];

-- send_first_within with the row's table: notify_row's one way to send.
DROP FUNCTION pgnotifier.send_first_within(text, text[]);
CREATE FUNCTION pgnotifier.send_row(channel text, payloads text[], source oid) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $send_row$
#variable_conflict use_variable
DECLARE
    event_id bigint;
    sender text;
    first_event boolean;
    max_bytes integer;
    transport text;
    payload text;
BEGIN
    IF channel IS NULL OR channel = '' THEN
        RAISE EXCEPTION 'pgnotifier.send: channel name cannot be empty' USING ERRCODE = '22023';
    END IF;
    IF octet_length(channel) > 63 THEN
        RAISE EXCEPTION 'pgnotifier.send: channel name too long' USING ERRCODE = '22023';
    END IF;
    -- One row, or none (the defaults): an aggregate gives one either way.
    SELECT coalesce(max(l.transport), 'outbox'), coalesce(max(l.max_payload_bytes), 1048576)
      INTO transport, max_bytes FROM pgnotifier.limits l;
    FOREACH payload IN ARRAY payloads LOOP
        EXIT WHEN octet_length(payload) <= max_bytes;
    END LOOP;
    IF octet_length(payload) > max_bytes THEN
        RAISE EXCEPTION 'pgnotifier.send: a payload of % bytes is over max_payload_bytes (%)',
            octet_length(payload), max_bytes USING ERRCODE = '54000';
    END IF;
    IF transport = 'wal' THEN
        RETURN (pg_logical_emit_message(true, 'pgnotifier:' || pg_backend_pid() || ':' || channel,
                                        payload) - '0/0')::bigint;
    END IF;
    sender := pg_current_xact_id()::text;
    first_event := current_setting('pgnotifier.stamping', true) IS DISTINCT FROM sender;
    INSERT INTO pgnotifier.outbox (channel, payload, first_in_transaction, source)
        VALUES (channel, payload, first_event, source) RETURNING id INTO event_id;
    IF first_event THEN
        PERFORM set_config('pgnotifier.stamping', sender, true);
    END IF;
    PERFORM pg_notify('pgnotifier.outbox', channel);
    RETURN event_id;
END
$send_row$;

-- notify_row as in version 9, its events marked with their table.
CREATE OR REPLACE FUNCTION pgnotifier.notify_row() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $notify_row$
DECLARE
    event jsonb;
    whole jsonb;
    payload text;
    key_columns text[];
    bare text;
    source oid := coalesce(pg_partition_root(TG_RELID), TG_RELID);
BEGIN
    IF TG_NARGS <> 1 OR TG_LEVEL <> 'ROW' THEN
        RAISE EXCEPTION 'pgnotifier.notify_row is a row trigger with one argument, the channel: EXECUTE FUNCTION pgnotifier.notify_row(''orders'')'
            USING ERRCODE = '22023';
    END IF;
    event := jsonb_build_object('op', lower(TG_OP), 'schema', TG_TABLE_SCHEMA, 'table', TG_TABLE_NAME);
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        event := event || jsonb_build_object('new', to_jsonb(NEW));
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        event := event || jsonb_build_object('old', to_jsonb(OLD));
    END IF;
    payload := event::text;
    IF octet_length(payload) <= 8000 THEN
        PERFORM pgnotifier.send_row(TG_ARGV[0], ARRAY[payload], source);
        RETURN NULL;
    END IF;
    bare := jsonb_build_object('op', lower(TG_OP), 'schema', TG_TABLE_SCHEMA,
                               'table', TG_TABLE_NAME, 'truncated', true)::text;
    key_columns := ARRAY(
        SELECT a.attname
          FROM (SELECT i.indkey::int2[] AS columns, i.indnkeyatts FROM pg_index i
                 WHERE i.indrelid = TG_RELID AND (i.indisprimary OR i.indisreplident)
                 ORDER BY i.indisprimary DESC LIMIT 1) k
          JOIN pg_attribute a ON a.attrelid = TG_RELID
                             AND a.attnum = ANY (k.columns[0:k.indnkeyatts - 1])
         ORDER BY array_position(k.columns, a.attnum));
    whole := event;
    event := bare::jsonb;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        event := event || jsonb_build_object('new', (
            SELECT coalesce(jsonb_object_agg(c, whole -> 'new' -> c), '{}')
              FROM unnest(key_columns) c));
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        event := event || jsonb_build_object('old', (
            SELECT coalesce(jsonb_object_agg(c, whole -> 'old' -> c), '{}')
              FROM unnest(key_columns) c));
    END IF;
    PERFORM pgnotifier.send_row(TG_ARGV[0], ARRAY[payload, event::text, bare], source);
    RETURN NULL;
END
$notify_row$;

-- read_batch as in version 14, whose seam skips only the backfilled
-- tables' own changes on their channels: another table's changes and the
-- sends on a shared channel are not in the rows. A backfill started before
-- this version keeps version 14's seam, every event on its channels.
CREATE OR REPLACE FUNCTION pgnotifier.read_batch(subscriber text, after_stamp bigint, after_id bigint,
                                      channels text[], max_events integer, max_bytes bigint)
RETURNS TABLE (kind "char", id bigint, stamp bigint, channel text, payload text,
               sent_at timestamptz, pid integer, salt uuid,
               events bigint, gap_channels text[], flush_to pg_lsn)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $read$
#variable_conflict use_variable
DECLARE
    last_stamp bigint;
    written pg_lsn;
    look integer;
    seam pgnotifier.backfills;
    seen_relations oid[] := '{}';
    seen_channels text[] := '{}';
    by_channel boolean := false;
    taken pg_snapshot;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'pgnotifier.read_batch needs read committed isolation, not %',
            current_setting('transaction_isolation') USING ERRCODE = '25000';
    END IF;
    last_stamp := pgnotifier.horizon(after_stamp);
    SELECT * INTO seam FROM pgnotifier.backfills b WHERE b.subscriber = subscriber;
    IF seam.snapshot IS NOT NULL THEN
        IF (after_stamp, after_id) >= (seam.stamp, 9223372036854775807) THEN
            DELETE FROM pgnotifier.snapshot_rows r WHERE r.subscriber = subscriber;
        END IF;
        -- Every writer the snapshot saw committed before `seam.lsn`: once
        -- each slot still relayed is past it (its events relayed, or the
        -- slot confirmed past it with nothing to relay), their events are
        -- stamped, and by the last stamp handed out after that is seen.
        IF seam.end_stamp IS NULL AND NOT EXISTS (
            SELECT FROM pgnotifier.relayed r
              JOIN pg_replication_slots s ON s.slot_name = r.slot AND s.database = current_database()
             WHERE greatest(r.through, s.confirmed_flush_lsn) < seam.lsn) THEN
            SELECT CASE WHEN s.is_called THEN s.last_value ELSE 0 END INTO seam.end_stamp
              FROM pgnotifier.commit_stamps s;
            UPDATE pgnotifier.backfills b SET end_stamp = seam.end_stamp WHERE b.subscriber = subscriber;
        END IF;
        IF after_stamp >= seam.end_stamp
           AND (after_stamp, after_id) >= (seam.stamp, 9223372036854775807) THEN
            DELETE FROM pgnotifier.backfills b WHERE b.subscriber = subscriber;
        ELSE
            by_channel := seam.relations IS NULL;
            seen_relations := coalesce(seam.relations, '{}');
            seen_channels := CASE WHEN by_channel THEN seam.channels ELSE seam.relation_channels END;
            taken := seam.snapshot;
        END IF;
    END IF;
    RETURN QUERY
    WITH found AS (
        (SELECT 'e'::"char", r.id, seam.stamp AS stamp, r.channel, r.payload,
                seam.taken_at AS sent_at, 0 AS pid, seam.salt AS salt,
                NULL::bigint, NULL::text[], NULL::pg_lsn
           FROM pgnotifier.snapshot_rows r
          WHERE seam.stamp = after_stamp
            AND r.subscriber = subscriber AND r.id > after_id AND r.channel = ANY (channels)
          ORDER BY r.id
          LIMIT max_events)
        UNION ALL
        (SELECT 'e'::"char", o.id, c.stamp, o.channel, o.payload, o.sent_at, o.pid,
                c.salt, NULL::bigint, NULL::text[], NULL::pg_lsn
           FROM pgnotifier.commits c
           JOIN pgnotifier.outbox o ON o.txid = c.txid
          WHERE c.stamp = after_stamp AND o.id > after_id AND o.channel = ANY (channels)
            AND NOT coalesce(CASE WHEN by_channel THEN o.channel = ANY (seen_channels)
                                  ELSE o.source = ANY (seen_relations)
                                       AND o.channel = seen_channels[array_position(seen_relations, o.source)] END
                             AND pg_visible_in_snapshot(coalesce(o.writer, o.txid), taken), false)
          ORDER BY o.id
          LIMIT max_events)
        UNION ALL
        (SELECT 'e', o.id, c.stamp, o.channel, o.payload, o.sent_at, o.pid,
                c.salt, NULL, NULL, NULL
           FROM pgnotifier.commits c
          CROSS JOIN LATERAL (
                SELECT e.id, e.channel, e.payload, e.sent_at, e.pid
                  FROM pgnotifier.outbox e
                 WHERE e.txid = c.txid AND e.channel = ANY (channels)
                   AND NOT coalesce(CASE WHEN by_channel THEN e.channel = ANY (seen_channels)
                                         ELSE e.source = ANY (seen_relations)
                                              AND e.channel = seen_channels[array_position(seen_relations, e.source)] END
                                    AND pg_visible_in_snapshot(coalesce(e.writer, e.txid), taken), false)
                 ORDER BY e.id
                 LIMIT max_events) o
          WHERE c.stamp > after_stamp AND c.stamp <= last_stamp
          ORDER BY c.stamp, o.id
          LIMIT max_events)
    ), sized AS (
        SELECT f.*, coalesce(sum(octet_length(f.payload)) OVER (
                   ORDER BY f.stamp, f.id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                   AS bytes_before
          FROM found f
    )
    SELECT CASE WHEN z.bytes_before < greatest(max_bytes, 1) THEN 'e'::"char" ELSE 'o'::"char" END,
           z.id, z.stamp, z.channel,
           CASE WHEN z.bytes_before < greatest(max_bytes, 1) THEN z.payload END,
           z.sent_at, z.pid, z.salt, NULL::bigint, NULL::text[], NULL::pg_lsn
      FROM sized z
    UNION ALL
    SELECT 'g', g.id, NULL, NULL, g.cause, g.first_sent_at, NULL, NULL,
           CASE WHEN g.stamps IS NULL THEN g.events
                ELSE (SELECT count(*) FROM unnest(g.stamps, g.ids) u(s, i)
                       WHERE (u.s, u.i) > (after_stamp, after_id)) END,
           CASE WHEN g.stamps IS NULL THEN g.channels
                ELSE ARRAY(SELECT DISTINCT u.c FROM unnest(g.stamps, g.ids, g.event_channels) u(s, i, c)
                            WHERE (u.s, u.i) > (after_stamp, after_id) ORDER BY 1) END,
           NULL
      FROM pgnotifier.gaps g
     WHERE g.subscriber = subscriber;
    -- Every commit read above (the senders' and the prunes') wrote its
    -- record before this point. WAL past it is most often a transaction in
    -- flight, whose own commit flushes it within a millisecond: look twice
    -- (a sleep of any length takes about a millisecond), then leave the
    -- flush to the reader.
    written := pg_current_wal_insert_lsn();
    FOR look IN 1..2 LOOP
        EXIT WHEN pg_current_wal_flush_lsn() >= written;
        PERFORM pg_sleep(0.0001);
    END LOOP;
    RETURN QUERY
    SELECT 'h'::"char", NULL::bigint, last_stamp, NULL::text, NULL::text, NULL::timestamptz,
           NULL::integer, NULL::uuid, NULL::bigint, NULL::text[],
           CASE WHEN pg_current_wal_flush_lsn() >= written THEN NULL ELSE written END;
END
$read$;
"#,
];

/// What every install runs first: the schema and its version table.
const BASE: &str = "
CREATE SCHEMA IF NOT EXISTS pgnotifier;
CREATE TABLE IF NOT EXISTS pgnotifier.schema_version (
    version integer PRIMARY KEY,
    installed_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);";

/// Taken by a prune, and by a subscriber recording where it starts.
pub(crate) const PRUNE_LOCK: &str = "SELECT pg_catalog.pg_advisory_xact_lock(1885826676, 2)";

/// Concurrent installs take turns on this lock.
const LOCK: &str = "SELECT pg_catalog.pg_advisory_xact_lock(1885826676, 1)";

/// Why the schema could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the database's pgnotifier schema is version {found}, newer than this host's ({VERSION}): upgrade the host")]
    Newer { found: u32 },
    #[error("no migration to version {0}: this host knows 1 to {VERSION}")]
    Unknown(u32),
    #[error("installing the pgnotifier schema: {}", describe(.0))]
    Database(#[from] tokio_postgres::Error),
}

/// What an install did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Installed {
    /// The version found (0: no schema).
    pub from: u32,
    pub to: u32,
}

/// Bring the schema to this host's [`VERSION`]; a schema already there is left as it is.
pub async fn install(client: &mut tokio_postgres::Client) -> Result<Installed, SchemaError> {
    migrate(client, VERSION).await
}

/// Bring the schema to `target`, one migration at a time, in one transaction.
/// Going back is refused: migrations only go forward.
pub async fn migrate(
    client: &mut tokio_postgres::Client,
    target: u32,
) -> Result<Installed, SchemaError> {
    if target > VERSION {
        return Err(SchemaError::Unknown(target));
    }
    let tx = client.transaction().await?;
    tx.batch_execute(LOCK).await?;
    tx.batch_execute(BASE).await?;
    let row = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM pgnotifier.schema_version",
            &[],
        )
        .await?;
    let found = u32::try_from(row.get::<_, i32>(0)).unwrap_or(0);
    if found > VERSION {
        return Err(SchemaError::Newer { found });
    }
    for version in found + 1..=target {
        tx.batch_execute(MIGRATIONS[version as usize - 1]).await?;
        let version = i32::try_from(version).map_err(|_| SchemaError::Unknown(version))?;
        tx.execute(
            "INSERT INTO pgnotifier.schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Installed {
        from: found,
        to: target.max(found),
    })
}

/// Let `pgnotifier.send` accept payloads up to `bytes` (held to
/// [`MAX_PAYLOAD_BYTES`]). Every host writes its own setting as it starts
/// feeding: give every host of a database the same. What the database had
/// before, if anything.
pub async fn set_max_payload_bytes(
    client: &tokio_postgres::Client,
    bytes: u32,
) -> Result<Option<u32>, SchemaError> {
    let bytes = bytes.clamp(*MAX_PAYLOAD_BYTES.start(), *MAX_PAYLOAD_BYTES.end());
    let bytes = i32::try_from(bytes).unwrap_or(i32::MAX);
    let row = client
        .query_opt(
            "WITH before AS (SELECT max_payload_bytes FROM pgnotifier.limits)
             INSERT INTO pgnotifier.limits AS l (only_row, max_payload_bytes) VALUES (true, $1)
                 ON CONFLICT (only_row) DO UPDATE SET max_payload_bytes = excluded.max_payload_bytes
                 WHERE l.max_payload_bytes IS DISTINCT FROM excluded.max_payload_bytes
             RETURNING (SELECT max_payload_bytes FROM before)",
            &[&bytes],
        )
        .await;
    let before: Option<i32> = match row? {
        Some(row) => row.try_get(0)?,
        // Nothing to change: the row holds the value already.
        None => Some(bytes),
    };
    Ok(before.and_then(|b| u32::try_from(b).ok()))
}

/// The whole install as one SQL script, for a DBA to review and run
/// (`pgnotifier schema install --print`). It is safe to run again.
pub fn script() -> String {
    let mut out = format!(
        "-- pgnotifier schema, version {VERSION}: run as a role that may create a schema.\nBEGIN;\n{LOCK};\n{}\n",
        BASE.trim()
    );
    for (i, migration) in MIGRATIONS.iter().enumerate() {
        let version = i + 1;
        out.push_str(&format!(
            "\n-- version {version}\nDO $install$ BEGIN\nIF NOT EXISTS (SELECT FROM pgnotifier.schema_version WHERE version >= {version}) THEN\nEXECUTE {};\nINSERT INTO pgnotifier.schema_version (version) VALUES ({version});\nEND IF;\nEND $install$;\n",
            dollar_quoted(migration.trim())
        ));
    }
    out.push_str("COMMIT;\n");
    out
}

/// `text` as a dollar-quoted SQL string literal, with a tag it does not contain.
fn dollar_quoted(text: &str) -> String {
    let mut tag = String::from("migration");
    while text.contains(&format!("${tag}$")) {
        tag.push('_');
    }
    format!("${tag}${text}${tag}$")
}
