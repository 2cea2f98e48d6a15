//! The integration tests: a real PostgreSQL, real components in a real
//! wasmtime, and the `pgnotifier` binary as a user runs it. One module per
//! area; [`support`] holds what they share. (The fault matrix, which loads
//! the machine for a minute, is a test binary of its own.)

mod support;

mod blocking;
mod capabilities;
mod cli;
mod cluster;
mod console;
mod control;
mod demo;
mod dispatch;
mod durable;
mod durable_trust;
mod hardening;
mod hostile;
mod hot_reload;
mod languages;
mod listener;
mod loader;
mod local_pg;
mod payloads;
mod reconnect;
mod registry;
mod sandbox;
mod templates;
