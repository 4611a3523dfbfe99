//! Handling one run request: validate, record, take a slot, launch, record `pending`, schedule the deadline.
//!
//! Every step is idempotent, so a redelivery (after a crash, a nak, or with several replicas) converges on
//! the same single pod: the record only moves forward, objects are found by name on 409, timers and events
//! are deduplicated by `Nats-Msg-Id`. The message is acknowledged only once the pod exists and the run is
//! recorded `pending`.
//!
//! A run that is no longer `queued` (cancelled, timed out, superseded) is never launched: taking the slot
//! checks it atomically, before the first launch and before every retry, and a run that ended while its
//! launch was in flight has what was created removed. Every path that gives a run up gives its slot back.

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
use crate::slots::{Acquire, Reservation};

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
        Ok(run) => match record_first(&ctx, &req, &run).await {
            Err(e) => Err(e),
            // The usual case, a new run: recorded `queued` without reading anything first.
            Ok(Some((span, tp))) => {
                let run = Traced {
                    run,
                    existing: None,
                    tp,
                    recorded: true,
                };
                dispatch(&ctx, &req, run, reservation)
                    .instrument(span)
                    .await
            }
            Ok(None) => {
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
                            recorded: false,
                        };
                        dispatch(&ctx, &req, run, reservation)
                            .instrument(span)
                            .await
                    }
                }
            }
        },
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
    /// Recorded `queued` by [`record_first`] (a new run).
    recorded: bool,
}

/// The first attempt of a run with no record yet (nearly every request) is recorded `queued` at once,
/// with the request's trace (or a new one), and handled in that trace's span: one read of the record fewer
/// per run. `None` when there is a record already (a redelivery, a run cancelled before its dispatch, a
/// re-dispatch): the caller reads it and goes on from what it says.
async fn record_first(
    ctx: &Ctx,
    req: &Request<'_>,
    run: &ValidatedRun,
) -> Result<Option<(tracing::Span, TraceParent)>, Error> {
    if req.attempt > 1 {
        return Ok(None);
    }
    let tp = telemetry::from_headers(req.msg.headers.as_ref()).unwrap_or_else(telemetry::new_trace);
    let span = telemetry::run_span("dispatch", &run.request.id, &tp);
    let tp = telemetry::passed_on(&span, &tp);
    let update = queued_update(req, run, &tp)?;
    let t = ctx
        .store
        .transition(&run.request.id, RunStatus::Queued, &update)
        .instrument(span.clone())
        .await?;
    if !t.applied() {
        return Ok(None);
    }
    ctx.metrics.run_accepted(&run.queue);
    Ok(Some((span, tp)))
}

/// The record of a run's first attempt, `queued`: its request, queue, image, submission time and trace.
fn queued_update(
    req: &Request<'_>,
    run: &ValidatedRun,
    tp: &TraceParent,
) -> Result<RecordUpdate, Error> {
    Ok(RecordUpdate {
        queue: Some(run.queue.clone()),
        image: Some(run.request.image.clone()),
        request: Some(serde_json::to_string(&run.request).map_err(airlock_runtime::Error::from)?),
        submitted_at: Some(req.published_at),
        attempt: Some(1),
        traceparent: Some(tp.to_string()),
        ..RecordUpdate::default()
    })
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
        recorded,
    } = traced;
    let id = run.request.id.clone();
    if let Some(done) = already_handled(existing.as_ref(), &id, req.attempt) {
        return Ok(done);
    }
    // 1. `queued` first, so a fast job's result finds a record.
    let submitted_at = if recorded {
        req.published_at
    } else {
        record_queued(ctx, req, &run, existing.as_ref(), &tp).await?
    };

    // 2. A slot (normally free: the pull loop pulls only what fits), only while the run may be launched.
    let launchable = acquire_slot(ctx, &run.queue, &id, req.attempt).await?;
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
    let launched = if launchable {
        launch(ctx, req, &spec).await?
    } else {
        Launch::NotLaunchable
    };
    let launched_now = match launched {
        Launch::Launched => true,
        Launch::Settle(outcome) => return Ok(outcome),
        Launch::NotLaunchable => {
            if let Some(done) = not_launchable(ctx, &id, req.attempt).await? {
                return Ok(done);
            }
            false
        }
    };

    // 4. `pending` (refused, harmlessly, when the watcher already saw it running or on a re-dispatch). The
    // same atomic step tells a run that ended (cancel, deadline) while its launch was in flight.
    let t = ctx
        .store
        .transition(&id, RunStatus::Pending, &RecordUpdate::default())
        .await?;
    debug!(run_id = %id, applied = t.applied(), "Pending recorded");
    if launched_now
        && let Transition::Refused { current } = t
        && current.is_terminal()
    {
        return ended_meanwhile(ctx, &id).await;
    }
    let pending = async {
        if t.applied() || req.attempt > 1 {
            let ev = LifecycleEvent::now(&id, RunStatus::Pending).with_queue(Some(queue));
            ctx.publisher.event(&ev, req.attempt).await?;
        }
        Ok::<_, Error>(())
    };

    // 5. The deadline timer, for the whole run (Pending included); published beside the event (both are
    // idempotent, neither depends on the other, and the message is acknowledged only after both).
    let at = submitted_at
        + chrono::Duration::seconds(i64::try_from(deadline).unwrap_or(i64::MAX / 2_000))
        + chrono::Duration::from_std(ctx.config.deadline_grace).unwrap_or_default();
    let timer = async {
        ctx.publisher
            .schedule_deadline(&id, req.attempt, at, Some(&tp))
            .await
            .map_err(Error::from)
    };
    tokio::try_join!(pending, timer)?;
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
    let update = queued_update(req, run, tp)?;
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

