//! [`RunRequest`] v1 and its validation against the operator [`Policy`].

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::limits::{MAX_ARGV_ITEMS, MAX_EGRESS};
use crate::{env, json, labels, limits, quantity};

/// A request to run one container, published to `airlock.runs.<queue>`.
///
/// Publishers should set `Nats-Msg-Id` to `id` so a retried publish is deduplicated by the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Run id: 1-40 characters of `[a-z0-9-]`, starting and ending alphanumeric.
    pub id: String,
    /// Container image reference, e.g. `docker.io/library/python:3.12`.
    pub image: String,
    /// When to pull the image: `IfNotPresent` (the default), `Always` or `Never`, as Kubernetes means them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// Entrypoint override. With `args`: at most 1,000 items and 128 KiB together.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ARGV_ITEMS))]
    pub command: Vec<String>,
    /// Arguments. With `command`: at most 1,000 items and 128 KiB together.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ARGV_ITEMS))]
    pub args: Vec<String>,
    /// Environment variables; names under `AIRLOCK_` are reserved. At most 1,000 entries and 128 KiB of
    /// names and values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 1000))]
    pub env: BTreeMap<String, String>,
    /// CPU and memory requests and limits; policy defaults fill what is missing.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// Wall-clock deadline for the whole run, Pending included; policy default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_seconds: Option<u64>,
    /// Names of operator-defined egress destinations the job may reach (at most 64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_EGRESS))]
    pub egress: Vec<String>,
    /// Labels put on the pod (the `airlock.dev/` prefix is reserved). At most 64 labels and 16 KiB of keys
    /// and values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub labels: BTreeMap<String, String>,
    /// Opaque JSON echoed in lifecycle events; at most 16 KiB encoded as compact JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

/// When the runtime pulls a run's image (Kubernetes' `imagePullPolicy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ImagePullPolicy {
    /// Pull only when the image is not cached.
    #[default]
    IfNotPresent,
    /// Resolve the reference at the registry on every run (cached layers are reused).
    Always,
    /// Never contact a registry: the image must already be cached.
    Never,
}

impl ImagePullPolicy {
    /// The Kubernetes spelling (`IfNotPresent`, `Always`, `Never`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IfNotPresent => "IfNotPresent",
            Self::Always => "Always",
            Self::Never => "Never",
        }
    }
}

/// Requests and limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// What the job is guaranteed.
    #[serde(default, skip_serializing_if = "ResourceList::is_empty")]
    pub requests: ResourceList,
    /// What the job may use at most.
    #[serde(default, skip_serializing_if = "ResourceList::is_empty")]
    pub limits: ResourceList,
}

impl Resources {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.limits.is_empty()
    }
}

/// CPU and memory as Kubernetes quantities.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceList {
    /// CPU, e.g. `500m` or `2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory, e.g. `256Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

impl ResourceList {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none()
    }
}

/// An operator-defined egress destination a request may name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressDestination {
    /// IP blocks (CIDR) the job may reach.
    #[serde(default)]
    pub cidrs: Vec<String>,
    /// Pods (by labels) the job may reach, in namespaces matching `namespace_labels`.
    #[serde(default)]
    pub pod_labels: BTreeMap<String, String>,
    /// Namespaces (by labels) for `pod_labels`; empty means the sandbox namespace.
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, String>,
    /// Ports; empty means all ports.
    #[serde(default)]
    pub ports: Vec<EgressPort>,
}

/// A port of an egress destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressPort {
    /// Port number.
    pub port: u16,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
}

fn default_protocol() -> String {
    "TCP".into()
}

/// Operator policy: the bounds every request must fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Deadline when the request sets none.
    pub default_deadline_seconds: u64,
    /// Largest deadline a request may ask for.
    pub max_deadline_seconds: u64,
    /// Requests and limits used where the request sets none.
    pub default_resources: Resources,
    /// Largest CPU request or limit, in millicores.
    pub max_cpu_millis: u64,
    /// Largest memory request or limit, in bytes.
    pub max_memory_bytes: u64,
    /// Largest encoded request, in bytes.
    pub max_request_bytes: usize,
    /// Egress destinations a request may name.
    pub egress: BTreeMap<String, EgressDestination>,
    /// Image prefixes allowed (`docker.io/library/` or an exact reference); empty allows any image.
    pub image_allowlist: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            default_deadline_seconds: 600,
            max_deadline_seconds: 6 * 3600,
            default_resources: Resources {
                requests: ResourceList {
                    cpu: Some("100m".into()),
                    memory: Some("128Mi".into()),
                },
                limits: ResourceList {
                    cpu: Some("1".into()),
                    memory: Some("512Mi".into()),
                },
            },
            max_cpu_millis: 4000,
            max_memory_bytes: 8 * 1024 * 1024 * 1024,
            max_request_bytes: 64 * 1024,
            egress: BTreeMap::new(),
            image_allowlist: Vec::new(),
        }
    }
}

