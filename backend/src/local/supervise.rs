//! One run from start to final status: the image, the deadline, the exit's classification, the clean-up,
//! the result.
//!
//! # Before the sandbox starts
//! The run is `Pending` while its image is pulled (within its deadline; see `pull`), its job resolved from
//! the request and the image config (see `launch`) and its launch script written. A failure there ends it
//! `Failed` before anything ran: `ErrImagePull`, `DeadlineExceeded` (still pulling), `CreateContainerError`,
//! or `StartError` (the sandbox, or the launcher, could not start the job; never the job's own exit code). The image lease is held until the
//! run's final status is written.
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

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use airlock_images::{ImageRef, LeasedImage};
use airlock_schemas::RunRequest;
use chrono::Utc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::LocalBackend;
use super::launch::{self, Job};
use super::liveness::SupervisionLock;
use super::procs::sigkill;
use super::pull::policy;
use super::rundir::{RESULT, STATUS, write_launch_file};
use super::sandbox::Limits;
use super::spawn::Spawned;
use super::state::{PhaseFile, StatusFile, write_json};
use super::uids::UidLock;
use crate::{ImageFetch, ImagePull, Reason};

/// What a supervise task owns for its run.
pub(super) struct Run {
    /// The run id.
    pub run_id: String,
    /// The run's uid, host-wide; released at step 3.
    pub uid_lock: UidLock,
    /// Proof that this task supervises the run; released at step 6.
    pub supervision: SupervisionLock,
    /// The run's wall-clock deadline (the pull counts).
    pub deadline: Duration,
    /// When it passes (launch time + `deadline`).
    pub deadline_at: Instant,
    /// The run token the result is published with.
    pub token: Option<String>,
    /// The request.
    pub request: RunRequest,
    /// Its image reference, parsed by the launcher (`None`: it did not parse; the run fails with why).
    pub image: Option<ImageRef>,
    /// The dispatcher's job environment (the request's plus the reserved variables).
    pub env: BTreeMap<String, String>,
    /// The run's limits.
    pub limits: Limits,
}

/// Why a run ended before its job ran: reason and message.
struct NotStarted(Reason, String);

