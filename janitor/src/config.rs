//! The janitor's configuration, from flags or environment variables.

use std::time::Duration;

use airlock_backend::BackendArgs;
use airlock_runtime::config::{
    CommonArgs, ConsumerArgs, ConsumerDefaults, ConsumerEnv, ConsumerService,
};
use clap::Parser;

/// The janitor's consumer settings: names `AIRLOCK_JANITOR_*` and defaults.
#[derive(Debug, Clone)]
pub struct JanitorConsumer;

impl ConsumerService for JanitorConsumer {
    const ENV: ConsumerEnv = ConsumerEnv {
        concurrency: "AIRLOCK_JANITOR_CONCURRENCY",
        max_ack_pending: "AIRLOCK_JANITOR_MAX_ACK_PENDING",
        ack_wait: "AIRLOCK_JANITOR_ACK_WAIT",
        max_deliver: "AIRLOCK_JANITOR_MAX_DELIVER",
        redelivery_cap: "AIRLOCK_JANITOR_REDELIVERY_CAP",
    };
    // Past `max_deliver` deliveries of one timer the sweep finds the run again.
    const DEFAULTS: ConsumerDefaults = ConsumerDefaults {
        concurrency: 16,
        max_ack_pending: 1000,
        ack_wait: "30s",
        max_deliver: 50,
        redelivery_cap: "30s",
    };
}

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

    /// How timer events are consumed (the concurrency also bounds cancel requests answered at once).
    #[command(flatten)]
    pub consumer: ConsumerArgs<JanitorConsumer>,

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
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), airlock_runtime::Error> {
        self.consumer.validate()?;
        let fail = |what: &str| Err(airlock_runtime::Error::Config(what.to_string()));
        if self.sweep_interval < Duration::from_secs(1) {
            return fail("--sweep-interval must be at least 1s");
        }
        if self.logs_max_bytes == 0 {
            return fail("--logs-max-bytes must be at least 1");
        }
        Ok(())
    }

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
            consumer: ConsumerArgs::default(),
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