/// One problem with a request, with the path of the field (`env.AIRLOCK_X: reserved prefix`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FieldError {
    /// Dotted path of the field (`.` for the whole document).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl FieldError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A request that passed validation, with policy defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedRun {
    /// The request, with `resources` and `deadline_seconds` filled from policy.
    pub request: RunRequest,
    /// Queue it came from.
    pub queue: String,
    /// Effective deadline.
    pub deadline_seconds: u64,
}

static NAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$").expect("valid regex"));
static ENV_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*$").expect("valid regex"));
static LABEL_NAME_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$").expect("valid regex")
});
static LABEL_VALUE_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$").expect("valid regex")
});
static DNS_SUBDOMAIN_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        .expect("valid regex")
});
// The reference grammar of distribution/reference: [domain[:port]/]path[:tag][@digest].
static IMAGE_RE: LazyLock<Regex> = LazyLock::new(|| {
    let domain_component = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
    let domain =
        format!(r"(?:{domain_component}(?:\.{domain_component})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?");
    let path_component = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*";
    let tag = r"[\w][\w.-]{0,127}";
    let digest = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}";
    Regex::new(&format!(
        r"^(?:{domain}/)?{path_component}(?:/{path_component})*(?::{tag})?(?:@{digest})?$"
    ))
    .expect("valid regex")
});

/// Whether `s` is a valid run id or queue name: 1-40 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_valid_name(s: &str) -> bool {
    NAME_RE.is_match(s)
}

/// Decodes a request, reporting every problem with its path: the body must be exactly one JSON object
/// ([`json::from_slice_object`]); its syntax and type errors come first (serde stops at the first one),
/// otherwise every contract, size and policy violation (at most [`MAX_REPORTED`] of them).
pub fn decode_request(
    bytes: &[u8],
    queue: &str,
    policy: &Policy,
) -> Result<ValidatedRun, Vec<FieldError>> {
    if bytes.len() > policy.max_request_bytes {
        return Err(vec![FieldError::new(
            ".",
            format!(
                "request is {} bytes, the limit is {}",
                bytes.len(),
                policy.max_request_bytes
            ),
        )]);
    }
    let request: RunRequest = json::from_slice_object(bytes).map_err(|e| vec![e])?;
    request.validate(queue, policy)
}

impl RunRequest {
    /// Checks the request against the contract and `policy`, returning every problem found.
    pub fn validate(
        mut self,
        queue: &str,
        policy: &Policy,
    ) -> Result<ValidatedRun, Vec<FieldError>> {
        let mut p = Problems::default();
        if !is_valid_name(queue) {
            p.add("queue", NAME_RULE);
        }
        if !is_valid_name(&self.id) {
            p.add("id", NAME_RULE);
        }
        self.check_image(policy, &mut p);
        p.0.extend(limits::check(&self));
        self.check_argv_and_env(&mut p);
        self.check_labels(&mut p);
        self.check_deadline_and_egress(policy, &mut p);
        self.fill_resources(&policy.default_resources);
        check_resources(&self.resources, policy, &mut p);
        if p.0.len() > MAX_REPORTED {
            let more = p.0.len() - MAX_REPORTED;
            p.0.truncate(MAX_REPORTED);
            p.add(".", format!("and {more} more problems"));
        }
        if !p.0.is_empty() {
            return Err(p.0);
        }
        let deadline_seconds = self
            .deadline_seconds
            .unwrap_or(policy.default_deadline_seconds);
        self.deadline_seconds = Some(deadline_seconds);
        Ok(ValidatedRun {
            request: self,
            queue: queue.to_string(),
            deadline_seconds,
        })
    }

    fn check_image(&self, policy: &Policy, p: &mut Problems) {
        let allowed = |a: &String| {
            self.image == *a || (a.ends_with('/') && self.image.starts_with(a.as_str()))
        };
        if self.image.is_empty() {
            p.add("image", "required");
        } else if self.image.len() > 512 || !IMAGE_RE.is_match(&self.image) {
            p.add("image", "not a valid image reference");
        } else if !policy.image_allowlist.is_empty() && !policy.image_allowlist.iter().any(allowed)
        {
            p.add("image", "image not in the operator's allowlist");
        }
    }

    fn check_argv_and_env(&self, p: &mut Problems) {
        for (name, list) in [("command", &self.command), ("args", &self.args)] {
            for (i, a) in list.iter().enumerate() {
                if a.contains('\0') {
                    p.add(format!("{name}.{i}"), "contains a NUL byte");
                }
            }
        }
        for (k, v) in &self.env {
            let path = format!("env.{k}");
            if k.starts_with(env::RESERVED_PREFIX) {
                p.add(path, "reserved prefix");
            } else if !ENV_RE.is_match(k) {
                p.add(path, "not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)");
            } else if v.contains('\0') {
                p.add(path, "value contains a NUL byte");
            }
        }
    }

    fn check_labels(&self, p: &mut Problems) {
        check_labels(&self.labels, p);
    }

