//! Whether a run's supervisor is still there, asked of the kernel rather than of memory.
//!
//! # The invariant
//! A run whose `status.json` is not final is alive exactly while a supervise task still runs it; once that
//! task is gone (its process died, or the task ended without writing a final status), the run is
//! reported lost (`SupervisorLost`) so the janitor can dispatch it again. Two facts decide it:
//!
//! 1. **The supervising process** (pid and start time, recorded in the status) is alive. Enough for a run
//!    of another process, but not for one of this process, which is always alive.
//! 2. **The run's supervision lock**, `runs/<run_id>/supervisor.lock`, is held. The launching task takes an
//!    exclusive `flock` on it in the temporary run directory, before the directory (and the status naming
//!    this process) becomes visible; the supervise task holds it until the final status is written. The
//!    kernel drops it however the task ends. Observers probe with a non-blocking *shared* lock, so a probe
//!    never blocks the supervisor or takes the lock from it, and concurrent probes agree.
//!
//! This replaces a process-global set of supervised runs. Per-value state would not do: one process may hold
//! several [`LocalBackend`] values on one state directory (`airlock dev` runs the dispatcher, which
//! supervises, and the janitor, which observes; tests start several backends), and each must see the others'
//! runs as alive. The lock is visible to every value of every process, and nothing is kept in memory.
//!
//! A run directory without the lock file (written before it existed) is judged by the process alone, as
//! before.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::fs::FlockOperation;

use super::LocalBackend;
use super::procs::proc_start_time;
use super::state::StatusFile;
use super::uids::try_flock;
use crate::BackendError;

/// The lock file's name in the run directory.
pub(super) const LOCK_FILE: &str = "supervisor.lock";

/// Held by the task that supervises a run, for as long as it does (see the module documentation).
#[derive(Debug)]
pub(super) struct SupervisionLock {
    _file: std::fs::File,
}

impl SupervisionLock {
    /// A second descriptor of the same lock (the lock is held while any is open): for a supervisor process.
    pub fn share(&self) -> std::io::Result<std::fs::File> {
        self._file.try_clone()
    }

    /// The lock, held through a descriptor inherited from the launching process.
    pub fn inherited(file: std::fs::File) -> Self {
        Self { _file: file }
    }

    /// Creates the lock file in the (not yet visible) run directory `dir` and locks it.
    pub fn create(dir: &Path) -> Result<Self, BackendError> {
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(BackendError::io("creating", &path))?;
        match try_flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(true) => Ok(Self { _file: file }),
            // A file created just now, in a directory no one else knows of: no one can hold it.
            Ok(false) => Err(BackendError::Transient(format!(
                "{} is locked by someone else",
                path.display()
            ))),
            Err(e) => Err(BackendError::io("locking", &path)(e)),
        }
    }
}

impl LocalBackend {
    /// Whether the run's supervisor is still there: its process lives and the run's supervision lock is held.
    pub(super) fn supervisor_alive(&self, s: &StatusFile) -> bool {
        let process_alive = if s.supervisor_pid == self.inner.me {
            s.supervisor_start == self.inner.my_start
        } else {
            let start = proc_start_time(s.supervisor_pid);
            start.is_some() && start == s.supervisor_start
        };
        process_alive && self.supervision_held(&s.run_id)
    }

    /// Whether some task (of any process) holds the run's supervision lock; true without a lock file.
    fn supervision_held(&self, run_id: &str) -> bool {
        is_held(&self.run_dir(run_id).join(LOCK_FILE))
    }
}

/// Whether the supervision lock at `path` is held; true when the file is absent or unreadable (do not declare
/// a run lost on a doubt).
fn is_held(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return true;
    };
    // Probing takes a shared lock for an instant; dropping `file` releases it.
    !matches!(
        try_flock(&file, FlockOperation::NonBlockingLockShared),
        Ok(true)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_supervision_lock_is_seen_held_by_any_prober_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        assert!(is_held(&path), "no lock file: judged by the process alone");
        let lock = SupervisionLock::create(dir.path()).unwrap();
        assert!(is_held(&path));
        // A probe is a shared lock for an instant: it takes nothing away from the holder.
        assert!(is_held(&path));
        drop(lock);
        assert!(!is_held(&path), "the holder is gone");
    }
}
