//! Configuration shared by every service, from flags or environment variables.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::nats::{StreamLimits, StreamOptions};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Where a running Airlock is: its NATS, its Redis and its prefix. Services and the CLI take the same.
#[derive(Debug, Clone, Args)]
pub struct Endpoints {
    /// NATS server URL.
    #[arg(
        long,
        env = "AIRLOCK_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// Redis URL.
    #[arg(
        long,
        env = "AIRLOCK_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// Prefix of every subject (`<prefix>.runs.<queue>`...) and Redis key (`<prefix>:run:<id>`).
    #[arg(long, env = "AIRLOCK_SUBJECT_PREFIX", default_value = airlock_schemas::subjects::DEFAULT_PREFIX)]
    pub subject_prefix: String,
}

impl Endpoints {
    /// The given servers, with the default prefix.
    pub fn new(nats_url: impl Into<String>, redis_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            redis_url: redis_url.into(),
            subject_prefix: airlock_schemas::subjects::DEFAULT_PREFIX.into(),
        }
    }

    /// The subjects under the configured prefix.
    pub fn subjects(&self) -> airlock_schemas::Subjects {
        airlock_schemas::Subjects::new(&self.subject_prefix)
    }
}

/// Settings every Airlock service takes.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Where NATS and Redis are, and the prefix.
    #[command(flatten)]
    pub endpoints: Endpoints,

    /// Secret for run tokens (HMAC of the run id); shared by dispatcher and ingester.
    #[arg(long, env = "AIRLOCK_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,

    /// File holding the token secret (used when `--token-secret` is not given).
    #[arg(long, env = "AIRLOCK_TOKEN_SECRET_FILE")]
    pub token_secret_file: Option<PathBuf>,

    /// Address for `/healthz` and `/readyz`; not served when absent.
    #[arg(long, env = "AIRLOCK_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,

    /// Log format.
    #[arg(long, env = "AIRLOCK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// How long in-flight work may take to finish after a shutdown signal.
    #[arg(long, env = "AIRLOCK_SHUTDOWN_GRACE", value_parser = humantime::parse_duration, default_value = "30s")]
    pub shutdown_grace: Duration,

    /// JetStream stream replicas (1 for a single server, 3 for a cluster).
    #[arg(long, env = "AIRLOCK_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,

    /// How long a finished run's record and result are kept in Redis.
    #[arg(long, env = "AIRLOCK_RECORD_TTL", value_parser = humantime::parse_duration, default_value = "7days")]
    pub record_ttl: Duration,

    /// Size bounds of the streams.
    #[command(flatten)]
    pub streams: StreamArgs,
}

/// Size bounds of every stream (`AIRLOCK_<STREAM>_MAX_*`); the defaults are [`crate::nats::StreamLimits`]'s
/// constants. Every service applies them at start, updating existing streams.
#[derive(Debug, Clone, Args)]
pub struct StreamArgs {
    /// Most requests waiting in `AIRLOCK_RUNS`; then new requests are refused.
    #[arg(long, env = "AIRLOCK_RUNS_MAX_MSGS", default_value_t = StreamLimits::RUNS.max_msgs)]
    pub runs_max_msgs: i64,
    /// Most bytes waiting in `AIRLOCK_RUNS`.
    #[arg(long, env = "AIRLOCK_RUNS_MAX_BYTES", default_value_t = StreamLimits::RUNS.max_bytes)]
    pub runs_max_bytes: i64,
    /// Largest request message (keep it at least the policy's `max_request_bytes`).
    #[arg(long, env = "AIRLOCK_RUNS_MAX_MSG_SIZE", default_value_t = StreamLimits::RUNS.max_msg_size)]
    pub runs_max_msg_size: i32,

    /// Most results waiting in `AIRLOCK_RESULTS`; then new results are refused.
    #[arg(long, env = "AIRLOCK_RESULTS_MAX_MSGS", default_value_t = StreamLimits::RESULTS.max_msgs)]
    pub results_max_msgs: i64,
    /// Most bytes waiting in `AIRLOCK_RESULTS`.
    #[arg(long, env = "AIRLOCK_RESULTS_MAX_BYTES", default_value_t = StreamLimits::RESULTS.max_bytes)]
    pub results_max_bytes: i64,
    /// Largest result message a job can publish.
    #[arg(long, env = "AIRLOCK_RESULTS_MAX_MSG_SIZE", default_value_t = StreamLimits::RESULTS.max_msg_size)]
    pub results_max_msg_size: i32,
    /// Most results waiting for one run; then that run's new results are refused.
    #[arg(long, env = "AIRLOCK_RESULTS_MAX_MSGS_PER_RUN", default_value_t = StreamLimits::RESULTS.max_msgs_per_subject)]
    pub results_max_msgs_per_run: i64,