    fn check_deadline_and_egress(&self, policy: &Policy, p: &mut Problems) {
        match self.deadline_seconds {
            Some(0) => p.add("deadline_seconds", "must be at least 1"),
            Some(d) if d > policy.max_deadline_seconds => p.add(
                "deadline_seconds",
                format!(
                    "exceeds the policy maximum of {}",
                    policy.max_deadline_seconds
                ),
            ),
            _ => {}
        }
        for (i, name) in self.egress.iter().enumerate() {
            if !policy.egress.contains_key(name) {
                p.add(
                    format!("egress.{i}"),
                    format!("unknown egress destination {name:?}"),
                );
            }
        }
    }

    /// Fills what the request leaves out of its resources from the policy's defaults.
    fn fill_resources(&mut self, d: &Resources) {
        let r = &mut self.resources;
        fill(&mut r.requests.cpu, &d.requests.cpu);
        fill(&mut r.requests.memory, &d.requests.memory);
        fill(&mut r.limits.cpu, &d.limits.cpu);
        fill(&mut r.limits.memory, &d.limits.memory);
    }
}

/// Most problems reported for one request (then a count of the rest).
pub const MAX_REPORTED: usize = 50;

const NAME_RULE: &str = "must be 1-40 characters of [a-z0-9-], alphanumeric at both ends";

/// Every problem found, with its path.
#[derive(Default)]
struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(path, message));
    }
}

/// Checks each quantity against the policy bounds, and that requests do not exceed limits.
fn check_resources(r: &Resources, policy: &Policy, p: &mut Problems) {
    let mut cpu = [None, None];
    let mut mem = [None, None];
    for (i, (kind, list)) in [("requests", &r.requests), ("limits", &r.limits)]
        .into_iter()
        .enumerate()
    {
        if let Some(q) = &list.cpu {
            let path = format!("resources.{kind}.cpu");
            let max = format!("exceeds the policy maximum of {}m", policy.max_cpu_millis);
            cpu[i] = bounded(
                quantity::cpu_millis(q),
                q,
                policy.max_cpu_millis,
                max,
                path,
                p,
            );
        }
        if let Some(q) = &list.memory {
            let path = format!("resources.{kind}.memory");
            let max = format!(
                "exceeds the policy maximum of {} bytes",
                policy.max_memory_bytes
            );
            mem[i] = bounded(quantity::bytes(q), q, policy.max_memory_bytes, max, path, p);
        }
    }
    if let [Some(req), Some(lim)] = cpu
        && req > lim
    {
        p.add("resources.requests.cpu", "exceeds resources.limits.cpu");
    }
    if let [Some(req), Some(lim)] = mem
        && req > lim
    {
        p.add(
            "resources.requests.memory",
            "exceeds resources.limits.memory",
        );
    }
}

/// The parsed quantity `q` when it is valid, positive and at most `max`; otherwise records why at `path`.
fn bounded(
    parsed: Option<u64>,
    q: &str,
    max: u64,
    too_big: String,
    path: String,
    p: &mut Problems,
) -> Option<u64> {
    match parsed {
        None => p.add(path, format!("not a valid quantity: {q:?}")),
        Some(v) if v > max => p.add(path, too_big),
        Some(0) => p.add(path, "must be positive"),
        Some(v) => return Some(v),
    }
    None
}

fn fill(slot: &mut Option<String>, default: &Option<String>) {
    if slot.is_none() {
        slot.clone_from(default);
    }
}

/// Each label's key (not reserved, a valid Kubernetes label key) and value.
fn check_labels(labels: &BTreeMap<String, String>, p: &mut Problems) {
    for (k, v) in labels {
        let path = format!("labels.{k}");
        if k.starts_with(labels::RESERVED_PREFIX) || k == labels::MANAGED_BY {
            p.add(path.clone(), "reserved label");
        } else if !valid_label_key(k) {
            p.add(path.clone(), "not a valid label key");
        }
        if !LABEL_VALUE_RE.is_match(v) {
            p.add(
                path,
                "not a valid label value (at most 63 of [A-Za-z0-9-_.], alphanumeric at both ends)",
            );
        }
    }
}

/// Whether `labels` pass every check the contract makes on a request's labels: each key and value, and the
/// count and size bounds ([`limits::MAX_LABELS`], [`limits::MAX_LABELS_BYTES`]). A valid request's labels
/// always do; the run store indexes a record's labels only when they do.
pub fn labels_are_valid(labels: &BTreeMap<String, String>) -> bool {
    let mut p = Problems::default();
    check_labels(labels, &mut p);
    p.0.is_empty() && limits::check_labels(labels).is_empty()
}

fn valid_label_key(k: &str) -> bool {
    match k.split_once('/') {
        Some((prefix, name)) => {
            prefix.len() <= 253 && DNS_SUBDOMAIN_RE.is_match(prefix) && LABEL_NAME_RE.is_match(name)
        }
        None => LABEL_NAME_RE.is_match(k),
    }
}
