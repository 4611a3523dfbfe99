//! Local sandbox runtime (`AIRLOCK_RUNTIME=local`): each run is a bubblewrap process tree on this host.
//!
//! The job runs on the host's read-only root filesystem: the request's `image` is recorded in `spec.json` but
//! never pulled. Isolation (see `docs/LOCAL_SANDBOX.md`): new user, PID, IPC, UTS, cgroup, mount and network
//! namespaces (only loopback, no route), a uid/gid of its own per run (a slot from a configured range), no
//! capabilities, no new privileges, private size-capped `/tmp` and working directory, the host's `/sys`,
//! `/run`, home directories and the state directory hidden. Limits: wall-clock deadline (supervisor kills the
//! tree), CPU time (`RLIMIT_CPU`) and rate (cgroup), memory (cgroup, else `RLIMIT_AS`), processes (cgroup
//! pids and `RLIMIT_NPROC` on the run's own uid), file size (`RLIMIT_FSIZE`, tmpfs sizes).
//!
//! The dispatcher process supervises its sandboxes in tokio tasks. When a job exits its supervisor publishes
//! the job's result file to `<prefix>.results.<run_id>` with the run token (so the ingester path is the same
//! as on Kubernetes), flushes, and only then writes the final `status.json` and emits it on [`LocalBackend::watch`].
//! Other processes (the janitor) use the same type: `observe`, `logs_tail`, `list`, `list_objects` and `remove`
//! read the state
//! directory and signal processes after checking they belong to the run.
//!
//! Result file policy: absent or empty → nothing is published; larger than `max_result_bytes` → nothing is
//! published and the status message says so; otherwise its bytes are published as they are (the ingester
//! validates them).
//!
//! # Layout
//! - `state`: `spec.json` / `status.json` and atomic writes.
//! - `sandbox`: the `sh → prlimit → setpriv → bwrap` command line, cgroups, finding and killing processes.
//! - `uids`: host-wide uid claims (`flock` on `<uid_lock_dir>/<uid>.lock`).
//!
//! On disk, `<state_dir>` (0711, root) holds `runs/<run_id>/` (0711) with `spec.json`, `status.json`, `log`
//! (0600, root) and `sandbox/result.json` (owned by the run's uid, the only host file the job can write), and
//! `slots/<n>` (which run of this state directory last claimed uid `uid_base + n`). A run directory is populated
//! under a temporary name and renamed into place, so launching is atomic and idempotent.
//!
//! # Uids are claimed host-wide
//! Runtimes with different state directories may share a uid range (two `airlock dev`, tests in parallel). The
//! claim that counts is the uid's host-wide lock ([`uids::UidLock`]): the supervisor takes it before writing the
//! slot file and holds it until the run's processes are dead and the slot file is released. Processes are killed
//! by uid only while holding that lock (the supervisor; the janitor's `remove` only when it can take the lock
//! itself, i.e. the supervisor is gone). A launch that finds every uid of its range locked fails with
//! `Transient("no free sandbox uid ...")`, and the dispatcher retries it later.
//! Per-run cgroups are named `<run_id>-<tag of the state directory>`, so runtimes never share one either.

mod sandbox;
mod state;
mod uids;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use airlock_schemas::{Subjects, env, is_valid_name, quantity};
use chrono::Utc;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

use self::sandbox::{Cgroups, Limits, SandboxCommand};
use self::state::{PhaseFile, SpecFile, StatusFile, read_json, write_atomic, write_json};
use self::uids::UidLock;
use super::{BackendError, LaunchSpec, Launched, Observed, Removed, RunObjects};

/// Configuration of the local sandbox runtime.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// State directory shared by the dispatcher and janitor on this machine; created 0711 (its parents must be
    /// traversable by other users, since `bwrap` runs as the sandbox uid and bind-mounts the result file).
    pub state_dir: PathBuf,
    /// The `bwrap` binary.
    pub bwrap: PathBuf,
    /// The `setpriv` binary (util-linux).
    pub setpriv: PathBuf,
    /// The `prlimit` binary (util-linux).
    pub prlimit: PathBuf,
    /// Memory limit when the request sets none, in bytes.
    pub default_memory_bytes: u64,
    /// Largest CPU time of any process of a run, in seconds (also capped at deadline × CPU limit).
    pub max_cpu_seconds: u64,
    /// Largest number of processes (threads included) of a run.
    pub max_processes: u64,
    /// Largest file a job may write, in bytes.
    pub max_file_bytes: u64,
    /// Size of each of the private `/tmp` and working directory tmpfs, in bytes.
    pub tmp_bytes: u64,
    /// First uid (and gid) of the sandbox range; run slot `n` runs as `sandbox_uid_base + n`.
    pub sandbox_uid_base: u32,
    /// Number of slots, i.e. of runs that may run at once.
    pub sandbox_slots: u32,
    /// Host-wide directory of uid locks (`<uid>.lock`, created 0700 root). Every local runtime on the host must
    /// use the same one: it is what keeps runtimes with different state directories off each other's uids.
    pub uid_lock_dir: PathBuf,
    /// Largest result file published, in bytes.
    pub max_result_bytes: usize,
    /// Largest log kept per run, in bytes (the rest is discarded).
    pub max_log_bytes: u64,
    /// Use cgroups (v2, or v1 `memory`/`pids`/`cpu`) when writable; otherwise rlimits only.
    pub cgroups: bool,
    /// Cgroup filesystem root.
    pub cgroup_root: PathBuf,
    /// Name of the parent group of the per-run groups.
    pub cgroup_name: String,
    /// Host paths hidden from jobs (directories behind an empty tmpfs, files behind `/dev/null`).
    pub hide_paths: Vec<PathBuf>,
}

