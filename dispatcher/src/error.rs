//! The dispatcher's error type.

use airlock_backend::BackendError;

/// Errors of the dispatcher. [`Error::is_retryable`] decides between a redelivery and giving up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shared runtime (NATS, Redis, configuration) failed.
    #[error(transparent)]
    Runtime(#[from] airlock_runtime::Error),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Redis answered with an error.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// NATS or JetStream failed.
    #[error("nats: {0}")]
    Nats(String),
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Runtime(e) => e.is_retryable(),
            Error::Backend(e) => e.is_retryable(),
            Error::Redis(e) => !matches!(e.kind(), redis::ErrorKind::Client),
            Error::Nats(_) => true,
            Error::Config(_) => false,
        }
    }

    /// Wraps any NATS error.
    pub fn nats(e: impl std::fmt::Display) -> Self {
        Error::Nats(e.to_string())
    }
}
