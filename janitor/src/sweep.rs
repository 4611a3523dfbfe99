//! The sweep: finds what timers missed, so nothing is left behind.
//!
//! On each tick of the recurring `@every` schedule (one replica gets each tick through the shared durable
//! consumer), the sweep compares what the backend holds with the run records:
//! - objects (Pods, or NetworkPolicies without a Pod) of a run with **no record**: orphans (e.g. a dispatcher that crashed between creating them and
//!   recording the run, or a record that expired). They are removed once sweeps have seen them for
//!   `orphan_grace`, which protects a run whose record is being written right now.
//! - objects of a **terminal** run not reaped yet (a crash mid-reap, or another service ended it): the reap
//!   is finished (logs, remove, event, `reaped_at`). Objects still there long after `reaped_at` (a deletion
//!   that did not take) are removed again.
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

use airlock_runtime::backend::{Backend, Observed, Removed};
use airlock_schemas::labels;
use airlock_schemas::{TimerEvent, TimerKind};
use async_nats::jetstream::{self, AckKind};
use chrono::Utc;
use futures::StreamExt;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams};
use redis::AsyncCommands;
use tracing::{debug, info, warn};

use crate::Error;
use crate::metrics::Metrics;
use crate::reaper::{Janitor, Run, parse_time};

/// Runs handled at once by a sweep.
const SWEEP_CONCURRENCY: usize = 8;

/// What one sweep did.
#[derive(Debug, Default)]
pub(crate) struct SweepReport {
    unreaped: AtomicU64,
}

