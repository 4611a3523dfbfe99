//! NATS subject and stream names. Every subject lives under a prefix (default `airlock`).

/// Stream of run requests: work-queue retention, file storage, deduplicated by `Nats-Msg-Id`.
pub const STREAM_RUNS: &str = "AIRLOCK_RUNS";
/// Stream of results published by jobs.
pub const STREAM_RESULTS: &str = "AIRLOCK_RESULTS";
/// Stream of timer events and their schedules (message schedules allowed).
pub const STREAM_TIMERS: &str = "AIRLOCK_TIMERS";
/// Stream of lifecycle events (limits retention, bounded age).
pub const STREAM_EVENTS: &str = "AIRLOCK_EVENTS";

/// Default subject prefix.
pub const DEFAULT_PREFIX: &str = "airlock";

/// Subject names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Subjects {
    /// Subjects under `prefix` (e.g. `airlock`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `airlock.runs.<queue>`: run requests for a queue.
    pub fn runs(&self, queue: &str) -> String {
        format!("{}.runs.{queue}", self.prefix)
    }

    /// `airlock.runs.>`: all run requests.
    pub fn runs_all(&self) -> String {
        format!("{}.runs.>", self.prefix)
    }

    /// Extracts the queue from a run-request subject.
    pub fn queue_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".runs.")
            .filter(|q| !q.is_empty() && !q.contains('.'))
    }

    /// `airlock.api`: the group of the API's endpoints (`airlock.api.<op>`).
    pub fn api_group(&self) -> String {
        format!("{}.api", self.prefix)
    }

    /// `airlock.api.<op>`: one API operation.
    pub fn api(&self, op: crate::api::Op) -> String {
        format!("{}.api.{}", self.prefix, op.as_str())
    }

    /// `airlock.results.<run_id>`: a job's result.
    pub fn results(&self, run_id: &str) -> String {
        format!("{}.results.{run_id}", self.prefix)
    }

    /// `airlock.results.>`: all results.
    pub fn results_all(&self) -> String {
        format!("{}.results.>", self.prefix)
    }

    /// Extracts the run id from a result subject.
    pub fn run_of_result<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".results.")
            .filter(|q| !q.is_empty() && !q.contains('.'))
    }

    /// `airlock.timers.<kind>.<run_id>` (or `airlock.timers.sweep` for sweeps).
    pub fn timer(&self, kind: crate::TimerKind, run_id: Option<&str>) -> String {
        match run_id {
            Some(id) => format!("{}.timers.{}.{id}", self.prefix, kind.as_str()),
            None => format!("{}.timers.{}", self.prefix, kind.as_str()),
        }
    }

    /// `airlock.timers.>`: everything the janitor consumes.
    pub fn timers_all(&self) -> String {
        format!("{}.timers.>", self.prefix)
    }

    /// `airlock.schedules.<name>`: where message schedules are stored; they fire into `airlock.timers.>`.
    pub fn schedule(&self, name: &str) -> String {
        format!("{}.schedules.{name}", self.prefix)
    }

    /// `airlock.schedules.>`.
    pub fn schedules_all(&self) -> String {
        format!("{}.schedules.>", self.prefix)
    }

    /// `airlock.events.<run_id>`: lifecycle events of a run.
    pub fn events(&self, run_id: &str) -> String {
        format!("{}.events.{run_id}", self.prefix)
    }

    /// `airlock.events.>`.
    pub fn events_all(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// `airlock.cancel.<run_id>`: cancellation requests (core NATS request-reply).
    pub fn cancel(&self, run_id: &str) -> String {
        format!("{}.cancel.{run_id}", self.prefix)
    }

    /// `airlock.cancel.*`.
    pub fn cancel_all(&self) -> String {
        format!("{}.cancel.*", self.prefix)
    }

    /// Extracts the run id from a cancel subject.
    pub fn run_of_cancel<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".cancel.")
            .filter(|q| !q.is_empty() && !q.contains('.'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_built_under_the_prefix_and_parsed_back() {
        let s = Subjects::new("acme");
        assert_eq!(s.runs("gpu"), "acme.runs.gpu");
        assert_eq!(s.queue_of("acme.runs.gpu"), Some("gpu"));
        assert_eq!(s.queue_of("airlock.runs.gpu"), None);
        assert_eq!(s.queue_of("acme.runs.a.b"), None);
        assert_eq!(s.run_of_result(&s.results("r-1")), Some("r-1"));
        assert_eq!(s.run_of_cancel(&s.cancel("r-1")), Some("r-1"));
        assert_eq!(
            s.timer(crate::TimerKind::Deadline, Some("r")),
            "acme.timers.deadline.r"
        );
        assert_eq!(s.timer(crate::TimerKind::Sweep, None), "acme.timers.sweep");
    }
}
