//! Requests sent to a queue this dispatcher does not serve: found, recorded `rejected`, removed.
//!
//! # Why
//!
//! Each configured queue has its own durable consumer filtered to `airlock.runs.<queue>`, so a request
//! published to any other subject under `airlock.runs.>` (a queue nobody configured, a misspelling, an
//! invalid name such as `airlock.runs.a.b`) would be stored and acknowledged to its publisher, then never
//! consumed. A catch-all consumer is impossible: a work-queue stream forbids consumers whose filters
//! overlap.
//!
//! # How
//!
//! At start and every `--unknown-queue-scan-every` (5 s), [`scan`] asks the stream which subjects under
//! `airlock.runs.>` hold messages. For each one that is not a queue configured here it creates a short-lived
//! **ephemeral** consumer filtered to exactly that subject (so it overlaps no configured queue's consumer),
//! pulls what is there, records each request `rejected` with the reason
//! `queue: unknown queue "<name>" (configured: a, b)`, publishes the lifecycle event, and acknowledges only
//! after the record is written; then it deletes the consumer. A request without a usable run id (neither a
//! valid `id` in the body nor a valid `Nats-Msg-Id`) cannot be recorded: it is logged, counted and
//! terminated. If recording fails (Redis down), the pass stops and the message is left for the next one.
//! The reason names this replica's queues, so replicas configured differently word it differently: a
//! request delivered again after another replica recorded it is recognised by what was delivered (its
//! subject and body), not by that text, and is one rejection, not an id collision.
//!
//! # Replicas and operators
//!
//! - Two replicas scanning at once: the server refuses the second consumer on the same subject (work-queue
//!   filters must not overlap), which means someone else is draining it; the loser skips that subject.
//! - A subject held by another consumer (another replica or deployment that serves that queue, at its cap or
//!   not) is skipped the same way and logged once: its requests are not ours to reject.
//! - Nothing durable is ever left on a stray subject: the consumer is deleted after each pass and has an
//!   inactivity threshold ([`DRAIN_INACTIVE`]) so a crashed replica's is removed by the server. A dispatcher
//!   that starts with that queue newly configured while a drain is in progress waits (up to twice
//!   [`DRAIN_INACTIVE`]) for the drain consumer to go before creating its durable, instead of failing.
//! - A queue removed from `--queues` keeps its durable consumer (nothing deletes it), which holds the subject:
//!   its requests are then neither consumed nor rejected until an operator deletes that consumer.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use airlock_runtime::consume;
use airlock_runtime::metrics::RejectClass;
use airlock_runtime::nats::stream_name;
use airlock_schemas::subjects::STREAM_RUNS;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::stream::{ConsumerErrorKind, Stream};
use async_nats::jetstream::{self, AckKind};
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Error;
use crate::context::Ctx;
use crate::reject::{RejectReason, RejectionRecord, record_rejection};

/// Inactivity after which the server deletes a drain consumer whose owner vanished.
pub const DRAIN_INACTIVE: Duration = Duration::from_secs(15);
/// Most messages one pass takes from one subject; the rest waits for the next pass.
const MAX_PER_PASS: usize = 1000;
/// Messages asked for per pull.
const BATCH: usize = 64;

/// The queue part of a subject under `<prefix>.runs.` (whatever it is, dots included).
fn queue_part<'a>(ctx: &Ctx, subject: &'a str) -> &'a str {
    subject
        .strip_prefix(ctx.subjects.prefix())
        .and_then(|s| s.strip_prefix(".runs."))
        .unwrap_or(subject)
}

/// Whether `subject` is a queue configured here.
fn is_configured(ctx: &Ctx, subject: &str) -> bool {
    ctx.subjects
        .queue_of(subject)
        .is_some_and(|q| ctx.config.queues.iter().any(|c| c.name == q))
}

/// Scans at start and then every `unknown_queue_scan_every`, until `shutdown`.
pub async fn scan_loop(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let mut held_elsewhere = HashSet::new();
    loop {
        if let Err(e) = scan(&ctx, &shutdown, &mut held_elsewhere).await {
            warn!(error = %e, "Scanning for requests on unknown queues failed; will retry");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(ctx.config.unknown_queue_scan_every) => {}
        }
    }
}

