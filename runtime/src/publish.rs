//! Publishing run requests, lifecycle events, timer events and schedules to JetStream.
//!
//! Every publish carries a `Nats-Msg-Id` from [`MsgId`], derived from what the message means (run, kind,
//! attempt), so a handler that runs twice after a redelivery publishes once.

use std::fmt;
use std::time::Duration;

use airlock_schemas::{
    LifecycleEvent, RequestRejected, ResultRejected, RunRequest, RunStatus, Subjects, TimerEvent,
    TimerKind, TraceParent, env, event::OBSERVED_AT_HEADER,
};
use async_nats::HeaderMap;
use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::Error;

/// Every `Nats-Msg-Id` Airlock publishes with. The stream deduplicates by it within its window.
#[derive(Debug, Clone, Copy)]
pub enum MsgId<'a> {
    /// A run request: the run id on the first attempt (what clients set), `<id>-attempt-<n>` after.
    Request {
        /// Run id.
        run_id: &'a str,
        /// Attempt.
        attempt: u32,
    },
    /// A lifecycle event: one per run, status and attempt.
    Event {
        /// Run id.
        run_id: &'a str,
        /// Status the event announces.
        status: RunStatus,
        /// Attempt.
        attempt: u32,
    },
    /// The event announcing that a run was dispatched again as `attempt` (its status does not change, so
    /// it must not take the `Event` id of the new attempt's own events).
    Redispatched {
        /// Run id.
        run_id: &'a str,
        /// The new attempt.
        attempt: u32,
    },
    /// A rejected result: one per result message (its stream sequence).
    ResultRejected {
        /// Run id.
        run_id: &'a str,
        /// Stream sequence of the rejected result.
        sequence: u64,
    },
    /// A refused request naming an existing run: one per request message (its stream sequence).
    RequestRejected {
        /// Run id.
        run_id: &'a str,
        /// Stream sequence of the refused request.
        sequence: u64,
    },
    /// A timer event: one per kind, run and attempt.
    Timer {
        /// Kind.
        kind: TimerKind,
        /// Run id (none for sweeps).
        run_id: Option<&'a str>,
        /// Attempt (none for sweeps).
        attempt: Option<u32>,
    },
    /// A run's deadline schedule: one per run and attempt.
    DeadlineSchedule {
        /// Run id.
        run_id: &'a str,
        /// Attempt.
        attempt: u32,
    },
    /// A run's stuck-pod schedule: one per run, attempt and firing time (a pod unschedulable first and
    /// then unable to pull its image gets one for each, at each one's grace).
    StuckSchedule {
        /// Run id.
        run_id: &'a str,
        /// Attempt.
        attempt: u32,
        /// When it fires (Unix seconds).
        at: i64,
    },
    /// The recurring sweep schedule, per interval.
    SweepSchedule {
        /// Interval in seconds.
        every_secs: u64,
    },
}

