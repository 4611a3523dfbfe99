//! Talking to the API server: building the client, timed calls, and what an error means.
//!
//! Every call goes through [`KubeBackend::call`], which names it once (`what`) and yields a
//! [`BackendError::Kube`] (the client's error, classified by [`is_retryable`]) or a
//! [`BackendError::Timeout`]. The client's built-in retry layer is switched off: callers retry with their own
//! capped backoff, so a 429 storm never parks a handler for minutes.

use std::future::Future;
use std::path::Path;

use airlock_runtime::metrics::ApiCode;

use super::KubeBackend;
use crate::BackendError;

/// Builds a client from a kubeconfig file, or by inference (`KUBECONFIG`, `~/.kube/config`, in-cluster),
/// with the client's own retry layer off (callers back off themselves).
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, BackendError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| setup(format!("reading kubeconfig {}", path.display()), e))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| setup(format!("kubeconfig {}", path.display()), e))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| setup("no Kubernetes configuration".into(), e))?,
    };
    config.default_retry = false;
    kube::Client::try_from(config).map_err(|e| setup("building the Kubernetes client".into(), e))
}

fn setup(what: String, e: impl std::error::Error + Send + Sync + 'static) -> BackendError {
    BackendError::KubeSetup {
        what,
        source: Box::new(e),
    }
}

/// The error of API call `what` (classified when asked, by [`is_retryable`]).
pub fn classify(what: &'static str, source: kube::Error) -> BackendError {
    BackendError::Kube { what, source }
}

/// 429, 5xx and transport errors are transient, other API answers (400, 403, 404, 409, 422...) and request
/// or authentication failures permanent; except two 403s that clear by themselves:
/// - an exhausted ResourceQuota (`pods "x" is forbidden: exceeded quota: ...`), which clears as runs
///   finish;
/// - a service account that does not exist yet (`pods "x" is forbidden: error looking up service account
///   <ns>/default: serviceaccount "default" not found`): the ServiceAccount admission refuses every pod of
///   a namespace until its controller has created the account, a moment after the namespace (or longer
///   when the controller lags); the same for a named account not created yet.
///
/// Kubernetes marks these 403s only in their message (reason `Forbidden`, no cause, no details), so this
/// is the one place that tells them apart, by the API server's own wording (its quota and ServiceAccount
/// admission plugins).
pub(crate) fn is_retryable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => {
            s.code == 429 || s.code >= 500 || (s.code == 403 && forbidden_for_now(&s.message))
        }
        kube::Error::BuildRequest(_) | kube::Error::Auth(_) => false,
        _ => true,
    }
}

/// Whether a 403's message is one of the refusals [`is_retryable`] names as clearing by themselves.
fn forbidden_for_now(message: &str) -> bool {
    const CLEARS: [&str; 2] = [
        // plugin/pkg/admission/resourcequota
        "exceeded quota",
        // plugin/pkg/admission/serviceaccount: a lookup that failed (not found, or the API's own error)
        "error looking up service account",
    ];
    CLEARS.iter().any(|c| message.contains(c))
}

/// An API answer as `code reason: message`, any other client error as itself.
pub(crate) fn error_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}

/// `Ok(None)` for an API answer with one of `codes` (a 404 on delete: already gone), the rest unchanged.
pub(super) fn unless_status<T>(
    r: Result<T, BackendError>,
    codes: &[u16],
) -> Result<Option<T>, BackendError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.api_status().is_some_and(|c| codes.contains(&c)) => Ok(None),
        Err(e) => Err(e),
    }
}

impl KubeBackend {
    /// Runs API call `what` with the configured timeout.
    pub(super) async fn call<T>(
        &self,
        what: &'static str,
        f: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, BackendError> {
        let after = self.config().api_timeout;
        let r = match tokio::time::timeout(after, f).await {
            Ok(r) => r.map_err(|source| BackendError::Kube { what, source }),
            Err(_) => Err(BackendError::Timeout { what, after }),
        };
        self.metrics.backend_call(
            what,
            r.as_ref()
                .map_or_else(BackendError::api_code, |_| ApiCode::Ok),
        );
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: message.into(),
            reason: "Reason".into(),
            ..Default::default()
        }))
    }

    #[test]
    fn throttling_server_errors_and_an_exhausted_quota_are_transient_other_refusals_permanent() {
        assert!(classify("x", api(429, "slow down")).is_retryable());
        assert!(classify("x", api(503, "unavailable")).is_retryable());
        assert!(
            classify(
                "x",
                api(
                    403,
                    "pods \"p\" is forbidden: exceeded quota: q, requested: pods=1"
                )
            )
            .is_retryable()
        );
        assert!(!classify("x", api(403, "pods is forbidden: User cannot create")).is_retryable());
        assert!(
            !classify(
                "x",
                api(
                    403,
                    "pods \"p\" is forbidden: violates PodSecurity \"restricted:latest\": runAsNonRoot != true"
                )
            )
            .is_retryable()
        );
        assert!(!classify("x", api(422, "invalid")).is_retryable());
        assert!(!classify("x", api(400, "bad request")).is_retryable());
    }

    #[test]
    fn a_pod_refused_because_its_namespace_has_no_service_account_yet_is_transient() {
        // As a real API server answers a pod created right after its namespace, before the ServiceAccount
        // controller made `default` (the pod spec names no account)...
        let default = classify(
            "create Pod",
            api(
                403,
                "pods \"airlock-run-r\" is forbidden: error looking up service account \
                 airlock-sandbox/default: serviceaccount \"default\" not found",
            ),
        );
        assert!(default.is_retryable());
        assert_eq!(default.metric_label(), "transient");
        assert!(
            default
                .to_string()
                .starts_with("transient backend error: create Pod: 403 Reason: pods"),
            "{default}"
        );
        // ...and one naming an account not created yet.
        let named = api(
            403,
            "pods \"airlock-run-r\" is forbidden: error looking up service account \
             airlock-sandbox/jobs: serviceaccount \"jobs\" not found",
        );
        assert!(classify("create Pod", named).is_retryable());
    }

    #[test]
    fn an_api_error_keeps_its_source_and_reads_as_before() {
        let e = classify("create Pod", api(503, "unavailable"));
        assert_eq!(
            e.to_string(),
            "transient backend error: create Pod: 503 Reason: unavailable"
        );
        assert_eq!((e.api_status(), e.metric_label()), (Some(503), "transient"));
        assert!(std::error::Error::source(&e).is_some());
        let e = classify("create Pod", api(422, "invalid"));
        assert_eq!(
            e.to_string(),
            "backend refused: create Pod: 422 Reason: invalid"
        );
        assert_eq!(e.metric_label(), "permanent");
    }
}
