//! Airlock's janitor: reaps every run that finished, got stuck or was cancelled, with its final status and
//! logs, and leaves nothing behind.
//!
//! The janitor is event-driven. It consumes `airlock.timers.>` through the durable consumer
//! `airlock-janitor` shared by all replicas:
//! - `deadline` (a message schedule the dispatcher sets at submit time): the run's time is up, Pending
//!   included. A pod still Pending ends `timed_out` with the reason it waited with.
//! - `finished` (published by the dispatcher's watcher): the pod reached Succeeded or Failed.
//! - `stuck` (a message schedule the dispatcher's watcher sets when a pod waits in `ErrImagePull`,
//!   `ImagePullBackOff`, `ErrImageNeverPull`, `InvalidImageName` or `CreateContainerConfigError`, due at the
//!   pod's start plus `AIRLOCK_IMAGE_PULL_GRACE`, or is `Unschedulable`, due at the scheduler's verdict plus
//!   `AIRLOCK_UNSCHEDULABLE_GRACE`; its `reason` names which): a pod still stuck for that cause ends
//!   `failed` with its reason and message.
//! - `cancel`: published by the janitor itself for a request on `airlock.cancel.<run_id>`.
//! - `sweep`: a recurring `@every` schedule set up at start; finds orphans and lost timers.
//!
//! Reaping a run reads the pod's final state, saves a bounded tail of its logs, records the terminal status
//! (`succeeded`, `failed`, `timed_out`, `cancelled`) with `reason`, `exit_code` and `finished_at`, deletes the
//! Pod and NetworkPolicy, publishes the lifecycle event and sets `reaped_at`. Everything is idempotent: a
//! redelivered or duplicated timer, or two replicas, reap a run once; a late timer is a no-op. A run whose
//! pod was evicted or lost is dispatched again up to `max_attempts`.
//!
//! # Layout
//! - [`config`]: the command line and environment ([`Config`]).
//! - [`error`]: the error type ([`Error`]).
//! - `decide`: what a timer means for a run (pure).
//! - `reaper`: handling a timer event, ending and reaping a run, re-dispatching a lost one.
//! - `sweep`: orphans and lost timers.
//! - `cancel`: cancel requests into cancel timers.
//! - `claim`: a per-run Redis claim so one replica at a time reaps a run.

mod cancel;
mod claim;
pub mod config;
mod decide;
pub mod error;
mod reaper;
mod sweep;

use std::sync::Arc;
use std::time::Duration;

use airlock_backend::Backend;
use airlock_runtime::consume::{LoopOptions, run_loop};
use airlock_runtime::metrics::Service;
use airlock_runtime::nats::{self, ensure_consumer};
use airlock_runtime::service;
use airlock_schemas::subjects::STREAM_TIMERS;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use airlock_runtime::metrics::Metrics;
pub use config::Config;
pub use error::Error;

/// Name of the durable consumer on the timers stream, and of the cancel queue group.
pub const DURABLE: &str = "airlock-janitor";

/// Runs the janitor until `shutdown`, then lets in-flight work finish within the shutdown grace.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    run_with_metrics(config, Metrics::new(Service::Janitor), shutdown).await
}

/// [`run`], counting into `metrics` (tests and an in-process caller read them).
// Long on purpose: start-up in its one order (config, service, backend, schedule, consumer, cancel
// subscription, ready), then the loop and the shutdown sequence.
pub async fn run_with_metrics(
    config: Config,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    config.validate()?;
    let subjects = config.common.subjects();
    let started = service::start(&config.common, DURABLE, &metrics, &shutdown).await?;
    let client = started.client.clone();
    let backend = Backend::from_args(&config.backend, &client, &subjects)
        .await?
        .with_metrics(&metrics);
    started
        .publisher
        .schedule_sweep(config.sweep_interval)
        .await?;

    let claims = claim::Claims::new(
        started.store.connection(),
        started.store.prefix(),
        config.consumer.ack_wait.max(Duration::from_secs(30)),
    );
    let janitor = Arc::new(reaper::Janitor {
        settings: reaper::Settings::from(&config),
        store: started.store,
        backend,
        publisher: started.publisher,
        subjects: subjects.clone(),
        claims,
        metrics: metrics.clone(),
        client: client.clone(),
    });

    let consumer = ensure_consumer(
        &started.js,
        &config.consumer.spec(
            nats::stream_name(&subjects, STREAM_TIMERS),
            DURABLE.into(),
            subjects.timers_all(),
        ),
    )
    .await?;
    metrics.watch_consumer(&consumer);
    let cancels = client
        .queue_subscribe(subjects.cancel_all(), DURABLE.into())
        .await
        .map_err(airlock_runtime::Error::from)?;
    // Make sure the server has the subscription before we say we are ready.
    client.flush().await.map_err(airlock_runtime::Error::from)?;

    let grace = config.common.shutdown_grace;
    let cancel_server = tokio::spawn(cancel::serve(
        janitor.clone(),
        cancels,
        config.consumer.concurrency,
        grace,
        shutdown.clone(),
    ));
    started.readiness.set(true);
    info!(
        backend = ?janitor.backend.kind(),
        sweep_interval = ?config.sweep_interval,
        max_attempts = config.max_attempts,
        "Janitor consuming timer events"
    );

    let handler_janitor = janitor.clone();
    let result = run_loop(
        consumer,
        LoopOptions {
            concurrency: config.consumer.concurrency,
            grace,
        },
        shutdown.clone(),
        move |msg| {
            let janitor = handler_janitor.clone();
            async move { janitor.handle(&msg).await }
        },
    )
    .await;
    started.readiness.set(false);
    shutdown.cancel();
    let _ = cancel_server.await;
    info!("Janitor stopped");
    result.map_err(Error::from)
}
