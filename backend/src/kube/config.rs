//! The Kubernetes backend's settings: [`KubeArgs`] (flags and environment) and [`KubeConfig`].
//!
//! Every default is a `DEFAULT_*` constant below, read by both the flags and [`KubeConfig::new`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use airlock_schemas::{EgressDestination, EgressPort};

/// Default sandbox namespace (`--namespace`).
pub const DEFAULT_NAMESPACE: &str = "airlock-sandbox";
/// Default `imagePullPolicy` of the job container.
pub const DEFAULT_IMAGE_PULL_POLICY: &str = "IfNotPresent";
/// Default uid (and gid) jobs run as.
pub const DEFAULT_RUN_AS_USER: i64 = 65532;
/// Default `terminationGracePeriodSeconds` of run pods.
pub const DEFAULT_TERMINATION_GRACE_SECONDS: i64 = 10;
/// Default TCP port of the NATS endpoint jobs publish results to.
pub const DEFAULT_NATS_EGRESS_PORT: u16 = 4222;
/// Default namespace labels of the cluster DNS.
pub const DEFAULT_DNS_NAMESPACE_LABELS: &str = "kubernetes.io/metadata.name=kube-system";
/// Default pod labels of the cluster DNS.
pub const DEFAULT_DNS_POD_LABELS: &str = "k8s-app=kube-dns";
/// Default timeout of each API call, as the flag spells it (a `humantime` duration).
pub const DEFAULT_API_TIMEOUT: &str = "15s";
/// Default of `--image-pull-grace`.
pub const DEFAULT_IMAGE_PULL_GRACE: &str = "60s";
/// Default of `--unschedulable-grace`.
pub const DEFAULT_UNSCHEDULABLE_GRACE: &str = "5m";

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
    #[arg(long, env = "AIRLOCK_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Kubeconfig file; otherwise `KUBECONFIG`, `~/.kube/config`, then the in-cluster service account.
    #[arg(long, env = "AIRLOCK_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// RuntimeClass of run pods (e.g. `gvisor`, `kata`); the cluster default when absent.
    #[arg(long, env = "AIRLOCK_RUNTIME_CLASS")]
    pub runtime_class: Option<String>,
    /// `imagePullPolicy` of the job container.
    #[arg(long, env = "AIRLOCK_IMAGE_PULL_POLICY", default_value = DEFAULT_IMAGE_PULL_POLICY)]
    pub image_pull_policy: String,
    /// Uid (and gid) the job runs as; never 0.
    #[arg(long, env = "AIRLOCK_POD_RUN_AS_USER", default_value_t = DEFAULT_RUN_AS_USER)]
    pub pod_run_as_user: i64,
    /// `terminationGracePeriodSeconds` of run pods.
    #[arg(long, env = "AIRLOCK_POD_TERMINATION_GRACE", default_value_t = DEFAULT_TERMINATION_GRACE_SECONDS)]
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
    #[arg(long, env = "AIRLOCK_NATS_EGRESS_PORT", default_value_t = DEFAULT_NATS_EGRESS_PORT)]
    pub nats_egress_port: u16,
    /// Allow DNS (port 53, UDP and TCP) to the cluster DNS pods.
    #[arg(long, env = "AIRLOCK_DNS_EGRESS", default_value_t = true, action = clap::ArgAction::Set)]
    pub dns_egress: bool,
    /// Namespace labels of the cluster DNS (`k=v`, comma-separated).
    #[arg(long, env = "AIRLOCK_DNS_NAMESPACE_LABELS", value_delimiter = ',', value_parser = parse_label,
          default_value = DEFAULT_DNS_NAMESPACE_LABELS)]
    pub dns_namespace_labels: Vec<(String, String)>,
    /// Pod labels of the cluster DNS (`k=v`, comma-separated).
    #[arg(long, env = "AIRLOCK_DNS_POD_LABELS", value_delimiter = ',', value_parser = parse_label,
          default_value = DEFAULT_DNS_POD_LABELS)]
    pub dns_pod_labels: Vec<(String, String)>,
    /// Timeout of each Kubernetes API call (watches excepted).
    #[arg(long, env = "AIRLOCK_KUBE_API_TIMEOUT", value_parser = humantime::parse_duration, default_value = DEFAULT_API_TIMEOUT)]
    pub kube_api_timeout: Duration,
    /// How long a run's pod may wait in `ErrImagePull`, `ImagePullBackOff`, `ErrImageNeverPull`,
    /// `InvalidImageName` or `CreateContainerConfigError` (counted from the pod's start on its node) before
    /// the run ends `failed` with that reason, instead of waiting for its deadline.
    #[arg(long, env = "AIRLOCK_IMAGE_PULL_GRACE", value_parser = humantime::parse_duration, default_value = DEFAULT_IMAGE_PULL_GRACE)]
    pub image_pull_grace: Duration,
    /// How long a run's pod may stay unschedulable (`PodScheduled=False`, reason `Unschedulable`: no node has
    /// room for its requests, or none matches it; counted from when the scheduler said so) before the run
    /// ends `failed` with `Unschedulable` and the scheduler's message, instead of waiting for its deadline.
    /// Room can free up as other pods finish, or a cluster autoscaler add a node: give it at least that
    /// long.
    #[arg(long, env = "AIRLOCK_UNSCHEDULABLE_GRACE", value_parser = humantime::parse_duration, default_value = DEFAULT_UNSCHEDULABLE_GRACE)]
    pub unschedulable_grace: Duration,
    /// Run the job as the image's `USER` instead of `--pod-run-as-user` (the pod keeps `runAsNonRoot`, so an
    /// image that would run as root, or names its user instead of a uid, fails with
    /// `CreateContainerConfigError`).
    #[arg(long, env = "AIRLOCK_POD_RUN_AS_IMAGE_USER", default_value_t = false, action = clap::ArgAction::Set)]
    pub pod_run_as_image_user: bool,
}

