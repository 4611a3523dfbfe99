//! One watcher across replicas (Kubernetes mode): the replica holding the watch Lease
//! (`--watch-lease`, see `airlock_backend::kube` `lease`) follows the pods; the others try to take the
//! Lease every third of its duration and stand by.
//!
//! Invariants: the holder renews every third of the duration and stops watching as soon as a renewal is
//! refused, or when renewals have failed for two thirds of the duration (before the Lease can expire for
//! anyone else), so two replicas never follow pods for long at once; and their overlap is harmless anyway,
//! as every effect of the watcher is idempotent. A new holder's watch starts with the current state of
//! every pod, so nothing that happened while no one watched is missed. On shutdown the holder releases the
//! Lease, so a standby takes over at once instead of after the duration.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_backend::kube::KubeBackend;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::context::Ctx;
use crate::watcher::follow;

/// Follows pods while this replica holds the watch Lease, until `shutdown`.
pub(crate) async fn watch_while_leading(
    ctx: &Ctx,
    kube: &KubeBackend,
    shutdown: &CancellationToken,
) {
    let lease = Lease {
        kube: kube.clone(),
        name: ctx.config.watch_lease.clone(),
        holder: holder_identity(),
        ttl: ctx.config.watch_lease_duration,
    };
    loop {
        match lease.hold().await {
            Ok(true) => {
                info!(lease = %lease.name, holder = %lease.holder, "Holding the watch lease; following pods");
                let lost = shutdown.child_token();
                // Both in this task, so nothing renews the Lease once this task is gone.
                let following = async {
                    follow(ctx, ctx.backend.watch(), &lost).await;
                    lost.cancel();
                };
                tokio::join!(following, lease.keep(&lost));
                if shutdown.is_cancelled() {
                    if let Err(e) = lease.kube.release_lease(&lease.name, &lease.holder).await {
                        warn!(lease = %lease.name, error = %e, "Releasing the watch lease failed; it expires by itself");
                    }
                    return;
                }
                info!(lease = %lease.name, "Lost the watch lease; standing by");
            }
            Ok(false) => {}
            Err(e) => {
                warn!(lease = %lease.name, error = %e, "Taking the watch lease failed; will retry")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(lease.every()) => {}
        }
    }
}

/// This replica's view of the watch Lease.
struct Lease {
    kube: KubeBackend,
    name: String,
    holder: String,
    ttl: Duration,
}

impl Lease {
    async fn hold(&self) -> Result<bool, airlock_backend::BackendError> {
        self.kube
            .hold_lease(&self.name, &self.holder, self.ttl)
            .await
    }

    /// How often the holder renews and a standby tries.
    fn every(&self) -> Duration {
        self.ttl / 3
    }

    /// Renews until `lost` is cancelled; cancels it when the Lease is lost or cannot be renewed in time.
    async fn keep(&self, lost: &CancellationToken) {
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                _ = lost.cancelled() => return,
                _ = tokio::time::sleep(self.every()) => {}
            }
            match self.hold().await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.name, "Another replica took the watch lease; stepping down");
                    break;
                }
                Err(e) if renewed.elapsed() < self.ttl * 2 / 3 => {
                    warn!(lease = %self.name, error = %e, "Renewing the watch lease failed; will retry");
                }
                Err(e) => {
                    warn!(lease = %self.name, error = %e, "The watch lease could not be renewed in time; stepping down");
                    break;
                }
            }
        }
        lost.cancel();
    }
}

/// Who this replica is in the Lease: its pod name (`HOSTNAME`), process and start time, unique even for two
/// replicas in one pod or a restarted one.
fn holder_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "dispatcher".into());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{host}/{}/{nanos:x}", std::process::id())
}
