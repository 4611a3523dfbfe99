//! The listing indexes the transition script keeps, against a real redis-server.

use std::time::Duration;

use airlock_runtime::store::{ListFilter, RecordUpdate, Store};
use airlock_schemas::RunStatus;
use airlock_test_support::RedisServer;

fn queued(queue: &str, labels: &[(&str, &str)], id: &str) -> RecordUpdate {
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    RecordUpdate {
        queue: Some(queue.into()),
        request: Some(
            serde_json::json!({"id": id, "image": "busybox", "labels": labels}).to_string(),
        ),
        ..RecordUpdate::default()
    }
}

async fn ids(s: &Store, f: &ListFilter) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = s.list(f, cursor.as_ref(), 3).await?;
        out.extend(page.runs.iter().map(|r| r.id().to_string()));
        match page.next {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}

#[tokio::test]
async fn runs_are_listed_newest_first_by_status_queue_and_label_across_pages() -> anyhow::Result<()>
{
    let redis = RedisServer::start().await?;
    let s = Store::connect(&redis.url(), "airlock", Duration::from_secs(3600)).await?;
    for i in 0..10 {
        let id = format!("r{i:02}");
        let queue = if i % 2 == 0 { "even" } else { "odd" };
        let team = if i < 5 { "a" } else { "b" };
        s.transition(
            &id,
            RunStatus::Queued,
            &queued(queue, &[("team", team)], &id),
        )
        .await?;
    }
    for id in ["r01", "r02", "r03"] {
        s.transition(id, RunStatus::Running, &RecordUpdate::default())
            .await?;
    }
    s.transition("r02", RunStatus::Succeeded, &RecordUpdate::default())
        .await?;

    let all = ids(&s, &ListFilter::default()).await?;
    assert_eq!(all.len(), 10);
    assert_eq!(
        all.iter().collect::<std::collections::BTreeSet<_>>().len(),
        10
    );

    let running = ListFilter {
        status: Some(RunStatus::Running),
        ..ListFilter::default()
    };
    let mut r = ids(&s, &running).await?;
    r.sort();
    assert_eq!(r, ["r01", "r03"], "r02 left the running index");

    let odd_b = ListFilter {
        queue: Some("odd".into()),
        label: Some(("team".into(), "b".into())),
        ..ListFilter::default()
    };
    let mut got = ids(&s, &odd_b).await?;
    got.sort();
    assert_eq!(got, ["r05", "r07", "r09"]);

    // A record that is gone (expired) is skipped, not returned empty.
    let mut conn = s.connection();
    let _: () = redis::AsyncCommands::del(&mut conn, "airlock:run:r05").await?;
    let mut got = ids(&s, &odd_b).await?;
    got.sort();
    assert_eq!(got, ["r07", "r09"]);
    Ok(())
}
