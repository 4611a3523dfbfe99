//! Airlock's backends: where runs execute, Kubernetes pods or local bubblewrap sandboxes.
//!
//! Above `airlock-schemas` and `airlock-runtime` (for its metrics: API calls by verb and code): the dispatcher
//! and the janitor use it; the ingester does not (it never touches a job), so it compiles neither kube nor the
//! sandbox.
//!
//! The dispatcher calls [`Backend::launch`]; the dispatcher's watcher follows [`Backend::watch`]; the janitor
//! calls [`Backend::observe`], [`Backend::logs_tail`], [`Backend::remove`] and, for sweeps,
//! [`Backend::list_objects`]; the API calls [`Backend::logs_tail`] and [`Backend::logs_follow`]. Every call is idempotent and keyed by run id, so redeliveries and replicas are
//! harmless.
//!
//! # Listing
//! Two listings, for two questions:
//! - [`Backend::list`]: the runs' **jobs** (pods, or local processes), one [`Observed`] each, as
//!   [`Backend::observe`] and [`Backend::watch`] report them. "What is running?" (the dispatcher's slot
//!   reconciliation, the local watcher's re-list.)
//! - [`Backend::list_objects`]: everything the backend still **holds**, one [`RunObjects`] per run id,
//!   including runs with nothing but leftovers (a NetworkPolicy whose pod is gone or was never created, a
//!   local run directory without a readable status). Its `observed` is `None` for those, rather than a
//!   made-up phase, so no caller can mistake a leftover for a job. It also carries what a sweep needs to
//!   judge the objects exactly: when they were created and whether their deletion is under way. "What must
//!   be cleaned up?" (the janitor's sweep.)
//!
//! # Layout
//! - `error`: [`BackendError`], with its typed source and retry class.
//! - `reason`: [`Reason`], why a job is in its phase, and [`Stuck`], the reasons it will not leave by itself.
//! - `follow`: [`Backend::logs_follow`], a run's output as it is written.
//! - `kube`: pods and per-run NetworkPolicies through the Kubernetes API.
//! - `local`: bubblewrap process trees supervised by the dispatcher, state in a directory the janitor reads.

use std::collections::BTreeMap;

use airlock_schemas::{EgressDestination, Subjects, ValidatedRun};
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

mod error;
mod follow;
pub mod kube;
pub mod local;
mod reason;

pub use error::BackendError;
pub use reason::{ImagePull, Reason, Stuck};

/// Which backend runs the jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RuntimeKind {
    /// Pods on Kubernetes, each behind its own NetworkPolicy (alias: `kube`).
    #[default]
    #[value(name = "kubernetes", alias = "kube")]
    Kube,
    /// Local bubblewrap sandboxes on this host.
    Local,
}

/// Backend settings shared by the dispatcher and the janitor (`#[command(flatten)]` them).
#[derive(Debug, Clone, clap::Args)]
pub struct BackendArgs {
    /// Where runs execute: `kubernetes` (pods, the default) or `local` (bubblewrap sandboxes on this host).
    #[arg(long = "runtime", env = "AIRLOCK_RUNTIME", value_enum, default_value_t = RuntimeKind::Kube)]
    pub runtime: RuntimeKind,
    /// Kubernetes settings (used with `--runtime kubernetes`).
    #[command(flatten)]
    pub kube: kube::KubeArgs,
    /// Local sandbox settings (used with `--runtime local`).
    #[command(flatten)]
    pub local: local::LocalArgs,
}

impl Backend {
    /// Builds the configured backend. `nats` and `subjects` are used by the local runtime, which publishes
    /// results itself; the Kubernetes backend connects to the cluster from `--kubeconfig`, `KUBECONFIG`,
    /// `~/.kube/config` or the in-cluster service account, in that order.
    pub async fn from_args(
        args: &BackendArgs,
        nats: &async_nats::Client,
        subjects: &Subjects,
    ) -> Result<Backend, BackendError> {
        match args.runtime {
            RuntimeKind::Kube => Ok(Backend::Kube(
                kube::KubeBackend::from_args(&args.kube).await?,
            )),
            RuntimeKind::Local => Ok(Backend::Local(local::LocalBackend::new(
                args.local.config(),
                nats.clone(),
                subjects.clone(),
            )?)),
        }
    }

