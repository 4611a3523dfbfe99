//! The store's integrity guarantees against a real redis-server: refusals never overwrite a record, a run
//! that ends gives its slot back, a new run takes its slot with its `queued` record only within the caps,
//! rejections are counted in all.

use std::time::Duration;

use airlock_runtime::store::{
    Delivery, RecordUpdate, Refusal, SlotAsk, SlotTake, Store, Transition,
};
use airlock_schemas::RunStatus;
use airlock_schemas::record::{slots_all_key, slots_queue_key};
use airlock_test_support::RedisServer;
use redis::AsyncCommands;

async fn store(redis: &RedisServer) -> anyhow::Result<Store> {
    Ok(Store::connect(&redis.url(), "airlock", Duration::from_secs(3600)).await?)
}

fn queued_on(queue: &str) -> RecordUpdate {
    RecordUpdate {
        queue: Some(queue.into()),
        attempt: Some(1),
        ..RecordUpdate::default()
    }
}

async fn holds_slot(s: &Store, queue: &str, id: &str) -> anyhow::Result<(bool, bool)> {
    let mut c = s.connection();
    let all: Option<f64> = c.zscore(slots_all_key("airlock"), id).await?;
    let q: Option<f64> = c.zscore(slots_queue_key("airlock", queue), id).await?;
    Ok((all.is_some(), q.is_some()))
}

async fn take_slot(s: &Store, queue: &str, id: &str) -> anyhow::Result<()> {
    let mut c = s.connection();
    let () = c.zadd(slots_all_key("airlock"), id, 1).await?;
    let () = c.zadd(slots_queue_key("airlock", queue), id, 1).await?;
    Ok(())
}

#[tokio::test]
async fn a_run_that_ends_gives_its_slot_back_in_the_same_write() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let s = store(&redis).await?;
    for (id, end) in [
        ("c1", RunStatus::Cancelled),
        ("t1", RunStatus::TimedOut),
        ("f1", RunStatus::Failed),
    ] {
        s.transition(id, RunStatus::Queued, &queued_on("q")).await?;
        take_slot(&s, "q", id).await?;
        assert_eq!(holds_slot(&s, "q", id).await?, (true, true));
        assert!(
            s.transition(id, end, &RecordUpdate::default())
                .await?
                .applied()
        );
        assert_eq!(holds_slot(&s, "q", id).await?, (false, false), "{id}");
    }
    // A launched run keeps its slot while it runs, and gives it back when it ends even if no watcher saw
    // its pod finish (its dispatcher was down).
    s.transition("p1", RunStatus::Queued, &queued_on("q"))
        .await?;
    take_slot(&s, "q", "p1").await?;
    s.transition("p1", RunStatus::Running, &RecordUpdate::default())
        .await?;
    assert_eq!(holds_slot(&s, "q", "p1").await?, (true, true));
    s.transition("p1", RunStatus::Succeeded, &RecordUpdate::default())
        .await?;
    assert_eq!(holds_slot(&s, "q", "p1").await?, (false, false));
    Ok(())
}

fn ask(queue: &str, queue_cap: u32, global_cap: u32) -> SlotAsk<'_> {
    SlotAsk {
        queue,
        attempt: 1,
        queue_cap,
        global_cap,
    }
}

#[tokio::test]
async fn a_new_run_is_queued_and_takes_its_slot_in_one_step_within_the_caps() -> anyhow::Result<()>
{
    let redis = RedisServer::start().await?;
    let s = store(&redis).await?;
    // A new run: recorded and given a slot.
    let (t, slot) = s
        .queue_with_slot("n1", &queued_on("q"), &ask("q", 1, 10))
        .await?;
    assert_eq!(t, Transition::Applied { previous: None });
    assert_eq!(slot, Some(SlotTake::Taken));
    assert_eq!(holds_slot(&s, "q", "n1").await?, (true, true));
    let rec = s.get("n1").await?.expect("recorded");
    assert_eq!(rec.status, Some(RunStatus::Queued));
    assert_eq!(rec.queue.as_deref(), Some("q"));
    // The queue's cap is reached: recorded all the same, no slot taken.
    let (t, slot) = s
        .queue_with_slot("n2", &queued_on("q"), &ask("q", 1, 10))
        .await?;
    assert!(t.applied());
    assert_eq!(slot, Some(SlotTake::Full));
    assert_eq!(holds_slot(&s, "q", "n2").await?, (false, false));
    assert_eq!(
        s.head("n2").await?.and_then(|h| h.status),
        Some(RunStatus::Queued)
    );
    // The global cap is reached for another queue.
    let (_, slot) = s
        .queue_with_slot("n3", &queued_on("r"), &ask("r", 5, 1))
        .await?;
    assert_eq!(slot, Some(SlotTake::Full));
    // A run that exists already (cancelled before its dispatch) is refused and takes nothing.
    s.transition("c1", RunStatus::Cancelled, &RecordUpdate::default())
        .await?;
    let (t, slot) = s
        .queue_with_slot("c1", &queued_on("r"), &ask("r", 5, 10))
        .await?;
    assert_eq!(
        t,
        Transition::Refused {
            current: RunStatus::Cancelled
        }
    );
    assert_eq!(slot, None);
    assert_eq!(holds_slot(&s, "r", "c1").await?, (false, false));
    // The slot script alone refuses what may no longer be launched, and takes a free slot otherwise.
    assert_eq!(
        s.take_slot("c1", &ask("r", 5, 10)).await?,
        SlotTake::NotLaunchable
    );
    assert_eq!(
        s.take_slot("nobody", &ask("r", 5, 10)).await?,
        SlotTake::NotLaunchable
    );
    assert_eq!(s.take_slot("n2", &ask("q", 2, 10)).await?, SlotTake::Taken);
    assert_eq!(holds_slot(&s, "q", "n2").await?, (true, true));
    Ok(())
}

