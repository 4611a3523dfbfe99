//! The janitor against real NATS, real Redis and the Kubernetes emulator.

mod common;

use std::time::Duration;

use airlock_backend::Phase;
use airlock_kube_emulator::{FaultAction, ForcedState, Kind};
use airlock_runtime::metrics::JanitorAction;
use airlock_schemas::{RunStatus, TimerEvent, TimerKind};
use airlock_test_support::wait_until;
use anyhow::{Context, Result};
use chrono::Utc;
use common::{Counts, Env, NS, time};

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_job_that_exits_zero_ends_succeeded_with_its_logs_and_is_reaped_promptly() -> Result<()> {
    let mut env = Env::start().await?;
    env.watch_like_the_dispatcher();
    let janitor = env.janitor(&[])?;
    let id = "ok-1";
    env.submit(id, "echo hello from the job; echo and from stderr >&2", 60)
        .await?;
    env.emu
        .wait_for_pod_phase(NS, &Env::object(id), "Succeeded", T)
        .await?;
    let seen_succeeded = Utc::now();

    let rec = env.reaped(id, T).await?;
    assert_eq!(rec.status, Some(RunStatus::Succeeded));
    assert_eq!(rec.exit_code, Some(0));
    let logs = rec.logs.clone().unwrap_or_default();
    assert!(logs.contains("hello from the job"), "logs: {logs:?}");
    assert!(logs.contains("and from stderr"), "logs: {logs:?}");
    env.objects_gone(id).await?;

    // Timing: finished_at comes from the pod (whole seconds in Kubernetes), so allow one more second.
    let finished = time(rec.finished_at.as_deref())?;
    let reaped = time(rec.reaped_at.as_deref())?;
    let lag = reaped - finished;
    let lag_seen = reaped - seen_succeeded;
    eprintln!(
        "reap lag: finished_at → reaped_at {} ms (finished_at truncated to the second); \
         pod Succeeded seen by the test → reaped_at {} ms",
        lag.num_milliseconds(),
        lag_seen.num_milliseconds()
    );
    assert!(
        lag < chrono::Duration::seconds(2),
        "reaped {lag} after finishing"
    );

    let events = env.events(id).await?;
    let ended: Vec<_> = events
        .iter()
        .filter(|e| e.status == RunStatus::Succeeded)
        .collect();
    assert_eq!(ended.len(), 1, "events: {events:?}");
    assert_eq!(ended[0].exit_code, Some(0));
    assert_eq!(ended[0].metadata, Some(serde_json::json!({"test": id})));

    // A late timer for a reaped run is a no-op.
    let late = janitor.metrics.action(JanitorAction::LateTimer);
    env.publisher
        .timer(&TimerEvent {
            kind: TimerKind::Deadline,
            run_id: Some(id.into()),
            attempt: Some(1),
            reason: None,
        })
        .await?;
    wait_until(T, "the late timer to be handled", || async {
        (janitor.metrics.action(JanitorAction::LateTimer) > late).then_some(())
    })
    .await?;
    assert_eq!(env.record(id).await?.status, Some(RunStatus::Succeeded));
    assert_eq!(env.pod_delete_requests(id), 1);
    assert_eq!(janitor.metrics.reaped(), 1);
    janitor.stop().await
}