    /// Gives the backend the operator's named egress destinations (the policy's `egress`), which the
    /// Kubernetes backend turns into NetworkPolicy rules; the local backend has no network and ignores them.
    /// Only the dispatcher needs this.
    pub fn with_egress_catalog(self, egress: BTreeMap<String, EgressDestination>) -> Self {
        match self {
            Backend::Kube(k) => Backend::Kube(k.with_egress_catalog(egress)),
            other => other,
        }
    }

    /// The same backend, counting its API calls into `metrics` (`airlock_backend_api_calls_total`).
    pub fn with_metrics(self, metrics: &airlock_runtime::metrics::Metrics) -> Self {
        match self {
            Backend::Kube(k) => Backend::Kube(k.with_metrics(metrics.clone())),
            other => other,
        }
    }

    /// Which kind of backend this is.
    pub fn kind(&self) -> RuntimeKind {
        match self {
            Backend::Kube(_) => RuntimeKind::Kube,
            Backend::Local(_) => RuntimeKind::Local,
        }
    }
}

/// What a backend is asked to run.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The validated request (policy defaults applied) and its queue.
    pub run: ValidatedRun,
    /// Attempt number, 1-based.
    pub attempt: u32,
    /// The job environment: the request's `env` plus the reserved `AIRLOCK_*` variables.
    pub env: BTreeMap<String, String>,
}

impl LaunchSpec {
    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.run.request.id
    }
}

/// Phase of a run's pod or process, as Kubernetes names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Created, not started (scheduling, pulling, or stuck).
    Pending,
    /// Started.
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero, was killed, or could not run.
    Failed,
}

impl Phase {
    /// Whether the job is over.
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// What a backend observes of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Run id (from the `airlock.dev/run-id` label or the state directory).
    pub run_id: String,
    /// Queue (from the `airlock.dev/queue` label).
    pub queue: Option<String>,
    /// Attempt (from the `airlock.dev/attempt` label).
    pub attempt: u32,
    /// Phase.
    pub phase: Phase,
    /// Exit code of the job's main process, when it exited.
    pub exit_code: Option<i32>,
    /// Why the job is in its phase (a finished job: how it ended; a pending one: why it waits).
    pub reason: Option<Reason>,
    /// Human-readable detail.
    pub message: Option<String>,
    /// Pending only: since when the job waits where it waits now. A pod the scheduler cannot place since
    /// its `PodScheduled` condition turned `False`, a pod on its node since its `startTime` (before
    /// pulling); either since its creation when the pod does not say. `None` locally.
    pub waiting_since: Option<DateTime<Utc>>,
    /// When the job started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the job finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// The job was lost through no fault of its own (evicted, node lost, supervisor gone): it may be re-run.
    pub lost: bool,
    /// How the runtime made the run's image present, once it did (the local runtime; on Kubernetes the
    /// kubelet pulls and keeps its own figures).
    pub image_fetch: Option<ImageFetch>,
}

/// How a run's image was made present.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageFetch {
    /// The image store had it.
    Cached,
    /// It was fetched from its registry, downloading `bytes` of blobs.
    Pulled {
        /// Bytes of blobs downloaded (0: only the manifest; the store had the image).
        bytes: u64,
    },
}

/// The longest message [`with_message`] keeps, in bytes.
pub const MESSAGE_MAX: usize = 512;

/// `<reason>: <message>` (the message trimmed and cut to [`MESSAGE_MAX`] bytes at a character boundary), or
/// the reason alone without a message: how the record shows a reason.
pub fn with_message(reason: &str, message: Option<&str>) -> String {
    match message.map(str::trim).filter(|m| !m.is_empty()) {
        Some(m) => format!("{reason}: {}", bounded(m, MESSAGE_MAX)),
        None => reason.to_string(),
    }
}

/// The first `max` bytes of `s`, cut at a character boundary.
pub fn bounded(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Observed {
    /// Pending with a reason it will not leave by itself ([`Reason::stuck`]): which grace applies.
    pub fn stuck(&self) -> Option<Stuck> {
        self.reason
            .as_ref()
            .filter(|_| self.phase == Phase::Pending)
            .and_then(Reason::stuck)
    }

    /// Whether [`Observed::stuck`] says so.
    pub fn is_stuck(&self) -> bool {
        self.stuck().is_some()
    }

    /// The reason with its message as the record shows it ([`with_message`]), when there is a reason.
    pub fn reason_text(&self) -> Option<String> {
        self.reason
            .as_ref()
            .map(|r| with_message(r.as_str(), self.message.as_deref()))
    }
}

/// When a stuck job is to fail ([`Backend::stuck`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StuckUntil {
    /// Why it waits, which chose the grace.
    pub cause: Stuck,
    /// Since when it waits so ([`Observed::waiting_since`]).
    pub since: DateTime<Utc>,
    /// `since` plus the grace.
    pub fail_at: DateTime<Utc>,
}

