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
    let created = client
        .batch_execute(&format!("CREATE PUBLICATION {}", quote_ident(publication)))
        .await;
    if let Err(e) = created {
        if e.code() != Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) {
            return Err(DurableError::Slot {
                slot: publication.to_owned(),
                source: e,
            });
        }
    }
    for table in tables {
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
    name: TableName,
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

/// A change read from the publication: its channel, and the raw event
/// `pgnotifier.row_change` renders.
#[derive(Debug, PartialEq)]
pub(crate) struct RowChange {
    pub(crate) channel: String,
    pub(crate) raw: String,
}

/// The tables a session has been told of, by relation oid. The server
/// describes each table before its first change in a session, and again
/// after its columns change.
#[derive(Debug, Default)]
pub(crate) struct Relations {
    by_oid: HashMap<u32, Relation>,
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
        let change = |op: &str, relation: &Relation, new, old| RowChange {
            channel: relation.name.channel(),
            raw: raw_event(op, relation, new, old),
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
                let name = TableName { schema, table };
                self.by_oid.insert(oid, Relation { name, columns });
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
        serde_json::from_str(&changes[0].raw).unwrap()
    }

    #[test]
    fn an_update_names_its_unchanged_toasted_column_and_its_old_key() {
        let mut relations = Relations::default();
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
        let event = raw(relations.read(&update, Lsn(2)).unwrap());
        assert_eq!(event["op"], "update");
        assert_eq!(event["new"], serde_json::json!({"id": "8", "note": null}));
        assert_eq!(event["old"], serde_json::json!({"id": "7"}));
        assert_eq!(event["unchanged"], serde_json::json!(["doc"]));
        assert_eq!(event["key"], serde_json::json!(["id"]));
        assert_eq!(event["types"]["doc"], 3802);
    }

    #[test]
    fn a_change_of_a_table_never_described_or_cut_short_is_an_error() {
        let mut relations = Relations::default();
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