#[tokio::test]
async fn the_reap_lag_is_also_measured_from_the_watchers_observation_when_the_timer_carries_one()
-> Result<()> {
    let env = Env::start().await?;
    let janitor = env.janitor(&[])?;
    for id in ["seen-1", "unseen-1"] {
        env.submit(id, "true", 60).await?;
        env.emu
            .wait_for_pod_phase(NS, &Env::object(id), "Succeeded", T)
            .await?;
    }
    // A watcher that saw the first pod finish a minute ago (its timer was late), and a timer that says
    // nothing of an observation (as the sweep's).
    let finished = |id: &str| TimerEvent::for_run(TimerKind::Finished, id, 1);
    let seen = Utc::now() - chrono::Duration::seconds(60);
    env.publisher
        .timer_observed(&finished("seen-1"), Some(seen))
        .await?;
    env.publisher.timer(&finished("unseen-1")).await?;
    for id in ["seen-1", "unseen-1"] {
        assert_eq!(env.reaped(id, T).await?.status, Some(RunStatus::Succeeded));
    }

    let m = janitor.metrics.samples();
    let (observed, finish) = ([("from", "observed")], [("from", "finish")]);
    assert_eq!(m.get("airlock_reap_lag_seconds_count", &finish), 2.0);
    assert_eq!(m.get("airlock_reap_lag_seconds_count", &observed), 1.0);
    let from_seen = m.get("airlock_reap_lag_seconds_sum", &observed);
    assert!(from_seen >= 60.0, "observed lag {from_seen} s");
    // Beyond the 1 s bucket: the minute-old observation is not mistaken for a prompt reap.
    let within = [("from", "observed"), ("le", "1.0")];
    assert_eq!(m.get("airlock_reap_lag_seconds_bucket", &within), 0.0);
    janitor.stop().await
}

#[tokio::test]
async fn a_job_that_runs_past_its_deadline_ends_timed_out_with_deadline_exceeded() -> Result<()> {
    let mut env = Env::start().await?;
    env.watch_like_the_dispatcher();
    let janitor = env.janitor(&[])?;
    let id = "slow-1";
    env.submit(id, "echo started; sleep 30", 1).await?;
    // The dispatcher's deadline schedule (deadline + grace): the kubelet's activeDeadlineSeconds fires first.
    env.publisher
        .schedule_deadline(id, 1, Utc::now() + chrono::Duration::seconds(3), None)
        .await?;
    let rec = env.reaped(id, T).await?;
    assert_eq!(rec.status, Some(RunStatus::TimedOut), "{rec:?}");
    let reason = rec.reason.clone().unwrap_or_default();
    assert!(reason.starts_with("DeadlineExceeded"), "reason: {reason}");
    assert!(
        rec.logs.as_deref().unwrap_or("").contains("started"),
        "{rec:?}"
    );
    env.objects_gone(id).await?;
    janitor.stop().await
}

#[tokio::test]
async fn a_stuck_timer_for_a_pod_still_unschedulable_ends_the_run_failed_with_the_schedulers_message()
-> Result<()> {
    let mut env = Env::start().await?;
    env.watch_like_the_dispatcher();
    let _janitor = env.janitor(&[])?;
    let id = "unplaced-1";
    env.emu
        .hold_pending(&format!("{}={id}", airlock_schemas::labels::RUN_ID))?;
    env.submit(id, "echo never runs", 600).await?;
    wait_until(T, "the pod to be unschedulable", || async {
        env.backend
            .observe(id)
            .await
            .ok()
            .flatten()
            .filter(|o| o.reason == Some(airlock_backend::Reason::Unschedulable))
    })
    .await?;
    // What the dispatcher's watcher schedules at the unschedulable grace.
    let timer = TimerEvent {
        kind: TimerKind::Stuck,
        run_id: Some(id.into()),
        attempt: Some(1),
        reason: Some("Unschedulable".into()),
    };
    env.publisher.timer(&timer).await?;
    let rec = env.reaped(id, T).await?;
    assert_eq!(rec.status, Some(RunStatus::Failed), "{rec:?}");
    let reason = rec.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("Unschedulable: 0/1 nodes are available: 1 Insufficient cpu."),
        "reason: {reason}"
    );
    env.objects_gone(id).await?;
    Ok(())
}

