//! Following runs in the backend: why a pending run waits (`Unschedulable` with the scheduler's message,
//! `ContainerCreating`, `ErrImagePull`...) and `running` into Redis, finished runs to the janitor, slots
//! back, and a `stuck` timer for a pod that waits in `ImagePullBackOff` and the like, or that the scheduler
//! cannot place (the janitor fails it after the image pull grace, or the unschedulable grace).
//!
//! In Kubernetes mode one replica at a time watches all managed pods: the holder of the watch Lease
//! ([`crate::leader`]); with the Lease off, and in local mode (each replica's own sandboxes), every replica
//! runs one watcher. All its writes are idempotent:
//! the record only moves forward, events and timers are deduplicated by `Nats-Msg-Id` (run, kind, attempt),
//! and giving a slot back twice is harmless. A change for an older attempt than the record's is ignored.

use std::collections::HashSet;
use std::sync::Arc;

use airlock_backend::{Backend, ImageFetch, Observed, Phase};
use airlock_runtime::store::{RecordUpdate, Waiting};
use airlock_schemas::{LifecycleEvent, RunStatus, TimerEvent, TimerKind};
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Error;
use crate::context::Ctx;

/// Runs until `shutdown`: in Kubernetes mode with a watch Lease only while this replica holds it (see
/// [`crate::leader`]), otherwise all along.
pub async fn watch(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    match &ctx.backend {
        Backend::Kube(kube) if !ctx.config.watch_lease.is_empty() => {
            crate::leader::watch_while_leading(&ctx, kube, &shutdown).await
        }
        _ => follow(&ctx, ctx.backend.watch(), &shutdown).await,
    }
}

/// Changes handled at once: each run's changes go to one lane (by a hash of its id) and are handled there in
/// order, so a run's `running` is recorded before its `finished` timer, while different runs proceed in
/// parallel (each change waits on Redis and JetStream round trips; one at a time caps a busy cluster).
const LANES: usize = 16;
/// Changes queued per lane before the watch stream is read no further.
const LANE_DEPTH: usize = 64;

