//! Typed label sets: every label value comes from a closed set (an enum, a `&'static str` chosen in code, or a
//! configured queue name), so no family can grow without bound.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use std::fmt::Write;

/// Implements [`EncodeLabelValue`] for a fieldless enum through its `as_str`.
macro_rules! label_value {
    ($t:ty) => {
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    };
}

/// `{queue}`: a configured queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct QueueLabels {
    /// The queue (configured, so bounded); empty for a request to an unknown queue.
    pub queue: String,
}

/// Why a run request was rejected, by class (the full reasons are on the run record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectClass {
    /// It broke the contract or the operator policy.
    Invalid,
    /// It was sent to a queue no dispatcher serves.
    UnknownQueue,
    /// It carried no usable run id, so nothing could be recorded (terminated).
    NoId,
}

impl RejectClass {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::UnknownQueue => "unknown_queue",
            Self::NoId => "no_id",
        }
    }
}
label_value!(RejectClass);

/// `{queue, reason}` of a rejected run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RejectLabels {
    /// The queue (empty for an unknown queue).
    pub queue: String,
    /// The reason class.
    pub reason: RejectClass,
}

/// The verb of a backend API call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `create`.
    Create,
    /// `get` (logs included).
    Get,
    /// `list`.
    List,
    /// `patch`.
    Patch,
    /// `delete`.
    Delete,
    /// `watch`.
    Watch,
    /// Anything else (a local sandbox operation).
    Other,
}

impl Verb {
    /// The verb a call description (`"create Pod"`) starts with.
    pub fn of(what: &str) -> Self {
        match what.split_whitespace().next().unwrap_or_default() {
            "create" => Self::Create,
            "get" => Self::Get,
            "list" => Self::List,
            "patch" => Self::Patch,
            "delete" => Self::Delete,
            "watch" => Self::Watch,
            _ => Self::Other,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Get => "get",
            Self::List => "list",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::Watch => "watch",
            Self::Other => "other",
        }
    }
}
label_value!(Verb);

/// How a backend API call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiCode {
    /// It succeeded.
    Ok,
    /// The API answered with this HTTP status.
    Status(u16),
    /// It timed out.
    Timeout,
    /// The connection or the client failed before an answer.
    Transport,
}

impl EncodeLabelValue for ApiCode {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        match self {
            Self::Ok => encoder.write_str("ok"),
            Self::Status(c) => write!(encoder, "{c}"),
            Self::Timeout => encoder.write_str("timeout"),
            Self::Transport => encoder.write_str("transport"),
        }
    }
}

/// One backend API call: its verb and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ApiCall {
    /// The verb.
    pub verb: Verb,
    /// How it ended.
    pub code: ApiCode,
}

/// `{reason}` of a rejected result (the ingester's reject kind label, a `&'static str`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The reason.
    pub reason: &'static str,
}

/// `{status}`: a terminal run status.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StatusLabels {
    /// The status (`succeeded`, `failed`, `timed_out`, `cancelled`).
    pub status: &'static str,
}

/// What a reap lag is measured from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LagFrom {
    /// The job finished, as the backend reports it (Kubernetes' `finishedAt` has whole seconds, truncated:
    /// a lag from it may be up to 1 s too long, never too short).
    Finish,
    /// The dispatcher's watcher saw the job finished (milliseconds; the true finish is no later, so a lag
    /// from it is never too long): Airlock's own share of the lag.
    Observed,
    /// The deadline timer fired (deadline plus the dispatcher's grace).
    Deadline,
}

impl LagFrom {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Finish => "finish",
            Self::Observed => "observed",
            Self::Deadline => "deadline",
        }
    }
}
label_value!(LagFrom);

/// `{from}` of a reap lag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LagLabels {
    /// What the lag is measured from.
    pub from: LagFrom,
}

/// Something the janitor did besides reaping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JanitorAction {
    /// A timer event was received (any kind, redeliveries included).
    Timer,
    /// A run's objects were deleted.
    ObjectsRemoved,
    /// A timer for a run already reaped, or for an older attempt, acknowledged without effect.
    LateTimer,
    /// A run was dispatched again after its pod was evicted or lost.
    Redispatched,
    /// Objects with no live run were removed.
    OrphanRemoved,
    /// A sweep published a timer that had been lost.
    LostTimer,
    /// A sweep ran.
    Sweep,
    /// A sweep tick was skipped because a newer one follows.
    SweepSkipped,
    /// A cancel request was accepted.
    Cancel,
}

impl JanitorAction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timer => "timer",
            Self::ObjectsRemoved => "objects_removed",
            Self::LateTimer => "late_timer",
            Self::Redispatched => "redispatched",
            Self::OrphanRemoved => "orphan_removed",
            Self::LostTimer => "lost_timer",
            Self::Sweep => "sweep",
            Self::SweepSkipped => "sweep_skipped",
            Self::Cancel => "cancel",
        }
    }
}
label_value!(JanitorAction);

/// `{action}` of the janitor.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ActionLabels {
    /// The action.
    pub action: JanitorAction,
}

/// `{consumer}`: a durable consumer's name (fixed by the service and its configured queues).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConsumerLabels {
    /// The durable name.
    pub consumer: String,
}
