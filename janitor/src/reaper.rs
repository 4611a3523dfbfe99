//! Handling one timer event: decide, save logs, record the terminal status, delete the objects, publish the
//! event; or re-dispatch a run that was lost through no fault of its own.
//!
//! Order of effects for a run that ends (each step idempotent, so a redelivery after a crash finishes the
//! job):
//! 1. read the logs tail while the pod still exists;
//! 2. `transition` to the terminal status with `reason`, `exit_code`, `finished_at`, `logs` (atomic and
//!    forward-only: when another replica got there first it is refused, and we only finish the reap);
//! 3. remove the Pod and NetworkPolicy (absent is success);
//! 4. publish the lifecycle event (deduplicated by the stream per run, status and attempt);
//! 5. set `reaped_at`: from here on any timer for the run is a no-op.
//!
//! A terminal run without `reaped_at` (a crash between 2 and 5, or another service ended it) is finished
//! from step 3 by the next timer or sweep that sees it. All of this happens under a per-run claim
//! ([`crate::claim`]), so duplicated timers on several replicas delete a run's objects once.

use std::future::Future;
use std::time::Duration;

use airlock_backend::{Backend, BackendError, Observed, Removed};
use airlock_runtime::consume::{self, Outcome};
use airlock_runtime::publish::Publisher;
use airlock_runtime::store::{RecordUpdate, RunHead, Store, StoredRun, Transition};
use airlock_runtime::telemetry;
use airlock_schemas::{
    LifecycleEvent, RunStatus, Subjects, TimerEvent, TimerKind, TraceParent, is_valid_name,
};
use async_nats::jetstream;
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use tracing::{Instrument, debug, info, warn};

use crate::claim::Claims;
use crate::decide::{Decision, Verdict, decide};
use crate::{Config, Error};
use airlock_runtime::metrics::{JanitorAction, LagFrom, Metrics};

/// Longest redelivery delay of a timer whose handling failed for a reason a retry is unlikely to fix (the
/// sweep finds the run again meanwhile).
const PERMANENT_REDELIVERY_CAP: Duration = Duration::from_secs(300);

/// Settings the reaper needs from [`Config`].
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub logs_max_bytes: usize,
    pub max_attempts: u32,
    pub sweep_interval: Duration,
    /// How often a long sweep tells JetStream it is still working.
    pub progress_every: Duration,
    pub redelivery_cap: Duration,
    pub orphan_grace: Duration,
    pub lost_timer_grace: Duration,
}

impl From<&Config> for Settings {
    fn from(c: &Config) -> Self {
        Self {
            logs_max_bytes: c.logs_max_bytes,
            max_attempts: c.max_attempts,
            sweep_interval: c.sweep_interval,
            progress_every: c.consumer.progress_every(),
            redelivery_cap: c.consumer.redelivery_cap,
            orphan_grace: c.orphan_grace,
            lost_timer_grace: c.lost_timer_grace,
        }
    }
}

/// Everything a handler needs; shared by the consumer loop, the cancel server and sweeps.
#[derive(Debug)]
pub(crate) struct Janitor {
    pub settings: Settings,
    pub store: Store,
    pub backend: Backend,
    pub publisher: Publisher,
    pub subjects: Subjects,
    pub claims: Claims,
    pub metrics: Metrics,
    pub client: async_nats::Client,
}

impl Janitor {
    /// Handles one timer message and says how to settle it.
    pub(crate) async fn handle(&self, msg: &jetstream::Message) -> Outcome {
        self.metrics.janitor(JanitorAction::Timer);
        let delivered = consume::delivered(msg);
        let ev: TimerEvent = match serde_json::from_slice(&msg.payload) {
            Ok(ev) => ev,
            Err(e) => {
                self.metrics.poison();
                return Outcome::Poison(format!("undecodable timer event: {e}"));
            }
        };
        let result = match (ev.kind, ev.run_id.as_deref()) {
            (TimerKind::Sweep, _) => self.sweep_tick(msg).await,
            (_, Some(id)) if is_valid_name(id) => {
                let tp = telemetry::from_headers(msg.headers.as_ref());
                let at = Stamps {
                    fired: consume::published_at(msg),
                    observed: consume::observed_at(msg),
                };
                self.reap(&ev, id, delivered, at, tp).await
            }
            (kind, id) => {
                self.metrics.poison();
                return Outcome::Poison(format!(
                    "{} timer with an invalid run id {id:?}",
                    kind.as_str()
                ));
            }
        };
        match result {
            Ok(()) => Outcome::Done,
            Err(Error::Busy(id)) => {
                debug!(run_id = %id, "Run is being reaped by another replica; will look again");
                Outcome::Transient(Duration::from_millis(250))
            }
            Err(e) => {
                self.metrics.handler_error();
                let run_id = ev.run_id.as_deref().unwrap_or("-");
                warn!(run_id = %run_id, kind = ev.kind.as_str(), delivered, error = %e, "Timer handling failed; will retry");
                let cap = if e.is_retryable() {
                    self.settings.redelivery_cap
                } else {
                    PERMANENT_REDELIVERY_CAP
                };
                Outcome::Transient(airlock_runtime::error::redelivery_delay(delivered, cap))
            }
        }
    }

