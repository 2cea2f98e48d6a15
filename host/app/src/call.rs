//! `pgnotifier call`: a plugin run offline, without PostgreSQL: its
//! `register`, then `on-notify` for one notification (`--channel`,
//! `--payload`) or for each line of a recording (`--input`, the format of
//! [`super::record`]). It prints what each call got and returned, and how
//! long it took; the plugin's own log lines go to stderr as in `run`. The
//! exit status is non-zero when register or any call fails, traps or runs
//! past its deadline, so it scripts into CI. `replay` is the same over a
//! recording, at its recorded pace if asked, and ends with a summary.

use anyhow::Context;
use pgnotifier::plugins::{OfflinePlugin, OfflineSettings};
use pgnotifier::DatabaseSettings;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `call` is asked to do.
pub struct CallOptions {
    pub plugin: PathBuf,
    pub channel: Option<String>,
    pub payload: Option<String>,
    pub pid: i32,
    /// `KEY=VALUE` pairs for the plugin's config, over its sidecar's.
    pub config: Vec<String>,
    /// A sidecar to use instead of the one beside the plugin.
    pub sidecar: Option<PathBuf>,
    pub input: Option<PathBuf>,
    pub json: bool,
    /// Keep the recording's pace (`replay --speed 1x`), instead of calling
    /// as fast as possible.
    pub recorded_pace: bool,
    /// End with calls, failures and call-time percentiles (`replay`).
    pub summary: bool,
    /// The database `publish` and `query` use; without one, `publish` is a
    /// dry run and `query` fails.
    pub database_url: Option<String>,
    /// Rows for `query`, by SQL, instead of a database.
    pub query_fixture: Option<PathBuf>,
    /// Let HTTP reach the origins the sidecar grants.
    pub allow_http: bool,
}

/// One notification to call with.
#[derive(Debug, serde::Deserialize)]
struct Input {
    channel: String,
    payload: String,
    #[serde(default)]
    pid: i32,
    /// As `record` writes it; only `replay --speed 1x` reads it.
    #[serde(default)]
    received_at: Option<String>,
}

/// Run the calls; an error when any failed (each said why as it ran).
pub async fn call(options: CallOptions) -> anyhow::Result<()> {
    match calls(options).await? {
        true => Ok(()),
        false => anyhow::bail!("a call failed"),
    }
}

/// Run the calls; `Ok(false)` when any failed.
async fn calls(options: CallOptions) -> anyhow::Result<bool> {
    let inputs = inputs(&options)?;
    let settings = offline_settings(&options)?;
    // Loaded off the async threads, inside the runtime that runs the
    // database connections, if any.
    tokio::task::spawn_blocking(move || run(&options, &inputs, settings)).await?
}

