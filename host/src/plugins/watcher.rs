//! Hot reload: watch the plugins folder and sync each file that changes.
//!
//! Changes are debounced here, per path: once a changed file has been quiet
//! for the debounce period (a burst of writes becomes one change), its
//! `NAME.wasm` goes through the plugin [`sync`](super::sync), the same path
//! start-up uses. A timer runs only while a change waits, so an idle host
//! has nothing to wake for. A sidecar change reloads its plugin. Hidden
//! files, such as the temporary file of an atomic deploy, are ignored until
//! renamed.
//!
//! Only events that change content or names count: the host's own reads of a
//! plugin (open, read, close) must not make it read the plugin again. The
//! folder itself is checked every second, so a folder that is removed or moved
//! away and comes back (or is replaced) is watched again and resynced. For a
//! plugin or sidecar that is a symlink, the folder of its target is watched
//! too, so changing the target reloads the plugin.

use super::loader;
use super::sync::{log_load_error, PluginChange, PluginSync};
use crate::error::{Cause, Error, Result};
use crate::printable::with_causes;
use notify::event::{AccessKind, AccessMode, MetadataKind, ModifyKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The longest quiet period a change waits for.
const MAX_DEBOUNCE: Duration = Duration::from_secs(24 * 3600);

/// How often the folder itself is checked for being gone or replaced.
const FOLDER_CHECK: Duration = Duration::from_secs(1);

/// Watches a plugins folder while it lives.
pub struct PluginWatcher {
    task: JoinHandle<()>,
}

impl Drop for PluginWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Load every plugin in `dir`, then keep the subscribers in step with it.
pub(crate) async fn watch(
    sync: &Arc<PluginSync>,
    dir: &Path,
    debounce: Duration,
) -> Result<PluginWatcher> {
    let watch_error = |source: Cause| Error::Watch {
        dir: dir.to_owned(),
        source,
    };
    // Events name absolute paths; a relative folder would never match them.
    let dir = std::fs::canonicalize(dir).map_err(|e| watch_error(e.into()))?;
    // No Instant overflows with it (the config file allows at most a minute).
    let debounce = debounce.min(MAX_DEBOUNCE);
    let (events, incoming) = tokio::sync::mpsc::unbounded_channel::<notify::Result<Changed>>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // The host's own reads (listing the folder, loading a plugin) are
        // events too: dropped here, they never wake the host, let alone
        // make it read again.
        let changed = match event {
            Ok(event) if changes_files(&event.kind) => Ok(event.paths),
            Ok(_) => return,
            Err(e) => Err(e),
        };
        let _ = events.send(changed);
    })
    .map_err(|e| watch_error(e.into()))?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| watch_error(e.into()))?;
    let watched = FolderId::of(&dir);
    // Watch first, then scan: a file that lands in between is seen twice, never missed.
    sync.load_plugins(&dir).await?;
    let mut folder = Folder {
        sync: sync.clone(),
        dir,
        watcher,
        debounce,
        watched,
        links: BTreeMap::new(),
        link_dirs: BTreeSet::new(),
    };
    folder.follow_links();
    Ok(PluginWatcher {
        task: tokio::spawn(folder.follow(incoming)),
    })
}

/// Which folder a path names: a removed and recreated folder is another one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FolderId {
    dev: u64,
    ino: u64,
}

