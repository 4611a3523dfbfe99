//! A run's image, made present within the run's deadline: permanent failures end the run at once
//! (`ErrImagePull`), transient ones are retried with backoff until the deadline (then `DeadlineExceeded`,
//! with the last pull error). The returned lease is held for the run's whole life.

use std::time::Duration;

use airlock_images::{ImageRef, LeasedImage, PullPolicy};
use airlock_schemas::ImagePullPolicy;
use tokio::time::Instant;
use tracing::{info, warn};

use super::LocalBackend;
use crate::{ImagePull, Reason};

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

/// Why a run has no image: its final reason and message.
#[derive(Debug)]
pub(super) struct PullFailed {
    /// `ErrImagePull` (refused for good) or `DeadlineExceeded` (still not there at the deadline).
    pub reason: Reason,
    /// What happened.
    pub message: String,
}

impl LocalBackend {
    /// Ensures `image` (`reference`, parsed) under `policy` before `deadline`.
    pub(super) async fn pull(
        &self,
        run_id: &str,
        reference: &str,
        image: &ImageRef,
        policy: PullPolicy,
        deadline: Instant,
    ) -> Result<LeasedImage, PullFailed> {
        let store = &self.inner.images;
        let mut backoff = FIRST_BACKOFF;
        let mut last: Option<String> = None;
        let deadline_passed = |last: Option<String>| PullFailed {
            reason: Reason::DeadlineExceeded,
            message: match last {
                Some(e) => {
                    format!("the run's deadline passed while pulling its image: ErrImagePull: {e}")
                }
                None => format!("the run's deadline passed while pulling image {reference:?}"),
            },
        };
        loop {
            let e = match tokio::time::timeout_at(deadline, store.ensure_ref(image, policy)).await {
                Ok(Ok(image)) => {
                    info!(run_id, image = reference, digest = %image.digest(), "Image ready");
                    return Ok(image);
                }
                Ok(Err(e)) if e.is_permanent() => {
                    warn!(run_id, image = reference, error = %e, "Image pull failed");
                    return Err(PullFailed {
                        reason: Reason::ImagePull(ImagePull::ErrImagePull),
                        message: e.to_string(),
                    });
                }
                Ok(Err(e)) => e,
                Err(_) => return Err(deadline_passed(last)),
            };
            warn!(run_id, image = reference, error = %e, "Image pull failed; will retry");
            if Instant::now() + backoff >= deadline {
                return Err(deadline_passed(Some(e.to_string())));
            }
            last = Some(e.to_string());
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
