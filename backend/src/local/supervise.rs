//! One run from start to final status: the deadline, the exit's classification, the clean-up, the result.
//!
//! # Order at the end of a run
//! 1. the job has exited (or was killed at its deadline);
//! 2. everything else of the run is killed (cgroups, and every process of its uid: we hold its lock);
//! 3. its cgroups are removed, the slot file released, then the uid lock (another runtime may now use it);
//! 4. the result file is published and flushed;
//! 5. the final `status.json` is written and emitted on the watch;
//! 6. the supervision lock is released (the run is judged by its final status from now on).
//!
//! The ingester therefore has the result before anyone sees the run finished, and a run is never seen
//! "lost" while its supervisor is between steps.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use chrono::Utc;
use tracing::{debug, info, warn};

use super::LocalBackend;
use super::liveness::SupervisionLock;
use super::procs::sigkill;
use super::rundir::{RESULT, STATUS};
use super::spawn::{Spawned, StartError};
use super::state::{PhaseFile, StatusFile, write_json};
use super::uids::UidLock;

/// What a supervise task owns for its run.
pub(super) struct Run {
    /// The run id.
    pub run_id: String,
    /// The run's uid, host-wide; released at step 3.
    pub uid_lock: UidLock,
    /// Proof that this task supervises the run; released at step 6.
    pub supervision: SupervisionLock,
    /// The job's wall-clock deadline.
    pub deadline: Duration,
    /// The run token the result is published with.
    pub token: Option<String>,
}

