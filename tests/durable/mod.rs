//! Durable delivery. Each test gets a database of its own, since the
//! schema is one per database; the harness is in `support::durable`.

mod backfill;
mod delivery;
mod payloads;
mod reader;
mod rows;
mod schema;
mod streams;
mod wal;
