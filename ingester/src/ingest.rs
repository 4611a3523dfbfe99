//! The batch loop: pull results as they arrive, verify them, write a batch to Redis in pipelined round trips,
//! then settle each message.
//!
//! Per batch: (1) checks needing no database ([`crate::verify::check`]); (2) one pipelined `HMGET` of the
//! runs' `status`, `reaped_at`, `queue`, `image` (unknown run, reaped run, schema); (3) one pipelined
//! round trip storing every genuine result ([`Store::store_results`]), concurrently with recording the
//! rejections; (4) rejection events; (5) settle: ack what Redis confirmed or what was rejected, nak the rest
//! with [`redelivery_delay`]. Nothing is acked before its write returned.

use std::sync::Arc;
use std::time::Duration;

use airlock_runtime::consume::{
    BatchOptions, Outcome, delivered, published_at, run_batch_loop, settle,
};
use airlock_runtime::error::redelivery_delay;
use airlock_runtime::health::{self, Readiness};
use airlock_runtime::nats::{self, ConsumerSpec, StreamOptions, stream_name};
use airlock_runtime::store::{ResultWrite, Store};
use airlock_schemas::record::field;
use airlock_schemas::subjects::STREAM_RESULTS;
use airlock_schemas::{ResultRejected, RunStatus, Subjects};
use async_nats::jetstream::{self, Message};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::verify::{self, Candidate, RejectKind, Rejection};
use crate::{Config, DURABLE, Error, MAX_REJECTIONS, Metrics, ResultSchemas};

/// Everything a batch needs, shared by the in-flight batches.
struct Ctx {
    subjects: Subjects,
    secret: Vec<u8>,
    max_bytes: usize,
    redelivery_cap: Duration,
    store: Store,
    js: jetstream::Context,
    schemas: ResultSchemas,
    metrics: Arc<Metrics>,
}