impl KubeArgs {
    /// The configuration these options describe (no named egress destinations: see
    /// [`super::KubeBackend::with_egress_catalog`]).
    pub fn config(&self) -> KubeConfig {
        let mut c = KubeConfig::new(&self.namespace);
        c.runtime_class.clone_from(&self.runtime_class);
        c.image_pull_policy.clone_from(&self.image_pull_policy);
        c.run_as_user = self.pod_run_as_user;
        c.termination_grace_seconds = self.pod_termination_grace;
        c.api_timeout = self.kube_api_timeout;
        c.image_pull_grace = self.image_pull_grace;
        c.unschedulable_grace = self.unschedulable_grace;
        c.run_as_image_user = self.pod_run_as_image_user;
        c.nats_egress = EgressDestination {
            cidrs: self.nats_egress_cidrs.clone(),
            pod_labels: self.nats_egress_pod_labels.iter().cloned().collect(),
            namespace_labels: self.nats_egress_namespace_labels.iter().cloned().collect(),
            ports: vec![tcp(self.nats_egress_port)],
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
                tcp(53),
            ],
        });
        c
    }
}

fn tcp(port: u16) -> EgressPort {
    EgressPort {
        port,
        protocol: "TCP".into(),
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
    /// How long a pod may wait with a container that cannot start (its image cannot be pulled, its
    /// configuration is invalid) before its run fails.
    pub image_pull_grace: Duration,
    /// How long a pod may stay unschedulable before its run fails.
    pub unschedulable_grace: Duration,
    /// Leave the uid to the image's `USER` (no `runAsUser`/`runAsGroup`; `runAsNonRoot` stays).
    pub run_as_image_user: bool,
}

impl KubeConfig {
    /// Defaults for everything but the namespace: no NATS or DNS egress, no named destinations.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            runtime_class: None,
            image_pull_policy: DEFAULT_IMAGE_PULL_POLICY.into(),
            run_as_user: DEFAULT_RUN_AS_USER,
            termination_grace_seconds: DEFAULT_TERMINATION_GRACE_SECONDS,
            nats_egress: EgressDestination {
                cidrs: Vec::new(),
                pod_labels: BTreeMap::new(),
                namespace_labels: BTreeMap::new(),
                ports: Vec::new(),
            },
            dns_egress: None,
            egress: BTreeMap::new(),
            api_timeout: humantime::parse_duration(DEFAULT_API_TIMEOUT)
                .expect("DEFAULT_API_TIMEOUT is a valid duration (tested)"),
            image_pull_grace: humantime::parse_duration(DEFAULT_IMAGE_PULL_GRACE)
                .expect("DEFAULT_IMAGE_PULL_GRACE is a valid duration (tested)"),
            unschedulable_grace: humantime::parse_duration(DEFAULT_UNSCHEDULABLE_GRACE)
                .expect("DEFAULT_UNSCHEDULABLE_GRACE is a valid duration (tested)"),
            run_as_image_user: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_defaults_and_new_agree() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            kube: KubeArgs,
        }
        let args = <Cli as clap::Parser>::try_parse_from(["test"]).map(|c| c.kube);
        let Ok(args) = args else {
            panic!("the defaults parse: {args:?}");
        };
        let (from_args, new) = (args.config(), KubeConfig::new(DEFAULT_NAMESPACE));
        assert_eq!(
            (
                from_args.image_pull_policy,
                from_args.run_as_user,
                from_args.termination_grace_seconds,
                from_args.api_timeout,
                from_args.image_pull_grace,
                from_args.unschedulable_grace,
                from_args.run_as_image_user,
            ),
            (
                new.image_pull_policy,
                new.run_as_user,
                new.termination_grace_seconds,
                new.api_timeout,
                new.image_pull_grace,
                new.unschedulable_grace,
                new.run_as_image_user,
            )
        );
        assert_eq!(new.image_pull_grace, Duration::from_secs(60));
        assert_eq!(new.unschedulable_grace, Duration::from_secs(300));
    }
}
