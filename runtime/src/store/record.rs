//! Typed reads and writes of the run record: the only place that knows its hash fields.

use std::collections::HashMap;

use airlock_schemas::record::{self, RunRecord, field};
use airlock_schemas::{RunRequest, RunStatus};
use chrono::{DateTime, Utc};

/// Fields to write with a status change ([`super::Store::transition`]) or on their own
/// ([`super::Store::update`]); `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordUpdate {
    /// Why the run has its status.
    pub reason: Option<String>,
    /// Exit code of the job's process.
    pub exit_code: Option<i64>,
    /// Queue the run came from.
    pub queue: Option<String>,
    /// Image.
    pub image: Option<String>,
    /// The request as JSON text (verbatim for a rejected request, which may not even parse).
    pub request: Option<String>,
    /// When the request was received.
    pub submitted_at: Option<DateTime<Utc>>,
    /// When the job started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the job finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// When its objects were removed.
    pub reaped_at: Option<DateTime<Utc>>,
    /// Bounded tail of the logs.
    pub logs: Option<String>,
    /// Attempt number.
    pub attempt: Option<u32>,
    /// The run's W3C `traceparent`.
    pub traceparent: Option<String>,
}

impl RecordUpdate {
    /// The hash fields to set, in a fixed order.
    pub(super) fn fields(&self) -> Vec<(&'static str, String)> {
        let time = |t: &Option<DateTime<Utc>>| t.map(record::timestamp);
        [
            (field::REASON, self.reason.clone()),
            (field::EXIT_CODE, self.exit_code.map(|c| c.to_string())),
            (field::QUEUE, self.queue.clone()),
            (field::IMAGE, self.image.clone()),
            (field::REQUEST, self.request.clone()),
            (field::SUBMITTED_AT, time(&self.submitted_at)),
            (field::STARTED_AT, time(&self.started_at)),
            (field::FINISHED_AT, time(&self.finished_at)),
            (field::REAPED_AT, time(&self.reaped_at)),
            (field::LOGS, self.logs.clone()),
            (field::ATTEMPT, self.attempt.map(|a| a.to_string())),
            (field::TRACEPARENT, self.traceparent.clone()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }
}

/// The small part of a record that decides what to do with a run next (no request, result or logs), read
/// in one round trip.
#[derive(Debug, Clone, PartialEq)]
pub struct RunHead {
    /// Current status.
    pub status: Option<RunStatus>,
    /// The attempt the run is on.
    pub attempt: u32,
    /// When it was reaped (`None` if not yet, or unreadable).
    pub reaped_at: Option<DateTime<Utc>>,
    /// Queue.
    pub queue: Option<String>,
    /// Image.
    pub image: Option<String>,
    /// The run's W3C `traceparent`, when recorded.
    pub traceparent: Option<String>,
}

impl RunHead {
    /// The fields [`RunHead::from_values`] decodes, in its order.
    pub(super) const FIELDS: [&'static str; 6] = [
        field::STATUS,
        field::ATTEMPT,
        field::REAPED_AT,
        field::QUEUE,
        field::IMAGE,
        field::TRACEPARENT,
    ];

    /// Decodes the values of [`RunHead::FIELDS`], in order; `None` when the record does not exist.
    pub(super) fn from_values(values: Vec<Option<String>>) -> Option<Self> {
        let mut v = values.into_iter();
        let mut next = || v.next().flatten();
        let (status, attempt, reaped_at, queue, image, traceparent) =
            (next(), next(), next(), next(), next(), next());
        let status = status?;
        Some(Self {
            status: RunStatus::parse(&status),
            attempt: record::attempt_or_first(attempt.and_then(|a| a.parse().ok())),
            reaped_at: reaped_at.as_deref().and_then(record::parse_timestamp),
            queue,
            image,
            traceparent,
        })
    }

    /// Whether the run has ended.
    pub fn is_terminal(&self) -> bool {
        self.status.is_some_and(RunStatus::is_terminal)
    }
}

/// A run's whole record with its accepted request, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRun {
    /// The record.
    pub record: RunRecord,
    /// The accepted request (`None` for a rejected request that does not parse, or none stored).
    pub request: Option<RunRequest>,
}

impl StoredRun {
    /// Decodes the hash of run `id`.
    pub(super) fn from_hash(id: &str, h: &HashMap<String, String>) -> Self {
        Self {
            record: RunRecord::from_hash(id, h),
            request: h
                .get(field::REQUEST)
                .and_then(|r| serde_json::from_str(r).ok()),
        }
    }

    /// Run id.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// The attempt the run is on.
    pub fn attempt(&self) -> u32 {
        self.record.current_attempt()
    }

    /// Whether the run has ended.
    pub fn is_terminal(&self) -> bool {
        self.record.is_terminal()
    }

    /// The request's `metadata`, echoed in lifecycle events.
    pub fn metadata(&self) -> Option<serde_json::Value> {
        self.request
            .as_ref()
            .and_then(|r| r.metadata.clone())
            .filter(|m| !m.is_null())
    }

    /// When the run's deadline passes: `submitted_at + deadline_seconds`, when both are known.
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        let secs = self.request.as_ref()?.deadline_seconds?;
        Some(self.record.submitted()? + chrono::Duration::seconds(i64::try_from(secs).ok()?))
    }
}