impl LocalBackend {
    /// Supervises the run until its final status is written (see the module documentation).
    pub(super) async fn supervise(self, run: Run, spawned: Result<Spawned, StartError>) {
        let Run {
            run_id,
            uid_lock,
            supervision,
            deadline,
            token,
        } = run;
        let mut status = match self.read_status(&run_id) {
            Ok(Some(s)) => s,
            other => {
                warn!(run_id = %run_id, ?other, "Run status vanished before start");
                if let Ok(mut s) = spawned {
                    let _ = s.child.start_kill();
                    let _ = s.child.wait().await;
                }
                let lock = self.kill_tree_blocking(&run_id, None, Some(uid_lock)).await;
                self.finish_cleanup(&run_id, None, lock);
                return;
            }
        };
        let spawned = match spawned {
            Ok(s) => s,
            Err(e) => return self.start_failed(&run_id, status, uid_lock, e).await,
        };
        let Spawned {
            mut child,
            pump,
            started_at,
        } = spawned;
        status.phase = PhaseFile::Running;
        status.pid = child.id();
        status.started_at = Some(started_at);
        if let Err(e) = write_json(&self.run_dir(&run_id).join(STATUS), &status) {
            warn!(run_id = %run_id, error = %e, "Could not write the running status");
        }
        let _ = self.inner.events.send(status.to_observed(false));
        info!(run_id = %run_id, pid = ?status.pid, uid = status.uid, "Sandbox started");

        let waited = tokio::time::timeout(deadline, child.wait()).await;
        let timed_out = waited.is_err();
        if timed_out {
            info!(run_id = %run_id, "Deadline passed; killing the sandbox");
            if let Some(pid) = status.pid {
                sigkill(pid);
            }
        }
        let exit = match waited {
            Ok(r) => r,
            Err(_) => child.wait().await,
        };
        // Whatever survived the sandbox root (nothing should, the PID namespace dies with it) dies now: its
        // cgroups, and every process of its uid (we hold the uid's host-wide lock, so they are all the run's).
        let lock = self.kill_tree_blocking(&run_id, None, Some(uid_lock)).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), pump).await;
        let oom = self.inner.cgroups.oom_kills(&self.cgroup_key(&run_id));
        self.finish_cleanup(&run_id, Some(status.slot), lock);

        let exit_code = match &exit {
            Ok(s) => s.code().or_else(|| s.signal().map(|n| 128 + n)),
            Err(_) => None,
        };
        let (phase, reason, message) = outcome(timed_out, oom, exit_code, deadline);
        status.phase = phase;
        status.exit_code = exit_code;
        status.reason = Some(reason.into());
        status.message = message;
        status.finished_at = Some(Utc::now());
        self.finish(status, token.as_deref()).await;
        drop(supervision);
    }

    /// Steps 4 and 5 for a run whose job ran: publish the result, write and emit the final status.
    async fn finish(&self, mut status: StatusFile, token: Option<&str>) {
        let run_id = status.run_id.clone();
        let dir = self.run_dir(&run_id);
        if !dir.exists() {
            debug!(run_id = %run_id, "Run was removed while running; not publishing");
            return;
        }
        if let Err(e) = self.publish_result(&run_id, &dir.join(RESULT), token).await {
            let note = e.to_string();
            status.message = Some(match status.message.take() {
                Some(m) => format!("{m}; {note}"),
                None => note,
            });
        }
        self.write_final(&run_id, &status);
        info!(run_id = %run_id, phase = ?status.phase, reason = ?status.reason, exit_code = ?status.exit_code, "Sandbox finished");
    }

    /// A sandbox that did not start: `Failed`, `StartError`, after cleaning up whatever it left.
    async fn start_failed(
        &self,
        run_id: &str,
        mut status: StatusFile,
        uid_lock: UidLock,
        e: StartError,
    ) {
        warn!(run_id = %run_id, error = %e, "Sandbox did not start");
        status.phase = PhaseFile::Failed;
        status.reason = Some("StartError".into());
        status.message = Some(e.to_string());
        status.finished_at = Some(Utc::now());
        // Nothing should run, but a failure after the process started would leave it behind.
        let lock = self.kill_tree_blocking(run_id, None, Some(uid_lock)).await;
        self.finish_cleanup(run_id, Some(status.slot), lock);
        self.write_final(run_id, &status);
    }

    /// Writes the final status and emits it on the watch.
    fn write_final(&self, run_id: &str, status: &StatusFile) {
        if let Err(e) = write_json(&self.run_dir(run_id).join(STATUS), status) {
            warn!(run_id, error = %e, "Could not write the final status");
        }
        let _ = self.inner.events.send(status.to_observed(false));
    }

    /// Removes the run's cgroups, frees its slot, then its uid (its processes must be dead).
    fn finish_cleanup(&self, run_id: &str, slot: Option<u32>, lock: Option<UidLock>) {
        self.inner.cgroups.remove(&self.cgroup_key(run_id));
        if let Some(slot) = slot {
            self.release_slot(slot, run_id);
        }
        // Last: once released, another runtime may run as the uid.
        drop(lock);
    }
}

/// Phase, reason and message of a finished sandbox.
fn outcome(
    timed_out: bool,
    oom_kills: u64,
    exit_code: Option<i32>,
    deadline: Duration,
) -> (PhaseFile, &'static str, Option<String>) {
    const SIGXCPU: i32 = 24;
    const SIGXFSZ: i32 = 25;
    if timed_out {
        return (
            PhaseFile::Failed,
            "DeadlineExceeded",
            Some(format!(
                "killed after its deadline of {} s",
                deadline.as_secs()
            )),
        );
    }
    if oom_kills > 0 {
        return (
            PhaseFile::Failed,
            "OOMKilled",
            Some("killed by the kernel at its memory limit".into()),
        );
    }
    let failed = |reason, message: String| (PhaseFile::Failed, reason, Some(message));
    match exit_code {
        Some(0) => (PhaseFile::Succeeded, "Completed", None),
        Some(c) if c == 128 + SIGXCPU => {
            failed("CpuLimit", "killed by SIGXCPU at its CPU time limit".into())
        }
        Some(c) if c == 128 + SIGXFSZ => failed(
            "FileSizeLimit",
            "killed by SIGXFSZ at its file size limit".into(),
        ),
        Some(c) if c > 128 => failed("Error", format!("killed by signal {}", c - 128)),
        Some(c) => failed("Error", format!("exited with code {c}")),
        None => failed("Error", "exit status unknown".into()),
    }
}