/// Handles each change of `changes` until `stop` (or the stream ends); changes still queued at `stop` are
/// dropped (a new watch starts with the current state of every pod). Each change is stamped when it comes off
/// the watch: a finished run's timer carries that (milliseconds) for the janitor's reap lag.
pub(crate) async fn follow(
    ctx: &Ctx,
    mut changes: BoxStream<'static, Observed>,
    stop: &CancellationToken,
) {
    let (lanes, queues): (Vec<_>, Vec<_>) = (0..LANES)
        .map(|_| tokio::sync::mpsc::channel::<(Observed, DateTime<Utc>)>(LANE_DEPTH))
        .unzip();
    let feed = async move {
        loop {
            let o = tokio::select! {
                _ = stop.cancelled() => return,
                o = changes.next() => match o { Some(o) => o, None => return },
            };
            if lanes[lane_of(&o.run_id)]
                .send((o, Utc::now()))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    let handle = futures::future::join_all(queues.into_iter().map(|mut queue| async move {
        loop {
            let (o, seen) = tokio::select! {
                _ = stop.cancelled() => return,
                o = queue.recv() => match o { Some(o) => o, None => return },
            };
            handle(ctx, &o, seen).await;
        }
    }));
    tokio::join!(feed, handle);
}

fn lane_of(run_id: &str) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(run_id) as usize % LANES
}

/// Records one change seen at `seen`, retrying transient failures a few times.
async fn handle(ctx: &Ctx, o: &Observed, seen: DateTime<Utc>) {
    let backoff = ExponentialBuilder::default()
        .with_max_times(5)
        .with_jitter();
    let r = (|| on_change(ctx, o, seen))
        .retry(backoff)
        .when(Error::is_retryable)
        .await;
    if let Err(e) = r {
        warn!(run_id = %o.run_id, error = %e, "Recording a run change failed; the janitor's sweep will catch up");
    }
}

async fn on_change(ctx: &Ctx, o: &Observed, seen: DateTime<Utc>) -> Result<(), Error> {
    if o.phase == Phase::Pending {
        return on_pending(ctx, o).await;
    }
    let head = ctx.store.head(&o.run_id).await?;
    if head.as_ref().is_some_and(|h| h.attempt > o.attempt) {
        debug!(run_id = %o.run_id, attempt = o.attempt, "Change of an older attempt; ignored");
        return Ok(());
    }
    let status = head.and_then(|h| h.status);
    match o.phase {
        Phase::Pending => {}
        Phase::Running => {
            ctx.metrics.run_running(&o.run_id);
            // No record (expired, or not ours): nothing to move; the janitor's sweep deals with orphans.
            if status.is_none_or(|s| !s.can_move_to(RunStatus::Running)) {
                return Ok(());
            }
            let update = RecordUpdate {
                started_at: Some(o.started_at.unwrap_or_else(Utc::now)),
                ..RecordUpdate::default()
            };
            let t = ctx
                .store
                .transition(&o.run_id, RunStatus::Running, &update)
                .await?;
            if t.applied() {
                info!(run_id = %o.run_id, attempt = o.attempt, "Run running");
                // Counted once per run, with the transition (the local runtime reports it; the kubelet keeps
                // its own image figures).
                match o.image_fetch {
                    Some(ImageFetch::Cached) => ctx.metrics.image_cache_hit(),
                    Some(ImageFetch::Pulled { bytes }) => ctx.metrics.image_pulled(bytes),
                    None => {}
                }
                let mut ev =
                    LifecycleEvent::now(&o.run_id, RunStatus::Running).with_queue(o.queue.clone());
                ev.metadata = ctx.store.request(&o.run_id).await?.and_then(|r| r.metadata);
                ctx.publisher.event(&ev, o.attempt).await?;
            }
        }
        Phase::Succeeded | Phase::Failed => {
            ctx.metrics.run_finished(&o.run_id);
            ctx.slots.release(&o.run_id).await?;
            if status.is_some_and(RunStatus::is_terminal) {
                return Ok(());
            }
            debug!(run_id = %o.run_id, phase = ?o.phase, reason = ?o.reason, "Run finished; handing it to the janitor");
            let mut timer = TimerEvent::for_run(TimerKind::Finished, &o.run_id, o.attempt);
            timer.reason = o.reason.as_ref().map(ToString::to_string);
            ctx.publisher.timer_observed(&timer, Some(seen)).await?;
        }
    }
    Ok(())
}

/// A pending run: why it waits goes on its record (one script, no read: refused once the run is past
/// `pending` or on a newer attempt). Pod changes without a reason (created, scheduled...) need nothing, not
/// even a store call. A pod waiting in a state it will not leave by itself also gets its `stuck` timer.
async fn on_pending(ctx: &Ctx, o: &Observed) -> Result<(), Error> {
    let Some(reason) = o.reason_text() else {
        return Ok(());
    };
    let live = match ctx.store.waiting(&o.run_id, o.attempt, &reason).await? {
        Waiting::Shown => true,
        // A re-dispatched run keeps the status it had (`running`): its new pod may still get stuck.
        Waiting::Past(status) => !status.is_terminal(),
        Waiting::NotCurrent => {
            debug!(run_id = %o.run_id, attempt = o.attempt, "Change of an older attempt, or of no run; ignored");
            false
        }
    };
    if live {
        schedule_stuck(ctx, o).await?;
    }
    Ok(())
}

/// A pod waiting in a state it will not leave by itself (`ImagePullBackOff`…, or unschedulable): the
/// janitor gets a `stuck` timer at the time the pod began to wait so plus the grace of that cause (now, when
/// that is past), naming the reason. The time comes from the pod, so every change of the pod schedules the
/// same timer (deduplicated per run, attempt and time).
async fn schedule_stuck(ctx: &Ctx, o: &Observed) -> Result<(), Error> {
    let (Some(stuck), Some(reason)) = (ctx.backend.stuck(o), o.reason.as_ref()) else {
        return Ok(());
    };
    if stuck.fail_at <= Utc::now() {
        let mut timer = TimerEvent::for_run(TimerKind::Stuck, &o.run_id, o.attempt);
        timer.reason = Some(reason.to_string());
        ctx.publisher.timer(&timer).await?;
    } else {
        ctx.publisher
            .schedule_stuck(&o.run_id, o.attempt, stuck.fail_at, reason.as_str())
            .await?;
    }
    debug!(run_id = %o.run_id, %reason, cause = ?stuck.cause, since = %stuck.since, at = %stuck.fail_at, "Run's pod is stuck; the janitor fails it at the grace");
    Ok(())
}

/// Every `reconcile_every`, reclaims slots of runs that have nothing live in the backend (see `slots`).
pub async fn reconcile(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(ctx.config.reconcile_every) => {}
        }
        let live: HashSet<String> = match ctx.backend.list().await {
            Ok(runs) => runs
                .into_iter()
                .filter(|o| !o.phase.is_finished())
                .map(|o| o.run_id)
                .collect(),
            Err(e) => {
                warn!(error = %e, "Listing runs for slot reconciliation failed; will retry");
                continue;
            }
        };
        match ctx.slots.reconcile(&live, ctx.config.slot_lease).await {
            Ok(0) => {}
            Ok(n) => {
                info!(reclaimed = n, "Reclaimed slots of runs with nothing live")
            }
            Err(e) => warn!(error = %e, "Slot reconciliation failed; will retry"),
        }
    }
}
