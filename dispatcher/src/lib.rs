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
//! - [`context`]: [`context::Ctx`], what every part shares.
//! - [`handler`]: one request, from validation to acknowledgement.
//! - [`reject`]: recording an invalid request `rejected` (used by the handler and the unknown-queue scan).
//! - [`pull`]: the per-queue pull loop, which pulls only what fits under the caps.
//! - [`slots`]: running caps per queue and globally, shared by replicas through Redis, and why a full queue
//!   is not pulled.
//! - [`watcher`]: backend changes → `running`, `finished` timers, slots back; slot reconciliation.
//! - `leader`: in Kubernetes mode, the watch Lease that lets one replica at a time run the watcher.
//! - [`unknown`]: requests on queues not configured here → `rejected`, through short-lived consumers.
//! - `gauges`: slots in use and consumer state, read when `/metrics` is scraped.
//! - [`error`]: the crate's [`Error`].

pub mod config;
pub mod context;
pub mod error;
mod gauges;
pub mod handler;
mod leader;
pub mod pull;
pub mod reject;
pub mod slots;
pub mod unknown;
pub mod watcher;

use std::sync::Arc;
use std::time::Duration;

use airlock_backend::Backend;
use airlock_runtime::metrics::{Metrics, Service};
use airlock_runtime::nats::{self, ConsumerSpec, stream_name};
use airlock_runtime::service;
use airlock_schemas::subjects::STREAM_RUNS;
use async_nats::jetstream::{self, ErrorCode, consumer::PullConsumer};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::Config;
pub use error::Error;

use context::Ctx;
use slots::Slots;

/// Durable consumer name of a queue, shared by every replica.
pub fn durable_name(queue: &str) -> String {
    format!("airlock-dispatcher-{queue}")
}

/// Runs the dispatcher until `shutdown`, with the backend `config.backend` describes.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    config.validate()?;
    let subjects = config.common.subjects();
    let client = nats::connect(&config.common.endpoints.nats_url, "airlock-dispatcher").await?;
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
    let metrics = Metrics::new(Service::Dispatcher);
    let backend = backend.with_metrics(&metrics);
    let started = service::start_with_client(&config.common, client, &metrics, &shutdown).await?;
    let slots = Slots::new(
        started.store.clone(),
        config.queues.clone(),
        config.max_running,
    );

    let mut consumers = Vec::new();
    for q in &config.queues {
        // Per queue; across replicas the slot gate is the real bound.
        let max_ack_pending = (i64::from(q.cap.min(config.max_running)).max(1)
            + config.consumer.concurrency as i64)
            .min(config.consumer.max_ack_pending);
        let spec = ConsumerSpec {
            max_ack_pending,
            ..config.consumer.spec(
                stream_name(&subjects, STREAM_RUNS),
                durable_name(&q.name),
                subjects.runs(&q.name),
            )
        };
        let consumer = ensure_queue_consumer(&started.js, &spec, &shutdown).await?;
        consumers.push((q.name.clone(), consumer));
    }

    gauges::register(&metrics, &started.store, &consumers);
    let ctx = Arc::new(Ctx {
        publisher: started.publisher,
        config,
        policy,
        secret,
        subjects,
        store: started.store,
        backend,
        slots,
        metrics,
    });
    let mut tasks = JoinSet::new();
    tasks.spawn(watcher::watch(ctx.clone(), shutdown.clone()));
    tasks.spawn(watcher::reconcile(ctx.clone(), shutdown.clone()));
    tasks.spawn(unknown::scan_loop(ctx.clone(), shutdown.clone()));
    for (queue, consumer) in consumers {
        tasks.spawn(pull::queue_loop(
            ctx.clone(),
            queue,
            consumer,
            shutdown.clone(),
        ));
    }
    started.readiness.set(true);
    info!(queues = ?ctx.config.queues.iter().map(|q| format!("{}={}", q.name, q.cap)).collect::<Vec<_>>(),
        max_running = ctx.config.max_running, "Dispatcher consuming");
    while tasks.join_next().await.is_some() {}
    started.readiness.set(false);
    // Acks are buffered writes: flush them so finished work is not redelivered to another replica.
    if let Err(e) = started.client.flush().await {
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
                if e.jetstream_code() == Some(ErrorCode::CONSUMER_WQ_CONSUMER_NOT_UNIQUE)
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
