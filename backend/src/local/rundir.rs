//! The state directory and each run's directory in it: paths, preparation, atomic population, removal.
//!
//! A run directory is populated under a temporary name (`runs/.new-<run_id>-<nanos>`) and renamed into
//! place, so it appears complete or not at all, and two launches racing for one run id create it once. It is
//! removed by renaming it away (`runs/.trash-<run_id>-<nanos>`) before deleting it, so it disappears at once.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::Utc;

use super::LocalBackend;
use super::liveness::SupervisionLock;
use super::state::{PhaseFile, SpecFile, StatusFile, write_json};
use crate::{BackendError, LaunchSpec};

/// The request, as launched.
pub(super) const SPEC: &str = "spec.json";
/// The run's state, as its supervisor last wrote it.
pub(super) const STATUS: &str = "status.json";
/// The job's output (stdout and stderr, capped).
pub(super) const LOG: &str = "log";
/// The job's result file, on the host (bind-mounted into the sandbox); also how its processes are told apart.
pub(super) const RESULT: &str = "sandbox/result.json";
/// The launch script: the job's argv and environment (0400, owned by the run's uid, mounted read-only).
pub(super) const LAUNCH: &str = "launch.sh";

/// Creates the state directory (0711) with `runs/` (0711) and `slots/` (0700), and checks that the sandbox uid
/// can reach it (every ancestor `o+x`); returns its absolute path.
pub(super) fn prepare_state_dir(dir: &Path) -> Result<PathBuf, BackendError> {
    for (d, mode) in [
        (dir.to_path_buf(), 0o711),
        (dir.join("runs"), 0o711),
        (dir.join("slots"), 0o700),
    ] {
        std::fs::create_dir_all(&d).map_err(BackendError::io("creating", &d))?;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode))
            .map_err(BackendError::io("chmod", &d))?;
    }
    let abs = std::fs::canonicalize(dir).map_err(BackendError::io("resolving", dir))?;
    if let Some(parent) = abs.parent() {
        check_traversable(parent, "the state directory")?;
    }
    Ok(abs)
}

/// Checks that `abs` and every ancestor of it are traversable by other users: the sandbox uid must reach
/// `what`.
pub(super) fn check_traversable(abs: &Path, what: &str) -> Result<(), BackendError> {
    for a in abs.ancestors() {
        let mode = std::fs::metadata(a)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        if mode & 0o001 == 0 {
            return Err(BackendError::Permanent(format!(
                "{} is not traversable by other users (o+x); the sandbox uid must reach {what}",
                a.display()
            )));
        }
    }
    Ok(())
}

impl LocalBackend {
    /// `<state_dir>/runs`.
    pub(super) fn runs_dir(&self) -> PathBuf {
        self.config().state_dir.join("runs")
    }

    /// The run's directory.
    pub(super) fn run_dir(&self, run_id: &str) -> PathBuf {
        self.runs_dir().join(run_id)
    }

    /// Populates the run directory under a temporary name and renames it into place, holding the run's
    /// supervision lock from before it is visible; `None` if the directory already exists.
    pub(super) fn populate(
        &self,
        spec: &LaunchSpec,
        slot: u32,
        uid: u32,
    ) -> Result<Option<SupervisionLock>, BackendError> {
        let run_id = spec.run_id();
        let final_dir = self.run_dir(run_id);
        let tmp = self.runs_dir().join(format!(".new-{run_id}-{}", nanos()));
        let built = self.write_run_files(&tmp, spec, slot, uid);
        let lock = match built {
            Ok(lock) => lock,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        match std::fs::rename(&tmp, &final_dir) {
            Ok(()) => Ok(Some(lock)),
            Err(_) if final_dir.exists() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(None)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(BackendError::io("renaming into place", &tmp)(e))
            }
        }
    }

    /// Creates `dir` with the run's files: its supervision lock (returned, held), `spec.json`, a Pending
    /// `status.json` naming this process as supervisor, and the empty result file owned by `uid`.
    fn write_run_files(
        &self,
        dir: &Path,
        spec: &LaunchSpec,
        slot: u32,
        uid: u32,
    ) -> Result<SupervisionLock, BackendError> {
        std::fs::create_dir(dir).map_err(BackendError::io("creating the run directory", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            .map_err(BackendError::io("chmod", dir))?;
        let lock = SupervisionLock::create(dir)?;
        let req = &spec.run.request;
        let spec_file = SpecFile {
            request: req.clone(),
            queue: spec.run.queue.clone(),
            deadline_seconds: spec.run.deadline_seconds,
            attempt: spec.attempt,
            env: spec.env.clone(),
        };
        let path = dir.join(SPEC);
        write_json(&path, &spec_file).map_err(BackendError::io("writing", &path))?;
        let status = StatusFile {
            run_id: spec.run_id().to_string(),
            queue: spec.run.queue.clone(),
            attempt: spec.attempt,
            image: req.image.clone(),
            image_digest: None,
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
            result_pending: false,
            image_fetch: None,
        };
        let path = dir.join(STATUS);
        write_json(&path, &status).map_err(BackendError::io("writing", &path))?;
        create_result_file(dir, uid)?;
        Ok(lock)
    }

    /// Renames the run directory away (it is gone for every reader at once); its new path, or `None` when
    /// there was none.
    pub(super) fn move_to_trash(&self, run_id: &str) -> Result<Option<PathBuf>, BackendError> {
        let dir = self.run_dir(run_id);
        let trash = self.runs_dir().join(format!(".trash-{run_id}-{}", nanos()));
        match std::fs::rename(&dir, &trash) {
            Ok(()) => Ok(Some(trash)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BackendError::io("removing the run directory", &dir)(e)),
        }
    }
}

/// Writes the run's launch script (`LAUNCH`), readable by the run's uid only.
pub(super) fn write_launch_file(dir: &Path, uid: u32, script: &str) -> std::io::Result<()> {
    let path = dir.join(LAUNCH);
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&path)?;
    std::io::Write::write_all(&mut f, script.as_bytes())?;
    std::os::unix::fs::chown(&path, Some(uid), Some(uid))
}

/// `sandbox/` (0700) and `sandbox/result.json` (0600), both owned by the run's uid: the only host file the
/// job can write.
fn create_result_file(dir: &Path, uid: u32) -> Result<(), BackendError> {
    let sb = dir.join("sandbox");
    let result = dir.join(RESULT);
    std::fs::create_dir(&sb).map_err(BackendError::io("creating", &sb))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&result)
        .map_err(BackendError::io("creating", &result))?;
    std::os::unix::fs::chown(&result, Some(uid), Some(uid))
        .map_err(BackendError::io("chown", &result))?;
    std::os::unix::fs::chown(&sb, Some(uid), Some(uid)).map_err(BackendError::io("chown", &sb))?;
    std::fs::set_permissions(&sb, std::fs::Permissions::from_mode(0o700))
        .map_err(BackendError::io("chmod", &sb))
}

/// Nanoseconds since the epoch: a suffix that keeps temporary names apart.
fn nanos() -> i64 {
    Utc::now().timestamp_nanos_opt().unwrap_or_default()
}
