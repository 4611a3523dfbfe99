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
//!
//! A new run (nearly every request) is recorded `queued` and takes its slot in one Redis script
//! ([`airlock_runtime::store::Store::queue_with_slot`]): Redis is asked twice per run, before and after the
//! launch.
//!
//! # Layout
//! - this module: one request from validation to ack.
//! - `launch`: the launch with its retries, and what follows a run that may not be launched, ended while it
//!   was launched, or failed.

mod launch;

use std::sync::Arc;

use airlock_backend::LaunchSpec;
use airlock_runtime::consume::{self, Outcome};
use airlock_runtime::metrics::RejectClass;
use airlock_runtime::store::{RecordUpdate, SlotTake, StoredRun, Transition};
use airlock_runtime::telemetry;
use airlock_schemas::{
    LifecycleEvent, RunStatus, TraceParent, ValidatedRun, decode_request, trace,
};
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use tracing::{Instrument, debug, info, warn};

use crate::Error;
use crate::context::Ctx;
use crate::reject::{RejectReason, RejectionRecord, record_rejection};
use crate::slots::Reservation;

use self::launch::{Launch, acquire_slot, ended_meanwhile, launch, not_launchable};

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
            reject(&ctx, &req, &queue, RejectReason::Invalid(errors)).await
        }
        Ok(run) => match record_first(&ctx, &req, &run).await {
            Err(e) => Err(e),
            // The usual case, a new run: recorded `queued` (and its slot taken) without reading anything
            // first.
            Ok(Some((span, tp, slot))) => {
                let run = Traced {
                    run,
                    existing: None,
                    tp,
                    recorded: Some(slot),
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
                            .or_else(|| telemetry::from_headers(msg.headers.as_ref()));
                        let (span, tp) = telemetry::first_span("dispatch", &id, tp);
                        let run = Traced {
                            run,
                            existing,
                            tp,
                            recorded: None,
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
    reason: RejectReason,
) -> Result<Outcome, Error> {
    let recorded = record_rejection(ctx, req.msg, queue, req.published_at, &reason).await?;
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
    /// Recorded `queued` by [`record_first`] (a new run), with what taking its slot in the same step found.
    recorded: Option<SlotTake>,
}

/// The first attempt of a run with no record yet (nearly every request) is recorded `queued` at once,
/// with the request's trace (or a new one), and takes its slot in the same script; it is handled in that
/// trace's span: one read of the record and one slot round trip fewer per run. `None` when there is a
/// record already (a redelivery, a run cancelled before its dispatch, a re-dispatch): the caller reads it
/// and goes on from what it says (nothing was taken).
async fn record_first(
    ctx: &Ctx,
    req: &Request<'_>,
    run: &ValidatedRun,
) -> Result<Option<(tracing::Span, TraceParent, SlotTake)>, Error> {
    if req.attempt > 1 {
        return Ok(None);
    }
    let tp = telemetry::from_headers(req.msg.headers.as_ref());
    let (span, tp) = telemetry::first_span("dispatch", &run.request.id, tp);
    let update = queued_update(req, run, &tp)?;
    let ask = ctx.slots.ask(&run.queue, req.attempt);
    let (t, slot) = ctx
        .store
        .queue_with_slot(&run.request.id, &update, &ask)
        .instrument(span.clone())
        .await?;
    let Some(slot) = slot.filter(|_| t.applied()) else {
        return Ok(None);
    };
    ctx.metrics.run_accepted(&run.queue);
    Ok(Some((span, tp, slot)))
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
    let submitted_at = if recorded.is_some() {
        req.published_at
    } else {
        record_queued(ctx, req, &run, existing.as_ref(), &tp).await?
    };

    // 2. A slot (normally free: the pull loop pulls only what fits), only while the run may be launched. A
    // new run's was asked for in step 1; only a full cap waits here.
    let launchable = match recorded {
        Some(SlotTake::Taken) => true,
        Some(SlotTake::NotLaunchable) => false,
        Some(SlotTake::Full) | None => acquire_slot(ctx, &run.queue, &id, req.attempt).await?,
    };
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
