//! One batch: verify, look the runs up, write in pipelined round trips, settle each message.
//!
//! Per batch: (1) checks needing no database ([`crate::verify::check`]); (2) one pipelined read of the runs'
//! heads ([`airlock_runtime::store::Store::heads`]: unknown run, reaped run, schema); (3) one pipelined
//! round trip storing every genuine result ([`airlock_runtime::store::Store::store_results`]), concurrently
//! with recording the rejections; (4) rejection events; (5) settle: ack what Redis confirmed or what was
//! rejected, nak the rest with the capped redelivery delay. Nothing is acked before its write returned.
//!
//! Rejection events are bounded, so forged results cannot grow `AIRLOCK_EVENTS` without bound: nothing is
//! published for a run that does not exist (or a subject naming no valid run), and a run's rejections are
//! announced only up to [`MAX_REJECTION_EVENTS`], then once more with the count so far; after that they
//! are only counted on the record (`result_rejections_total`).

use airlock_runtime::consume::{Outcome, delivered, published_at, settle};
use airlock_runtime::store::{ResultWrite, RunHead};
use airlock_runtime::telemetry;
use airlock_schemas::{ResultRejected, TraceParent};
use async_nats::jetstream::Message;
use chrono::{DateTime, Utc};
use tracing::{debug, warn};

use super::Ctx;
use crate::verify::{self, Candidate, RejectKind, Rejection};
use crate::{MAX_REJECTION_EVENTS, MAX_REJECTIONS};

