//! Recording an invalid request `rejected`: from the queue handler and from the unknown-queue scan.

use airlock_runtime::store::RecordUpdate;
use airlock_schemas::{LifecycleEvent, RunStatus, is_valid_name};
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::Error;
use crate::context::Ctx;

/// Largest raw request kept on a `rejected` record.
const MAX_RAW_REQUEST: usize = 16 * 1024;

/// What [`record_rejection`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RejectionRecord {
    /// The run was recorded `rejected` (or already was) and the event published.
    Recorded(String),
    /// The id belongs to a run past `queued`; left untouched (logged).
    IdInUse(String),
    /// Neither the body's `id` nor the `Nats-Msg-Id` is a valid run id: nothing could be recorded.
    NoId,
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

/// Records the request in `msg` `rejected` with `reason` under its id (see [`rejected_id`]) and publishes the
/// event. `queue` is the queue the request was sent to.
pub(crate) async fn record_rejection(
    ctx: &Ctx,
    msg: &jetstream::Message,
    queue: &str,
    submitted_at: DateTime<Utc>,
    reason: String,
) -> Result<RejectionRecord, Error> {
    let Some(id) = rejected_id(msg) else {
        return Ok(RejectionRecord::NoId);
    };
    match ctx.store.head(&id).await?.and_then(|h| h.status) {
        None | Some(RunStatus::Queued | RunStatus::Rejected) => {}
        Some(current) => {
            warn!(run_id = %id, status = %current, reason = %reason,
                "Invalid request reuses the id of an existing run; ignored");
            return Ok(RejectionRecord::IdInUse(id));
        }
    }
    let request = (msg.payload.len() <= MAX_RAW_REQUEST)
        .then(|| std::str::from_utf8(&msg.payload).ok().map(str::to_string))
        .flatten();
    let update = RecordUpdate {
        reason: Some(reason.clone()),
        queue: Some(queue.to_string()),
        submitted_at: Some(submitted_at),
        finished_at: Some(Utc::now()),
        request,
        ..RecordUpdate::default()
    };
    let t = ctx
        .store
        .transition(&id, RunStatus::Rejected, &update)
        .await?;
    info!(run_id = %id, queue = %queue, reason = %reason, applied = t.applied(), "Request rejected");
    let ev = LifecycleEvent::now(&id, RunStatus::Rejected)
        .with_queue(Some(queue.to_string()))
        .with_reason(reason);
    ctx.publisher.event(&ev, 1).await?;
    Ok(RejectionRecord::Recorded(id))
}