impl LocalConfig {
    /// Defaults for everything but the state directory.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            bwrap: "bwrap".into(),
            setpriv: "setpriv".into(),
            prlimit: "prlimit".into(),
            default_memory_bytes: 512 * 1024 * 1024,
            max_cpu_seconds: 6 * 3600,
            max_processes: 256,
            max_file_bytes: 256 * 1024 * 1024,
            tmp_bytes: 256 * 1024 * 1024,
            sandbox_uid_base: 1_000_000_000,
            sandbox_slots: 256,
            uid_lock_dir: DEFAULT_UID_LOCK_DIR.into(),
            max_result_bytes: 1024 * 1024,
            max_log_bytes: 4 * 1024 * 1024,
            cgroups: true,
            cgroup_root: "/sys/fs/cgroup".into(),
            cgroup_name: "airlock".into(),
            hide_paths: default_hide_paths(),
        }
    }
}

/// Default host-wide directory of sandbox uid locks.
pub const DEFAULT_UID_LOCK_DIR: &str = "/run/airlock/uids";

fn default_hide_paths() -> Vec<PathBuf> {
    [
        "/root",
        "/home",
        "/mnt",
        "/media",
        "/srv",
        "/boot",
        "/var/lib",
        "/var/log",
        "/var/spool",
        "/var/mail",
        "/var/backups",
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect()
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    quantity::bytes(s).ok_or_else(|| format!("not a quantity: {s:?} (e.g. 256Mi)"))
}

/// Command-line/environment options of the local runtime (embedded by the dispatcher and janitor).
#[derive(Debug, Clone, clap::Args)]
pub struct LocalArgs {
    /// State directory shared by dispatcher and janitor on this machine.
    #[arg(
        long = "local-dir",
        env = "AIRLOCK_LOCAL_DIR",
        default_value = "/var/lib/airlock-local"
    )]
    pub local_dir: PathBuf,
    /// The bubblewrap binary.
    #[arg(
        long = "local-bwrap",
        env = "AIRLOCK_LOCAL_BWRAP",
        default_value = "bwrap"
    )]
    pub local_bwrap: PathBuf,
    /// Memory limit when the request sets none.
    #[arg(long = "local-memory", env = "AIRLOCK_LOCAL_MEMORY", default_value = "512Mi", value_parser = parse_bytes)]
    pub local_memory: u64,
    /// Largest CPU time per process, in seconds.
    #[arg(long = "local-max-cpu-seconds", env = "AIRLOCK_LOCAL_MAX_CPU_SECONDS", default_value_t = 6 * 3600)]
    pub local_max_cpu_seconds: u64,
    /// Largest number of processes per run.
    #[arg(
        long = "local-max-processes",
        env = "AIRLOCK_LOCAL_MAX_PROCESSES",
        default_value_t = 256
    )]
    pub local_max_processes: u64,
    /// Largest file a job may write.
    #[arg(long = "local-max-file-size", env = "AIRLOCK_LOCAL_MAX_FILE_SIZE", default_value = "256Mi", value_parser = parse_bytes)]
    pub local_max_file_size: u64,
    /// Size of the private /tmp and working directory, each.
    #[arg(long = "local-tmp-size", env = "AIRLOCK_LOCAL_TMP_SIZE", default_value = "256Mi", value_parser = parse_bytes)]
    pub local_tmp_size: u64,
    /// First sandbox uid/gid.
    #[arg(
        long = "local-uid-base",
        env = "AIRLOCK_LOCAL_UID_BASE",
        default_value_t = 1_000_000_000
    )]
    pub local_uid_base: u32,
    /// Number of concurrent runs (uids from the base).
    #[arg(
        long = "local-slots",
        env = "AIRLOCK_LOCAL_SLOTS",
        default_value_t = 256
    )]
    pub local_slots: u32,
    /// Host-wide directory of sandbox uid locks; the same for every local runtime on the host.
    #[arg(
        long = "local-uid-lock-dir",
        env = "AIRLOCK_LOCAL_UID_LOCK_DIR",
        default_value = DEFAULT_UID_LOCK_DIR
    )]
    pub local_uid_lock_dir: PathBuf,
    /// Largest result file published, in bytes.
    #[arg(long = "local-max-result-bytes", env = "AIRLOCK_LOCAL_MAX_RESULT_BYTES", default_value_t = 1024 * 1024)]
    pub local_max_result_bytes: usize,
    /// Use cgroups when writable.
    #[arg(long = "local-cgroups", env = "AIRLOCK_LOCAL_CGROUPS", default_value_t = true, action = clap::ArgAction::Set)]
    pub local_cgroups: bool,
    /// Extra host paths to hide from jobs (comma-separated), e.g. the services' secret files.
    #[arg(long = "local-hide", env = "AIRLOCK_LOCAL_HIDE", value_delimiter = ',')]
    pub local_hide: Vec<PathBuf>,
}

