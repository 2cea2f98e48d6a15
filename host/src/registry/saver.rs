//! The state file's writer: a thread of its own, so neither the registry's
//! writer lock nor a tokio worker ever waits on a write and its fsync.
//!
//! Changes coalesce: the thread writes the newest state queued, then says up
//! to which change the file is written (or why it could not be).

use super::state::{RuntimeState, StateFile};
use crate::sync::lock;
use arc_swap::ArcSwapOption;
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::watch;

/// Hands states to the writer thread.
pub(crate) struct Saver {
    shared: Arc<Shared>,
}

struct Shared {
    next: Mutex<Next>,
    wake: Condvar,
    /// The number of the last change written, or whose write failed.
    done: watch::Sender<u64>,
    /// Why the file is behind the runtime state, while it is.
    unsaved: ArcSwapOption<String>,
}

#[derive(Default)]
struct Next {
    /// The newest state not yet written, and its change number.
    state: Option<(RuntimeState, u64)>,
    /// The number given to the last change queued.
    queued: u64,
    closed: bool,
}

impl Saver {
    pub(crate) fn start(file: StateFile) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            next: Mutex::default(),
            wake: Condvar::new(),
            done: watch::Sender::new(0),
            unsaved: ArcSwapOption::empty(),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("pgn:state".into())
            .spawn(move || writer.write_all(file))?;
        Ok(Self { shared })
    }

    /// Queue the state after a change; an older state still queued is dropped.
    pub(crate) fn queue(&self, state: RuntimeState) {
        let mut next = lock(&self.shared.next);
        next.queued += 1;
        next.state = Some((state, next.queued));
        drop(next);
        self.shared.wake.notify_one();
    }

    /// Why changes are not being saved, while they are not.
    pub(crate) fn unsaved(&self) -> Option<Arc<String>> {
        self.shared.unsaved.load_full()
    }

    /// Wait until every change queued before this call is written (or has failed to be).
    pub(crate) async fn flushed(&self) {
        let queued = lock(&self.shared.next).queued;
        let mut done = self.shared.done.subscribe();
        // The sender lives in `shared`, which this saver holds: never closed here.
        let _ = done.wait_for(|written| *written >= queued).await;
    }
}

impl Drop for Saver {
    /// The thread writes what is still queued, then ends.
    fn drop(&mut self) {
        lock(&self.shared.next).closed = true;
        self.shared.wake.notify_one();
    }
}

impl Shared {
    fn write_all(&self, mut file: StateFile) {
        loop {
            let mut next = lock(&self.next);
            while next.state.is_none() && !next.closed {
                next = self.wake.wait(next).unwrap_or_else(|p| p.into_inner());
            }
            let Some((state, number)) = next.state.take() else {
                return;
            };
            drop(next);
            file.save(&state);
            self.unsaved
                .store(file.failure().map(|f| Arc::new(f.to_owned())));
            self.done.send_replace(number);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::state::ChannelState;

    fn muted(names: &[&str]) -> RuntimeState {
        let mut state = RuntimeState::default();
        for name in names {
            (state.channels).insert((*name).into(), ChannelState { muted: true });
        }
        state
    }

    #[tokio::test]
    async fn the_newest_state_is_written_and_a_failure_is_reported_once_flushed() {
        let dir = std::env::temp_dir().join(format!("pgn-saver-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (file, _) = StateFile::open(&dir).unwrap();
        let path = file.path().to_owned();
        let saver = Saver::start(file).unwrap();
        for last in 0..50 {
            let names: Vec<String> = (0..=last).map(|i| format!("c{i}")).collect();
            saver.queue(muted(&names.iter().map(String::as_str).collect::<Vec<_>>()));
        }
        saver.flushed().await;
        let (_, read) = StateFile::open(&dir).unwrap();
        assert_eq!(read.channels.len(), 50, "the newest state is on disk");
        assert!(saver.unsaved().is_none());

        // A directory where the file belongs: the write fails, and says so.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir_all(path.join("in-the-way")).unwrap();
        saver.queue(muted(&["orders"]));
        saver.flushed().await;
        let reason = saver.unsaved().expect("the failure is reported");
        assert!(reason.contains("state.json"), "{reason}");
        std::fs::remove_dir_all(&path).unwrap();
        saver.queue(muted(&["orders"]));
        saver.flushed().await;
        assert!(saver.unsaved().is_none(), "a save that succeeds clears it");
    }
}
