//! A run's image, made present within the run's deadline: permanent failures end the run at once, transient
//! ones are retried with backoff until the deadline. The returned lease is held for the run's whole life.

use std::time::Duration;

use airlock_images::{LeasedImage, PullPolicy};
use airlock_schemas::ImagePullPolicy;
use tokio::time::Instant;
use tracing::{info, warn};

use super::LocalBackend;

/// First pause between attempts; doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The store's policy for the contract's.
pub(super) fn policy(p: Option<ImagePullPolicy>) -> PullPolicy {
    match p.unwrap_or_default() {
        ImagePullPolicy::IfNotPresent => PullPolicy::IfNotPresent,
        ImagePullPolicy::Always => PullPolicy::Always,
        ImagePullPolicy::Never => PullPolicy::Never,
    }
}

impl LocalBackend {
    /// Ensures `reference` under `policy` before `deadline`; the error is the run's `ErrImagePull` message.
    pub(super) async fn pull(
        &self,
        run_id: &str,
        reference: &str,
        policy: PullPolicy,
        deadline: Instant,
    ) -> Result<LeasedImage, String> {
        let store = &self.inner.images;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let e = match tokio::time::timeout_at(deadline, store.ensure(reference, policy)).await {
                Ok(Ok(image)) => {
                    info!(run_id, image = reference, digest = %image.digest(), "Image ready");
                    return Ok(image);
                }
                Ok(Err(e)) if e.is_permanent() => {
                    warn!(run_id, image = reference, error = %e, "Image pull failed");
                    return Err(e.to_string());
                }
                Ok(Err(e)) => e,
                Err(_) => {
                    return Err(format!(
                        "image {reference:?} not ready when the run's deadline passed"
                    ));
                }
            };
            warn!(run_id, image = reference, error = %e, "Image pull failed; will retry");
            if Instant::now() + backoff >= deadline {
                return Err(format!("{e} (retried until the run's deadline passed)"));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
