//! Local sandbox runtime (`AIRLOCK_RUNTIME=local`): each run is a bubblewrap process tree on this host, in
//! its image.
//!
//! Each run's root is its image's rootfs, read-only, from the image store (`airlock-images`: pulled, or
//! imported with `airlock image import`, cached under `<state_dir>/images` or `--local-image-dir`, leased for
//! the run's life). The host's root filesystem is not visible: only the image, a minimal `/dev`, a new
//! `/proc`, and Airlock's mounts (see `sandbox`). The command follows Kubernetes' rules against the image's
//! Entrypoint/Cmd/Env/WorkingDir (see `launch`); the image's `User` is ignored. Isolation (see
//! `docs/LOCAL_SANDBOX.md`): new user, PID, IPC, UTS, cgroup, mount and network namespaces (only loopback, no
//! route), a uid/gid of its own per run (a slot from a configured range), no capabilities, no new
//! privileges, every writable mount a size-capped tmpfs (`/tmp`, the work dir, `/dev/shm`). Limits:
//! wall-clock deadline (the pull counts; the supervisor kills the tree), CPU time (`RLIMIT_CPU`) and rate
//! (cgroup), memory (cgroup; without one, only if the operator accepts `RLIMIT_AS`), processes (cgroup pids
//! and `RLIMIT_NPROC` on the run's own uid), file size (`RLIMIT_FSIZE`, tmpfs sizes).
//!
//! Each run has a supervisor: a process of its own ([`Supervisor::Process`], the services' default; see `supervisor`: runs
//! survive their dispatcher, and a restarted one adopts them through the state directory), or a tokio task of
//! the launching process ([`Supervisor::InProcess`]). `launch` returns once the run directory exists
//! (`Pending`); the supervisor pulls the image, starts the sandbox, and when the job exits its supervisor publishes
//! the job's result file (a supervisor process leaves that to the dispatcher's watch) to
//! `<prefix>.results.<run_id>` with the run token (so the ingester path is the same
//! as on Kubernetes), flushes, and only then writes the final `status.json` and emits it on
//! [`LocalBackend::watch`]. Other processes (the janitor) use the same type: `observe`, `logs_tail`, `list`,
//! `list_objects` and `remove` read the state directory and signal processes after checking they belong to
//! the run.
//!
//! Result file policy: absent or empty → nothing is published; larger than `max_result_bytes` → nothing is
//! published and the status message says so; otherwise its bytes are published as they are (the ingester
//! validates them).
//!
//! # Layout
//! - `config`: [`LocalConfig`], [`LocalArgs`] and their defaults.
//! - `rundir`: the state directory and a run's directory: paths, atomic population, removal.
//! - `state`: `spec.json` / `status.json` and atomic writes.
//! - `slots`: a run's uid: this state directory's slot file plus the host-wide uid lock.
//! - `uids`: host-wide uid claims (`flock` on `<uid_lock_dir>/<uid>.lock`, unlinked on release).
//! - `liveness`: whether a run's supervisor is still there (process identity and the run's supervision lock).
//! - `sandbox`: limits, the mounts and the `sh → prlimit → setpriv → bwrap → launcher` command line.
//! - `launch`: the job from the request and the image config (Kubernetes' rules), and its launch script.
//! - `pull`: the run's image within its deadline.
//! - `cgroups`: per-run cgroups.
//! - `procs`: `/proc` inspection and SIGKILL.
//! - `spawn`: starting the sandbox and pumping its output into the capped log.
//! - `supervise`: one run from pull to final status (deadline, exit classification, clean-up).
//! - `supervisor`: per-run supervisor processes: hand-over, their entry point, results they leave pending.
//! - `result`: publishing the job's result file on NATS.
//! - `kill`: killing everything of a run (through its cgroup; by uid without one).
//! - `observe`: status, logs, listings and the watch.
//! - `watch`: the watch of runs with supervisor processes: inotify on the state directory, a slow rescan.
//! - `follow`: the run's log file from an offset, as it grows, until the job finished.
//!
//! On disk, `<state_dir>` (0711, root) holds `runs/<run_id>/` (0711) with `spec.json`, `status.json`, `log`
//! and `supervisor.lock` (0600, root), `launch.sh` (0400, the run's uid) and `sandbox/result.json` (owned by the run's uid, the only host file
//! the job can write), and `slots/<n>` (which run of this state directory last claimed uid `uid_base + n`). A
//! run directory is populated under a temporary name and renamed into place, so launching is atomic and
//! idempotent.
//!
//! # Uids are claimed host-wide
//! Runtimes with different state directories may share a uid range (two `airlock dev`, tests in parallel). The
//! claim that counts is the uid's host-wide lock ([`uids::UidLock`]): the supervisor takes it before writing the
//! slot file and holds it until the run's processes are dead and the slot file is released. Processes are killed
//! by uid only while holding that lock (the supervisor; the janitor's `remove` only when it can take the lock
//! itself, i.e. the supervisor is gone). A launch that finds every uid of its range locked fails with
//! `Transient("no free sandbox uid ...")`, and the dispatcher retries it later.
//! Per-run cgroups are named `<run_id>-<tag of the state directory>`, so runtimes never share one either.

