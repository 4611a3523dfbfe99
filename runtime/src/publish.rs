//! Publishing lifecycle events, timer events and deadline schedules to JetStream.
//!
//! Every publish carries a `Nats-Msg-Id` derived from what it means (run, kind, attempt), so a handler that
//! runs twice after a redelivery publishes once.

use std::time::Duration;

use airlock_schemas::{LifecycleEvent, Subjects, TimerEvent, TimerKind};
use async_nats::HeaderMap;
use async_nats::jetstream;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::Error;

/// Publishes to Airlock's streams.
#[derive(Debug, Clone)]
pub struct Publisher {
    js: jetstream::Context,
    subjects: Subjects,
}

impl Publisher {
    /// A publisher on `js` under `subjects`.
    pub fn new(js: jetstream::Context, subjects: Subjects) -> Self {
        Self { js, subjects }
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The subjects.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// Publishes and waits for the stream's ack; `true` when stored, `false` when deduplicated.
    async fn publish(
        &self,
        subject: String,
        headers: HeaderMap,
        body: Vec<u8>,
    ) -> Result<bool, Error> {
        let ack = self
            .js
            .publish_with_headers(subject, headers, body.into())
            .await
            .map_err(Error::nats)?
            .await
            .map_err(Error::nats)?;
        Ok(!ack.duplicate)
    }

    /// Publishes a lifecycle event on `airlock.events.<run_id>` (deduplicated per run, status and attempt).
    pub async fn event(&self, ev: &LifecycleEvent, attempt: u32) -> Result<(), Error> {
        let mut h = HeaderMap::new();
        h.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("event-{}-{}-{attempt}", ev.run_id, ev.status.as_str()).as_str(),
        );
        let body = serde_json::to_vec(ev).map_err(|e| Error::Corrupt(e.to_string()))?;
        self.publish(self.subjects.events(&ev.run_id), h, body)
            .await
            .map(drop)
    }

    /// Publishes a timer event now (deduplicated per kind, run and attempt); `true` when stored, `false` when
    /// the stream already had it.
    pub async fn timer(&self, ev: &TimerEvent) -> Result<bool, Error> {
        let mut h = HeaderMap::new();
        let id = format!(
            "timer-{}-{}-{}",
            ev.kind.as_str(),
            ev.run_id.as_deref().unwrap_or("-"),
            ev.attempt.unwrap_or(0)
        );
        h.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        let body = serde_json::to_vec(ev).map_err(|e| Error::Corrupt(e.to_string()))?;
        self.publish(self.subjects.timer(ev.kind, ev.run_id.as_deref()), h, body)
            .await
    }

    /// Schedules the run's deadline timer: a message schedule that fires once at `at` into
    /// `airlock.timers.deadline.<run_id>`. Re-scheduling replaces the earlier schedule (same subject, rollup).
    pub async fn schedule_deadline(
        &self,
        run_id: &str,
        attempt: u32,
        at: DateTime<Utc>,
    ) -> Result<(), Error> {
        let ev = TimerEvent {
            kind: TimerKind::Deadline,
            run_id: Some(run_id.to_string()),
            attempt: Some(attempt),
            reason: None,
        };
        let mut h = HeaderMap::new();
        // A schedule needs whole seconds; round up so it never fires early.
        let at = if at.timestamp_subsec_nanos() > 0 {
            DateTime::from_timestamp(at.timestamp() + 1, 0).unwrap_or(at)
        } else {
            at
        };
        h.insert(
            "Nats-Schedule",
            format!("@at {}", at.to_rfc3339_opts(SecondsFormat::Secs, true)).as_str(),
        );
        h.insert(
            "Nats-Schedule-Target",
            self.subjects
                .timer(TimerKind::Deadline, Some(run_id))
                .as_str(),
        );
        h.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("schedule-deadline-{run_id}-{attempt}").as_str(),
        );
        let body = serde_json::to_vec(&ev).map_err(|e| Error::Corrupt(e.to_string()))?;
        self.publish(
            self.subjects.schedule(&format!("deadline.{run_id}")),
            h,
            body,
        )
        .await
        .map(drop)
    }

    /// Sets up the recurring sweep (`@every`) idempotently: the newest schedule message replaces the older.
    pub async fn schedule_sweep(&self, every: Duration) -> Result<(), Error> {
        let ev = TimerEvent {
            kind: TimerKind::Sweep,
            run_id: None,
            attempt: None,
            reason: None,
        };
        let mut h = HeaderMap::new();
        h.insert(
            "Nats-Schedule",
            format!("@every {}s", every.as_secs().max(1)).as_str(),
        );
        h.insert(
            "Nats-Schedule-Target",
            self.subjects.timer(TimerKind::Sweep, None).as_str(),
        );
        // A tick nobody handled within two intervals is stale (the next one does the same work): let it expire.
        h.insert(
            "Nats-Schedule-TTL",
            format!("{}s", every.as_secs().max(1) * 2).as_str(),
        );
        h.insert("Nats-Rollup", "sub");
        h.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("schedule-sweep-{}", every.as_secs()).as_str(),
        );
        let body = serde_json::to_vec(&ev).map_err(|e| Error::Corrupt(e.to_string()))?;
        self.publish(self.subjects.schedule("sweep"), h, body)
            .await
            .map(drop)
    }
}
