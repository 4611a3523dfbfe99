//! Recording an invalid request `rejected`: from the queue handler and from the unknown-queue scan.

use airlock_runtime::store::{Delivery, RecordUpdate, Refusal};
use airlock_schemas::{
    FieldError, LifecycleEvent, RequestRejected, RunStatus, is_valid_name, json,
};
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use tracing::{debug, info, warn};

use crate::Error;
use crate::context::Ctx;

/// Largest raw request kept on a `rejected` record.
const MAX_RAW_REQUEST: usize = 16 * 1024;

/// Most [`RequestRejected`] events published for one existing run; later refusals are only counted on it.
const MAX_ANNOUNCED: u64 = 10;

/// What [`record_rejection`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RejectionRecord {
    /// The run was recorded `rejected` (now, or by an earlier delivery of this request) and the event
    /// published.
    Recorded(String),
    /// The id belongs to another run: that run was left untouched; the refusal was counted on it and
    /// announced as a [`RequestRejected`] event.
    IdInUse(String),
    /// Neither the body's `id` nor the `Nats-Msg-Id` is a valid run id: nothing could be recorded.
    NoId,
}

/// The run id an invalid request can be recorded under: its `id` if valid, else its `Nats-Msg-Id`.
fn rejected_id(msg: &jetstream::Message) -> Option<String> {
    let from_body = json::object_from_slice(&msg.payload)
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

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RejectReason {
    /// It is not a valid request: every problem found ([`airlock_schemas::decode_request`]).
    Invalid(Vec<FieldError>),
    /// It was sent to a queue this dispatcher does not serve.
    UnknownQueue {
        /// The queue part of its subject (whatever it is).
        queue: String,
        /// The queues this dispatcher serves.
        configured: Vec<String>,
    },
}

impl std::fmt::Display for RejectReason {
    /// The text recorded as the run's `reason` and announced in events: the problems joined by `; `, or
    /// `queue: unknown queue "<name>" (configured: a, b)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(errors) => {
                let mut sep = "";
                for e in errors {
                    write!(f, "{sep}{e}")?;
                    sep = "; ";
                }
                Ok(())
            }
            Self::UnknownQueue { queue, configured } => write!(
                f,
                "queue: unknown queue {queue:?} (configured: {})",
                configured.join(", ")
            ),
        }
    }
}

/// Records the request in `msg` `rejected` for `reason` under its id (see [`rejected_id`]) and publishes the
/// event. `queue` is the queue the request was sent to.
///
/// A rejection never overwrites a record: the record is created only where there is none, atomically. When
/// the id is taken by another run (a malformed request naming someone else's queued run, say), that run is
/// left exactly as it is; the refusal is only counted on it and announced as a [`RequestRejected`] event.
/// Whether an existing rejected record is this request's own (an earlier delivery recorded it and did not
/// get to acknowledge) is decided by what was delivered ([`Delivery`]: the subject and body), not by the
/// reason, whose text differs between replicas (their `--queues`, their policy).
pub(crate) async fn record_rejection(
    ctx: &Ctx,
    msg: &jetstream::Message,
    queue: &str,
    submitted_at: DateTime<Utc>,
    reason: &RejectReason,
) -> Result<RejectionRecord, Error> {
    let Some(id) = rejected_id(msg) else {
        return Ok(RejectionRecord::NoId);
    };
    let reason = reason.to_string();
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
    let delivery = Delivery::of(&msg.subject, &msg.payload);
    match ctx.store.reject(&id, &delivery, &update).await? {
        Refusal::Recorded => {}
        // Recorded by an earlier delivery of this very request: finish by publishing the event.
        Refusal::AlreadyRecorded => {
            debug!(run_id = %id, "Rejection already recorded by an earlier delivery of this request")
        }
        Refusal::IdInUse => return id_in_use(ctx, msg, &id, queue, reason).await,
    }
    info!(run_id = %id, queue = %queue, reason = %reason, "Request rejected");
    let ev = LifecycleEvent::now(&id, RunStatus::Rejected)
        .with_queue(Some(queue.to_string()))
        .with_reason(reason);
    ctx.publisher.event(&ev, 1).await?;
    Ok(RejectionRecord::Recorded(id))
}

/// A refused request naming an existing run: counted on that run and announced (while the count is small).
async fn id_in_use(
    ctx: &Ctx,
    msg: &jetstream::Message,
    id: &str,
    queue: &str,
    reason: String,
) -> Result<RejectionRecord, Error> {
    let count = ctx.store.count_request_rejection(id).await?;
    warn!(run_id = %id, queue = %queue, reason = %reason, count,
        "Invalid request reuses the id of an existing run; refused, the run is untouched");
    if count <= MAX_ANNOUNCED {
        let ev = RequestRejected {
            run_id: id.to_string(),
            queue: queue.to_string(),
            reason,
            at: Utc::now(),
        };
        let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        ctx.publisher.request_rejected(&ev, seq).await?;
    }
    Ok(RejectionRecord::IdInUse(id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_requests_reason_lists_every_problem() {
        let invalid = RejectReason::Invalid(vec![
            FieldError::new("image", "required"),
            FieldError::new("env.AIRLOCK_X", "reserved prefix"),
        ]);
        assert_eq!(
            invalid.to_string(),
            "image: required; env.AIRLOCK_X: reserved prefix"
        );
    }

    #[test]
    fn the_reason_names_the_queue_and_the_configured_ones() {
        let unknown = RejectReason::UnknownQueue {
            queue: "gpu".into(),
            configured: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            unknown.to_string(),
            r#"queue: unknown queue "gpu" (configured: a, b)"#
        );
    }
}