#[tokio::test]
async fn a_refusal_creates_a_record_only_where_there_is_none() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let s = store(&redis).await?;
    s.transition("genuine", RunStatus::Queued, &queued_on("q"))
        .await?;
    let refusal = RecordUpdate {
        reason: Some("bogus: unknown field".into()),
        ..RecordUpdate::default()
    };
    let delivery = Delivery::of("airlock.runs.q", br#"{"id":"genuine","bogus":1}"#);
    assert_eq!(
        s.reject("genuine", &delivery, &refusal).await?,
        Refusal::IdInUse
    );
    let rec = s.get("genuine").await?.expect("record");
    assert_eq!(rec.status, Some(RunStatus::Queued));
    assert_eq!(rec.reason, None);
    assert_eq!(s.count_request_rejection("genuine").await?, 1);
    assert_eq!(s.count_request_rejection("genuine").await?, 2);
    assert_eq!(
        s.get("genuine").await?.expect("record").request_rejections,
        Some(2)
    );

    assert_eq!(s.count_request_rejection("nobody").await?, 0);
    assert!(s.get("nobody").await?.is_none(), "counting created nothing");
    assert_eq!(
        s.reject("nobody", &delivery, &refusal).await?,
        Refusal::Recorded
    );
    let rec = s.get("nobody").await?.expect("record");
    assert_eq!(rec.status, Some(RunStatus::Rejected));
    assert!(!s.active_runs().await?.contains(&"nobody".to_string()));
    let ttl: i64 = s.connection().ttl("airlock:run:nobody").await?;
    assert!(ttl > 0, "a terminal record expires");
    Ok(())
}

#[tokio::test]
async fn a_refusal_delivered_again_is_told_from_another_request_under_its_id_by_what_was_delivered_not_by_its_reason()
-> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let s = store(&redis).await?;
    let body = br#"{"id":"r1","image":"busybox","queue_typo":1}"#;
    let first = Delivery::of("airlock.runs.gpu", body);
    let by = |reason: &str| RecordUpdate {
        reason: Some(reason.into()),
        queue: Some("gpu".into()),
        ..RecordUpdate::default()
    };
    assert_eq!(
        s.reject("r1", &first, &by("unknown queue (configured: a)"))
            .await?,
        Refusal::Recorded
    );
    // The same message again, refused by a replica that words it otherwise: the same refusal, nothing
    // written (the first reason stays).
    assert_eq!(
        s.reject(
            "r1",
            &Delivery::of("airlock.runs.gpu", body),
            &by("unknown queue (configured: b)")
        )
        .await?,
        Refusal::AlreadyRecorded
    );
    let rec = s.get("r1").await?.expect("record");
    assert_eq!(rec.reason.as_deref(), Some("unknown queue (configured: a)"));
    assert_eq!(rec.request_rejections, None);
    // Another request under the same id (another body, or the same body on another subject), even with the
    // same reason: the id is in use.
    for other in [
        Delivery::of("airlock.runs.gpu", br#"{"id":"r1"}"#),
        Delivery::of("airlock.runs.cpu", body),
    ] {
        assert_eq!(
            s.reject("r1", &other, &by("unknown queue (configured: a)"))
                .await?,
            Refusal::IdInUse
        );
    }
    // A run recorded otherwise is never "this delivery's".
    s.transition("r2", RunStatus::Queued, &queued_on("q"))
        .await?;
    assert_eq!(
        s.reject("r2", &Delivery::of("airlock.runs.q", b"{}"), &by("x"))
            .await?,
        Refusal::IdInUse
    );
    Ok(())
}

#[tokio::test]
async fn result_rejections_are_counted_in_all_while_the_reasons_stay_bounded() -> anyhow::Result<()>
{
    let redis = RedisServer::start().await?;
    let s = store(&redis).await?;
    s.transition("r1", RunStatus::Queued, &RecordUpdate::default())
        .await?;
    for i in 1..=30u64 {
        assert_eq!(s.add_result_rejection("r1", "invalid token", 20).await?, i);
    }
    let rec = s.get("r1").await?.expect("record");
    assert_eq!(rec.result_rejections.len(), 20);
    assert_eq!(rec.result_rejections_total, Some(30));
    assert_eq!(
        s.add_result_rejection("ghost", "invalid token", 20).await?,
        0
    );
    assert!(s.get("ghost").await?.is_none());
    Ok(())
}