impl fmt::Display for MsgId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MsgId::Request { run_id, attempt } if attempt <= 1 => f.write_str(run_id),
            MsgId::Request { run_id, attempt } => write!(f, "{run_id}-attempt-{attempt}"),
            MsgId::Event {
                run_id,
                status,
                attempt,
            } => write!(f, "event-{run_id}-{}-{attempt}", status.as_str()),
            MsgId::Redispatched { run_id, attempt } => {
                write!(f, "event-{run_id}-redispatch-{attempt}")
            }
            MsgId::ResultRejected { run_id, sequence } => {
                write!(f, "result-rejected-{run_id}-{sequence}")
            }
            MsgId::RequestRejected { run_id, sequence } => {
                write!(f, "request-rejected-{run_id}-{sequence}")
            }
            MsgId::Timer {
                kind,
                run_id,
                attempt,
            } => write!(
                f,
                "timer-{}-{}-{}",
                kind.as_str(),
                run_id.unwrap_or("-"),
                attempt.unwrap_or(0)
            ),
            MsgId::DeadlineSchedule { run_id, attempt } => {
                write!(f, "schedule-deadline-{run_id}-{attempt}")
            }
            MsgId::StuckSchedule {
                run_id,
                attempt,
                at,
            } => write!(f, "schedule-stuck-{run_id}-{attempt}-{at}"),
            MsgId::SweepSchedule { every_secs } => write!(f, "schedule-sweep-{every_secs}"),
        }
    }
}

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

    /// Publishes `body` as JSON with the message id `id` and `headers`, and waits for the stream's ack;
    /// `true` when stored, `false` when deduplicated.
    async fn publish(
        &self,
        subject: String,
        id: MsgId<'_>,
        mut headers: HeaderMap,
        body: &impl Serialize,
    ) -> Result<bool, Error> {
        headers.insert(NATS_MESSAGE_ID, id.to_string().as_str());
        let body = serde_json::to_vec(body)?;
        let ack = self
            .js
            .publish_with_headers(subject, headers, body.into())
            .await?
            .await?;
        Ok(!ack.duplicate)
    }

    /// Publishes a run request to `airlock.runs.<queue>` as `attempt` (deduplicated per run and attempt).
    /// Clients and the janitor's re-dispatch go through here alike.
    pub async fn request(
        &self,
        queue: &str,
        request: &RunRequest,
        attempt: u32,
    ) -> Result<bool, Error> {
        let mut h = HeaderMap::new();
        if attempt > 1 {
            h.insert(env::ATTEMPT_HEADER, attempt.to_string().as_str());
        }
        let id = MsgId::Request {
            run_id: &request.id,
            attempt,
        };
        self.publish(self.subjects.runs(queue), id, h, request)
            .await
    }

    /// Publishes a lifecycle event on `airlock.events.<run_id>` (deduplicated per run, status and attempt).
    pub async fn event(&self, ev: &LifecycleEvent, attempt: u32) -> Result<(), Error> {
        let id = MsgId::Event {
            run_id: &ev.run_id,
            status: ev.status,
            attempt,
        };
        self.publish(self.subjects.events(&ev.run_id), id, HeaderMap::new(), ev)
            .await
            .map(drop)
    }

    /// Publishes the event that tells clients a run was dispatched again as `attempt`.
    pub async fn redispatched_event(&self, ev: &LifecycleEvent, attempt: u32) -> Result<(), Error> {
        let id = MsgId::Redispatched {
            run_id: &ev.run_id,
            attempt,
        };
        self.publish(self.subjects.events(&ev.run_id), id, HeaderMap::new(), ev)
            .await
            .map(drop)
    }

    /// Publishes a rejected result's event on `airlock.events.<run_id>` (deduplicated per result message).
    pub async fn result_rejected(&self, ev: &ResultRejected, sequence: u64) -> Result<(), Error> {
        let id = MsgId::ResultRejected {
            run_id: &ev.run_id,
            sequence,
        };
        self.publish(self.subjects.events(&ev.run_id), id, HeaderMap::new(), ev)
            .await
            .map(drop)
    }

    /// Publishes a refused request's event on `airlock.events.<run_id>` (deduplicated per request message).
    pub async fn request_rejected(&self, ev: &RequestRejected, sequence: u64) -> Result<(), Error> {
        let id = MsgId::RequestRejected {
            run_id: &ev.run_id,
            sequence,
        };
        self.publish(self.subjects.events(&ev.run_id), id, HeaderMap::new(), ev)
            .await
            .map(drop)
    }

    /// Publishes a timer event now (deduplicated per kind, run and attempt); `true` when stored, `false` when
    /// the stream already had it.
    pub async fn timer(&self, ev: &TimerEvent) -> Result<bool, Error> {
        self.timer_observed(ev, None).await
    }

    /// [`Self::timer`], saying when what it reports was `observed` (the `Airlock-Observed-At` header, in
    /// milliseconds) when given.
    pub async fn timer_observed(
        &self,
        ev: &TimerEvent,
        observed: Option<DateTime<Utc>>,
    ) -> Result<bool, Error> {
        let id = MsgId::Timer {
            kind: ev.kind,
            run_id: ev.run_id.as_deref(),
            attempt: ev.attempt,
        };
        let mut headers = HeaderMap::new();
        if let Some(at) = observed {
            let at = at.to_rfc3339_opts(SecondsFormat::Millis, true);
            headers.insert(OBSERVED_AT_HEADER, at.as_str());
        }
        let subject = self.subjects.timer(ev.kind, ev.run_id.as_deref());
        self.publish(subject, id, headers, ev).await
    }

    /// Schedules the run's deadline timer: a message schedule that fires once at `at` into
    /// `airlock.timers.deadline.<run_id>`. Re-scheduling replaces the earlier schedule (same subject, rollup).
    /// The timer carries the run's `traceparent` header when given.
    pub async fn schedule_deadline(
        &self,
        run_id: &str,
        attempt: u32,
        at: DateTime<Utc>,
        traceparent: Option<&TraceParent>,
    ) -> Result<(), Error> {
        self.schedule_once(TimerKind::Deadline, run_id, attempt, at, traceparent, None)
            .await
    }

    /// Schedules the run's `stuck` timer at `at` (when the pod began to wait as it does, plus the grace of
    /// that) into `airlock.timers.stuck.<run_id>`, its `reason` the one the pod waits with
    /// (`ImagePullBackOff`, `Unschedulable`...), deduplicated per run, attempt and time; `at` is derived from
    /// the pod, so a repeat names the same time.
    pub async fn schedule_stuck(
        &self,
        run_id: &str,
        attempt: u32,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<(), Error> {
        self.schedule_once(TimerKind::Stuck, run_id, attempt, at, None, Some(reason))
            .await
    }

    /// A message schedule that fires one `kind` timer for the run at `at`, with `reason`.
    async fn schedule_once(
        &self,
        kind: TimerKind,
        run_id: &str,
        attempt: u32,
        at: DateTime<Utc>,
        traceparent: Option<&TraceParent>,
        reason: Option<&str>,
    ) -> Result<(), Error> {
        let mut ev = TimerEvent::for_run(kind, run_id, attempt);
        ev.reason = reason.map(str::to_string);
        let mut h = HeaderMap::new();
        if let Some(tp) = traceparent {
            crate::telemetry::to_headers(&mut h, tp);
        }
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
            self.subjects.timer(kind, Some(run_id)).as_str(),
        );
        let id = match kind {
            TimerKind::Stuck => MsgId::StuckSchedule {
                run_id,
                attempt,
                at: at.timestamp(),
            },
            _ => MsgId::DeadlineSchedule { run_id, attempt },
        };
        let subject = self
            .subjects
            .schedule(&format!("{}.{run_id}", kind.as_str()));
        self.publish(subject, id, h, &ev).await.map(drop)
    }

    /// Sets up the recurring sweep (`@every`) idempotently: the newest schedule message replaces the older.
    pub async fn schedule_sweep(&self, every: Duration) -> Result<(), Error> {
        let every_secs = every.as_secs().max(1);
        let mut h = HeaderMap::new();
        h.insert("Nats-Schedule", format!("@every {every_secs}s").as_str());
        h.insert(
            "Nats-Schedule-Target",
            self.subjects.timer(TimerKind::Sweep, None).as_str(),
        );
        // A tick nobody handled within two intervals is stale (the next one does the same work): let it expire.
        h.insert("Nats-Schedule-TTL", format!("{}s", every_secs * 2).as_str());
        h.insert("Nats-Rollup", "sub");
        let id = MsgId::SweepSchedule { every_secs };
        self.publish(self.subjects.schedule("sweep"), id, h, &TimerEvent::sweep())
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_name_what_a_message_means() {
        let request = |attempt| MsgId::Request {
            run_id: "r-1",
            attempt,
        };
        assert_eq!(request(1).to_string(), "r-1");
        assert_eq!(request(2).to_string(), "r-1-attempt-2");
        let event = MsgId::Event {
            run_id: "r-1",
            status: RunStatus::Pending,
            attempt: 2,
        };
        assert_eq!(event.to_string(), "event-r-1-pending-2");
        let sweep = MsgId::Timer {
            kind: TimerKind::Sweep,
            run_id: None,
            attempt: None,
        };
        assert_eq!(sweep.to_string(), "timer-sweep---0");
        let stuck = |at| MsgId::StuckSchedule {
            run_id: "r-1",
            attempt: 2,
            at,
        };
        assert_eq!(
            stuck(1_767_323_045).to_string(),
            "schedule-stuck-r-1-2-1767323045"
        );
        assert_ne!(stuck(1).to_string(), stuck(2).to_string());
    }
}
