//! The run's objects as the API wants them: its NetworkPolicy and its Pod, and whether an object found
//! under the run's name is this run's.

use std::collections::BTreeMap;

use airlock_schemas::{EgressDestination, ResourceList, labels};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, Pod, PodSecurityContext, PodSpec, ResourceRequirements,
    SeccompProfile, SecurityContext,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tracing::debug;

use super::{CONTAINER, KubeBackend, KubeConfig};
use crate::{BackendError, LaunchSpec};

impl KubeBackend {
    /// The run's NetworkPolicy.
    pub fn network_policy(&self, spec: &LaunchSpec) -> Result<NetworkPolicy, BackendError> {
        let c = self.config();
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
        let mut rules = Vec::new();
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
            metadata: run_meta(c, spec, run_labels(spec)),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(peer_selector(&BTreeMap::from([(
                    labels::RUN_ID.to_string(),
                    spec.run_id().to_string(),
                )]))),
                policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
                ingress: Some(Vec::new()),
                egress: Some(rules),
            }),
        })
    }

    /// The run's Pod.
    pub fn pod(&self, spec: &LaunchSpec) -> Pod {
        let c = self.config();
        let mut pod_labels: BTreeMap<String, String> = spec.run.request.labels.clone();
        pod_labels.extend(run_labels(spec));
        let uid = (!c.run_as_image_user).then_some(c.run_as_user.max(1));
        Pod {
            metadata: run_meta(c, spec, pod_labels),
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
                    run_as_user: uid,
                    run_as_group: uid,
                    seccomp_profile: Some(runtime_default_seccomp()),
                    ..Default::default()
                }),
                containers: vec![job_container(c, spec, uid)],
                ..Default::default()
            }),
            status: None,
        }
    }
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

/// Name, namespace and labels of one of the run's objects.
fn run_meta(c: &KubeConfig, spec: &LaunchSpec, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(labels::object_name(spec.run_id())),
        namespace: Some(c.namespace.clone()),
        labels: Some(labels),
        ..Default::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

/// The job's container: the request's image, command and resources, locked down.
fn job_container(c: &KubeConfig, spec: &LaunchSpec, uid: Option<i64>) -> Container {
    let req = &spec.run.request;
    Container {
        name: CONTAINER.into(),
        image: Some(req.image.clone()),
        image_pull_policy: Some(
            req.image_pull_policy
                .map_or_else(|| c.image_pull_policy.clone(), |p| p.as_str().to_string()),
        ),
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
            requests: quantities(&req.resources.requests),
            limits: quantities(&req.resources.limits),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            run_as_non_root: Some(true),
            run_as_user: uid,
            run_as_group: uid,
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A resource list as quantities; `None` when it sets nothing.
fn quantities(l: &ResourceList) -> Option<BTreeMap<String, Quantity>> {
    let mut m = BTreeMap::new();
    if let Some(cpu) = &l.cpu {
        m.insert("cpu".to_string(), Quantity(cpu.clone()));
    }
    if let Some(mem) = &l.memory {
        m.insert("memory".to_string(), Quantity(mem.clone()));
    }
    (!m.is_empty()).then_some(m)
}

/// Checks that an object found on 409 is this run's (same run id and attempt).
pub(super) fn check_ours(
    kind: &str,
    meta: &ObjectMeta,
    spec: &LaunchSpec,
) -> Result<(), BackendError> {
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
