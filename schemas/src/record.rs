//! The Redis run record `airlock:run:<id>` (a hash) and the run status machine.

use chrono::{DateTime, SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Redis key of a run's record.
pub fn key(prefix: &str, run_id: &str) -> String {
    format!("{prefix}:run:{run_id}")
}

/// Redis key of the set of runs that are not terminal yet (for sweeps).
pub fn active_key(prefix: &str) -> String {
    format!("{prefix}:runs:active")
}

/// Redis key of the sorted set of every run holding a running slot (the dispatcher's global cap).
pub fn slots_all_key(prefix: &str) -> String {
    format!("{prefix}:slots:all")
}

/// Redis key of the sorted set of runs of `queue` holding a running slot (the queue's cap).
pub fn slots_queue_key(prefix: &str, queue: &str) -> String {
    format!("{prefix}:slots:queue:{queue}")
}

/// The attempt a run is on when nothing says otherwise (attempts are 1-based).
pub const FIRST_ATTEMPT: u32 = 1;

/// The attempt a stored or requested attempt number stands for: [`FIRST_ATTEMPT`] when absent or zero.
pub fn attempt_or_first(attempt: Option<u32>) -> u32 {
    attempt.unwrap_or(FIRST_ATTEMPT).max(FIRST_ATTEMPT)
}

/// A record timestamp: RFC 3339 in UTC with milliseconds, so timestamps sort as text.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Now, as a record [`timestamp`].
pub fn now() -> String {
    timestamp(Utc::now())
}

/// Parses a record timestamp (any RFC 3339 time); `None` when it is not one.
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Hash field names of the run record.
pub mod field {
    /// Current [`super::RunStatus`].
    pub const STATUS: &str = "status";
    /// Why the run has its status (rejection reasons, failure reason, `DeadlineExceeded`...).
    pub const REASON: &str = "reason";
    /// Exit code of the job's process, when it exited.
    pub const EXIT_CODE: &str = "exit_code";
    /// The job's result, as JSON text.
    pub const RESULT: &str = "result";
    /// When the result was stored (RFC 3339).
    pub const RESULT_AT: &str = "result_at";
    /// Rejected result submissions (JSON array of reasons, bounded).
    pub const RESULT_REJECTIONS: &str = "result_rejections";
    /// How many result submissions were rejected in all (`result_rejections` keeps only the last few).
    pub const RESULT_REJECTIONS_TOTAL: &str = "result_rejections_total";
    /// How many invalid requests named this run's id (each refused without touching the run).
    pub const REQUEST_REJECTIONS: &str = "request_rejections";
    /// What a `rejected` run's request was when it was delivered (a digest of its subject and body), so a
    /// redelivery of that request is told from another request reusing its id by what was delivered.
    pub const REJECTED_DELIVERY: &str = "rejected_delivery";
    /// Queue the run came from.
    pub const QUEUE: &str = "queue";
    /// Image of the run.
    pub const IMAGE: &str = "image";
    /// The accepted request, as JSON text.
    pub const REQUEST: &str = "request";
    /// When the request was received (RFC 3339).
    pub const SUBMITTED_AT: &str = "submitted_at";
    /// When the job started running (RFC 3339).
    pub const STARTED_AT: &str = "started_at";
    /// When the job finished (RFC 3339).
    pub const FINISHED_AT: &str = "finished_at";
    /// When its objects were removed (RFC 3339).
    pub const REAPED_AT: &str = "reaped_at";
    /// Bounded tail of the job's logs.
    pub const LOGS: &str = "logs";
    /// Attempt number (1-based); a run evicted through no fault of its own is attempted again.
    pub const ATTEMPT: &str = "attempt";
    /// The run's W3C `traceparent` (set by the dispatcher; [`crate::trace`]).
    pub const TRACEPARENT: &str = "traceparent";
    /// When the record last changed (RFC 3339).
    pub const UPDATED_AT: &str = "updated_at";
}

/// Status of a run. Transitions only move forward in [`RunStatus::rank`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Accepted (a valid request was read), not launched yet.
    Queued,
    /// Invalid request or refused by policy; nothing was created.
    Rejected,
    /// Objects created; the job has not started yet.
    Pending,
    /// The job is running.
    Running,
    /// The job exited 0.
    Succeeded,
    /// The job failed, or could not be started.
    Failed,
    /// The run passed its deadline.
    TimedOut,
    /// The run was cancelled.
    Cancelled,
}

