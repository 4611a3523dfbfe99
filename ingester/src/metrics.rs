//! Counters of what the ingester did, shared as an `Arc<Metrics>` (lock-free; ready for a `/metrics` page).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::verify::RejectKind;

/// Counters of the ingester's work; every counter only grows.
#[derive(Debug, Default)]
pub struct Metrics {
    stored: AtomicU64,
    duplicate: AtomicU64,
    rejected: [AtomicU64; RejectKind::ALL.len()],
    redis_errors: AtomicU64,
    nacked: AtomicU64,
    batches: AtomicU64,
    poison: AtomicU64,
}

/// A point-in-time copy of [`Metrics`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Results stored (first genuine result of a run).
    pub stored: u64,
    /// Genuine results that found a result already stored (redeliveries, second submissions).
    pub duplicate: u64,
    /// Rejected submissions by reason label ([`RejectKind::label`]), every kind listed.
    pub rejected: Vec<(&'static str, u64)>,
    /// Redis round trips that failed (each nak'd its messages).
    pub redis_errors: u64,
    /// Messages nak'd for redelivery.
    pub nacked: u64,
    /// Batches processed.
    pub batches: u64,
    /// Messages terminated because they could not even be recorded.
    pub poison: u64,
}

impl MetricsSnapshot {
    /// Rejections of every kind.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|(_, n)| n).sum()
    }
}

impl Metrics {
    /// Results stored.
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// Duplicate genuine results.
    pub fn duplicate(&self) -> u64 {
        self.duplicate.load(Ordering::Relaxed)
    }

    /// Rejections of `kind`.
    pub fn rejected(&self, kind: RejectKind) -> u64 {
        self.rejected[kind as usize].load(Ordering::Relaxed)
    }

    /// Rejections of every kind.
    pub fn rejected_total(&self) -> u64 {
        self.rejected
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Failed Redis round trips.
    pub fn redis_errors(&self) -> u64 {
        self.redis_errors.load(Ordering::Relaxed)
    }

    /// Messages nak'd.
    pub fn nacked(&self) -> u64 {
        self.nacked.load(Ordering::Relaxed)
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            stored: self.stored(),
            duplicate: self.duplicate(),
            rejected: RejectKind::ALL
                .iter()
                .map(|k| (k.label(), self.rejected(*k)))
                .collect(),
            redis_errors: self.redis_errors(),
            nacked: self.nacked(),
            batches: self.batches.load(Ordering::Relaxed),
            poison: self.poison.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add_stored(&self) {
        self.stored.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_duplicate(&self) {
        self.duplicate.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_rejected(&self, kind: RejectKind) {
        self.rejected[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_redis_error(&self) {
        self.redis_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_nacked(&self, n: u64) {
        self.nacked.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_batch(&self) {
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_poison(&self) {
        self.poison.fetch_add(1, Ordering::Relaxed);
    }
}
