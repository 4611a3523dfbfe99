//! Airlock's janitor: reaps every run that finished, got stuck or was cancelled, with its final status and
//! logs, and leaves nothing behind.
//!
//! The janitor is event-driven. It consumes `airlock.timers.>` through the durable consumer
//! `airlock-janitor` shared by all replicas:
//! - `deadline` (a message schedule the dispatcher sets at submit time): the run's time is up, Pending
//!   included. A pod stuck Pending (unschedulable, image pull back-off) ends `timed_out` with the reason.
//! - `finished` (published by the dispatcher's watcher): the pod reached Succeeded or Failed.
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
//! - [`metrics`]: counters of what was done and a gauge of runs not reaped.
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
pub mod metrics;
mod reaper;
mod sweep;

use std::sync::Arc;
use std::time::Duration;

use airlock_backend::Backend;
use airlock_runtime::consume::{LoopOptions, run_loop};
use airlock_runtime::health::{self, Readiness};
use airlock_runtime::nats::{self, ConsumerSpec, StreamOptions, ensure_consumer, ensure_streams};
use airlock_runtime::publish::Publisher;
use airlock_schemas::subjects::STREAM_TIMERS;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::Config;
pub use error::Error;
pub use metrics::Metrics;
pub use reaper::ATTEMPT_HEADER;

/// Name of the durable consumer on the timers stream, and of the cancel queue group.
pub const DURABLE: &str = "airlock-janitor";

/// Most deliveries of one timer event; past that the sweep finds the run again.
const MAX_DELIVER: i64 = 50;

/// Runs the janitor until `shutdown`, then lets in-flight work finish within the shutdown grace.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    run_with_metrics(config, Arc::new(Metrics::default()), shutdown).await
}

/// [`run`], counting into `metrics` (tests and an in-process caller read them).
pub async fn run_with_metrics(
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    validate(&config)?;
    let subjects = config.common.subjects();
    let readiness = Readiness::default();
    if let Some(addr) = config.common.http_addr {
        let bound = health::serve(addr, readiness.clone(), shutdown.clone())
            .await
            .map_err(|e| Error::Config(format!("serving health on {addr}: {e}")))?;
        info!(addr = %bound, "Health endpoints listening");
    }

    let client = nats::connect(&config.common.nats_url, DURABLE).await?;
    let js = async_nats::jetstream::new(client.clone());
    let stream_opts = StreamOptions {
        replicas: config.common.stream_replicas,
        ..StreamOptions::default()
    };
    ensure_streams(&js, &subjects, &stream_opts).await?;
    let store = config.common.connect_store().await?;
    let backend = Backend::from_args(&config.backend, &client, &subjects).await?;
    let publisher = Publisher::new(js.clone(), subjects.clone());
    publisher.schedule_sweep(config.sweep_interval).await?;

    let claims = claim::Claims::new(
        store.connection(),
        &config.common.subject_prefix,
        config.ack_wait.max(Duration::from_secs(30)),
    );
    let janitor = Arc::new(reaper::Janitor {
        settings: reaper::Settings::from(&config),
        store,
        backend,
        publisher,
        subjects: subjects.clone(),
        claims,
        metrics,
        client: client.clone(),
    });

    let consumer = ensure_consumer(
        &js,
        &ConsumerSpec {
            stream: nats::stream_name(&subjects, STREAM_TIMERS),
            durable: DURABLE.into(),
            filter: subjects.timers_all(),
            max_ack_pending: config.max_ack_pending,
            ack_wait: config.ack_wait,
            max_deliver: MAX_DELIVER,
        },
    )
    .await?;
    let cancels = client
        .queue_subscribe(subjects.cancel_all(), DURABLE.into())
        .await
        .map_err(Error::nats)?;
    // Make sure the server has the subscription before we say we are ready.
    client.flush().await.map_err(Error::nats)?;

    let grace = config.common.shutdown_grace;
    let cancel_server = tokio::spawn(cancel::serve(
        janitor.clone(),
        cancels,
        config.concurrency,
        grace,
        shutdown.clone(),
    ));
    readiness.set(true);
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
            concurrency: config.concurrency,
            grace,
        },
        shutdown.clone(),
        move |msg| {
            let janitor = handler_janitor.clone();
            async move { janitor.handle(&msg).await }
        },
    )
    .await;
    readiness.set(false);
    shutdown.cancel();
    let _ = cancel_server.await;
    info!("Janitor stopped");
    result.map_err(Error::from)
}

fn validate(config: &Config) -> Result<(), Error> {
    if config.concurrency == 0 {
        return Err(Error::Config("--concurrency must be at least 1".into()));
    }
    if config.sweep_interval < Duration::from_secs(1) {
        return Err(Error::Config("--sweep-interval must be at least 1s".into()));
    }
    if config.logs_max_bytes == 0 {
        return Err(Error::Config("--logs-max-bytes must be at least 1".into()));
    }
    if config.max_ack_pending < 1 {
        return Err(Error::Config("--max-ack-pending must be at least 1".into()));
    }
    Ok(())
}
