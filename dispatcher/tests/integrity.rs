//! Integrity under hostile timing and hostile requests: a cancel landing during launch retries or during
//! the launch itself wins, a run given up gives its slot back, a malformed request cannot touch another
//! client's run, and a refused request delivered again is one rejection whichever replica refuses it.

mod common;

use std::time::Duration;

use airlock_kube_emulator::{FaultAction, Kind};
use airlock_runtime::store::RecordUpdate;
use airlock_schemas::{RequestRejected, RunStatus};
use airlock_test_support::wait_until;
use common::{Env, request};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(20);

/// Members of `airlock:slots:all`.
async fn slots(env: &Env) -> Vec<String> {
    redis::AsyncCommands::zrange(&mut env.store.connection(), "airlock:slots:all", 0, -1)
        .await
        .unwrap_or_default()
}

/// What the janitor does on a cancel request for a run that has no objects: record it `cancelled`.
async fn cancel(env: &Env, id: &str) -> anyhow::Result<()> {
    let update = RecordUpdate {
        reason: Some("cancelled by the test".into()),
        finished_at: Some(chrono::Utc::now()),
        ..RecordUpdate::default()
    };
    let t = env
        .store
        .transition(id, RunStatus::Cancelled, &update)
        .await?;
    anyhow::ensure!(t.applied(), "{id} was not cancellable: {t:?}");
    Ok(())
}

/// Waits until the launch of `id` has failed at least `n` times on an injected fault.
async fn launch_failed(env: &Env, n: usize) -> anyhow::Result<()> {
    wait_until(T, "injected launch faults", || async {
        (env.emu.requests().iter().filter(|r| r.injected).count() >= n).then_some(())
    })
    .await
}

/// Makes every launch fail (the NetworkPolicy create answers 500) and starts a dispatcher that retries them
/// quickly and for long.
fn spawn_with_failing_launches(env: &Env) -> (tokio::task::JoinHandle<()>, CancellationToken) {
    env.emu.fail_next(
        Some("POST"),
        "/networkpolicies",
        FaultAction::InternalError,
        100_000,
    );
    env.spawn(env.config(&[
        "--retry-times",
        "1000",
        "--retry-min-delay",
        "50ms",
        "--retry-max-delay",
        "100ms",
    ]))
}

async fn all_acknowledged(env: &Env) -> anyhow::Result<()> {
    wait_until(T, "every request acknowledged", || async {
        let i = env.consumer_info("default").await.ok()?;
        (i.num_pending == 0 && i.num_ack_pending == 0).then_some(())
    })
    .await
}

