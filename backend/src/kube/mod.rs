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
//! other object is [`BackendError::NotOurs`]. 429, 5xx, timeouts and connection errors are
//! [`BackendError::Transient`]; other API errors (400, 403, 422...) are [`BackendError::Permanent`]. The
//! client's built-in retry layer is switched off: callers retry with their own capped backoff, so a 429
//! storm never parks a handler for minutes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use airlock_schemas::{EgressDestination, EgressPort, labels};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerStatus, EnvVar, Pod, PodSecurityContext, PodSpec,
    ResourceRequirements, SeccompProfile, SecurityContext,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use tracing::{debug, warn};

use super::{BackendError, LaunchSpec, Launched, Observed, Phase, Removed, RunObjects};

/// Name of the job's container in every pod.
pub const CONTAINER: &str = "job";
/// Field manager recorded on everything the dispatcher writes.
pub const FIELD_MANAGER: &str = "airlock-dispatcher";

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected key=value, got {s:?}"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

/// Command-line/environment options of the Kubernetes backend (embedded by the dispatcher and janitor).
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// Namespace the run pods and their NetworkPolicies are created in.
    #[arg(long, env = "AIRLOCK_NAMESPACE", default_value = "airlock-sandbox")]
    pub namespace: String,
    /// Kubeconfig file; otherwise `KUBECONFIG`, `~/.kube/config`, then the in-cluster service account.
    #[arg(long, env = "AIRLOCK_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// RuntimeClass of run pods (e.g. `gvisor`, `kata`); the cluster default when absent.
    #[arg(long, env = "AIRLOCK_RUNTIME_CLASS")]
    pub runtime_class: Option<String>,
    /// `imagePullPolicy` of the job container.
    #[arg(
        long,
        env = "AIRLOCK_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub image_pull_policy: String,
    /// Uid (and gid) the job runs as; never 0.
    #[arg(long, env = "AIRLOCK_POD_RUN_AS_USER", default_value_t = 65532)]
    pub pod_run_as_user: i64,
    /// `terminationGracePeriodSeconds` of run pods.
    #[arg(long, env = "AIRLOCK_POD_TERMINATION_GRACE", default_value_t = 10)]
    pub pod_termination_grace: i64,
    /// IP blocks (CIDR, comma-separated) of the NATS endpoint jobs publish results to.
    #[arg(long, env = "AIRLOCK_NATS_EGRESS_CIDRS", value_delimiter = ',')]
    pub nats_egress_cidrs: Vec<String>,
    /// Pod labels (`k=v`, comma-separated) of the NATS servers jobs publish results to.
    #[arg(long, env = "AIRLOCK_NATS_EGRESS_POD_LABELS", value_delimiter = ',', value_parser = parse_label)]
    pub nats_egress_pod_labels: Vec<(String, String)>,
    /// Namespace labels (`k=v`, comma-separated) of the NATS servers' namespace; the sandbox namespace when empty.
    #[arg(long, env = "AIRLOCK_NATS_EGRESS_NAMESPACE_LABELS", value_delimiter = ',', value_parser = parse_label)]
    pub nats_egress_namespace_labels: Vec<(String, String)>,
    /// TCP port of the NATS endpoint.
    #[arg(long, env = "AIRLOCK_NATS_EGRESS_PORT", default_value_t = 4222)]
    pub nats_egress_port: u16,
    /// Allow DNS (port 53, UDP and TCP) to the cluster DNS pods.
    #[arg(long, env = "AIRLOCK_DNS_EGRESS", default_value_t = true, action = clap::ArgAction::Set)]
    pub dns_egress: bool,
    /// Namespace labels of the cluster DNS (`k=v`, comma-separated).
    #[arg(long, env = "AIRLOCK_DNS_NAMESPACE_LABELS", value_delimiter = ',', value_parser = parse_label,
          default_value = "kubernetes.io/metadata.name=kube-system")]
    pub dns_namespace_labels: Vec<(String, String)>,
    /// Pod labels of the cluster DNS (`k=v`, comma-separated).
    #[arg(long, env = "AIRLOCK_DNS_POD_LABELS", value_delimiter = ',', value_parser = parse_label,
          default_value = "k8s-app=kube-dns")]
    pub dns_pod_labels: Vec<(String, String)>,
    /// Timeout of each Kubernetes API call (watches excepted).
    #[arg(long, env = "AIRLOCK_KUBE_API_TIMEOUT", value_parser = humantime::parse_duration, default_value = "15s")]
    pub kube_api_timeout: Duration,
}

