//! The pgnotifier application: the `pgnotifier` binary on top of the
//! library.
//!
//! - [`cli`]: the command line, and [`config`], its config file;
//! - `daemon`: `run` (the plugins folder, signals, SIGHUP) and [`admin`],
//!   the admin HTTP API, metrics and health;
//! - [`api`]: the admin API's contract (routes, bodies, typed replies),
//!   which [`admin`] serves and [`ctl`], its client, calls;
//! - `demo`, with [`local_pg`]: throwaway PostgreSQL clusters, which the
//!   tests and the benches use too;
//! - the plugin author's loop: [`new`] (templates), [`call`] (a plugin run
//!   offline) and [`record`] (live traffic to a file).
//!
//! The library (`pgnotifier`) never depends on this crate: Cargo enforces
//! it, and a library user gets no clap, axum or wat.

pub mod admin;
pub mod api;
pub mod call;
pub mod cli;
pub mod config;
pub mod ctl;
mod daemon;
mod demo;
pub mod local_pg;
pub mod new;
pub mod record;