    /// Most messages kept in `AIRLOCK_TIMERS`; then the oldest are dropped (the sweep finds lost timers).
    #[arg(long, env = "AIRLOCK_TIMERS_MAX_MSGS", default_value_t = StreamLimits::TIMERS.max_msgs)]
    pub timers_max_msgs: i64,
    /// Most bytes kept in `AIRLOCK_TIMERS`.
    #[arg(long, env = "AIRLOCK_TIMERS_MAX_BYTES", default_value_t = StreamLimits::TIMERS.max_bytes)]
    pub timers_max_bytes: i64,
    /// Largest timer message.
    #[arg(long, env = "AIRLOCK_TIMERS_MAX_MSG_SIZE", default_value_t = StreamLimits::TIMERS.max_msg_size)]
    pub timers_max_msg_size: i32,
    /// Most messages kept per timer subject (one run's timers of one kind, or the sweep); the newest stay.
    #[arg(long, env = "AIRLOCK_TIMERS_MAX_MSGS_PER_SUBJECT", default_value_t = StreamLimits::TIMERS.max_msgs_per_subject)]
    pub timers_max_msgs_per_subject: i64,

    /// Most events kept in `AIRLOCK_EVENTS`; then the oldest are dropped.
    #[arg(long, env = "AIRLOCK_EVENTS_MAX_MSGS", default_value_t = StreamLimits::EVENTS.max_msgs)]
    pub events_max_msgs: i64,
    /// Most bytes kept in `AIRLOCK_EVENTS`.
    #[arg(long, env = "AIRLOCK_EVENTS_MAX_BYTES", default_value_t = StreamLimits::EVENTS.max_bytes)]
    pub events_max_bytes: i64,
    /// Largest event message.
    #[arg(long, env = "AIRLOCK_EVENTS_MAX_MSG_SIZE", default_value_t = StreamLimits::EVENTS.max_msg_size)]
    pub events_max_msg_size: i32,
    /// Most events kept for one run; the newest stay.
    #[arg(long, env = "AIRLOCK_EVENTS_MAX_MSGS_PER_RUN", default_value_t = StreamLimits::EVENTS.max_msgs_per_subject)]
    pub events_max_msgs_per_run: i64,
}

impl Default for StreamArgs {
    fn default() -> Self {
        let (r, s, t, e) = (
            StreamLimits::RUNS,
            StreamLimits::RESULTS,
            StreamLimits::TIMERS,
            StreamLimits::EVENTS,
        );
        Self {
            runs_max_msgs: r.max_msgs,
            runs_max_bytes: r.max_bytes,
            runs_max_msg_size: r.max_msg_size,
            results_max_msgs: s.max_msgs,
            results_max_bytes: s.max_bytes,
            results_max_msg_size: s.max_msg_size,
            results_max_msgs_per_run: s.max_msgs_per_subject,
            timers_max_msgs: t.max_msgs,
            timers_max_bytes: t.max_bytes,
            timers_max_msg_size: t.max_msg_size,
            timers_max_msgs_per_subject: t.max_msgs_per_subject,
            events_max_msgs: e.max_msgs,
            events_max_bytes: e.max_bytes,
            events_max_msg_size: e.max_msg_size,
            events_max_msgs_per_run: e.max_msgs_per_subject,
        }
    }
}

impl StreamArgs {
    /// The stream options these bounds and `replicas` make.
    pub fn options(&self, replicas: usize) -> StreamOptions {
        let limits = |max_msgs, max_bytes, max_msg_size, max_msgs_per_subject| StreamLimits {
            max_msgs,
            max_bytes,
            max_msg_size,
            max_msgs_per_subject,
        };
        StreamOptions {
            replicas,
            runs: limits(
                self.runs_max_msgs,
                self.runs_max_bytes,
                self.runs_max_msg_size,
                0,
            ),
            results: limits(
                self.results_max_msgs,
                self.results_max_bytes,
                self.results_max_msg_size,
                self.results_max_msgs_per_run,
            ),
            timers: limits(
                self.timers_max_msgs,
                self.timers_max_bytes,
                self.timers_max_msg_size,
                self.timers_max_msgs_per_subject,
            ),
            events: limits(
                self.events_max_msgs,
                self.events_max_bytes,
                self.events_max_msg_size,
                self.events_max_msgs_per_run,
            ),
            ..StreamOptions::default()
        }
    }
}

