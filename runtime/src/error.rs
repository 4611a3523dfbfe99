//! The runtime's error type.

use std::time::Duration;

/// Errors from the shared runtime. [`Error::is_retryable`] tells whether backing off may help.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis is unreachable or answered with an error.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// NATS or JetStream failed.
    #[error("nats: {0}")]
    Nats(String),
    /// Configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A stored value could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl Error {
    /// Whether a retry with backoff may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Redis(e) => !matches!(e.kind(), redis::ErrorKind::Client),
            Error::Nats(_) => true,
            Error::Config(_) | Error::Corrupt(_) => false,
        }
    }

    /// Wraps any NATS error.
    pub fn nats(e: impl std::fmt::Display) -> Self {
        Error::Nats(e.to_string())
    }
}

/// Capped exponential backoff delay for the n-th delivery of a message (1-based): 1 s, 2 s, 4 s... up to `cap`.
pub fn redelivery_delay(delivered: i64, cap: Duration) -> Duration {
    let exp = delivered.clamp(1, 16) as u32 - 1;
    Duration::from_secs(1u64 << exp).min(cap)
}
