//! Handling one run request: validate, record, take a slot, launch, record `pending`, schedule the deadline.
//!
//! Every step is idempotent, so a redelivery (after a crash, a nak, or with several replicas) converges on
//! the same single pod: the record only moves forward, objects are found by name on 409, timers and events
//! are deduplicated by `Nats-Msg-Id`. The message is acknowledged only once the pod exists and the run is
//! recorded `pending`.

use std::sync::Arc;
use std::time::Duration;

use airlock_backend::{BackendError, LaunchSpec, Launched};
use airlock_runtime::consume::{self, Outcome};
use airlock_runtime::metrics::RejectClass;
use airlock_runtime::store::{RecordUpdate, StoredRun, Transition};
use airlock_runtime::telemetry;
use airlock_schemas::{
    FieldError, LifecycleEvent, RunStatus, TraceParent, ValidatedRun, decode_request, trace,
};
use async_nats::jetstream;
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use tracing::{Instrument, debug, info, warn};

use crate::Error;
use crate::context::Ctx;
use crate::reject::{RejectionRecord, record_rejection};
use crate::slots::Reservation;

/// Handles one request message; see the module docs.
pub async fn handle(
    ctx: Arc<Ctx>,
    msg: &jetstream::Message,
    mut reservation: Reservation,
) -> Outcome {
    let delivered = consume::delivered(msg);
    let Some(queue) = ctx.subjects.queue_of(&msg.subject).map(str::to_string) else {
        reservation.give_up();
        return Outcome::Poison(format!("{} is not a run request subject", msg.subject));
    };
    let req = Request {
        msg,
        attempt: consume::attempt_of(msg),
        published_at: consume::published_at(msg).unwrap_or_else(Utc::now),
        delivered,
    };
    let result = match decode_request(&msg.payload, &queue, &ctx.policy) {
        Err(errors) => {
            reservation.give_up();
            reject(&ctx, &req, &queue, &errors).await
        }
        Ok(run) => {
            let id = run.request.id.clone();
            match ctx.store.run(&id).await {
                Err(e) => Err(e.into()),
                Ok(existing) => {
                    // One trace per run: the recorded one (a redelivery or a re-dispatch), else the
                    // request's, else a new one.
                    let tp = existing
                        .as_ref()
                        .and_then(|r| r.record.traceparent.as_deref())
                        .and_then(TraceParent::parse)
                        .or_else(|| telemetry::from_headers(msg.headers.as_ref()))
                        .unwrap_or_else(telemetry::new_trace);
                    let span = telemetry::run_span("dispatch", &id, &tp);
                    let run = Traced {
                        run,
                        existing,
                        tp: telemetry::passed_on(&span, &tp),
                    };
                    dispatch(&ctx, &req, run, reservation)
                        .instrument(span)
                        .await
                }
            }
        }
    };
    match result {
        Ok(o) => o,
        Err(e) => {
            warn!(subject = %msg.subject, delivered, error = %e, "Request handling failed; will retry");
            ctx.transient(delivered)
        }
    }
}

/// One delivery of a request message, as the handler sees it.
struct Request<'a> {
    msg: &'a jetstream::Message,
    /// The attempt it asks for.
    attempt: u32,
    /// When JetStream stored it (now, when unknown).
    published_at: DateTime<Utc>,
    /// Its delivery count.
    delivered: i64,
}

async fn reject(
    ctx: &Ctx,
    req: &Request<'_>,
    queue: &str,
    errors: &[FieldError],
) -> Result<Outcome, Error> {
    let reason = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    let recorded = record_rejection(ctx, req.msg, queue, req.published_at, reason.clone()).await?;
    ctx.metrics.run_rejected(queue, RejectClass::Invalid);
    if recorded == RejectionRecord::NoId {
        warn!(subject = %req.msg.subject, reason = %reason, "Invalid request without a usable id; dropped");
    }
    Ok(Outcome::Done)
}

/// A valid request with its run's record (if any) and the `traceparent` it passes on.
struct Traced {
    run: ValidatedRun,
    existing: Option<StoredRun>,
    tp: TraceParent,
}