mod cgroups;
mod config;
mod follow;
mod kill;
mod launch;
mod liveness;
mod observe;
mod procs;
mod pull;
mod result;
mod rundir;
mod sandbox;
mod slots;
mod spawn;
mod state;
mod supervise;
mod supervisor;
mod uids;
mod watch;

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use airlock_images::{ImageRef, ImageStore, StoreConfig};
use airlock_schemas::{Subjects, env, is_valid_name};
use tokio::sync::broadcast;
use tracing::{info, warn};

use self::cgroups::Cgroups;
pub use self::config::{DEFAULT_UID_LOCK_DIR, LocalArgs, LocalConfig, Supervisor};
use self::sandbox::Limits;
use self::state::StatusFile;
pub use self::supervisor::{
    SUPERVISE_ARG, stop_supervisors, supervise_if_asked, supervise_process,
};
use crate::{BackendError, LaunchSpec, Launched, Observed, Removed};

/// Local bubblewrap sandboxes; cheap to clone (shared state).
#[derive(Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("state_dir", &self.inner.config.state_dir)
            .finish_non_exhaustive()
    }
}

/// What the clones of one backend share. Nothing here is about other values: whether a run is supervised
/// is asked of the kernel (see `liveness`), so any value, in any process, gets the same answer.
struct Inner {
    config: LocalConfig,
    cgroups: Cgroups,
    /// The image store the runs' roots come from.
    images: ImageStore,
    /// `None` in a supervisor process: the dispatcher publishes its runs' results (see `supervisor`).
    nats: Option<async_nats::Client>,
    subjects: Subjects,
    /// Changes made by this value's supervisors, for [`LocalBackend::watch`].
    events: broadcast::Sender<Observed>,
    /// This process's pid and start time, recorded as the supervisor of the runs it launches.
    me: u32,
    my_start: Option<u64>,
    /// Tells this state directory's cgroups apart from other runtimes' (run ids are the clients').
    cgroup_tag: String,
    /// Where the next uid claim starts looking (see `slots`).
    next_slot: AtomicU32,
}

impl LocalBackend {
    /// Prepares the state directory (0711), opens the image store and detects cgroups; the process must run
    /// as root. Without a memory cgroup it refuses to start unless `allow_no_memory_cgroup` is set.
    pub fn new(
        config: LocalConfig,
        nats: async_nats::Client,
        subjects: Subjects,
    ) -> Result<Self, BackendError> {
        Self::build(config, Some(nats), subjects)
    }

