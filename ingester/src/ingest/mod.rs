//! The ingest loop: pull results as they arrive and hand each group that arrived together to [`batch`].
//!
//! # Layout
//! - this module: start-up and the pull loop.
//! - `batch`: one batch, from verification to settling.

mod batch;

use std::sync::Arc;

use airlock_runtime::metrics::Metrics;

use airlock_runtime::config::ConsumerArgs;
use airlock_runtime::consume::{BatchOptions, run_batch_loop};
use airlock_runtime::nats::{self, stream_name};
use airlock_runtime::publish::Publisher;
use airlock_runtime::service;
use airlock_runtime::store::Store;
use airlock_schemas::Subjects;
use airlock_schemas::subjects::STREAM_RESULTS;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{Config, DURABLE, Error, IngesterConsumer, ResultSchemas};

/// Most payload bytes written in one pipeline (large results make smaller batches).
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Everything a batch needs, shared by the in-flight batches.
struct Ctx {
    subjects: Subjects,
    secret: Vec<u8>,
    max_bytes: usize,
    consumer: ConsumerArgs<IngesterConsumer>,
    store: Store,
    publisher: Publisher,
    schemas: ResultSchemas,
    metrics: Metrics,
}

/// Sets up streams, the durable consumer and Redis, then ingests until `shutdown`.
pub(crate) async fn run(
    config: Config,
    shutdown: CancellationToken,
    metrics: Metrics,
) -> Result<(), Error> {
    config.consumer.validate()?;
    if config.batch_size == 0 || config.max_result_bytes == 0 {
        return Err(airlock_runtime::Error::Config(
            "batch size and max result bytes must be at least 1".into(),
        )
        .into());
    }
    let secret = config.common.token_secret()?;
    let schemas = match &config.result_schemas {
        Some(path) => ResultSchemas::load(path)?,
        None => ResultSchemas::none(),
    };
    let subjects = config.common.subjects();
    let started = service::start(&config.common, DURABLE, &metrics, &shutdown).await?;
    let consumer = nats::ensure_consumer(
        &started.js,
        &config.consumer.spec(
            stream_name(&subjects, STREAM_RESULTS),
            DURABLE.into(),
            subjects.results_all(),
        ),
    )
    .await?;
    metrics.watch_consumer(&consumer);
    let ctx = Arc::new(Ctx {
        subjects,
        secret,
        max_bytes: config.max_result_bytes,
        consumer: config.consumer.clone(),
        store: started.store,
        publisher: started.publisher,
        schemas,
        metrics,
    });
    started.readiness.set(true);
    info!(
        batch_size = config.batch_size,
        concurrency = config.consumer.concurrency,
        "Ingesting results"
    );
    let batch = BatchOptions {
        concurrency: config.consumer.concurrency,
        pull: config.batch_size,
        max_batch: config.batch_size,
        grace: config.common.shutdown_grace,
    };
    let handler_ctx = ctx.clone();
    // Whatever arrived together is one batch; large payloads split it into several pipelines.
    run_batch_loop(consumer, batch, shutdown, move |msgs| {
        let ctx = handler_ctx.clone();
        async move {
            for msgs in batch::split_by_bytes(msgs, MAX_BATCH_BYTES) {
                batch::process_batch(&ctx, msgs).await;
            }
        }
    })
    .await?;
    started.readiness.set(false);
    info!("Ingester stopped");
    Ok(())
}