#[tokio::test]
async fn a_run_cancelled_while_its_launch_is_being_retried_is_never_launched() -> anyhow::Result<()>
{
    let env = Env::start().await?;
    let (task, stop) = spawn_with_failing_launches(&env);
    env.publish("default", &request("doomed", &["true"]), Some("doomed"))
        .await?;
    launch_failed(&env, 3).await?;
    assert_eq!(env.record("doomed").await["status"], "queued");
    cancel(&env, "doomed").await?;
    // The API server recovers: a launch now would succeed.
    env.emu.clear_faults();

    all_acknowledged(&env).await?;
    assert_eq!(env.emu.create_count(Kind::Pod), 0, "the job never ran");
    assert!(env.object_names(Kind::NetworkPolicy).is_empty());
    assert!(env.object_names(Kind::Pod).is_empty());
    let rec = env.record("doomed").await;
    assert_eq!(rec["status"], "cancelled");
    assert_eq!(rec["reason"], "cancelled by the test");
    assert!(slots(&env).await.is_empty(), "its slot was given back");
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn a_run_cancelled_while_its_launch_call_is_in_flight_has_its_pod_and_policy_removed()
-> anyhow::Result<()> {
    let env = Env::start().await?;
    env.emu.hold_pending(airlock_schemas::labels::RUN_ID)?;
    // The owner-reference PATCH, the launch's last call, answers late: the pod exists, the launch is not done.
    env.emu.fail_next(
        Some("PATCH"),
        "/networkpolicies",
        FaultAction::Delay { millis: 2_000 },
        1,
    );
    let (task, stop) = env.spawn(env.config(&[]));
    env.publish("default", &request("late", &["true"]), Some("late"))
        .await?;
    wait_until(T, "the pod created", || async {
        (env.emu.create_count(Kind::Pod) == 1).then_some(())
    })
    .await?;
    assert_eq!(env.record("late").await["status"], "queued");
    cancel(&env, "late").await?;

    all_acknowledged(&env).await?;
    wait_until(T, "the pod and its policy removed", || async {
        (env.object_names(Kind::Pod).is_empty() && env.object_names(Kind::NetworkPolicy).is_empty())
            .then_some(())
    })
    .await?;
    assert_eq!(env.emu.create_count(Kind::Pod), 1, "launched once");
    assert_eq!(env.record("late").await["status"], "cancelled");
    assert!(slots(&env).await.is_empty(), "its slot was given back");
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn a_cancelled_queued_run_gives_its_slot_back_at_once() -> anyhow::Result<()> {
    let env = Env::start().await?;
    env.emu.fail_next(
        Some("POST"),
        "/networkpolicies",
        FaultAction::InternalError,
        100_000,
    );
    // One failed launch, then the request waits for its redelivery while holding its slot.
    let (task, stop) = env.spawn(env.config(&[
        "--retry-times",
        "0",
        "--max-deliver",
        "1000",
        "--redelivery-cap",
        "2s",
    ]));
    env.publish("default", &request("waiting", &["true"]), Some("waiting"))
        .await?;
    launch_failed(&env, 1).await?;
    wait_until(T, "the slot to be held", || async {
        (slots(&env).await == ["waiting"]).then_some(())
    })
    .await?;
    cancel(&env, "waiting").await?;
    wait_until(T, "the slot to be given back", || async {
        slots(&env).await.is_empty().then_some(())
    })
    .await?;
    // The redelivered request launches nothing and takes no slot.
    env.emu.clear_faults();
    all_acknowledged(&env).await?;
    assert!(slots(&env).await.is_empty());
    assert_eq!(env.emu.create_count(Kind::Pod), 0);
    assert_eq!(env.emu.create_count(Kind::NetworkPolicy), 0);
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn a_malformed_request_naming_another_clients_queued_run_leaves_it_untouched_and_it_still_runs()
-> anyhow::Result<()> {
    let env = Env::start().await?;
    env.emu.hold_pending("airlock.dev/run-id=victim")?;
    // The victim stays `queued` while its launch is retried.
    let (task, stop) = spawn_with_failing_launches(&env);
    let mut events = env
        .messages("AIRLOCK_EVENTS", "airlock.events.victim")
        .await?;
    env.publish("default", &request("victim", &["true"]), Some("victim"))
        .await?;
    launch_failed(&env, 2).await?;
    assert_eq!(env.record("victim").await["status"], "queued");

    env.publish(
        "default",
        &json!({"id": "victim", "bogus": 1}),
        Some("attacker-1"),
    )
    .await?;
    let ev: RequestRejected = Env::next_json(&mut events, T).await?;
    assert_eq!(ev.run_id, "victim");
    assert!(ev.reason.contains("bogus"), "{ev:?}");
    let rec = env.record("victim").await;
    assert_eq!(rec["status"], "queued", "{rec:?}");
    assert!(!rec.contains_key("reason"), "{rec:?}");
    assert_eq!(rec["request_rejections"], "1");
    assert!(
        rec["request"].contains("\"command\""),
        "the genuine request is kept"
    );

    env.emu.clear_faults();
    env.wait_status("victim", "pending", T).await?;
    assert_eq!(env.object_names(Kind::Pod), ["airlock-run-victim"]);
    all_acknowledged(&env).await?;
    stop.cancel();
    task.await?;
    Ok(())
}

/// How many messages `subject` holds in `stream`.
async fn stored_on(env: &Env, stream: &str, subject: &str) -> anyhow::Result<u64> {
    let s = env.js.get_stream(stream).await?;
    let counts: Vec<(String, usize)> =
        futures::TryStreamExt::try_collect(s.info_with_subjects(subject).await?).await?;
    Ok(counts.iter().map(|(_, n)| *n as u64).sum())
}

/// Waits until the runs stream holds nothing: every request settled and acknowledged.
async fn runs_stream_empty(env: &Env) -> anyhow::Result<()> {
    let runs = env.js.get_stream("AIRLOCK_RUNS").await?;
    wait_until(T, "the runs stream to be empty", || async {
        let info = runs.get_info().await.ok()?;
        (info.state.messages == 0).then_some(())
    })
    .await
}

#[tokio::test]
async fn a_refused_request_delivered_again_to_a_replica_with_other_queues_is_one_rejection_not_an_id_collision()
-> anyhow::Result<()> {
    let env = Env::start().await?;
    let body = serde_json::to_vec(&request("stray", &["true"]))?;
    env.publish_raw("gpu", body.clone(), Some("stray")).await?;
    // Replica A serves `a`: it records the request `rejected`, naming its own queues in the reason.
    let scan = ["--unknown-queue-scan-every", "100ms"];
    let (task_a, stop_a) = env.spawn(env.config(&[&["--queues", "a=5"][..], &scan].concat()));
    let rec = env.wait_status("stray", "rejected", T).await?;
    assert_eq!(
        rec["reason"],
        r#"queue: unknown queue "gpu" (configured: a)"#
    );
    runs_stream_empty(&env).await?;
    stop_a.cancel();
    task_a.await?;

    // The same message comes again (as it would had A died before its acknowledgement reached the server:
    // the same subject and body), now to replica B, which serves `b` and words the reason otherwise.
    env.publish_raw("gpu", body, None).await?;
    let (task_b, stop_b) = env.spawn(env.config(&[&["--queues", "b=5"][..], &scan].concat()));
    runs_stream_empty(&env).await?;
    stop_b.cancel();
    task_b.await?;

    // One rejection: the record as A wrote it, no refusal counted on it, one lifecycle event and no
    // RequestRejected (B acknowledged only after publishing what it publishes).
    let after = env.record("stray").await;
    assert_eq!(after["status"], "rejected");
    assert_eq!(after["reason"], rec["reason"]);
    assert!(!after.contains_key("request_rejections"), "{after:?}");
    assert_eq!(
        stored_on(&env, "AIRLOCK_EVENTS", "airlock.events.stray").await?,
        1
    );
    let mut events = env
        .messages("AIRLOCK_EVENTS", "airlock.events.stray")
        .await?;
    let ev: airlock_schemas::LifecycleEvent = Env::next_json(&mut events, T).await?;
    assert_eq!(ev.status, RunStatus::Rejected);
    assert_eq!(ev.reason.as_deref(), Some(rec["reason"].as_str()));
    Ok(())
}
