//! The sweep: finds what timers missed, so nothing is left behind.
//!
//! On each tick of the recurring `@every` schedule (one replica gets each tick through the shared durable
//! consumer), the sweep compares what the backend holds ([`Backend::list_objects`]: every run with a Pod or
//! process, or only leftovers such as a NetworkPolicy without its Pod) with the run records:
//! - objects of a run with **no record**: orphans (e.g. a dispatcher that crashed between creating them and
//!   recording the run, or a record that expired). They are removed once they are `orphan_grace` old (by
//!   their creation time), which protects a run whose record is being written right now.
//! - objects of a **terminal** run not reaped yet (a crash mid-reap, or another service ended it): the reap
//!   is finished (logs, remove, event, `reaped_at`). Objects of a run reaped before the listing began that
//!   are not being deleted (a deletion that did not take, or a pod launched while the run was being reaped)
//!   are removed again; objects still terminating long after `reaped_at` are reported.
//! - a **finished** pod of a live run (its `finished` timer was lost): the timer is published again.
//! - a live run (listed or in the active set) **past its deadline** by `lost_timer_grace`: its deadline timer
//!   is published again. A run that never got a pod (still queued for a slot, or its launch was lost) ends
//!   `timed_out` with reason `DeadlineExceeded: no pod (<status>)`: the deadline covers the whole run.
//!
//! Timers the sweep publishes carry the same message ids as the originals, so one the stream still holds is
//! deduplicated. Runs that should have been reaped by now but are not are counted in
//! [`crate::Metrics::unreaped`] and logged on every sweep.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use airlock_backend::{Removed, RunObjects};
use airlock_runtime::consume::{self, with_progress};
use airlock_runtime::store::StoredRun;
use airlock_schemas::record::parse_timestamp;
use airlock_schemas::{TimerEvent, TimerKind};
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tracing::{debug, info, warn};

use crate::Error;
use crate::reaper::Janitor;
use airlock_runtime::metrics::JanitorAction;

/// Runs handled at once by a sweep.
const SWEEP_CONCURRENCY: usize = 8;

/// Allowance for clocks of janitor replicas that disagree: a run counts as reaped before a listing only when
/// its `reaped_at` is this much earlier than the listing's start.
const CLOCK_SKEW: Duration = Duration::from_secs(2);

/// What one sweep did.
#[derive(Debug, Default)]
pub(crate) struct SweepReport {
    unreaped: AtomicU64,
}

