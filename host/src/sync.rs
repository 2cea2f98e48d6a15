//! The primitives every layer shares: a lock that survives poisoning,
//! single-writer counters, the dispatch clock, a duration histogram and a
//! latch a thread can wait on.
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

/// The clock of the dispatch path: the CPU's time-stamp counter where it
/// is reliable (a read costs about 9 ns here, a third of `Instant::now`),
/// else the OS's monotonic clock. Readings are raw; [`quanta::Clock::delta_as_nanos`]
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
