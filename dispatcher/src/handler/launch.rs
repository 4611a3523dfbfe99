//! Launching a run: the backend call with in-handler retries (the slot re-taken before each), and what
//! follows when the run may no longer be launched, ended meanwhile, or failed.

use std::time::Duration;

use airlock_backend::{BackendError, LaunchSpec, Launched};
use airlock_runtime::consume::Outcome;
use airlock_runtime::store::{RecordUpdate, SlotTake, Transition};
use airlock_schemas::{LifecycleEvent, RunStatus};
use backon::{ExponentialBuilder, Retryable};
use chrono::Utc;
use tracing::{debug, info, warn};

use super::Request;
use crate::Error;
use crate::context::Ctx;

/// What [`launch`] did.
pub(super) enum Launch {
    /// The run's objects exist (created now, or already); whether the run ended meanwhile is told by the
    /// `pending` transition that follows.
    Launched,
    /// The run may no longer be launched (see [`SlotTake::NotLaunchable`]); nothing more was
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
pub(super) async fn launch(
    ctx: &Ctx,
    req: &Request<'_>,
    spec: &LaunchSpec,
) -> Result<Launch, Error> {
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
                Ok(SlotTake::NotLaunchable) => return Err(LaunchError::NotLaunchable),
                Ok(SlotTake::Taken | SlotTake::Full) => {}
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
pub(super) async fn ended_meanwhile(ctx: &Ctx, id: &str) -> Result<Outcome, Error> {
    warn!(run_id = %id, "Run ended while it was being launched; removing what was created");
    ctx.backend.remove(id).await?;
    ctx.slots.release(id).await?;
    Ok(Outcome::Done)
}

/// A run the slot script refused to launch: `Done` when it has ended (its slot given back) or has no
/// record; `None` when it is already launched (past `queued` on its first attempt: a redelivery after the
/// launch), so the remaining steps are completed without launching again.
pub(super) async fn not_launchable(
    ctx: &Ctx,
    id: &str,
    attempt: u32,
) -> Result<Option<Outcome>, Error> {
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
pub(super) async fn acquire_slot(
    ctx: &Ctx,
    queue: &str,
    id: &str,
    attempt: u32,
) -> Result<bool, Error> {
    loop {
        let notified = ctx.slots.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match ctx.slots.acquire(queue, id, attempt).await? {
            SlotTake::Taken => return Ok(true),
            SlotTake::NotLaunchable => return Ok(false),
            SlotTake::Full => {}
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
