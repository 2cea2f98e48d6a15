//! A blocking facade over [`Notifier`](crate::Notifier), for synchronous code.
//!
//! It owns a small tokio runtime, so callers never see async.

use crate::{
    ChannelView, DatabaseSettings, IntoChannels, PluginWatcher, Result, Selection, ShutdownReport,
    Subscriber, SubscriberView,
};
use std::path::Path;
use std::time::Duration;

/// Same operations as [`crate::Notifier`], each blocking until done.
pub struct Notifier {
    runtime: tokio::runtime::Runtime,
    inner: crate::Notifier,
}

impl Notifier {
    pub fn new(database: DatabaseSettings) -> std::io::Result<Self> {
        Self::from_async(crate::Notifier::new(database))
    }

    /// Wrap a configured async notifier.
    pub fn from_async(inner: crate::Notifier) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pgn:rt")
            .enable_all()
            .build()?;
        Ok(Self { runtime, inner })
    }

    pub fn add_channels(&self, channels: impl IntoChannels) -> Result<()> {
        self.inner.add_channels(channels)
    }

    pub fn remove_channels(&self, channels: impl IntoChannels) -> Result<()> {
        self.inner.remove_channels(channels)
    }

    pub fn subscribe(
        &self,
        id: &str,
        channels: impl IntoChannels,
        subscriber: Subscriber,
    ) -> Result<()> {
        // An at-least-once subscriber's feeder runs on this runtime.
        let _runtime = self.runtime.enter();
        self.inner.subscribe(id, channels, subscriber)
    }

    pub fn subscribe_to(&self, id: &str, channels: impl IntoChannels) -> Result<()> {
        self.inner.subscribe_to(id, channels)
    }

    pub fn unsubscribe(&self, id: &str, channels: impl IntoChannels) -> Result<()> {
        self.inner.unsubscribe(id, channels)
    }

    pub fn remove_subscriber(&self, id: &str) -> Result<()> {
        self.runtime.block_on(self.inner.remove_subscriber(id))
    }

    pub fn mute_channels(&self, which: impl Into<Selection>) -> Result<()> {
        self.inner.mute_channels(which)
    }

    pub fn unmute_channels(&self, which: impl Into<Selection>) -> Result<()> {
        self.inner.unmute_channels(which)
    }

    pub fn mute_subscriber(&self, id: &str, which: impl Into<Selection>) -> Result<()> {
        self.inner.mute_subscriber(id, which)
    }

    pub fn unmute_subscriber(&self, id: &str, which: impl Into<Selection>) -> Result<()> {
        self.inner.unmute_subscriber(id, which)
    }

    pub fn channels(&self) -> Vec<ChannelView> {
        self.inner.channels()
    }

    pub fn subscribers(&self) -> Vec<SubscriberView> {
        self.inner.subscribers()
    }

    pub fn load_plugin(&self, path: &Path) -> Result<String> {
        self.runtime.block_on(self.inner.load_plugin(path))
    }

    pub fn load_plugins(&self, dir: &Path) -> Result<Vec<(std::path::PathBuf, Result<String>)>> {
        self.runtime.block_on(self.inner.load_plugins(dir))
    }

    /// Load the folder's plugins and follow it until the watcher is dropped.
    pub fn watch_plugins(&self, dir: &Path) -> Result<PluginWatcher> {
        self.runtime.block_on(self.inner.watch_plugins(dir))
    }

    pub fn start(&self) -> Result<()> {
        self.runtime.block_on(self.inner.start())
    }

    pub fn stop(&self) {
        self.runtime.block_on(self.inner.stop())
    }

    pub fn restart(&self) -> Result<()> {
        self.runtime.block_on(self.inner.restart())
    }

    pub fn is_running(&self) -> bool {
        self.inner.is_running()
    }

    pub fn wait_until_listening(&self, timeout: Duration) -> Result<()> {
        self.runtime
            .block_on(self.inner.wait_until_listening(timeout))
    }

    pub fn shutdown(&self, drain_timeout: Duration) -> ShutdownReport {
        self.runtime.block_on(self.inner.shutdown(drain_timeout))
    }

    /// The async notifier underneath.
    pub fn as_async(&self) -> &crate::Notifier {
        &self.inner
    }
}
