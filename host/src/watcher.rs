//! Hot reload: watch the plugins folder and sync each file that changes.
//!
//! Events are debounced (a burst of writes becomes one change), then every
//! affected `NAME.wasm` goes through [`Notifier::sync_plugin`], the same path
//! start-up uses. A sidecar change reloads its plugin. Hidden files, such as
//! the temporary file of an atomic deploy, are ignored until renamed.

use crate::error::{Error, Result};
use crate::loader;
use crate::notifier::{Notifier, PluginChange};
use notify_debouncer_full::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{
    new_debouncer, DebounceEventResult, DebouncedEvent, Debouncer, RecommendedCache,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Watches a plugins folder while it lives.
pub struct PluginWatcher {
    _debouncer: Debouncer<RecommendedWatcher, RecommendedCache>,
    task: JoinHandle<()>,
}

impl Drop for PluginWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Load every plugin in `dir`, then keep the subscribers in step with it.
pub(crate) async fn watch(
    notifier: &Notifier,
    dir: &Path,
    debounce: Duration,
) -> Result<PluginWatcher> {
    let (events, mut incoming) = tokio::sync::mpsc::unbounded_channel::<DebounceEventResult>();
    let mut debouncer = new_debouncer(debounce, None, move |result| {
        let _ = events.send(result);
    })
    .map_err(|e| Error::Watch(format!("{}: {e}", dir.display())))?;
    debouncer
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| Error::Watch(format!("{}: {e}", dir.display())))?;
    // Watch first, then scan: a file that lands in between is seen twice, never missed.
    notifier.load_plugins(dir).await?;

    let notifier = notifier.clone();
    let dir = dir.to_owned();
    let task = tokio::spawn(async move {
        while let Some(result) = incoming.recv().await {
            match result {
                Ok(events) => {
                    for path in affected_plugins(&dir, &events) {
                        match notifier.sync_plugin(&path).await {
                            Ok(PluginChange::Unchanged(_) | PluginChange::Absent) => {}
                            Ok(change) => tracing::debug!(?change, "plugin folder change applied"),
                            Err(e) => {
                                let id = loader::subscriber_id(&path);
                                tracing::error!(subscriber = %id.as_deref().unwrap_or("?"), "{e}");
                            }
                        }
                    }
                }
                Err(errors) => {
                    for e in errors {
                        tracing::warn!(dir = %dir.display(), "watching plugins: {e}");
                    }
                }
            }
        }
    });
    Ok(PluginWatcher {
        _debouncer: debouncer,
        task,
    })
}

/// The `NAME.wasm` paths that a batch of events may have changed: the file
/// itself, or its `NAME.toml` sidecar.
fn affected_plugins(dir: &Path, events: &[DebouncedEvent]) -> BTreeSet<PathBuf> {
    events
        .iter()
        .flat_map(|e| e.paths.iter())
        .filter(|p| p.parent() == Some(dir))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.'))
        })
        .filter_map(|p| match p.extension().and_then(|e| e.to_str()) {
            Some("wasm") => Some(p.clone()),
            Some("toml") => Some(p.with_extension("wasm")),
            _ => None,
        })
        .filter(|p| loader::subscriber_id(p).is_ok())
        .collect()
}
