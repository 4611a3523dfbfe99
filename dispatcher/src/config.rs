//! The dispatcher's configuration, from flags or environment variables.

use std::path::PathBuf;
use std::time::Duration;

use airlock_backend::BackendArgs;
use airlock_runtime::config::{
    CommonArgs, ConsumerArgs, ConsumerDefaults, ConsumerEnv, ConsumerService,
};
use airlock_schemas::Policy;
use clap::Parser;

use crate::Error;
use crate::error::config as config_error;

pub use airlock_runtime::config::QueueCap;
use airlock_runtime::config::parse_queue;

/// The dispatcher's consumer settings: names `AIRLOCK_DISPATCHER_*` and defaults.
#[derive(Debug, Clone)]
pub struct DispatcherConsumer;

impl ConsumerService for DispatcherConsumer {
    const ENV: ConsumerEnv = ConsumerEnv {
        concurrency: "AIRLOCK_DISPATCHER_CONCURRENCY",
        max_ack_pending: "AIRLOCK_DISPATCHER_MAX_ACK_PENDING",
        ack_wait: "AIRLOCK_DISPATCHER_ACK_WAIT",
        max_deliver: "AIRLOCK_DISPATCHER_MAX_DELIVER",
        redelivery_cap: "AIRLOCK_DISPATCHER_REDELIVERY_CAP",
    };
    // Concurrency is per queue; `max_ack_pending` is per queue too, and further bounded by the queue's cap
    // plus the concurrency (the slot gate is the real bound).
    const DEFAULTS: ConsumerDefaults = ConsumerDefaults {
        concurrency: 16,
        max_ack_pending: 1000,
        ack_wait: "60s",
        max_deliver: 5,
        redelivery_cap: "60s",
    };
}

/// Configuration of `airlock-dispatcher`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "airlock-dispatcher",
    version,
    about = "Turns Airlock run requests into isolated pods (or local sandboxes), exactly once."
)]
pub struct Config {
    /// Settings shared by every service.
    #[command(flatten)]
    pub common: CommonArgs,

    /// Where runs execute.
    #[command(flatten)]
    pub backend: BackendArgs,

    /// Queues to consume, with the most runs each may have at once: `name=cap`, comma-separated. Requests on
    /// any other `airlock.runs.*` subject are recorded `rejected` (unknown queue), unless another dispatcher
    /// consumes that queue.
    #[arg(long = "queues", env = "AIRLOCK_QUEUES", value_delimiter = ',', value_parser = parse_queue, default_value = "default=100")]
    pub queues: Vec<QueueCap>,

    /// Most runs at once across all queues.
    #[arg(long, env = "AIRLOCK_MAX_RUNNING", default_value_t = 1000)]
    pub max_running: u32,

    /// Operator policy (JSON, the `Policy` schema); built-in defaults when absent.
    #[arg(long, env = "AIRLOCK_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,

    /// NATS URL as jobs see it (given to pods as `AIRLOCK_NATS_URL`); the service's own URL when absent.
    #[arg(long, env = "AIRLOCK_JOB_NATS_URL")]
    pub job_nats_url: Option<String>,

    /// How each queue's durable consumer is read (per queue: concurrency and `max_ack_pending`); the last
    /// failing delivery of a request records the run `failed`.
    #[command(flatten)]
    pub consumer: ConsumerArgs<DispatcherConsumer>,

    /// In-handler retries of a transient backend failure before the request is handed back to JetStream.
    #[arg(long, env = "AIRLOCK_RETRY_TIMES", default_value_t = 4)]
    pub retry_times: usize,

    /// First in-handler retry delay (doubles, with jitter).
    #[arg(long, env = "AIRLOCK_RETRY_MIN_DELAY", value_parser = humantime::parse_duration, default_value = "100ms")]
    pub retry_min_delay: Duration,

    /// Longest in-handler retry delay.
    #[arg(long, env = "AIRLOCK_RETRY_MAX_DELAY", value_parser = humantime::parse_duration, default_value = "2s")]
    pub retry_max_delay: Duration,

    /// Added to the run's deadline before the janitor's deadline timer fires.
    #[arg(long, env = "AIRLOCK_DEADLINE_GRACE", value_parser = humantime::parse_duration, default_value = "10s")]
    pub deadline_grace: Duration,

    /// A slot held this long by a run with nothing live in the backend is reclaimed (a crashed handler's).
    #[arg(long, env = "AIRLOCK_SLOT_LEASE", value_parser = humantime::parse_duration, default_value = "10m")]
    pub slot_lease: Duration,

