//! The run store against a real redis-server.

use std::time::Duration;

use airlock_runtime::store::{RecordUpdate, ResultWrite, Store, Transition, Waiting};
use airlock_schemas::RunStatus;
use airlock_test_support::RedisServer;

async fn store(redis: &RedisServer) -> anyhow::Result<Store> {
    Ok(Store::connect(&redis.url(), "airlock", Duration::from_secs(3600)).await?)
}

#[tokio::test]
async fn a_status_only_moves_forward_and_a_late_event_changes_nothing() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let s = store(&redis).await?;
    assert!(
        s.transition(
            "r1",
            RunStatus::Queued,
            &RecordUpdate {
                queue: Some("q".into()),
                ..RecordUpdate::default()
            }
        )
        .await?
        .applied()
    );
    assert!(
        s.transition("r1", RunStatus::Running, &RecordUpdate::default())
            .await?
            .applied()
    );
    assert!(
        s.transition(
            "r1",
            RunStatus::Succeeded,
            &RecordUpdate {
                exit_code: Some(0),
                ..RecordUpdate::default()
            }
        )
        .await?
        .applied()
    );
    let late = s
        .transition(
            "r1",
            RunStatus::Running,
            &RecordUpdate {
                started_at: Some(chrono::Utc::now()),
                ..RecordUpdate::default()
            },
        )
        .await?;
    assert_eq!(
        late,
        Transition::Refused {
            current: RunStatus::Succeeded
        }
    );
    let other_terminal = s
        .transition("r1", RunStatus::Failed, &RecordUpdate::default())
        .await?;
    assert_eq!(
        other_terminal,
        Transition::Refused {
            current: RunStatus::Succeeded
        }
    );
    let rec = s.get("r1").await?.expect("record");
    assert_eq!(rec.status, Some(RunStatus::Succeeded));
    assert_eq!(
        rec.started_at, None,
        "a refused transition wrote its fields"
    );
    assert_eq!(rec.exit_code, Some(0));
    Ok(())
}

#[tokio::test]
async fn a_waiting_reason_is_shown_while_queued_or_pending_on_its_attempt_and_goes_when_the_run_starts()
-> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let s = store(&redis).await?;
    let reason = |id: &'static str| {
        let s = s.clone();
        async move { anyhow::Ok(s.get(id).await?.and_then(|r| r.reason)) }
    };
    assert_eq!(
        s.waiting("w1", 1, "ContainerCreating").await?,
        Waiting::NotCurrent
    );
    assert_eq!(s.get("w1").await?, None, "no record is made");
    s.transition("w1", RunStatus::Queued, &RecordUpdate::default())
        .await?;
    // Seen by the watcher before the dispatcher recorded `pending`: shown, and kept by `pending`.
    let unschedulable = "Unschedulable: 0/1 nodes are available: 1 Insufficient cpu.";
    assert_eq!(s.waiting("w1", 1, unschedulable).await?, Waiting::Shown);
    s.transition("w1", RunStatus::Pending, &RecordUpdate::default())
        .await?;
    assert_eq!(reason("w1").await?.as_deref(), Some(unschedulable));
    // Updated as it changes; the same again writes nothing new.
    for _ in 0..2 {
        assert_eq!(
            s.waiting("w1", 1, "ContainerCreating").await?,
            Waiting::Shown
        );
    }
    assert_eq!(reason("w1").await?.as_deref(), Some("ContainerCreating"));
    // A change of an older attempt is not this run's any more.
    s.update(
        "w1",
        &RecordUpdate {
            attempt: Some(2),
            ..RecordUpdate::default()
        },
    )
    .await?;
    assert_eq!(
        s.waiting("w1", 1, "ErrImagePull").await?,
        Waiting::NotCurrent
    );
    assert_eq!(reason("w1").await?.as_deref(), Some("ContainerCreating"));
    // Running: the waiting reason goes, and a late change of the pending pod cannot bring it back.
    s.transition("w1", RunStatus::Running, &RecordUpdate::default())
        .await?;
    assert_eq!(reason("w1").await?, None);
    assert_eq!(
        s.waiting("w1", 2, "ContainerCreating").await?,
        Waiting::Past(RunStatus::Running)
    );
    assert_eq!(reason("w1").await?, None);
    // A run that ends straight from pending keeps only its own reason (none for a success).
    s.transition("w2", RunStatus::Pending, &RecordUpdate::default())
        .await?;
    s.waiting("w2", 1, "ContainerCreating").await?;
    s.transition("w2", RunStatus::Succeeded, &RecordUpdate::default())
        .await?;
    assert_eq!(reason("w2").await?, None);
    s.transition("w3", RunStatus::Pending, &RecordUpdate::default())
        .await?;
    s.waiting("w3", 1, unschedulable).await?;
    let failed = RecordUpdate {
        reason: Some(unschedulable.into()),
        ..RecordUpdate::default()
    };
    s.transition("w3", RunStatus::Failed, &failed).await?;
    assert_eq!(reason("w3").await?.as_deref(), Some(unschedulable));
    assert_eq!(
        s.waiting("w3", 1, "ContainerCreating").await?,
        Waiting::Past(RunStatus::Failed)
    );
    assert_eq!(reason("w3").await?.as_deref(), Some(unschedulable));
    Ok(())
}

