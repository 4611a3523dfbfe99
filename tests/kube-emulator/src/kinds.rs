//! The resource kinds the emulator serves and their REST metadata.

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
}

impl Kind {
    /// Every kind served.
    pub const ALL: [Kind; 4] = [Kind::Pod, Kind::NetworkPolicy, Kind::Namespace, Kind::Event];

    /// The `kind` string, e.g. `Pod`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Namespace => "Namespace",
            Kind::Event => "Event",
        }
    }

    /// The REST plural, e.g. `pods`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::Namespace => "namespaces",
            Kind::Event => "events",
        }
    }

    /// The singular name used in discovery.
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Pod => "pod",
            Kind::NetworkPolicy => "networkpolicy",
            Kind::Namespace => "namespace",
            Kind::Event => "event",
        }
    }

    /// The API group (`""` for core).
    pub fn group(self) -> &'static str {
        match self {
            Kind::NetworkPolicy => "networking.k8s.io",
            _ => "",
        }
    }

    /// The `apiVersion` string, e.g. `networking.k8s.io/v1`.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            _ => "v1",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace)
    }

    /// Short names advertised in discovery.
    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Kind::Pod => &["po"],
            Kind::NetworkPolicy => &["netpol"],
            Kind::Namespace => &["ns"],
            Kind::Event => &["ev"],
        }
    }

    /// Look a kind up by its plural within an API group.
    pub fn from_plural(group: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.plural() == plural)
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