/// How the plugin is loaded: its sidecar, config, database and fixture.
fn offline_settings(options: &CallOptions) -> anyhow::Result<OfflineSettings> {
    let read = |path: &Path, what: &str| {
        pgnotifier::files::read_to_string(path)
            .with_context(|| format!("cannot read the {what} {}", path.display()))
    };
    Ok(OfflineSettings {
        sidecar: match &options.sidecar {
            Some(path) => Some((path.clone(), read(path, "sidecar")?)),
            None => None,
        },
        config: (options.config.iter())
            .map(|pair| config_pair(pair).map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect::<anyhow::Result<_>>()?,
        database: match &options.database_url {
            Some(url) => Some(DatabaseSettings::resolve(Some(url))?),
            None => None,
        },
        query_fixture: match &options.query_fixture {
            Some(path) => Some((path.clone(), read(path, "query fixture")?)),
            None => None,
        },
        allow_http: options.allow_http,
    })
}

fn inputs(options: &CallOptions) -> anyhow::Result<Vec<Input>> {
    match (&options.input, &options.channel, &options.payload) {
        (Some(file), None, None) => {
            let text = pgnotifier::files::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            text.lines()
                .enumerate()
                .filter(|(_, line)| !line.trim().is_empty())
                .map(|(i, line)| {
                    serde_json::from_str(line).with_context(|| {
                        format!("{} line {}: not a notification", file.display(), i + 1)
                    })
                })
                .collect()
        }
        (None, Some(channel), payload) => Ok(vec![Input {
            channel: channel.clone(),
            payload: payload.clone().unwrap_or_default(),
            pid: options.pid,
            received_at: None,
        }]),
        (None, None, _) => anyhow::bail!(
            "say what to call with: --channel CH --payload TEXT, or --input FILE.jsonl"
        ),
        (Some(_), _, _) => {
            anyhow::bail!("--input replaces --channel and --payload: give one or the other")
        }
    }
}

fn run(options: &CallOptions, inputs: &[Input], settings: OfflineSettings) -> anyhow::Result<bool> {
    let json = options.json;
    let started = Instant::now();
    let mut plugin = match OfflinePlugin::load(&options.plugin, settings) {
        Ok(plugin) => plugin,
        Err(e) => {
            report(
                json,
                serde_json::json!({ "call": "register", "ok": false, "error": e.to_string() }),
                &format!("register: failed: {e}"),
            );
            return Ok(false);
        }
    };
    report(
        json,
        serde_json::json!({
            "call": "register", "ok": true, "channels": plugin.channels,
            "micros": started.elapsed().as_micros() as u64,
        }),
        &format!(
            "register: ok in {:.2} ms; channels: {}",
            started.elapsed().as_secs_f64() * 1e3,
            plugin.channels.join(", ")
        ),
    );
    let mut failures = 0usize;
    let mut times = Vec::with_capacity(inputs.len());
    let first = inputs
        .first()
        .and_then(|i| i.received_at.as_deref())
        .and_then(parse_rfc3339);
    let began = Instant::now();
    for input in inputs {
        if options.recorded_pace {
            let at = input.received_at.as_deref().and_then(parse_rfc3339);
            if let (Some(first), Some(at)) = (first, at) {
                let due = began + at.saturating_sub(first);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        }
        let started = Instant::now();
        let (payload, outcome) = plugin.call(&input.channel, &input.payload, input.pid);
        let took = started.elapsed();
        times.push(took);
        failures += usize::from(outcome.is_err());
        let typed = format!("{payload:?}");
        let human = format!(
            "on-notify({}, {typed}, pid {}): {} in {:.3} ms",
            input.channel,
            input.pid,
            match &outcome {
                Ok(()) => "ok".to_owned(),
                Err(failure) => format!("failed: {failure}"),
            },
            took.as_secs_f64() * 1e3
        );
        report(
            json,
            serde_json::json!({
                "call": "on-notify", "channel": input.channel, "payload": input.payload,
                "pid": input.pid, "typed": typed, "ok": outcome.is_ok(),
                "error": outcome.as_ref().err().map(ToString::to_string),
                "micros": took.as_micros() as u64,
            }),
            &human,
        );
    }
    if options.summary {
        summarize(json, &mut times, failures);
    }
    Ok(failures == 0)
}

/// Calls, failures, and the median and 99th percentile of call time.
fn summarize(json: bool, times: &mut [std::time::Duration], failures: usize) {
    times.sort();
    let at = |q: f64| {
        let i = ((times.len() as f64 - 1.0) * q).round() as usize;
        times.get(i).map_or(0.0, |t| t.as_secs_f64() * 1e3)
    };
    let (p50, p99) = (at(0.5), at(0.99));
    report(
        json,
        serde_json::json!({ "summary": { "calls": times.len(), "failures": failures, "p50_ms": p50, "p99_ms": p99 } }),
        &format!(
            "{} calls, {failures} failed; call time p50 {p50:.3} ms, p99 {p99:.3} ms",
            times.len()
        ),
    );
}

/// When `text` (RFC 3339 in UTC, as `record` writes it) was, after the epoch.
fn parse_rfc3339(text: &str) -> Option<std::time::Duration> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.splitn(3, '-').map(str::parse::<i64>);
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let (clock, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut clock = clock.splitn(3, ':').map(str::parse::<u64>);
    let (h, m, sec) = (
        clock.next()?.ok()?,
        clock.next()?.ok()?,
        clock.next()?.ok()?,
    );
    let micros: u64 = format!("{fraction:0<6}").get(..6)?.parse().ok()?;
    let days = u64::try_from(super::record::days_from_civil(year, month, day)).ok()?;
    Some(std::time::Duration::from_micros(
        ((days * 86_400 + h * 3600 + m * 60 + sec) * 1_000_000) + micros,
    ))
}

fn report(json: bool, value: serde_json::Value, human: &str) {
    if json {
        println!("{value}");
    } else {
        println!("{human}");
    }
}

/// `KEY=VALUE`, split.
fn config_pair(text: &str) -> anyhow::Result<(&str, &str)> {
    text.split_once('=')
        .filter(|(key, _)| !key.is_empty())
        .with_context(|| format!("--config {text:?}: expected KEY=VALUE"))
}
