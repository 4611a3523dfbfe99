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
use crate::{BackendError, Observed, Phase, RunObjects};

impl LocalBackend {
    /// The run's `status.json`; `None` when it does not exist.
    pub(super) fn read_status(&self, run_id: &str) -> Result<Option<StatusFile>, BackendError> {
        let path = self.run_dir(run_id).join(STATUS);
        read_json(&path).map_err(BackendError::io("reading", &path))
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
        o.phase = Phase::Failed;
        o.reason = Some("SupervisorLost".into());
        o.message = Some("the process supervising this run is gone".into());
        Ok(Some(o))
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
        // first read is the initial listing).
        let this = self.clone();
        let polled = futures::stream::unfold(
            (
                this,
                std::collections::HashMap::<String, Observed>::new(),
                true,
            ),
            |(this, mut seen, first)| async move {
                if first {
                    let all = relist(&this).await;
                    for o in &all {
                        seen.insert(o.run_id.clone(), o.clone());
                    }
                    return Some((all, (this, seen, false)));
                }
                loop {
                    tokio::time::sleep(POLL).await;
                    let changed = poll_changes(&this, &mut seen).await;
                    if !changed.is_empty() {
                        return Some((changed, (this, seen, false)));
                    }
                }
            },
        )
        .flat_map(futures::stream::iter);
        futures::stream::select(live, polled).boxed()
    }
}

/// How often the watch reads the state directory when runs have supervisor processes.
const POLL: Duration = Duration::from_millis(250);

/// Publishes pending results, then returns the runs whose observation changed since `seen`.
async fn poll_changes(
    b: &LocalBackend,
    seen: &mut std::collections::HashMap<String, Observed>,
) -> Vec<Observed> {
    let Ok(all) = b.list_objects().await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut present = std::collections::HashSet::new();
    for r in all {
        present.insert(r.run_id.clone());
        let Some(mut o) = r.observed else { continue };
        let pending = b
            .read_status(&r.run_id)
            .ok()
            .flatten()
            .is_some_and(|s| s.result_pending);
        if pending {
            // Reported `Running` until published. The dispatcher records it running first (this round),
            // then the result is published and the run seen finished (the next round), so nothing can end
            // the run before it was recorded running.
            if seen.get(&r.run_id).map(|p| p.phase) != Some(Phase::Running) {
                seen.insert(r.run_id.clone(), o.clone());
                out.push(o);
                continue;
            }
            b.publish_pending(&r.run_id).await;
            match b.observe(&r.run_id).await {
                Ok(Some(now)) => o = now,
                _ => continue,
            }
        }
        let before = seen.get(&r.run_id).map(|p| p.phase);
        if o.phase.is_finished()
            && o.started_at.is_some()
            && matches!(before, None | Some(Phase::Pending))
        {
            // A job that ran between two reads: it was running, say so first.
            out.push(Observed {
                phase: Phase::Running,
                exit_code: None,
                reason: None,
                message: None,
                finished_at: None,
                ..o.clone()
            });
        }
        if seen.get(&r.run_id) != Some(&o) {
            seen.insert(r.run_id.clone(), o.clone());
            out.push(o);
        }
    }
    seen.retain(|id, _| present.contains(id));
    out
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