    /// [`LocalBackend::new`] for a run's supervisor process (no NATS connection).
    fn build(
        config: LocalConfig,
        nats: Option<async_nats::Client>,
        subjects: Subjects,
    ) -> Result<Self, BackendError> {
        if !rustix::process::geteuid().is_root() {
            return Err(BackendError::Permanent(
                "the local runtime must run as root (it runs each sandbox under a uid of its own)"
                    .into(),
            ));
        }
        if config.sandbox_slots == 0
            || config
                .sandbox_uid_base
                .checked_add(config.sandbox_slots)
                .is_none()
        {
            return Err(BackendError::Permanent(
                "sandbox uid range is empty or overflows".into(),
            ));
        }
        uids::prepare_dir(&config.uid_lock_dir)?;
        let mut config = config;
        config.state_dir = rundir::prepare_state_dir(&config.state_dir)?;
        let cgroups = if config.cgroups {
            Cgroups::detect(&config.cgroup_root, &config.cgroup_name)
        } else {
            Cgroups::default()
        };
        if !cgroups.has_memory() {
            if !config.allow_no_memory_cgroup {
                return Err(BackendError::Permanent(
                    "no writable memory cgroup: a job's memory (and its in-memory mounts) would be bounded \
                     by RLIMIT_AS only; delegate a cgroup to Airlock, or accept weaker bounds with \
                     AIRLOCK_LOCAL_ALLOW_NO_MEMORY_CGROUP=true"
                        .into(),
                ));
            }
            warn!(
                "No memory cgroup: jobs' memory is bounded by RLIMIT_AS only, and their in-memory mounts by \
                 their size caps only (accepted by AIRLOCK_LOCAL_ALLOW_NO_MEMORY_CGROUP)"
            );
        }
        if !config.launcher.is_file() {
            return Err(BackendError::Permanent(format!(
                "the sandbox launcher {} is missing (install Debian's busybox-static, or set \
                 AIRLOCK_LOCAL_LAUNCHER to a static busybox)",
                config.launcher.display()
            )));
        }
        let images = ImageStore::open(StoreConfig {
            max_cache_bytes: config.image_cache_bytes,
            registry: config.registry.clone(),
            ..StoreConfig::new(config.image_dir())
        })
        .map_err(|e| BackendError::Permanent(format!("opening the image store: {e}")))?;
        // Sandboxes (bwrap runs as their uid) mount image roots from the store.
        let store_dir = std::fs::canonicalize(images.dir())
            .map_err(BackendError::io("resolving", images.dir()))?;
        rundir::check_traversable(&store_dir, "the image store")?;
        info!(state_dir = %config.state_dir.display(), images = %images.dir().display(), cgroups = ?cgroups, "Local sandbox runtime ready");
        let me = std::process::id();
        let (events, _) = broadcast::channel(1024);
        Ok(Self {
            inner: Arc::new(Inner {
                my_start: procs::proc_start_time(me),
                cgroup_tag: fnv1a_hex(config.state_dir.as_os_str().as_encoded_bytes()),
                config,
                cgroups,
                images,
                nats,
                subjects,
                events,
                me,
                next_slot: AtomicU32::new(0),
            }),
        })
    }

    /// The configuration (with the state directory made absolute).
    fn config(&self) -> &LocalConfig {
        &self.inner.config
    }

    /// The name of the run's cgroups: unique on the host (run ids are only unique per state directory).
    fn cgroup_key(&self, run_id: &str) -> String {
        format!("{run_id}-{}", self.inner.cgroup_tag)
    }

    /// Creates what the run needs and starts it (idempotent per run id and attempt).
    pub async fn launch(&self, spec: &LaunchSpec) -> Result<Launched, BackendError> {
        let run_id = spec.run_id().to_string();
        if !is_valid_name(&run_id) {
            return Err(BackendError::Permanent(format!(
                "invalid run id {run_id:?}"
            )));
        }
        let limits = Limits::resolve(self.config(), spec);
        let deadline = Duration::from_secs(spec.run.deadline_seconds.max(1));
        let deadline_at = tokio::time::Instant::now() + deadline;
        // One hop off the runtime's workers for the whole launch (a status read, file locks and writes, after a
        // crash a scan of `/proc`, and a supervisor process's spawn): every hop costs thread hand-offs.
        let (this, owned) = (self.clone(), spec.clone());
        let launched = tokio::task::spawn_blocking(move || {
            this.launch_blocking(&owned, limits, deadline, deadline_at)
        })
        .await
        .map_err(|e| BackendError::Transient(format!("launching {run_id}: {e}")))??;
        match launched {
            LaunchStep::AlreadyExisted => return Ok(Launched::AlreadyExisted),
            LaunchStep::Started => {}
            // The sandbox is spawned by the task, on a runtime worker thread that lives as long as the
            // process (bwrap's --die-with-parent follows the thread that forked it), never a blocking thread.
            LaunchStep::InProcess(run) => drop(tokio::spawn(self.clone().supervise(*run))),
        }
        Ok(Launched::Created)
    }

