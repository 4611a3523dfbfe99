//! Airlock dispatcher: turns run requests from `airlock.runs.<queue>` into an isolated pod (a per-run
//! NetworkPolicy, then a locked-down Pod) or a local sandbox, exactly once, however often JetStream
//! redelivers and however many replicas run.
//!
//! For each request: validate against the contract and the operator policy (invalid → `rejected` with every
//! reason, acknowledged, never retried); record `queued`; take a slot under the queue's and the global cap;
//! launch (transient failures retried with backoff, then redelivered; after `max_deliver` deliveries the run
//! is `failed` and the message dead-lettered); record `pending`; schedule the deadline timer; acknowledge.
//! A watcher records `running` and hands finished runs to the janitor with a `finished` timer.
//!
//! Requests published to a queue that is not configured (`--queues`), or to a subject that is not a valid
//! queue (`airlock.runs.a.b`), are not silently left in the stream: a periodic scan finds them and records
//! each `rejected` with `queue: unknown queue "<name>" (configured: a, b)` (see [`unknown`]).
//!
//! [`run`] holds no process-global state besides tracing, so `airlock dev` runs it in-process next to the
//! ingester and janitor.
//!
//! # Layout
//! - [`config`]: [`Config`] (flags and environment) and [`config::QueueCap`].
//! - [`handler`]: one request, from validation to acknowledgement.
//! - [`slots`]: running caps per queue and globally, shared by replicas through Redis, and why a full queue
//!   is not pulled.
//! - [`watcher`]: backend changes → `running`, `finished` timers, slots back; slot reconciliation.
//! - [`unknown`]: requests on queues not configured here → `rejected`, through short-lived consumers.
//! - [`error`]: the crate's [`Error`].

pub mod config;
pub mod error;
pub mod handler;
pub mod slots;
pub mod unknown;
pub mod watcher;

use std::sync::Arc;
use std::time::Duration;

use airlock_backend::Backend;
use airlock_runtime::consume::{Outcome, PullBackoff, settle};
use airlock_runtime::health::{self, Readiness};
use airlock_runtime::nats::{self, ConsumerSpec, StreamOptions, stream_name};
use airlock_runtime::publish::Publisher;
use airlock_schemas::subjects::STREAM_RUNS;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::Config;
pub use error::Error;

use handler::Ctx;
use slots::Slots;

/// Durable consumer name of a queue, shared by every replica.
pub fn durable_name(queue: &str) -> String {
    format!("airlock-dispatcher-{queue}")
}

/// Runs the dispatcher until `shutdown`, with the backend `config.backend` describes.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    config.validate()?;
    let subjects = config.common.subjects();
    let client = nats::connect(&config.common.nats_url, "airlock-dispatcher").await?;
    let policy = config.policy()?;
    let backend = Backend::from_args(&config.backend, &client, &subjects)
        .await?
        .with_egress_catalog(policy.egress.clone());
    run_with(config, client, backend, shutdown).await
}

/// Runs the dispatcher until `shutdown` with an already built `backend` and NATS `client`.
pub async fn run_with(
    config: Config,
    client: async_nats::Client,
    backend: Backend,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    config.validate()?;
    let secret = config.common.token_secret()?;
    let policy = config.policy()?;
    let subjects = config.common.subjects();
    let js = jetstream::new(client.clone());
    nats::ensure_streams(
        &js,
        &subjects,
        &StreamOptions {
            replicas: config.common.stream_replicas,
            ..Default::default()
        },
    )
    .await?;
    let store = config.common.connect_store().await?;
    let slots = Slots::new(
        store.connection(),
        &config.common.subject_prefix,
        config.queues.clone(),
        config.max_running,
    );
    let readiness = Readiness::default();
    if let Some(addr) = config.common.http_addr {
        let bound = health::serve(addr, readiness.clone(), shutdown.clone())
            .await
            .map_err(|e| Error::Config(format!("serving health on {addr}: {e}")))?;
        info!(addr = %bound, "Health endpoints up");
    }

    let mut consumers = Vec::new();
    for q in &config.queues {
        let spec = ConsumerSpec {
            stream: stream_name(&subjects, STREAM_RUNS),
            durable: durable_name(&q.name),
            filter: subjects.runs(&q.name),
            // Across replicas; the slot gate below is the real bound.
            max_ack_pending: i64::from(q.cap.min(config.max_running)).max(1)
                + config.concurrency as i64,
            ack_wait: config.ack_wait,
            max_deliver: config.max_deliver,
        };
        consumers.push((
            q.name.clone(),
            ensure_queue_consumer(&js, &spec, &shutdown).await?,
        ));
    }

    let ctx = Arc::new(Ctx {
        publisher: Publisher::new(js, subjects.clone()),
        config,
        policy,
        secret,
        subjects,
        store,
        backend,
        slots,
        unknown_queue_stats: Default::default(),
    });
    let mut tasks = JoinSet::new();
    tasks.spawn(watcher::watch(ctx.clone(), shutdown.clone()));
    tasks.spawn(watcher::reconcile(ctx.clone(), shutdown.clone()));
    tasks.spawn(unknown::scan_loop(ctx.clone(), shutdown.clone()));
    for (queue, consumer) in consumers {
        tasks.spawn(queue_loop(ctx.clone(), queue, consumer, shutdown.clone()));
    }
    readiness.set(true);
    info!(queues = ?ctx.config.queues.iter().map(|q| format!("{}={}", q.name, q.cap)).collect::<Vec<_>>(),
        max_running = ctx.config.max_running, "Dispatcher consuming");
    while tasks.join_next().await.is_some() {}
    readiness.set(false);
    // Acks are buffered writes: flush them so finished work is not redelivered to another replica.
    if let Err(e) = client.flush().await {
        warn!(error = %e, "Flushing the last acks failed; those requests will be redelivered");
    }
    info!("Dispatcher stopped");
    Ok(())
}

