//! Airlock ingester: the only path from a job's result to the database.
//!
//! Jobs publish a JSON object to `airlock.results.<run_id>` with their run token in the `Airlock-Run-Token`
//! header. The ingester consumes `airlock.results.>` through one durable consumer shared by all replicas,
//! verifies each message (constant-time token check, size, UTF-8, JSON object, run known and not reaped,
//! optional operator JSON Schema) and stores genuine results in `airlock:run:<id>` (`result`, `result_at`);
//! the first genuine result wins. A rejected submission is counted, recorded on the run (`result_rejections`,
//! bounded), published as a [`airlock_schemas::ResultRejected`] event and acked: it is handled, never
//! retried and never stored.
//!
//! Messages are taken as they arrive, up to a batch: the stores of one batch go to Redis in one pipelined
//! round trip, so a busy ingester approaches Redis's throughput while an idle one writes each result at
//! once. A message is acked only after Redis confirmed its write; on a Redis error the affected messages are
//! nak'd with a capped backoff and land when Redis is back.
//!
//! # Layout
//! - [`Config`]: flags and environment ([`airlock_runtime::config::CommonArgs`] plus the ingester's own).
//! - [`run`] / [`run_with_metrics`]: set up streams and the durable consumer, then ingest until shutdown.
//! - [`ingest`]: the batch loop and the per-batch verify → lookup → pipelined write → settle.
//! - [`verify`]: checks that need no database, and the [`Rejection`] reasons.
//! - [`schemas`]: operator JSON Schemas by queue or image.

use std::path::PathBuf;

use airlock_runtime::config::{
    CommonArgs, ConsumerArgs, ConsumerDefaults, ConsumerEnv, ConsumerService,
};
use airlock_runtime::metrics::Service;
use tokio_util::sync::CancellationToken;

pub mod ingest;
pub mod schemas;
pub mod verify;

pub use airlock_runtime::metrics::Metrics;
pub use schemas::ResultSchemas;
pub use verify::{RejectKind, Rejection};

/// Durable consumer name shared by every ingester replica.
pub const DURABLE: &str = "airlock-ingester";

/// Most rejection reasons kept on a run's record.
pub const MAX_REJECTIONS: usize = 20;

/// Most `ResultRejected` events published for one run: this many as they are, then one more carrying the
/// count; later rejections are only counted on the record (`result_rejections_total`).
pub const MAX_REJECTION_EVENTS: u64 = 10;

/// The ingester's consumer settings: names `AIRLOCK_INGESTER_*` and defaults.
#[derive(Debug, Clone)]
pub struct IngesterConsumer;

impl ConsumerService for IngesterConsumer {
    const ENV: ConsumerEnv = ConsumerEnv {
        concurrency: "AIRLOCK_INGESTER_CONCURRENCY",
        max_ack_pending: "AIRLOCK_INGESTER_MAX_ACK_PENDING",
        ack_wait: "AIRLOCK_INGESTER_ACK_WAIT",
        max_deliver: "AIRLOCK_INGESTER_MAX_DELIVER",
        redelivery_cap: "AIRLOCK_INGESTER_REDELIVERY_CAP",
    };
    // Concurrency counts batches in flight (with more than one, "the first result wins" means the first to
    // reach Redis among results arriving at the same moment). `max_deliver` -1: never give up on a result,
    // so a long Redis outage cannot lose it.
    const DEFAULTS: ConsumerDefaults = ConsumerDefaults {
        concurrency: 4,
        max_ack_pending: 20_000,
        ack_wait: "30s",
        max_deliver: -1,
        redelivery_cap: "10s",
    };
}

/// Ingester configuration, from flags or environment variables.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "airlock-ingester",
    version,
    about = "Airlock ingester: verifies and stores job results"
)]
pub struct Config {
    /// Settings shared by every service.
    #[command(flatten)]
    pub common: CommonArgs,

    /// Largest result body accepted, in bytes; larger ones are rejected.
    #[arg(long, env = "AIRLOCK_MAX_RESULT_BYTES", default_value_t = 1024 * 1024)]
    pub max_result_bytes: usize,

    /// Most messages verified and written to Redis in one pipelined round trip.
    #[arg(long, env = "AIRLOCK_INGESTER_BATCH_SIZE", default_value_t = 256)]
    pub batch_size: usize,

    /// How results are consumed (concurrency counts batches in flight; a result nak'd on a Redis error is
    /// delivered again after at most the redelivery cap).
    #[command(flatten)]
    pub consumer: ConsumerArgs<IngesterConsumer>,

    /// JSON file (or directory of `*.json` files) mapping `queue:<name>` / `image:<ref>` to the JSON Schema
    /// results of that queue or image must match.
    #[arg(long, env = "AIRLOCK_RESULT_SCHEMAS")]
    pub result_schemas: Option<PathBuf>,
}

impl Config {
    /// Defaults for tests and `airlock dev`, pointing at the given servers, with `token_secret`.
    pub fn for_servers(
        nats_url: impl Into<String>,
        redis_url: impl Into<String>,
        token_secret: impl Into<String>,
    ) -> Self {
        let mut common = CommonArgs::for_servers(nats_url, redis_url);
        common.token_secret = Some(token_secret.into());
        Self {
            common,
            max_result_bytes: 1024 * 1024,
            batch_size: 256,
            consumer: ConsumerArgs::default(),
            result_schemas: None,
        }
    }
}

/// Errors that stop the ingester (per-message problems are outcomes, not errors).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NATS, Redis or configuration trouble from the shared runtime.
    #[error(transparent)]
    Runtime(#[from] airlock_runtime::Error),
    /// The result schemas could not be loaded.
    #[error("result schemas at {path}: {message}")]
    Schemas {
        /// File or directory.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl Error {
    /// Whether retrying may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Runtime(e) => e.is_retryable(),
            Error::Schemas { .. } => false,
        }
    }
}

/// Runs the ingester until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    run_with_metrics(config, shutdown, Metrics::new(Service::Ingester)).await
}

/// Runs the ingester until `shutdown`, counting into `metrics` (for tests and an embedding process).
pub async fn run_with_metrics(
    config: Config,
    shutdown: CancellationToken,
    metrics: Metrics,
) -> Result<(), Error> {
    ingest::run(config, shutdown, metrics).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn the_command_line_is_consistent_and_has_the_documented_defaults() {
        Config::command().debug_assert();
        let c = Config::try_parse_from(["airlock-ingester"]).expect("parses");
        assert_eq!(c.max_result_bytes, 1024 * 1024);
        assert_eq!(c.consumer.ack_wait, Duration::from_secs(30));
        assert!(c.result_schemas.is_none());
    }
}