impl Janitor {
    /// Handles a sweep tick: skipped when stale (a backlog of ticks after downtime), otherwise one sweep,
    /// keeping the message alive while it runs.
    pub(crate) async fn sweep_tick(&self, msg: &jetstream::Message) -> Result<(), Error> {
        if let Some(published) = consume::published_at(msg) {
            let age_ms = (Utc::now() - published).num_milliseconds();
            let max_age = self.settings.sweep_interval.max(Duration::from_secs(5));
            if age_ms > i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX) {
                self.metrics.janitor(JanitorAction::SweepSkipped);
                debug!(age_ms, "Stale sweep tick; a newer one follows");
                return Ok(());
            }
        }
        with_progress(msg, self.settings.progress_every, self.sweep()).await
    }

    /// One sweep over the backend and the active runs.
    pub(crate) async fn sweep(&self) -> Result<(), Error> {
        self.metrics.janitor(JanitorAction::Sweep);
        let listed_at = Utc::now();
        let listed = self
            .with_retries("Listing runs", "-", || self.backend.list_objects())
            .await?;
        let report = SweepReport::default();
        let seen: HashSet<String> = listed.iter().map(|o| o.run_id.clone()).collect();

        futures::stream::iter(listed)
            .for_each_concurrent(SWEEP_CONCURRENCY, |objects| {
                let report = &report;
                async move {
                    let run_id = objects.run_id.clone();
                    if let Err(e) = self.sweep_listed(objects, listed_at, report).await
                        && !matches!(e, Error::Busy(_))
                    {
                        report.unreaped.fetch_add(1, Ordering::Relaxed);
                        warn!(run_id = %run_id, error = %e, "Sweep could not handle the run; next sweep will retry");
                    }
                }
            })
            .await;

        let active = self.store.active_runs().await?;
        futures::stream::iter(active.into_iter().filter(|id| !seen.contains(id)))
            .for_each_concurrent(SWEEP_CONCURRENCY, |run_id| {
                let report = &report;
                async move {
                    let r = async {
                        match self.load(&run_id).await? {
                            Some(run) if !run.is_terminal() => {
                                self.check_deadline(&run, report).await
                            }
                            _ => Ok(()),
                        }
                    };
                    if let Err(e) = r.await {
                        report.unreaped.fetch_add(1, Ordering::Relaxed);
                        warn!(run_id = %run_id, error = %e, "Sweep could not handle the run; next sweep will retry");
                    }
                }
            })
            .await;

        let unreaped = report.unreaped.load(Ordering::Relaxed);
        self.metrics.set_unreaped(unreaped);
        if unreaped > 0 {
            warn!(
                unreaped,
                "Sweep found runs that should have been reaped by now"
            );
        } else {
            debug!("Sweep done");
        }
        Ok(())
    }

    /// Handles one run the backend holds objects of; `listed_at` is when the listing began.
    async fn sweep_listed(
        &self,
        objects: RunObjects,
        listed_at: DateTime<Utc>,
        report: &SweepReport,
    ) -> Result<(), Error> {
        let run_id = objects.run_id.as_str();
        let Some(run) = self.load(run_id).await? else {
            return self.orphan(&objects).await;
        };
        if run.is_terminal() {
            match run.record.reaped_at.as_deref().and_then(parse_timestamp) {
                None => {
                    info!(run_id = %run_id, "Sweep found an ended run not reaped; finishing its reap");
                    return self
                        .claimed(run_id, async {
                            match self.load(run_id).await? {
                                Some(run) => self.finish(&run).await,
                                None => Ok(()),
                            }
                        })
                        .await;
                }
                // Being deleted (a pod in its termination grace period): Kubernetes finishes it, unless it is
                // stuck (e.g. its node is gone), which only an operator can resolve.
                Some(reaped_at) if objects.terminating => {
                    if Utc::now() - reaped_at > chrono_duration(self.settings.orphan_grace) {
                        report.unreaped.fetch_add(1, Ordering::Relaxed);
                        warn!(run_id = %run_id, reaped_at = %reaped_at, "Objects of a reaped run are still terminating");
                    }
                    return Ok(());
                }
                // Reaped before the listing began, yet not being deleted: the deletion did not take, or they
                // were created after the reap (e.g. launched while the run was being cancelled). Remove again.
                Some(reaped_at) if reaped_at + chrono_duration(CLOCK_SKEW) < listed_at => {
                    warn!(run_id = %run_id, reaped_at = %reaped_at, "Objects of a reaped run are still there; removing them again");
                    if self.claimed(run_id, self.remove(run_id)).await? == Removed::Deleted {
                        self.metrics.janitor(JanitorAction::OrphanRemoved);
                    }
                    return Ok(());
                }
                // Reaped while (or just before) we listed: the next sweep sees whether the deletion took.
                Some(_) => return Ok(()),
            }
        }
        // A live run. With only leftovers (a NetworkPolicy without its pod) its pod is about to be created,
        // or it was lost and the run's timers deal with it: only the deadline is checked.
        if let Some(obs) = &objects.observed
            && (obs.phase.is_finished() || obs.lost)
        {
            let ev = TimerEvent::for_run(TimerKind::Finished, run_id, obs.attempt);
            if self.publish_lost(&ev).await? {
                info!(run_id = %run_id, attempt = obs.attempt, "Sweep found a finished run whose timer was lost; fired it");
            }
        }
        self.check_deadline(&run, report).await
    }

    /// Fires the deadline timer of a live run whose deadline passed long ago.
    async fn check_deadline(&self, run: &StoredRun, report: &SweepReport) -> Result<(), Error> {
        let Some(deadline) = run.deadline() else {
            return Ok(());
        };
        if Utc::now() < deadline + chrono_duration(self.settings.lost_timer_grace) {
            return Ok(());
        }
        report.unreaped.fetch_add(1, Ordering::Relaxed);
        let ev = TimerEvent::for_run(TimerKind::Deadline, run.id(), run.attempt());
        self.publish_lost(&ev).await?;
        warn!(run_id = %run.id(), deadline = %deadline, status = run.record.status.map_or("none", |s| s.as_str()), "Run is past its deadline and not reaped; fired its deadline timer");
        Ok(())
    }

    /// Publishes a timer on behalf of a lost one; whether the stream stored it. It carries the id the original
    /// would have had, so a timer the stream still holds deduplicates this one.
    async fn publish_lost(&self, ev: &TimerEvent) -> Result<bool, Error> {
        let stored = self.publisher.timer(ev).await?;
        if stored {
            self.metrics.janitor(JanitorAction::LostTimer);
        }
        Ok(stored)
    }

    /// Objects with no record: removed once they are `orphan_grace` old.
    async fn orphan(&self, objects: &RunObjects) -> Result<(), Error> {
        let run_id = objects.run_id.as_str();
        if objects.terminating {
            debug!(run_id = %run_id, "Objects with no run record are being deleted");
            return Ok(());
        }
        let Some(created_at) = objects.created_at else {
            warn!(run_id = %run_id, "Objects with no run record and no creation time; leaving them alone");
            return Ok(());
        };
        let age = Utc::now() - created_at;
        if age < chrono_duration(self.settings.orphan_grace) {
            debug!(run_id = %run_id, age_ms = age.num_milliseconds(), "Objects with no run record; removing them once the grace has passed");
            return Ok(());
        }
        let removed = self
            .claimed(run_id, async {
                // The record may have appeared in the meantime.
                if self.load(run_id).await?.is_some() {
                    return Ok(None);
                }
                self.remove(run_id).await.map(Some)
            })
            .await?;
        if removed == Some(Removed::Deleted) {
            self.metrics.janitor(JanitorAction::OrphanRemoved);
            info!(run_id = %run_id, created_at = %created_at, "Sweep removed the objects of a run with no record");
        }
        Ok(())
    }
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}
