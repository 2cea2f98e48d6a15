//! `pgnotifier ctl`: a client for the admin API of a running host.
//!
//! It finds the host from the same config file, environment and defaults
//! `run` uses. Output is a table for people, or the API's JSON with `--json`.

use super::api::{self, ChannelsBody, Endpoint, ErrorReply};
use super::config::{ControlSettings, DEFAULT_ADMIN_ADDR};
use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Subcommand;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use pgnotifier::durable::DeadLetter;
use pgnotifier::printable::printable;
use pgnotifier::registry::SubscriberSource;
use pgnotifier::HostEvent;
use pgnotifier::{ChannelView, ListenerView, SubscriberView};
use serde::de::DeserializeOwned;
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
    /// Discard a dead letter: it is not delivered again.
    Discard { id: i64 },
    /// Send a test notification on a channel, from the host's connection.
    Notify {
        channel: String,
        #[arg(default_value = "")]
        payload: String,
    },
    /// What happened to the host lately: loads, reload failures,
    /// quarantines, gaps, leadership taken.
    Events,
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

/// Run one command against the host's admin API and print the result: a
/// table, or with `json_output` the API's JSON as it came.
pub async fn execute(
    control: &ControlSettings,
    command: CtlCommand,
    json_output: bool,
) -> anyhow::Result<()> {
    let client = Client::find(control)?;
    let reply = match command {
        CtlCommand::Metrics => {
            print!("{}", client.send(&api::METRICS, "", None).await?);
            return Ok(());
        }
        command => client.run(command).await?,
    };
    if json_output {
        let value: serde_json::Value = serde_json::from_str(&reply.text)?;
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{}", reply.shown.render());
    }
    Ok(())
}

/// A reply, decoded for the table and as it came for `--json`.
struct Reply {
    shown: Shown,
    text: String,
}

/// What a reply holds, as the contract types it.
enum Shown {
    Channels(Vec<ChannelView>),
    Subscribers(Vec<SubscriberView>),
    Listener(ListenerView),
    DeadLetters(Vec<DeadLetter>),
    Events(Vec<HostEvent>),
    Notified(api::Notified),
}

impl Shown {
    fn render(&self) -> String {
        match self {
            Shown::Channels(channels) => channels_table(channels),
            Shown::Subscribers(subscribers) => subscribers_table(subscribers),
            Shown::Listener(listener) => listener_text(listener),
            Shown::DeadLetters(letters) => dead_letters_table(letters),
            Shown::Events(events) => events_table(events),
            Shown::Notified(sent) => {
                format!("sent on {}: {}\n", text(&sent.channel), text(&sent.payload))
            }
        }
    }
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

    /// One command's request, and its reply typed by its endpoint.
    async fn run(&self, command: CtlCommand) -> anyhow::Result<Reply> {
        use CtlCommand as C;
        use Shown as S;
        let channels = ChannelsBody::listing;
        let selection = |channels: Vec<String>, all: bool| {
            if all {
                ChannelsBody::every_channel()
            } else {
                ChannelsBody::listing(channels)
            }
        };
        Ok(match command {
            C::Channels => self.call(&api::CHANNELS, "", None, S::Channels).await?,
            C::Subscribers => {
                self.call(&api::SUBSCRIBERS, "", None, S::Subscribers)
                    .await?
            }
            C::AddChannel { channels: names } => {
                let body = channels(names);
                self.call(&api::ADD_CHANNELS, "", Some(&json(&body)?), S::Channels)
                    .await?
            }
            C::RemoveChannel { channels: names } => {
                let mut reply = None;
                for channel in names {
                    let removed = &api::REMOVE_CHANNEL;
                    reply = Some(self.call(removed, &channel, None, S::Channels).await?);
                }
                reply.context("name at least one channel")?
            }
            C::MuteChannel { channels, all } => {
                let body = selection(channels, all);
                self.call(&api::MUTE_CHANNELS, "", Some(&json(&body)?), S::Channels)
                    .await?
            }
            C::UnmuteChannel { channels, all } => {
                let body = selection(channels, all);
                self.call(&api::UNMUTE_CHANNELS, "", Some(&json(&body)?), S::Channels)
                    .await?
            }
            C::Subscribe {
                id,
                channels: names,
            } => {
                self.on_subscriber(&api::SUBSCRIBE, &id, Some(&json(&channels(names))?))
                    .await?
            }
            C::Unsubscribe {
                id,
                channels: names,
            } => {
                self.on_subscriber(&api::UNSUBSCRIBE, &id, Some(&json(&channels(names))?))
                    .await?
            }
            C::MuteSubscriber {
                id,
                channels: names,
            } => {
                self.on_subscriber(&api::MUTE_SUBSCRIBER, &id, Some(&json(&channels(names))?))
                    .await?
            }
            C::UnmuteSubscriber {
                id,
                channels: names,
            } => {
                self.on_subscriber(&api::UNMUTE_SUBSCRIBER, &id, Some(&json(&channels(names))?))
                    .await?
            }
            C::Reload { id } => self.on_subscriber(&api::RELOAD, &id, None).await?,
            C::Skip { id } => self.on_subscriber(&api::SKIP, &id, None).await?,
            C::DeadLetters => {
                self.call(&api::DEAD_LETTERS, "", None, S::DeadLetters)
                    .await?
            }
            C::Redeliver { id } => {
                let id = id.to_string();
                let mut reply = self
                    .call(&api::REDELIVER, &id, None, |letter| {
                        S::DeadLetters(vec![letter])
                    })
                    .await?;
                // Shown as a list of one, in JSON too.
                reply.text = format!("[{}]", reply.text);
                reply
            }
            C::Discard { id } => {
                let id = id.to_string();
                let mut reply = self
                    .call(&api::DISCARD, &id, None, |letter| {
                        S::DeadLetters(vec![letter])
                    })
                    .await?;
                reply.text = format!("[{}]", reply.text);
                reply
            }
            C::Notify { channel, payload } => {
                let body = json(&api::NotifyBody { payload })?;
                (self.call(&api::NOTIFY, &channel, Some(&body), S::Notified)).await?
            }
            C::Events => self.call(&api::EVENTS, "", None, S::Events).await?,
            C::Start => self.call(&api::START, "", None, S::Listener).await?,
            C::Stop => self.call(&api::STOP, "", None, S::Listener).await?,
            C::Restart => self.call(&api::RESTART, "", None, S::Listener).await?,
            C::Status => self.call(&api::LISTENER, "", None, S::Listener).await?,
            C::Metrics => bail!("the metrics are text, not a reply to show"),
        })
    }