    /// How often slots are reconciled with what the backend holds.
    #[arg(long, env = "AIRLOCK_RECONCILE_EVERY", value_parser = humantime::parse_duration, default_value = "30s")]
    pub reconcile_every: Duration,

    /// Kubernetes mode: name of the `coordination.k8s.io/v1` Lease (in the sandbox namespace) electing the
    /// one replica whose watcher follows the pods; the others stand by and take over when its holder stops
    /// renewing it. Empty: every replica watches every pod (each pod event is then handled once per replica).
    #[arg(
        long,
        env = "AIRLOCK_WATCH_LEASE",
        default_value = "airlock-dispatcher-watch"
    )]
    pub watch_lease: String,

    /// How long the watch Lease stays taken without a renewal (whole seconds, at least 1s; renewed every
    /// third of it): a dead holder's watcher is replaced after at most this long.
    #[arg(long, env = "AIRLOCK_WATCH_LEASE_DURATION", value_parser = humantime::parse_duration, default_value = "15s")]
    pub watch_lease_duration: Duration,

    /// How often the runs stream is scanned for requests on queues not configured here (they are rejected).
    #[arg(long, env = "AIRLOCK_UNKNOWN_QUEUE_SCAN_EVERY", value_parser = humantime::parse_duration, default_value = "5s")]
    pub unknown_queue_scan_every: Duration,
}

impl Config {
    /// The operator policy: the file's, or the defaults.
    pub fn policy(&self) -> Result<Policy, Error> {
        Ok(airlock_runtime::config::load_policy(
            self.policy_file.as_deref(),
        )?)
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), Error> {
        if self.queues.is_empty() {
            return Err(config_error("at least one queue is required"));
        }
        let mut names: Vec<&str> = self.queues.iter().map(|q| q.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(config_error("a queue is listed twice"));
        }
        self.consumer.validate()?;
        if self.max_running == 0 {
            return Err(config_error("--max-running must be at least 1"));
        }
        if self.watch_lease_duration < Duration::from_secs(1) {
            return Err(config_error("--watch-lease-duration must be at least 1s"));
        }
        Ok(())
    }

    /// The NATS URL given to jobs.
    ///
    /// Without `--job-nats-url` jobs get the services' URL *without its credentials*: the services' NATS
    /// identity must never reach untrusted code (deployments give jobs their own publish-only identity).
    pub fn job_nats_url(&self) -> String {
        self.job_nats_url
            .clone()
            .unwrap_or_else(|| airlock_runtime::nats::redact(&self.common.endpoints.nats_url))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_parse_with_and_without_caps() {
        assert_eq!(
            parse_queue("gpu=4"),
            Ok(QueueCap {
                name: "gpu".into(),
                cap: 4
            })
        );
        assert_eq!(parse_queue("default").map(|q| q.cap), Ok(100));
        assert!(parse_queue("Bad=1").is_err());
        assert!(parse_queue("a=0").is_err());
        assert!(parse_queue("a=x").is_err());
    }

    #[test]
    fn the_dispatcher_runs_with_environment_configuration_only() {
        let c =
            Config::try_parse_from(["airlock-dispatcher", "--queues", "a=1,b=2"]).expect("parses");
        assert_eq!(c.queues.len(), 2);
        assert_eq!(c.backend.kube.namespace, "airlock-sandbox");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn the_runtime_is_kubernetes_by_default_with_kube_as_an_alias_and_local() {
        use airlock_backend::RuntimeKind;
        let parse = |extra: &[&str]| {
            let mut args = vec!["airlock-dispatcher"];
            args.extend_from_slice(extra);
            Config::try_parse_from(args).map(|c| c.backend.runtime)
        };
        assert_eq!(parse(&[]).ok(), Some(RuntimeKind::Kube));
        assert_eq!(
            parse(&["--runtime", "kubernetes"]).ok(),
            Some(RuntimeKind::Kube)
        );
        assert_eq!(parse(&["--runtime", "kube"]).ok(), Some(RuntimeKind::Kube));
        assert_eq!(
            parse(&["--runtime", "local"]).ok(),
            Some(RuntimeKind::Local)
        );
        assert!(parse(&["--runtime", "docker"]).is_err());
        let help = <Config as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        assert!(help.contains("[default: kubernetes]"), "{help}");
        assert!(help.contains("kubernetes:"), "{help}");
    }
}
