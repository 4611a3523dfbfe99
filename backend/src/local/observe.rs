//! Reading runs back from the state directory: status, logs, listings, and the watch.

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use airlock_schemas::is_valid_name;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::broadcast;
use tracing::warn;

use super::LocalBackend;
use super::rundir::{LOG, SPEC, STATUS};
use super::state::{StatusFile, read_json};
use crate::{BackendError, Observed, Phase, Reason, RunObjects};

impl LocalBackend {
    /// The run's `status.json`; `None` when it does not exist.
    pub(super) fn read_status(&self, run_id: &str) -> Result<Option<StatusFile>, BackendError> {
        let path = self.run_dir(run_id).join(STATUS);
        read_json(&path).map_err(BackendError::io("reading", &path))
    }

    /// The run's current state, or `None` when nothing exists for it.
    pub async fn observe(&self, run_id: &str) -> Result<Option<Observed>, BackendError> {
        let (this, rid) = (self.clone(), run_id.to_string());
        tokio::task::spawn_blocking(move || this.observe_blocking(&rid))
            .await
            .map_err(|e| BackendError::Transient(format!("observing {run_id}: {e}")))?
    }

    /// [`Self::observe`] on the calling thread (it reads `/proc` and probes a file lock).
    pub(super) fn observe_blocking(&self, run_id: &str) -> Result<Option<Observed>, BackendError> {
        Ok(self.observe_status_blocking(run_id)?.map(|(o, _)| o))
    }

    /// [`Self::observe_blocking`], with the status it was read from.
    pub(super) fn observe_status_blocking(
        &self,
        run_id: &str,
    ) -> Result<Option<(Observed, StatusFile)>, BackendError> {
        if !is_valid_name(run_id) {
            return Ok(None);
        }
        let Some(s) = self.read_status(run_id)? else {
            return Ok(None);
        };
        if s.is_finished() || self.supervisor_alive(&s) {
            return Ok(Some((s.to_observed(false), s)));
        }
        let mut o = s.to_observed(true);
        o.phase = Phase::Failed;
        o.reason = Some(Reason::SupervisorLost);
        o.message = Some("the process supervising this run is gone".into());
        Ok(Some((o, s)))
    }

    /// The last `max_bytes` of the run's output (stdout and stderr interleaved).
    pub async fn logs_tail(&self, run_id: &str, max_bytes: usize) -> Result<String, BackendError> {
        if !is_valid_name(run_id) {
            return Ok(String::new());
        }
        let path = self.run_dir(run_id).join(LOG);
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
            Err(e) => return Err(BackendError::io("opening", &path)(e)),
        };
        let reading = BackendError::io("reading", &path);
        let tail = (|| {
            let len = f.metadata()?.len();
            let start = len.saturating_sub(max_bytes as u64);
            f.seek(SeekFrom::Start(start))?;
            let mut buf = Vec::with_capacity((len - start) as usize);
            f.take(max_bytes as u64).read_to_end(&mut buf)?;
            Ok(buf)
        })()
        .map_err(reading)?;
        Ok(String::from_utf8_lossy(&tail).into_owned())
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
        let runs = self.runs_dir();
        let rd = std::fs::read_dir(&runs).map_err(BackendError::io("listing", &runs))?;
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            // Temporary (`.new-*`) and removed (`.trash-*`) directories, and anything that is no run's.
            if name.starts_with('.') || !is_valid_name(&name) {
                continue;
            }
            let observed = self.observe(&name).await.unwrap_or_else(|e| {
                warn!(run_id = %name, error = %e, "Could not observe run");
                None
            });
            let dir = entry.path();
            let created_at = std::fs::metadata(dir.join(SPEC))
                .or_else(|_| std::fs::metadata(&dir))
                .and_then(|m| m.modified())
                .ok()
                .map(DateTime::<Utc>::from);
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

    /// The current state of every run, then changes made by the supervisors of this value (and its clones).
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
                        warn!(missed = n, "Watch lagged; re-listing");
                        let all = relist(&this).await;
                        return Some((all, (rx, this)));
                    }
                    // The sender lives in `this`; it cannot close while we hold it.
                    Err(broadcast::error::RecvError::Closed) => continue,
                }
            }
        })
        .flat_map(futures::stream::iter);
        if self.config().supervisor == super::Supervisor::InProcess {
            return initial.chain(live).boxed();
        }
        // Runs supervised by processes of their own: their changes are read from the state directory (the
        // first read is the initial listing), when inotify says so (see `watch`).
        futures::stream::select(live, self.watch_state_dir()).boxed()
    }
}

/// [`LocalBackend::list`], retried with capped backoff until it succeeds.
async fn relist(b: &LocalBackend) -> Vec<Observed> {
    let mut delay = Duration::from_millis(100);
    loop {
        match b.list().await {
            Ok(v) => return v,
            Err(e) => {
                warn!(error = %e, "Listing runs failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}
