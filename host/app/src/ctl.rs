//! `pgnotifier ctl`: a client for the admin API of a running host.
//!
//! It finds the host from the same config file, environment and defaults
//! `run` uses. Output is a table for people, or the API's JSON with `--json`.

use super::config::{ControlSettings, DEFAULT_ADMIN_ADDR};
use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Subcommand;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use serde_json::{json, Value};
use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

/// The operations, named after the library's.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// List channels: muted, active (LISTENed), received, subscribers.
    Channels,
    /// List subscribers: channels, mutes, quarantine, counters, plugin file.
    Subscribers,
    /// Add channels (LISTENed once a subscriber is on them).
    AddChannel {
        #[arg(required = true)]
        channels: Vec<String>,
    },
    /// Remove channels and every subscription to them.
    RemoveChannel {
        #[arg(required = true)]
        channels: Vec<String>,
    },
    /// Mute channels: nothing on them is delivered, and they are UNLISTENed.
    MuteChannel {
        #[arg(required_unless_present = "all")]
        channels: Vec<String>,
        /// Every channel.
        #[arg(long, conflicts_with = "channels")]
        all: bool,
    },
    /// Unmute channels.
    UnmuteChannel {
        #[arg(required_unless_present = "all")]
        channels: Vec<String>,
        /// Every channel.
        #[arg(long, conflicts_with = "channels")]
        all: bool,
    },
    /// Subscribe a loaded subscriber to more channels.
    Subscribe {
        id: String,
        #[arg(required = true)]
        channels: Vec<String>,
    },
    /// Unsubscribe a subscriber from channels; it stays loaded.
    Unsubscribe {
        id: String,
        #[arg(required = true)]
        channels: Vec<String>,
    },
    /// Mute a subscriber on some of its channels, or on all without any.
    MuteSubscriber { id: String, channels: Vec<String> },
    /// Unmute a subscriber (on all its channels without any); ends a quarantine.
    UnmuteSubscriber { id: String, channels: Vec<String> },
    /// Reload a plugin from its file, with a fresh instance.
    Reload { id: String },
    /// List dead letters: events an at-least-once subscriber failed on every attempt.
    DeadLetters,
    /// Deliver a dead letter again, to its own subscriber.
    Redeliver { id: i64 },
    /// Move an at-least-once subscriber past every event sent so far (they are skipped).
    Skip { id: String },
    /// Connect and LISTEN.
    Start,
    /// UNLISTEN and disconnect; subscribers stay loaded.
    Stop,
    /// Stop, then start.
    Restart,
    /// Whether the listener runs, is connected, and what it LISTENs.
    Status,
    /// Print the Prometheus metrics.
    Metrics,
}

