//! Row changes without triggers: the inserts, updates, deletes and
//! truncates of the tables a sidecar names (`tables = ["public.orders"]`),
//! read from the WAL transport's publication and relayed as durable events
//! on the channel named after the table (`public.orders`).
//!
//! - **Decoded here, rendered by PostgreSQL.** `pgoutput` sends each
//!   column as its type's text. The relay passes the texts with their type
//!   oids to `pgnotifier.row_change`, which reads each back through its
//!   type and renders the event as `pgnotifier.notify_row` does (`to_jsonb`
//!   of every type: numbers, arrays, JSON, time stamps alike), and applies
//!   the same cap (key columns, then the bare operation).
//! - **What the WAL holds, no more.** An update leaves out a TOASTed column
//!   it did not change: it is missing from `"new"` and named in
//!   `"unchanged"`. `"old"` is what the table's replica identity logs: the
//!   key columns (a primary key or an identity index), or the whole row
//!   (`REPLICA IDENTITY FULL`); an update of a table without either would
//!   fail its writer, so such a table is refused when a sidecar names it.

use super::reader::column;
use super::DurableError;
use crate::channel::quote_ident;
use pgwire_replication::Lsn;
use std::collections::HashMap;
use std::sync::Arc;

/// A table's name as a sidecar names it and as the channel of its changes:
/// `schema.table` (`public` when the schema is left out).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

impl TableName {
    /// `schema.table` or `table`; each part an identifier as written in
    /// the catalog (no quoting, no dots within).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (schema, table) = text.split_once('.').unwrap_or(("public", text));
        let part_ok = |part: &str| !part.is_empty() && !part.contains(['.', '\0', '"']);
        if !part_ok(schema) || !part_ok(table) {
            return Err(format!(
                "{text:?} is not a table name: write schema.table, as the catalog spells them (no quotes)"
            ));
        }
        let name = Self {
            schema: schema.to_owned(),
            table: table.to_owned(),
        };
        if name.channel().len() > 63 {
            return Err(format!(
                "{text:?}: the channel of its changes, {:?}, is longer than a channel may be (63 bytes)",
                name.channel()
            ));
        }
        Ok(name)
    }

    /// The channel its changes arrive on.
    pub fn channel(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The table as SQL names it, quoted.
    pub fn quoted(&self) -> String {
        format!(
            "{}.{}",
            crate::channel::quote_ident(&self.schema),
            crate::channel::quote_ident(&self.table)
        )
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// Make the publication `name` if missing. A partitioned table's changes
/// are published as the table's, not its partitions': they arrive on the
/// channel of the table a sidecar names.
pub(crate) async fn ensure_publication(
    client: &tokio_postgres::Client,
    name: &str,
) -> Result<(), DurableError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_publication WHERE pubname = $1) AS found",
            &[&name],
        )
        .await?;
    if column(&row, "found")? {
        return Ok(());
    }
    let created = client
        .batch_execute(&format!(
            "CREATE PUBLICATION {} WITH (publish_via_partition_root = true)",
            quote_ident(name)
        ))
        .await;
    match created {
        // Another host made it meanwhile: as good.
        Err(e) if e.code() != Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {
            Err(DurableError::Slot {
                slot: name.to_owned(),
                source: e,
            })
        }
        _ => Ok(()),
    }
}