impl LocalArgs {
    /// The configuration these options describe.
    pub fn config(&self) -> LocalConfig {
        let mut c = LocalConfig::new(&self.local_dir);
        c.bwrap.clone_from(&self.local_bwrap);
        c.default_memory_bytes = self.local_memory;
        c.max_cpu_seconds = self.local_max_cpu_seconds;
        c.max_processes = self.local_max_processes;
        c.max_file_bytes = self.local_max_file_size;
        c.tmp_bytes = self.local_tmp_size;
        c.sandbox_uid_base = self.local_uid_base;
        c.sandbox_slots = self.local_slots;
        c.uid_lock_dir.clone_from(&self.local_uid_lock_dir);
        c.max_result_bytes = self.local_max_result_bytes;
        c.cgroups = self.local_cgroups;
        c.hide_paths.extend(self.local_hide.iter().cloned());
        c
    }
}

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

struct Inner {
    config: LocalConfig,
    cgroups: Cgroups,
    nats: async_nats::Client,
    subjects: Subjects,
    events: broadcast::Sender<Observed>,
    me: u32,
    my_start: Option<u64>,
    /// Tells this state directory's cgroups apart from other runtimes' (run ids are the clients').
    cgroup_tag: String,
}

fn transient(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Transient(format!("{what}: {e}"))
}