/// What [`launch`] did.
enum Launch {
    /// The run's objects exist (created now, or already); whether the run ended meanwhile is told by the
    /// `pending` transition that follows.
    Launched,
    /// The run may no longer be launched (see [`crate::slots::Acquire::NotLaunchable`]); nothing more was
    /// created.
    NotLaunchable,
    /// Settle the message so (the run recorded `failed` where that is final).
    Settle(Outcome),
}

/// Why one launch attempt stopped.
enum LaunchError {
    /// The backend refused or failed.
    Backend(BackendError),
    /// The run may no longer be launched: a retry is not made.
    NotLaunchable,
    /// Checking the run failed.
    Store(Error),
}

/// Launches with in-handler retries of transient failures (capped, jittered exponential backoff). Before
/// each retry the slot is taken again, which re-checks atomically that the run may still be launched; and
/// a run that ended while its launch was in flight has what was created removed.
async fn launch(ctx: &Ctx, req: &Request<'_>, spec: &LaunchSpec) -> Result<Launch, Error> {
    let (id, queue, attempt) = (spec.run_id(), spec.run.queue.as_str(), req.attempt);
    let backoff = ExponentialBuilder::default()
        .with_min_delay(ctx.config.retry_min_delay)
        .with_max_delay(ctx.config.retry_max_delay)
        .with_max_times(ctx.config.retry_times)
        .with_jitter();
    let tries = std::sync::atomic::AtomicU32::new(0);
    let launched = (|| async {
        if tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed) > 0 {
            // Refreshes the slot the run holds (a reclaimed one is taken again if it fits; a launch already
            // under way goes on either way) and re-checks that the run may still be launched.
            match ctx.slots.acquire(queue, id, attempt).await {
                Ok(Acquire::NotLaunchable) => return Err(LaunchError::NotLaunchable),
                Ok(Acquire::Taken | Acquire::Full) => {}
                Err(e) => return Err(LaunchError::Store(e.into())),
            }
        }
        ctx.backend.launch(spec).await.map_err(LaunchError::Backend)
    })
    .retry(backoff)
    .when(|e| matches!(e, LaunchError::Backend(b) if b.is_retryable()))
    .notify(|e, d| {
        if let LaunchError::Backend(e) = e {
            ctx.metrics.backend_retry(e.api_call());
            warn!(run_id = %id, attempt, error = %e, retry_in = ?d, "Launch failed; will retry");
        }
    })
    .await;
    let e = match launched {
        Ok(l) => {
            let how = if l == Launched::Created {
                ctx.metrics.run_launched(queue, id, req.published_at);
                "Run launched"
            } else {
                "Run objects already existed (redelivery)"
            };
            info!(run_id = %id, queue = %queue, attempt, "{how}");
            return Ok(Launch::Launched);
        }
        Err(LaunchError::NotLaunchable) => {
            info!(run_id = %id, attempt, "Run may no longer be launched (cancelled, timed out or superseded); launch retries stopped");
            return Ok(Launch::NotLaunchable);
        }
        Err(LaunchError::Store(e)) => return Err(e),
        Err(LaunchError::Backend(e)) => e,
    };
    let delivered = req.delivered;
    if e.is_retryable() {
        if delivered < ctx.config.consumer.max_deliver {
            warn!(run_id = %id, attempt, delivered, error = %e, "Launch failed; request will be redelivered");
            return Ok(Launch::Settle(ctx.transient(delivered)));
        }
        let reason = format!("gave up after {delivered} deliveries: {e}");
        warn!(run_id = %id, attempt, reason = %reason, "Run failed; dead-lettered");
        fail(ctx, id, queue, attempt, &reason, true).await?;
        // A nak on the last delivery: JetStream stops redelivering and sends the max-deliveries advisory;
        // the message stays in the stream as the dead letter.
        return Ok(Launch::Settle(Outcome::Transient(Duration::from_millis(
            100,
        ))));
    }
    if let BackendError::NotOurs { name, run_id } = &e {
        if ctx
            .store
            .head(id)
            .await?
            .is_some_and(|h| h.attempt > attempt)
        {
            info!(run_id = %id, attempt, "Superseded by a newer attempt; acknowledged");
            return Ok(Launch::Settle(Outcome::Done));
        }
        let reason = format!("{name} exists but does not belong to run {run_id} attempt {attempt}");
        warn!(run_id = %id, reason = %reason, "Run failed");
        fail(ctx, id, queue, attempt, &reason, false).await?;
        return Ok(Launch::Settle(Outcome::Poison(reason)));
    }
    let reason = e.to_string();
    warn!(run_id = %id, attempt, reason = %reason, "Run failed");
    fail(ctx, id, queue, attempt, &reason, true).await?;
    Ok(Launch::Settle(Outcome::Poison(reason)))
}

