//! Kubernetes backend: one Pod and one NetworkPolicy per run in the sandbox namespace.
//!
//! Both objects are named [`labels::object_name`] of the run id, so a redelivered request finds what an
//! earlier delivery created. [`KubeBackend::launch`] creates, in this order:
//!
//! 1. the **NetworkPolicy**, selecting only the run's pod by its unique `airlock.dev/run-id` label: no
//!    ingress; egress only to the NATS endpoint (for results), DNS when configured, and the request's named
//!    `egress` destinations as the operator defined them. It exists before the pod, so the pod is never
//!    unrestricted, not even for an instant;
//! 2. the **Pod**: `restartPolicy: Never`, `activeDeadlineSeconds`, requests/limits, no service account
//!    token, no service links, non-root uid 65532, no privilege escalation, every capability dropped,
//!    `seccompProfile: RuntimeDefault`, an optional `runtimeClassName`;
//! 3. an **owner reference** from the NetworkPolicy to the Pod (JSON merge patch), so Kubernetes
//!    garbage-collects the policy with the pod.
//!
//! A 409 AlreadyExists is success when the existing object carries this run's `airlock.dev/run-id` and
//! `airlock.dev/attempt` labels; an object of an older attempt (still terminating) is a transient error, any
//! other object is [`BackendError::NotOurs`]. API errors are [`BackendError::Kube`], retryable for 429, 5xx,
//! an exhausted quota, a service account not created yet and transport errors (see [`api`]); an unanswered
//! call is [`BackendError::Timeout`].
//!
//! # Layout
//! - `config`: [`KubeArgs`], [`KubeConfig`] and their defaults.
//! - `objects`: the NetworkPolicy and Pod of a run; whether a found object is the run's.
//! - `api`: the client, timed calls, and what an API error means.
//! - `observe`: pod → [`Observed`](crate::Observed), logs, listings, the watch.
//! - `lease`: a `coordination.k8s.io/v1` Lease taken, renewed and released (one dispatcher watcher at a
//!   time).
//! - `follow`: a pod log stream (`follow=true`) from a byte offset, for the API.

pub(crate) mod api;
mod config;
mod follow;
mod lease;
mod objects;
mod observe;

use std::collections::BTreeMap;
use std::sync::Arc;

use airlock_runtime::metrics::Metrics;
use airlock_schemas::{EgressDestination, labels};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Resource;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use self::api::unless_status;
pub use self::api::{classify, client};
pub use self::config::{KubeArgs, KubeConfig};
use self::objects::check_ours;
pub use self::observe::observe_pod;
use crate::{BackendError, LaunchSpec, Launched, Removed};

/// Name of the job's container in every pod.
pub const CONTAINER: &str = "job";
/// Field manager recorded on everything the dispatcher writes.
pub const FIELD_MANAGER: &str = "airlock-dispatcher";

/// Pods and NetworkPolicies through the Kubernetes API; cheap to clone.
#[derive(Clone)]
pub struct KubeBackend {
    client: kube::Client,
    config: Arc<KubeConfig>,
    metrics: Metrics,
}

impl std::fmt::Debug for KubeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeBackend")
            .field("namespace", &self.config.namespace)
            .finish_non_exhaustive()
    }
}

impl KubeBackend {
    /// A backend using `client` in `config.namespace`.
    pub fn new(client: kube::Client, config: KubeConfig) -> Self {
        Self {
            client,
            config: Arc::new(config),
            metrics: Metrics::default(),
        }
    }

    /// Connects as `args` say.
    pub async fn from_args(args: &KubeArgs) -> Result<Self, BackendError> {
        let client = client(args.kubeconfig.as_deref()).await?;
        Ok(Self::new(client, args.config()))
    }

    /// The same backend with the operator's named egress destinations; only the dispatcher, which creates
    /// the NetworkPolicies, calls this (so only it warns about a missing NATS egress rule).
    pub fn with_egress_catalog(self, egress: BTreeMap<String, EgressDestination>) -> Self {
        let mut config = (*self.config).clone();
        if config.nats_egress.cidrs.is_empty() && config.nats_egress.pod_labels.is_empty() {
            warn!(
                "No NATS egress configured (--nats-egress-cidrs / --nats-egress-pod-labels): jobs cannot publish results"
            );
        }
        config.egress = egress;
        Self {
            client: self.client,
            config: Arc::new(config),
            metrics: self.metrics,
        }
    }

    /// The same backend, counting its API calls into `metrics`.
    pub fn with_metrics(self, metrics: Metrics) -> Self {
        Self { metrics, ..self }
    }

    /// The configuration.
    pub fn config(&self) -> &KubeConfig {
        &self.config
    }