/// Sets up streams, the durable consumer and Redis, then ingests until `shutdown`.
pub(crate) async fn run(
    config: Config,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> Result<(), Error> {
    if config.batch_size == 0 || config.concurrency == 0 || config.max_result_bytes == 0 {
        return Err(Error::Config(
            "batch size, concurrency and max result bytes must be at least 1".into(),
        ));
    }
    let secret = config.common.token_secret()?;
    let schemas = match &config.result_schemas {
        Some(path) => ResultSchemas::load(path)?,
        None => ResultSchemas::none(),
    };
    let readiness = Readiness::default();
    if let Some(addr) = config.common.http_addr {
        health::serve(addr, readiness.clone(), shutdown.clone())
            .await
            .map_err(|e| Error::Config(format!("serving health on {addr}: {e}")))?;
    }
    let subjects = config.common.subjects();
    let client = nats::connect(&config.common.nats_url, DURABLE).await?;
    let js = jetstream::new(client);
    let stream_opts = StreamOptions {
        replicas: config.common.stream_replicas,
        ..Default::default()
    };
    nats::ensure_streams(&js, &subjects, &stream_opts).await?;
    let consumer = nats::ensure_consumer(
        &js,
        &ConsumerSpec {
            stream: stream_name(&subjects, STREAM_RESULTS),
            durable: DURABLE.into(),
            filter: subjects.results_all(),
            max_ack_pending: config.max_ack_pending,
            ack_wait: config.ack_wait,
            // Never give up on a result: a long Redis outage must not lose it.
            max_deliver: -1,
        },
    )
    .await?;
    let store = config.common.connect_store().await?;
    let ctx = Arc::new(Ctx {
        subjects,
        secret,
        max_bytes: config.max_result_bytes,
        redelivery_cap: config.redelivery_cap,
        store,
        js,
        schemas,
        metrics,
    });
    readiness.set(true);
    info!(
        batch_size = config.batch_size,
        concurrency = config.concurrency,
        "Ingesting results"
    );
    let grace = config.common.shutdown_grace;
    let batch = BatchOptions {
        concurrency: config.concurrency,
        pull: config.batch_size,
        max_batch: config.batch_size,
        grace,
    };
    let handler_ctx = ctx.clone();
    // Whatever arrived together is one batch; large payloads split it into several pipelines.
    run_batch_loop(consumer, batch, shutdown, move |msgs| {
        let ctx = handler_ctx.clone();
        async move {
            for batch in split_by_bytes(msgs, MAX_BATCH_BYTES) {
                process_batch(&ctx, batch).await;
            }
        }
    })
    .await?;
    readiness.set(false);
    info!(metrics = ?ctx.metrics.snapshot(), "Ingester stopped");
    Ok(())
}

/// Most payload bytes written in one pipeline (large results make smaller batches).
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Splits `msgs` into consecutive batches of at most `max_bytes` of payload (at least one message each).
fn split_by_bytes(msgs: Vec<Message>, max_bytes: usize) -> Vec<Vec<Message>> {
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
}

/// A message to be rejected; `run_id` is absent when the subject names no valid run.
struct Rejected {
    msg: Message,
    run_id: Option<String>,
    rejection: Rejection,
}

/// The fields of a run's record the checks need.
type Lookup = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// Verifies, writes and settles one batch.
async fn process_batch(ctx: &Ctx, msgs: Vec<Message>) {
    ctx.metrics.add_batch();
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
            ctx.metrics.add_poison();
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

    // The run records, for unknown/reaped runs and schemas.
    let mut to_store = Vec::with_capacity(genuine.len());
    if !genuine.is_empty() {
        let looked_up = match lookup(ctx, &genuine).await {
            Ok(l) => l,
            Err(e) => {
                ctx.metrics.add_redis_error();
                warn!(error = %e, messages = genuine.len() + rejected.len(), "Run lookup failed; will retry");
                // Redis is away: retry everything that needs it, handle only what does not.
                let (needs_redis, no_record): (Vec<_>, Vec<_>) =
                    rejected.into_iter().partition(|r| r.run_id.is_some());
                let all = genuine
                    .iter()
                    .map(|g| &g.msg)
                    .chain(needs_redis.iter().map(|r| &r.msg));
                nak_all(ctx, all).await;
                settle_rejections(ctx, no_record).await;
                return;
            }
        };
        for (g, (status, reaped_at, queue, image)) in genuine.into_iter().zip(looked_up) {
            match judge(ctx, &g, status, reaped_at, queue, image) {
                Ok(()) => to_store.push(g),
                Err(rejection) => rejected.push(Rejected {
                    msg: g.msg,
                    run_id: Some(g.run_id),
                    rejection,
                }),
            }
        }
    }

    // One round trip for the stores, alongside the rejection records.
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
                        ctx.metrics.add_stored();
                        debug!(run_id = %g.run_id, "Result stored");
                        settle(&g.msg, &Outcome::Done).await;
                    }
                    ResultWrite::Duplicate => {
                        ctx.metrics.add_duplicate();
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
            ctx.metrics.add_redis_error();
            warn!(error = %e, messages = to_store.len(), "Result write failed; will retry");
            nak_all(ctx, to_store.iter().map(|g| &g.msg)).await;
        }
    }

    // Rejections: counted, announced and acked once recorded (or when there is no record to record on).
    let mut handled = Vec::new();
    for (r, rec) in rejected.into_iter().zip(recorded) {
        match rec {
            Ok(()) => handled.push(r),
            Err(e) => {
                ctx.metrics.add_redis_error();
                warn!(run_id = r.run_id.as_deref().unwrap_or("-"), error = %e, "Recording a rejection failed; will retry");
                nak_all(ctx, std::iter::once(&r.msg)).await;
            }
        }
    }
    handled.extend(late_rejections);
    settle_rejections(ctx, handled).await;
}

/// Announces, counts and acks rejections that are recorded (or have no record to be recorded on).
async fn settle_rejections(ctx: &Ctx, handled: Vec<Rejected>) {
    futures::future::join_all(handled.iter().map(|r| announce(ctx, r))).await;
    for r in handled {
        ctx.metrics.add_rejected(r.rejection.kind);
        settle(&r.msg, &Outcome::Done).await;
    }
}

