//! Handling one run request: validate, record, take a slot, launch, record `pending`, schedule the deadline.
//!
//! Every step is idempotent, so a redelivery (after a crash, a nak, or with several replicas) converges on
//! the same single pod: the record only moves forward, objects are found by name on 409, timers and events
//! are deduplicated by `Nats-Msg-Id`. The message is acknowledged only once the pod exists and the run is
//! recorded `pending`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use airlock_backend::{Backend, BackendError, LaunchSpec, Launched, RuntimeKind};
use airlock_runtime::consume::{self, Outcome};
use airlock_runtime::error::redelivery_delay;
use airlock_runtime::publish::Publisher;
use airlock_runtime::store::{Store, Transition, now_rfc3339};
use airlock_schemas::record::{RunRecord, field};
use airlock_schemas::{
    FieldError, LifecycleEvent, Policy, RunStatus, Subjects, ValidatedRun, decode_request, env,
    is_valid_name, token,
};
use async_nats::jetstream::{self, AckKind};
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, SecondsFormat, Utc};
use tracing::{debug, info, warn};

use crate::Error;
use crate::config::Config;
use crate::slots::{Reservation, Slots};
use crate::unknown::UnknownQueueStats;

/// Header the janitor sets on a re-dispatched request.
pub const ATTEMPT_HEADER: &str = "Airlock-Attempt";
/// Largest raw request kept on a `rejected` record.
const MAX_RAW_REQUEST: usize = 16 * 1024;

/// What every handler shares.
#[derive(Debug)]
pub struct Ctx {
    pub(crate) config: Config,
    pub(crate) policy: Policy,
    pub(crate) secret: Vec<u8>,
    pub(crate) subjects: Subjects,
    pub(crate) store: Store,
    pub(crate) publisher: Publisher,
    pub(crate) backend: Backend,
    pub(crate) slots: Slots,
    pub(crate) unknown_queue_stats: UnknownQueueStats,
}

/// The attempt a message asks for (`Airlock-Attempt`, default 1).
pub fn attempt_of(msg: &jetstream::Message) -> u32 {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(ATTEMPT_HEADER))
        .and_then(|v| v.as_str().trim().parse::<u32>().ok())
        .filter(|a| *a >= 1)
        .unwrap_or(1)
}

/// When the message was stored in the stream (now, if unknown).
pub(crate) fn published_at(msg: &jetstream::Message) -> DateTime<Utc> {
    consume::published_at(msg).unwrap_or_else(Utc::now)
}

impl Ctx {
    fn event(&self, run_id: &str, status: RunStatus, queue: &str) -> LifecycleEvent {
        LifecycleEvent {
            run_id: run_id.to_string(),
            status,
            at: Utc::now(),
            reason: None,
            exit_code: None,
            queue: Some(queue.to_string()),
            metadata: None,
        }
    }

    fn transient(&self, delivered: i64) -> Outcome {
        Outcome::Transient(redelivery_delay(delivered, self.config.redelivery_cap))
    }

    /// The job environment: the request's plus the reserved variables.
    pub fn job_env(
        &self,
        run_id: &str,
        request_env: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut e = request_env.clone();
        e.insert(env::RUN_ID.into(), run_id.to_string());
        e.insert(env::RUN_TOKEN.into(), token::sign(&self.secret, run_id));
        if self.backend.kind() == RuntimeKind::Kube {
            e.insert(env::RESULT_SUBJECT.into(), self.subjects.results(run_id));
            e.insert(env::NATS_URL.into(), self.config.job_nats_url());
        }
        e
    }
}

/// Handles one request message; see the module docs.
pub async fn handle(
    ctx: Arc<Ctx>,
    msg: &jetstream::Message,
    mut reservation: Reservation,
) -> Outcome {
    let delivered = consume::delivered(msg);
    let Some(queue) = ctx.subjects.queue_of(&msg.subject).map(str::to_string) else {
        reservation.settle();
        return Outcome::Poison(format!("{} is not a run request subject", msg.subject));
    };
    let attempt = attempt_of(msg);
    let submitted_at = published_at(msg);
    let result = match decode_request(&msg.payload, &queue, &ctx.policy) {
        Err(errors) => {
            reservation.settle();
            reject(&ctx, msg, &queue, submitted_at, &errors).await
        }
        Ok(run) => {
            dispatch(
                &ctx,
                msg,
                run,
                attempt,
                submitted_at,
                delivered,
                reservation,
            )
            .await
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

/// The run id an invalid request can be recorded under: its `id` if valid, else its `Nats-Msg-Id`.
fn rejected_id(msg: &jetstream::Message) -> Option<String> {
    let from_body = serde_json::from_slice::<serde_json::Value>(&msg.payload)
        .ok()
        .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string));
    let from_header = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.as_str().to_string());
    from_body
        .into_iter()
        .chain(from_header)
        .find(|id| is_valid_name(id))
}

