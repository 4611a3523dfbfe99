//! The janitor's error type.

use airlock_backend::BackendError;

/// Errors of the janitor. [`Error::is_retryable`] tells whether a redelivery may succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NATS, Redis or set-up failed in the shared runtime.
    #[error(transparent)]
    Runtime(#[from] airlock_runtime::Error),
    /// The backend (Kubernetes, local sandboxes) failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Another replica holds the run's reap claim; try again shortly.
    #[error("run {0} is being reaped by another replica")]
    Busy(String),
    /// NATS failed outside the shared runtime's helpers.
    #[error("nats: {0}")]
    Nats(String),
}

impl Error {
    /// Whether a retry with backoff may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Runtime(e) => e.is_retryable(),
            Error::Backend(e) => e.is_retryable(),
            Error::Busy(_) | Error::Nats(_) => true,
            Error::Config(_) => false,
        }
    }

    pub(crate) fn nats(e: impl std::fmt::Display) -> Self {
        Error::Nats(e.to_string())
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Error::Runtime(airlock_runtime::Error::Redis(e))
    }
}