#[tokio::test]
async fn a_pod_kept_pending_ends_timed_out_at_its_deadline_naming_why() -> Result<()> {
    let mut env = Env::start().await?;
    env.watch_like_the_dispatcher();
    let janitor = env.janitor(&[])?;
    let id = "stuck-1";
    env.emu
        .hold_pending(&format!("{}={id}", airlock_schemas::labels::RUN_ID))?;
    let submitted = Utc::now();
    env.submit(id, "echo never runs", 2).await?;
    // As the dispatcher does at submit time: fire at submitted_at + deadline_seconds (no grace here).
    let due = submitted + chrono::Duration::seconds(2);
    env.publisher.schedule_deadline(id, 1, due, None).await?;
    // Schedules have whole seconds and are rounded up.
    let due_rounded = chrono::DateTime::from_timestamp(due.timestamp() + 1, 0).context("time")?;

    let rec = env.reaped(id, T).await?;
    assert_eq!(rec.status, Some(RunStatus::TimedOut), "{rec:?}");
    let reason = rec.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("DeadlineExceeded: Pending (Unschedulable"),
        "reason: {reason}"
    );
    // Counted once, its reap lag measured from the deadline timer (the pod never finished).
    let m = janitor.metrics.samples();
    assert_eq!(
        m.get("airlock_reaps_total", &[("status", "timed_out")]),
        1.0
    );
    let from_deadline = [("from", "deadline")];
    assert_eq!(m.get("airlock_reap_lag_seconds_count", &from_deadline), 1.0);
    let finished = time(rec.finished_at.as_deref())?;
    let reaped = time(rec.reaped_at.as_deref())?;
    eprintln!(
        "pending run: deadline due {due}, schedule fired for {due_rounded}, ended {finished} ({} ms after due), reaped {reaped}",
        (finished - due).num_milliseconds()
    );
    assert!(finished >= due, "ended before its deadline");
    assert!(
        reaped - due_rounded < chrono::Duration::seconds(2),
        "reaped {} after its deadline",
        reaped - due_rounded
    );
    env.objects_gone(id).await?;
    janitor.stop().await
}