/// Run one command against the host's admin API and print the result.
pub async fn execute(
    control: &ControlSettings,
    command: CtlCommand,
    json_output: bool,
) -> anyhow::Result<()> {
    let client = Client::find(control)?;
    let subscriber_path = |id: &str, op: &str| format!("/v1/subscribers/{}/{op}", encode(id));
    let channels_body = |channels: Vec<String>| json!({ "channels": channels });
    let selection = |channels: Vec<String>, all: bool| {
        if all {
            json!({ "all": true })
        } else {
            json!({ "channels": channels })
        }
    };
    let (reply, shape) = match command {
        CtlCommand::Channels => (client.get("/v1/channels").await?, Shape::Channels),
        CtlCommand::Subscribers => (client.get("/v1/subscribers").await?, Shape::Subscribers),
        CtlCommand::AddChannel { channels } => (
            client.post("/v1/channels", channels_body(channels)).await?,
            Shape::Channels,
        ),
        CtlCommand::RemoveChannel { channels } => {
            let mut reply = Value::Null;
            for channel in channels {
                let path = format!("/v1/channels/{}", encode(&channel));
                reply = client.call(Method::DELETE, &path, None).await?;
            }
            (reply, Shape::Channels)
        }
        CtlCommand::MuteChannel { channels, all } => (
            client
                .post("/v1/channels/mute", selection(channels, all))
                .await?,
            Shape::Channels,
        ),
        CtlCommand::UnmuteChannel { channels, all } => (
            client
                .post("/v1/channels/unmute", selection(channels, all))
                .await?,
            Shape::Channels,
        ),
        CtlCommand::Subscribe { id, channels } => (
            client
                .post(&subscriber_path(&id, "subscribe"), channels_body(channels))
                .await?,
            Shape::Subscriber,
        ),
        CtlCommand::Unsubscribe { id, channels } => (
            client
                .post(
                    &subscriber_path(&id, "unsubscribe"),
                    channels_body(channels),
                )
                .await?,
            Shape::Subscriber,
        ),
        CtlCommand::MuteSubscriber { id, channels } => (
            client
                .post(&subscriber_path(&id, "mute"), channels_body(channels))
                .await?,
            Shape::Subscriber,
        ),
        CtlCommand::UnmuteSubscriber { id, channels } => (
            client
                .post(&subscriber_path(&id, "unmute"), channels_body(channels))
                .await?,
            Shape::Subscriber,
        ),
        CtlCommand::Reload { id } => (
            client
                .post(&subscriber_path(&id, "reload"), json!({}))
                .await?,
            Shape::Subscriber,
        ),
        CtlCommand::DeadLetters => (client.get("/v1/dead-letters").await?, Shape::DeadLetters),
        CtlCommand::Redeliver { id } => {
            let path = format!("/v1/dead-letters/{id}/redeliver");
            let reply = client.post(&path, json!({})).await?;
            (Value::Array(vec![reply]), Shape::DeadLetters)
        }
        CtlCommand::Skip { id } => (
            client
                .post(&subscriber_path(&id, "skip"), json!({}))
                .await?,
            Shape::Subscriber,
        ),
        CtlCommand::Start => (
            client.post("/v1/listener/start", json!({})).await?,
            Shape::Listener,
        ),
        CtlCommand::Stop => (
            client.post("/v1/listener/stop", json!({})).await?,
            Shape::Listener,
        ),
        CtlCommand::Restart => (
            client.post("/v1/listener/restart", json!({})).await?,
            Shape::Listener,
        ),
        CtlCommand::Status => (client.get("/v1/listener").await?, Shape::Listener),
        CtlCommand::Metrics => {
            print!("{}", client.text("/metrics").await?);
            return Ok(());
        }
    };
    if json_output {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        print!("{}", shape.render(&reply));
    }
    Ok(())
}

/// A connection target: the admin address and token.
struct Client {
    addr: SocketAddr,
    token: Option<String>,
}

const TIMEOUT: Duration = Duration::from_secs(30);

impl Client {
    /// The address the host using this data dir wrote down; else the
    /// configured one. Port 0 (chosen by the host at start) needs the file.
    fn find(control: &ControlSettings) -> anyhow::Result<Self> {
        let mut addr = control.admin_addr;
        let file = control.addr_file();
        let configured = addr.port() != 0 && addr.to_string() != DEFAULT_ADMIN_ADDR;
        if !configured {
            match pgnotifier::files::read_to_string(&file) {
                Ok(text) => {
                    addr = text.trim().parse().with_context(|| {
                        format!("{} holds {:?}, not an address", file.display(), text.trim())
                    })?;
                }
                Err(e) if addr.port() == 0 => {
                    return Err(e).with_context(|| {
                        format!(
                            "admin_addr has port 0 (chosen by the host at start) and {} cannot be read; \
                             is `pgnotifier run` running with the same data_dir?",
                            file.display()
                        )
                    })
                }
                Err(_) => {}
            }
        }
        Ok(Self {
            addr,
            token: control.admin_token.clone(),
        })
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let text = self.send(method, path, body).await?;
        serde_json::from_str(&text)
            .with_context(|| format!("the host answered {path} with something not JSON"))
    }

    async fn text(&self, path: &str) -> anyhow::Result<String> {
        self.send(Method::GET, path, None).await
    }