impl LocalBackend {
    /// Supervises the run until its final status is written (see the module documentation).
    pub(super) async fn supervise(self, run: Run) {
        let Run {
            run_id,
            uid_lock,
            supervision,
            deadline,
            deadline_at,
            token,
            request,
            image,
            env,
            limits,
        } = run;
        let prepared = self
            .prepare(&run_id, &request, image, &env, uid_lock.uid(), deadline_at)
            .await;
        let mut status = match self.read_status(&run_id) {
            Ok(Some(s)) => s,
            other => {
                warn!(run_id = %run_id, ?other, "Run status vanished before start");
                let lock = self.kill_tree_blocking(&run_id, None, Some(uid_lock)).await;
                self.finish_cleanup(&run_id, None, lock);
                return;
            }
        };
        // Whoever writes the status from here is its supervisor (a supervisor process, or this process).
        status.supervisor_pid = self.inner.me;
        status.supervisor_start = self.inner.my_start;
        let (image, job) = match prepared {
            Ok(p) => p,
            Err(NotStarted(reason, message)) => {
                return self
                    .not_started(&run_id, status, uid_lock, reason, message)
                    .await;
            }
        };
        status.image_digest = Some(image.digest().to_string());
        status.image_fetch = Some(match image.pulled_bytes() {
            Some(bytes) => ImageFetch::Pulled { bytes },
            None => ImageFetch::Cached,
        });
        let spawned = self.spawn(
            &run_id,
            uid_lock.uid(),
            limits,
            image.rootfs(),
            &job.workdir,
        );
        let spawned = match spawned {
            Ok(s) => s,
            Err(e) => {
                return self
                    .not_started(&run_id, status, uid_lock, Reason::StartError, e.to_string())
                    .await;
            }
        };
        let Spawned {
            mut child,
            pump,
            started,
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

        let waited = tokio::time::timeout_at(deadline_at, child.wait()).await;
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
        // The launcher says whether the job started; every writer is gone once the sandbox is.
        let said = tokio::time::timeout(Duration::from_secs(5), started)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(Err(None));
        let (phase, reason, message, exit_code) = match said {
            Err(why) if !timed_out => {
                let detail = why.unwrap_or_else(|| {
                    let log = std::fs::read(self.run_dir(&run_id).join(super::rundir::LOG))
                        .unwrap_or_default();
                    let tail = &log[log.len().saturating_sub(1024)..];
                    String::from_utf8_lossy(tail).trim().to_string()
                });
                let m = format!("the sandbox could not start the job: {detail}");
                (PhaseFile::Failed, Reason::StartError, Some(m), None)
            }
            _ => {
                let (p, r, m) = outcome(timed_out, oom, exit_code, deadline);
                (p, r, m, exit_code)
            }
        };
        status.phase = phase;
        status.exit_code = exit_code;
        status.reason = Some(reason);
        status.message = message;
        status.finished_at = Some(Utc::now());
        let traceparent = env
            .get(airlock_schemas::trace::TRACEPARENT)
            .map(String::as_str);
        self.finish(status, token.as_deref(), traceparent).await;
        drop(image);
        drop(supervision);
    }

    /// Everything before the sandbox: the image (pulled within the deadline), the job, its launch script.
    async fn prepare(
        &self,
        run_id: &str,
        request: &RunRequest,
        image: Option<ImageRef>,
        env: &BTreeMap<String, String>,
        uid: u32,
        deadline_at: Instant,
    ) -> Result<(LeasedImage, Job), NotStarted> {
        let policy = policy(request.image_pull_policy);
        let parsed = match image {
            Some(r) => r,
            None => ImageRef::parse(&request.image).map_err(|e| {
                NotStarted(Reason::ImagePull(ImagePull::ErrImagePull), e.to_string())
            })?,
        };
        let image = self
            .pull(run_id, &request.image, &parsed, policy, deadline_at)
            .await
            .map_err(|f| NotStarted(f.reason, f.message))?;
        let job = launch::resolve(request, image.config(), image.rootfs(), env)
            .map_err(|e| NotStarted(Reason::CreateContainerError, e.to_string()))?;
        write_launch_file(&self.run_dir(run_id), uid, &launch::script(&job)).map_err(|e| {
            NotStarted(
                Reason::StartError,
                format!("writing the launch script: {e}"),
            )
        })?;
        Ok((image, job))
    }

    /// Steps 4 and 5 for a run whose job ran: publish the result, write and emit the final status.
    async fn finish(&self, mut status: StatusFile, token: Option<&str>, traceparent: Option<&str>) {
        let run_id = status.run_id.clone();
        let dir = self.run_dir(&run_id);
        if !dir.exists() {
            debug!(run_id = %run_id, "Run was removed while running; not publishing");
            return;
        }
        if self.inner.nats.is_none() {
            // A supervisor process: the dispatcher publishes it (`supervisor::publish_pending`).
            status.result_pending = true;
        } else if let Err(e) = self
            .publish_result(&run_id, &dir.join(RESULT), token, traceparent)
            .await
        {
            let note = e.to_string();
            status.message = Some(match status.message.take() {
                Some(m) => format!("{m}; {note}"),
                None => note,
            });
        }
        self.write_final(&run_id, &status);
        info!(run_id = %run_id, phase = ?status.phase, reason = ?status.reason, exit_code = ?status.exit_code, "Sandbox finished");
    }

    /// A run whose job never ran: `Failed` with `reason`, after cleaning up whatever it left.
    async fn not_started(
        &self,
        run_id: &str,
        mut status: StatusFile,
        uid_lock: UidLock,
        reason: Reason,
        message: String,
    ) {
        warn!(run_id = %run_id, reason = %reason, message = %message, "Job did not start");
        status.phase = PhaseFile::Failed;
        status.reason = Some(reason);
        status.message = Some(message);
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
) -> (PhaseFile, Reason, Option<String>) {
    const SIGXCPU: i32 = 24;
    const SIGXFSZ: i32 = 25;
    if timed_out {
        return (
            PhaseFile::Failed,
            Reason::DeadlineExceeded,
            Some(format!(
                "killed after its deadline of {} s",
                deadline.as_secs()
            )),
        );
    }
    if oom_kills > 0 {
        return (
            PhaseFile::Failed,
            Reason::OomKilled,
            Some("killed by the kernel at its memory limit".into()),
        );
    }
    let failed = |reason, message: String| (PhaseFile::Failed, reason, Some(message));
    match exit_code {
        Some(0) => (PhaseFile::Succeeded, Reason::Completed, None),
        Some(c) if c == 128 + SIGXCPU => failed(
            Reason::CpuLimit,
            "killed by SIGXCPU at its CPU time limit".into(),
        ),
        Some(c) if c == 128 + SIGXFSZ => failed(
            Reason::FileSizeLimit,
            "killed by SIGXFSZ at its file size limit".into(),
        ),
        Some(c) if c > 128 => failed(Reason::Error, format!("killed by signal {}", c - 128)),
        Some(c) => failed(Reason::Error, format!("exited with code {c}")),
        None => failed(Reason::Error, "exit status unknown".into()),
    }
}
