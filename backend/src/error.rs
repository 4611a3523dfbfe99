//! [`BackendError`]: what failed, with its typed source, and whether retrying may help.

use std::path::PathBuf;
use std::time::Duration;

use airlock_runtime::metrics::{ApiCall, ApiCode, Verb};

/// A backend failure; [`BackendError::is_retryable`] decides between backoff and giving up.
///
/// Failures with an underlying error keep it as their [`source`](std::error::Error::source), and their
/// class comes from its kind (an API status code, a transport error...), never from message text.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A condition worth retrying later, with no underlying error (no free sandbox uid, an older attempt's
    /// object still terminating...).
    #[error("transient backend error: {0}")]
    Transient(String),
    /// An object with the run's name exists but is not this run's (labels differ).
    #[error("object {name} exists but does not belong to run {run_id}")]
    NotOurs {
        /// Object name.
        name: String,
        /// Run id.
        run_id: String,
    },
    /// The backend refused the request for good, with no underlying error (invalid spec, unknown egress
    /// destination, misconfiguration...).
    #[error("backend refused: {0}")]
    Permanent(String),
    /// A Kubernetes API call failed; retryable for 429, 5xx, an exhausted quota, a service account not
    /// created yet and transport errors.
    #[error("{}{what}: {}", class_prefix(crate::kube::api::is_retryable(.source)), crate::kube::api::error_text(.source))]
    Kube {
        /// The call (`"create Pod"`).
        what: &'static str,
        /// The client's error.
        source: kube::Error,
    },
    /// A Kubernetes API call got no answer in time (retryable).
    #[error("transient backend error: {what}: no answer within {after:?}")]
    Timeout {
        /// The call.
        what: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// The Kubernetes client cannot be set up (kubeconfig unreadable or invalid, none found).
    #[error("backend refused: {what}: {source}")]
    KubeSetup {
        /// What was being set up.
        what: String,
        /// The client's error (`KubeconfigError`, `InferConfigError` or `kube::Error`).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file system operation of the local runtime failed (retryable: the state directory is the host's).
    #[error("transient backend error: {what} {}: {source}", .path.display())]
    Io {
        /// The operation (`"writing status.json"`).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl BackendError {
    /// Whether retrying may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            BackendError::Transient(_) | BackendError::Timeout { .. } | BackendError::Io { .. } => {
                true
            }
            BackendError::Kube { source, .. } => crate::kube::api::is_retryable(source),
            BackendError::NotOurs { .. }
            | BackendError::Permanent(_)
            | BackendError::KubeSetup { .. } => false,
        }
    }

    /// A short class for metrics and logs: `"transient"`, `"permanent"` or `"not_ours"`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            BackendError::NotOurs { .. } => "not_ours",
            e if e.is_retryable() => "transient",
            _ => "permanent",
        }
    }

    /// The HTTP status code of a Kubernetes API error answer.
    pub(crate) fn api_status(&self) -> Option<u16> {
        match self {
            BackendError::Kube {
                source: kube::Error::Api(s),
                ..
            } => Some(s.code),
            _ => None,
        }
    }

    /// How the failed call ended, for metrics: the API's status, a timeout, or a transport failure.
    pub fn api_code(&self) -> ApiCode {
        match self {
            BackendError::Timeout { .. } => ApiCode::Timeout,
            e => e.api_status().map_or(ApiCode::Transport, ApiCode::Status),
        }
    }

    /// The failed call as metric labels (verb and code); a local operation's verb is `other`.
    pub fn api_call(&self) -> ApiCall {
        let verb = match self {
            BackendError::Kube { what, .. } | BackendError::Timeout { what, .. } => Verb::of(what),
            _ => Verb::Other,
        };
        ApiCall {
            verb,
            code: self.api_code(),
        }
    }

    /// Makes a [`BackendError::Io`] for `what` on `path` from an io error (for `map_err`).
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| BackendError::Io { what, path, source }
    }
}

fn class_prefix(retryable: bool) -> &'static str {
    if retryable {
        "transient backend error: "
    } else {
        "backend refused: "
    }
}

#[cfg(test)]
mod tests {
    use super::BackendError;

    #[test]
    fn an_io_error_keeps_its_kind_and_source_and_is_transient() {
        let e = BackendError::io("writing", "/state/runs/r/status.json")(std::io::Error::from(
            std::io::ErrorKind::StorageFull,
        ));
        assert!(e.is_retryable());
        assert_eq!(e.metric_label(), "transient");
        let source = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(
            source.map(std::io::Error::kind),
            Some(std::io::ErrorKind::StorageFull)
        );
        assert!(
            e.to_string()
                .starts_with("transient backend error: writing /state/runs/r/status.json: "),
            "{e}"
        );
        let not_ours = BackendError::NotOurs {
            name: "Pod/x".into(),
            run_id: "x".into(),
        };
        assert_eq!(
            (not_ours.is_retryable(), not_ours.metric_label()),
            (false, "not_ours")
        );
    }
}