    /// The client.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    fn policies(&self) -> Api<NetworkPolicy> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    /// Creates the NetworkPolicy, then the Pod, then points the policy's owner reference at the pod.
    pub async fn launch(&self, spec: &LaunchSpec) -> Result<Launched, BackendError> {
        let name = labels::object_name(spec.run_id());
        // 1. The NetworkPolicy, before anything can run.
        let np_owned = self.create_policy(spec, &name).await?;
        // 2. The Pod.
        let (uid, launched) = self.create_pod(spec, &name).await?;
        // 3. Owner reference, so the policy goes when the pod goes.
        if !np_owned && let Some(uid) = uid.as_deref() {
            self.own_policy(&name, uid).await?;
        }
        Ok(launched)
    }

    /// Creates the run's NetworkPolicy, or accepts this run's; whether it already names its pod as owner.
    async fn create_policy(&self, spec: &LaunchSpec, name: &str) -> Result<bool, BackendError> {
        let np = self.network_policy(spec)?;
        let policies = self.policies();
        let created = self
            .call(
                "create NetworkPolicy",
                self.create_lean::<_, IgnoredAny>(&np),
            )
            .await;
        match created {
            Ok(_) => {
                debug!(run_id = %spec.run_id(), "NetworkPolicy created");
                Ok(false)
            }
            Err(e) if e.api_status() == Some(409) => {
                let existing = self
                    .call("get NetworkPolicy", policies.get_opt(name))
                    .await?
                    .ok_or_else(|| {
                        BackendError::Transient(format!(
                            "NetworkPolicy {name} conflicted and vanished"
                        ))
                    })?;
                check_ours("NetworkPolicy", &existing.metadata, spec)?;
                Ok(existing
                    .metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|o| o.iter().any(|r| r.kind == "Pod" && r.name == name)))
            }
            Err(e) => Err(e),
        }
    }

    /// Creates the run's Pod, or accepts this run's; its uid.
    async fn create_pod(
        &self,
        spec: &LaunchSpec,
        name: &str,
    ) -> Result<(Option<String>, Launched), BackendError> {
        let pods = self.pods();
        match self
            .call(
                "create Pod",
                self.create_lean::<_, Created>(&self.pod(spec)),
            )
            .await
        {
            Ok(p) => Ok((p.metadata.uid, Launched::Created)),
            Err(e) if e.api_status() == Some(409) => {
                let existing =
                    self.call("get Pod", pods.get_opt(name))
                        .await?
                        .ok_or_else(|| {
                            BackendError::Transient(format!("Pod {name} conflicted and vanished"))
                        })?;
                check_ours("Pod", &existing.metadata, spec)?;
                Ok((existing.metadata.uid, Launched::AlreadyExisted))
            }
            Err(e) => Err(e),
        }
    }

    /// Makes the pod (`uid`) the owner of the NetworkPolicy `name`.
    async fn own_policy(&self, name: &str, uid: &str) -> Result<(), BackendError> {
        let patch = serde_json::json!({
            "metadata": { "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "Pod",
                "name": name,
                "uid": uid,
                "blockOwnerDeletion": false,
                "controller": false,
            }]}
        });
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let url = NetworkPolicy::url_path(&(), Some(&self.config.namespace));
        let request = kube::core::Request::new(url)
            .patch(name, &pp, &Patch::Merge(&patch))
            .map_err(kube::Error::BuildRequest);
        self.call("patch NetworkPolicy owner", async {
            let mut request = request?;
            request.extensions_mut().insert("patch");
            self.client.request::<IgnoredAny>(request).await
        })
        .await?;
        Ok(())
    }

    /// Creates `object` in the namespace, decoding of the answer only what `A` names (`Api::create` decodes
    /// the whole object, which the launch never reads).
    async fn create_lean<K, A>(&self, object: &K) -> Result<A, kube::Error>
    where
        K: Resource<DynamicType = ()> + Serialize,
        A: DeserializeOwned,
    {
        let url = K::url_path(&(), Some(&self.config.namespace));
        let body = serde_json::to_vec(object).map_err(kube::Error::SerdeError)?;
        let mut request = kube::core::Request::new(url)
            .create(&post_params(), body)
            .map_err(kube::Error::BuildRequest)?;
        request.extensions_mut().insert("create");
        self.client.request::<A>(request).await
    }

    /// Deletes the pod (background propagation) and the NetworkPolicy; 404 counts as done.
    pub async fn remove(&self, run_id: &str) -> Result<Removed, BackendError> {
        let name = labels::object_name(run_id);
        let dp = DeleteParams::background();
        let pod = unless_status(
            self.call("delete Pod", self.pods().delete(&name, &dp))
                .await,
            &[404],
        )?;
        let policy = unless_status(
            self.call("delete NetworkPolicy", self.policies().delete(&name, &dp))
                .await,
            &[404],
        )?;
        Ok(if pod.is_some() || policy.is_some() {
            Removed::Deleted
        } else {
            Removed::Absent
        })
    }
}

/// What the launch reads of a created object: its uid (the rest of the answer is skipped, not decoded).
#[derive(Deserialize)]
struct Created {
    #[serde(default)]
    metadata: CreatedMeta,
}

/// See [`Created`].
#[derive(Default, Deserialize)]
struct CreatedMeta {
    uid: Option<String>,
}

fn post_params() -> PostParams {
    PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.into()),
    }
}
