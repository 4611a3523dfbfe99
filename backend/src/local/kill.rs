//! Killing everything of a run: its sandbox root, then its cgroup or, without one, every process of its uid
//! (only while holding the uid's host-wide lock).
//!
//! # Through the cgroup, not `/proc`
//! When the run has a cgroup that every one of its processes is in (v2, or the v1 `memory` or `pids`
//! hierarchy: the sandbox joins them as root before dropping to the run's uid, and the uid cannot leave them),
//! its processes are killed through it: `cgroup.kill` on v2 (atomic, forks included), else SIGKILL to what the
//! group's `cgroup.procs` lists until it lists nothing. Nothing scans `/proc`. Without such a cgroup (none
//! delegated, or `--local-cgroups false`), the fallback is the uid: every process of `/proc` whose real uid is
//! the run's, SIGKILLed until none is left; correct, but it reads every host process's status. The uid scan is
//! also what kills the leftovers of a holder that died (see `uids`), whose cgroup is not known for sure.

use std::time::{Duration, Instant};

use tracing::warn;

use super::LocalBackend;
use super::procs::{is_our_sandbox, pids_of_uid, sigkill};
use super::rundir::RESULT;
use super::uids::UidLock;

/// How long killing a run waits for its processes to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// SIGKILLs whatever `pids` lists until it lists nothing (zombies are not listed: they run nothing) or
/// [`KILL_WAIT`] passes; whether everything is gone.
fn kill_until_gone(mut pids: impl FnMut() -> Vec<u32>) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < KILL_WAIT {
        let found = pids();
        if found.is_empty() {
            return true;
        }
        for p in found {
            sigkill(p);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// SIGKILLs every process of the locked uid (leftovers of a crashed run; the lock says no run uses it).
pub(super) fn kill_uid(lock: &UidLock) {
    kill_until_gone(|| pids_of_uid(lock.uid()));
}

impl LocalBackend {
    /// SIGKILLs everything of the run: the sandbox root (if `pid` is ours), then its cgroup, or without one and
    /// given the uid's host-wide lock, every process of its uid (the lock proves no other runtime uses the uid
    /// now). Blocking (polls until they are gone).
    fn kill_tree(&self, run_id: &str, pid: Option<u32>, uid: Option<&UidLock>) {
        let marker = self.run_dir(run_id).join(RESULT);
        if let Some(pid) = pid
            && is_our_sandbox(pid, &marker)
        {
            sigkill(pid);
        }
        // Until they are gone, so a finished run leaves its uid clean for the next run of the slot.
        let key = self.cgroup_key(run_id);
        let cgroups = &self.inner.cgroups;
        let by_cgroup = cgroups.holds_every_process();
        if by_cgroup {
            cgroups.kill(&key);
        }
        let gone = kill_until_gone(|| {
            let mut pids = cgroups.pids(&key);
            if !by_cgroup && let Some(lock) = uid {
                pids.extend(pids_of_uid(lock.uid()));
            }
            pids
        });
        if !gone {
            warn!(
                run_id,
                uid = uid.map(UidLock::uid),
                "Processes of the run are still there after SIGKILL"
            );
        }
    }

    /// [`Self::kill_tree`] on a blocking thread; gives the lock back.
    pub(super) async fn kill_tree_blocking(
        &self,
        run_id: &str,
        pid: Option<u32>,
        lock: Option<UidLock>,
    ) -> Option<UidLock> {
        let (this, rid) = (self.clone(), run_id.to_string());
        tokio::task::spawn_blocking(move || {
            this.kill_tree(&rid, pid, lock.as_ref());
            lock
        })
        .await
        .unwrap_or(None)
    }

    /// `remove`'s kill, from any process: the sandbox root and the run's cgroups, and by uid only if the run still
    /// holds its slot here and the uid's host-wide lock can be taken (held for the time of the kill). A lock held
    /// by someone else means either the run's supervisor, alive, which kills by uid itself once the sandbox root
    /// is dead, or another run that has the uid now, whose processes must not be touched. Blocking.
    pub(super) fn kill_removed(&self, run_id: &str, pid: Option<u32>, uid: u32, slot: u32) {
        let lock = if self.slot_held_by(slot, run_id) {
            UidLock::try_acquire(&self.config().uid_lock_dir, uid).unwrap_or_else(|e| {
                warn!(run_id, uid, error = %e, "Cannot lock the run's uid; not killing by uid");
                None
            })
        } else {
            None
        };
        self.kill_tree(run_id, pid, lock.as_ref());
    }
}