impl LocalBackend {
    /// Prepares the state directory (0711) and detects cgroups; the process must run as root.
    pub fn new(
        config: LocalConfig,
        nats: async_nats::Client,
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
        let dir = &config.state_dir;
        for d in [dir.clone(), dir.join("runs"), dir.join("slots")] {
            std::fs::create_dir_all(&d)
                .map_err(|e| transient(&format!("creating {}", d.display()), e))?;
        }
        for (d, mode) in [
            (dir.clone(), 0o711),
            (dir.join("runs"), 0o711),
            (dir.join("slots"), 0o700),
        ] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode))
                .map_err(|e| transient(&format!("chmod {}", d.display()), e))?;
        }
        let abs = std::fs::canonicalize(dir)
            .map_err(|e| transient("resolving the state directory", e))?;
        for a in abs.ancestors().skip(1) {
            let mode = std::fs::metadata(a)
                .map(|m| m.permissions().mode())
                .unwrap_or(0);
            if mode & 0o001 == 0 {
                return Err(BackendError::Permanent(format!(
                    "{} is not traversable by other users (o+x); the sandbox uid must reach the state directory",
                    a.display()
                )));
            }
        }
        let mut config = config;
        config.state_dir = abs;
        let cgroups = if config.cgroups {
            Cgroups::detect(&config.cgroup_root, &config.cgroup_name)
        } else {
            Cgroups::default()
        };
        info!(state_dir = %config.state_dir.display(), cgroups = ?cgroups, "local sandbox runtime ready");
        let me = std::process::id();
        let (events, _) = broadcast::channel(1024);
        Ok(Self {
            inner: Arc::new(Inner {
                my_start: sandbox::proc_start_time(me),
                cgroup_tag: fnv1a_hex(config.state_dir.as_os_str().as_encoded_bytes()),
                config,
                cgroups,
                nats,
                subjects,
                events,
                me,
            }),
        })
    }

    fn run_dir(&self, run_id: &str) -> PathBuf {
        self.inner.config.state_dir.join("runs").join(run_id)
    }

    /// The name of the run's cgroups: unique on the host (run ids are only unique per state directory).
    fn cgroup_key(&self, run_id: &str) -> String {
        format!("{run_id}-{}", self.inner.cgroup_tag)
    }

    fn slot_file(&self, slot: u32) -> PathBuf {
        self.inner
            .config
            .state_dir
            .join("slots")
            .join(slot.to_string())
    }

    /// Creates what the run needs and starts it (idempotent per run id and attempt).
    pub async fn launch(&self, spec: &LaunchSpec) -> Result<Launched, BackendError> {
        let run_id = spec.run_id().to_string();
        if !is_valid_name(&run_id) {
            return Err(BackendError::Permanent(format!(
                "invalid run id {run_id:?}"
            )));
        }
        let req = &spec.run.request;
        let argv: Vec<String> = req.command.iter().chain(req.args.iter()).cloned().collect();
        if req.command.is_empty() {
            return Err(BackendError::Permanent(
                "the local runtime does not pull images: the request must set `command`".into(),
            ));
        }
        if let Some(existing) = self.observe(&run_id).await? {
            if existing.attempt == spec.attempt {
                return Ok(Launched::AlreadyExisted);
            }
            if existing.phase.is_finished() || existing.lost {
                info!(run_id = %run_id, old = existing.attempt, new = spec.attempt, "replacing a previous attempt");
                self.remove(&run_id).await?;
            } else {
                return Err(BackendError::NotOurs {
                    name: self.run_dir(&run_id).display().to_string(),
                    run_id,
                });
            }
        }
        let limits = self.limits(spec);
        let (slot, lock) = self.take_slot(&run_id)?;
        let uid = lock.uid();
        match self.prepare(spec, slot, uid) {
            Ok(true) => {}
            Ok(false) => {
                self.release_slot(slot, &run_id);
                return Ok(Launched::AlreadyExisted);
            }
            Err(e) => {
                self.release_slot(slot, &run_id);
                return Err(e);
            }
        }
        active().insert(self.run_dir(&run_id));
        let this = self.clone();
        let env = sandbox_env(&spec.env);
        let token = spec.env.get(env::RUN_TOKEN).cloned();
        let deadline = Duration::from_secs(spec.run.deadline_seconds.max(1));
        // Spawn here (not in the task) so the sandbox's parent thread is a runtime worker that lives as long as
        // the process: bwrap's --die-with-parent follows the thread that forked it.
        let spawned = this.spawn(&run_id, uid, limits, &env, argv);
        tokio::spawn(async move {
            this.supervise(run_id, spawned, lock, deadline, token).await;
        });
        Ok(Launched::Created)
    }

    fn limits(&self, spec: &LaunchSpec) -> Limits {
        let c = &self.inner.config;
        let lim = &spec.run.request.resources.limits;
        let memory_bytes = lim
            .memory
            .as_deref()
            .and_then(quantity::bytes)
            .unwrap_or(c.default_memory_bytes);
        let cpu_millis = lim.cpu.as_deref().and_then(quantity::cpu_millis);
        let deadline = spec.run.deadline_seconds.max(1);
        let by_deadline = cpu_millis
            .map(|m| (deadline.saturating_mul(m)).div_ceil(1000))
            .unwrap_or(deadline);
        Limits {
            memory_bytes: memory_bytes.max(1024 * 1024),
            cpu_millis,
            cpu_seconds: c.max_cpu_seconds.min(by_deadline).max(1),
            max_processes: c.max_processes.max(1),
            max_file_bytes: c.max_file_bytes,
            tmp_bytes: c.tmp_bytes.max(4096),
        }
    }

    /// Populates the run directory under a temporary name and renames it into place; `false` if it exists.
    fn prepare(&self, spec: &LaunchSpec, slot: u32, uid: u32) -> Result<bool, BackendError> {
        let run_id = spec.run_id();
        let final_dir = self.run_dir(run_id);
        let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let tmp = self
            .inner
            .config
            .state_dir
            .join("runs")
            .join(format!(".new-{run_id}-{nanos}"));
        let io = |what: &str| {
            let what = what.to_string();
            move |e: std::io::Error| transient(&what, e)
        };
        let build = || -> Result<(), BackendError> {
            std::fs::create_dir(&tmp).map_err(io("creating the run directory"))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o711))
                .map_err(io("chmod"))?;
            let req = &spec.run.request;
            let spec_file = SpecFile {
                request: req.clone(),
                queue: spec.run.queue.clone(),
                deadline_seconds: spec.run.deadline_seconds,
                attempt: spec.attempt,
                env: spec.env.clone(),
            };
            write_json(&tmp.join("spec.json"), &spec_file).map_err(io("writing spec.json"))?;
            let status = StatusFile {
                run_id: run_id.to_string(),
                queue: spec.run.queue.clone(),
                attempt: spec.attempt,
                image: req.image.clone(),
                phase: PhaseFile::Pending,
                exit_code: None,
                reason: None,
                message: None,
                started_at: None,
                finished_at: None,
                pid: None,
                uid,
                slot,
                supervisor_pid: self.inner.me,
                supervisor_start: self.inner.my_start,
            };
            write_json(&tmp.join("status.json"), &status).map_err(io("writing status.json"))?;
            let sb = tmp.join("sandbox");
            std::fs::create_dir(&sb).map_err(io("creating the sandbox directory"))?;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(sb.join("result.json"))
                .map_err(io("creating the result file"))?;
            std::os::unix::fs::chown(sb.join("result.json"), Some(uid), Some(uid))
                .map_err(io("chown"))?;
            std::os::unix::fs::chown(&sb, Some(uid), Some(uid)).map_err(io("chown"))?;
            std::fs::set_permissions(&sb, std::fs::Permissions::from_mode(0o700))
                .map_err(io("chmod"))?;
            Ok(())
        };
        if let Err(e) = build() {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        match std::fs::rename(&tmp, &final_dir) {
            Ok(()) => Ok(true),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                if final_dir.exists() {
                    Ok(false)
                } else {
                    Err(transient("renaming the run directory", e))
                }
            }
        }
    }

    /// Claims a free uid for `run_id`: its host-wide lock first (no other runtime on the host, whatever its state
    /// directory, runs as that uid while we hold it), then this state directory's slot file naming the run.
    /// Leftover processes of the uid (a crashed run's) are killed. Every uid of the range locked:
    /// `Transient("no free sandbox uid ...")`, for the dispatcher to retry later.
    fn take_slot(&self, run_id: &str) -> Result<(u32, UidLock), BackendError> {
        let c = &self.inner.config;
        for slot in 0..c.sandbox_slots {
            let uid = c.sandbox_uid_base + slot;
            let mut lock = match UidLock::try_acquire(&c.uid_lock_dir, uid) {
                Ok(Some(lock)) => lock,
                Ok(None) => continue,
                Err(e) => return Err(transient(&format!("locking sandbox uid {uid}"), e)),
            };
            // Whatever the slot file says is stale: a run still holding the slot would hold the lock too.
            write_atomic(&self.slot_file(slot), run_id.as_bytes(), 0o600)
                .map_err(|e| transient("writing the slot file", e))?;
            lock.note(&format!(
                "{} {} {run_id}\n",
                self.inner.me,
                c.state_dir.display()
            ));
            // A leftover of a crashed run must not share the uid's process count or files.
            kill_uid(&lock);
            return Ok((slot, lock));
        }
        Err(BackendError::Transient(format!(
            "no free sandbox uid: all {} uids from {} are in use on this host",
            c.sandbox_slots, c.sandbox_uid_base
        )))
    }

    fn release_slot(&self, slot: u32, run_id: &str) {
        let path = self.slot_file(slot);
        if std::fs::read_to_string(&path).is_ok_and(|h| h.trim() == run_id) {
            let _ = std::fs::remove_file(&path);
        }
    }

    fn slot_held_by(&self, slot: u32, run_id: &str) -> bool {
        std::fs::read_to_string(self.slot_file(slot)).is_ok_and(|h| h.trim() == run_id)
    }

    fn spawn(
        &self,
        run_id: &str,
        uid: u32,
        limits: Limits,
        env: &BTreeMap<String, String>,
        argv: Vec<String>,
    ) -> Result<Spawned, String> {
        let c = &self.inner.config;
        let dir = self.run_dir(run_id);
        let result_file = dir.join("sandbox/result.json");
        let cgroup_procs = self
            .inner
            .cgroups
            .create(&self.cgroup_key(run_id), &limits)
            .map_err(|e| format!("creating cgroups: {e}"))?;
        let mut hide = c.hide_paths.clone();
        hide.push(c.state_dir.clone());
        let cmd = SandboxCommand {
            bwrap: &c.bwrap,
            setpriv: &c.setpriv,
            prlimit: &c.prlimit,
            uid,
            limits,
            memory_cgroup: self.inner.cgroups.has_memory(),
            cgroup_procs,
            hide,
            result_file: &result_file,
            env,
            argv,
        };
        let (program, args) = cmd.build();
        debug!(run_id, ?program, ?args, "starting sandbox");
        let (reader, writer) =
            std::io::pipe().map_err(|e| format!("creating the log pipe: {e}"))?;
        let writer2 = writer
            .try_clone()
            .map_err(|e| format!("creating the log pipe: {e}"))?;
        let child = tokio::process::Command::new(program)
            .args(args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(writer2)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| format!("starting the sandbox: {e}"))?;
        let log = dir.join("log");
        let max = c.max_log_bytes;
        // A plain thread, not `spawn_blocking`: a runtime shutting down must not wait for a job's output.
        let (done, pump) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("airlock-log-{run_id}"))
            .spawn(move || {
                pump_log(reader, &log, max);
                let _ = done.send(());
            })
            .map_err(|e| format!("starting the log thread: {e}"))?;
        Ok(Spawned {
            child,
            pump,
            started_at: Utc::now(),
        })
    }

    async fn supervise(
        self,
        run_id: String,
        spawned: Result<Spawned, String>,
        lock: UidLock,
        deadline: Duration,
        token: Option<String>,
    ) {
        let dir = self.run_dir(&run_id);
        let mut status = match self.read_status(&run_id) {
            Ok(Some(s)) => s,
            other => {
                warn!(run_id = %run_id, ?other, "run status vanished before start");
                if let Ok(mut s) = spawned {
                    let _ = s.child.start_kill();
                    let _ = s.child.wait().await;
                }
                let lock = self.kill_tree_blocking(&run_id, None, Some(lock)).await;
                self.finish_cleanup(&run_id, None, lock);
                return;
            }
        };
        let result_file = dir.join("sandbox/result.json");
        let Spawned {
            mut child,
            pump,
            started_at,
        } = match spawned {
            Ok(s) => s,
            Err(e) => {
                warn!(run_id = %run_id, error = %e, "sandbox did not start");
                status.phase = PhaseFile::Failed;
                status.reason = Some("StartError".into());
                status.message = Some(e);
                status.finished_at = Some(Utc::now());
                // Nothing should run, but a failure after the process started would leave it behind.
                let lock = self.kill_tree_blocking(&run_id, None, Some(lock)).await;
                self.finish_cleanup(&run_id, Some(status.slot), lock);
                self.write_final(&run_id, &status);
                return;
            }
        };
        status.phase = PhaseFile::Running;
        status.pid = child.id();
        status.started_at = Some(started_at);
        if let Err(e) = write_json(&dir.join("status.json"), &status) {
            warn!(run_id = %run_id, error = %e, "could not write the running status");
        }
        let _ = self.inner.events.send(status.to_observed(false));
        info!(run_id = %run_id, pid = ?status.pid, uid = status.uid, "sandbox started");

        let waited = tokio::time::timeout(deadline, child.wait()).await;
        let timed_out = waited.is_err();
        if timed_out {
            info!(run_id = %run_id, "deadline passed; killing the sandbox");
            if let Some(pid) = status.pid {
                sandbox::sigkill(pid);
            }
        }
        let exit = match waited {
            Ok(r) => r,
            Err(_) => child.wait().await,
        };
        // Whatever survived the sandbox root (nothing should, the PID namespace dies with it) dies now: its
        // cgroups, and every process of its uid (we hold the uid's host-wide lock, so they are all the run's).
        let lock = self.kill_tree_blocking(&run_id, None, Some(lock)).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), pump).await;
        let oom = self.inner.cgroups.oom_kills(&self.cgroup_key(&run_id));
        self.finish_cleanup(&run_id, Some(status.slot), lock);

        let exit_code = match &exit {
            Ok(s) => s.code().or_else(|| s.signal().map(|n| 128 + n)),
            Err(_) => None,
        };
        let (phase, reason, message) = classify(timed_out, oom, exit_code, deadline);
        status.phase = phase;
        status.exit_code = exit_code;
        status.reason = Some(reason.into());
        status.message = message;
        status.finished_at = Some(Utc::now());
        if !dir.exists() {
            debug!(run_id = %run_id, "run was removed while running; not publishing");
            active().remove(&self.run_dir(&run_id));
            return;
        }
        if let Some(note) = self
            .publish_result(&run_id, &result_file, token.as_deref())
            .await
        {
            status.message = Some(match status.message.take() {
                Some(m) => format!("{m}; {note}"),
                None => note,
            });
        }
        self.write_final(&run_id, &status);
        info!(run_id = %run_id, phase = ?status.phase, reason = ?status.reason, exit_code = ?status.exit_code, "sandbox finished");
    }

    fn write_final(&self, run_id: &str, status: &StatusFile) {
        if let Err(e) = write_json(&self.run_dir(run_id).join("status.json"), status) {
            warn!(run_id, error = %e, "could not write the final status");
        }
        active().remove(&self.run_dir(run_id));
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

    /// Publishes the result file; returns a note for the status message when nothing was published.
    async fn publish_result(
        &self,
        run_id: &str,
        path: &Path,
        token: Option<&str>,
    ) -> Option<String> {
        let max = self.inner.config.max_result_bytes;
        let mut buf = Vec::new();
        let read =
            std::fs::File::open(path).and_then(|f| f.take(max as u64 + 1).read_to_end(&mut buf));
        match read {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => return Some(format!("result file unreadable: {e}")),
            Ok(_) if buf.is_empty() => return None,
            Ok(_) if buf.len() > max => {
                warn!(run_id, max, "result file too large; not published");
                return Some(format!("result file exceeds {max} bytes; not published"));
            }
            Ok(_) => {}
        }
        let Some(token) = token else {
            warn!(
                run_id,
                "no run token in the job environment; result not published"
            );
            return Some("no run token; result not published".into());
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(env::RUN_TOKEN_HEADER, token);
        let subject = self.inner.subjects.results(run_id);
        let mut last = String::new();
        for attempt in 0..5u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            let sent = async {
                self.inner
                    .nats
                    .publish_with_headers(subject.clone(), headers.clone(), buf.clone().into())
                    .await
                    .map_err(|e| e.to_string())?;
                self.inner.nats.flush().await.map_err(|e| e.to_string())
            };
            match tokio::time::timeout(Duration::from_secs(5), sent).await {
                Ok(Ok(())) => {
                    debug!(run_id, bytes = buf.len(), "result published");
                    return None;
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = "timed out".into(),
            }
            warn!(run_id, error = %last, attempt, "publishing the result failed");
        }
        Some(format!("result not published: {last}"))
    }

    /// SIGKILLs everything of the run: the sandbox root (if `pid` is ours), its cgroups, and, given the uid's
    /// host-wide lock, every process of its uid (the lock proves no other runtime uses the uid now).
    fn kill_tree(&self, run_id: &str, pid: Option<u32>, uid: Option<&UidLock>) {
        let marker = self.run_dir(run_id).join("sandbox/result.json");
        if let Some(pid) = pid
            && sandbox::is_our_sandbox(pid, &marker)
        {
            sandbox::sigkill(pid);
        }
        // Until they are gone, zombies included (they still count against the uid's process limit), so a
        // finished run leaves its uid clean for the next run of the slot.
        let key = self.cgroup_key(run_id);
        let t0 = std::time::Instant::now();
        while t0.elapsed() < KILL_WAIT {
            let mut pids = self.inner.cgroups.pids(&key);
            if let Some(lock) = uid {
                pids.extend(sandbox::pids_of_uid(lock.uid()));
            }
            if pids.is_empty() {
                return;
            }
            for p in pids {
                sandbox::sigkill(p);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        warn!(
            run_id,
            uid = uid.map(UidLock::uid),
            "processes of the run are still there after SIGKILL"
        );
    }

    /// [`Self::kill_tree`] on a blocking thread; gives the lock back.
    async fn kill_tree_blocking(
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
    /// is dead, or another run that has the uid now, whose processes must not be touched.
    fn kill_removed(&self, run_id: &str, pid: Option<u32>, uid: u32, slot: u32) {
        let lock = if self.slot_held_by(slot, run_id) {
            UidLock::try_acquire(&self.inner.config.uid_lock_dir, uid).unwrap_or_else(|e| {
                warn!(run_id, uid, error = %e, "cannot lock the run's uid; not killing by uid");
                None
            })
        } else {
            None
        };
        self.kill_tree(run_id, pid, lock.as_ref());
    }

    fn read_status(&self, run_id: &str) -> Result<Option<StatusFile>, BackendError> {
        read_json(&self.run_dir(run_id).join("status.json"))
            .map_err(|e| transient("reading status.json", e))
    }

    /// Whether the process that supervises the run is still there.
    fn supervisor_alive(&self, s: &StatusFile) -> bool {
        if s.supervisor_pid == self.inner.me && s.supervisor_start == self.inner.my_start {
            return active().contains(&self.run_dir(&s.run_id));
        }
        let start = sandbox::proc_start_time(s.supervisor_pid);
        start.is_some() && start == s.supervisor_start
    }

    /// The run's current state, or `None` when nothing exists for it.
    pub async fn observe(&self, run_id: &str) -> Result<Option<Observed>, BackendError> {
        if !is_valid_name(run_id) {
            return Ok(None);
        }
        let Some(s) = self.read_status(run_id)? else {
            return Ok(None);
        };
        if s.is_finished() || self.supervisor_alive(&s) {
            return Ok(Some(s.to_observed(false)));
        }
        let mut o = s.to_observed(true);
        o.phase = super::Phase::Failed;
        o.reason = Some("SupervisorLost".into());
        o.message = Some("the process supervising this run is gone".into());
        Ok(Some(o))
    }

    /// The last `max_bytes` of the run's output (stdout and stderr interleaved).
    pub async fn logs_tail(&self, run_id: &str, max_bytes: usize) -> Result<String, BackendError> {
        if !is_valid_name(run_id) {
            return Ok(String::new());
        }
        let path = self.run_dir(run_id).join("log");
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
            Err(e) => return Err(transient("opening the log", e)),
        };
        let len = f
            .metadata()
            .map_err(|e| transient("reading the log", e))?
            .len();
        let start = len.saturating_sub(max_bytes as u64);
        f.seek(SeekFrom::Start(start))
            .map_err(|e| transient("reading the log", e))?;
        let mut buf = Vec::with_capacity((len - start) as usize);
        f.take(max_bytes as u64)
            .read_to_end(&mut buf)
            .map_err(|e| transient("reading the log", e))?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Kills the run if it is still going and deletes its directory, cgroups and slot (idempotent).
    pub async fn remove(&self, run_id: &str) -> Result<Removed, BackendError> {
        if !is_valid_name(run_id) {
            return Ok(Removed::Absent);
        }
        let dir = self.run_dir(run_id);
        let status = match self.read_status(run_id) {
            Ok(s) => s,
            Err(e) => {
                warn!(run_id, error = %e, "unreadable status; removing anyway");
                None
            }
        };
        if !dir.exists() {
            return Ok(Removed::Absent);
        }
        if let Some(s) = &status {
            let (this, rid, pid, uid, slot) =
                (self.clone(), run_id.to_string(), s.pid, s.uid, s.slot);
            let _ =
                tokio::task::spawn_blocking(move || this.kill_removed(&rid, pid, uid, slot)).await;
        }
        self.inner.cgroups.remove(&self.cgroup_key(run_id));
        let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let trash = self
            .inner
            .config
            .state_dir
            .join("runs")
            .join(format!(".trash-{run_id}-{nanos}"));
        match std::fs::rename(&dir, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Removed::Absent),
            Err(e) => return Err(transient("removing the run directory", e)),
        }
        if let Some(s) = &status {
            self.release_slot(s.slot, run_id);
        }
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(trash)).await;
        info!(run_id, "run removed");
        Ok(Removed::Deleted)
    }

    /// Every run in the state directory with a readable status.
    pub async fn list(&self) -> Result<Vec<Observed>, BackendError> {
        Ok(self
            .list_objects()
            .await?
            .into_iter()
            .filter_map(|r| r.observed)
            .collect())
    }

    /// Every run directory in the state directory, one entry each: `observed` is `None` when its status
    /// cannot be read (missing or unreadable `status.json`), `created_at` is when `spec.json` was written (the
    /// directory's modification time without it), `terminating` is always false (removal is synchronous).
    pub async fn list_objects(&self) -> Result<Vec<RunObjects>, BackendError> {
        let rd = std::fs::read_dir(self.inner.config.state_dir.join("runs"))
            .map_err(|e| transient("listing runs", e))?;
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            // Temporary (`.new-*`) and removed (`.trash-*`) directories, and anything that is no run's.
            if name.starts_with('.') || !is_valid_name(&name) {
                continue;
            }
            let observed = match self.observe(&name).await {
                Ok(o) => o,
                Err(e) => {
                    warn!(run_id = %name, error = %e, "could not observe run");
                    None
                }
            };
            let dir = entry.path();
            let created_at = std::fs::metadata(dir.join("spec.json"))
                .or_else(|_| std::fs::metadata(&dir))
                .and_then(|m| m.modified())
                .ok()
                .map(chrono::DateTime::<Utc>::from);
            out.push(RunObjects {
                run_id: name,
                observed,
                created_at,
                terminating: false,
            });
        }
        out.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        Ok(out)
    }

    /// The current state of every run, then changes made by the supervisors of this process.
    pub fn watch(&self) -> BoxStream<'static, Observed> {
        let rx = self.inner.events.subscribe();
        let this = self.clone();
        let initial = futures::stream::once(async move { relist(&this).await })
            .flat_map(futures::stream::iter);
        let this = self.clone();
        let live = futures::stream::unfold((rx, this), |(mut rx, this)| async move {
            loop {
                match rx.recv().await {
                    Ok(o) => return Some((vec![o], (rx, this))),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        warn!(missed = n, "watch lagged; re-listing");
                        let all = relist(&this).await;
                        return Some((all, (rx, this)));
                    }
                    // The sender lives in `this`; it cannot close while we hold it.
                    Err(broadcast::error::RecvError::Closed) => continue,
                }
            }
        })
        .flat_map(futures::stream::iter);
        initial.chain(live).boxed()
    }
}