impl KubeArgs {
    /// The configuration these options describe (no named egress destinations: see
    /// [`KubeBackend::with_egress_catalog`]).
    pub fn config(&self) -> KubeConfig {
        let mut c = KubeConfig::new(&self.namespace);
        c.runtime_class.clone_from(&self.runtime_class);
        c.image_pull_policy.clone_from(&self.image_pull_policy);
        c.run_as_user = self.pod_run_as_user;
        c.termination_grace_seconds = self.pod_termination_grace;
        c.api_timeout = self.kube_api_timeout;
        c.nats_egress = EgressDestination {
            cidrs: self.nats_egress_cidrs.clone(),
            pod_labels: self.nats_egress_pod_labels.iter().cloned().collect(),
            namespace_labels: self.nats_egress_namespace_labels.iter().cloned().collect(),
            ports: vec![EgressPort {
                port: self.nats_egress_port,
                protocol: "TCP".into(),
            }],
        };
        c.dns_egress = self.dns_egress.then(|| EgressDestination {
            cidrs: Vec::new(),
            pod_labels: self.dns_pod_labels.iter().cloned().collect(),
            namespace_labels: self.dns_namespace_labels.iter().cloned().collect(),
            ports: vec![
                EgressPort {
                    port: 53,
                    protocol: "UDP".into(),
                },
                EgressPort {
                    port: 53,
                    protocol: "TCP".into(),
                },
            ],
        });
        c
    }
}

/// Configuration of the Kubernetes backend.
#[derive(Debug, Clone)]
pub struct KubeConfig {
    /// Sandbox namespace.
    pub namespace: String,
    /// `runtimeClassName` of run pods.
    pub runtime_class: Option<String>,
    /// `imagePullPolicy` of the job container.
    pub image_pull_policy: String,
    /// Uid and gid the job runs as (non-root).
    pub run_as_user: i64,
    /// `terminationGracePeriodSeconds`.
    pub termination_grace_seconds: i64,
    /// Where jobs may publish results (always allowed).
    pub nats_egress: EgressDestination,
    /// Cluster DNS, when allowed.
    pub dns_egress: Option<EgressDestination>,
    /// The operator's named egress destinations (the policy's `egress`).
    pub egress: BTreeMap<String, EgressDestination>,
    /// Timeout of each API call.
    pub api_timeout: Duration,
}

impl KubeConfig {
    /// Defaults for everything but the namespace: no NATS or DNS egress, no named destinations.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            runtime_class: None,
            image_pull_policy: "IfNotPresent".into(),
            run_as_user: 65532,
            termination_grace_seconds: 10,
            nats_egress: EgressDestination {
                cidrs: Vec::new(),
                pod_labels: BTreeMap::new(),
                namespace_labels: BTreeMap::new(),
                ports: Vec::new(),
            },
            dns_egress: None,
            egress: BTreeMap::new(),
            api_timeout: Duration::from_secs(15),
        }
    }
}

/// Pods and NetworkPolicies through the Kubernetes API; cheap to clone.
#[derive(Clone)]
pub struct KubeBackend {
    client: kube::Client,
    config: Arc<KubeConfig>,
}

impl std::fmt::Debug for KubeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeBackend")
            .field("namespace", &self.config.namespace)
            .finish_non_exhaustive()
    }
}

/// Builds a client from a kubeconfig file, or by inference (`KUBECONFIG`, `~/.kube/config`, in-cluster),
/// with the client's own retry layer off (callers back off themselves).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, BackendError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                BackendError::Permanent(format!("reading kubeconfig {}: {e}", path.display()))
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| {
                    BackendError::Permanent(format!("kubeconfig {}: {e}", path.display()))
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| BackendError::Permanent(format!("no Kubernetes configuration: {e}")))?,
    };
    config.default_retry = false;
    kube::Client::try_from(config)
        .map_err(|e| BackendError::Permanent(format!("building the Kubernetes client: {e}")))
}