/// One pass: every subject under `airlock.runs.>` holding messages whose queue is not configured here is
/// drained. `held_elsewhere` remembers subjects another consumer holds, to log that once.
pub async fn scan(
    ctx: &Ctx,
    shutdown: &CancellationToken,
    held_elsewhere: &mut HashSet<String>,
) -> Result<(), Error> {
    let js = ctx.publisher.jetstream();
    let stream = js
        .get_stream_no_info(stream_name(&ctx.subjects, STREAM_RUNS))
        .await
        .map_err(airlock_runtime::Error::from)?;
    let mut stray: Vec<String> = stream
        .info_with_subjects(ctx.subjects.runs_all())
        .await
        .map_err(airlock_runtime::Error::from)?
        .try_filter_map(|(subject, count)| async move {
            Ok((count > 0 && !is_configured(ctx, &subject)).then_some(subject))
        })
        .try_collect()
        .await
        .map_err(airlock_runtime::Error::from)?;
    stray.sort_unstable();
    held_elsewhere.retain(|s| stray.contains(s));
    for subject in stray {
        if shutdown.is_cancelled() {
            break;
        }
        match drain(ctx, &stream, &subject, shutdown).await {
            Ok(Drain::Done(n)) => {
                held_elsewhere.remove(&subject);
                if n > 0 {
                    info!(subject = %subject, requests = n, "Rejected requests sent to an unknown queue");
                }
            }
            Ok(Drain::HeldElsewhere) => {
                if held_elsewhere.insert(subject.clone()) {
                    info!(subject = %subject,
                        "Requests on a queue not configured here are held by another consumer (another replica \
                         draining them, or a dispatcher serving that queue); leaving them to it");
                } else {
                    debug!(subject = %subject, "Still held by another consumer");
                }
            }
            Err(e) => {
                warn!(subject = %subject, error = %e, "Draining an unknown queue failed; will retry")
            }
        }
    }
    Ok(())
}

enum Drain {
    /// This many requests were settled.
    Done(usize),
    /// Another consumer holds the subject.
    HeldElsewhere,
}

/// Whether a consumer create failed because another consumer's filter overlaps on the work-queue stream.
fn is_overlap(e: &async_nats::jetstream::stream::ConsumerError) -> bool {
    matches!(e.kind(), ConsumerErrorKind::JetStream(j)
        if j.error_code() == ErrorCode::CONSUMER_WQ_CONSUMER_NOT_UNIQUE)
}

async fn drain(
    ctx: &Ctx,
    stream: &Stream<()>,
    subject: &str,
    shutdown: &CancellationToken,
) -> Result<Drain, Error> {
    let config = consumer::pull::Config {
        description: Some(format!(
            "airlock-dispatcher: rejecting requests on {subject} (queue not configured)"
        )),
        filter_subject: subject.to_string(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        deliver_policy: consumer::DeliverPolicy::All,
        inactive_threshold: DRAIN_INACTIVE,
        max_ack_pending: BATCH as i64,
        ..Default::default()
    };
    let consumer: PullConsumer = match stream.create_consumer(config).await {
        Ok(c) => c,
        Err(e) if is_overlap(&e) => return Ok(Drain::HeldElsewhere),
        Err(e) => return Err(airlock_runtime::Error::from(e).into()),
    };
    let name = consumer.cached_info().name.clone();
    let result = drain_with(ctx, &consumer, subject, shutdown).await;
    if let Err(e) = stream.delete_consumer(&name).await {
        warn!(consumer = %name, error = %e,
            "Deleting a drain consumer failed; the server removes it once inactive");
    }
    result.map(Drain::Done)
}

async fn drain_with(
    ctx: &Ctx,
    consumer: &PullConsumer,
    subject: &str,
    shutdown: &CancellationToken,
) -> Result<usize, Error> {
    let queue = queue_part(ctx, subject);
    let reason = RejectReason::UnknownQueue {
        queue: queue.to_string(),
        configured: ctx.config.queues.iter().map(|q| q.name.clone()).collect(),
    };
    let mut settled = 0;
    while settled < MAX_PER_PASS && !shutdown.is_cancelled() {
        let mut batch = consumer
            .fetch()
            .max_messages(BATCH.min(MAX_PER_PASS - settled))
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .map_err(airlock_runtime::Error::from)?;
        let mut got = 0;
        while let Some(msg) = batch.next().await {
            let msg = msg.map_err(airlock_runtime::Error::receive)?;
            got += 1;
            settle_one(ctx, &msg, queue, &reason).await?;
            settled += 1;
        }
        if got == 0 {
            break;
        }
    }
    Ok(settled)
}

/// Records one request `rejected`, then acknowledges it (double ack: the removal is confirmed before the
/// consumer is deleted). An error leaves it unacknowledged for the next pass.
async fn settle_one(
    ctx: &Ctx,
    msg: &jetstream::Message,
    queue: &str,
    reason: &RejectReason,
) -> Result<(), Error> {
    let published_at = consume::published_at(msg).unwrap_or_else(chrono::Utc::now);
    let recorded = match record_rejection(ctx, msg, queue, published_at, reason).await {
        Ok(r) => r,
        Err(e) => {
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            return Err(e);
        }
    };
    let kind = match recorded {
        RejectionRecord::Recorded(_) | RejectionRecord::IdInUse(_) => {
            ctx.metrics.run_rejected("", RejectClass::UnknownQueue);
            AckKind::Ack
        }
        RejectionRecord::NoId => {
            ctx.metrics.run_rejected("", RejectClass::NoId);
            warn!(subject = %msg.subject, reason = %reason,
                "Request to an unknown queue without a usable run id (body `id` or Nats-Msg-Id); terminated");
            AckKind::Term
        }
    };
    Ok(msg
        .double_ack_with(kind)
        .await
        .map_err(airlock_runtime::Error::ack)?)
}
