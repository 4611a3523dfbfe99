//! The dispatcher's error type.

use airlock_backend::BackendError;

/// Errors of the dispatcher. [`Error::is_retryable`] decides between a redelivery and giving up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shared runtime (NATS, Redis, encoding, configuration) failed.
    #[error(transparent)]
    Runtime(#[from] airlock_runtime::Error),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl Error {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Runtime(e) => e.is_retryable(),
            Error::Backend(e) => e.is_retryable(),
        }
    }
}

/// A configuration error.
pub(crate) fn config(message: impl Into<String>) -> Error {
    Error::Runtime(airlock_runtime::Error::Config(message.into()))
}
