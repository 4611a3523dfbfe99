//! Counters of what the janitor did, as atomics, read by tests and `airlock dev` (not exported yet).

use std::sync::atomic::{AtomicU64, Ordering};

use airlock_schemas::RunStatus;

/// What this janitor process did. Counters only grow; gauges are set by the latest sweep.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Timer events received (every kind, redeliveries included).
    pub timers: AtomicU64,
    /// Runs this process moved to `succeeded`.
    pub succeeded: AtomicU64,
    /// Runs this process moved to `failed`.
    pub failed: AtomicU64,
    /// Runs this process moved to `timed_out`.
    pub timed_out: AtomicU64,
    /// Runs this process moved to `cancelled`.
    pub cancelled: AtomicU64,
    /// Runs whose objects this process deleted (a `remove` that found something).
    pub removed: AtomicU64,
    /// Timers for runs already reaped, or for an older attempt: acknowledged without effect.
    pub late_timers: AtomicU64,
    /// Runs re-dispatched after their pod was evicted or lost.
    pub redispatched: AtomicU64,
    /// Objects with no live run removed (by a timer for an unknown run, or by a sweep).
    pub orphans_removed: AtomicU64,
    /// Timers a sweep published because the original was lost (`finished` or `deadline`).
    pub lost_timers: AtomicU64,
    /// Sweeps run.
    pub sweeps: AtomicU64,
    /// Sweep ticks skipped because a newer tick follows (a backlog after downtime).
    pub sweeps_skipped: AtomicU64,
    /// Handler failures (each becomes a redelivery with backoff).
    pub reap_errors: AtomicU64,
    /// Undecodable timer events, terminated.
    pub poison: AtomicU64,
    /// Gauge: runs the latest sweep found overdue and not reaped (deadline long passed, or ended with
    /// objects left, or an orphan it failed to remove). Non-zero means something needs attention.
    pub unreaped: AtomicU64,
    /// Cancel requests accepted (a cancel timer was published).
    pub cancels: AtomicU64,
}

impl Metrics {
    /// Adds one to `counter`.
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a run moved to the terminal `status` by this process.
    pub(crate) fn ended(&self, status: RunStatus) {
        match status {
            RunStatus::Succeeded => Self::inc(&self.succeeded),
            RunStatus::Failed => Self::inc(&self.failed),
            RunStatus::TimedOut => Self::inc(&self.timed_out),
            RunStatus::Cancelled => Self::inc(&self.cancelled),
            _ => {}
        }
    }

    /// Runs this process moved to a terminal status.
    pub fn reaped(&self) -> u64 {
        self.succeeded.load(Ordering::Relaxed)
            + self.failed.load(Ordering::Relaxed)
            + self.timed_out.load(Ordering::Relaxed)
            + self.cancelled.load(Ordering::Relaxed)
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