/// Creates (or finds) a queue's durable consumer. While another replica is draining that subject as an
/// unknown queue (its short-lived consumer overlaps ours, which a work-queue stream refuses), waits for it to
/// finish or expire instead of failing.
async fn ensure_queue_consumer(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    shutdown: &CancellationToken,
) -> Result<PullConsumer, Error> {
    let give_up = tokio::time::Instant::now() + unknown::DRAIN_INACTIVE * 2;
    loop {
        match nats::ensure_consumer(js, spec).await {
            Ok(c) => return Ok(c),
            Err(e)
                if unknown::is_overlap_text(&e.to_string())
                    && tokio::time::Instant::now() < give_up =>
            {
                info!(durable = %spec.durable, filter = %spec.filter,
                    "Another consumer holds the queue's subject (a drain of it as an unknown queue); waiting");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(e.into()),
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Pulls one queue: only as many messages as there are free slots and local handler permits (see [`slots`]).
async fn queue_loop(
    ctx: Arc<Ctx>,
    queue: String,
    consumer: PullConsumer,
    shutdown: CancellationToken,
) {
    let concurrency = ctx.config.concurrency.max(1);
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut handlers = JoinSet::new();
    let mut backoff = PullBackoff::default();
    while !shutdown.is_cancelled() {
        while handlers.try_join_next().is_some() {}
        let notified = ctx.slots.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let free = match ctx.slots.free(&queue).await {
            Ok(f) => f,
            Err(e) => {
                warn!(queue = %queue, error = %e, "Reading the queue's slots failed; will retry");
                if !backoff.wait(&shutdown).await {
                    break;
                }
                continue;
            }
        };
        let n = free.min(permits.available_permits() as i64);
        if n <= 0 {
            // At the cap (or every handler busy): do not pull; wait for a release here, or re-check Redis
            // for releases by other replicas.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = &mut notified => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let mut reservation = ctx.slots.reserve(&queue, n);
        let batch = consumer
            .batch()
            .max_messages(n as usize)
            .expires(Duration::from_secs(5))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                warn!(queue = %queue, error = %e, "Pulling failed; will retry");
                if !backoff.wait(&shutdown).await {
                    break;
                }
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                n = batch.next() => n,
            };
            match next {
                Some(Ok(msg)) => {
                    backoff.reset();
                    let (Some(share), Ok(permit)) =
                        (reservation.take_one(), permits.clone().try_acquire_owned())
                    else {
                        // Cannot happen (we asked for at most what we hold); hand it back at once.
                        let _ = msg.ack_with(AckKind::Nak(None)).await;
                        continue;
                    };
                    let ctx = ctx.clone();
                    handlers.spawn(async move {
                        let outcome =
                            with_progress(&ctx, &msg, handler::handle(ctx.clone(), &msg, share))
                                .await;
                        settle(&msg, &outcome).await;
                        drop(permit);
                        ctx.slots.wake.notify_waiters();
                    });
                }
                Some(Err(e)) => {
                    warn!(queue = %queue, error = %e, "Pull batch failed; pulling again");
                    break;
                }
                None => break,
            }
        }
        drop(reservation);
    }
    // Shutdown: no more pulls; in-flight handlers get the grace period, the rest is redelivered.
    let drain = async { while handlers.join_next().await.is_some() {} };
    if tokio::time::timeout(ctx.config.common.shutdown_grace, drain)
        .await
        .is_err()
    {
        warn!(queue = %queue, "In-flight requests did not finish within the grace period; they will be redelivered");
        handlers.abort_all();
    }
}

/// Runs `fut`, telling JetStream the message is still being worked on every third of `ack_wait`.
async fn with_progress(
    ctx: &Ctx,
    msg: &jetstream::Message,
    fut: impl std::future::Future<Output = Outcome>,
) -> Outcome {
    let every = (ctx.config.ack_wait / 3).max(Duration::from_millis(100));
    tokio::pin!(fut);
    loop {
        tokio::select! {
            o = &mut fut => return o,
            _ = tokio::time::sleep(every) => {
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    warn!(subject = %msg.subject, error = %e, "Progress ack failed");
                }
            }
        }
    }
}