/// Maps a client error: 429, 5xx, timeouts and transport errors are transient, other API answers permanent,
/// except a 403 for an exhausted ResourceQuota (`exceeded quota`), which clears as runs finish.
pub fn classify(what: &str, e: kube::Error) -> BackendError {
    match &e {
        kube::Error::Api(s)
            if s.code == 429
                || s.code >= 500
                || (s.code == 403 && s.message.contains("exceeded quota")) =>
        {
            BackendError::Transient(format!("{what}: {} {}: {}", s.code, s.reason, s.message))
        }
        kube::Error::Api(s) => {
            BackendError::Permanent(format!("{what}: {} {}: {}", s.code, s.reason, s.message))
        }
        kube::Error::BuildRequest(_) | kube::Error::Auth(_) => {
            BackendError::Permanent(format!("{what}: {e}"))
        }
        _ => BackendError::Transient(format!("{what}: {e}")),
    }
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

fn to_chrono(t: &Time) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
}

impl KubeBackend {
    /// A backend using `client` in `config.namespace`.
    pub fn new(client: kube::Client, config: KubeConfig) -> Self {
        Self {
            client,
            config: Arc::new(config),
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
        }
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

    async fn call<T, F>(&self, what: &str, f: F) -> Result<Result<T, kube::Error>, BackendError>
    where
        F: std::future::Future<Output = Result<T, kube::Error>>,
    {
        tokio::time::timeout(self.config.api_timeout, f)
            .await
            .map_err(|_| {
                BackendError::Transient(format!(
                    "{what}: no answer within {:?}",
                    self.config.api_timeout
                ))
            })
    }

    /// Labels identifying the run's objects.
    fn run_labels(spec: &LaunchSpec) -> BTreeMap<String, String> {
        BTreeMap::from([
            (labels::RUN_ID.to_string(), spec.run_id().to_string()),
            (labels::QUEUE.to_string(), spec.run.queue.clone()),
            (labels::ATTEMPT.to_string(), spec.attempt.to_string()),
            (
                labels::MANAGED_BY.to_string(),
                labels::MANAGED_BY_VALUE.to_string(),
            ),
        ])
    }

    /// The run's NetworkPolicy.
    pub fn network_policy(&self, spec: &LaunchSpec) -> Result<NetworkPolicy, BackendError> {
        let c = &self.config;
        let mut rules = Vec::new();
        let mut dests: Vec<(&str, &EgressDestination)> = vec![("nats", &c.nats_egress)];
        if let Some(dns) = &c.dns_egress {
            dests.push(("dns", dns));
        }
        for name in &spec.run.request.egress {
            let d = c.egress.get(name).ok_or_else(|| {
                BackendError::Permanent(format!(
                    "egress destination {name:?} is not defined by the operator"
                ))
            })?;
            dests.push((name.as_str(), d));
        }
        for (name, d) in dests {
            if let Some(rule) = egress_rule(d) {
                rules.push(rule);
            } else {
                debug!(
                    destination = name,
                    "Egress destination has no peers; no rule"
                );
            }
        }
        Ok(NetworkPolicy {
            metadata: ObjectMeta {
                name: Some(labels::object_name(spec.run_id())),
                namespace: Some(c.namespace.clone()),
                labels: Some(Self::run_labels(spec)),
                ..Default::default()
            },
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        labels::RUN_ID.to_string(),
                        spec.run_id().to_string(),
                    )])),
                    ..Default::default()
                }),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ingress: Some(Vec::new()),
                egress: Some(rules),
            }),
        })
    }

    /// The run's Pod.
    pub fn pod(&self, spec: &LaunchSpec) -> Pod {
        let c = &self.config;
        let req = &spec.run.request;
        let mut pod_labels: BTreeMap<String, String> = req.labels.clone();
        pod_labels.extend(Self::run_labels(spec));
        let list = |l: &airlock_schemas::ResourceList| {
            let mut m = BTreeMap::new();
            if let Some(cpu) = &l.cpu {
                m.insert("cpu".to_string(), Quantity(cpu.clone()));
            }
            if let Some(mem) = &l.memory {
                m.insert("memory".to_string(), Quantity(mem.clone()));
            }
            (!m.is_empty()).then_some(m)
        };
        let seccomp = || SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        };
        let uid = c.run_as_user.max(1);
        Pod {
            metadata: ObjectMeta {
                name: Some(labels::object_name(spec.run_id())),
                namespace: Some(c.namespace.clone()),
                labels: Some(pod_labels),
                ..Default::default()
            },
            spec: Some(PodSpec {
                restart_policy: Some("Never".into()),
                active_deadline_seconds: Some(
                    spec.run.deadline_seconds.clamp(1, i64::MAX as u64) as i64
                ),
                automount_service_account_token: Some(false),
                enable_service_links: Some(false),
                host_network: Some(false),
                host_pid: Some(false),
                host_ipc: Some(false),
                runtime_class_name: c.runtime_class.clone(),
                termination_grace_period_seconds: Some(c.termination_grace_seconds.max(0)),
                security_context: Some(PodSecurityContext {
                    run_as_non_root: Some(true),
                    run_as_user: Some(uid),
                    run_as_group: Some(uid),
                    seccomp_profile: Some(seccomp()),
                    ..Default::default()
                }),
                containers: vec![Container {
                    name: CONTAINER.into(),
                    image: Some(req.image.clone()),
                    image_pull_policy: Some(c.image_pull_policy.clone()),
                    command: (!req.command.is_empty()).then(|| req.command.clone()),
                    args: (!req.args.is_empty()).then(|| req.args.clone()),
                    env: Some(
                        spec.env
                            .iter()
                            .map(|(k, v)| EnvVar {
                                name: k.clone(),
                                value: Some(v.clone()),
                                value_from: None,
                            })
                            .collect(),
                    ),
                    resources: Some(ResourceRequirements {
                        requests: list(&req.resources.requests),
                        limits: list(&req.resources.limits),
                        ..Default::default()
                    }),
                    termination_message_policy: Some("FallbackToLogsOnError".into()),
                    security_context: Some(SecurityContext {
                        allow_privilege_escalation: Some(false),
                        privileged: Some(false),
                        run_as_non_root: Some(true),
                        run_as_user: Some(uid),
                        run_as_group: Some(uid),
                        capabilities: Some(Capabilities {
                            add: None,
                            drop: Some(vec!["ALL".into()]),
                        }),
                        seccomp_profile: Some(seccomp()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        }
    }

    /// Checks that an object found on 409 is this run's (same run id and attempt).
    fn check_ours(kind: &str, meta: &ObjectMeta, spec: &LaunchSpec) -> Result<(), BackendError> {
        let name = meta.name.clone().unwrap_or_default();
        let l = meta.labels.clone().unwrap_or_default();
        if l.get(labels::RUN_ID).map(String::as_str) != Some(spec.run_id()) {
            return Err(BackendError::NotOurs {
                name: format!("{kind}/{name}"),
                run_id: spec.run_id().to_string(),
            });
        }
        let attempt: u32 = l
            .get(labels::ATTEMPT)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1);
        if attempt == spec.attempt {
            Ok(())
        } else if attempt < spec.attempt {
            Err(BackendError::Transient(format!(
                "{kind}/{name} of attempt {attempt} still exists (attempt {} waits for its removal)",
                spec.attempt
            )))
        } else {
            Err(BackendError::Permanent(format!(
                "{kind}/{name} belongs to the newer attempt {attempt}; attempt {} is stale",
                spec.attempt
            )))
        }
    }

    /// Creates the NetworkPolicy, then the Pod, then points the policy's owner reference at the pod.
    pub async fn launch(&self, spec: &LaunchSpec) -> Result<Launched, BackendError> {
        let name = labels::object_name(spec.run_id());
        let pp = PostParams {
            dry_run: false,
            field_manager: Some(FIELD_MANAGER.into()),
        };

        // 1. The NetworkPolicy, before anything can run.
        let np = self.network_policy(spec)?;
        let policies = self.policies();
        let mut np_owned = false;
        match self
            .call("create NetworkPolicy", policies.create(&pp, &np))
            .await?
        {
            Ok(_) => debug!(run_id = %spec.run_id(), "NetworkPolicy created"),
            Err(e) if status_code(&e) == Some(409) => {
                let existing = self
                    .call("get NetworkPolicy", policies.get_opt(&name))
                    .await?
                    .map_err(|e| classify("get NetworkPolicy", e))?
                    .ok_or_else(|| {
                        BackendError::Transient(format!(
                            "NetworkPolicy {name} conflicted and vanished"
                        ))
                    })?;
                Self::check_ours("NetworkPolicy", &existing.metadata, spec)?;
                np_owned = existing
                    .metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|o| o.iter().any(|r| r.kind == "Pod" && r.name == name));
            }
            Err(e) => return Err(classify("create NetworkPolicy", e)),
        }

        // 2. The Pod.
        let pods = self.pods();
        let (pod, launched) = match self
            .call("create Pod", pods.create(&pp, &self.pod(spec)))
            .await?
        {
            Ok(p) => (p, Launched::Created),
            Err(e) if status_code(&e) == Some(409) => {
                let existing = self
                    .call("get Pod", pods.get_opt(&name))
                    .await?
                    .map_err(|e| classify("get Pod", e))?
                    .ok_or_else(|| {
                        BackendError::Transient(format!("Pod {name} conflicted and vanished"))
                    })?;
                Self::check_ours("Pod", &existing.metadata, spec)?;
                (existing, Launched::AlreadyExisted)
            }
            Err(e) => return Err(classify("create Pod", e)),
        };

        // 3. Owner reference, so the policy goes when the pod goes.
        if !np_owned && let Some(uid) = pod.metadata.uid.as_deref() {
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
            match self
                .call(
                    "patch NetworkPolicy",
                    policies.patch(&name, &pp, &Patch::Merge(&patch)),
                )
                .await?
            {
                Ok(_) => {}
                Err(e) => return Err(classify("patch NetworkPolicy owner", e)),
            }
        }
        Ok(launched)
    }

    /// The run's pod as [`Observed`], or `None` when it does not exist.
    pub async fn observe(&self, run_id: &str) -> Result<Option<Observed>, BackendError> {
        let name = labels::object_name(run_id);
        let pod = self
            .call("get Pod", self.pods().get_opt(&name))
            .await?
            .map_err(|e| classify("get Pod", e))?;
        Ok(pod.as_ref().and_then(observe_pod))
    }

    /// The last `max_bytes` of the job container's log.
    pub async fn logs_tail(&self, run_id: &str, max_bytes: usize) -> Result<String, BackendError> {
        let name = labels::object_name(run_id);
        let lp = LogParams {
            container: Some(CONTAINER.into()),
            tail_lines: Some(((max_bytes / 16).max(100)) as i64),
            limit_bytes: Some((max_bytes.saturating_mul(4)).max(1024) as i64),
            ..Default::default()
        };
        match self.call("get logs", self.pods().logs(&name, &lp)).await? {
            Ok(s) => Ok(tail(&s, max_bytes).to_string()),
            // Gone, or the container never started: no logs.
            Err(e) if matches!(status_code(&e), Some(400 | 404)) => Ok(String::new()),
            Err(e) => Err(classify("get logs", e)),
        }
    }

    /// Deletes the pod (background propagation) and the NetworkPolicy; 404 counts as done.
    pub async fn remove(&self, run_id: &str) -> Result<Removed, BackendError> {
        let name = labels::object_name(run_id);
        let dp = DeleteParams::background();
        let mut deleted = false;
        match self
            .call("delete Pod", self.pods().delete(&name, &dp))
            .await?
        {
            Ok(_) => deleted = true,
            Err(e) if status_code(&e) == Some(404) => {}
            Err(e) => return Err(classify("delete Pod", e)),
        }
        match self
            .call("delete NetworkPolicy", self.policies().delete(&name, &dp))
            .await?
        {
            Ok(_) => deleted = true,
            Err(e) if status_code(&e) == Some(404) => {}
            Err(e) => return Err(classify("delete NetworkPolicy", e)),
        }
        Ok(if deleted {
            Removed::Deleted
        } else {
            Removed::Absent
        })
    }

    /// Every managed pod in the sandbox namespace.
    pub async fn list(&self) -> Result<Vec<Observed>, BackendError> {
        let lp = ListParams::default().labels(&labels::managed_selector());
        let pods = self
            .call("list Pods", self.pods().list(&lp))
            .await?
            .map_err(|e| classify("list Pods", e))?;
        Ok(pods.items.iter().filter_map(observe_pod).collect())
    }

    /// One entry per run id found on a managed Pod or NetworkPolicy in the sandbox namespace (so a policy
    /// whose pod is gone or was never created is reported, with `observed: None`), in run id order.
    pub async fn list_objects(&self) -> Result<Vec<RunObjects>, BackendError> {
        let lp = ListParams::default().labels(&labels::managed_selector());
        let (pods, policies) = tokio::try_join!(
            async {
                self.call("list Pods", self.pods().list(&lp))
                    .await?
                    .map_err(|e| classify("list Pods", e))
            },
            async {
                self.call("list NetworkPolicies", self.policies().list(&lp))
                    .await?
                    .map_err(|e| classify("list NetworkPolicies", e))
            },
        )?;
        let mut runs: BTreeMap<String, RunObjects> = BTreeMap::new();
        for pod in &pods.items {
            if let Some(entry) = add_object(&mut runs, &pod.metadata) {
                entry.observed = observe_pod(pod);
            }
        }
        for np in &policies.items {
            add_object(&mut runs, &np.metadata);
        }
        Ok(runs.into_values().collect())
    }

    /// Changes of managed pods (a `kube-runtime` watcher with backoff): the current state of each first,
    /// then every change. A pod deleted before it finished is reported `Failed`, reason `Deleted`, `lost`.
    pub fn watch(&self) -> BoxStream<'static, Observed> {
        let cfg = watcher::Config::default().labels(&labels::managed_selector());
        let stream = watcher(self.pods(), cfg)
            .default_backoff()
            .filter_map(|ev| async move {
                match ev {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => observe_pod(&p),
                    Ok(watcher::Event::Delete(p)) => observe_pod(&p).map(|mut o| {
                        if !o.phase.is_finished() {
                            o.phase = Phase::Failed;
                            o.reason = Some("Deleted".into());
                            o.message = Some("the pod was deleted before it finished".into());
                            o.lost = true;
                        }
                        o
                    }),
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                    Err(e) => {
                        warn!(error = %e, "Pod watch failed; will retry");
                        None
                    }
                }
            });
        Box::pin(stream)
    }
}

/// Counts one object into its run's entry of `runs` (oldest creation time; terminating only while every
/// object is); `None` for an object without a run id label.
fn add_object<'a>(
    runs: &'a mut BTreeMap<String, RunObjects>,
    meta: &ObjectMeta,
) -> Option<&'a mut RunObjects> {
    let run_id = meta.labels.as_ref()?.get(labels::RUN_ID)?;
    let created = meta.creation_timestamp.as_ref().and_then(to_chrono);
    let terminating = meta.deletion_timestamp.is_some();
    let entry = runs.entry(run_id.clone()).or_insert_with(|| RunObjects {
        run_id: run_id.clone(),
        observed: None,
        created_at: created,
        terminating,
    });
    entry.created_at = match (entry.created_at, created) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    entry.terminating &= terminating;
    Some(entry)
}