async fn reject(
    ctx: &Ctx,
    msg: &jetstream::Message,
    queue: &str,
    submitted_at: DateTime<Utc>,
    errors: &[FieldError],
) -> Result<Outcome, Error> {
    let reason = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    match record_rejection(ctx, msg, queue, submitted_at, reason.clone()).await? {
        Rejection::Recorded(_) | Rejection::IdInUse(_) => {}
        Rejection::NoId => {
            warn!(subject = %msg.subject, reason = %reason, "Invalid request without a usable id; dropped");
        }
    }
    Ok(Outcome::Done)
}

/// What [`record_rejection`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// The run was recorded `rejected` (or already was) and the event published.
    Recorded(String),
    /// The id belongs to a run past `queued`; left untouched (logged).
    IdInUse(String),
    /// Neither the body's `id` nor the `Nats-Msg-Id` is a valid run id: nothing could be recorded.
    NoId,
}

/// Records the request in `msg` `rejected` with `reason` under its id (see [`rejected_id`]) and publishes the
/// event. `queue` is the queue the request was sent to.
pub(crate) async fn record_rejection(
    ctx: &Ctx,
    msg: &jetstream::Message,
    queue: &str,
    submitted_at: DateTime<Utc>,
    reason: String,
) -> Result<Rejection, Error> {
    let Some(id) = rejected_id(msg) else {
        return Ok(Rejection::NoId);
    };
    match ctx.store.status(&id).await? {
        None | Some(RunStatus::Queued | RunStatus::Rejected) => {}
        Some(current) => {
            warn!(run_id = %id, status = %current, reason = %reason,
                "Invalid request reuses the id of an existing run; ignored");
            return Ok(Rejection::IdInUse(id));
        }
    }
    let mut fields = vec![
        (field::REASON, reason.clone()),
        (field::QUEUE, queue.to_string()),
        (
            field::SUBMITTED_AT,
            submitted_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        ),
        (field::FINISHED_AT, now_rfc3339()),
    ];
    if msg.payload.len() <= MAX_RAW_REQUEST
        && let Ok(raw) = std::str::from_utf8(&msg.payload)
    {
        fields.push((field::REQUEST, raw.to_string()));
    }
    let t = ctx
        .store
        .transition(&id, RunStatus::Rejected, &fields)
        .await?;
    info!(run_id = %id, queue = %queue, reason = %reason, applied = t.applied(), "Request rejected");
    let mut ev = ctx.event(&id, RunStatus::Rejected, queue);
    ev.reason = Some(reason);
    ctx.publisher.event(&ev, 1).await?;
    Ok(Rejection::Recorded(id))
}

