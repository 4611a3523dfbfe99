//! Airlock's request-reply API: a NATS "micro" service named `airlock` whose endpoints
//! `airlock.api.{status,result,logs,list,cancel,submit}` answer from the run store (Redis), the streams and
//! the runtime's logs, so clients need nothing but NATS.
//!
//! Replicas are stateless and share the queue group `airlock-api`; `$SRV.PING`, `$SRV.INFO` and
//! `$SRV.STATS` discover them. The wire types are `airlock_schemas::api`. A `submit` is validated here with
//! the dispatcher's own `decode_request` and policy, then published to `airlock.runs.<queue>` exactly as a
//! direct publish would be; a `cancel` becomes the same cancel timer as `airlock.cancel.<id>`. `logs` with
//! `follow` relays the runtime's log (a followed pod log, or the local run's log file) only while a
//! follower is there.
//!
//! # Layout
//! - [`config`]: the command line and environment ([`Config`]).
//! - [`error`]: the error type ([`Error`]).
//! - `serve`: the micro service, one task per endpoint, bounded concurrency, replies and error headers.
//! - `ops`: one module per group of operations (`read`: status, result, list; `write`: cancel, submit;
//!   `logs`), and `view` (a record as the API shows it).

pub mod config;
pub mod error;
mod ops;
mod serve;

use std::sync::Arc;

use airlock_backend::Backend;
use airlock_runtime::metrics::{Metrics, Service as MetricsService};
use airlock_runtime::service;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::Config;
pub use error::Error;

/// Name of the NATS connection.
pub const NAME: &str = "airlock-api";

/// Runs the API until `shutdown`, then lets in-flight requests finish within the shutdown grace.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let policy = config.policy()?;
    let queues = config.queue_names();
    let subjects = config.common.subjects();
    let metrics = Metrics::new(MetricsService::Api);
    let started = service::start(&config.common, NAME, &metrics, &shutdown).await?;
    let backend = Backend::from_args(&config.backend, &started.client, &subjects)
        .await?
        .with_metrics(&metrics);
    let ctx = Arc::new(ops::Ctx {
        store: started.store,
        publisher: started.publisher,
        client: started.client.clone(),
        backend,
        policy,
        queues,
        log_tail_bytes: config.log_tail_bytes,
        follow_probe: config.follow_probe,
        shutdown: shutdown.clone(),
        follows: Default::default(),
    });
    let server = serve::Server::start(ctx, &subjects, config.concurrency, config.max_logs).await?;
    started.readiness.set(true);
    info!(backend = ?config.backend.runtime, "API serving");
    server.run(config.common.shutdown_grace, shutdown).await;
    started.readiness.set(false);
    info!("API stopped");
    Ok(())
}