/// The last `max` bytes of `s`, cut at a character boundary.
fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn peer_selector(m: &BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(m.clone()),
        ..Default::default()
    }
}

/// One egress rule for a destination, or `None` when it names no peer (an egress rule without peers would
/// allow every destination, so it is never emitted).
fn egress_rule(d: &EgressDestination) -> Option<NetworkPolicyEgressRule> {
    let mut to: Vec<NetworkPolicyPeer> = d
        .cidrs
        .iter()
        .map(|c| NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: c.clone(),
                except: None,
            }),
            ..Default::default()
        })
        .collect();
    if !d.pod_labels.is_empty() {
        to.push(NetworkPolicyPeer {
            pod_selector: Some(peer_selector(&d.pod_labels)),
            namespace_selector: (!d.namespace_labels.is_empty())
                .then(|| peer_selector(&d.namespace_labels)),
            ..Default::default()
        });
    }
    if to.is_empty() {
        return None;
    }
    let ports: Vec<NetworkPolicyPort> = d
        .ports
        .iter()
        .map(|p| NetworkPolicyPort {
            port: Some(IntOrString::Int(i32::from(p.port))),
            protocol: Some(p.protocol.clone()),
            end_port: None,
        })
        .collect();
    Some(NetworkPolicyEgressRule {
        to: Some(to),
        ports: (!ports.is_empty()).then_some(ports),
    })
}