#[allow(clippy::too_many_arguments)]
async fn dispatch(
    ctx: &Arc<Ctx>,
    msg: &jetstream::Message,
    run: ValidatedRun,
    attempt: u32,
    msg_time: DateTime<Utc>,
    delivered: i64,
    mut reservation: Reservation,
) -> Result<Outcome, Error> {
    let id = run.request.id.clone();
    let queue = run.queue.clone();
    let raw = ctx.store.get_raw(&id).await?;
    let record = (!raw.is_empty()).then(|| RunRecord::from_hash(&id, &raw));
    if let Some(rec) = &record {
        if let Some(s) = rec.status.filter(|s| s.is_terminal()) {
            info!(run_id = %id, status = %s, "Run already finished; request acknowledged without launching");
            return Ok(Outcome::Done);
        }
        if rec.attempt.unwrap_or(1) > attempt {
            info!(run_id = %id, attempt, current = rec.attempt.unwrap_or(1), "Stale attempt; acknowledged");
            return Ok(Outcome::Done);
        }
    }

    // 1. `queued` first, so a fast job's result finds a record.
    let submitted_at = if attempt > 1 {
        record
            .as_ref()
            .and_then(|r| r.submitted_at.as_deref())
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or(msg_time)
    } else {
        msg_time
    };
    if attempt == 1 {
        let request_json = serde_json::to_string(&run.request)
            .map_err(|e| Error::Config(format!("encoding the request: {e}")))?;
        let fields = [
            (field::QUEUE, queue.clone()),
            (field::IMAGE, run.request.image.clone()),
            (field::REQUEST, request_json),
            (
                field::SUBMITTED_AT,
                submitted_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            ),
            (field::ATTEMPT, "1".to_string()),
        ];
        if let Transition::Refused {
            current: RunStatus::Queued,
        } = ctx
            .store
            .transition(&id, RunStatus::Queued, &fields)
            .await?
        {
            // Queued by someone else (an API): complete the record.
            ctx.store.set_fields(&id, &fields).await?;
        }
    }

    // 2. A slot (normally free: the pull loop pulls only what fits).
    acquire_slot(ctx, msg, &queue, &id).await?;
    reservation.settle();

    // 3. Launch, retrying transient failures with capped, jittered exponential backoff.
    let mut run = run;
    if attempt > 1 {
        let elapsed = (Utc::now() - submitted_at).num_seconds().max(0) as u64;
        run.deadline_seconds = run.deadline_seconds.saturating_sub(elapsed).max(1);
    }
    let deadline = run.request.deadline_seconds.unwrap_or(run.deadline_seconds);
    let spec = LaunchSpec {
        env: ctx.job_env(&id, &run.request.env),
        run,
        attempt,
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(ctx.config.retry_min_delay)
        .with_max_delay(ctx.config.retry_max_delay)
        .with_max_times(ctx.config.retry_times)
        .with_jitter();
    let launched = (|| async { ctx.backend.launch(&spec).await })
        .retry(backoff)
        .when(BackendError::is_retryable)
        .notify(|e, d| {
            warn!(run_id = %id, attempt, error = %e, retry_in = ?d, "Launch failed; will retry");
        })
        .await;
    match launched {
        Ok(Launched::Created) => info!(run_id = %id, queue = %queue, attempt, "Run launched"),
        Ok(Launched::AlreadyExisted) => {
            info!(run_id = %id, queue = %queue, attempt, "Run objects already existed (redelivery)")
        }
        Err(e) if e.is_retryable() => {
            if delivered >= ctx.config.max_deliver {
                let reason = format!("gave up after {delivered} deliveries: {e}");
                warn!(run_id = %id, attempt, reason = %reason, "Run failed; dead-lettered");
                fail(ctx, &id, &queue, attempt, &reason, true).await?;
                // A nak on the last delivery: JetStream stops redelivering and sends the max-deliveries
                // advisory; the message stays in the stream as the dead letter.
                return Ok(Outcome::Transient(Duration::from_millis(100)));
            }
            warn!(run_id = %id, attempt, delivered, error = %e, "Launch failed; request will be redelivered");
            return Ok(ctx.transient(delivered));
        }
        Err(BackendError::NotOurs { name, run_id }) => {
            if ctx
                .store
                .get(&id)
                .await?
                .and_then(|r| r.attempt)
                .unwrap_or(1)
                > attempt
            {
                info!(run_id = %id, attempt, "Superseded by a newer attempt; acknowledged");
                return Ok(Outcome::Done);
            }
            let reason =
                format!("{name} exists but does not belong to run {run_id} attempt {attempt}");
            warn!(run_id = %id, reason = %reason, "Run failed");
            fail(ctx, &id, &queue, attempt, &reason, false).await?;
            return Ok(Outcome::Poison(reason));
        }
        Err(e) => {
            let reason = e.to_string();
            warn!(run_id = %id, attempt, reason = %reason, "Run failed");
            fail(ctx, &id, &queue, attempt, &reason, true).await?;
            return Ok(Outcome::Poison(reason));
        }
    }

    // 4. `pending` (refused, harmlessly, when the watcher already saw it running or on a re-dispatch).
    let t = ctx.store.transition(&id, RunStatus::Pending, &[]).await?;
    debug!(run_id = %id, applied = t.applied(), "Pending recorded");
    if t.applied() || attempt > 1 {
        ctx.publisher
            .event(&ctx.event(&id, RunStatus::Pending, &queue), attempt)
            .await?;
    }

    // 5. The deadline timer, for the whole run (Pending included).
    let at = submitted_at
        + chrono::Duration::seconds(i64::try_from(deadline).unwrap_or(i64::MAX / 2_000))
        + chrono::Duration::from_std(ctx.config.deadline_grace).unwrap_or_default();
    ctx.publisher.schedule_deadline(&id, attempt, at).await?;
    Ok(Outcome::Done)
}

/// Takes a slot; if another replica took the last one first, holds the message (with progress acks, so no
/// delivery is burnt) until one frees or shutdown.
async fn acquire_slot(
    ctx: &Ctx,
    msg: &jetstream::Message,
    queue: &str,
    id: &str,
) -> Result<(), Error> {
    let mut last_progress = tokio::time::Instant::now();
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
        if last_progress.elapsed() > ctx.config.ack_wait / 3 {
            let _ = msg.ack_with(AckKind::Progress).await;
            last_progress = tokio::time::Instant::now();
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
    ctx.store
        .transition(
            id,
            RunStatus::Failed,
            &[
                (field::REASON, reason.to_string()),
                (field::FINISHED_AT, now_rfc3339()),
            ],
        )
        .await?;
    let mut ev = ctx.event(id, RunStatus::Failed, queue);
    ev.reason = Some(reason.to_string());
    if let Err(e) = ctx.publisher.event(&ev, attempt).await {
        warn!(run_id = %id, error = %e, "Publishing the failed event failed");
    }
    if cleanup && let Err(e) = ctx.backend.remove(id).await {
        warn!(run_id = %id, error = %e, "Removing a failed run's objects failed; the janitor's sweep will");
    }
    ctx.slots.release(id).await
}
