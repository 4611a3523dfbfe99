//! What a timer means for a run: a pure function of the timer, the record and what the backend observes.

use airlock_backend::{Observed, Phase, Reason, bounded, with_message};
use airlock_schemas::{RunStatus, TimerKind};
use chrono::{DateTime, Utc};

/// The final state to record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Verdict {
    /// Terminal status.
    pub status: RunStatus,
    /// Why.
    pub reason: Option<String>,
    /// Exit code of the job's process, when it exited.
    pub exit_code: Option<i64>,
    /// When the job finished, when the backend knows.
    pub finished_at: Option<DateTime<Utc>>,
}

/// What to do with a run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// Record this terminal status, then reap.
    End(Verdict),
    /// The run was lost through no fault of its own: run it again as the next attempt.
    Redispatch {
        /// Why (`Evicted`, `PodLost`...).
        why: String,
    },
    /// Nothing to do (e.g. a `finished` timer while the pod still runs).
    Ignore(&'static str),
}

/// The verdict for a pod or process that finished on its own.
pub(crate) fn outcome_of(obs: &Observed) -> Verdict {
    let exit_code = obs.exit_code.map(i64::from);
    match obs.phase {
        Phase::Succeeded => Verdict {
            status: RunStatus::Succeeded,
            reason: None,
            exit_code: exit_code.or(Some(0)),
            finished_at: obs.finished_at,
        },
        _ if obs.reason == Some(Reason::DeadlineExceeded) => Verdict {
            status: RunStatus::TimedOut,
            reason: Some(with_message("DeadlineExceeded", obs.message.as_deref())),
            exit_code,
            finished_at: obs.finished_at,
        },
        _ => Verdict {
            status: RunStatus::Failed,
            reason: Some(failure(obs)),
            exit_code,
            finished_at: obs.finished_at,
        },
    }
}

/// `<reason>: <message>` of a job that failed (`Error` when the backend gave no reason).
fn failure(obs: &Observed) -> String {
    obs.reason_text()
        .unwrap_or_else(|| with_message(Reason::Error.as_str(), obs.message.as_deref()))
}

/// `Pending (Unschedulable: 0/1 nodes are available...)`: where a run was when something ended it.
pub(crate) fn describe(obs: &Observed) -> String {
    let phase = match obs.phase {
        Phase::Pending => "Pending",
        Phase::Running => "Running",
        Phase::Succeeded => "Succeeded",
        Phase::Failed => "Failed",
    };
    match obs.reason_text() {
        Some(r) => format!("{phase} ({r})"),
        None => phase.to_string(),
    }
}