    /// One request on a connection of its own; a non-2xx answer is an error
    /// carrying the API's message.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<String> {
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .with_context(|| {
                    format!(
                    "cannot reach the admin API at {}; is `pgnotifier run` running with the same \
                     config (admin_addr, data_dir)?",
                    self.addr
                )
                })?;
            let io = hyper_util::rt::TokioIo::new(stream);
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(connection);
            let mut request = Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, self.addr.to_string());
            if let Some(token) = &self.token {
                request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let payload = match body {
                Some(body) => {
                    request = request.header(hyper::header::CONTENT_TYPE, "application/json");
                    Bytes::from(serde_json::to_vec(&body)?)
                }
                None => Bytes::new(),
            };
            let response = sender
                .send_request(request.body(Full::new(payload))?)
                .await?;
            let status = response.status();
            if let Some(warning) = response.headers().get(hyper::header::WARNING) {
                eprintln!(
                    "warning: {}",
                    pgnotifier::printable::printable(&String::from_utf8_lossy(warning.as_bytes()))
                );
            }
            let bytes = response.into_body().collect().await?.to_bytes();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if !status.is_success() {
                let message = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or(text);
                bail!(
                    "{} (HTTP {})",
                    pgnotifier::printable::printable(&message),
                    status.as_u16()
                );
            }
            anyhow::Ok(text)
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .with_context(|| {
                format!(
                    "the admin API at {} did not answer within {TIMEOUT:?}",
                    self.addr
                )
            })?
    }
}

/// Percent-encode a path segment: channel names may hold any character.
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// How to print a reply.
enum Shape {
    Channels,
    Subscribers,
    Subscriber,
    Listener,
    DeadLetters,
}

impl Shape {
    fn render(&self, reply: &Value) -> String {
        match self {
            Shape::Channels => channels_table(reply),
            Shape::Subscribers => subscribers_table(reply),
            Shape::Subscriber => subscribers_table(&Value::Array(vec![reply.clone()])),
            Shape::Listener => listener_text(reply),
            Shape::DeadLetters => dead_letters_table(reply),
        }
    }
}

fn yes_no(value: &Value) -> String {
    if value.as_bool() == Some(true) {
        "yes"
    } else {
        "no"
    }
    .to_owned()
}

/// A value as a table cell; strings from the host (channel names a plugin
/// chose, file names) with control characters escaped.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => pgnotifier::printable::printable(s).into_owned(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn is_true(value: &Value) -> bool {
    value.as_bool() == Some(true)
}

/// `name`, with the note of the first of `flags` set in `entry`: `orders (muted)`.
fn flagged(name: String, entry: &Value, flags: &[(&str, &str)]) -> String {
    match flags.iter().find(|(key, _)| is_true(&entry[*key])) {
        Some((_, note)) => format!("{name} ({note})"),
        None => name,
    }
}

fn items(reply: &Value) -> &[Value] {
    reply.as_array().map_or(&[], Vec::as_slice)
}

fn dead_letters_table(reply: &Value) -> String {
    let rows = items(reply).iter().map(|d| {
        vec![
            text(&d["id"]),
            text(&d["subscriber"]),
            text(&d["event_id"]),
            text(&d["channel"]),
            text(&d["attempts"]),
            yes_no(&d["redeliver"]),
            text(&d["error"]),
        ]
    });
    table(
        &[
            "ID",
            "SUBSCRIBER",
            "EVENT",
            "CHANNEL",
            "ATTEMPTS",
            "REDELIVER",
            "ERROR",
        ],
        rows.collect(),
    )
}

