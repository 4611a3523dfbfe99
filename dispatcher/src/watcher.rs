//! Following runs in the backend: `running` into Redis, finished runs to the janitor, slots back.
//!
//! Every replica runs one watcher over all managed pods (or local sandboxes). All its writes are idempotent:
//! the record only moves forward, events and timers are deduplicated by `Nats-Msg-Id` (run, kind, attempt),
//! and giving a slot back twice is harmless. A change for an older attempt than the record's is ignored.

use std::collections::HashSet;
use std::sync::Arc;

use airlock_backend::{Observed, Phase};
use airlock_runtime::store::now_rfc3339;
use airlock_schemas::record::field;
use airlock_schemas::{LifecycleEvent, RunStatus, TimerEvent, TimerKind};
use backon::{ExponentialBuilder, Retryable};
use chrono::{SecondsFormat, Utc};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Error;
use crate::handler::Ctx;

/// Runs until `shutdown`.
pub async fn watch(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let mut changes = ctx.backend.watch();
    loop {
        let o = tokio::select! {
            _ = shutdown.cancelled() => return,
            o = changes.next() => match o { Some(o) => o, None => return },
        };
        let backoff = ExponentialBuilder::default()
            .with_max_times(5)
            .with_jitter();
        let r = (|| on_change(&ctx, &o))
            .retry(backoff)
            .when(Error::is_retryable)
            .await;
        if let Err(e) = r {
            warn!(run_id = %o.run_id, error = %e, "Recording a run change failed; the janitor's sweep will catch up");
        }
    }
}

async fn on_change(ctx: &Ctx, o: &Observed) -> Result<(), Error> {
    let (status, attempt, request): (Option<String>, Option<u32>, Option<String>) =
        redis::cmd("HMGET")
            .arg(ctx.store.key(&o.run_id))
            .arg(field::STATUS)
            .arg(field::ATTEMPT)
            .arg(field::REQUEST)
            .query_async(&mut ctx.store.connection())
            .await?;
    if attempt.unwrap_or(1) > o.attempt {
        debug!(run_id = %o.run_id, attempt = o.attempt, "Change of an older attempt; ignored");
        return Ok(());
    }
    let status = status.as_deref().and_then(RunStatus::parse);
    let metadata = request
        .as_deref()
        .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
        .and_then(|v| v.get("metadata").cloned());
    match o.phase {
        Phase::Pending => {}
        Phase::Running => {
            // No record (expired, or not ours): nothing to move; the janitor's sweep deals with orphans.
            if status.is_none_or(|s| !s.can_move_to(RunStatus::Running)) {
                return Ok(());
            }
            let started = o
                .started_at
                .unwrap_or_else(Utc::now)
                .to_rfc3339_opts(SecondsFormat::Millis, true);
            let t = ctx
                .store
                .transition(
                    &o.run_id,
                    RunStatus::Running,
                    &[(field::STARTED_AT, started)],
                )
                .await?;
            if t.applied() {
                info!(run_id = %o.run_id, attempt = o.attempt, "Run running");
                let ev = LifecycleEvent {
                    run_id: o.run_id.clone(),
                    status: RunStatus::Running,
                    at: Utc::now(),
                    reason: None,
                    exit_code: None,
                    queue: o.queue.clone(),
                    metadata,
                };
                ctx.publisher.event(&ev, o.attempt).await?;
            }
        }
        Phase::Succeeded | Phase::Failed => {
            ctx.slots.release(&o.run_id).await?;
            if status.is_some_and(RunStatus::is_terminal) {
                return Ok(());
            }
            debug!(run_id = %o.run_id, phase = ?o.phase, reason = ?o.reason, "Run finished; handing it to the janitor");
            ctx.publisher
                .timer(&TimerEvent {
                    kind: TimerKind::Finished,
                    run_id: Some(o.run_id.clone()),
                    attempt: Some(o.attempt),
                    reason: o.reason.clone(),
                })
                .await?;
        }
    }
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
                info!(reclaimed = n, at = %now_rfc3339(), "Reclaimed slots of runs with nothing live")
            }
            Err(e) => warn!(error = %e, "Slot reconciliation failed; will retry"),
        }
    }
}
