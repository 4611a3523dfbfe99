//! The on-disk state of local runs: `spec.json` and `status.json` under `<state_dir>/runs/<run_id>/`.
//!
//! Invariants: every file is written atomically (a temporary file in the same directory, then `rename`), so a
//! reader in another process sees either the old or the new version, never a torn one. `status.json` only
//! moves forward: Pending, Running, then a finished phase.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use airlock_schemas::RunRequest;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{ImageFetch, Observed, Phase, Reason};

/// What was asked for; written once at launch (it holds the token, so it is readable by root only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SpecFile {
    /// The validated request (policy defaults applied).
    pub request: RunRequest,
    /// Queue.
    pub queue: String,
    /// Effective deadline.
    pub deadline_seconds: u64,
    /// Attempt (1-based).
    pub attempt: u32,
    /// The job environment as given by the dispatcher.
    pub env: BTreeMap<String, String>,
}

/// Only the job environment of a `spec.json` (our own file, not a wire type): the rest is skipped unparsed.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SpecEnv {
    /// [`SpecFile::env`].
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Phase as stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PhaseFile {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl From<PhaseFile> for Phase {
    fn from(p: PhaseFile) -> Self {
        match p {
            PhaseFile::Pending => Phase::Pending,
            PhaseFile::Running => Phase::Running,
            PhaseFile::Succeeded => Phase::Succeeded,
            PhaseFile::Failed => Phase::Failed,
        }
    }
}

/// The run's state as its supervisor last wrote it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StatusFile {
    pub run_id: String,
    pub queue: String,
    pub attempt: u32,
    pub image: String,
    /// The manifest digest of the image the job ran (once pulled).
    #[serde(default)]
    pub image_digest: Option<String>,
    pub phase: PhaseFile,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Why the job is in its phase, stored as its word ([`Reason`]'s serde form).
    #[serde(default)]
    pub reason: Option<Reason>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// Pid of the sandbox root (the `bwrap` process), once spawned.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Uid (and gid) the sandbox runs as.
    pub uid: u32,
    /// Slot the uid was taken from.
    pub slot: u32,
    /// Pid of the supervising (dispatcher) process.
    pub supervisor_pid: u32,
    /// Start time of the supervising process (clock ticks since boot), to tell a reused pid apart.
    #[serde(default)]
    pub supervisor_start: Option<u64>,
    /// The job is over but its result file is not published yet (a supervisor process leaves that to the
    /// dispatcher); the run is reported `Running` until it is.
    #[serde(default)]
    pub result_pending: bool,
    /// How the image was made present (once it was).
    #[serde(default)]
    pub image_fetch: Option<ImageFetch>,
}

impl StatusFile {
    /// The status as the backend reports it; `lost` is decided by the caller.
    pub fn to_observed(&self, lost: bool) -> Observed {
        if self.result_pending {
            return Observed {
                phase: Phase::Running,
                exit_code: None,
                reason: None,
                message: None,
                finished_at: None,
                ..self.without_pending().to_observed(lost)
            };
        }
        Observed {
            run_id: self.run_id.clone(),
            queue: Some(self.queue.clone()),
            attempt: self.attempt,
            phase: self.phase.into(),
            exit_code: self.exit_code,
            reason: self.reason.clone(),
            message: self.message.clone(),
            waiting_since: None,
            started_at: self.started_at,
            finished_at: self.finished_at,
            lost,
            image_fetch: self.image_fetch,
        }
    }

    /// This status with its result no longer pending.
    pub fn without_pending(&self) -> Self {
        Self {
            result_pending: false,
            ..self.clone()
        }
    }

    /// Whether the job is over.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, PhaseFile::Succeeded | PhaseFile::Failed)
    }
}

/// Writes `bytes` to `path` atomically with `mode`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("path has no parent"))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // Unique among this process's writes (the counter), across processes (the pid, read once) and against a
    // leftover of a dead process that had the same pid (the time).
    let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.{}.{nanos}.{n}.tmp", my_pid()));
    let res = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        // `open` applied the umask: set the exact mode only when the umask took bits of it away.
        if mode & umask() != 0 {
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Sequence of this process's temporary file names.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// This process's pid, read once (a forked child that writes files execs first, so it reads its own).
fn my_pid() -> u32 {
    static PID: OnceLock<u32> = OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// This process's umask, read once from `/proc/self/status` (the services never change it); all bits set when
/// it cannot be read, so the mode is then always set explicitly.
fn umask() -> u32 {
    static UMASK: OnceLock<u32> = OnceLock::new();
    *UMASK.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o7777)
    })
}

/// Writes `value` as JSON to `path` atomically (root-only, 0600).
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    write_atomic(path, &bytes, 0o600)
}

/// Reads JSON from `path`; `Ok(None)` when the file does not exist.
pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}
