//! Configuration shared by every service, from flags or environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Settings every Airlock service takes.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
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
    #[arg(long, env = "AIRLOCK_SUBJECT_PREFIX", default_value = "airlock")]
    pub subject_prefix: String,

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
}

impl CommonArgs {
    /// Defaults for tests and `airlock dev`, pointing at the given servers.
    pub fn for_servers(nats_url: impl Into<String>, redis_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            redis_url: redis_url.into(),
            subject_prefix: airlock_schemas::subjects::DEFAULT_PREFIX.into(),
            token_secret: None,
            token_secret_file: None,
            http_addr: None,
            log_format: LogFormat::Human,
            shutdown_grace: Duration::from_secs(30),
            stream_replicas: 1,
            record_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }

    /// The subjects under the configured prefix.
    pub fn subjects(&self) -> airlock_schemas::Subjects {
        airlock_schemas::Subjects::new(&self.subject_prefix)
    }

    /// Connects to Redis with the configured URL, key prefix and record TTL.
    pub async fn connect_store(&self) -> Result<crate::store::Store, crate::Error> {
        crate::store::Store::connect(&self.redis_url, &self.subject_prefix, self.record_ttl).await
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