impl CommonArgs {
    /// Defaults for tests and `airlock dev`, pointing at the given servers.
    pub fn for_servers(nats_url: impl Into<String>, redis_url: impl Into<String>) -> Self {
        Self {
            endpoints: Endpoints::new(nats_url, redis_url),
            token_secret: None,
            token_secret_file: None,
            http_addr: None,
            log_format: LogFormat::Human,
            shutdown_grace: Duration::from_secs(30),
            stream_replicas: 1,
            record_ttl: Duration::from_secs(7 * 24 * 3600),
            streams: StreamArgs::default(),
        }
    }

    /// The subjects under the configured prefix.
    pub fn subjects(&self) -> airlock_schemas::Subjects {
        self.endpoints.subjects()
    }

    /// Connects to Redis with the configured URL, key prefix and record TTL.
    pub async fn connect_store(&self) -> Result<crate::store::Store, crate::Error> {
        let e = &self.endpoints;
        crate::store::Store::connect(&e.redis_url, &e.subject_prefix, self.record_ttl).await
    }

    /// Reads the token secret from `--token-secret` or `--token-secret-file`.
    pub fn token_secret(&self) -> Result<Vec<u8>, crate::Error> {
        let secret = match (&self.token_secret, &self.token_secret_file) {
            (Some(s), _) => s.as_bytes().to_vec(),
            (None, Some(path)) => std::fs::read(path)
                .map_err(|e| crate::Error::Config(format!("reading {}: {e}", path.display())))?
                .trim_ascii()
                .to_vec(),
            (None, None) => {
                return Err(crate::Error::Config(
                    "a token secret is required: set AIRLOCK_TOKEN_SECRET or AIRLOCK_TOKEN_SECRET_FILE".into(),
                ));
            }
        };
        if secret.len() < 16 {
            return Err(crate::Error::Config(
                "the token secret must be at least 16 bytes".into(),
            ));
        }
        Ok(secret)
    }
}

/// Environment variable names of a service's [`ConsumerArgs`], all `AIRLOCK_<SERVICE>_<SETTING>`.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerEnv {
    /// `AIRLOCK_<SERVICE>_CONCURRENCY`.
    pub concurrency: &'static str,
    /// `AIRLOCK_<SERVICE>_MAX_ACK_PENDING`.
    pub max_ack_pending: &'static str,
    /// `AIRLOCK_<SERVICE>_ACK_WAIT`.
    pub ack_wait: &'static str,
    /// `AIRLOCK_<SERVICE>_MAX_DELIVER`.
    pub max_deliver: &'static str,
    /// `AIRLOCK_<SERVICE>_REDELIVERY_CAP`.
    pub redelivery_cap: &'static str,
}

/// Default values of a service's [`ConsumerArgs`] (durations as humantime text, as on the command line).
#[derive(Debug, Clone, Copy)]
pub struct ConsumerDefaults {
    /// Handlers at once in one process.
    pub concurrency: usize,
    /// Messages delivered and not acknowledged, across replicas.
    pub max_ack_pending: i64,
    /// Ack wait.
    pub ack_wait: &'static str,
    /// Most deliveries of one message.
    pub max_deliver: i64,
    /// Longest redelivery delay.
    pub redelivery_cap: &'static str,
}

/// A service that consumes one durable consumer: the names and defaults of its [`ConsumerArgs`].
pub trait ConsumerService: Clone + std::fmt::Debug + Send + Sync + 'static {
    /// Its environment variable names.
    const ENV: ConsumerEnv;
    /// Its defaults.
    const DEFAULTS: ConsumerDefaults;
}

/// How a service consumes its durable consumer: the same five settings for every service, named
/// `AIRLOCK_<SERVICE>_*` in the environment (`S` says which service, and its defaults).
#[derive(Debug, Clone, Args)]
pub struct ConsumerArgs<S: ConsumerService> {
    /// Most messages handled at once by this process.
    #[arg(long, env = S::ENV.concurrency, default_value_t = S::DEFAULTS.concurrency)]
    pub concurrency: usize,

    /// Most messages delivered and not yet acknowledged, across all replicas.
    #[arg(long, env = S::ENV.max_ack_pending, default_value_t = S::DEFAULTS.max_ack_pending)]
    pub max_ack_pending: i64,

    /// How long a delivered message may stay unacknowledged before JetStream redelivers it (long handlers
    /// send progress while they work).
    #[arg(long, env = S::ENV.ack_wait, value_parser = humantime::parse_duration, default_value = S::DEFAULTS.ack_wait)]
    pub ack_wait: Duration,

    /// Most deliveries of one message (-1: no limit); then the server sends the max-deliveries advisory.
    #[arg(long, env = S::ENV.max_deliver, default_value_t = S::DEFAULTS.max_deliver)]
    pub max_deliver: i64,

    /// Longest delay before a message that failed transiently is delivered again.
    #[arg(long, env = S::ENV.redelivery_cap, value_parser = humantime::parse_duration, default_value = S::DEFAULTS.redelivery_cap)]
    pub redelivery_cap: Duration,

