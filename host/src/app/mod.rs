//! The application, behind the default `cli` feature: the `pgnotifier`
//! command line ([`cli`]) and its [`config`] file, the daemon behind `run`
//! (signals, SIGHUP), [`ctl`] and the admin HTTP API it drives ([`admin`]),
//! `demo`, and the plugin author's [`call`] and [`record`].
//!
//! Library users build with `default-features = false` and get none of it:
//! no clap, axum, wat or wit-component.

pub mod admin;
pub mod call;
pub mod cli;
pub mod config;
pub mod ctl;
mod daemon;
mod demo;
pub mod new;
pub mod record;