/// Splits `msgs` into consecutive batches of at most `max_bytes` of payload (at least one message each).
pub(super) fn split_by_bytes(msgs: Vec<Message>, max_bytes: usize) -> Vec<Vec<Message>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for msg in msgs {
        let len = msg.payload.len();
        if !current.is_empty() && bytes + len > max_bytes {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += len;
        current.push(msg);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// A message that passed the stateless checks.
struct Genuine {
    msg: Message,
    run_id: String,
    candidate: Candidate,
    published: DateTime<Utc>,
    /// The run's trace: the result's `traceparent` header, else the one recorded on the run.
    trace: Option<TraceParent>,
}

/// A message to be rejected; `run_id` is absent when the subject names no valid run.
struct Rejected {
    msg: Message,
    run_id: Option<String>,
    rejection: Rejection,
}

/// Verifies, writes and settles one batch.
pub(super) async fn process_batch(ctx: &Ctx, msgs: Vec<Message>) {
    ctx.metrics.ingest_batch(msgs.len());
    let (genuine, mut rejected) = check_all(ctx, msgs).await;

    // The run records, for unknown/reaped runs and schemas.
    let mut to_store = Vec::with_capacity(genuine.len());
    if !genuine.is_empty() {
        let ids: Vec<&str> = genuine.iter().map(|g| g.run_id.as_str()).collect();
        let heads = match ctx.store.heads(&ids).await {
            Ok(h) => h,
            Err(e) => {
                ctx.metrics.redis_error();
                warn!(error = %e, messages = genuine.len() + rejected.len(), "Run lookup failed; will retry");
                // Redis is away: retry everything that needs it, handle only what does not.
                let (needs_redis, no_record): (Vec<_>, Vec<_>) =
                    rejected.into_iter().partition(|r| r.run_id.is_some());
                let all = genuine
                    .iter()
                    .map(|g| &g.msg)
                    .chain(needs_redis.iter().map(|r| &r.msg));
                nak_all(ctx, all).await;
                settle_rejections(ctx, no_record.into_iter().map(|r| (r, 0)).collect()).await;
                return;
            }
        };
        for (mut g, head) in genuine.into_iter().zip(heads) {
            if g.trace.is_none() {
                g.trace = head
                    .as_ref()
                    .and_then(|h| h.traceparent.as_deref())
                    .and_then(TraceParent::parse);
            }
            match judge(ctx, &g, head) {
                Ok(()) => to_store.push(g),
                Err(rejection) => rejected.push(Rejected {
                    msg: g.msg,
                    run_id: Some(g.run_id),
                    rejection,
                }),
            }
        }
    }
    write_and_settle(ctx, to_store, rejected).await;
}

/// The checks that need no database: sorts `msgs` into genuine results and rejections (a message without
/// JetStream delivery info is terminated here).
async fn check_all(ctx: &Ctx, msgs: Vec<Message>) -> (Vec<Genuine>, Vec<Rejected>) {
    let mut genuine = Vec::new();
    let mut rejected = Vec::new();
    for msg in msgs {
        let run_id = match verify::run_id_of(&ctx.subjects, &msg.subject) {
            Ok(id) => id.to_string(),
            Err(rejection) => {
                rejected.push(Rejected {
                    msg,
                    run_id: None,
                    rejection,
                });
                continue;
            }
        };
        let Some(published) = published_at(&msg) else {
            // Not a JetStream delivery: nothing can be recorded about it.
            ctx.metrics.poison();
            settle(&msg, &Outcome::Poison("no delivery info".into())).await;
            continue;
        };
        match verify::check(
            &ctx.secret,
            &run_id,
            msg.headers.as_ref(),
            &msg.payload,
            ctx.max_bytes,
        ) {
            Ok(candidate) => genuine.push(Genuine {
                trace: telemetry::from_headers(msg.headers.as_ref()),
                msg,
                run_id,
                candidate,
                published,
            }),
            Err(rejection) => rejected.push(Rejected {
                msg,
                run_id: Some(run_id),
                rejection,
            }),
        }
    }
    (genuine, rejected)
}

/// Stores the genuine results in one round trip alongside the rejection records, then settles every message:
/// ack what Redis confirmed and what was rejected and recorded, nak the rest.
async fn write_and_settle(ctx: &Ctx, to_store: Vec<Genuine>, rejected: Vec<Rejected>) {
    let items: Vec<(&str, &str)> = to_store
        .iter()
        .map(|g| (g.run_id.as_str(), g.candidate.text.as_str()))
        .collect();
    let record = futures::future::join_all(rejected.iter().map(|r| record_rejection(ctx, r)));
    let (written, recorded) = tokio::join!(ctx.store.store_results(&items), record);

    let mut late_rejections = Vec::new();
    match written {
        Ok(outcomes) => {
            for (g, outcome) in to_store.into_iter().zip(outcomes) {
                match outcome {
                    ResultWrite::Stored => {
                        ctx.metrics.result_stored();
                        let tp = g.trace.unwrap_or_else(telemetry::new_trace);
                        telemetry::run_span("ingest", &g.run_id, &tp)
                            .in_scope(|| debug!("Result stored"));
                        settle(&g.msg, &Outcome::Done).await;
                    }
                    ResultWrite::Duplicate => {
                        ctx.metrics.result_duplicate();
                        debug!(run_id = %g.run_id, "A result was already stored; duplicate ignored");
                        settle(&g.msg, &Outcome::Done).await;
                    }
                    // The record went away between lookup and write (expired): nothing to record on.
                    ResultWrite::UnknownRun => late_rejections.push(Rejected {
                        msg: g.msg,
                        run_id: Some(g.run_id),
                        rejection: Rejection::simple(RejectKind::UnknownRun),
                    }),
                }
            }
        }
        Err(e) => {
            ctx.metrics.redis_error();
            warn!(error = %e, messages = to_store.len(), "Result write failed; will retry");
            nak_all(ctx, to_store.iter().map(|g| &g.msg)).await;
        }
    }

    // Rejections: counted, announced and acked once recorded (or when there is no record to record on).
    let mut handled = Vec::new();
    for (r, rec) in rejected.into_iter().zip(recorded) {
        match rec {
            Ok(total) => handled.push((r, total)),
            Err(e) => {
                ctx.metrics.redis_error();
                warn!(run_id = r.run_id.as_deref().unwrap_or("-"), error = %e, "Recording a rejection failed; will retry");
                nak_all(ctx, std::iter::once(&r.msg)).await;
            }
        }
    }
    handled.extend(late_rejections.into_iter().map(|r| (r, 0)));
    settle_rejections(ctx, handled).await;
}

/// Announces, counts and acks rejections that are recorded (or have no record to be recorded on), each
/// with the run's count of rejections so far (0: no record).
async fn settle_rejections(ctx: &Ctx, handled: Vec<(Rejected, u64)>) {
    futures::future::join_all(handled.iter().map(|(r, total)| announce(ctx, r, *total))).await;
    for (r, _) in handled {
        ctx.metrics.result_rejected(r.rejection.kind.label());
        settle(&r.msg, &Outcome::Done).await;
    }
}

/// Unknown run, reaped run, schema: the checks that need the record's head.
fn judge(ctx: &Ctx, g: &Genuine, head: Option<RunHead>) -> Result<(), Rejection> {
    let Some(head) = head else {
        return Err(Rejection::simple(RejectKind::UnknownRun));
    };
    // An unreadable `reaped_at` reads as none: storing a genuine result beats rejecting it on a field we
    // cannot read.
    if head.is_terminal()
        && let Some(reaped) = head.reaped_at
        && g.published > reaped
    {
        return Err(Rejection::simple(RejectKind::RunReaped));
    }
    if !ctx.schemas.is_empty() {
        ctx.schemas.validate(
            head.queue.as_deref(),
            head.image.as_deref(),
            &g.candidate.value,
        )?;
    }
    Ok(())
}

/// Records a rejection on its run and returns the run's count of rejections so far (0, recording nothing,
/// for unknown runs and invalid run ids).
async fn record_rejection(ctx: &Ctx, r: &Rejected) -> Result<u64, airlock_runtime::Error> {
    match &r.run_id {
        Some(id) if r.rejection.kind != RejectKind::UnknownRun => {
            ctx.store
                .add_result_rejection(id, &r.rejection.reason, MAX_REJECTIONS)
                .await
        }
        _ => Ok(0),
    }
}

/// Logs a rejection and, while the run's count `total` allows, publishes it on `airlock.events.<run_id>`
/// (deduplicated per message; best effort): nothing for a run with no record, the first
/// [`MAX_REJECTION_EVENTS`] as they are, the next one as the count so far, none after.
async fn announce(ctx: &Ctx, r: &Rejected, total: u64) {
    let Some(run_id) = &r.run_id else {
        warn!(subject = %r.msg.subject, reason = %r.rejection, "Result rejected");
        return;
    };
    let tp = telemetry::from_headers(r.msg.headers.as_ref()).unwrap_or_else(telemetry::new_trace);
    let span = telemetry::run_span("ingest", run_id, &tp);
    if total == 0 || total > MAX_REJECTION_EVENTS + 1 {
        span.in_scope(|| debug!(reason = %r.rejection, total, "Result rejected; not announced"));
        return;
    }
    span.in_scope(|| warn!(reason = %r.rejection, total, "Result rejected"));
    let reason = if total > MAX_REJECTION_EVENTS {
        format!(
            "{} (rejection {total} of this run; later ones are only counted on the run's record)",
            r.rejection.reason
        )
    } else {
        r.rejection.reason.clone()
    };
    let ev = ResultRejected {
        run_id: run_id.clone(),
        reason,
        at: Utc::now(),
    };
    let seq = r.msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    if let Err(e) = ctx.publisher.result_rejected(&ev, seq).await {
        warn!(run_id = %run_id, error = %e, "Publishing a rejection event failed");
    }
}

/// Naks each message with the capped backoff of its delivery count.
async fn nak_all<'a>(ctx: &Ctx, msgs: impl Iterator<Item = &'a Message>) {
    let mut n = 0;
    for msg in msgs {
        let delay = ctx.consumer.redelivery_delay(delivered(msg));
        settle(msg, &Outcome::Transient(delay)).await;
        n += 1;
    }
    ctx.metrics.nacked(n);
}
