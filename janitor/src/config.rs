//! The janitor's configuration, from flags or environment variables.

use std::time::Duration;

use airlock_backend::BackendArgs;
use airlock_runtime::config::CommonArgs;
use clap::Parser;

/// Settings of `airlock-janitor`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "airlock-janitor",
    version,
    about = "Reaps Airlock runs on timer events: records their final status and logs, deletes their objects"
)]
pub struct Config {
    /// NATS, Redis, logging, shutdown and record TTL settings shared by every service.
    #[command(flatten)]
    pub common: CommonArgs,

    /// Where runs execute (must match the dispatcher's).
    #[command(flatten)]
    pub backend: BackendArgs,

    /// How often a sweep looks for orphaned objects and runs whose timer was lost (a recurring NATS
    /// message schedule; one janitor replica handles each tick).
    #[arg(long, env = "AIRLOCK_SWEEP_INTERVAL", value_parser = humantime::parse_duration, default_value = "60s")]
    pub sweep_interval: Duration,

    /// Largest tail of a run's logs saved into its record (`logs`), in bytes.
    #[arg(long, env = "AIRLOCK_LOGS_MAX_BYTES", default_value_t = 64 * 1024)]
    pub logs_max_bytes: usize,

    /// Most attempts of a run whose pod was evicted or lost with its node (not the job's fault); the job's
    /// own failure is never retried.
    #[arg(long, env = "AIRLOCK_MAX_ATTEMPTS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// Most timer events handled at once by this process.
    #[arg(long, env = "AIRLOCK_JANITOR_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,

    /// Most timer events delivered and not yet acknowledged, across all janitor replicas.
    #[arg(long, env = "AIRLOCK_JANITOR_MAX_ACK_PENDING", default_value_t = 1000)]
    pub max_ack_pending: i64,

    /// How long a delivered timer event may stay unacknowledged before it is redelivered to a replica.
    #[arg(long, env = "AIRLOCK_JANITOR_ACK_WAIT", value_parser = humantime::parse_duration, default_value = "30s")]
    pub ack_wait: Duration,

    /// How old (by its creation time) an object with no run record must be before a sweep removes it as an
    /// orphan (protects a run whose record is being written while its objects are created; should exceed any
    /// clock skew with the API server). Also how long after `reaped_at` objects may stay terminating before a
    /// sweep reports them.
    #[arg(long, env = "AIRLOCK_ORPHAN_GRACE", value_parser = humantime::parse_duration, default_value = "2m")]
    pub orphan_grace: Duration,

    /// How long after `submitted_at + deadline_seconds` a sweep considers a run's deadline timer lost and
    /// fires it itself (should exceed the grace the dispatcher adds to the deadline schedule).
    #[arg(long, env = "AIRLOCK_LOST_TIMER_GRACE", value_parser = humantime::parse_duration, default_value = "60s")]
    pub lost_timer_grace: Duration,
}

impl Config {
    /// Defaults for tests and `airlock dev`, pointing at the given servers, with `backend` as the runtime.
    pub fn for_servers(
        nats_url: impl Into<String>,
        redis_url: impl Into<String>,
        backend: BackendArgs,
    ) -> Self {
        Self {
            common: CommonArgs::for_servers(nats_url, redis_url),
            backend,
            sweep_interval: Duration::from_secs(60),
            logs_max_bytes: 64 * 1024,
            max_attempts: 2,
            concurrency: 16,
            max_ack_pending: 1000,
            ack_wait: Duration::from_secs(30),
            orphan_grace: Duration::from_secs(120),
            lost_timer_grace: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = Config::try_parse_from(["airlock-janitor"]).expect("defaults parse");
        assert_eq!(c.sweep_interval, Duration::from_secs(60));
        assert_eq!(c.logs_max_bytes, 64 * 1024);
        assert_eq!(c.max_attempts, 2);
        assert_eq!(c.common.record_ttl, Duration::from_secs(7 * 24 * 3600));
        assert!(Config::try_parse_from(["airlock-janitor", "--max-attempts", "0"]).is_err());
    }
}