impl RunStatus {
    /// All statuses.
    pub const ALL: [RunStatus; 8] = [
        Self::Queued,
        Self::Rejected,
        Self::Pending,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::TimedOut,
        Self::Cancelled,
    ];

    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Rejected => "rejected",
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Position in the forward-only order: queued 0, pending 1, running 2, terminal 3.
    pub fn rank(self) -> u8 {
        match self {
            Self::Queued => 0,
            Self::Pending => 1,
            Self::Running => 2,
            Self::Rejected | Self::Succeeded | Self::Failed | Self::TimedOut | Self::Cancelled => 3,
        }
    }

    /// Whether nothing can follow this status.
    pub fn is_terminal(self) -> bool {
        self.rank() == 3
    }

    /// Whether a run in `self` may move to `next`.
    pub fn can_move_to(self, next: RunStatus) -> bool {
        next.rank() > self.rank()
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused status transition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("run cannot move from {from} to {to}")]
pub struct TransitionError {
    /// Current status.
    pub from: RunStatus,
    /// Requested status.
    pub to: RunStatus,
}

/// The run record as read back from Redis (every field a string in the hash; typed here).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    /// Run id.
    pub id: String,
    /// Current status.
    pub status: Option<RunStatus>,
    /// Why the run has its status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Exit code of the job's process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// The job's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// When the result was stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_at: Option<String>,
    /// Rejected result submissions (the last few).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub result_rejections: Vec<String>,
    /// How many result submissions were rejected in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_rejections_total: Option<u64>,
    /// How many invalid requests named this run's id (each refused, the run untouched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_rejections: Option<u64>,
    /// Queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Received at (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<String>,
    /// Started at (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Finished at (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Reaped at (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaped_at: Option<String>,
    /// Bounded tail of the logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<String>,
    /// Attempt number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The run's W3C `traceparent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl RunRecord {
    /// The attempt the run is on ([`FIRST_ATTEMPT`] when the record does not say).
    pub fn current_attempt(&self) -> u32 {
        attempt_or_first(self.attempt)
    }

    /// Whether the run has ended.
    pub fn is_terminal(&self) -> bool {
        self.status.is_some_and(RunStatus::is_terminal)
    }

    /// When the request was received, parsed.
    pub fn submitted(&self) -> Option<DateTime<Utc>> {
        parse_timestamp(self.submitted_at.as_deref()?)
    }

    /// When the run finished, parsed.
    pub fn finished(&self) -> Option<DateTime<Utc>> {
        parse_timestamp(self.finished_at.as_deref()?)
    }

    /// Builds a record from the hash fields of `airlock:run:<id>`.
    pub fn from_hash(id: &str, h: &std::collections::HashMap<String, String>) -> Self {
        let s = |k: &str| h.get(k).cloned();
        Self {
            id: id.to_string(),
            status: h.get(field::STATUS).and_then(|s| RunStatus::parse(s)),
            reason: s(field::REASON),
            exit_code: h.get(field::EXIT_CODE).and_then(|v| v.parse().ok()),
            result: h
                .get(field::RESULT)
                .and_then(|v| serde_json::from_str(v).ok()),
            result_at: s(field::RESULT_AT),
            result_rejections: h
                .get(field::RESULT_REJECTIONS)
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default(),
            result_rejections_total: h
                .get(field::RESULT_REJECTIONS_TOTAL)
                .and_then(|v| v.parse().ok()),
            request_rejections: h
                .get(field::REQUEST_REJECTIONS)
                .and_then(|v| v.parse().ok()),
            queue: s(field::QUEUE),
            image: s(field::IMAGE),
            submitted_at: s(field::SUBMITTED_AT),
            started_at: s(field::STARTED_AT),
            finished_at: s(field::FINISHED_AT),
            reaped_at: s(field::REAPED_AT),
            logs: s(field::LOGS),
            attempt: h.get(field::ATTEMPT).and_then(|v| v.parse().ok()),
            traceparent: s(field::TRACEPARENT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_only_move_forward() {
        use RunStatus::*;
        assert!(Queued.can_move_to(Pending));
        assert!(Pending.can_move_to(Running));
        assert!(Running.can_move_to(Succeeded));
        assert!(Pending.can_move_to(TimedOut));
        assert!(!Succeeded.can_move_to(Running));
        assert!(!Running.can_move_to(Pending));
        assert!(!Succeeded.can_move_to(Failed));
        assert!(!Running.can_move_to(Running));
        for s in RunStatus::ALL {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
        }
    }
}