fn channels_table(reply: &Value) -> String {
    let rows = items(reply).iter().map(|c| {
        let subscribers: Vec<String> = items(&c["subscribers"])
            .iter()
            .map(|s| {
                flagged(
                    text(&s["id"]),
                    s,
                    &[("quarantined", "quarantined"), ("muted", "muted")],
                )
            })
            .collect();
        vec![
            text(&c["channel"]),
            yes_no(&c["muted"]),
            yes_no(&c["active"]),
            text(&c["received"]),
            subscribers.join(", "),
        ]
    });
    table(
        &["CHANNEL", "MUTED", "ACTIVE", "RECEIVED", "SUBSCRIBERS"],
        rows.collect(),
    )
}

fn subscribers_table(reply: &Value) -> String {
    let rows = items(reply).iter().map(|s| {
        let channels: Vec<String> = items(&s["channels"])
            .iter()
            .map(|c| {
                flagged(
                    text(&c["channel"]),
                    c,
                    &[("muted", "muted"), ("channel_muted", "channel muted")],
                )
            })
            .collect();
        let all_muted =
            !channels.is_empty() && items(&s["channels"]).iter().all(|c| is_true(&c["muted"]));
        let state = match &s["quarantine"] {
            Value::String(reason) => format!("quarantined: {reason}"),
            _ if all_muted => "muted".to_owned(),
            _ => "ok".to_owned(),
        };
        let source = &s["source"];
        let origin = match source["kind"].as_str() {
            Some("plugin") => format!(
                "{} sha256:{} wit {}",
                text(&source["path"]),
                text(&source["sha256"]).get(..12).unwrap_or_default(),
                text(&source["wit"])
            ),
            other => other.unwrap_or_default().to_owned(),
        };
        let stats = &s["stats"];
        let durable = match &s["durable"] {
            Value::Object(_) => {
                let d = &s["durable"];
                let seconds = d["lag_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
                format!(
                    "lag {} ({seconds:.1} s), retries {}, dead {}",
                    text(&d["lag_events"]),
                    text(&d["retries"]),
                    text(&d["dead_letters"])
                )
            }
            _ => "-".to_owned(),
        };
        vec![
            text(&s["id"]),
            channels.join(", "),
            text(&stats["delivered"]),
            text(&stats["failed"]),
            text(&stats["timed_out"]),
            text(&stats["dropped"]),
            text(&stats["queued"]),
            durable,
            state,
            origin,
        ]
    });
    let header = [
        "ID",
        "CHANNELS",
        "DELIVERED",
        "FAILED",
        "TIMED-OUT",
        "DROPPED",
        "QUEUED",
        "AT-LEAST-ONCE",
        "STATE",
        "SOURCE",
    ];
    table(&header, rows.collect())
}

fn listener_text(reply: &Value) -> String {
    let connected = match reply["backend_pid"].as_i64() {
        Some(pid) if is_true(&reply["connected"]) => {
            format!("yes (backend pid {pid})")
        }
        _ => yes_no(&reply["connected"]),
    };
    let listening: Vec<String> = items(&reply["listening"]).iter().map(text).collect();
    let listening = if listening.is_empty() {
        "(nothing)".to_owned()
    } else {
        listening.join(", ")
    };
    let cluster = &reply["cluster"];
    let role = match cluster["cluster"].as_str() {
        Some(name) => {
            let group = cluster["group"]
                .as_str()
                .map(|g| format!(", group {g}"))
                .unwrap_or_default();
            let leader = cluster["leader"].as_str().unwrap_or("none seen");
            format!(
                "{} of cluster {name}{group}; leader: {leader}; takeovers: {}",
                text(&cluster["role"]),
                text(&cluster["takeovers"])
            )
        }
        None => "alone (no cluster)".to_owned(),
    };
    format!(
        "running: {}\nconnected: {connected}\nrole: {role}\nlistening: {listening}\nreconnects: {}\n",
        yes_no(&reply["running"]),
        text(&reply["reconnects"]),
    )
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:width$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode("orders"), "orders");
        assert_eq!(encode("a b/\"c\""), "a%20b%2F%22c%22");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn tables_align_their_columns() {
        let out = table(&["A", "BB"], vec![vec!["long".into(), "x".into()]]);
        assert_eq!(out, "A     BB\nlong  x\n");
    }
}
