//! The janitor's error type.

use airlock_backend::BackendError;

/// Errors of the janitor. [`Error::is_retryable`] tells whether a redelivery may succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NATS, Redis, encoding or configuration, from the shared runtime.
    #[error(transparent)]
    Runtime(#[from] airlock_runtime::Error),
    /// The backend (Kubernetes, local sandboxes) failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Another replica holds the run's reap claim; try again shortly.
    #[error("run {0} is being reaped by another replica")]
    Busy(String),
}

impl Error {
    /// Whether a retry with backoff may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Runtime(e) => e.is_retryable(),
            Error::Backend(e) => e.is_retryable(),
            Error::Busy(_) => true,
        }
    }
}
