//! Placeholder; being implemented.

use futures::stream::BoxStream;

use super::{BackendError, LaunchSpec, Launched, Observed, Removed};

/// Placeholder backend.
#[derive(Debug, Clone)]
pub struct KubeBackend;

impl KubeBackend {
    pub(crate) async fn launch(&self, _spec: &LaunchSpec) -> Result<Launched, BackendError> {
        Err(BackendError::Permanent("not implemented".into()))
    }
    pub(crate) async fn observe(&self, _run_id: &str) -> Result<Option<Observed>, BackendError> {
        Err(BackendError::Permanent("not implemented".into()))
    }
    pub(crate) async fn logs_tail(
        &self,
        _run_id: &str,
        _max: usize,
    ) -> Result<String, BackendError> {
        Err(BackendError::Permanent("not implemented".into()))
    }
    pub(crate) async fn remove(&self, _run_id: &str) -> Result<Removed, BackendError> {
        Err(BackendError::Permanent("not implemented".into()))
    }
    pub(crate) async fn list(&self) -> Result<Vec<Observed>, BackendError> {
        Err(BackendError::Permanent("not implemented".into()))
    }
    pub(crate) fn watch(&self) -> BoxStream<'static, Observed> {
        Box::pin(futures::stream::empty())
    }
}
