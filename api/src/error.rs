//! The API service's error type.

use airlock_backend::BackendError;

/// Errors of the API service. [`Error::is_retryable`] tells whether trying again may succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NATS, Redis, encoding or configuration, from the shared runtime.
    #[error(transparent)]
    Runtime(#[from] airlock_runtime::Error),
    /// The backend (Kubernetes, local sandboxes) failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The NATS micro service could not be started or an endpoint added.
    #[error("starting the NATS service: {0}")]
    Service(#[source] async_nats::Error),
    /// A setting is wrong.
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// Whether a retry with backoff may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Runtime(e) => e.is_retryable(),
            Error::Backend(e) => e.is_retryable(),
            Error::Service(_) => true,
            Error::Config(_) => false,
        }
    }
}