async fn dispatch(
    ctx: &Arc<Ctx>,
    req: &Request<'_>,
    traced: Traced,
    mut reservation: Reservation,
) -> Result<Outcome, Error> {
    let Traced {
        mut run,
        existing,
        tp,
    } = traced;
    let id = run.request.id.clone();
    if let Some(done) = already_handled(existing.as_ref(), &id, req.attempt) {
        return Ok(done);
    }
    // 1. `queued` first, so a fast job's result finds a record.
    let submitted_at = record_queued(ctx, req, &run, existing.as_ref(), &tp).await?;

    // 2. A slot (normally free: the pull loop pulls only what fits).
    acquire_slot(ctx, &run.queue, &id).await?;
    reservation.give_up();

    // 3. Launch. A re-dispatched run has only what is left of its deadline.
    if req.attempt > 1 {
        let elapsed = (Utc::now() - submitted_at).num_seconds().max(0) as u64;
        run.deadline_seconds = run.deadline_seconds.saturating_sub(elapsed).max(1);
    }
    let deadline = run.request.deadline_seconds.unwrap_or(run.deadline_seconds);
    let queue = run.queue.clone();
    let mut env = ctx.job_env(&id, &run.request.env);
    env.insert(trace::TRACEPARENT.into(), tp.to_string());
    let spec = LaunchSpec {
        env,
        run,
        attempt: req.attempt,
    };
    if let Some(outcome) = launch(ctx, req, &spec).await? {
        return Ok(outcome);
    }

    // 4. `pending` (refused, harmlessly, when the watcher already saw it running or on a re-dispatch).
    let t = ctx
        .store
        .transition(&id, RunStatus::Pending, &RecordUpdate::default())
        .await?;
    debug!(run_id = %id, applied = t.applied(), "Pending recorded");
    if t.applied() || req.attempt > 1 {
        let ev = LifecycleEvent::now(&id, RunStatus::Pending).with_queue(Some(queue));
        ctx.publisher.event(&ev, req.attempt).await?;
    }

    // 5. The deadline timer, for the whole run (Pending included).
    let at = submitted_at
        + chrono::Duration::seconds(i64::try_from(deadline).unwrap_or(i64::MAX / 2_000))
        + chrono::Duration::from_std(ctx.config.deadline_grace).unwrap_or_default();
    ctx.publisher
        .schedule_deadline(&id, req.attempt, at, Some(&tp))
        .await?;
    Ok(Outcome::Done)
}

/// `Done` when the request needs nothing more: its run has ended, or it is an older attempt than the
/// record's.
fn already_handled(existing: Option<&StoredRun>, id: &str, attempt: u32) -> Option<Outcome> {
    let rec = &existing?.record;
    if let Some(s) = rec.status.filter(|s| s.is_terminal()) {
        info!(run_id = %id, status = %s, "Run already finished; request acknowledged without launching");
        return Some(Outcome::Done);
    }
    if rec.current_attempt() > attempt {
        info!(run_id = %id, attempt, current = rec.current_attempt(), "Stale attempt; acknowledged");
        return Some(Outcome::Done);
    }
    None
}

/// Records the first attempt `queued` with its request; returns when the run was submitted (a re-dispatched
/// run keeps its first submission time).
async fn record_queued(
    ctx: &Ctx,
    req: &Request<'_>,
    run: &ValidatedRun,
    existing: Option<&StoredRun>,
    tp: &TraceParent,
) -> Result<DateTime<Utc>, Error> {
    if req.attempt > 1 {
        return Ok(existing
            .and_then(|r| r.record.submitted())
            .unwrap_or(req.published_at));
    }
    let update = RecordUpdate {
        queue: Some(run.queue.clone()),
        image: Some(run.request.image.clone()),
        request: Some(serde_json::to_string(&run.request).map_err(airlock_runtime::Error::from)?),
        submitted_at: Some(req.published_at),
        attempt: Some(1),
        traceparent: Some(tp.to_string()),
        ..RecordUpdate::default()
    };
    let t = ctx
        .store
        .transition(&run.request.id, RunStatus::Queued, &update)
        .await?;
    if t.applied() {
        ctx.metrics.run_accepted(&run.queue);
    }
    if let Transition::Refused {
        current: RunStatus::Queued,
    } = t
    {
        // Queued by an earlier delivery that stopped short: complete the record.
        ctx.store.update(&run.request.id, &update).await?;
    }
    Ok(req.published_at)
}