/// Pod status reasons meaning the pod was lost through no fault of the job.
const LOST_REASONS: [&str; 5] = [
    "Evicted",
    "NodeLost",
    "NodeShutdown",
    "Terminated",
    "Preempting",
];

/// Maps a pod to what the janitor and the watcher need; `None` for pods without a run id label.
pub fn observe_pod(pod: &Pod) -> Option<Observed> {
    let l = pod.metadata.labels.as_ref()?;
    let run_id = l.get(labels::RUN_ID)?.clone();
    let status = pod.status.clone().unwrap_or_default();
    let cs: Option<&ContainerStatus> = status
        .container_statuses
        .as_ref()
        .and_then(|v| v.iter().find(|c| c.name == CONTAINER).or_else(|| v.first()));
    let state = cs.and_then(|c| c.state.as_ref());
    let terminated = state.and_then(|s| s.terminated.as_ref());
    let running = state.and_then(|s| s.running.as_ref());
    let waiting = state.and_then(|s| s.waiting.as_ref());
    let unschedulable = status.conditions.as_ref().and_then(|cs| {
        cs.iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    });
    let disrupted = status.conditions.as_ref().is_some_and(|cs| {
        cs.iter()
            .any(|c| c.type_ == "DisruptionTarget" && c.status == "True")
    });
    let phase = match status.phase.as_deref() {
        Some("Running") => Phase::Running,
        Some("Succeeded") => Phase::Succeeded,
        Some("Failed") => Phase::Failed,
        _ => Phase::Pending,
    };
    let reason = status
        .reason
        .clone()
        .or_else(|| terminated.and_then(|t| t.reason.clone()))
        .or_else(|| waiting.and_then(|w| w.reason.clone()))
        .or_else(|| unschedulable.and_then(|c| c.reason.clone()));
    let message = status
        .message
        .clone()
        .or_else(|| terminated.and_then(|t| t.message.clone()))
        .or_else(|| waiting.and_then(|w| w.message.clone()))
        .or_else(|| unschedulable.and_then(|c| c.message.clone()));
    let lost = status
        .reason
        .as_deref()
        .is_some_and(|r| LOST_REASONS.contains(&r))
        || (disrupted && phase == Phase::Failed && terminated.is_none_or(|t| t.exit_code != 0));
    Some(Observed {
        run_id,
        queue: l.get(labels::QUEUE).cloned(),
        attempt: l
            .get(labels::ATTEMPT)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1),
        phase,
        exit_code: terminated.map(|t| t.exit_code),
        reason,
        message,
        started_at: running
            .and_then(|r| r.started_at.as_ref())
            .or_else(|| terminated.and_then(|t| t.started_at.as_ref()))
            .and_then(to_chrono),
        finished_at: terminated
            .and_then(|t| t.finished_at.as_ref())
            .and_then(to_chrono),
        lost,
    })
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

    fn meta(run_id: Option<&str>, created: i64, deleting: bool) -> ObjectMeta {
        let time = |secs: i64| {
            k8s_openapi::jiff::Timestamp::from_second(secs)
                .ok()
                .map(Time)
        };
        ObjectMeta {
            name: run_id.map(labels::object_name),
            labels: run_id.map(|id| BTreeMap::from([(labels::RUN_ID.to_string(), id.to_string())])),
            creation_timestamp: time(created),
            deletion_timestamp: if deleting { time(created + 5) } else { None },
            ..Default::default()
        }
    }

    #[test]
    fn objects_are_grouped_by_run_with_the_oldest_creation_time_and_terminating_only_when_all_are()
    {
        let mut runs = BTreeMap::new();
        // A run with a pod (being deleted) and its policy (not): something still needs a delete.
        assert!(add_object(&mut runs, &meta(Some("a"), 200, true)).is_some());
        add_object(&mut runs, &meta(Some("a"), 100, false));
        // A policy alone, being deleted.
        add_object(&mut runs, &meta(Some("b"), 300, true));
        // Not a run's object.
        assert!(add_object(&mut runs, &meta(None, 400, false)).is_none());
        let a = &runs["a"];
        assert_eq!(a.created_at, DateTime::from_timestamp(100, 0));
        assert!(!a.terminating && a.observed.is_none());
        let b = &runs["b"];
        assert_eq!(b.created_at, DateTime::from_timestamp(300, 0));
        assert!(b.terminating);
        assert_eq!(runs.len(), 2);
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
        assert!(!classify("x", api(422, "invalid")).is_retryable());
        assert!(!classify("x", api(400, "bad request")).is_retryable());
    }
}
