//! The API service's command line and environment.

use std::path::PathBuf;
use std::time::Duration;

use airlock_backend::BackendArgs;
use airlock_runtime::config::{CommonArgs, QueueCap, parse_queue};
use airlock_schemas::Policy;

use crate::Error;

/// `airlock-api` settings, from flags or `AIRLOCK_*` environment variables.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "airlock-api",
    version,
    about = "Airlock's request-reply API service"
)]
pub struct Config {
    /// Settings shared by every service.
    #[command(flatten)]
    pub common: CommonArgs,

    /// Where runs execute (the API reads their logs there).
    #[command(flatten)]
    pub backend: BackendArgs,

    /// Operator policy (JSON, the `Policy` schema) `submit` validates against; must be the dispatcher's.
    #[arg(long, env = "AIRLOCK_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,

    /// Queues `submit` accepts, `name` or `name=cap` (the dispatcher's `AIRLOCK_QUEUES`, parsed alike; caps
    /// are not used here), comma-separated; any valid queue name when empty.
    #[arg(long = "queues", env = "AIRLOCK_QUEUES", value_delimiter = ',', value_parser = parse_queue)]
    pub queues: Vec<QueueCap>,

    /// Requests other than `logs` handled at once per replica.
    #[arg(long, env = "AIRLOCK_API_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,

    /// `logs` requests handled at once per replica, follows included (each holds one while it streams).
    #[arg(long, env = "AIRLOCK_API_MAX_LOGS", default_value_t = 256)]
    pub max_logs: usize,

    /// Most bytes of log a `logs` reply without `follow` carries (the tail).
    #[arg(long, env = "AIRLOCK_API_LOG_TAIL_BYTES", default_value_t = 64 * 1024)]
    pub log_tail_bytes: usize,

    /// How often a follow checks that its follower is still there.
    #[arg(long, env = "AIRLOCK_API_FOLLOW_PROBE", value_parser = humantime::parse_duration, default_value = "5s")]
    pub follow_probe: Duration,
}

impl Config {
    /// The operator policy: the file's, or the defaults.
    pub fn policy(&self) -> Result<Policy, Error> {
        Ok(airlock_runtime::config::load_policy(
            self.policy_file.as_deref(),
        )?)
    }

    /// The queue names `submit` accepts (empty: any).
    pub fn queue_names(&self) -> Vec<String> {
        self.queues.iter().map(|q| q.name.clone()).collect()
    }
}
