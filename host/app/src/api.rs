//! The admin API's contract: each operation's method and route, the body
//! it takes and the reply it gives. The server ([`crate::admin`]) routes by
//! it and the client ([`crate::ctl`]) calls by it, so a route or a field
//! renamed on one side is a compile error, not a blank column, on the other.
//!
//! Replies are the library's views ([`ChannelView`], [`SubscriberView`],
//! [`ListenerView`], [`DeadLetter`]) as JSON; an error is [`ErrorReply`].

use hyper::Method;
use pgnotifier::durable::DeadLetter;
use pgnotifier::{ChannelView, ClusterView, HostEvent, ListenerView, SubscriberView};
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::marker::PhantomData;

/// One operation: its method, its route, and `Reply`, the JSON it answers
/// with. A route holds at most one parameter, written `{name}`.
pub struct Endpoint<Reply> {
    pub method: Method,
    pub route: &'static str,
    reply: PhantomData<fn() -> Reply>,
}

impl<Reply> Endpoint<Reply> {
    const fn new(method: Method, route: &'static str) -> Self {
        Self {
            method,
            route,
            reply: PhantomData,
        }
    }

    /// The route with `parameter` percent-encoded in place of its `{name}`
    /// (names of channels and subscribers may hold any character).
    pub fn path(&self, parameter: &str) -> String {
        match (self.route.find('{'), self.route.find('}')) {
            (Some(open), Some(close)) => format!(
                "{}{}{}",
                &self.route[..open],
                encode(parameter),
                &self.route[close + 1..]
            ),
            _ => self.route.to_owned(),
        }
    }
}

// Channels.
pub const CHANNELS: Endpoint<Vec<ChannelView>> = Endpoint::new(Method::GET, "/v1/channels");
pub const ADD_CHANNELS: Endpoint<Vec<ChannelView>> = Endpoint::new(Method::POST, "/v1/channels");
/// Send a test notification on a channel: body [`NotifyBody`].
pub const NOTIFY: Endpoint<Notified> = Endpoint::new(Method::POST, "/v1/channels/{name}/notify");
pub const REMOVE_CHANNEL: Endpoint<Vec<ChannelView>> =
    Endpoint::new(Method::DELETE, "/v1/channels/{channel}");
pub const MUTE_CHANNELS: Endpoint<Vec<ChannelView>> =
    Endpoint::new(Method::POST, "/v1/channels/mute");
pub const UNMUTE_CHANNELS: Endpoint<Vec<ChannelView>> =
    Endpoint::new(Method::POST, "/v1/channels/unmute");

// Subscribers.
pub const SUBSCRIBERS: Endpoint<Vec<SubscriberView>> =
    Endpoint::new(Method::GET, "/v1/subscribers");
pub const SUBSCRIBER: Endpoint<SubscriberView> = Endpoint::new(Method::GET, "/v1/subscribers/{id}");
pub const SUBSCRIBE: Endpoint<SubscriberView> =
    Endpoint::new(Method::POST, "/v1/subscribers/{id}/subscribe");
pub const UNSUBSCRIBE: Endpoint<SubscriberView> =
    Endpoint::new(Method::POST, "/v1/subscribers/{id}/unsubscribe");
pub const MUTE_SUBSCRIBER: Endpoint<SubscriberView> =
    Endpoint::new(Method::POST, "/v1/subscribers/{id}/mute");
pub const UNMUTE_SUBSCRIBER: Endpoint<SubscriberView> =
    Endpoint::new(Method::POST, "/v1/subscribers/{id}/unmute");
pub const RELOAD: Endpoint<SubscriberView> =
    Endpoint::new(Method::POST, "/v1/subscribers/{id}/reload");
pub const SKIP: Endpoint<SubscriberView> = Endpoint::new(Method::POST, "/v1/subscribers/{id}/skip");

// Dead letters.
pub const DEAD_LETTERS: Endpoint<Vec<DeadLetter>> = Endpoint::new(Method::GET, "/v1/dead-letters");
pub const REDELIVER: Endpoint<DeadLetter> =
    Endpoint::new(Method::POST, "/v1/dead-letters/{id}/redeliver");
pub const DISCARD: Endpoint<DeadLetter> = Endpoint::new(Method::DELETE, "/v1/dead-letters/{id}");

// The host's own events, after `?after=SEQ` (default 0: all kept).
pub const EVENTS: Endpoint<Vec<HostEvent>> = Endpoint::new(Method::GET, "/v1/events");

// The listener.
pub const LISTENER: Endpoint<ListenerView> = Endpoint::new(Method::GET, "/v1/listener");
pub const START: Endpoint<ListenerView> = Endpoint::new(Method::POST, "/v1/listener/start");
pub const STOP: Endpoint<ListenerView> = Endpoint::new(Method::POST, "/v1/listener/stop");
pub const RESTART: Endpoint<ListenerView> = Endpoint::new(Method::POST, "/v1/listener/restart");

// The live state, as server-sent events (`event: state`, its data a
// [`LiveState`]): one at once, then one on each change, at most twice a
// second; the stream ends when the host shuts down.
pub const STREAM: Endpoint<LiveState> = Endpoint::new(Method::GET, "/v1/stream");

// Health, without a token; and the metrics, as Prometheus text.
pub const HEALTH: Endpoint<String> = Endpoint::new(Method::GET, "/healthz");
pub const READY: Endpoint<Readiness> = Endpoint::new(Method::GET, "/readyz");
pub const METRICS: Endpoint<String> = Endpoint::new(Method::GET, "/metrics");

/// The body of the operations on channels: `{"channels": [...]}`, or for
/// mutes `{"all": true}`. An operation with no body takes an empty one, or `{}`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelsBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

impl ChannelsBody {
    /// These channels.
    pub fn listing(channels: Vec<String>) -> Self {
        Self {
            channels: Some(channels),
            all: false,
        }
    }

    /// Every channel (mutes only).
    pub fn every_channel() -> Self {
        Self {
            channels: None,
            all: true,
        }
    }
}

/// `/readyz`: 200 with the cluster when ready, 503 with the reason when not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What the live stream sends: the listener, the channels and the
/// subscribers, as their own routes give them, and the number of the
/// host's latest event: a reader asks [`EVENTS`] for those after the last
/// it has.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LiveState {
    pub listener: ListenerView,
    pub channels: Vec<ChannelView>,
    pub subscribers: Vec<SubscriberView>,
    pub last_event: u64,
}

/// The body of [`NOTIFY`]: the payload to send (default empty).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyBody {
    #[serde(default)]
    pub payload: String,
}

/// What [`NOTIFY`] sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notified {
    pub channel: String,
    pub payload: String,
}

/// The query of [`EVENTS`].
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    #[serde(default)]
    pub after: u64,
}

/// Every error's body, with a 4xx or 5xx status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

/// Percent-encode a path segment.
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
    fn a_parameter_fills_its_place_in_the_route() {
        assert_eq!(SKIP.path("a/b"), "/v1/subscribers/a%2Fb/skip");
        assert_eq!(REMOVE_CHANNEL.path("x y"), "/v1/channels/x%20y");
        assert_eq!(CHANNELS.path("ignored"), "/v1/channels");
    }

    #[test]
    fn bodies_read_back_as_they_were_written() {
        let all = serde_json::to_string(&ChannelsBody::every_channel()).unwrap();
        assert_eq!(all, r#"{"all":true}"#);
        let listed = serde_json::to_string(&ChannelsBody::listing(vec!["a".into()])).unwrap();
        assert_eq!(listed, r#"{"channels":["a"]}"#);
    }
}
