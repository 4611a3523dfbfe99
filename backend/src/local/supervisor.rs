//! Per-run supervisor processes ([`super::Supervisor::Process`]), like containerd's shim or podman's conmon: each run
//! is owned by a small process of its own, not by the dispatcher, so killing or restarting the dispatcher
//! leaves running jobs alone, and a restarted dispatcher adopts them.
//!
//! # Hand-over
//! `launch` populates the run directory holding the run's supervision lock and uid lock, writes
//! `supervisor.json` (0600: what the process needs besides `spec.json`), and starts
//! `<program> <args> <run dir>` in a process group of its own, its stdin a descriptor of the supervision lock
//! and its stdout one of the uid lock (an `flock` belongs to the open file, so the child holds both from
//! its first instruction; the launcher's copies are closed after the spawn), its stderr `supervisor.log`.
//! `status.json` then names the supervisor process, so liveness (its pid and start time, and the supervision
//! lock) follows it. The process runs the same `supervise` as an in-process task: pull, sandbox (which dies
//! with its supervisor: `--die-with-parent`), deadline, clean-up, final status. A supervisor that dies is
//! detected as today (`SupervisorLost`) and the run is dispatched again.
//!
//! # Results
//! A supervisor process has no NATS connection: it writes the final status with `result_pending`, which
//! [`LocalBackend::observe`] reports as still `Running`; the dispatcher's watch (this file's
//! `publish_pending`, under `publish.lock`) publishes the result file with the run's token, then clears the
//! flag, and the run is seen finished. So a job that ends while no dispatcher runs has its result published
//! when one is back, and the ingester still has it before anyone sees the run finished.

use std::fs::File;
use std::os::fd::AsFd as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use airlock_images::{ImageRef, RegistryConfig};
use airlock_schemas::{Subjects, env, trace};
use chrono::Utc;
use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::liveness::SupervisionLock;
use super::procs::proc_start_time;
use super::rundir::{RESULT, SPEC, STATUS};
use super::sandbox::Limits;
use super::state::{SpecEnv, SpecFile, StatusFile, read_json, write_json};
use super::supervise::Run;
use super::uids::UidLock;
use super::{LocalBackend, LocalConfig};
use crate::BackendError;

/// The hidden argument of [`super::Supervisor::this_executable`].
pub const SUPERVISE_ARG: &str = "__airlock-supervise";
/// What a supervisor process needs besides `spec.json`.
const SUPERVISOR_FILE: &str = "supervisor.json";
/// The supervisor process's own log (its stderr).
const SUPERVISOR_LOG: &str = "supervisor.log";
/// Serializes publishing a pending result.
const PUBLISH_LOCK: &str = "publish.lock";

/// `supervisor.json`.
#[derive(Debug, Serialize, Deserialize)]
struct SupervisorFile {
    state_dir: PathBuf,
    bwrap: PathBuf,
    setpriv: PathBuf,
    prlimit: PathBuf,
    launcher: PathBuf,
    uid_lock_dir: PathBuf,
    uid_base: u32,
    slots: u32,
    max_log_bytes: u64,
    cgroups: bool,
    cgroup_root: PathBuf,
    cgroup_name: String,
    image_dir: PathBuf,
    image_cache_bytes: u64,
    insecure_registries: Vec<String>,
    auth_file: Option<PathBuf>,
    system_roots: bool,
    extra_ca_files: Vec<PathBuf>,
    uid: u32,
    limits: Limits,
    /// The run's image reference, parsed by the launcher.
    #[serde(default)]
    image: Option<ImageRef>,
    deadline_seconds: u64,
    /// When the deadline passes (Unix milliseconds).
    deadline_at_ms: i64,
}

