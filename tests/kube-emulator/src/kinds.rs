//! The resource kinds the emulator serves and their REST metadata.
//!
//! What Airlock's services use: Pods and NetworkPolicies (with behaviour of their own), the Leases of the
//! dispatcher's watch lease (stored as they are), and Namespaces, which hold them.

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
    /// `coordination.k8s.io/v1/Lease` (namespaced; updates need the current `resourceVersion`, as
    /// everywhere).
    Lease,
}

impl Kind {
    /// Every kind served.
    pub const ALL: [Kind; 4] = [Kind::Pod, Kind::NetworkPolicy, Kind::Namespace, Kind::Lease];

    /// Every API group served besides core.
    pub const GROUPS: [&'static str; 2] = ["networking.k8s.io", "coordination.k8s.io"];

    /// The `kind` string, e.g. `Pod`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Namespace => "Namespace",
            Kind::Lease => "Lease",
        }
    }

    /// The REST plural, e.g. `pods`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::Namespace => "namespaces",
            Kind::Lease => "leases",
        }
    }

    /// The API group (`""` for core).
    pub fn group(self) -> &'static str {
        match self {
            Kind::Pod | Kind::Namespace => "",
            Kind::NetworkPolicy => "networking.k8s.io",
            Kind::Lease => "coordination.k8s.io",
        }
    }

    /// The `apiVersion` string, e.g. `networking.k8s.io/v1`.
    pub fn api_version(self) -> String {
        match self.group() {
            "" => "v1".to_string(),
            g => format!("{g}/v1"),
        }
    }

    /// `NetworkPolicy.networking.k8s.io`, or just `Pod` for core kinds, as in 422 messages.
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

    /// Look a kind up by its plural within an API group.
    pub fn from_plural(group: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.plural() == plural)
    }

    /// Look a kind up by name (`Pod`) or plural (`pods`), case-insensitively.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s) || k.plural().eq_ignore_ascii_case(s))
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
