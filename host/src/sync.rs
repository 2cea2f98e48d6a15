//! The primitives every layer shares: a lock that survives poisoning,
//! single-writer counters, the dispatch clock, a duration histogram, a
//! latch a thread can wait on, and background tasks that stop when asked.
//!
//! Everything recorded on the dispatch path is a relaxed atomic store; a
//! reader (a metrics scrape) loads the atomics and takes no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

/// Lock a mutex, recovering from poisoning: every critical section here
/// leaves the data consistent, so a panic elsewhere must not stop dispatch.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Add to a counter only one thread writes (the subscriber's worker): a
/// plain load and store, without the locked read-modify-write of `fetch_add`.
pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    let value = counter.load(Ordering::Relaxed).wrapping_add(by);
    counter.store(value, Ordering::Relaxed);
}

/// `at` in milliseconds since the Unix epoch (0 before it), as the views
/// show times.
pub(crate) fn unix_ms(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

/// The clock of the dispatch path: the CPU's time-stamp counter where it
/// is reliable (a read costs a fraction of `Instant::now`), else the OS's
/// monotonic clock. Readings are raw; [`quanta::Clock::delta_as_nanos`]
/// turns two into a duration. The first call calibrates the counter against
/// the OS's clock, spinning for up to 200 ms: `Notifier::start` makes it.
pub(crate) fn clock() -> &'static quanta::Clock {
    static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

/// Upper bounds of the histogram's buckets, in nanoseconds: 50 µs to 10 s.
pub(crate) const BOUNDS_NS: [u64; 17] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A histogram of durations with fixed buckets, recorded with atomics.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Per-bucket counts (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Record `count` durations of `ns` each. Only one thread may record
    /// into a histogram (each subscriber's worker has its own), so this is
    /// plain stores.
    pub(crate) fn record(&self, ns: u64, count: u64) {
        let bucket = BOUNDS_NS.partition_point(|&bound| bound < ns);
        bump(&self.buckets[bucket], count);
        bump(&self.sum_ns, ns.saturating_mul(count));
    }

    /// Each bucket's upper bound (`None` for `+Inf`) and count, not cumulative.
    pub(crate) fn buckets(&self) -> impl Iterator<Item = (Option<u64>, u64)> + '_ {
        (self.buckets.iter().enumerate())
            .map(|(i, count)| (BOUNDS_NS.get(i).copied(), count.load(Ordering::Relaxed)))
    }

    /// The sum of every recorded duration.
    pub(crate) fn sum_ns(&self) -> u64 {
        self.sum_ns.load(Ordering::Relaxed)
    }

    /// The upper bound of the bucket that holds quantile `q` (0 to 1) of
    /// the durations recorded (the last bound for those past it); `None`
    /// before any.
    pub(crate) fn quantile_ns(&self, q: f64) -> Option<u64> {
        let total: u64 = self.buckets().map(|(_, n)| n).sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        self.buckets().find_map(|(bound, count)| {
            seen += count;
            (seen >= rank).then(|| bound.unwrap_or(BOUNDS_NS[BOUNDS_NS.len() - 1]))
        })
    }
}

/// A one-way latch: closed until released, then open for good. A worker
/// thread waits on it; the task that holds its [`Release`] opens it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Latch(Arc<(Mutex<bool>, Condvar)>);

impl Latch {
    /// A closed latch, and what opens it.
    pub(crate) fn new() -> (Self, Release) {
        let latch = Self::default();
        (latch.clone(), Release(latch))
    }

    /// Block this thread until the latch is open.
    pub(crate) fn wait(&self) {
        let (open, changed) = &*self.0;
        let mut open = lock(open);
        while !*open {
            open = changed.wait(open).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn open(&self) {
        let (open, changed) = &*self.0;
        *lock(open) = true;
        changed.notify_all();
    }
}

/// Opens its latch when released or dropped, so no way out of the code
/// that holds it leaves a waiter stuck.
#[derive(Debug)]
pub(crate) struct Release(Latch);

impl Release {
    pub(crate) fn release(self) {}
}

impl Drop for Release {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// A background task that stops when asked: what signals it, and its
/// handle. Dropping it asks the task to stop, without waiting for it.
#[derive(Debug)]
pub(crate) struct Task {
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Task {
    /// Run `body` on `runtime`, with the [`Stop`] it watches.
    pub(crate) fn spawn<F>(runtime: &tokio::runtime::Handle, body: impl FnOnce(Stop) -> F) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let handle = runtime.spawn(body(Stop(stopped)));
        Self { stop, handle }
    }

    /// Ask the task to stop; [`stop`](Self::stop) also waits for it.
    pub(crate) fn ask_to_stop(&self) {
        self.stop.send_replace(true);
    }

    /// Ask the task to stop, and wait until it has. Its panic, if it had
    /// one, is logged.
    pub(crate) async fn stop(mut self) {
        self.ask_to_stop();
        if let Err(e) = (&mut self.handle).await {
            if e.is_panic() {
                tracing::error!("a background task panicked: {e}");
            }
        }
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// A task's side of [`Task`]: whether it has been asked to stop.
#[derive(Clone, Debug)]
pub(crate) struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    pub(crate) fn is_asked(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolve once asked to stop (or once the [`Task`] is gone).
    pub(crate) async fn asked(&mut self) {
        let _ = self.0.wait_for(|asked| *asked).await;
    }
}

/// A spawned task that is aborted when this is dropped: a connection's
/// driver, say, that must not outlive the code that uses it, panic or not.
#[derive(Debug)]
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