impl SupervisorFile {
    fn config(&self) -> LocalConfig {
        let mut c = LocalConfig::new(&self.state_dir);
        c.bwrap.clone_from(&self.bwrap);
        c.setpriv.clone_from(&self.setpriv);
        c.prlimit.clone_from(&self.prlimit);
        c.launcher.clone_from(&self.launcher);
        c.uid_lock_dir.clone_from(&self.uid_lock_dir);
        c.sandbox_uid_base = self.uid_base;
        c.sandbox_slots = self.slots;
        c.max_log_bytes = self.max_log_bytes;
        c.cgroups = self.cgroups;
        c.cgroup_root.clone_from(&self.cgroup_root);
        c.cgroup_name.clone_from(&self.cgroup_name);
        c.image_dir = Some(self.image_dir.clone());
        c.image_cache_bytes = self.image_cache_bytes;
        c.registry = RegistryConfig {
            insecure_registries: self.insecure_registries.clone(),
            auth_file: self.auth_file.clone(),
            system_roots: self.system_roots,
            extra_ca_files: self.extra_ca_files.clone(),
            ..RegistryConfig::default()
        };
        // The launching runtime checked (or was told to accept) the memory cgroup.
        c.allow_no_memory_cgroup = true;
        c
    }
}

impl LocalBackend {
    /// Hands `run` to a supervisor process of its own (see the module documentation).
    pub(super) fn start_supervisor(
        &self,
        program: &Path,
        args: &[String],
        run: Run,
    ) -> Result<(), BackendError> {
        let run_id = run.run_id.clone();
        let started = self.spawn_supervisor(program, args, &run);
        // The supervisor holds the uid through its own descriptor and releases it (unlinking the file). Even if
        // starting it failed half-way, it may hold the lock: never unlink here (a file left over only costs the
        // next claimant a scan for leftovers).
        run.uid_lock.hand_over();
        match started {
            Ok(pid) => {
                info!(run_id = %run_id, pid, "Supervisor process started");
                Ok(())
            }
            Err(e) => {
                warn!(run_id = %run_id, error = %e, "Supervisor process did not start; undoing the launch");
                if let Ok(Some(trash)) = self.move_to_trash(&run_id) {
                    let _ = std::fs::remove_dir_all(trash);
                }
                if let Ok(Some(s)) = self.read_status(&run_id) {
                    self.release_slot(s.slot, &run_id);
                }
                Err(e)
            }
        }
    }

