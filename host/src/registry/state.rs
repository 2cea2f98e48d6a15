//! Persisted runtime state: the mutes, quarantines, channels and
//! subscriptions changed while the host runs, kept in `state.json` in the
//! data dir so a restart restores them.
//!
//! Only what differs from what the plugins declare is stored. The file is
//! written atomically (temp file, fsync, rename). A file that cannot be read
//! is reported and set aside, and the host starts without it.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

const FILE_NAME: &str = "state.json";
const VERSION: u32 = 1;

/// What a restart restores.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeState {
    pub version: u32,
    /// Channels that are muted or that no subscriber declares.
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelState>,
    /// Subscribers whose channels or flags differ from what they declare.
    #[serde(default)]
    pub subscribers: BTreeMap<String, SubscriberState>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelState {
    pub muted: bool,
}

/// One subscriber's changes, relative to the channels it declares.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriberState {
    /// Channels it is muted on.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub muted: BTreeSet<String>,
    /// Channels subscribed at runtime, beyond those it declares.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub subscribed: BTreeSet<String>,
    /// Declared channels unsubscribed at runtime.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub unsubscribed: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<SavedQuarantine>,
}

impl SubscriberState {
    pub fn is_empty(&self) -> bool {
        self.muted.is_empty()
            && self.subscribed.is_empty()
            && self.unsubscribed.is_empty()
            && self.quarantine.is_none()
    }
}

/// A quarantine, with the plugin version it was for: a new version ends it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQuarantine {
    pub reason: String,
    /// SHA-256 of the plugin file quarantined; none for native subscribers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The state file, and what was last written to it.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    written: Vec<u8>,
    /// Why the last save failed, while the file is behind the state.
    failure: Option<String>,
}

impl StateFile {
    /// Open `dir/state.json` (creating `dir`), and read what it holds. A
    /// missing file is an empty state; an unreadable one is renamed to
    /// `state.json.corrupt-UNIXTIME`, logged, and replaced by an empty state.
    pub fn open(dir: &Path) -> std::io::Result<(Self, RuntimeState)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let (state, written) = match crate::files::read(&path) {
            Ok(bytes) => match parse(&bytes) {
                Ok(state) => (state, bytes),
                Err(reason) => {
                    let aside = set_aside(&path)?;
                    tracing::error!(
                        state_file = %path.display(),
                        set_aside = %aside.display(),
                        "state file unreadable ({reason}); starting without saved mutes and subscriptions"
                    );
                    (RuntimeState::default(), Vec::new())
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (RuntimeState::default(), Vec::new())
            }
            Err(e) => return Err(e),
        };
        let file = Self {
            path,
            written,
            failure: None,
        };
        Ok((file, state))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `state` if it differs from what is on disk. A failure is
    /// logged: the state stays in memory, and the next change tries again.
    pub fn save(&mut self, state: &RuntimeState) {
        let mut state = state.clone();
        state.version = VERSION;
        let mut bytes = match serde_json::to_vec_pretty(&state) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!("cannot encode the runtime state: {e}");
                return;
            }
        };
        bytes.push(b'\n');
        if bytes == self.written {
            return;
        }
        match write_atomically(&self.path, &bytes) {
            Ok(()) => {
                self.written = bytes;
                self.failure = None;
            }
            Err(e) => {
                tracing::error!(
                    state_file = %self.path.display(),
                    "cannot save the runtime state: {e}; it is kept in memory"
                );
                self.failure = Some(format!(
                    "cannot save {}: {e}; changes since are lost at restart",
                    self.path.display()
                ));
            }
        }
    }

    /// Why the file is behind the runtime state, if it is.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }
}

/// Why a state file cannot be read.
#[derive(Debug, thiserror::Error)]
enum Unreadable {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("version {0} (this host reads {VERSION})")]
    Version(u32),
}

fn parse(bytes: &[u8]) -> Result<RuntimeState, Unreadable> {
    let state: RuntimeState = serde_json::from_slice(bytes)?;
    if state.version != VERSION {
        return Err(Unreadable::Version(state.version));
    }
    Ok(state)
}

fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{now}"));
    let aside = PathBuf::from(aside);
    std::fs::rename(path, &aside)?;
    Ok(aside)
}

/// Write to a temp file beside `path`, flush it to disk, rename it over
/// `path`: a crash leaves the old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    if let Some(dir) = path.parent() {
        // The rename itself is durable once the directory is synced.
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pgn-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn state_round_trips_and_unchanged_state_is_not_rewritten() {
        let dir = temp_dir("round-trip");
        let (mut file, state) = StateFile::open(&dir).unwrap();
        assert_eq!(state, RuntimeState::default());
        let mut state = RuntimeState::default();
        state
            .channels
            .insert("orders".into(), ChannelState { muted: true });
        file.save(&state);
        let modified = std::fs::metadata(file.path()).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        file.save(&state);
        assert_eq!(
            std::fs::metadata(file.path()).unwrap().modified().unwrap(),
            modified
        );
        let (_, read) = StateFile::open(&dir).unwrap();
        assert_eq!(read.channels, state.channels);
    }

    #[test]
    fn a_corrupt_file_is_set_aside_not_fatal() {
        let dir = temp_dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(FILE_NAME), "{ not json").unwrap();
        let (_, state) = StateFile::open(&dir).unwrap();
        assert_eq!(state, RuntimeState::default());
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().any(|n| n.starts_with("state.json.corrupt-")),
            "{names:?}"
        );
        assert!(!names.contains(&FILE_NAME.to_owned()), "{names:?}");
    }
}
