//! `pgnotifier run`: the daemon. Settings → notifier (with persisted state)
//! → admin API → plugins → listener; then signals: SIGTERM or SIGINT drains
//! and exits (a second one exits at once), SIGHUP re-reads the config file
//! and applies what changed.

use super::admin::AdminServer;
use super::config::{ConfigFile, ControlSettings};
use anyhow::Context;
use pgnotifier::plugins::SubscriberSettings;
use pgnotifier::registry::SubscriberSource;
use pgnotifier::sandbox::SandboxSettings;
use pgnotifier::ConnectionSettings;
use pgnotifier::{DatabaseSettings, Notifier};
use std::path::PathBuf;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// What `run` needs to know, from the command line, the environment and the
/// config file, in that order of precedence.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub plugins: Option<PathBuf>,
    pub database_url: Option<String>,
    pub config: Option<PathBuf>,
    pub admin_addr: Option<String>,
    pub admin_token: Option<String>,
    pub data_dir: Option<PathBuf>,
}

/// Every setting, resolved and checked.
struct Settings {
    file: ConfigFile,
    database_url: Option<String>,
    database: DatabaseSettings,
    connection: ConnectionSettings,
    defaults: SubscriberSettings,
    plugins: PathBuf,
    drain_timeout: Duration,
    control: ControlSettings,
}

impl Settings {
    fn resolve(options: &RunOptions) -> anyhow::Result<Self> {
        let file = match &options.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        let database_url = options.database_url.clone().or(file.database_url.clone());
        let database = DatabaseSettings::resolve(database_url.as_deref())?;
        let plugins = (options.plugins.clone())
            .or(file.plugins.clone())
            .context("no plugins folder: pass --plugins DIR or set `plugins` in the config file")?;
        let defaults = (file.defaults)
            .apply_to(SubscriberSettings::default())
            .context("config [defaults]")?;
        let control = control_settings(options, &file)?;
        file.query_pool_size()?;
        file.watch_debounce()?;
        file.outbox_retention()?;
        file.max_payload_bytes()?;
        file.durable_transport()?;
        file.cluster()?;
        Ok(Self {
            connection: file.connection_settings()?,
            drain_timeout: file.drain_timeout()?,
            file,
            database_url,
            database,
            defaults,
            plugins,
            control,
        })
    }
}

/// The admin address, token and data dir, as `run` and `ctl` both find them.
pub fn control_settings(
    options: &RunOptions,
    file: &ConfigFile,
) -> anyhow::Result<ControlSettings> {
    Ok(ControlSettings::resolve(
        options.admin_addr.as_deref().or(file.admin_addr.as_deref()),
        options
            .admin_token
            .as_deref()
            .or(file.admin_token.as_deref()),
        options.data_dir.as_deref().or(file.data_dir.as_deref()),
    )?)
}

pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    // First of all: a signal sent while plugins load is queued, not the
    // default action (SIGHUP's would end the process).
    let mut signals = Signals::new()?;
    let mut settings = Settings::resolve(&options)?;
    let mut sandbox = SandboxSettings {
        max_payload_bytes: settings.file.max_payload_bytes()?,
        ..SandboxSettings::default()
    };
    if let Some(dir) = &settings.file.cache_dir {
        sandbox.cache_dir = Some(dir.clone());
    }
    let mut builder = Notifier::builder(settings.database.clone())
        .sandbox(sandbox)
        .defaults(settings.defaults)
        .connection(settings.connection)
        .persist_state(&settings.control.data_dir)?;
    if let Some(size) = settings.file.query_pool_size {
        builder = builder.query_pool_size(size);
    }
    if let Some(quiet) = settings.file.watch_debounce()? {
        builder = builder.watch_debounce(quiet);
    }
    if let Some(retention) = settings.file.outbox_retention()? {
        builder = builder.outbox_retention(retention);
    }
    if let Some(cluster) = settings.file.cluster()? {
        builder = builder.cluster(cluster);
    }
    builder = builder.durable_transport(settings.file.durable_transport()?);
    let notifier = builder.build();
    // Bound before plugins load, so a taken port fails fast.
    let admin = AdminServer::start(notifier.clone(), &settings.control).await?;
    // Loads every plugin, then follows the folder for hot reload.
    let watcher = notifier.watch_plugins(&settings.plugins).await?;
    tracing::info!(
        plugins = %settings.plugins.display(),
        subscribers = notifier.subscribers().len(),
        database = %settings.database.redacted(),
        admin = %admin.addr(),
        "starting"
    );
    notifier.start().await?;

    loop {
        match signals.recv().await {
            Received::Stop => break,
            Received::Reload => reload(&options, &mut settings, &notifier, &admin).await,
        }
    }
    tracing::info!("shutting down; a second signal exits at once");
    tokio::spawn(async move {
        while signals.recv().await != Received::Stop {}
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    drop(watcher);
    let report = notifier.shutdown(settings.drain_timeout).await;
    admin.shutdown().await;
    if !report.abandoned.is_empty() {
        // Not a clean exit: a supervisor (or a script) must be able to tell.
        anyhow::bail!(
            "drain timeout ({:?}) reached: queued notifications of {:?} were discarded",
            settings.drain_timeout,
            report.abandoned
        );
    }
    tracing::info!("all queued notifications delivered; bye");
    Ok(())
}

/// SIGHUP: re-read the config file and apply what changed. A file that does
/// not load or check out changes nothing.
async fn reload(
    options: &RunOptions,
    settings: &mut Settings,
    notifier: &Notifier,
    admin: &AdminServer,
) {
    let Some(path) = &options.config else {
        tracing::warn!("SIGHUP: there is no config file to re-read (started without --config)");
        return;
    };
    let next = match Settings::resolve(options) {
        Ok(next) => next,
        Err(e) => {
            tracing::error!(config = %path.display(), "config reload refused, the running settings stay: {}", pgnotifier::printable::with_causes(e.as_ref()));
            return;
        }
    };
    let mut applied = Vec::new();
    if next.defaults != settings.defaults {
        notifier.set_defaults(next.defaults);
        reload_plugins(notifier).await;
        applied.push("defaults");
    }
    // A new warning threshold needs no new connection; the rest does.
    let warn = |c: ConnectionSettings| ConnectionSettings {
        queue_warn_percent: 0,
        ..c
    };
    if next.database_url != settings.database_url
        || warn(next.connection) != warn(settings.connection)
    {
        notifier.set_database(next.database.clone(), next.connection);
        if notifier.is_running() {
            if let Err(e) = notifier.restart().await {
                tracing::error!("restarting the listener failed: {e}");
            }
        }
        applied.push("database");
    }
    if next.connection.queue_warn_percent != settings.connection.queue_warn_percent {
        notifier.set_queue_warn_percent(next.connection.queue_warn_percent);
        applied.push("queue_usage_warn_percent");
    }
    if next.control.admin_token != settings.control.admin_token {
        admin.set_token(next.control.admin_token.clone());
        applied.push("admin_token");
    }
    if next.drain_timeout != settings.drain_timeout {
        applied.push("drain_timeout_ms");
    }
    let (old, new) = (&settings.file, &next.file);
    let on_restart: Vec<&str> = [
        ("plugins", next.plugins != settings.plugins),
        ("cache_dir", old.cache_dir != new.cache_dir),
        (
            "watch_debounce_ms",
            old.watch_debounce_ms != new.watch_debounce_ms,
        ),
        (
            "query_pool_size",
            old.query_pool_size != new.query_pool_size,
        ),
        (
            "outbox_retention",
            old.outbox_retention != new.outbox_retention,
        ),
        (
            "max_payload_bytes",
            old.max_payload_bytes != new.max_payload_bytes,
        ),
        (
            "durable_transport",
            old.durable_transport != new.durable_transport,
        ),
        ("wal_slot", old.wal_slot != new.wal_slot),
        ("cluster", old.cluster != new.cluster),
        (
            "admin_addr",
            next.control.admin_addr != settings.control.admin_addr,
        ),
        (
            "data_dir",
            next.control.data_dir != settings.control.data_dir,
        ),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect();
    if !on_restart.is_empty() {
        tracing::warn!(settings = ?on_restart, "changed in the config file; they take effect on restart");
    }
    tracing::info!(config = %path.display(), applied = ?applied, "config reloaded");
    *settings = next;
}

/// Reload every plugin, so new `[defaults]` apply to it.
async fn reload_plugins(notifier: &Notifier) {
    for subscriber in notifier.subscribers() {
        if matches!(subscriber.source, SubscriberSource::Plugin { .. }) {
            if let Err(e) = notifier.reload_plugin(&subscriber.id).await {
                tracing::error!(subscriber = %subscriber.id, "reload for new defaults failed; the old version keeps running: {e}");
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Received {
    /// SIGTERM or SIGINT.
    Stop,
    /// SIGHUP.
    Reload,
}

/// The signals `run` answers. The streams stay registered from start to
/// exit, so a signal sent while another is being handled is never missed.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> Received {
        tokio::select! {
            _ = self.term.recv() => Received::Stop,
            _ = self.int.recv() => Received::Stop,
            _ = self.hup.recv() => Received::Reload,
        }
    }
}