    /// Retries a backend call (Kubernetes or local) a few times with short backoff, logging each failure.
    pub(crate) async fn with_retries<T, F, Fut>(
        &self,
        what: &'static str,
        run_id: &str,
        f: F,
    ) -> Result<T, BackendError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        f.retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(1))
                .with_max_times(3)
                .with_jitter(),
        )
        .when(BackendError::is_retryable)
        .notify(|e, d| {
            warn!(run_id = %run_id, error = %e, retry_in = ?d, "{what} failed; will retry");
        })
        .await
    }

    /// The run's record, or `None`.
    pub(crate) async fn load(&self, run_id: &str) -> Result<Option<StoredRun>, Error> {
        Ok(self.store.run(run_id).await?)
    }

    pub(crate) async fn observe(&self, run_id: &str) -> Result<Option<Observed>, Error> {
        Ok(self
            .with_retries("Observing the run", run_id, || self.backend.observe(run_id))
            .await?)
    }

    pub(crate) async fn remove(&self, run_id: &str) -> Result<Removed, Error> {
        let removed = self
            .with_retries("Deleting the run's objects", run_id, || {
                self.backend.remove(run_id)
            })
            .await?;
        if removed == Removed::Deleted {
            self.metrics.janitor(JanitorAction::ObjectsRemoved);
        }
        Ok(removed)
    }

    /// Runs `f` holding the run's claim; [`Error::Busy`] when another replica holds it.
    pub(crate) async fn claimed<T, Fut>(&self, run_id: &str, f: Fut) -> Result<T, Error>
    where
        Fut: Future<Output = Result<T, Error>>,
    {
        let token = self.client.new_inbox();
        let claim = self
            .claims
            .acquire(run_id, token)
            .await?
            .ok_or_else(|| Error::Busy(run_id.to_string()))?;
        let result = f.await;
        if let Err(e) = self.claims.release(claim).await {
            debug!(run_id = %run_id, error = %e, "Releasing the reap claim failed; it expires on its own");
        }
        result
    }

    /// Handles a `deadline`, `finished` or `cancel` timer for `run_id`, stamped `at`, in the run's trace: the
    /// timer's `traceparent`, else the one recorded on the run.
    async fn reap(
        &self,
        ev: &TimerEvent,
        run_id: &str,
        delivered: i64,
        at: Stamps,
        tp: Option<TraceParent>,
    ) -> Result<(), Error> {
        // Late and stale timers are no-ops, without taking the claim (and without reading the logs field).
        let head = self.store.head(run_id).await?;
        let tp = tp
            .or_else(|| {
                head.as_ref()
                    .and_then(|h| h.traceparent.as_deref())
                    .and_then(TraceParent::parse)
            })
            .unwrap_or_else(telemetry::new_trace);
        let span = telemetry::run_span("reap", run_id, &tp);
        self.reap_traced(ev, run_id, delivered, at, head)
            .instrument(span)
            .await
    }

    async fn reap_traced(
        &self,
        ev: &TimerEvent,
        run_id: &str,
        delivered: i64,
        at: Stamps,
        head: Option<RunHead>,
    ) -> Result<(), Error> {
        let reaped = head
            .as_ref()
            .is_some_and(|h| h.is_terminal() && h.reaped_at.is_some());
        let attempt = head.map_or(airlock_schemas::record::FIRST_ATTEMPT, |h| h.attempt);
        if reaped || is_stale(ev, attempt) {
            self.metrics.janitor(JanitorAction::LateTimer);
            debug!(run_id = %run_id, kind = ev.kind.as_str(), "Late timer for a reaped run or an older attempt; nothing to do");
            return Ok(());
        }
        self.claimed(run_id, self.reap_claimed(ev, run_id, delivered, at))
            .await
    }

    async fn reap_claimed(
        &self,
        ev: &TimerEvent,
        run_id: &str,
        delivered: i64,
        at: Stamps,
    ) -> Result<(), Error> {
        let Some(run) = self.load(run_id).await? else {
            // No record (never written, or expired): whatever exists for it is an orphan.
            if self.remove(run_id).await? == Removed::Deleted {
                self.metrics.janitor(JanitorAction::OrphanRemoved);
                info!(run_id = %run_id, kind = ev.kind.as_str(), "Removed the objects of a run with no record");
            }
            return Ok(());
        };
        if run.is_terminal() {
            return self.finish(&run).await;
        }
        if is_stale(ev, run.attempt()) {
            self.metrics.janitor(JanitorAction::LateTimer);
            return Ok(());
        }
        let obs = self.observe(run_id).await?;
        let mut attempt = run.attempt();
        if let Some(o) = &obs {
            if ev.kind == TimerKind::Finished && ev.attempt.is_some_and(|a| a < o.attempt) {
                // The run was re-dispatched already: this timer is about the attempt before.
                if o.attempt > attempt {
                    let update = RecordUpdate {
                        attempt: Some(o.attempt),
                        ..RecordUpdate::default()
                    };
                    self.store.update(run_id, &update).await?;
                }
                self.metrics.janitor(JanitorAction::LateTimer);
                return Ok(());
            }
            attempt = attempt.max(o.attempt);
        }
        let decision = decide(
            ev.kind,
            ev.reason.as_deref(),
            run.record.status,
            attempt,
            obs.as_ref(),
            self.settings.max_attempts,
        );
        match decision {
            Decision::Ignore(why) => {
                debug!(run_id = %run_id, kind = ev.kind.as_str(), why, "Nothing to do");
                Ok(())
            }
            Decision::Redispatch { why } => {
                self.redispatch(&run, attempt, obs.as_ref(), why, delivered)
                    .await
            }
            Decision::End(v) => {
                let since = lag_starts(ev.kind, &v, at);
                self.end(&run, obs.as_ref(), v, &since, delivered).await
            }
        }
    }

    /// Reads the logs tail; a transient failure is retried by redelivery twice before reaping without logs.
    async fn logs(&self, run_id: &str, delivered: i64) -> Result<Option<String>, Error> {
        let max = self.settings.logs_max_bytes;
        match self
            .with_retries("Reading the run's logs", run_id, || {
                self.backend.logs_tail(run_id, max)
            })
            .await
        {
            Ok(logs) => Ok(Some(logs)),
            Err(e) if e.is_retryable() && delivered < 3 => Err(e.into()),
            Err(e) => {
                warn!(run_id = %run_id, error = %e, "Could not read the run's logs; reaping without them");
                Ok(None)
            }
        }
    }

    /// Records the terminal status, then finishes the reap; `since` is what the reap lag is measured from.
    pub(crate) async fn end(
        &self,
        run: &StoredRun,
        obs: Option<&Observed>,
        v: Verdict,
        since: &[(LagFrom, DateTime<Utc>)],
        delivered: i64,
    ) -> Result<(), Error> {
        let run_id = run.id();
        let logs = match obs {
            Some(_) => self.logs(run_id, delivered).await?,
            None => None,
        };
        let update = RecordUpdate {
            finished_at: Some(v.finished_at.unwrap_or_else(Utc::now)),
            reason: v.reason.clone(),
            exit_code: v.exit_code,
            logs,
            started_at: obs
                .and_then(|o| o.started_at)
                .filter(|_| run.record.started_at.is_none()),
            ..RecordUpdate::default()
        };
        match self.store.transition(run_id, v.status, &update).await? {
            Transition::Applied { previous } => {
                self.metrics.run_reaped(v.status.as_str(), since);
                info!(
                    run_id = %run_id,
                    status = v.status.as_str(),
                    previous = previous.map_or("none", RunStatus::as_str),
                    reason = v.reason.as_deref().unwrap_or(""),
                    exit_code = ?v.exit_code,
                    "Run ended"
                );
            }
            Transition::Refused { current } => {
                info!(run_id = %run_id, current = current.as_str(), wanted = v.status.as_str(), "Run had already ended; finishing its reap");
            }
        }
        let run = self.load(run_id).await?.unwrap_or_else(|| run.clone());
        self.finish(&run).await
    }

    /// Steps 3-5 for a terminal run: remove its objects, publish its event, set `reaped_at`.
    pub(crate) async fn finish(&self, run: &StoredRun) -> Result<(), Error> {
        if run.record.reaped_at.is_some() {
            return Ok(());
        }
        let run_id = run.id();
        if run.record.logs.is_none() {
            // Ended elsewhere (or logs could not be read): save them now if the pod is still there.
            match self
                .backend
                .logs_tail(run_id, self.settings.logs_max_bytes)
                .await
            {
                Ok(logs) if !logs.is_empty() => {
                    let update = RecordUpdate {
                        logs: Some(logs),
                        ..RecordUpdate::default()
                    };
                    self.store.update(run_id, &update).await?;
                }
                Ok(_) => {}
                Err(e) => debug!(run_id = %run_id, error = %e, "No logs to save"),
            }
        }
        let removed = self.remove(run_id).await?;
        self.publish_end(run).await?;
        let update = RecordUpdate {
            reaped_at: Some(Utc::now()),
            ..RecordUpdate::default()
        };
        self.store.update(run_id, &update).await?;
        info!(
            run_id = %run_id,
            status = run.record.status.map_or("none", RunStatus::as_str),
            objects = if removed == Removed::Deleted { "deleted" } else { "absent" },
            "Run reaped"
        );
        Ok(())
    }

    async fn publish_end(&self, run: &StoredRun) -> Result<(), Error> {
        let Some(status) = run.record.status else {
            return Ok(());
        };
        let mut ev = self.event(run, status);
        ev.at = run.record.finished().unwrap_or(ev.at);
        ev.reason = run.record.reason.clone();
        ev.exit_code = run.record.exit_code;
        self.publisher.event(&ev, run.attempt()).await?;
        Ok(())
    }

    /// A lifecycle event of `run` moving to `status` now, with its queue and metadata.
    fn event(&self, run: &StoredRun, status: RunStatus) -> LifecycleEvent {
        let mut ev = LifecycleEvent::now(run.id(), status).with_queue(run.record.queue.clone());
        ev.metadata = run.metadata();
        ev
    }

    /// Runs a lost run again as `attempt + 1`: remove what is left of it, republish its request (deduplicated
    /// per attempt), record the attempt, tell clients. The status does not move; the deadline still covers
    /// the whole run.
    async fn redispatch(
        &self,
        run: &StoredRun,
        attempt: u32,
        obs: Option<&Observed>,
        why: String,
        delivered: i64,
    ) -> Result<(), Error> {
        let run_id = run.id();
        let next = attempt + 1;
        let (Some(request), Some(queue)) = (&run.request, run.record.queue.as_deref()) else {
            let v = Verdict {
                status: RunStatus::Failed,
                reason: Some(format!(
                    "{why}; cannot re-dispatch: the request is not stored"
                )),
                exit_code: None,
                finished_at: obs.and_then(|o| o.finished_at),
            };
            let since: Vec<_> = v
                .finished_at
                .map(|t| (LagFrom::Finish, t))
                .into_iter()
                .collect();
            return self.end(run, obs, v, &since, delivered).await;
        };
        self.remove(run_id).await?;
        self.publisher.request(queue, request, next).await?;
        let update = RecordUpdate {
            attempt: Some(next),
            ..RecordUpdate::default()
        };
        self.store.update(run_id, &update).await?;
        if let Some(status) = run.record.status {
            let mut ev = self
                .event(run, status)
                .with_reason(format!("{why}; re-dispatched as attempt {next}"));
            ev.exit_code = obs.and_then(|o| o.exit_code).map(i64::from);
            self.publisher.redispatched_event(&ev, next).await?;
        }
        self.metrics.janitor(JanitorAction::Redispatched);
        info!(run_id = %run_id, why = %why, attempt = next, "Run lost through no fault of its own; re-dispatched");
        Ok(())
    }
}

