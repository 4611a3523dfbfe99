//! Timer events (for the janitor) and lifecycle events (for clients).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::RunStatus;

/// What a timer event asks the janitor to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    /// The run's deadline passed (fires from a message schedule set at dispatch).
    Deadline,
    /// The run's pod or process finished.
    Finished,
    /// Someone asked to cancel the run.
    Cancel,
    /// Periodic sweep for orphans and lost timers.
    Sweep,
    /// The run's pod has been waiting in a state it will not leave by itself (`ErrImagePull`,
    /// `ImagePullBackOff`, `ErrImageNeverPull`, `InvalidImageName`, `CreateContainerConfigError`) for the
    /// image pull grace, or unschedulable (`Unschedulable`) for the unschedulable grace (fires from a message
    /// schedule the dispatcher's watcher sets; `reason` is the one the pod waited with).
    Stuck,
}

impl TimerKind {
    /// Subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deadline => "deadline",
            Self::Finished => "finished",
            Self::Cancel => "cancel",
            Self::Sweep => "sweep",
            Self::Stuck => "stuck",
        }
    }
}

/// NATS header on a `finished` timer: when the dispatcher's watcher saw the run's pod (or process) finish,
/// RFC 3339 with milliseconds. The janitor measures `airlock_reap_lag_seconds{from="observed"}` from it;
/// Kubernetes' own `finishedAt` has whole seconds. A header, not a field, so a janitor of any version reads
/// the timer.
pub const OBSERVED_AT_HEADER: &str = "Airlock-Observed-At";

/// A timer event on `airlock.timers.<kind>[.<run_id>]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimerEvent {
    /// Kind of timer.
    pub kind: TimerKind,
    /// Run the timer is about (absent for sweeps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Attempt of the run the timer was set for; a timer for an older attempt is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Why (e.g. who cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A lifecycle event on `airlock.events.<run_id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LifecycleEvent {
    /// Run id.
    pub run_id: String,
    /// Status the run moved to.
    pub status: RunStatus,
    /// When.
    pub at: DateTime<Utc>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Exit code, for finished runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The request's `metadata`, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

impl LifecycleEvent {
    /// An event for `run_id` moving to `status` now, with nothing else said.
    pub fn now(run_id: impl Into<String>, status: RunStatus) -> Self {
        Self {
            run_id: run_id.into(),
            status,
            at: Utc::now(),
            reason: None,
            exit_code: None,
            queue: None,
            metadata: None,
        }
    }

    /// The same event, with its reason.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// The same event, with its queue.
    pub fn with_queue(mut self, queue: Option<String>) -> Self {
        self.queue = queue;
        self
    }
}

impl TimerEvent {
    /// A timer of `kind` about `run_id`'s `attempt`.
    pub fn for_run(kind: TimerKind, run_id: impl Into<String>, attempt: u32) -> Self {
        Self {
            kind,
            run_id: Some(run_id.into()),
            attempt: Some(attempt),
            reason: None,
        }
    }

    /// The recurring sweep tick.
    pub fn sweep() -> Self {
        Self {
            kind: TimerKind::Sweep,
            run_id: None,
            attempt: None,
            reason: None,
        }
    }
}

/// A rejected result submission, on `airlock.events.<run_id>` next to the run's [`LifecycleEvent`]s.
///
/// Never carries the rejected body. Told apart from a lifecycle event by having no `status`, and from a
/// [`RequestRejected`] by having no `queue`. Only the first few rejections of a run are announced; the run
/// record counts them all (`result_rejections_total`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultRejected {
    /// Run id, from the result's subject.
    pub run_id: String,
    /// Why: a stable prefix (`missing token`, `invalid token`, `unknown run`, `run already reaped`,
    /// `invalid UTF-8`, `not a JSON object`, `body is N bytes`, `schema:`), then details.
    pub reason: String,
    /// When the ingester rejected it.
    pub at: DateTime<Utc>,
}

/// An invalid request that named the id of a run that already exists, on `airlock.events.<run_id>`.
///
/// The existing run is left untouched (a rejection never overwrites a record); this event and the record's
/// `request_rejections` count are all that is kept of the refused request. Told apart from a
/// [`LifecycleEvent`] by having no `status`, and from a [`ResultRejected`] by its `queue`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestRejected {
    /// Run id the refused request named.
    pub run_id: String,
    /// Queue the refused request was sent to.
    pub queue: String,
    /// Why it was refused: every problem with its field path.
    pub reason: String,
    /// When the dispatcher refused it.
    pub at: DateTime<Utc>,
}