/// Everything a backend holds for one run, as [`Backend::list_objects`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunObjects {
    /// Run id (from the `airlock.dev/run-id` label or the state directory).
    pub run_id: String,
    /// The run's job (pod or process) as [`Backend::observe`] reports it; `None` when only leftovers
    /// remain (Kubernetes: a NetworkPolicy without its pod; local: a run directory whose status cannot be
    /// read).
    pub observed: Option<Observed>,
    /// When the oldest of the run's objects was created, by the clock of whoever created it (the API
    /// server's `creationTimestamp`, whole seconds; locally the time `spec.json` was written). `None` when
    /// unknown.
    pub created_at: Option<DateTime<Utc>>,
    /// Deletion of every object of the run was requested and is still under way (Kubernetes: each has a
    /// `deletionTimestamp`, e.g. a pod in its termination grace period). Never set by the local backend,
    /// whose removal is synchronous.
    pub terminating: bool,
}

/// Result of [`Backend::launch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launched {
    /// Objects were created now.
    Created,
    /// They already existed for this run (a redelivery); nothing changed.
    AlreadyExisted,
}

/// Result of [`Backend::remove`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// Something was deleted now.
    Deleted,
    /// Nothing was there (already reaped).
    Absent,
}

/// The configured backend. An enum rather than a trait object: two variants, static dispatch.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Kubernetes pods.
    Kube(kube::KubeBackend),
    /// Local bubblewrap sandboxes.
    Local(local::LocalBackend),
}

macro_rules! delegate {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            Backend::Kube($b) => $e,
            Backend::Local($b) => $e,
        }
    };
}

impl Backend {
    /// Creates what the run needs (idempotent: a second call for the same run is `AlreadyExisted`).
    pub async fn launch(&self, spec: &LaunchSpec) -> Result<Launched, BackendError> {
        delegate!(self, b => b.launch(spec).await)
    }

    /// The run's current state, or `None` when nothing exists for it.
    pub async fn observe(&self, run_id: &str) -> Result<Option<Observed>, BackendError> {
        delegate!(self, b => b.observe(run_id).await)
    }

    /// The last `max_bytes` of the run's logs (empty when there are none).
    pub async fn logs_tail(&self, run_id: &str, max_bytes: usize) -> Result<String, BackendError> {
        delegate!(self, b => b.logs_tail(run_id, max_bytes).await)
    }

    /// Stops the run if it is still going and deletes everything of it (idempotent).
    pub async fn remove(&self, run_id: &str) -> Result<Removed, BackendError> {
        delegate!(self, b => b.remove(run_id).await)
    }

    /// The job (pod or process) of every run that has one, as [`Backend::observe`] reports it; runs with
    /// only leftover objects are not included (see [`Backend::list_objects`]).
    pub async fn list(&self) -> Result<Vec<Observed>, BackendError> {
        delegate!(self, b => b.list().await)
    }

    /// One entry per run the backend holds anything of, leftovers included (for sweeps; see the module
    /// documentation).
    pub async fn list_objects(&self) -> Result<Vec<RunObjects>, BackendError> {
        delegate!(self, b => b.list_objects().await)
    }

    /// When the observed job, waiting in a state it will not leave by itself ([`Observed::stuck`]: a pod in
    /// `ImagePullBackOff`, one the scheduler cannot place…), is to fail for it: since
    /// [`Observed::waiting_since`], plus the image pull grace or the unschedulable grace ([`Stuck`]).
    /// `None` when it is not stuck. The local runtime fails pulls itself and places every run: always
    /// `None`.
    pub fn stuck(&self, o: &Observed) -> Option<StuckUntil> {
        match self {
            Backend::Kube(k) => k.stuck(o),
            Backend::Local(_) => None,
        }
    }

    /// Changes of runs as they happen, starting with the current state of each; never ends on its own
    /// (errors are retried inside with backoff).
    pub fn watch(&self) -> BoxStream<'static, Observed> {
        delegate!(self, b => b.watch())
    }
}
