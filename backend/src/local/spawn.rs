//! Starting a run's sandbox: its cgroups, the command, the thread that copies its output into the capped
//! log, and the one that reads the launcher's status pipe (the sandbox's stdin: whether the job started).

use std::io::{BufRead, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use chrono::{DateTime, Utc};
use tracing::{debug, warn};

use super::LocalBackend;
use super::launch::{START_ERROR, STARTED, Workdir};
use super::rundir::{LAUNCH, LOG, RESULT};
use super::sandbox::{Limits, SandboxCommand};

/// A started sandbox.
pub(super) struct Spawned {
    /// The sandbox root (`bwrap`).
    pub child: tokio::process::Child,
    /// Fires when the log thread has seen the end of the output.
    pub pump: tokio::sync::oneshot::Receiver<()>,
    /// What the launcher said: `Ok` once the job is being `exec`ed, or why it could not start
    /// (`Err(None)`: the sandbox ended before the launcher said anything).
    pub started: tokio::sync::oneshot::Receiver<Result<(), Option<String>>>,
    /// When it was started.
    pub started_at: DateTime<Utc>,
}

/// Why a sandbox did not start (the run's status message).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub(super) struct StartError {
    what: &'static str,
    source: std::io::Error,
}

fn start_error(what: &'static str) -> impl FnOnce(std::io::Error) -> StartError {
    move |source| StartError { what, source }
}

impl LocalBackend {
    /// Creates the run's cgroups and starts its sandbox as `uid`, its output going to the run's log.
    pub(super) fn spawn(
        &self,
        run_id: &str,
        uid: u32,
        limits: Limits,
        rootfs: &Path,
        workdir: &Workdir,
    ) -> Result<Spawned, StartError> {
        let c = self.config();
        let dir = self.run_dir(run_id);
        let result_file = dir.join(RESULT);
        let launch_file = dir.join(LAUNCH);
        let cgroup_procs = self
            .inner
            .cgroups
            .create(&self.cgroup_key(run_id), &limits)
            .map_err(start_error("creating cgroups"))?;
        let cmd = SandboxCommand {
            bwrap: &c.bwrap,
            setpriv: &c.setpriv,
            prlimit: &c.prlimit,
            uid,
            limits,
            memory_cgroup: self.inner.cgroups.has_memory(),
            cgroup_procs,
            rootfs,
            launcher: &c.launcher,
            launch_file: &launch_file,
            result_file: &result_file,
            workdir,
        };
        let (program, args) = cmd.build();
        debug!(run_id, ?program, ?args, "Starting sandbox");
        let (reader, writer) = std::io::pipe().map_err(start_error("creating the log pipe"))?;
        let writer2 = writer
            .try_clone()
            .map_err(start_error("creating the log pipe"))?;
        let (status_reader, status_writer) =
            std::io::pipe().map_err(start_error("creating the status pipe"))?;
        let child = tokio::process::Command::new(program)
            .args(args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdin(status_writer)
            .stdout(writer)
            .stderr(writer2)
            .kill_on_drop(false)
            .spawn()
            .map_err(start_error("starting the sandbox"))?;
        let pump = start_log_pump(run_id, reader, &dir.join(LOG), c.max_log_bytes)?;
        let started = start_status_reader(run_id, status_reader)?;
        Ok(Spawned {
            child,
            pump,
            started,
            started_at: Utc::now(),
        })
    }
}

/// Starts the thread copying `reader` into the log at `path`; the receiver fires when it is done.
fn start_log_pump(
    run_id: &str,
    reader: std::io::PipeReader,
    path: &Path,
    max: u64,
) -> Result<tokio::sync::oneshot::Receiver<()>, StartError> {
    let path = path.to_path_buf();
    // A plain thread, not `spawn_blocking`: a runtime shutting down must not wait for a job's output.
    let (done, pump) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("airlock-log-{run_id}"))
        .spawn(move || {
            pump_log(reader, &path, max);
            let _ = done.send(());
        })
        .map_err(start_error("starting the log thread"))?;
    Ok(pump)
}

/// Starts the thread reading the launcher's one status line.
fn start_status_reader(
    run_id: &str,
    reader: std::io::PipeReader,
) -> Result<tokio::sync::oneshot::Receiver<Result<(), Option<String>>>, StartError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("airlock-start-{run_id}"))
        .spawn(move || {
            let mut line = String::new();
            // At most one short line; the rest of the pipe is never read.
            let read = std::io::BufReader::new(reader.take(64 * 1024)).read_line(&mut line);
            let said = match read {
                Ok(_) if line.trim_end() == STARTED => Ok(()),
                Ok(_) => Err(line
                    .trim_end()
                    .strip_prefix(START_ERROR)
                    .map(str::to_string)),
                Err(_) => Err(None),
            };
            let _ = tx.send(said);
        })
        .map_err(start_error("starting the status thread"))?;
    Ok(rx)
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
            warn!(path = %path.display(), error = %e, "Cannot open the log file; discarding output");
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