/// Put each of `tables` in the publication `publication` (made if
/// missing), unless it is already. A table is refused, naming it, when it
/// does not exist, is not a table, or has no replica identity: PostgreSQL
/// fails every update and delete of such a table once it is published,
/// and the writers are not ours to fail.
pub(crate) async fn publish(
    client: &tokio_postgres::Client,
    publication: &str,
    tables: &[TableName],
) -> Result<(), DurableError> {
    let refused = |table: &TableName, why: String| DurableError::Table {
        table: table.to_string(),
        why,
    };
    ensure_publication(client, publication).await?;
    for table in tables {
        if table.schema == "pgnotifier" {
            return Err(refused(
                table,
                "the host's own tables are not for subscribers: relaying their changes writes them again".to_owned(),
            ));
        }
        let found = client
            .query_opt(
                "SELECT c.relkind::text AS kind,
                        CASE c.relreplident
                            WHEN 'f' THEN true
                            WHEN 'n' THEN false
                            WHEN 'i' THEN EXISTS (SELECT FROM pg_catalog.pg_index i
                                                   WHERE i.indrelid = c.oid AND i.indisreplident)
                            ELSE EXISTS (SELECT FROM pg_catalog.pg_index i
                                          WHERE i.indrelid = c.oid AND i.indisprimary)
                        END AS identity,
                        EXISTS (SELECT FROM pg_catalog.pg_publication_tables p
                                 WHERE p.pubname = $3 AND p.schemaname = n.nspname
                                   AND p.tablename = c.relname) AS published
                   FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = $1 AND c.relname = $2",
                &[&table.schema, &table.table, &publication],
            )
            .await?;
        let Some(row) = found else {
            return Err(refused(table, "no such table in this database".to_owned()));
        };
        let kind: String = column(&row, "kind")?;
        if kind != "r" && kind != "p" {
            return Err(refused(
                table,
                "not a table (a view, or another kind of relation): only tables have row changes"
                    .to_owned(),
            ));
        }
        if !column::<bool>(&row, "identity")? {
            return Err(refused(
                table,
                format!(
                    "the table has no replica identity (no primary key), and PostgreSQL fails every update and delete of a published table without one. Give it a primary key, or run ALTER TABLE {} REPLICA IDENTITY FULL (old values then carry the whole row)",
                    table.quoted()
                ),
            ));
        }
        if column::<bool>(&row, "published")? {
            continue;
        }
        if kind == "p" {
            // A publication made before: its partitions' changes must
            // come as the table's.
            client
                .batch_execute(&format!(
                    "ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
                    quote_ident(publication)
                ))
                .await?;
        }
        let added = client
            .batch_execute(&format!(
                "ALTER PUBLICATION {} ADD TABLE {}",
                quote_ident(publication),
                table.quoted()
            ))
            .await;
        match added {
            Ok(()) => tracing::info!(%table, publication, "table added to the WAL transport's publication"),
            // Added by another host meanwhile: as good.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
            Err(e) => {
                return Err(refused(
                    table,
                    format!(
                        "adding it to the publication {publication:?}: {}. The host's role must own the table and the publication (or be superuser)",
                        crate::pg::describe(&e)
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// The channel of each table's `pgnotifier.notify_row` trigger: on the
/// outbox transport, where its row changes arrive. A table with none, or
/// with triggers on different channels, is refused, naming it.
pub(crate) async fn trigger_channels(
    client: &tokio_postgres::Client,
    tables: &[TableName],
) -> Result<Vec<String>, DurableError> {
    let mut channels = Vec::with_capacity(tables.len());
    for table in tables {
        let refused = |why: String| DurableError::Table {
            table: table.to_string(),
            why,
        };
        if table.schema == "pgnotifier" {
            return Err(refused(
                "the host's own tables are not for subscribers".to_owned(),
            ));
        }
        // A trigger's arguments are its tgargs, each ended by a zero byte.
        let found = client
            .query_opt(
                "SELECT coalesce(array_agg(DISTINCT pg_catalog.convert_from(
                            substring(t.tgargs FROM 1 FOR pg_catalog.position(t.tgargs, '\\x00'::bytea) - 1),
                            'UTF8')) FILTER (WHERE t.oid IS NOT NULL), '{}') AS channels
                   FROM pg_catalog.pg_class c
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                   LEFT JOIN pg_catalog.pg_trigger t
                          ON t.tgrelid = c.oid AND t.tgfoid = pg_catalog.to_regproc('pgnotifier.notify_row')
                         AND t.tgenabled <> 'D' AND t.tgnargs >= 1 AND t.tgtype & 1 = 1
                  WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
                  GROUP BY c.oid",
                &[&table.schema, &table.table],
            )
            .await?;
        let Some(row) = found else {
            return Err(refused("no such table in this database".to_owned()));
        };
        let mut found: Vec<String> = column(&row, "channels")?;
        match found.len() {
            1 => channels.push(found.remove(0)),
            0 => {
                return Err(DurableError::NoTrigger {
                    table: table.to_string(),
                })
            }
            _ => {
                return Err(refused(format!(
                    "its notify_row triggers send on several channels ({}): keep one, so its rows and changes arrive on one channel",
                    found.join(", ")
                )))
            }
        }
    }
    Ok(channels)
}

/// A column as a `Relation` message describes it.
#[derive(Debug)]
struct Column {
    name: String,
    type_oid: u32,
    key: bool,
}

/// A table as the last `Relation` message for it described it.
#[derive(Debug)]
struct Relation {
    oid: u32,
    /// Shared with each change's [`Bare`] form.
    name: Arc<TableName>,
    columns: Vec<Column>,
}

/// One column of a tuple as `pgoutput` sends it.
#[derive(Debug)]
enum Datum {
    Null,
    Text(String),
    /// A TOASTed value an update left as it was: not in the WAL.
    UnchangedToast,
}

/// An old tuple: of the replica identity's columns alone (the others
/// null), or the whole row.
struct OldTuple {
    datums: Vec<Datum>,
    key_only: bool,
}

/// A change read from the publication: its channel, and its payload,
/// rendered here, or raw for `pgnotifier.row_change` to render.
#[derive(Debug, PartialEq)]
pub(crate) struct RowChange {
    pub(crate) channel: String,
    /// The table's relation oid (as published: a partitioned table's).
    pub(crate) source: u32,
    pub(crate) payload: String,
    pub(crate) rendered: bool,
    /// What is relayed when not even its values as text can be.
    pub(crate) bare: Bare,
}

/// A change as its operation and table alone, with `"truncated": true`:
/// built only when needed, from what the change already holds.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Bare {
    op: &'static str,
    table: Arc<TableName>,
}

impl Bare {
    /// The event, as `notify_row` sends a change that not even its key fits.
    pub(crate) fn event(&self) -> String {
        let mut out = String::from("{\"op\": ");
        push_string(&mut out, self.op);
        out.push_str(", \"schema\": ");
        push_string(&mut out, &self.table.schema);
        out.push_str(", \"table\": ");
        push_string(&mut out, &self.table.table);
        out.push_str(", \"truncated\": true}");
        out
    }
}

/// The tables a session has been told of, by relation oid. The server
/// describes each table before its first change in a session, and again
/// after its columns change.
#[derive(Debug)]
pub(crate) struct Relations {
    by_oid: HashMap<u32, Relation>,
    /// A change rendered here over this goes to PostgreSQL, which cuts it
    /// to its key as `notify_row` does.
    max_payload_bytes: usize,
}

/// `pgoutput` data that could not be read: the relay's session fails and
/// starts again from what it relayed.
#[derive(Debug, thiserror::Error)]
#[error("pgoutput data at {lsn} could not be read: {what}")]
pub(crate) struct DecodeError {
    lsn: String,
    what: String,
}

/// A cursor over one `pgoutput` message.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.data.len() < n {
            return Err(format!("{n} bytes wanted, {} left", self.data.len()));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self) -> Result<String, String> {
        let end = (self.data.iter().position(|&b| b == 0)).ok_or("a string without its NUL")?;
        let text =
            String::from_utf8(self.data[..end].to_vec()).map_err(|_| "a name not in UTF-8")?;
        self.data = &self.data[end + 1..];
        Ok(text)
    }

    /// `TupleData`: each column's datum.
    fn tuple(&mut self) -> Result<Vec<Datum>, String> {
        let columns = self.u16()?;
        (0..columns)
            .map(|_| match self.u8()? {
                b'n' => Ok(Datum::Null),
                b'u' => Ok(Datum::UnchangedToast),
                b't' => {
                    let len = self.u32()? as usize;
                    let text = String::from_utf8(self.take(len)?.to_vec())
                        .map_err(|_| "a column's text not in UTF-8")?;
                    Ok(Datum::Text(text))
                }
                other => Err(format!("a column of kind {:?}", other as char)),
            })
            .collect()
    }
}

impl Relations {
    pub(crate) fn new(max_payload_bytes: u32) -> Self {
        Self {
            by_oid: HashMap::new(),
            max_payload_bytes: max_payload_bytes as usize,
        }
    }

    /// Read one `pgoutput` message from `XLogData`: a table's description
    /// is kept, a change comes back as the events it makes, anything else
    /// (types, origins) is passed over.
    pub(crate) fn read(&mut self, data: &[u8], lsn: Lsn) -> Result<Vec<RowChange>, DecodeError> {
        self.decode(data).map_err(|what| DecodeError {
            lsn: lsn.to_pg_string(),
            what,
        })
    }

    fn decode(&mut self, data: &[u8]) -> Result<Vec<RowChange>, String> {
        let mut r = Reader { data };
        let cap = self.max_payload_bytes;
        let change = |op: &'static str, relation: &Relation, new, old| {
            let rendered = rendered_event(op, relation, &new, &old).filter(|p| p.len() <= cap);
            RowChange {
                channel: relation.name.channel(),
                source: relation.oid,
                bare: Bare {
                    op,
                    table: relation.name.clone(),
                },
                rendered: rendered.is_some(),
                payload: rendered.unwrap_or_else(|| raw_event(op, relation, new, old)),
            }
        };
        match r.u8()? {
            b'R' => {
                let oid = r.u32()?;
                let schema = r.string()?;
                let table = r.string()?;
                let _identity = r.u8()?;
                let count = r.u16()?;
                let columns = (0..count)
                    .map(|_| {
                        let flags = r.u8()?;
                        let name = r.string()?;
                        let type_oid = r.u32()?;
                        let _typmod = r.u32()?;
                        Ok(Column {
                            name,
                            type_oid,
                            key: flags & 1 == 1,
                        })
                    })
                    .collect::<Result<_, String>>()?;
                let name = Arc::new(TableName { schema, table });
                self.by_oid.insert(oid, Relation { oid, name, columns });
                Ok(Vec::new())
            }
            tag @ (b'I' | b'U' | b'D') => {
                let oid = r.u32()?;
                let relation = self.by_oid.get(&oid).ok_or(format!(
                    "a change of relation {oid}, which no Relation message described"
                ))?;
                let (mut old, mut new) = (None, None);
                loop {
                    match r.u8() {
                        Ok(b'K') => {
                            old = Some(OldTuple {
                                datums: r.tuple()?,
                                key_only: true,
                            })
                        }
                        Ok(b'O') => {
                            old = Some(OldTuple {
                                datums: r.tuple()?,
                                key_only: false,
                            })
                        }
                        Ok(b'N') => new = Some(r.tuple()?),
                        Ok(other) => return Err(format!("a tuple of kind {:?}", other as char)),
                        Err(_) => break,
                    }
                }
                let op = match tag {
                    b'I' => "insert",
                    b'U' => "update",
                    _ => "delete",
                };
                Ok(vec![change(op, relation, new, old)])
            }
            b'T' => {
                let count = r.u32()?;
                let _options = r.u8()?;
                (0..count)
                    .map(|_| {
                        let oid = r.u32()?;
                        let relation = self.by_oid.get(&oid).ok_or(format!(
                            "a truncate of relation {oid}, which no Relation message described"
                        ))?;
                        Ok(change("truncate", relation, None, None))
                    })
                    .collect()
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// The event as `pgnotifier.row_change` renders it, when every value's
/// type is one whose JSON its text gives alone (most columns: numbers,
/// text, booleans, `jsonb`, time stamps): the host spares PostgreSQL a
/// call per column. `None` when a value needs its type's own rendering.
fn rendered_event(
    op: &str,
    relation: &Relation,
    new: &Option<Vec<Datum>>,
    old: &Option<OldTuple>,
) -> Option<String> {
    let mut out = String::with_capacity(256);
    out.push_str("{\"op\": ");
    push_string(&mut out, op);
    out.push_str(", \"schema\": ");
    push_string(&mut out, &relation.name.schema);
    out.push_str(", \"table\": ");
    push_string(&mut out, &relation.name.table);
    let mut unchanged = Vec::new();
    let mut object = |out: &mut String, name: &str, datums: &[Datum], key_only: bool| {
        out.push_str(", \"");
        out.push_str(name);
        out.push_str("\": {");
        let mut first = true;
        for (column, datum) in relation.columns.iter().zip(datums) {
            if key_only && !column.key {
                continue;
            }
            let value = match datum {
                Datum::UnchangedToast => {
                    if !key_only && name == "new" {
                        unchanged.push(&column.name);
                    }
                    continue;
                }
                Datum::Null => "null".into(),
                Datum::Text(text) => json_of(column.type_oid, text)?,
            };
            if !first {
                out.push_str(", ");
            }
            first = false;
            push_string(out, &column.name);
            out.push_str(": ");
            out.push_str(&value);
        }
        out.push('}');
        Some(())
    };
    if let Some(datums) = new {
        object(&mut out, "new", datums, false)?;
    }
    if let Some(old) = old {
        object(&mut out, "old", &old.datums, old.key_only)?;
    }
    if !unchanged.is_empty() {
        out.push_str(", \"unchanged\": [");
        for (i, name) in unchanged.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            push_string(&mut out, name);
        }
        out.push(']');
    }
    out.push('}');
    Some(out)
}

/// `text` as a JSON string.
fn push_string(out: &mut String, text: &str) {
    // Serialising a string to a String cannot fail.
    out.push_str(&serde_json::to_string(text).unwrap_or_default());
}

/// A column's text as the JSON `to_jsonb` gives its type, where the text
/// alone says it; `None` for a type PostgreSQL must render.
fn json_of(type_oid: u32, text: &str) -> Option<std::borrow::Cow<'_, str>> {
    use std::borrow::Cow;
    let string = |text: &str| {
        let mut out = String::with_capacity(text.len() + 2);
        push_string(&mut out, text);
        Some(Cow::Owned(out))
    };
    match type_oid {
        // bool
        16 => match text {
            "t" => Some(Cow::Borrowed("true")),
            "f" => Some(Cow::Borrowed("false")),
            _ => None,
        },
        // int8, int2, int4, oid: always a JSON number.
        20 | 21 | 23 | 26 => is_json_number(text).then_some(Cow::Borrowed(text)),
        // float4, float8, numeric: a number, or NaN and the infinities as strings.
        700 | 701 | 1700 => match is_json_number(text) {
            true => Some(Cow::Borrowed(text)),
            false => string(text),
        },
        // text, varchar, bpchar, name, "char", uuid, and the reg* types
        // (regclass and its kind: names, as the server's search path
        // writes them).
        25 | 1043 | 1042 | 19 | 18 | 2950 => string(text),
        24 | 2202..=2206 | 3734 | 3769 | 4089 | 4096 | 4191 => string(text),
        // jsonb: its text is the JSON to_jsonb gives.
        3802 => Some(Cow::Borrowed(text)),
        // timestamptz, timestamp, date: ISO 8601, as to_jsonb writes them.
        1184 | 1114 | 1082 => string(&xsd_date_time(text)?),
        _ => None,
    }
}

/// Whether `text` is a number as JSON writes one.
fn is_json_number(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > start
    };
    if b.get(i) == Some(&b'0') {
        i += 1;
    } else if !digits(&mut i) {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}

/// A date or time stamp in the ISO style PostgreSQL writes
/// (`2026-01-02 03:04:05.678+01`) as `to_jsonb` writes it
/// (`2026-01-02T03:04:05.678+01:00`); `None` for anything else (BC, the
/// infinities, another date style), left to PostgreSQL.
fn xsd_date_time(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let is_digits = |range: std::ops::Range<usize>| {
        b.get(range.clone())
            .is_some_and(|d| !d.is_empty() && d.iter().all(u8::is_ascii_digit))
    };
    let sep = |i: usize, c: u8| b.get(i) == Some(&c);
    let date =
        is_digits(0..4) && sep(4, b'-') && is_digits(5..7) && sep(7, b'-') && is_digits(8..10);
    if !date {
        return None;
    }
    if b.len() == 10 {
        return Some(text.to_owned());
    }
    let time = sep(10, b' ')
        && is_digits(11..13)
        && sep(13, b':')
        && is_digits(14..16)
        && sep(16, b':')
        && is_digits(17..19);
    if !time {
        return None;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let mut out = format!("{}T{}", &text[..10], &text[11..i]);
    match &b[i..] {
        [] => {}
        // An offset: +HH, +HH:MM or +HH:MM:SS; to_jsonb always writes minutes.
        [sign @ (b'+' | b'-'), ..] => {
            let zone = &text[i + 1..];
            let parts: Vec<&str> = zone.split(':').collect();
            let two_digits = |p: &&str| p.len() == 2 && p.bytes().all(|d| d.is_ascii_digit());
            if parts.is_empty() || parts.len() > 3 || !parts.iter().all(two_digits) {
                return None;
            }
            out.push(*sign as char);
            out.push_str(zone);
            if parts.len() == 1 {
                out.push_str(":00");
            }
        }
        _ => return None,
    }
    Some(out)
}

/// The event `pgnotifier.row_change` renders: the operation and table, the
/// columns' texts in `"new"` and `"old"` (an old tuple of the key alone
/// gives the key columns), their types, the key's columns, and the
/// TOASTed columns left unchanged.
fn raw_event(
    op: &str,
    relation: &Relation,
    new: Option<Vec<Datum>>,
    old: Option<OldTuple>,
) -> String {
    use serde_json::{Map, Value};
    let columns = &relation.columns;
    let mut unchanged = Vec::new();
    let mut values = |datums: Vec<Datum>, key_only: bool, record: bool| {
        let mut object = Map::new();
        for (column, datum) in columns.iter().zip(datums) {
            let name = column.name.clone();
            match datum {
                _ if key_only && !column.key => {}
                Datum::Null => {
                    object.insert(name, Value::Null);
                }
                Datum::Text(text) => {
                    object.insert(name, Value::String(text));
                }
                Datum::UnchangedToast if record => unchanged.push(Value::String(name)),
                Datum::UnchangedToast => {}
            }
        }
        Value::Object(object)
    };
    let mut event = Map::new();
    event.insert("op".into(), op.into());
    event.insert("schema".into(), relation.name.schema.clone().into());
    event.insert("table".into(), relation.name.table.clone().into());
    if let Some(tuple) = new {
        event.insert("new".into(), values(tuple, false, true));
    }
    if let Some(old) = old {
        event.insert("old".into(), values(old.datums, old.key_only, false));
    }
    let types: Map<String, Value> = (columns.iter())
        .map(|c| (c.name.clone(), c.type_oid.into()))
        .collect();
    event.insert("types".into(), Value::Object(types));
    let key: Vec<Value> = (columns.iter())
        .filter(|c| c.key)
        .map(|c| c.name.clone().into())
        .collect();
    event.insert("key".into(), key.into());
    event.insert("unchanged".into(), unchanged.into());
    Value::Object(event).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation_message() -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend(16384u32.to_be_bytes());
        m.extend(b"public\0orders\0");
        m.push(b'd');
        m.extend(3u16.to_be_bytes());
        for (flags, name, oid) in [(1u8, "id", 23u32), (0, "note", 25), (0, "doc", 3802)] {
            m.push(flags);
            m.extend(name.as_bytes());
            m.push(0);
            m.extend(oid.to_be_bytes());
            m.extend((-1i32).to_be_bytes());
        }
        m
    }

    fn tuple(values: &[Option<&str>], unchanged_last: bool) -> Vec<u8> {
        let mut t = (values.len() as u16 + u16::from(unchanged_last))
            .to_be_bytes()
            .to_vec();
        for value in values {
            match value {
                None => t.push(b'n'),
                Some(text) => {
                    t.push(b't');
                    t.extend((text.len() as u32).to_be_bytes());
                    t.extend(text.as_bytes());
                }
            }
        }
        if unchanged_last {
            t.push(b'u');
        }
        t
    }

    fn raw(changes: Vec<RowChange>) -> serde_json::Value {
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].channel, "public.orders");
        serde_json::from_str(&changes[0].payload).unwrap()
    }

    #[test]
    fn an_update_names_its_unchanged_toasted_column_and_its_old_key() {
        let mut relations = Relations::new(1 << 20);
        assert!(relations
            .read(&relation_message(), Lsn(1))
            .unwrap()
            .is_empty());
        let mut update = vec![b'U'];
        update.extend(16384u32.to_be_bytes());
        update.push(b'K');
        update.extend(tuple(&[Some("7"), None, None], false));
        update.push(b'N');
        update.extend(tuple(&[Some("8"), None], true));
        let changes = relations.read(&update, Lsn(2)).unwrap();
        assert!(
            changes[0].rendered,
            "int, text and jsonb need no PostgreSQL"
        );
        assert_eq!(
            raw(changes),
            serde_json::json!({"op": "update", "schema": "public", "table": "orders",
                               "new": {"id": 8, "note": null}, "old": {"id": 7},
                               "unchanged": ["doc"]})
        );
        // Over the cap, PostgreSQL cuts it to its key: sent raw.
        let mut small = Relations::new(10);
        small.read(&relation_message(), Lsn(1)).unwrap();
        let changes = small.read(&update, Lsn(2)).unwrap();
        assert!(!changes[0].rendered);
        let event = raw(changes);
        assert_eq!(event["new"], serde_json::json!({"id": "8", "note": null}));
        assert_eq!(event["key"], serde_json::json!(["id"]));
        assert_eq!(event["types"]["doc"], 3802);
    }

    #[test]
    fn a_change_of_a_table_never_described_or_cut_short_is_an_error() {
        let mut relations = Relations::new(1 << 20);
        let mut insert = vec![b'I'];
        insert.extend(99u32.to_be_bytes());
        let e = relations.read(&insert, Lsn(1)).unwrap_err().to_string();
        assert!(e.contains("relation 99"), "{e}");
        relations.read(&relation_message(), Lsn(1)).unwrap();
        let mut cut = vec![b'I'];
        cut.extend(16384u32.to_be_bytes());
        cut.push(b'N');
        cut.extend(&tuple(&[Some("1234")], false)[..5]);
        assert!(relations.read(&cut, Lsn(1)).is_err());
    }

    #[test]
    fn values_whose_text_says_their_json_are_rendered_as_to_jsonb_would() {
        let json = |oid, text| json_of(oid, text).map(|j| j.into_owned());
        assert_eq!(json(23, "-42").as_deref(), Some("-42"));
        assert_eq!(json(1700, "12.50").as_deref(), Some("12.50"));
        assert_eq!(json(1700, "NaN").as_deref(), Some("\"NaN\""));
        assert_eq!(json(701, "1e+20").as_deref(), Some("1e+20"));
        assert_eq!(json(701, "-Infinity").as_deref(), Some("\"-Infinity\""));
        assert_eq!(json(16, "t").as_deref(), Some("true"));
        assert_eq!(json(25, "a \"b\"\n").as_deref(), Some("\"a \\\"b\\\"\\n\""));
        assert_eq!(json(3802, "{\"k\": [1]}").as_deref(), Some("{\"k\": [1]}"));
        assert_eq!(
            json(1184, "2026-01-02 03:04:05.678+01").as_deref(),
            Some("\"2026-01-02T03:04:05.678+01:00\"")
        );
        assert_eq!(
            json(1184, "1850-01-01 00:00:00-00:01:15").as_deref(),
            Some("\"1850-01-01T00:00:00-00:01:15\"")
        );
        assert_eq!(
            json(1114, "2026-01-02 03:04:05").as_deref(),
            Some("\"2026-01-02T03:04:05\"")
        );
        assert_eq!(json(1082, "2026-01-02").as_deref(), Some("\"2026-01-02\""));
        // Left to PostgreSQL: other types, BC, the infinities, other styles.
        for (oid, text) in [
            (1007, "{1,2}"),
            (114, "{\"a\": 1, \"a\": 2}"),
            (1184, "0044-03-15 00:00:00+00 BC"),
            (1184, "infinity"),
            (1082, "02/01/2026"),
            (23, "12abc"),
            (16, "yes"),
        ] {
            assert_eq!(json(oid, text), None, "{oid} {text}");
        }
    }

    #[test]
    fn table_names_are_schema_dot_table_and_fit_a_channel() {
        let name = TableName::parse("orders").unwrap();
        assert_eq!(name.channel(), "public.orders");
        assert_eq!(
            TableName::parse("sales.Orders").unwrap().quoted(),
            "\"sales\".\"Orders\""
        );
        for bad in ["", "a.", ".b", "a.b.c", "\"a\".b", &"x".repeat(60)] {
            assert!(TableName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