    /// [`Self::launch`]'s blocking part: replaces a previous attempt, claims a uid, populates the run directory
    /// and, with supervisor processes, starts the run's supervisor.
    fn launch_blocking(
        &self,
        spec: &LaunchSpec,
        limits: Limits,
        deadline: Duration,
        deadline_at: tokio::time::Instant,
    ) -> Result<LaunchStep, BackendError> {
        let run_id = spec.run_id().to_string();
        if let Some(existing) = self.observe_blocking(&run_id)? {
            if existing.attempt == spec.attempt {
                return Ok(LaunchStep::AlreadyExisted);
            }
            if !(existing.phase.is_finished() || existing.lost) {
                return Err(BackendError::NotOurs {
                    name: self.run_dir(&run_id).display().to_string(),
                    run_id,
                });
            }
            info!(run_id = %run_id, old = existing.attempt, new = spec.attempt, "Replacing a previous attempt");
            self.remove_blocking(&run_id)?;
        }
        let (slot, uid_lock) = self.take_slot(&run_id)?;
        let supervision = match self.populate(spec, slot, uid_lock.uid()) {
            Ok(Some(lock)) => lock,
            other => {
                self.release_slot(slot, &run_id);
                return other.map(|_| LaunchStep::AlreadyExisted);
            }
        };
        let run = supervise::Run {
            run_id,
            uid_lock,
            supervision,
            deadline,
            deadline_at,
            token: spec.env.get(env::RUN_TOKEN).cloned(),
            request: spec.run.request.clone(),
            image: ImageRef::parse(&spec.run.request.image).ok(),
            env: spec.env.clone(),
            limits,
        };
        match &self.config().supervisor {
            Supervisor::InProcess => Ok(LaunchStep::InProcess(Box::new(run))),
            Supervisor::Process { program, args } => {
                self.start_supervisor(program, args, run)?;
                Ok(LaunchStep::Started)
            }
        }
    }

    /// Kills the run if it is still going and deletes its directory, cgroups and slot (idempotent).
    pub async fn remove(&self, run_id: &str) -> Result<Removed, BackendError> {
        if !is_valid_name(run_id) {
            return Ok(Removed::Absent);
        }
        // Process kills and waits, `/proc` reads, file locks and deletions: off the runtime's workers.
        let (this, rid) = (self.clone(), run_id.to_string());
        tokio::task::spawn_blocking(move || this.remove_blocking(&rid))
            .await
            .map_err(|e| BackendError::Transient(format!("removing {run_id}: {e}")))?
    }

    /// [`Self::remove`] on the calling thread.
    fn remove_blocking(&self, run_id: &str) -> Result<Removed, BackendError> {
        let status = self.read_status(run_id).unwrap_or_else(|e| {
            tracing::warn!(run_id, error = %e, "Unreadable status; removing anyway");
            None
        });
        if !self.run_dir(run_id).exists() {
            return Ok(Removed::Absent);
        }
        // A final status is written only after its supervisor killed everything of the run, removed its cgroups
        // and released its slot (`supervise`): nothing is left to kill or remove then.
        let cleaned_up = status.as_ref().is_some_and(StatusFile::is_finished);
        if !cleaned_up {
            if let Some(s) = &status {
                self.kill_removed(run_id, s.pid, s.uid, s.slot);
            }
            self.inner.cgroups.remove(&self.cgroup_key(run_id));
        }
        let Some(trash) = self.move_to_trash(run_id)? else {
            return Ok(Removed::Absent);
        };
        if let Some(s) = &status {
            self.release_slot(s.slot, run_id);
        }
        let _ = std::fs::remove_dir_all(trash);
        info!(run_id, "Run removed");
        Ok(Removed::Deleted)
    }
}

/// What the blocking part of a launch did.
enum LaunchStep {
    /// The run (this attempt) was there already.
    AlreadyExisted,
    /// Its supervisor process was started.
    Started,
    /// The run, for an in-process supervisor task.
    InProcess(Box<supervise::Run>),
}

/// FNV-1a (64 bits) of `bytes`, in hex: a short stable tag.
fn fnv1a_hex(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