    #[arg(skip)]
    service: std::marker::PhantomData<S>,
}

impl<S: ConsumerService> Default for ConsumerArgs<S> {
    /// The service's documented defaults (what the command line gives when nothing is set).
    fn default() -> Self {
        let duration = |text: &str| {
            humantime::parse_duration(text).unwrap_or_else(|_| panic!("default {text:?} parses"))
        };
        Self {
            concurrency: S::DEFAULTS.concurrency,
            max_ack_pending: S::DEFAULTS.max_ack_pending,
            ack_wait: duration(S::DEFAULTS.ack_wait),
            max_deliver: S::DEFAULTS.max_deliver,
            redelivery_cap: duration(S::DEFAULTS.redelivery_cap),
            service: std::marker::PhantomData,
        }
    }
}

impl<S: ConsumerService> ConsumerArgs<S> {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let fail = |what: &str| Err(crate::Error::Config(format!("{what} must be at least 1")));
        if self.concurrency == 0 {
            return fail(S::ENV.concurrency);
        }
        if self.max_ack_pending < 1 {
            return fail(S::ENV.max_ack_pending);
        }
        if self.max_deliver < 1 && self.max_deliver != -1 {
            return Err(crate::Error::Config(format!(
                "{} must be at least 1, or -1 for no limit",
                S::ENV.max_deliver
            )));
        }
        Ok(())
    }

    /// The durable consumer `durable` on `stream`, filtered to `filter`, with these settings.
    pub fn spec(
        &self,
        stream: String,
        durable: String,
        filter: String,
    ) -> crate::nats::ConsumerSpec {
        crate::nats::ConsumerSpec {
            stream,
            durable,
            filter,
            max_ack_pending: self.max_ack_pending,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
        }
    }

    /// How often a handler that takes long tells JetStream it is still working (a third of the ack wait).
    pub fn progress_every(&self) -> Duration {
        (self.ack_wait / 3).max(Duration::from_millis(100))
    }

    /// The redelivery delay of a message on its `delivered`-th delivery.
    pub fn redelivery_delay(&self, delivered: i64) -> Duration {
        crate::error::redelivery_delay(delivered, self.redelivery_cap)
    }
}

/// The operator policy: the JSON file at `path`, or the defaults without one (the dispatcher and the API
/// must judge requests alike, so both load it here).
pub fn load_policy(path: Option<&Path>) -> Result<airlock_schemas::Policy, crate::Error> {
    let Some(p) = path else {
        return Ok(airlock_schemas::Policy::default());
    };
    let bytes = std::fs::read(p)
        .map_err(|e| crate::Error::Config(format!("reading {}: {e}", p.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| crate::Error::Config(format!("policy {}: {e}", p.display())))
}

/// A queue to consume and the most runs it may have at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueCap {
    /// Queue name (`airlock.runs.<name>`).
    pub name: String,
    /// Most runs of this queue holding a slot (being launched, pending or running) at once.
    pub cap: u32,
}

/// Parses `AIRLOCK_QUEUES` items: `name` (cap 100) or `name=cap`.
pub fn parse_queue(s: &str) -> Result<QueueCap, String> {
    let (name, cap) = match s.split_once('=') {
        Some((n, c)) => (
            n.trim(),
            c.trim()
                .parse::<u32>()
                .map_err(|e| format!("cap of queue {n:?}: {e}"))?,
        ),
        None => (s.trim(), 100),
    };
    if !airlock_schemas::is_valid_name(name) {
        return Err(format!(
            "queue name {name:?} must be 1-40 of [a-z0-9-], alphanumeric at both ends"
        ));
    }
    if cap == 0 {
        return Err(format!("the cap of queue {name:?} must be at least 1"));
    }
    Ok(QueueCap {
        name: name.to_string(),
        cap,
    })
}

#[cfg(test)]
mod queue_tests {
    use super::*;

    #[test]
    fn a_queue_item_is_a_name_with_an_optional_cap_and_bad_ones_say_why() {
        let q = |s| parse_queue(s);
        assert_eq!(
            q("default"),
            Ok(QueueCap {
                name: "default".into(),
                cap: 100
            })
        );
        assert_eq!(
            q(" gpu = 4 "),
            Ok(QueueCap {
                name: "gpu".into(),
                cap: 4
            })
        );
        assert!(q("gpu=0").is_err_and(|e| e.contains("at least 1")));
        assert!(q("gpu=many").is_err_and(|e| e.contains("cap of queue")));
        assert!(q("Bad_Name").is_err_and(|e| e.contains("must be 1-40")));
    }
}
