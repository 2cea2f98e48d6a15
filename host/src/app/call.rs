//! `pgnotifier call`: a plugin run offline, without PostgreSQL: its
//! `register`, then `on-notify` for one notification (`--channel`,
//! `--payload`) or for each line of a recording (`--input`, the format of
//! [`super::record`]). It prints what each call got and returned, and how
//! long it took; the plugin's own log lines go to stderr as in `run`. The
//! exit status is non-zero when register or any call fails, traps or runs
//! past its deadline, so it scripts into CI.

use crate::dispatch::{Deliver, Notification};
use crate::payload::decode;
use crate::plugins::loader::{self, PluginFiles};
use crate::plugins::SubscriberSettings;
use crate::sandbox::{Sandbox, SandboxConfig};
use anyhow::Context;
use std::path::PathBuf;
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
}

/// One notification to call with.
#[derive(Debug, serde::Deserialize)]
struct Input {
    channel: String,
    payload: String,
    #[serde(default)]
    pid: i32,
}

/// Run the calls; `Ok(false)` when any failed.
pub async fn call(options: CallOptions) -> anyhow::Result<bool> {
    let inputs = inputs(&options)?;
    let json = options.json;
    tokio::task::spawn_blocking(move || run(&options, &inputs, json)).await?
}

fn inputs(options: &CallOptions) -> anyhow::Result<Vec<Input>> {
    match (&options.input, &options.channel, &options.payload) {
        (Some(file), None, None) => {
            let text = crate::files::read_to_string(file)
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
        }]),
        (None, None, _) => anyhow::bail!(
            "say what to call with: --channel CH --payload TEXT, or --input FILE.jsonl"
        ),
        (Some(_), _, _) => {
            anyhow::bail!("--input replaces --channel and --payload: give one or the other")
        }
    }
}

fn run(options: &CallOptions, inputs: &[Input], json: bool) -> anyhow::Result<bool> {
    let sandbox = Sandbox::new(&SandboxConfig::default())?;
    let mut files = PluginFiles::read(&options.plugin)?;
    if let Some(sidecar) = &options.sidecar {
        let text = crate::files::read_to_string(sidecar)
            .with_context(|| format!("cannot read the sidecar {}", sidecar.display()))?;
        files.set_sidecar(sidecar, text);
    }
    if !options.config.is_empty() {
        let pairs = (options.config.iter().map(|pair| config_pair(pair)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        files.set_sidecar_config(&pairs)?;
    }
    let started = Instant::now();
    let mut loaded = match loader::load(&sandbox, &files, SubscriberSettings::default()) {
        Ok(loaded) => loaded,
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
            "call": "register", "ok": true, "channels": loaded.channels,
            "micros": started.elapsed().as_micros() as u64,
        }),
        &format!(
            "register: ok in {:.2} ms; channels: {}",
            started.elapsed().as_secs_f64() * 1e3,
            loaded.channels.join(", ")
        ),
    );
    let mode = loaded.settings.dispatch.payload;
    let mut all_ok = true;
    for input in inputs {
        let notification = Notification {
            channel: input.channel.as_str().into(),
            payload: decode(&input.payload, mode),
            pid: input.pid,
        };
        let started = Instant::now();
        let outcome = loaded.subscriber.on_notify(&notification, None);
        let took = started.elapsed();
        all_ok &= outcome.is_ok();
        let typed = format!("{:?}", notification.payload);
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
    Ok(all_ok)
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