#[tokio::test]
async fn terminal_runs_leave_the_active_set_and_expire_after_the_ttl() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let s = store(&redis).await?;
    s.transition("r1", RunStatus::Pending, &RecordUpdate::default())
        .await?;
    s.transition("r2", RunStatus::Pending, &RecordUpdate::default())
        .await?;
    assert_eq!(sorted(s.active_runs().await?), ["r1", "r2"]);
    s.transition("r1", RunStatus::TimedOut, &RecordUpdate::default())
        .await?;
    assert_eq!(s.active_runs().await?, ["r2"]);
    let mut conn = redis.connection().await?;
    let ttl: i64 = redis::cmd("TTL")
        .arg("airlock:run:r1")
        .query_async(&mut conn)
        .await?;
    assert!((3590..=3600).contains(&ttl), "ttl {ttl}");
    let ttl2: i64 = redis::cmd("TTL")
        .arg("airlock:run:r2")
        .query_async(&mut conn)
        .await?;
    assert_eq!(ttl2, -1, "an active run must not expire");
    Ok(())
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn the_first_result_wins_and_unknown_runs_are_refused() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let s = store(&redis).await?;
    assert_eq!(s.store_result("nope", "{}").await?, ResultWrite::UnknownRun);
    s.transition("r1", RunStatus::Queued, &RecordUpdate::default())
        .await?;
    assert_eq!(
        s.store_result("r1", r#"{"a":1}"#).await?,
        ResultWrite::Stored
    );
    assert_eq!(
        s.store_result("r1", r#"{"a":2}"#).await?,
        ResultWrite::Duplicate
    );
    assert_eq!(
        s.get("r1").await?.and_then(|r| r.result),
        Some(serde_json::json!({"a": 1}))
    );
    Ok(())
}

#[tokio::test]
async fn result_rejections_are_recorded_and_bounded() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let s = store(&redis).await?;
    s.transition("r1", RunStatus::Queued, &RecordUpdate::default())
        .await?;
    for i in 0..25 {
        s.add_result_rejection("r1", &format!("invalid token #{i}"), 20)
            .await?;
    }
    let rec = s.get("r1").await?.expect("record");
    assert_eq!(rec.result_rejections.len(), 20);
    assert_eq!(
        rec.result_rejections.last().map(String::as_str),
        Some("invalid token #24")
    );
    Ok(())
}

#[tokio::test]
async fn a_stopped_redis_is_an_observable_retryable_error_and_a_restart_recovers()
-> anyhow::Result<()> {
    let mut redis = RedisServer::start().await?;
    let s = store(&redis).await?;
    s.transition("r1", RunStatus::Queued, &RecordUpdate::default())
        .await?;
    redis.stop().await?;
    let err = s
        .transition("r1", RunStatus::Pending, &RecordUpdate::default())
        .await
        .expect_err("redis is down");
    assert!(err.is_retryable(), "{err}");
    redis.restart().await?;
    let ok =
        airlock_test_support::wait_until(Duration::from_secs(20), "redis to come back", || async {
            s.transition("r1", RunStatus::Pending, &RecordUpdate::default())
                .await
                .ok()
        })
        .await?;
    // Nothing is persisted by the harness's redis: the record starts afresh.
    assert_eq!(ok, Transition::Applied { previous: None });
    Ok(())
}