/// One pipelined `HMGET` of `status`, `reaped_at`, `queue`, `image` per message, in order.
async fn lookup(ctx: &Ctx, genuine: &[Genuine]) -> Result<Vec<Lookup>, airlock_runtime::Error> {
    let mut pipe = redis::pipe();
    for g in genuine {
        pipe.cmd("HMGET")
            .arg(ctx.store.key(&g.run_id))
            .arg(field::STATUS)
            .arg(field::REAPED_AT)
            .arg(field::QUEUE)
            .arg(field::IMAGE);
    }
    let out: Vec<Lookup> = pipe.query_async(&mut ctx.store.connection()).await?;
    if out.len() != genuine.len() {
        return Err(airlock_runtime::Error::Corrupt(format!(
            "lookup: {} replies for {} runs",
            out.len(),
            genuine.len()
        )));
    }
    Ok(out)
}

/// Unknown run, reaped run, schema: the checks that need the record.
fn judge(
    ctx: &Ctx,
    g: &Genuine,
    status: Option<String>,
    reaped_at: Option<String>,
    queue: Option<String>,
    image: Option<String>,
) -> Result<(), Rejection> {
    let Some(status) = status else {
        return Err(Rejection::simple(RejectKind::UnknownRun));
    };
    let terminal = RunStatus::parse(&status).is_some_and(RunStatus::is_terminal);
    if terminal && let Some(reaped_at) = reaped_at {
        match DateTime::parse_from_rfc3339(&reaped_at) {
            Ok(reaped) if g.published > reaped => {
                return Err(Rejection::simple(RejectKind::RunReaped));
            }
            Ok(_) => {}
            Err(e) => {
                // Storing a genuine result beats rejecting it on a field we cannot read.
                warn!(run_id = %g.run_id, reaped_at = %reaped_at, error = %e, "Unreadable reaped_at; storing the result");
            }
        }
    }
    if !ctx.schemas.is_empty() {
        ctx.schemas
            .validate(queue.as_deref(), image.as_deref(), &g.candidate.value)?;
    }
    Ok(())
}

/// Records a rejection on its run (a no-op for unknown runs and invalid run ids).
async fn record_rejection(ctx: &Ctx, r: &Rejected) -> Result<(), airlock_runtime::Error> {
    match &r.run_id {
        Some(id) if r.rejection.kind != RejectKind::UnknownRun => {
            ctx.store
                .add_result_rejection(id, &r.rejection.reason, MAX_REJECTIONS)
                .await
        }
        _ => Ok(()),
    }
}

/// Logs a rejection and publishes it on `airlock.events.<run_id>` (deduplicated per message); best effort.
async fn announce(ctx: &Ctx, r: &Rejected) {
    let Some(run_id) = &r.run_id else {
        warn!(subject = %r.msg.subject, reason = %r.rejection, "Result rejected");
        return;
    };
    warn!(run_id = %run_id, reason = %r.rejection, "Result rejected");
    let ev = ResultRejected {
        run_id: run_id.clone(),
        reason: r.rejection.reason.clone(),
        at: Utc::now(),
    };
    let body = match serde_json::to_vec(&ev) {
        Ok(b) => b,
        Err(e) => {
            warn!(run_id = %run_id, error = %e, "Encoding a rejection event failed");
            return;
        }
    };
    let seq = r.msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("result-rejected-{run_id}-{seq}").as_str(),
    );
    let published = async {
        ctx.js
            .publish_with_headers(ctx.subjects.events(run_id), headers, body.into())
            .await
            .map_err(airlock_runtime::Error::nats)?
            .await
            .map_err(airlock_runtime::Error::nats)
    };
    if let Err(e) = published.await {
        warn!(run_id = %run_id, error = %e, "Publishing a rejection event failed");
    }
}

/// Naks each message with the capped backoff of its delivery count.
async fn nak_all<'a>(ctx: &Ctx, msgs: impl Iterator<Item = &'a Message>) {
    let mut n = 0;
    for msg in msgs {
        let delay = redelivery_delay(delivered(msg), ctx.redelivery_cap);
        settle(msg, &Outcome::Transient(delay)).await;
        n += 1;
    }
    ctx.metrics.add_nacked(n);
}