    /// An operation on one subscriber, which answers with it.
    async fn on_subscriber(
        &self,
        endpoint: &Endpoint<SubscriberView>,
        id: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<Reply> {
        self.call(endpoint, id, body, |view| Shown::Subscribers(vec![view]))
            .await
    }

    /// `endpoint` with `parameter` in its route: its reply decoded as the
    /// contract types it, and shown by `show`.
    async fn call<R: DeserializeOwned>(
        &self,
        endpoint: &Endpoint<R>,
        parameter: &str,
        body: Option<&serde_json::Value>,
        show: impl FnOnce(R) -> Shown,
    ) -> anyhow::Result<Reply> {
        let text = self.send(endpoint, parameter, body).await?;
        let reply: R = serde_json::from_str(&text).with_context(|| {
            format!(
                "the host answered {} {} with something this ctl cannot read; \
                 is it the same version of pgnotifier?",
                endpoint.method, endpoint.route
            )
        })?;
        Ok(Reply {
            shown: show(reply),
            text,
        })
    }

    /// One request on a connection of its own; a non-2xx answer is an error
    /// carrying the API's message.
    async fn send<R>(
        &self,
        endpoint: &Endpoint<R>,
        parameter: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<String> {
        let path = endpoint.path(parameter);
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
                .method(endpoint.method.clone())
                .uri(&path)
                .header(hyper::header::HOST, self.addr.to_string());
            if let Some(token) = &self.token {
                request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let payload = match body {
                Some(body) => {
                    request = request.header(hyper::header::CONTENT_TYPE, "application/json");
                    Bytes::from(serde_json::to_vec(body)?)
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
                let message = serde_json::from_str::<ErrorReply>(&text)
                    .map(|reply| reply.error)
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

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

/// Text from the host (channel names a plugin chose, file names) as a
/// table cell, with control characters escaped.
fn text(value: &str) -> String {
    printable(value).into_owned()
}

/// `name`, with the note of the first of `flags` that is set: `orders (muted)`.
fn flagged(name: &str, flags: &[(bool, &str)]) -> String {
    match flags.iter().find(|(set, _)| *set) {
        Some((_, note)) => format!("{} ({note})", text(name)),
        None => text(name),
    }
}

/// A request's body, as the contract types it.
fn json(body: &impl serde::Serialize) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::to_value(body)?)
}

fn events_table(events: &[HostEvent]) -> String {
    let rows = events.iter().map(|e| {
        let kind = serde_json::to_value(e.kind).ok();
        let kind = kind.as_ref().and_then(|k| k.as_str()).unwrap_or("?");
        vec![
            e.seq.to_string(),
            crate::record::rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(e.at_ms)),
            kind.to_owned(),
            text(&e.subject),
            text(&e.detail),
        ]
    });
    table(&["SEQ", "AT", "KIND", "SUBJECT", "DETAIL"], rows.collect())
}

fn dead_letters_table(letters: &[DeadLetter]) -> String {
    let rows = letters.iter().map(|d| {
        vec![
            d.id.to_string(),
            text(&d.subscriber),
            d.event_id.to_string(),
            text(&d.channel),
            d.attempts.to_string(),
            yes_no(d.redeliver),
            text(&d.error),
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

fn channels_table(channels: &[ChannelView]) -> String {
    let rows = channels.iter().map(|c| {
        let subscribers: Vec<String> = c
            .subscribers
            .iter()
            .map(|s| flagged(&s.id, &[(s.quarantined, "quarantined"), (s.muted, "muted")]))
            .collect();
        vec![
            text(&c.channel),
            yes_no(c.muted),
            yes_no(c.active),
            c.received.to_string(),
            subscribers.join(", "),
        ]
    });
    table(
        &["CHANNEL", "MUTED", "ACTIVE", "RECEIVED", "SUBSCRIBERS"],
        rows.collect(),
    )
}

fn subscribers_table(subscribers: &[SubscriberView]) -> String {
    let rows = subscribers.iter().map(|s| {
        let channels: Vec<String> = s
            .channels
            .iter()
            .map(|c| {
                flagged(
                    &c.channel,
                    &[(c.muted, "muted"), (c.channel_muted, "channel muted")],
                )
            })
            .collect();
        let all_muted = !s.channels.is_empty() && s.channels.iter().all(|c| c.muted);
        let state = match &s.quarantine {
            Some(reason) => format!("quarantined: {}", text(reason)),
            None if all_muted => "muted".to_owned(),
            None => "ok".to_owned(),
        };
        let origin = match &s.source {
            SubscriberSource::Plugin {
                path, sha256, wit, ..
            } => format!(
                "{} sha256:{} wit {}",
                text(&path.to_string_lossy()),
                sha256.get(..12).unwrap_or_default(),
                text(wit)
            ),
            SubscriberSource::Native => "native".to_owned(),
        };
        let durable = match &s.durable {
            Some(d) => format!(
                "lag {} ({:.1} s), retries {}, dead {}",
                d.lag_events,
                d.lag_ms as f64 / 1000.0,
                d.retries,
                d.dead_letters
            ),
            None => "-".to_owned(),
        };
        let stats = &s.stats;
        vec![
            text(&s.id),
            channels.join(", "),
            stats.delivered.to_string(),
            stats.failed.to_string(),
            stats.timed_out.to_string(),
            stats.dropped.to_string(),
            stats.queued.to_string(),
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

fn listener_text(listener: &ListenerView) -> String {
    let connected = match listener.backend_pid {
        Some(pid) if listener.connected => format!("yes (backend pid {pid})"),
        _ => yes_no(listener.connected),
    };
    let listening = if listener.listening.is_empty() {
        "(nothing)".to_owned()
    } else {
        let names: Vec<String> = listener.listening.iter().map(|c| text(c)).collect();
        names.join(", ")
    };
    let cluster = &listener.cluster;
    let role = match &cluster.cluster {
        Some(name) => {
            let group = cluster
                .group
                .as_deref()
                .map(|g| format!(", group {}", text(g)))
                .unwrap_or_default();
            let leader = cluster.leader.as_deref().map_or("none seen".into(), text);
            format!(
                "{} of cluster {}{group}; leader: {leader}; takeovers: {}",
                cluster.role.as_str(),
                text(name),
                cluster.takeovers
            )
        }
        None => "alone (no cluster)".to_owned(),
    };
    let at = |ms: u64| crate::record::rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(ms));
    let last_gap = listener.last_gap.as_ref().map_or("none".to_owned(), |gap| {
        let channels: Vec<String> = gap.channels.iter().map(|c| text(c)).collect();
        format!(
            "{} to {} on {}: {}",
            gap.lost_at_ms.map_or("?".to_owned(), at),
            at(gap.resumed_at_ms),
            channels.join(", "),
            text(&gap.cause)
        )
    });
    format!(
        "running: {}\nconnected: {connected}\nrole: {role}\nlistening: {listening}\nreconnects: {}\n\
         NOTIFY queue: {:.1}% full\nlast gap: {last_gap}\n",
        yes_no(listener.running),
        listener.reconnects,
        listener.notify_queue_usage * 100.0,
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
    fn tables_align_their_columns() {
        let out = table(&["A", "BB"], vec![vec!["long".into(), "x".into()]]);
        assert_eq!(out, "A     BB\nlong  x\n");
    }
}