/// When a timer was stored in its stream (`fired`: for a deadline, when it came due) and, for a `finished`
/// timer, when the watcher saw the run finish (`observed`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stamps {
    pub fired: Option<DateTime<Utc>>,
    pub observed: Option<DateTime<Utc>>,
}

/// What the reap lag of a `kind` timer ending a run with `v` is measured from: the finish the backend
/// reported (an upper bound in Kubernetes, whose timestamps are whole seconds), and the watcher's
/// observation (a lower bound, in milliseconds) when the timer reports it; a deadline from the timer firing,
/// when the job had not finished.
fn lag_starts(kind: TimerKind, v: &Verdict, at: Stamps) -> Vec<(LagFrom, DateTime<Utc>)> {
    let mut since = Vec::with_capacity(2);
    match v.finished_at {
        Some(t) => since.push((LagFrom::Finish, t)),
        None => {
            if let Some(t) = at.fired.filter(|_| kind == TimerKind::Deadline) {
                since.push((LagFrom::Deadline, t));
            }
        }
    }
    if let Some(t) = at.observed.filter(|_| kind == TimerKind::Finished) {
        since.push((LagFrom::Observed, t));
    }
    since
}

/// A `finished` or `stuck` timer for an attempt before the run's current one is stale (deadline and cancel
/// timers cover the whole run, whatever its attempt).
fn is_stale(ev: &TimerEvent, attempt: u32) -> bool {
    matches!(ev.kind, TimerKind::Finished | TimerKind::Stuck)
        && ev.attempt.is_some_and(|a| a < attempt)
}
