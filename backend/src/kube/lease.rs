//! One holder at a time: a `coordination.k8s.io/v1` Lease in the sandbox namespace, taken, renewed and
//! released with optimistic concurrency (every write carries the `resourceVersion` it read, so of two
//! replicas racing for a free or expired Lease the API server lets exactly one win; the other gets 409).
//!
//! A Lease is free when it has no holder, and expired when its `renewTime` plus `leaseDurationSeconds` is
//! past (by this replica's clock: replicas' clocks are assumed roughly in sync, as client-go's leader
//! election also assumes).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;

use super::{KubeBackend, post_params};
use crate::BackendError;

impl KubeBackend {
    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    /// Takes Lease `name` for `holder` when it is free, expired or already `holder`'s, renewing it for
    /// `ttl`; whether `holder` holds it now. Losing a race (409) is `Ok(false)`, not an error.
    pub async fn hold_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let leases = self.leases();
        let now = Timestamp::now();
        let secs = i32::try_from(ttl.as_secs().max(1)).unwrap_or(i32::MAX);
        let Some(mut lease) = self.call("get Lease", leases.get_opt(name)).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(holder.into()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return won(self
                .call("create Lease", leases.create(&post_params(), &lease))
                .await);
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let current = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        if current == Some(holder) {
            spec.renew_time = Some(MicroTime(now));
            spec.lease_duration_seconds = Some(secs);
        } else if current.is_none() || expired(spec, now) {
            spec.holder_identity = Some(holder.into());
            spec.acquire_time = Some(MicroTime(now));
            spec.renew_time = Some(MicroTime(now));
            spec.lease_duration_seconds = Some(secs);
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        } else {
            return Ok(false);
        }
        won(self
            .call("update Lease", leases.replace(name, &post_params(), &lease))
            .await)
    }

    /// Gives Lease `name` up when `holder` holds it (so another replica takes it at once instead of after
    /// it expires); a Lease held by someone else, gone, or changed meanwhile is left alone.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), BackendError> {
        let leases = self.leases();
        let Some(mut lease) = self.call("get Lease", leases.get_opt(name)).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(holder) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.renew_time = None;
        won(self
            .call("update Lease", leases.replace(name, &post_params(), &lease))
            .await)
        .map(|_| ())
    }
}

/// Whether the holder's last renewal is older than the Lease's duration.
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(MicroTime(renewed)) = spec.renew_time else {
        return true;
    };
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0));
    renewed
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(secs))
        .is_ok_and(|until| until < now)
}

/// A write that succeeded is `true`, one that lost a race (409: changed or created meanwhile) `false`.
fn won<T>(r: Result<T, BackendError>) -> Result<bool, BackendError> {
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.api_status() == Some(409) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_only_after_its_duration_past_the_last_renewal() {
        let now = Timestamp::from_second(1_000).unwrap();
        let spec = |renew: Option<i64>| LeaseSpec {
            renew_time: renew.map(|s| MicroTime(Timestamp::from_second(s).unwrap())),
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        assert!(!expired(&spec(Some(990)), now));
        assert!(!expired(&spec(Some(985)), now));
        assert!(expired(&spec(Some(984)), now));
        assert!(expired(&spec(None), now));
    }
}
