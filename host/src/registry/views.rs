//! The registry as callers see it: plain copies, safe to serialise.

use super::SubscriberSource;
use crate::dispatch::{DurableStats, SubscriberStats};
use serde::{Deserialize, Serialize};

/// A channel as the views show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelView {
    pub channel: String,
    pub muted: bool,
    /// Not muted and with at least one un-muted subscriber: LISTENed.
    pub active: bool,
    /// Notifications received on it since it was added.
    pub received: u64,
    pub subscribers: Vec<ChannelSubscriberView>,
}

/// A subscriber's place on one channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSubscriberView {
    pub id: String,
    pub muted: bool,
    pub quarantined: bool,
}

/// A subscriber as the views show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriberView {
    pub id: String,
    pub source: SubscriberSource,
    pub channels: Vec<SubscriptionView>,
    /// Why the subscriber is quarantined, if it is.
    pub quarantine: Option<String>,
    pub stats: SubscriberStats,
    /// For an at-least-once subscriber: its lag, retries and dead letters.
    pub durable: Option<DurableStats>,
}

/// One of a subscriber's channels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionView {
    pub channel: String,
    /// The subscriber's own mute flag on this channel.
    pub muted: bool,
    /// Whether the channel itself is muted.
    pub channel_muted: bool,
}
