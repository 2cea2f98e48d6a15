//! The `pgnotifier` command line: `run`, `check` and `wit`.

use crate::config::{FileConfig, SubscriberSettings};
use crate::loader::PluginFiles;
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::{DatabaseConfig, Notifier};
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "pgnotifier",
    version,
    about = "Dispatch PostgreSQL NOTIFY to sandboxed WebAssembly subscribers"
)]
pub struct Cli {
    /// Log filter: a level (info, debug, …) or a tracing directive list.
    #[arg(long, global = true, env = "PGNOTIFIER_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the plugins and dispatch notifications until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Validate a plugin: compile it, run its `register`, print its id and channels.
    Check {
        /// The plugin file; a `NAME.toml` sidecar beside it is applied.
        file: PathBuf,
    },
    /// Print the WIT package plugins are written against.
    Wit,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The plugins folder (every `*.wasm` in it is loaded).
    #[arg(long)]
    pub plugins: Option<PathBuf>,
    /// PostgreSQL URL; the PG* variables fill in what it leaves out.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// A TOML config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Run the parsed command line.
pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Wit => {
            print!("{}", crate::bindings::WIT);
            Ok(())
        }
        Command::Check { file } => check(file).await,
        Command::Run(args) => run(args).await,
    }
}

async fn check(file: PathBuf) -> anyhow::Result<()> {
    let (files, loaded) = tokio::task::spawn_blocking(move || {
        let sandbox = Sandbox::new(&SandboxConfig::default())?;
        let files = PluginFiles::read(&file)?;
        let loaded = crate::loader::load(&sandbox, &files, SubscriberSettings::default())?;
        anyhow::Ok((files, loaded))
    })
    .await??;
    println!("id: {}", files.id);
    println!("channels: {}", loaded.channels.join(", "));
    println!("grants: {}", loaded.grants);
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let database = DatabaseConfig::resolve(
        args.database_url
            .as_deref()
            .or(file.database_url.as_deref()),
    )?;
    let plugins = args
        .plugins
        .or(file.plugins.clone())
        .context("no plugins folder: pass --plugins DIR or set `plugins` in the config file")?;
    let defaults = file
        .defaults
        .apply_to(SubscriberSettings::default())
        .context("config [defaults]")?;
    let mut sandbox = SandboxConfig::default();
    if let Some(dir) = &file.cache_dir {
        sandbox.cache_dir = Some(dir.clone());
    }
    let drain_timeout = Duration::from_millis(file.drain_timeout_ms.unwrap_or(10_000));

    let mut builder = Notifier::builder(database.clone())
        .sandbox(sandbox)
        .defaults(defaults)
        .connection(file.connection_settings()?);
    if let Some(size) = file.query_pool_size()? {
        builder = builder.query_pool_size(size);
    }
    if let Some(ms) = file.watch_debounce_ms {
        builder = builder.watch_debounce(Duration::from_millis(ms));
    }
    let notifier = builder.build();
    // Loads every plugin, then follows the folder for hot reload.
    let _watcher = notifier.watch_plugins(&plugins).await?;
    let subscribers = notifier.subscribers().len();
    tracing::info!(
        plugins = %plugins.display(),
        subscribers,
        database = %database.redacted(),
        "starting"
    );
    notifier.start().await?;

    // The streams stay registered from here on, so a second signal sent as
    // soon as the first is logged is never missed.
    let mut signals = Signals::new()?;
    signals.recv().await;
    tracing::info!("shutting down; a second signal exits at once");
    tokio::spawn(async move {
        signals.recv().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    let report = notifier.shutdown(drain_timeout).await;
    if report.abandoned.is_empty() {
        tracing::info!("all queued notifications delivered; bye");
    } else {
        tracing::warn!(subscribers = ?report.abandoned, "drain timeout reached; queued notifications discarded");
    }
    Ok(())
}

/// SIGTERM and SIGINT, either of which asks for shutdown.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
