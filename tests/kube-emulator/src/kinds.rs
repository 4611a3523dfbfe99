//! The resource kinds the emulator serves and their REST metadata.
//!
//! Pods, NetworkPolicies, Namespaces and Events have behaviour of their own; the other kinds
//! (what `deploy/` applies: Deployments, RBAC, ConfigMaps, ...) are stored generically after
//! strict decoding into their k8s-openapi types.

use serde::{Deserialize, Serialize};

/// A resource kind served by the emulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// `v1/Pod` (namespaced).
    Pod,
    /// `networking.k8s.io/v1/NetworkPolicy` (namespaced).
    NetworkPolicy,
    /// `v1/Namespace` (cluster-scoped).
    Namespace,
    /// `v1/Event` (namespaced).
    Event,
    /// `v1/ConfigMap` (namespaced, stored generically).
    ConfigMap,
    /// `v1/Secret` (namespaced, stored generically).
    Secret,
    /// `v1/ServiceAccount` (namespaced, stored generically).
    ServiceAccount,
    /// `v1/Service` (namespaced, stored generically).
    Service,
    /// `v1/LimitRange` (namespaced, stored generically).
    LimitRange,
    /// `v1/ResourceQuota` (namespaced, stored generically).
    ResourceQuota,
    /// `apps/v1/Deployment` (namespaced, stored generically: no controller runs it).
    Deployment,
    /// `apps/v1/StatefulSet` (namespaced, stored generically: no controller runs it).
    StatefulSet,
    /// `rbac.authorization.k8s.io/v1/Role` (namespaced, stored generically).
    Role,
    /// `rbac.authorization.k8s.io/v1/RoleBinding` (namespaced, stored generically).
    RoleBinding,
    /// `policy/v1/PodDisruptionBudget` (namespaced, stored generically).
    PodDisruptionBudget,
    /// `coordination.k8s.io/v1/Lease` (namespaced, stored generically; updates need the current
    /// `resourceVersion`, as everywhere).
    Lease,
}

/// REST metadata of one kind.
struct Info {
    name: &'static str,
    plural: &'static str,
    group: &'static str,
    short: &'static [&'static str],
}

impl Kind {
    /// Every kind served.
    pub const ALL: [Kind; 16] = [
        Kind::Pod,
        Kind::NetworkPolicy,
        Kind::Namespace,
        Kind::Event,
        Kind::ConfigMap,
        Kind::Secret,
        Kind::ServiceAccount,
        Kind::Service,
        Kind::LimitRange,
        Kind::ResourceQuota,
        Kind::Deployment,
        Kind::StatefulSet,
        Kind::Role,
        Kind::RoleBinding,
        Kind::PodDisruptionBudget,
        Kind::Lease,
    ];

    /// Every API group served besides core, in discovery order.
    pub const GROUPS: [&'static str; 5] = [
        "networking.k8s.io",
        "apps",
        "rbac.authorization.k8s.io",
        "policy",
        "coordination.k8s.io",
    ];

    fn info(self) -> Info {
        let i = |name, plural, group, short| Info {
            name,
            plural,
            group,
            short,
        };
        match self {
            Kind::Pod => i("Pod", "pods", "", &["po"]),
            Kind::NetworkPolicy => i(
                "NetworkPolicy",
                "networkpolicies",
                "networking.k8s.io",
                &["netpol"],
            ),
            Kind::Namespace => i("Namespace", "namespaces", "", &["ns"]),
            Kind::Event => i("Event", "events", "", &["ev"]),
            Kind::ConfigMap => i("ConfigMap", "configmaps", "", &["cm"]),
            Kind::Secret => i("Secret", "secrets", "", &[]),
            Kind::ServiceAccount => i("ServiceAccount", "serviceaccounts", "", &["sa"]),
            Kind::Service => i("Service", "services", "", &["svc"]),
            Kind::LimitRange => i("LimitRange", "limitranges", "", &["limits"]),
            Kind::ResourceQuota => i("ResourceQuota", "resourcequotas", "", &["quota"]),
            Kind::Deployment => i("Deployment", "deployments", "apps", &["deploy"]),
            Kind::StatefulSet => i("StatefulSet", "statefulsets", "apps", &["sts"]),
            Kind::Role => i("Role", "roles", "rbac.authorization.k8s.io", &[]),
            Kind::RoleBinding => i(
                "RoleBinding",
                "rolebindings",
                "rbac.authorization.k8s.io",
                &[],
            ),
            Kind::PodDisruptionBudget => i(
                "PodDisruptionBudget",
                "poddisruptionbudgets",
                "policy",
                &["pdb"],
            ),
            Kind::Lease => i("Lease", "leases", "coordination.k8s.io", &[]),
        }
    }

    /// The `kind` string, e.g. `Pod`.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The REST plural, e.g. `pods`.
    pub fn plural(self) -> &'static str {
        self.info().plural
    }

    /// The singular name used in discovery (the lower-cased kind).
    pub fn singular(self) -> String {
        self.name().to_ascii_lowercase()
    }

    /// The API group (`""` for core).
    pub fn group(self) -> &'static str {
        self.info().group
    }

    /// The `apiVersion` string, e.g. `networking.k8s.io/v1`.
    pub fn api_version(self) -> String {
        match self.group() {
            "" => "v1".to_string(),
            g => format!("{g}/v1"),
        }
    }

    /// `Deployment.apps`, or just `Pod` for core kinds, as in 422 messages.
    pub fn qualified_name(self) -> String {
        match self.group() {
            "" => self.name().to_string(),
            g => format!("{}.{g}", self.name()),
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace)
    }

    /// Whether the emulator stores this kind without behaviour of its own.
    pub fn generic(self) -> bool {
        !matches!(
            self,
            Kind::Pod | Kind::NetworkPolicy | Kind::Namespace | Kind::Event
        )
    }

    /// Short names advertised in discovery.
    pub fn short_names(self) -> &'static [&'static str] {
        self.info().short
    }

    /// Look a kind up by its plural within an API group.
    pub fn from_plural(group: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.plural() == plural)
    }

    /// Look a kind up by its `apiVersion` and `kind`.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.name() == kind)
    }

    /// Look a kind up by name (`Pod`), plural (`pods`) or singular, case-insensitively.
    pub fn parse(s: &str) -> Option<Kind> {
        let s = s.to_ascii_lowercase();
        Kind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(&s) || k.plural() == s || k.singular() == s)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