impl FolderId {
    fn of(dir: &Path) -> Option<Self> {
        let meta = std::fs::metadata(dir).ok().filter(|m| m.is_dir())?;
        Some(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// The paths an event may have changed.
type Changed = Vec<PathBuf>;

struct Folder {
    sync: Arc<PluginSync>,
    dir: PathBuf,
    watcher: RecommendedWatcher,
    /// How long a changed file must be quiet before it is applied.
    debounce: Duration,
    /// The folder being watched; `None` while it is gone.
    watched: Option<FolderId>,
    /// Symlink targets, each with the plugins (`NAME.wasm`) that link to it.
    links: BTreeMap<PathBuf, BTreeSet<PathBuf>>,
    /// The folders of those targets, watched beside the plugins folder.
    link_dirs: BTreeSet<PathBuf>,
}

impl Folder {
    async fn follow(mut self, mut incoming: UnboundedReceiver<notify::Result<Changed>>) {
        let mut check = tokio::time::interval(FOLDER_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Each changed path, with when it last changed.
        let mut pending: BTreeMap<PathBuf, Instant> = BTreeMap::new();
        let quiet = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(quiet);
        loop {
            tokio::select! {
                changed = incoming.recv() => match changed {
                    Some(Ok(paths)) => {
                        let now = Instant::now();
                        pending.extend(paths.into_iter().map(|path| (path, now)));
                    }
                    Some(Err(e)) => tracing::warn!(dir = %self.dir.display(), "watching plugins: {e}"),
                    None => return,
                },
                () = &mut quiet, if !pending.is_empty() => {
                    let now = Instant::now();
                    let due: Vec<PathBuf> = (pending.iter())
                        .filter(|(_, at)| now.saturating_duration_since(**at) >= self.debounce)
                        .map(|(path, _)| path.clone())
                        .collect();
                    for path in &due {
                        pending.remove(path);
                    }
                    if !due.is_empty() {
                        self.apply(&due).await;
                    }
                }
                _ = check.tick() => self.check_folder().await,
            }
            if let Some(first) = pending.values().min() {
                quiet.as_mut().reset(*first + self.debounce);
            }
        }
    }

    /// Sync the plugins that `changed` paths belong to, or link to.
    async fn apply(&mut self, changed: &[PathBuf]) {
        // Files vanishing with their folder are not plugins being removed:
        // the folder check says what happened.
        if FolderId::of(&self.dir) != self.watched {
            return self.check_folder().await;
        }
        let mut affected = affected_plugins(&self.dir, changed);
        for path in changed {
            affected.extend(self.links.get(path).into_iter().flatten().cloned());
        }
        for path in affected {
            match self.sync.sync_plugin(&path).await {
                Ok(PluginChange::Unchanged(_) | PluginChange::Absent) => {}
                Ok(change) => tracing::debug!(?change, "plugin folder change applied"),
                Err(e) => log_load_error(&path, &e),
            }
        }
        self.follow_links();
    }

    /// Find the plugins and sidecars that are symlinks, and watch the
    /// folders of their targets (the folders, so a target replaced by a
    /// rename is still seen).
    fn follow_links(&mut self) {
        let mut links: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
        for path in std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
        {
            let is_link =
                std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
            let plugin = match path.extension().and_then(|e| e.to_str()) {
                Some("wasm" | "toml") if is_link => path.with_extension("wasm"),
                _ => continue,
            };
            if let Ok(target) = std::fs::canonicalize(&path) {
                links.entry(target).or_default().insert(plugin);
            }
        }
        let dirs: BTreeSet<PathBuf> = links
            .keys()
            .filter_map(|target| target.parent())
            .filter(|dir| *dir != self.dir)
            .map(Path::to_owned)
            .collect();
        for dir in dirs.difference(&self.link_dirs) {
            if let Err(e) = self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), "cannot watch the folder of a symlinked plugin: {e}");
            }
        }
        for dir in self.link_dirs.difference(&dirs) {
            let _ = self.watcher.unwatch(dir);
        }
        self.links = links;
        self.link_dirs = dirs;
    }

    /// Notice the folder going away, coming back or being replaced.
    async fn check_folder(&mut self) {
        let now = FolderId::of(&self.dir);
        if now == self.watched {
            return;
        }
        let _ = self.watcher.unwatch(&self.dir);
        let running = self.sync.plugins_from(&self.dir).len();
        let Some(_) = now else {
            self.watched = None;
            tracing::warn!(
                dir = %self.dir.display(),
                running,
                "the plugins folder is gone; its subscribers keep running, and it is watched for until it is back"
            );
            return;
        };
        if let Err(e) = self.watcher.watch(&self.dir, RecursiveMode::NonRecursive) {
            // Not marked as watched: the next check tries again.
            tracing::error!(dir = %self.dir.display(), "cannot watch the plugins folder again: {e}");
            return;
        }
        self.watched = now;
        tracing::warn!(dir = %self.dir.display(), "the plugins folder is back (or was replaced); watching it again and syncing every plugin");
        if let Err(e) = self.sync.sync_folder(&self.dir).await {
            tracing::error!(dir = %self.dir.display(), "{}", with_causes(&e));
        }
        self.follow_links();
    }
}

/// Whether an event may have changed a file's content or name. Opening,
/// reading and closing a file without writing never do.
fn changes_files(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Other => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        EventKind::Any | EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
    }
}

/// The `NAME.wasm` paths that changed paths may have changed: the file
/// itself, or its `NAME.toml` sidecar.
fn affected_plugins(dir: &Path, changed: &[PathBuf]) -> BTreeSet<PathBuf> {
    changed
        .iter()
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