/// Launches with in-handler retries of transient failures (capped, jittered exponential backoff). `None`
/// when the run was launched (or already existed); otherwise how to settle the message, the run recorded
/// `failed` where that is final.
async fn launch(ctx: &Ctx, req: &Request<'_>, spec: &LaunchSpec) -> Result<Option<Outcome>, Error> {
    let (id, queue, attempt) = (spec.run_id(), spec.run.queue.as_str(), req.attempt);
    let backoff = ExponentialBuilder::default()
        .with_min_delay(ctx.config.retry_min_delay)
        .with_max_delay(ctx.config.retry_max_delay)
        .with_max_times(ctx.config.retry_times)
        .with_jitter();
    let launched = (|| async { ctx.backend.launch(spec).await })
        .retry(backoff)
        .when(BackendError::is_retryable)
        .notify(|e, d| {
            ctx.metrics.backend_retry(e.api_call());
            warn!(run_id = %id, attempt, error = %e, retry_in = ?d, "Launch failed; will retry");
        })
        .await;
    let e = match launched {
        Ok(Launched::Created) => {
            ctx.metrics.run_launched(queue, id, req.published_at);
            info!(run_id = %id, queue = %queue, attempt, "Run launched");
            return Ok(None);
        }
        Ok(Launched::AlreadyExisted) => {
            info!(run_id = %id, queue = %queue, attempt, "Run objects already existed (redelivery)");
            return Ok(None);
        }
        Err(e) => e,
    };
    let delivered = req.delivered;
    if e.is_retryable() {
        if delivered < ctx.config.consumer.max_deliver {
            warn!(run_id = %id, attempt, delivered, error = %e, "Launch failed; request will be redelivered");
            return Ok(Some(ctx.transient(delivered)));
        }
        let reason = format!("gave up after {delivered} deliveries: {e}");
        warn!(run_id = %id, attempt, reason = %reason, "Run failed; dead-lettered");
        fail(ctx, id, queue, attempt, &reason, true).await?;
        // A nak on the last delivery: JetStream stops redelivering and sends the max-deliveries advisory;
        // the message stays in the stream as the dead letter.
        return Ok(Some(Outcome::Transient(Duration::from_millis(100))));
    }
    if let BackendError::NotOurs { name, run_id } = &e {
        if ctx
            .store
            .head(id)
            .await?
            .is_some_and(|h| h.attempt > attempt)
        {
            info!(run_id = %id, attempt, "Superseded by a newer attempt; acknowledged");
            return Ok(Some(Outcome::Done));
        }
        let reason = format!("{name} exists but does not belong to run {run_id} attempt {attempt}");
        warn!(run_id = %id, reason = %reason, "Run failed");
        fail(ctx, id, queue, attempt, &reason, false).await?;
        return Ok(Some(Outcome::Poison(reason)));
    }
    let reason = e.to_string();
    warn!(run_id = %id, attempt, reason = %reason, "Run failed");
    fail(ctx, id, queue, attempt, &reason, true).await?;
    Ok(Some(Outcome::Poison(reason)))
}

/// Takes a slot; if another replica took the last one first, waits until one frees (the caller keeps the
/// message alive with progress acks, so no delivery is burnt).
async fn acquire_slot(ctx: &Ctx, queue: &str, id: &str) -> Result<(), Error> {
    loop {
        let notified = ctx.slots.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if ctx.slots.acquire(queue, id).await? {
            return Ok(());
        }
        debug!(run_id = %id, queue = %queue, "Queue full; holding the request until a slot frees");
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Records the run `failed`, gives its slot back and, when `cleanup`, removes what was created of it.
async fn fail(
    ctx: &Ctx,
    id: &str,
    queue: &str,
    attempt: u32,
    reason: &str,
    cleanup: bool,
) -> Result<(), Error> {
    let update = RecordUpdate {
        reason: Some(reason.to_string()),
        finished_at: Some(Utc::now()),
        ..RecordUpdate::default()
    };
    ctx.store.transition(id, RunStatus::Failed, &update).await?;
    let ev = LifecycleEvent::now(id, RunStatus::Failed)
        .with_queue(Some(queue.to_string()))
        .with_reason(reason);
    if let Err(e) = ctx.publisher.event(&ev, attempt).await {
        warn!(run_id = %id, error = %e, "Publishing the failed event failed");
    }
    if cleanup && let Err(e) = ctx.backend.remove(id).await {
        warn!(run_id = %id, error = %e, "Removing a failed run's objects failed; the janitor's sweep will");
    }
    Ok(ctx.slots.release(id).await?)
}