impl Janitor {
    /// Handles a sweep tick: skipped when stale (a backlog of ticks after downtime), otherwise one sweep,
    /// keeping the message alive while it runs.
    pub(crate) async fn sweep_tick(&self, msg: &jetstream::Message) -> Result<(), Error> {
        if let Ok(info) = msg.info() {
            let published_ms = i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000)
                .unwrap_or(i64::MAX);
            let age_ms = Utc::now().timestamp_millis().saturating_sub(published_ms);
            let max_age = self.settings.sweep_interval.max(Duration::from_secs(5));
            if age_ms > i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX) {
                Metrics::inc(&self.metrics.sweeps_skipped);
                debug!(age_ms, "Stale sweep tick; a newer one follows");
                return Ok(());
            }
        }
        let keepalive = {
            let msg = msg.clone();
            let every = (self.settings.ack_wait / 3).max(Duration::from_millis(500));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if msg.ack_with(AckKind::Progress).await.is_err() {
                        return;
                    }
                }
            })
        };
        let result = self.sweep().await;
        keepalive.abort();
        result
    }

    /// One sweep over the backend and the active runs.
    pub(crate) async fn sweep(&self) -> Result<(), Error> {
        Metrics::inc(&self.metrics.sweeps);
        let listed = self
            .k8s("Listing runs", "-", || self.backend.list())
            .await?;
        let report = SweepReport::default();
        let seen: HashSet<String> = listed.iter().map(|o| o.run_id.clone()).collect();

        futures::stream::iter(listed)
            .for_each_concurrent(SWEEP_CONCURRENCY, |obs| {
                let report = &report;
                async move {
                    let run_id = obs.run_id.clone();
                    if let Err(e) = self.sweep_listed(obs, report).await
                        && !matches!(e, Error::Busy(_))
                    {
                        report.unreaped.fetch_add(1, Ordering::Relaxed);
                        warn!(run_id = %run_id, error = %e, "Sweep could not handle the run; next sweep will retry");
                    }
                }
            })
            .await;
        // NetworkPolicies without a pod (a dispatcher that crashed between creating the policy and the pod):
        // `list` only reports pods.
        let mut tracked = seen.clone();
        let lone_policies: Vec<String> = self
            .policy_run_ids()
            .await?
            .into_iter()
            .filter(|id| !seen.contains(id))
            .collect();
        tracked.extend(lone_policies.iter().cloned());
        futures::stream::iter(lone_policies)
            .for_each_concurrent(SWEEP_CONCURRENCY, |run_id| {
                let report = &report;
                async move {
                    if let Err(e) = self.sweep_lone_policy(&run_id).await
                        && !matches!(e, Error::Busy(_))
                    {
                        report.unreaped.fetch_add(1, Ordering::Relaxed);
                        warn!(run_id = %run_id, error = %e, "Sweep could not handle the run's NetworkPolicy; next sweep will retry");
                    }
                }
            })
            .await;
        self.forget_orphans_not_in(&tracked).await?;

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
        self.metrics.unreaped.store(unreaped, Ordering::Relaxed);
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

    async fn sweep_listed(&self, obs: Observed, report: &SweepReport) -> Result<(), Error> {
        let run_id = obs.run_id.as_str();
        let Some(run) = self.load(run_id).await? else {
            return self.orphan(run_id).await;
        };
        if run.is_terminal() {
            match run.rec.reaped_at.as_deref().and_then(parse_time) {
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
                // Started after its run was reaped (e.g. launched while the run was being cancelled), or
                // still there long after: remove (again).
                Some(reaped_at)
                    if obs.started_at.is_some_and(|s| s > reaped_at)
                        || Utc::now() - reaped_at > chrono_duration(self.settings.orphan_grace) =>
                {
                    warn!(run_id = %run_id, reaped_at = %reaped_at, "Objects of a reaped run are still there; removing them again");
                    if self.claimed(run_id, self.remove(run_id)).await? == Removed::Deleted {
                        Metrics::inc(&self.metrics.orphans_removed);
                    }
                    return Ok(());
                }
                // Reaped recently: its pod may still be terminating.
                Some(_) => return Ok(()),
            }
        }
        if obs.phase.is_finished() || obs.lost {
            let ev = TimerEvent {
                kind: TimerKind::Finished,
                run_id: Some(run_id.to_string()),
                attempt: Some(obs.attempt),
                reason: None,
            };
            if self.publish_lost(&ev).await? {
                info!(run_id = %run_id, attempt = obs.attempt, "Sweep found a finished run whose timer was lost; fired it");
            }
        }
        self.check_deadline(&run, report).await
    }

    /// Run ids of the managed NetworkPolicies (Kubernetes only; the local runtime has none).
    async fn policy_run_ids(&self) -> Result<Vec<String>, Error> {
        let Backend::Kube(k) = &self.backend else {
            return Ok(Vec::new());
        };
        let api: Api<NetworkPolicy> = Api::namespaced(k.client().clone(), &k.config().namespace);
        let lp = ListParams::default().labels(&labels::managed_selector());
        let list = self
            .k8s("Listing NetworkPolicies", "-", || {
                let api = api.clone();
                let lp = lp.clone();
                async move {
                    api.list(&lp).await.map_err(|e| {
                        airlock_runtime::backend::kube::classify("list NetworkPolicies", e)
                    })
                }
            })
            .await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|np| np.metadata.labels?.get(labels::RUN_ID).cloned())
            .collect())
    }

    /// A NetworkPolicy whose pod is gone or was never created: an orphan without a record, leftover of an
    /// ended run, or (for a live run) left to the run's deadline.
    async fn sweep_lone_policy(&self, run_id: &str) -> Result<(), Error> {
        match self.load(run_id).await? {
            None => self.orphan(run_id).await,
            Some(run) if run.is_terminal() => {
                self.claimed(run_id, async {
                    match self.load(run_id).await? {
                        Some(run) if run.rec.reaped_at.is_none() => self.finish(&run).await,
                        _ => {
                            if self.remove(run_id).await? == Removed::Deleted {
                                Metrics::inc(&self.metrics.orphans_removed);
                                info!(run_id = %run_id, "Sweep removed the NetworkPolicy of a reaped run");
                            }
                            Ok(())
                        }
                    }
                })
                .await
            }
            // Live: its pod is about to be created, or it was lost and the run's timers deal with it.
            Some(_) => Ok(()),
        }
    }

    /// Fires the deadline timer of a live run whose deadline passed long ago.
    async fn check_deadline(&self, run: &Run, report: &SweepReport) -> Result<(), Error> {
        let Some(deadline) = run.deadline() else {
            return Ok(());
        };
        if Utc::now() < deadline + chrono_duration(self.settings.lost_timer_grace) {
            return Ok(());
        }
        report.unreaped.fetch_add(1, Ordering::Relaxed);
        let ev = TimerEvent {
            kind: TimerKind::Deadline,
            run_id: Some(run.id().to_string()),
            attempt: Some(run.attempt()),
            reason: None,
        };
        self.publish_lost(&ev).await?;
        warn!(run_id = %run.id(), deadline = %deadline, status = run.rec.status.map_or("none", |s| s.as_str()), "Run is past its deadline and not reaped; fired its deadline timer");
        Ok(())
    }

    /// Publishes a timer on behalf of a lost one; whether the stream stored it. It carries the id the original
    /// would have had, so a timer the stream still holds deduplicates this one.
    async fn publish_lost(&self, ev: &TimerEvent) -> Result<bool, Error> {
        let stored = self.publisher.timer(ev).await?;
        if stored {
            Metrics::inc(&self.metrics.lost_timers);
        }
        Ok(stored)
    }

    fn orphans_key(&self) -> String {
        format!("{}:janitor:orphans", self.subjects.prefix())
    }

    /// Objects with no record: removed once sweeps have seen them for `orphan_grace`.
    async fn orphan(&self, run_id: &str) -> Result<(), Error> {
        let mut conn = self.store.connection();
        let key = self.orphans_key();
        let now = Utc::now().timestamp_millis();
        let _: bool = conn.hset_nx(&key, run_id, now).await?;
        let first: Option<i64> = conn.hget(&key, run_id).await?;
        let age = Duration::from_millis(u64::try_from(now - first.unwrap_or(now)).unwrap_or(0));
        if age < self.settings.orphan_grace {
            debug!(run_id = %run_id, age = ?age, "Objects with no run record; removing them once the grace has passed");
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
            .await;
        match removed {
            Ok(Some(r)) => {
                let _: i64 = conn.hdel(&key, run_id).await?;
                if r == Removed::Deleted {
                    Metrics::inc(&self.metrics.orphans_removed);
                    info!(run_id = %run_id, seen_for = ?age, "Sweep removed the objects of a run with no record");
                }
                Ok(())
            }
            Ok(None) => {
                let _: i64 = conn.hdel(&key, run_id).await?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Drops orphan bookkeeping for runs the backend no longer holds.
    async fn forget_orphans_not_in(&self, seen: &HashSet<String>) -> Result<(), Error> {
        let mut conn = self.store.connection();
        let key = self.orphans_key();
        let tracked: Vec<String> = conn.hkeys(&key).await?;
        let gone: Vec<&String> = tracked.iter().filter(|id| !seen.contains(*id)).collect();
        if !gone.is_empty() {
            let _: i64 = conn.hdel(&key, gone).await?;
        }
        Ok(())
    }
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}
