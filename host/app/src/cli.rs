//! The `pgnotifier` command line: `run`, `ctl`, `demo`, `check`, `wit` and `schema`.

use super::config::ConfigFile;
use super::ctl::CtlCommand;
use super::daemon::{self, RunOptions};
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pgnotifier::durable::{relay, schema, Transport};
use pgnotifier::pg::DatabaseSettings;
use pgnotifier::plugins::{OfflinePlugin, OfflineSettings};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "pgnotifier",
    version,
    about = "Dispatch PostgreSQL NOTIFY to sandboxed WebAssembly subscribers"
)]
pub struct Cli {
    /// Log filter: a level (info, debug, …) or a tracing directive list
    /// [default: info; for demo, only what plugins log].
    #[arg(long, global = true, env = "PGNOTIFIER_LOG")]
    pub log: Option<String>,
    /// Log lines as text, or as one JSON object per line.
    #[arg(long, global = true, env = "PGNOTIFIER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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
    /// See it work: a throwaway PostgreSQL (unless DATABASE_URL is reachable),
    /// example subscribers, a script of notifications; then yours, until Ctrl-C.
    Demo {
        /// Exit after the scripted notifications.
        #[arg(long)]
        once: bool,
        /// Where the built example plugins are [default: plugins/dist].
        #[arg(long)]
        plugins: Option<PathBuf>,
    },
    /// The `pgnotifier` schema of durable delivery (`pgnotifier.send`, the outbox).
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// Start a plugin project: source, sidecar, WIT, `build` and `test`.
    New {
        /// The plugin's name: its folder, NAME.wasm and its subscriber id.
        name: String,
        #[arg(long, value_enum)]
        lang: super::new::Language,
        /// Where to create NAME/ [default: the current folder].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run a plugin offline, without PostgreSQL: its register, then on-notify
    /// for one notification or each line of a recording. Non-zero exit when
    /// any call fails.
    Call {
        /// The plugin; a `NAME.toml` sidecar beside it is applied.
        plugin: PathBuf,
        #[arg(long)]
        channel: Option<String>,
        #[arg(long)]
        payload: Option<String>,
        /// The sender's pid the plugin is told.
        #[arg(long, default_value_t = 0)]
        pid: i32,
        /// Notifications to call with, one JSON object per line (as `record` writes).
        #[arg(long)]
        input: Option<PathBuf>,
        #[command(flatten)]
        with: CallArgs,
    },
    /// `call` over a recording: every line's notification into the plugin,
    /// then calls, failures and call-time percentiles.
    Replay {
        /// A recording, as `record` writes it.
        recording: PathBuf,
        plugin: PathBuf,
        /// `max` (as fast as possible) or `1x` (the recorded pace).
        #[arg(long, default_value = "max", value_parser = ["max", "1x"])]
        speed: String,
        #[command(flatten)]
        with: CallArgs,
    },
    /// Capture live notifications to a file, one JSON object per line:
    /// channel, payload as sent, pid, received_at.
    Record {
        /// The channels to LISTEN on, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        channels: Vec<String>,
        /// PostgreSQL URL; the PG* variables fill in what it leaves out.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// The file to write (`-`: standard output).
        #[arg(long)]
        out: PathBuf,
        /// Stop after this many notifications (default: at Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Control a running host through its admin API.
    Ctl {
        #[command(flatten)]
        control: ControlArgs,
        /// Print the API's JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: CtlCommand,
    },
}

/// What `call` and `replay` run a plugin with.
#[derive(Debug, clap::Args)]
pub struct CallArgs {
    /// A `[config]` value, over the sidecar's: `--config KEY=VALUE`, repeated.
    #[arg(long)]
    config: Vec<String>,
    /// A sidecar to use instead of the one beside the plugin.
    #[arg(long)]
    sidecar: Option<PathBuf>,
    /// One JSON object per call instead of text.
    #[arg(long)]
    json: bool,
    /// The database `publish` and `query` use (never DATABASE_URL, so
    /// a dry run stays dry); without it `publish` only says what it would send.
    #[arg(long)]
    database_url: Option<String>,
    /// Rows for `query` without a database: a JSON object from SQL to rows.
    #[arg(long)]
    query_fixture: Option<PathBuf>,
    /// Let HTTP reach the origins the sidecar grants (refused otherwise).
    #[arg(long)]
    allow_http: bool,
}

impl CallArgs {
    fn options(self, plugin: PathBuf) -> super::call::CallOptions {
        super::call::CallOptions {
            plugin,
            channel: None,
            payload: None,
            pid: 0,
            config: self.config,
            sidecar: self.sidecar,
            input: None,
            json: self.json,
            recorded_pace: false,
            summary: false,
            database_url: self.database_url,
            query_fixture: self.query_fixture,
            allow_http: self.allow_http,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Install the schema, or migrate it to this host's version; safe to run again.
    Install {
        /// Print the SQL instead, for a DBA to review and run.
        #[arg(long)]
        print: bool,
        /// PostgreSQL URL; the PG* variables fill in what it leaves out.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// A TOML config file, for its `database_url`.
        #[arg(long, env = "PGNOTIFIER_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The plugins folder (every `*.wasm` in it is loaded).
    #[arg(long)]
    pub plugins: Option<PathBuf>,
    /// PostgreSQL URL; the PG* variables fill in what it leaves out.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// How `run` and `ctl` find the config file and the admin API. The token is
/// read from PGNOTIFIER_ADMIN_TOKEN or the config file, never a flag, so it
/// stays out of the process list.
#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// A TOML config file.
    #[arg(long, env = "PGNOTIFIER_CONFIG")]
    pub config: Option<PathBuf>,
    /// The admin API's address [default: 127.0.0.1:7433; port 0 picks one].
    #[arg(long, env = "PGNOTIFIER_ADMIN_ADDR")]
    pub admin_addr: Option<String>,
    /// Where runtime state (mutes, subscriptions) and the admin address are kept
    /// [default: $STATE_DIRECTORY, $XDG_STATE_HOME/pgnotifier or ~/.local/state/pgnotifier].
    #[arg(long, env = "PGNOTIFIER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

impl Cli {
    /// The log filter: `--log`, else the command's default.
    pub fn log_filter(&self) -> &str {
        match (&self.log, &self.command) {
            (Some(filter), _) => filter,
            (None, Command::Demo { .. } | Command::Call { .. } | Command::Replay { .. }) => {
                "warn,pgnotifier::plugin=info"
            }
            (None, _) => "info",
        }
    }

    /// The demo writes everything to stdout, in order, without timestamps.
    pub fn is_demo(&self) -> bool {
        matches!(self.command, Command::Demo { .. })
    }
}

impl ControlArgs {
    fn options(&self, plugins: Option<PathBuf>, database_url: Option<String>) -> RunOptions {
        RunOptions {
            plugins,
            database_url,
            config: self.config.clone(),
            admin_addr: self.admin_addr.clone(),
            admin_token: std::env::var("PGNOTIFIER_ADMIN_TOKEN").ok(),
            data_dir: self.data_dir.clone(),
        }
    }
}

/// Run the parsed command line.
pub async fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Wit => {
            print!("{}", pgnotifier::bindings::WIT);
            Ok(())
        }
        Command::Check { file } => check(file).await,
        Command::Schema {
            command:
                SchemaCommand::Install {
                    print,
                    database_url,
                    config,
                },
        } => install_schema(print, database_url, config).await,
        Command::New { name, lang, dir } => super::new::new(&name, lang, dir.as_deref()),
        Command::Call {
            plugin,
            channel,
            payload,
            pid,
            input,
            with,
        } => {
            super::call::call(super::call::CallOptions {
                channel,
                payload,
                pid,
                input,
                ..with.options(plugin)
            })
            .await
        }
        Command::Replay {
            recording,
            plugin,
            speed,
            with,
        } => {
            super::call::call(super::call::CallOptions {
                input: Some(recording),
                recorded_pace: speed == "1x",
                summary: true,
                ..with.options(plugin)
            })
            .await
        }
        Command::Record {
            channels,
            database_url,
            out,
            count,
        } => {
            let database = DatabaseSettings::resolve(database_url.as_deref())?;
            super::record::record(&database, &channels, &out, count).await?;
            Ok(())
        }
        Command::Demo { once, plugins } => {
            super::demo::run(super::demo::DemoOptions { once, plugins }).await
        }
        Command::Run(args) => {
            let options = args.control.options(args.plugins, args.database_url);
            daemon::run(options).await
        }
        Command::Ctl {
            control,
            json,
            command,
        } => {
            let options = control.options(None, None);
            let file = match &options.config {
                Some(path) => ConfigFile::load(path)?,
                None => ConfigFile::default(),
            };
            let settings = daemon::control_settings(&options, &file)?;
            super::ctl::execute(&settings, command, json).await
        }
    }
}

async fn check(file: PathBuf) -> anyhow::Result<()> {
    let plugin =
        tokio::task::spawn_blocking(move || OfflinePlugin::load(&file, OfflineSettings::default()))
            .await??;
    println!("id: {}", plugin.id);
    println!("channels: {}", plugin.channels.join(", "));
    println!("grants: {}", plugin.grants);
    Ok(())
}

async fn install_schema(
    print: bool,
    database_url: Option<String>,
    config: Option<PathBuf>,
) -> anyhow::Result<()> {
    let file = match &config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let slot = match file.durable_transport()? {
        Transport::Wal { slot } => Some(slot),
        Transport::Outbox => None,
    };
    if print {
        print!("{}", schema::script());
        if let Some(slot) = &slot {
            print!("{}", relay::slot_script(slot));
        }
        return Ok(());
    }
    let database = DatabaseSettings::resolve(database_url.or(file.database_url).as_deref())?;
    let (mut client, connection) = database
        .connect()
        .await
        .with_context(|| format!("connecting to {}", database.redacted()))?;
    let driver = tokio::spawn(connection);
    let installed = schema::install(&mut client).await?;
    let made = match &slot {
        Some(slot) => Some(relay::ensure_slot(&client, slot).await?),
        None => None,
    };
    drop(client);
    let _ = driver.await;
    if installed.from == installed.to {
        println!("pgnotifier schema: already at version {}", installed.to);
    } else {
        println!(
            "pgnotifier schema: version {} -> {}",
            installed.from, installed.to
        );
    }
    if let (Some(slot), Some(made)) = (&slot, made) {
        match made {
            true => println!("pgnotifier slot: created {slot} and its publication"),
            false => println!("pgnotifier slot: {slot} is there already"),
        }
    }
    Ok(())
}

/// An error and its causes on one line, each cause said once (a message
/// that already ends with its cause's text does not repeat it).
pub fn error_text(e: &anyhow::Error) -> String {
    pgnotifier::printable::with_causes(e.as_ref())
}