#[tokio::test]
async fn a_cancelled_runs_pod_is_deleted_and_the_run_ends_cancelled() -> Result<()> {
    let mut env = Env::start().await?;
    env.watch_like_the_dispatcher();
    let janitor = env.janitor(&[])?;
    let id = "cancel-1";
    env.submit(id, "echo working; sleep 30", 60).await?;
    env.emu
        .wait_for_pod_phase(NS, &Env::object(id), "Running", T)
        .await?;

    let ask = |id: &'static str, body: &'static str| {
        let client = env.client.clone();
        let subject = env.subjects.cancel(id);
        async move {
            // Until the janitor has subscribed, there are no responders.
            wait_until(T, "a janitor to answer", || async {
                let reply = client.request(subject.clone(), body.into()).await.ok()?;
                serde_json::from_slice::<serde_json::Value>(&reply.payload).ok()
            })
            .await
        }
    };
    let reply = ask(id, r#"{"reason":"no longer needed"}"#).await?;
    assert_eq!(reply, serde_json::json!({"ok": true}));

    let rec = env.reaped(id, T).await?;
    assert_eq!(rec.status, Some(RunStatus::Cancelled));
    assert_eq!(rec.reason.as_deref(), Some("no longer needed"));
    assert!(rec.logs.as_deref().unwrap_or("").contains("working"));
    env.objects_gone(id).await?;

    assert_eq!(
        ask(id, "").await?,
        serde_json::json!({"ok": false, "error": "run already cancelled"})
    );
    assert_eq!(
        ask("nope-1", "").await?,
        serde_json::json!({"ok": false, "error": "unknown run"})
    );
    janitor.stop().await
}

#[tokio::test]
async fn a_sweep_removes_orphans_finishes_interrupted_reaps_and_fires_lost_timers() -> Result<()> {
    let env = Env::start().await?;
    // No watcher: every `finished` timer is lost. No deadline schedules either.
    let janitor = env.janitor(&[
        "--sweep-interval",
        "1s",
        "--orphan-grace",
        "1s",
        "--lost-timer-grace",
        "1s",
    ])?;
    // A crashed dispatcher left a Pod and a NetworkPolicy and no record.
    let orphan = Env::request("orphan-1", "sleep 30", 60)?;
    env.launch(&orphan, 1).await?;
    // And one that crashed after creating only the NetworkPolicy.
    env.create_policy_only(&Env::request("orphan-2", "true", 60)?)
        .await?;
    // A run that finished while its timer was lost.
    env.submit("lost-1", "echo finished unseen", 60).await?;
    // A run stuck Pending whose deadline timer was lost.
    env.emu
        .hold_pending(&format!("{}=stuck-2", airlock_schemas::labels::RUN_ID))?;
    env.submit("stuck-2", "true", 1).await?;
    // A janitor crashed between recording a run's end and deleting its objects.
    env.submit("crashed-1", "echo was running; sleep 30", 600)
        .await?;
    env.emu
        .wait_for_pod_phase(NS, &Env::object("crashed-1"), "Running", T)
        .await?;
    env.store
        .transition(
            "crashed-1",
            RunStatus::Cancelled,
            &airlock_runtime::store::RecordUpdate {
                reason: Some("by a test".into()),
                ..Default::default()
            },
        )
        .await?;
    // A live run the sweep must leave alone.
    env.submit("live-1", "sleep 30", 600).await?;

    env.objects_gone("orphan-1").await?;
    env.objects_gone("orphan-2").await?;
    let lost = env.reaped("lost-1", T).await?;
    assert_eq!(lost.status, Some(RunStatus::Succeeded));
    assert!(
        lost.logs
            .as_deref()
            .unwrap_or("")
            .contains("finished unseen")
    );
    let stuck = env.reaped("stuck-2", T).await?;
    assert_eq!(stuck.status, Some(RunStatus::TimedOut));
    assert!(
        stuck
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("Unschedulable"),
        "{stuck:?}"
    );
    env.objects_gone("lost-1").await?;
    env.objects_gone("stuck-2").await?;
    let crashed = env.reaped("crashed-1", T).await?;
    assert_eq!(crashed.status, Some(RunStatus::Cancelled));
    assert!(
        crashed
            .logs
            .as_deref()
            .unwrap_or("")
            .contains("was running"),
        "{crashed:?}"
    );
    env.objects_gone("crashed-1").await?;

    assert!(
        env.emu
            .object(Kind::Pod, NS, &Env::object("live-1"))
            .is_some()
    );
    assert!(
        !env.record("live-1")
            .await?
            .status
            .is_some_and(RunStatus::is_terminal)
    );
    assert!(janitor.metrics.action(JanitorAction::OrphanRemoved) >= 2);
    assert!(janitor.metrics.action(JanitorAction::LostTimer) >= 2);
    janitor.stop().await
}

#[tokio::test]
async fn the_backend_lists_a_policy_without_its_pod_as_a_leftover_and_deleted_pods_as_terminating()
-> Result<()> {
    let env = Env::start().await?;
    // The API server's creationTimestamp has whole seconds.
    let before = Utc::now() - chrono::Duration::seconds(1);
    env.create_policy_only(&Env::request("leftover-1", "true", 60)?)
        .await?;
    // Ignores SIGTERM, so it stays terminating for its grace period (1 s) once deleted.
    env.launch(&Env::request("full-1", "trap '' TERM; sleep 30", 60)?, 1)
        .await?;
    env.emu
        .wait_for_pod_phase(NS, &Env::object("full-1"), "Running", T)
        .await?;

    let listed = env.backend.list_objects().await?;
    let ids: Vec<&str> = listed.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(ids, ["full-1", "leftover-1"]);
    let (full, leftover) = (&listed[0], &listed[1]);
    assert!(
        leftover.observed.is_none() && !leftover.terminating,
        "{leftover:?}"
    );
    assert!(
        leftover
            .created_at
            .is_some_and(|t| t >= before && t <= Utc::now()),
        "{leftover:?}"
    );
    assert_eq!(
        full.observed.as_ref().map(|o| o.phase),
        Some(Phase::Running),
        "{full:?}"
    );
    assert!(
        !full.terminating && full.created_at.is_some_and(|t| t >= before),
        "{full:?}"
    );
    // `list` reports jobs only.
    let jobs: Vec<String> = env
        .backend
        .list()
        .await?
        .into_iter()
        .map(|o| o.run_id)
        .collect();
    assert_eq!(jobs, ["full-1"]);

    // Removed: the policy goes at once, the pod terminates (or, on a slow machine, is already gone).
    env.backend.remove("full-1").await?;
    let listed = env.backend.list_objects().await?;
    let full = listed.iter().find(|r| r.run_id == "full-1");
    assert!(
        full.is_none_or(|r| r.terminating && r.observed.is_some()),
        "{full:?}"
    );
    env.objects_gone("full-1").await?;
    let ids: Vec<String> = env
        .backend
        .list_objects()
        .await?
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(ids, ["leftover-1"]);
    Ok(())
}

#[tokio::test]
async fn two_janitors_and_duplicated_timers_reap_each_run_exactly_once() -> Result<()> {
    let env = Env::start().await?;
    // Small batches, so both replicas get copies of the same run's timers at the same time.
    let a = env.janitor(&["--concurrency", "2"])?;
    let b = env.janitor(&["--concurrency", "2"])?;
    let ids: Vec<String> = (0..6).map(|i| format!("dup-{i}")).collect();
    for id in &ids {
        env.submit(id, "echo once", 60).await?;
    }
    for id in &ids {
        env.emu
            .wait_for_pod_phase(NS, &Env::object(id), "Succeeded", T)
            .await?;
    }
    // Three `finished` timers per run without message ids (so the stream keeps every copy), and a deadline.
    for id in &ids {
        for kind in [
            TimerKind::Finished,
            TimerKind::Finished,
            TimerKind::Finished,
            TimerKind::Deadline,
        ] {
            let ev = TimerEvent {
                kind,
                run_id: Some(id.clone()),
                attempt: Some(1),
                reason: None,
            };
            env.js
                .publish(
                    env.subjects.timer(kind, Some(id)),
                    serde_json::to_vec(&ev)?.into(),
                )
                .await?
                .await?;
        }
    }
    for id in &ids {
        let rec = env.reaped(id, T).await?;
        assert_eq!(rec.status, Some(RunStatus::Succeeded));
    }
    // Wait until every copy has been handled and acknowledged.
    let stream = env.js.get_stream("AIRLOCK_TIMERS").await?;
    wait_until(T, "every timer to be acknowledged", || async {
        let mut c = stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(airlock_janitor::DURABLE)
            .await
            .ok()?;
        let info = c.info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await?;

    let reaped = a.metrics.reaped() + b.metrics.reaped();
    eprintln!(
        "janitor A reaped {}, B reaped {}; late timers {} + {}",
        a.metrics.reaped(),
        b.metrics.reaped(),
        a.metrics.action(JanitorAction::LateTimer),
        b.metrics.action(JanitorAction::LateTimer)
    );
    assert_eq!(reaped, ids.len() as u64);
    for id in &ids {
        assert_eq!(env.pod_delete_requests(id), 1, "DELETE requests for {id}");
        let ended = env
            .events(id)
            .await?
            .into_iter()
            .filter(|e| e.status.is_terminal())
            .count();
        assert_eq!(ended, 1, "terminal events of {id}");
    }
    assert_eq!(env.emu.delete_count(Kind::Pod), ids.len() as u64);
    assert_eq!(env.emu.delete_count(Kind::NetworkPolicy), ids.len() as u64);
    a.stop().await?;
    b.stop().await
}

#[tokio::test]
async fn an_evicted_pod_is_redispatched_once_and_then_succeeds() -> Result<()> {
    let mut env = Env::start().await?;
    env.watch_like_the_dispatcher();
    let dispatched = env.dispatch_like_the_dispatcher().await?;
    let janitor = env.janitor(&[])?;
    let id = "evict-1";
    env.submit(id, "echo attempt starts; sleep 2; echo attempt done", 60)
        .await?;
    let name = Env::object(id);
    env.emu.wait_for_pod_phase(NS, &name, "Running", T).await?;
    assert!(env.emu.force_pod_state(NS, &name, ForcedState::Evicted));

    let rec = env.reaped(id, T).await?;
    assert_eq!(rec.status, Some(RunStatus::Succeeded), "{rec:?}");
    assert_eq!(rec.attempt, Some(2));
    assert!(rec.logs.as_deref().unwrap_or("").contains("attempt done"));
    assert_eq!(
        dispatched.lock().map(|d| d.clone()).unwrap_or_default(),
        vec![(id.to_string(), 2)]
    );
    assert_eq!(janitor.metrics.action(JanitorAction::Redispatched), 1);
    let events = env.events(id).await?;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref().is_some_and(
                |r| r.starts_with("Evicted") && r.contains("re-dispatched as attempt 2")
            )),
        "events: {events:?}"
    );
    env.objects_gone(id).await?;
    janitor.stop().await
}

#[tokio::test]
async fn a_job_failing_on_its_own_is_not_retried() -> Result<()> {
    let mut env = Env::start().await?;
    env.watch_like_the_dispatcher();
    let dispatched = env.dispatch_like_the_dispatcher().await?;
    let janitor = env.janitor(&[])?;
    env.submit("fail-1", "echo boom >&2; exit 3", 60).await?;
    env.submit("oom-1", "echo eating memory; sleep 30", 60)
        .await?;
    let oom = Env::object("oom-1");
    env.emu.wait_for_pod_phase(NS, &oom, "Running", T).await?;
    assert!(env.emu.force_pod_state(NS, &oom, ForcedState::OomKilled));

    let failed = env.reaped("fail-1", T).await?;
    assert_eq!(failed.status, Some(RunStatus::Failed));
    assert_eq!(failed.exit_code, Some(3));
    assert!(failed.logs.as_deref().unwrap_or("").contains("boom"));
    assert_eq!(failed.attempt, Some(1));

    let oom = env.reaped("oom-1", T).await?;
    assert_eq!(oom.status, Some(RunStatus::Failed));
    assert_eq!(oom.exit_code, Some(137));
    assert!(
        oom.reason.as_deref().unwrap_or("").starts_with("OOMKilled"),
        "{oom:?}"
    );
    assert_eq!(oom.attempt, Some(1));

    assert!(dispatched.lock().map(|d| d.is_empty()).unwrap_or(false));
    assert_eq!(janitor.metrics.action(JanitorAction::Redispatched), 0);
    env.objects_gone("fail-1").await?;
    env.objects_gone("oom-1").await?;
    janitor.stop().await
}

#[tokio::test]
async fn kubernetes_errors_are_retried_and_the_run_is_still_reaped() -> Result<()> {
    let mut env = Env::start().await?;
    env.watch_like_the_dispatcher();
    let janitor = env.janitor(&[])?;
    // More failures than the in-handler retries: the timer is redelivered with backoff and then succeeds.
    env.emu
        .fail_next(Some("DELETE"), "/pods/", FaultAction::InternalError, 4);
    env.submit("flaky-1", "echo fine", 60).await?;
    let rec = env.reaped("flaky-1", T).await?;
    assert_eq!(rec.status, Some(RunStatus::Succeeded));
    env.objects_gone("flaky-1").await?;
    assert!(janitor.metrics.handler_errors() >= 1);
    assert_eq!(janitor.metrics.reaped(), 1);
    janitor.stop().await
}