/// Decides what a `kind` timer with `timer_reason` (a cancel's why; the reason a stuck timer was set for)
/// means for a non-terminal run in `status` at `attempt`, given what the backend observes now (`None`:
/// nothing exists for the run).
pub(crate) fn decide(
    kind: TimerKind,
    timer_reason: Option<&str>,
    status: Option<RunStatus>,
    attempt: u32,
    obs: Option<&Observed>,
    max_attempts: u32,
) -> Decision {
    let finished = obs.filter(|o| o.phase.is_finished() && !o.lost);
    match kind {
        TimerKind::Sweep => Decision::Ignore("a sweep is not about one run"),
        // A run that finished on its own before the cancel or deadline was handled keeps its real outcome.
        TimerKind::Cancel => match finished {
            Some(o) => Decision::End(outcome_of(o)),
            None => Decision::End(Verdict {
                status: RunStatus::Cancelled,
                reason: Some(timer_reason.filter(|r| !r.trim().is_empty()).map_or_else(
                    || "cancelled".to_string(),
                    |r| bounded(r, airlock_backend::MESSAGE_MAX).to_string(),
                )),
                exit_code: None,
                finished_at: None,
            }),
        },
        TimerKind::Deadline => match (finished, obs) {
            (Some(o), _) => Decision::End(outcome_of(o)),
            (None, Some(o)) => Decision::End(Verdict {
                status: RunStatus::TimedOut,
                reason: Some(format!("DeadlineExceeded: {}", describe(o))),
                exit_code: o.exit_code.map(i64::from),
                finished_at: None,
            }),
            (None, None) => Decision::End(Verdict {
                status: RunStatus::TimedOut,
                reason: Some(format!(
                    "DeadlineExceeded: no pod ({})",
                    status.map_or("no status", RunStatus::as_str)
                )),
                exit_code: None,
                finished_at: None,
            }),
        },
        // The pod waited in ImagePullBackOff (or the like), or unschedulable, for the whole grace of that
        // cause: the run fails with that reason. The timer names the reason it was set for; a pod stuck now
        // for another cause (unschedulable first, then its image failing) has its own timer, at its own grace.
        TimerKind::Stuck => {
            let set_for = timer_reason.map(Reason::parse).and_then(|r| r.stuck());
            match (finished, obs) {
                (Some(o), _) => Decision::End(outcome_of(o)),
                (None, Some(o))
                    if o.stuck()
                        .is_some_and(|now| set_for.is_none_or(|s| s == now)) =>
                {
                    Decision::End(Verdict {
                        status: RunStatus::Failed,
                        reason: Some(failure(o)),
                        exit_code: None,
                        finished_at: None,
                    })
                }
                (None, Some(o)) if o.is_stuck() => {
                    Decision::Ignore("stuck timer set for another cause than the pod's now")
                }
                _ => Decision::Ignore("stuck timer but the pod is no longer stuck"),
            }
        }
        TimerKind::Finished => {
            let lost_why = match obs {
                None => Some("PodLost".to_string()),
                Some(o) if o.lost => Some(
                    o.reason
                        .as_ref()
                        .map(Reason::to_string)
                        .filter(|r| !r.is_empty())
                        .unwrap_or_else(|| "Lost".into()),
                ),
                Some(_) => None,
            };
            match (lost_why, obs) {
                (Some(why), _) if attempt < max_attempts => Decision::Redispatch { why },
                (Some(why), o) => Decision::End(Verdict {
                    status: RunStatus::Failed,
                    reason: Some(format!(
                        "{}; attempt {attempt} of {max_attempts}, not retried",
                        match o.and_then(|o| o.message.as_deref()) {
                            Some(m) => with_message(&why, Some(m)),
                            None => why,
                        }
                    )),
                    exit_code: o.and_then(|o| o.exit_code).map(i64::from),
                    finished_at: o.and_then(|o| o.finished_at),
                }),
                (None, Some(o)) if o.phase.is_finished() => Decision::End(outcome_of(o)),
                (None, _) => Decision::Ignore("finished timer but the job is still going"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(phase: Phase, reason: Option<&str>, exit: Option<i32>) -> Observed {
        Observed {
            run_id: "r".into(),
            queue: Some("q".into()),
            attempt: 1,
            phase,
            exit_code: exit,
            reason: reason.map(Reason::parse),
            message: None,
            waiting_since: None,
            started_at: None,
            finished_at: None,
            lost: reason == Some("Evicted"),
            image_fetch: None,
        }
    }

    fn status(d: Decision) -> (RunStatus, String) {
        match d {
            Decision::End(v) => (v.status, v.reason.unwrap_or_default()),
            other => panic!("expected an end, got {other:?}"),
        }
    }

    #[test]
    fn a_finished_pod_maps_to_its_terminal_status() {
        let run = Some(RunStatus::Running);
        let d = |o: &Observed| decide(TimerKind::Finished, None, run, 1, Some(o), 2);
        assert_eq!(
            status(d(&obs(Phase::Succeeded, Some("Completed"), Some(0)))).0,
            RunStatus::Succeeded
        );
        assert_eq!(
            status(d(&obs(Phase::Failed, Some("DeadlineExceeded"), None))),
            (RunStatus::TimedOut, "DeadlineExceeded".into())
        );
        assert_eq!(
            status(d(&obs(Phase::Failed, Some("OOMKilled"), Some(137)))),
            (RunStatus::Failed, "OOMKilled".into())
        );
        assert_eq!(
            d(&obs(Phase::Running, None, None)),
            Decision::Ignore("finished timer but the job is still going")
        );
    }

    #[test]
    fn an_evicted_pod_is_redispatched_until_attempts_run_out() {
        let e = obs(Phase::Failed, Some("Evicted"), None);
        let run = Some(RunStatus::Running);
        assert_eq!(
            decide(TimerKind::Finished, None, run, 1, Some(&e), 2),
            Decision::Redispatch {
                why: "Evicted".into()
            }
        );
        let (st, reason) = status(decide(TimerKind::Finished, None, run, 2, Some(&e), 2));
        assert_eq!(st, RunStatus::Failed);
        assert!(reason.starts_with("Evicted; attempt 2 of 2"), "{reason}");
        assert_eq!(
            decide(TimerKind::Finished, None, run, 1, None, 2),
            Decision::Redispatch {
                why: "PodLost".into()
            }
        );
        // The job's own failure is final.
        let own = obs(Phase::Failed, Some("Error"), Some(3));
        assert_eq!(
            status(decide(TimerKind::Finished, None, run, 1, Some(&own), 2)).0,
            RunStatus::Failed
        );
    }

    #[test]
    fn a_deadline_names_where_the_run_was_stuck() {
        let mut p = obs(Phase::Pending, Some("Unschedulable"), None);
        p.message = Some("0/1 nodes are available".into());
        let (st, reason) = status(decide(
            TimerKind::Deadline,
            None,
            Some(RunStatus::Pending),
            1,
            Some(&p),
            2,
        ));
        assert_eq!(st, RunStatus::TimedOut);
        assert_eq!(
            reason,
            "DeadlineExceeded: Pending (Unschedulable: 0/1 nodes are available)"
        );
        let (_, reason) = status(decide(
            TimerKind::Deadline,
            None,
            Some(RunStatus::Queued),
            1,
            None,
            2,
        ));
        assert_eq!(reason, "DeadlineExceeded: no pod (queued)");
        // Finished just before its deadline: keeps its real outcome.
        let done = obs(Phase::Succeeded, None, Some(0));
        assert_eq!(
            status(decide(
                TimerKind::Deadline,
                None,
                Some(RunStatus::Running),
                1,
                Some(&done),
                2
            ))
            .0,
            RunStatus::Succeeded
        );
    }

    #[test]
    fn a_stuck_timer_fails_a_pod_still_stuck_with_its_waiting_reason_and_ignores_one_that_recovered()
     {
        let run = Some(RunStatus::Pending);
        let mut p = obs(Phase::Pending, Some("ImagePullBackOff"), None);
        p.message = Some("Back-off pulling image \"x\"".into());
        assert_eq!(
            status(decide(TimerKind::Stuck, None, run, 1, Some(&p), 2)),
            (
                RunStatus::Failed,
                "ImagePullBackOff: Back-off pulling image \"x\"".into()
            )
        );
        let running = obs(Phase::Running, None, None);
        assert_eq!(
            decide(TimerKind::Stuck, None, run, 1, Some(&running), 2),
            Decision::Ignore("stuck timer but the pod is no longer stuck")
        );
        let creating = obs(Phase::Pending, Some("ContainerCreating"), None);
        assert!(matches!(
            decide(TimerKind::Stuck, None, run, 1, Some(&creating), 2),
            Decision::Ignore(_)
        ));
        assert!(matches!(
            decide(TimerKind::Stuck, None, run, 1, None, 2),
            Decision::Ignore(_)
        ));
    }

    #[test]
    fn a_stuck_timer_fails_a_pod_still_unschedulable_with_the_schedulers_message() {
        let run = Some(RunStatus::Pending);
        let mut p = obs(Phase::Pending, Some("Unschedulable"), None);
        p.message = Some("0/1 nodes are available: 1 Insufficient cpu.".into());
        let failed = (
            RunStatus::Failed,
            "Unschedulable: 0/1 nodes are available: 1 Insufficient cpu.".to_string(),
        );
        for set_for in [Some("Unschedulable"), None] {
            assert_eq!(
                status(decide(TimerKind::Stuck, set_for, run, 1, Some(&p), 2)),
                failed,
                "{set_for:?}"
            );
        }
    }

    #[test]
    fn a_stuck_timer_set_for_one_cause_ignores_a_pod_stuck_for_another_and_fails_one_stuck_alike() {
        let run = Some(RunStatus::Pending);
        // Unschedulable at first, then placed: its image fails now, for less than the image pull grace.
        let pulling = obs(Phase::Pending, Some("ImagePullBackOff"), None);
        assert_eq!(
            decide(
                TimerKind::Stuck,
                Some("Unschedulable"),
                run,
                1,
                Some(&pulling),
                2
            ),
            Decision::Ignore("stuck timer set for another cause than the pod's now")
        );
        // Set at ErrImagePull, the kubelet backing off now: the same cause.
        assert_eq!(
            status(decide(
                TimerKind::Stuck,
                Some("ErrImagePull"),
                run,
                1,
                Some(&pulling),
                2
            )),
            (RunStatus::Failed, "ImagePullBackOff".into())
        );
        let unschedulable = obs(Phase::Pending, Some("Unschedulable"), None);
        assert!(matches!(
            decide(
                TimerKind::Stuck,
                Some("ErrImagePull"),
                run,
                1,
                Some(&unschedulable),
                2
            ),
            Decision::Ignore(_)
        ));
    }

    #[test]
    fn a_cancel_ends_a_live_run_cancelled_with_its_reason() {
        let r = obs(Phase::Running, None, None);
        assert_eq!(
            status(decide(
                TimerKind::Cancel,
                Some("by alice"),
                Some(RunStatus::Running),
                1,
                Some(&r),
                2
            )),
            (RunStatus::Cancelled, "by alice".into())
        );
        assert_eq!(
            status(decide(
                TimerKind::Cancel,
                None,
                Some(RunStatus::Pending),
                1,
                None,
                2
            )),
            (RunStatus::Cancelled, "cancelled".into())
        );
    }
}