    fn spawn_supervisor(
        &self,
        program: &Path,
        args: &[String],
        run: &Run,
    ) -> Result<u32, BackendError> {
        let c = self.config();
        let dir = self.run_dir(&run.run_id);
        let remaining = run
            .deadline_at
            .saturating_duration_since(tokio::time::Instant::now());
        let file = SupervisorFile {
            state_dir: c.state_dir.clone(),
            bwrap: c.bwrap.clone(),
            setpriv: c.setpriv.clone(),
            prlimit: c.prlimit.clone(),
            launcher: c.launcher.clone(),
            uid_lock_dir: c.uid_lock_dir.clone(),
            uid_base: c.sandbox_uid_base,
            slots: c.sandbox_slots,
            max_log_bytes: c.max_log_bytes,
            cgroups: c.cgroups,
            cgroup_root: c.cgroup_root.clone(),
            cgroup_name: c.cgroup_name.clone(),
            image_dir: c.image_dir(),
            image_cache_bytes: c.image_cache_bytes,
            insecure_registries: c.registry.insecure_registries.clone(),
            auth_file: c.registry.auth_file.clone(),
            system_roots: c.registry.system_roots,
            extra_ca_files: c.registry.extra_ca_files.clone(),
            uid: run.uid_lock.uid(),
            limits: run.limits,
            image: run.image.clone(),
            deadline_seconds: run.deadline.as_secs(),
            deadline_at_ms: Utc::now().timestamp_millis()
                + i64::try_from(remaining.as_millis()).unwrap_or(i64::MAX / 2),
        };
        let path = dir.join(SUPERVISOR_FILE);
        write_json(&path, &file).map_err(BackendError::io("writing", &path))?;
        let log_path = dir.join(SUPERVISOR_LOG);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(BackendError::io("opening", &log_path))?;
        let lock_path = dir.join(super::liveness::LOCK_FILE);
        let supervision = run
            .supervision
            .share()
            .map_err(BackendError::io("sharing", &lock_path))?;
        let uid_lock = run
            .uid_lock
            .share()
            .map_err(BackendError::io("sharing", &c.uid_lock_dir))?;
        // tokio's, so that the child is reaped when it exits (a dropped tokio child is reaped in the background),
        // never left a zombie of this process.
        let child = tokio::process::Command::new(program)
            .args(args)
            .arg(&dir)
            .stdin(supervision)
            .stdout(uid_lock)
            .stderr(log)
            // Not in the dispatcher's process group: a Ctrl-C or group kill of it is not the run's.
            .process_group(0)
            .spawn()
            .map_err(BackendError::io("starting the supervisor", program))?;
        let pid = child.id().unwrap_or_default();
        // Waited for by a task (through its pidfd), so that it is reaped when it exits without tokio polling
        // every dropped child at each SIGCHLD; it outlives this process by design (init reaps it then).
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(async move {
                let mut child = child;
                let _ = child.wait().await;
            })),
            Err(_) => drop(child),
        }
        let mut status = self
            .read_status(&run.run_id)?
            .ok_or_else(|| BackendError::Transient("the run vanished while launching".into()))?;
        status.supervisor_pid = pid;
        status.supervisor_start = proc_start_time(pid);
        let path = dir.join(STATUS);
        write_json(&path, &status).map_err(BackendError::io("writing", &path))?;
        Ok(pid)
    }

    /// Names this process as the run's supervisor in its status (the launcher does too, after the spawn;
    /// whichever comes last, both name this process). Nothing is written when the launcher did it already.
    fn claim_status(&self, run_id: &str) {
        if let Ok(Some(mut status)) = self.read_status(run_id) {
            if status.supervisor_pid == self.inner.me
                && status.supervisor_start == self.inner.my_start
            {
                return;
            }
            status.supervisor_pid = self.inner.me;
            status.supervisor_start = self.inner.my_start;
            let path = self.run_dir(run_id).join(STATUS);
            if let Err(e) = write_json(&path, &status) {
                warn!(run_id, error = %e, "Could not claim the run's status");
            }
        }
    }

    /// Publishes the result of a run whose supervisor process left it pending, then clears the flag and
    /// returns the final status written; a run another publisher holds is skipped (it will be seen again).
    pub(super) async fn publish_pending(&self, run_id: &str) -> Option<StatusFile> {
        let dir = self.run_dir(run_id);
        let lock = File::create(dir.join(PUBLISH_LOCK)).ok()?;
        rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).ok()?;
        let mut status = self.read_status(run_id).ok()??;
        if !status.result_pending {
            return None;
        }
        // Only the env (token, traceparent): the request is not needed here.
        let spec: Option<SpecEnv> = read_json(&dir.join(SPEC)).ok().flatten();
        let job_env = spec.map(|s| s.env).unwrap_or_default();
        let token = job_env.get(env::RUN_TOKEN);
        let traceparent = job_env.get(trace::TRACEPARENT);
        if let Err(e) = self
            .publish_result(
                run_id,
                &dir.join(RESULT),
                token.map(String::as_str),
                traceparent.map(String::as_str),
            )
            .await
        {
            let note = e.to_string();
            status.message = Some(match status.message.take() {
                Some(m) => format!("{m}; {note}"),
                None => note,
            });
        }
        status.result_pending = false;
        let path = dir.join(STATUS);
        if let Err(e) = write_json(&path, &status) {
            warn!(run_id, error = %e, "Could not write the final status");
            return None;
        }
        info!(run_id, phase = ?status.phase, reason = ?status.reason, "Result of a supervisor process published");
        Some(status)
    }
}

