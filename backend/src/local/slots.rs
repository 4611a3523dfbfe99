//! A run's uid: the host-wide [`UidLock`] of `uid_base + n`, then this state directory's `slots/<n>` naming
//! the run.
//!
//! Order matters: the lock is taken before the slot file is written and released after it is removed, so a
//! slot file whose uid lock is free is stale, and one naming a run whose lock is held is that run's.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::LocalBackend;
use super::kill::kill_uid;
use super::state::write_atomic;
use super::uids::UidLock;
use crate::BackendError;
use tracing::warn;

impl LocalBackend {
    /// `slots/<slot>`: which run of this state directory last claimed the slot's uid.
    fn slot_file(&self, slot: u32) -> PathBuf {
        self.config().state_dir.join("slots").join(slot.to_string())
    }

    /// Claims a free uid for `run_id`: its host-wide lock first (no other runtime on the host, whatever its state
    /// directory, runs as that uid while we hold it), then this state directory's slot file naming the run.
    /// Leftover processes of the uid (a crashed run's) are killed. Every uid of the range locked:
    /// `Transient("no free sandbox uid ...")`, for the dispatcher to retry later. Blocking (file locks, and a
    /// scan of `/proc` after a crash).
    pub(super) fn take_slot(&self, run_id: &str) -> Result<(u32, UidLock), BackendError> {
        let c = self.config();
        // From the slot after the last one claimed: runs end roughly in the order they started, so that one is
        // most likely free, and a busy host does not try every held lock before a free one.
        let first = self.inner.next_slot.load(Ordering::Relaxed) % c.sandbox_slots;
        for slot in (first..c.sandbox_slots).chain(0..first) {
            let uid = c.sandbox_uid_base + slot;
            let Some(mut lock) = UidLock::try_acquire(&c.uid_lock_dir, uid).map_err(
                BackendError::io("locking", c.uid_lock_dir.join(format!("{uid}.lock"))),
            )?
            else {
                continue;
            };
            // Whatever the slot file says is stale: a run still holding the slot would hold the lock too.
            let path = self.slot_file(slot);
            write_atomic(&path, run_id.as_bytes(), 0o600)
                .map_err(BackendError::io("writing the slot file", &path))?;
            // A leftover of a crashed run must not share the uid's process count or files. A cleanly released
            // uid has no lock file, hence no leftover: only a file left by a dead holder costs a scan.
            if let Some(previous) = lock.previous() {
                warn!(
                    uid,
                    previous = previous.trim(),
                    "Uid lock left by a holder that died; killing its leftovers"
                );
                kill_uid(&lock);
            }
            lock.note(&format!(
                "{} {} {run_id}\n",
                self.inner.me,
                c.state_dir.display()
            ));
            self.inner.next_slot.store(slot + 1, Ordering::Relaxed);
            return Ok((slot, lock));
        }
        Err(BackendError::Transient(format!(
            "no free sandbox uid: all {} uids from {} are in use on this host",
            c.sandbox_slots, c.sandbox_uid_base
        )))
    }

    /// Removes the slot file if it still names `run_id`.
    pub(super) fn release_slot(&self, slot: u32, run_id: &str) {
        if self.slot_held_by(slot, run_id) {
            let _ = std::fs::remove_file(self.slot_file(slot));
        }
    }

    /// Whether the slot file names `run_id`.
    pub(super) fn slot_held_by(&self, slot: u32, run_id: &str) -> bool {
        std::fs::read_to_string(self.slot_file(slot)).is_ok_and(|h| h.trim() == run_id)
    }
}