/// After a launch, for a run that ended meanwhile (a cancel or deadline recorded while the launch was in
/// flight, after the janitor's reap removed nothing; told by the refused `pending`): removes what was just
/// created and gives the slot back.
async fn ended_meanwhile(ctx: &Ctx, id: &str) -> Result<Outcome, Error> {
    warn!(run_id = %id, "Run ended while it was being launched; removing what was created");
    ctx.backend.remove(id).await?;
    ctx.slots.release(id).await?;
    Ok(Outcome::Done)
}

/// A run the slot script refused to launch: `Done` when it has ended (its slot given back) or has no
/// record; `None` when it is already launched (past `queued` on its first attempt: a redelivery after the
/// launch), so the remaining steps are completed without launching again.
async fn not_launchable(ctx: &Ctx, id: &str, attempt: u32) -> Result<Option<Outcome>, Error> {
    let head = ctx.store.head(id).await?;
    match head {
        Some(h) if !h.is_terminal() && h.attempt <= attempt => {
            debug!(run_id = %id, attempt, status = ?h.status, "Already launched; completing the dispatch");
            Ok(None)
        }
        Some(h) if !h.is_terminal() => {
            // A newer attempt holds the run's slot (slots are per run): leave it.
            info!(run_id = %id, attempt, current = h.attempt, "Superseded by a newer attempt; acknowledged without launching");
            Ok(Some(Outcome::Done))
        }
        _ => {
            info!(run_id = %id, attempt, status = ?head.and_then(|h| h.status), "Run ended before its launch; acknowledged without launching");
            ctx.slots.release(id).await?;
            Ok(Some(Outcome::Done))
        }
    }
}

/// Takes a slot; if another replica took the last one first, waits until one frees (the caller keeps the
/// message alive with progress acks, so no delivery is burnt). `false` when the run may no longer be
/// launched (nothing taken).
async fn acquire_slot(ctx: &Ctx, queue: &str, id: &str, attempt: u32) -> Result<bool, Error> {
    loop {
        let notified = ctx.slots.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match ctx.slots.acquire(queue, id, attempt).await? {
            Acquire::Taken => return Ok(true),
            Acquire::NotLaunchable => return Ok(false),
            Acquire::Full => {}
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
    // Announced only when the run is `failed` (now or by an earlier delivery): a run cancelled or timed out
    // meanwhile keeps that outcome, and its clients hear only of that.
    let t = ctx.store.transition(id, RunStatus::Failed, &update).await?;
    if matches!(
        t,
        Transition::Applied { .. }
            | Transition::Refused {
                current: RunStatus::Failed
            }
    ) {
        let ev = LifecycleEvent::now(id, RunStatus::Failed)
            .with_queue(Some(queue.to_string()))
            .with_reason(reason);
        if let Err(e) = ctx.publisher.event(&ev, attempt).await {
            warn!(run_id = %id, error = %e, "Publishing the failed event failed");
        }
    }
    if cleanup && let Err(e) = ctx.backend.remove(id).await {
        warn!(run_id = %id, error = %e, "Removing a failed run's objects failed; the janitor's sweep will");
    }
    Ok(ctx.slots.release(id).await?)
}