/// When this process was started as a supervisor (`<exe> __airlock-supervise <run dir>`), supervises that run
/// and returns the exit code; `None` otherwise. Call it first thing in `main` of every binary that embeds the
/// local runtime with [`super::Supervisor::this_executable`].
pub fn supervise_if_asked() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != SUPERVISE_ARG {
        return None;
    }
    Some(match args.next() {
        Some(dir) => supervise_process(Path::new(&dir)),
        None => {
            eprintln!("usage: {SUPERVISE_ARG} RUN_DIR");
            ExitCode::from(2)
        }
    })
}

/// The supervisor process: takes the inherited locks, then supervises the run in `dir` to its final status.
pub fn supervise_process(dir: &Path) -> ExitCode {
    match supervise_process_inner(dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{} supervisor: {e}", Utc::now().to_rfc3339());
            ExitCode::FAILURE
        }
    }
}

fn supervise_process_inner(dir: &Path) -> Result<(), String> {
    // Logs go to stderr, i.e. the run's `supervisor.log`.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let text = |e: &dyn std::fmt::Display| e.to_string();
    // The locks come as stdin and stdout; keep a descriptor of each, then point 0 and 1 at /dev/null so the
    // locks go when this process lets them go.
    let supervision = File::from(
        std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| text(&e))?,
    );
    let uid_file = File::from(
        std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| text(&e))?,
    );
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| text(&e))?;
    rustix::stdio::dup2_stdin(&null).map_err(|e| text(&e))?;
    rustix::stdio::dup2_stdout(&null).map_err(|e| text(&e))?;
    let file: SupervisorFile = read_json(&dir.join(SUPERVISOR_FILE))
        .map_err(|e| text(&e))?
        .ok_or("no supervisor.json")?;
    let spec: SpecFile = read_json(&dir.join(SPEC))
        .map_err(|e| text(&e))?
        .ok_or("no spec.json")?;
    let run_id = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("the run directory has no name")?
        .to_string();
    // One run: a current-thread runtime (its thread, which spawns the sandbox, lives as long as the process,
    // as bwrap's `--die-with-parent` needs); blocking work goes to its blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| text(&e))?;
    runtime.block_on(async move {
        let backend =
            LocalBackend::build(file.config(), None, Subjects::default()).map_err(|e| text(&e))?;
        let left_ms = file.deadline_at_ms - Utc::now().timestamp_millis();
        let left = Duration::from_millis(u64::try_from(left_ms).unwrap_or(0));
        let run = Run {
            uid_lock: UidLock::inherited(&file.uid_lock_dir, file.uid, uid_file),
            supervision: SupervisionLock::inherited(supervision),
            deadline: Duration::from_secs(file.deadline_seconds),
            deadline_at: tokio::time::Instant::now() + left,
            token: spec.env.get(env::RUN_TOKEN).cloned(),
            request: spec.request,
            image: file.image.clone(),
            env: spec.env,
            limits: file.limits,
            run_id,
        };
        backend.claim_status(&run.run_id);
        backend.supervise(run).await;
        Ok(())
    })
}

/// Kills the supervisor processes of the unfinished runs in `state_dir` that are not this process (their
/// sandboxes die with them) and waits until they are gone: for `airlock dev`, which stops everything it
/// started. Their runs are then seen lost.
pub async fn stop_supervisors(state_dir: &Path) {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir(state_dir.join("runs")) else {
        return;
    };
    let mut killed = Vec::new();
    for e in rd.flatten() {
        let Ok(Some(s)) = read_json::<StatusFile>(&e.path().join(STATUS)) else {
            continue;
        };
        if s.is_finished() || s.supervisor_pid == me {
            continue;
        }
        if s.supervisor_start.is_some() && proc_start_time(s.supervisor_pid) == s.supervisor_start {
            super::procs::sigkill(s.supervisor_pid);
            killed.push((s.supervisor_pid, s.supervisor_start));
        }
    }
    for _ in 0..500 {
        if killed
            .iter()
            .all(|(pid, start)| proc_start_time(*pid) != *start || super::procs::is_zombie(*pid))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