async fn relist(b: &LocalBackend) -> Vec<Observed> {
    let mut delay = Duration::from_millis(100);
    loop {
        match b.list().await {
            Ok(v) => return v,
            Err(e) => {
                warn!(error = %e, "listing runs failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Run directories supervised by this process (any backend instance in it).
static ACTIVE: LazyLock<Mutex<HashSet<PathBuf>>> = LazyLock::new(Mutex::default);

fn active() -> std::sync::MutexGuard<'static, HashSet<PathBuf>> {
    ACTIVE.lock().unwrap_or_else(|p| p.into_inner())
}

struct Spawned {
    child: tokio::process::Child,
    pump: tokio::sync::oneshot::Receiver<()>,
    started_at: chrono::DateTime<Utc>,
}

/// The job environment: the contract's variables, the result file instead of a NATS URL, sane defaults.
fn sandbox_env(given: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = given.clone();
    env.remove(env::NATS_URL);
    env.insert(env::RESULT_FILE.into(), sandbox::SANDBOX_RESULT.into());
    env.entry("PATH".into())
        .or_insert_with(|| "/usr/local/bin:/usr/bin:/bin".into());
    env.entry("HOME".into())
        .or_insert_with(|| sandbox::SANDBOX_WORK.into());
    env.entry("TMPDIR".into()).or_insert_with(|| "/tmp".into());
    env
}

/// Phase, reason and message of a finished sandbox.
fn classify(
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
    match exit_code {
        Some(0) => (PhaseFile::Succeeded, "Completed", None),
        Some(c) if c == 128 + SIGXCPU => (
            PhaseFile::Failed,
            "CpuLimit",
            Some("killed by SIGXCPU at its CPU time limit".into()),
        ),
        Some(c) if c == 128 + SIGXFSZ => (
            PhaseFile::Failed,
            "FileSizeLimit",
            Some("killed by SIGXFSZ at its file size limit".into()),
        ),
        Some(c) if c > 128 => (
            PhaseFile::Failed,
            "Error",
            Some(format!("killed by signal {}", c - 128)),
        ),
        Some(c) => (
            PhaseFile::Failed,
            "Error",
            Some(format!("exited with code {c}")),
        ),
        None => (
            PhaseFile::Failed,
            "Error",
            Some("exit status unknown".into()),
        ),
    }
}

/// Copies the job's output into `path` up to `max` bytes, then drains and discards the rest.
fn pump_log(mut reader: std::io::PipeReader, path: &Path, max: u64) {
    let mut file = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => Some(f),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot open the log file; discarding output");
            None
        }
    };
    let mut written = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if let Some(f) = file.as_mut() {
            let room = max.saturating_sub(written) as usize;
            let take = n.min(room);
            if take > 0 && f.write_all(&buf[..take]).is_err() {
                file = None;
                continue;
            }
            written += take as u64;
            if take < n {
                let _ = f.write_all(b"\n[airlock: log truncated]\n");
                file = None;
            }
        }
    }
}

/// How long killing a run waits for its processes to be gone.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// SIGKILLs every process of the locked uid (leftovers of a crashed run; the lock says no run uses it).
fn kill_uid(lock: &UidLock) {
    let uid = lock.uid();
    let t0 = std::time::Instant::now();
    while t0.elapsed() < KILL_WAIT {
        let pids = sandbox::pids_of_uid(uid);
        if pids.is_empty() {
            return;
        }
        for p in pids {
            sandbox::sigkill(p);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
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
