//! The listing indexes the transition script keeps, against a real redis-server.

use std::time::Duration;

use airlock_runtime::store::{Delivery, ListFilter, RecordUpdate, Refusal, Store};
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

/// Every key in the keyspace (SCAN, not KEYS).
async fn keyspace(s: &Store) -> anyhow::Result<std::collections::BTreeSet<String>> {
    let mut conn = s.connection();
    let mut keys = std::collections::BTreeSet::new();
    let mut iter: redis::AsyncIter<'_, String> =
        redis::AsyncCommands::scan_match(&mut conn, "*").await?;
    while let Some(k) = futures::StreamExt::next(&mut iter).await {
        keys.insert(k?);
    }
    Ok(keys)
}

fn delivery(id: &str) -> Delivery {
    Delivery::of("airlock.runs.q", id.as_bytes())
}

fn refusal(queue: &str, request: serde_json::Value) -> RecordUpdate {
    RecordUpdate {
        reason: Some("refused".into()),
        queue: Some(queue.into()),
        request: Some(request.to_string()),
        ..RecordUpdate::default()
    }
}

#[tokio::test]
async fn a_refused_requests_malformed_queue_and_labels_name_no_key_while_a_well_formed_refusal_is_listed_as_before()
-> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let s = Store::connect(&redis.url(), "airlock", Duration::from_secs(3600)).await?;
    let long_key = "k".repeat(300);
    let many: serde_json::Map<String, serde_json::Value> = (0..65)
        .map(|i| (format!("l{i}"), serde_json::Value::from("v")))
        .collect();
    let hostile = [
        (
            "bad-label",
            "default",
            serde_json::json!({"id": "bad-label", "labels": {"bad key!": "v"}}),
        ),
        (
            "bad-queue",
            "a.b",
            serde_json::json!({"id": "bad-queue", "image": "busybox"}),
        ),
        (
            "long-label",
            "Bad",
            serde_json::json!({"id": "long-label", "labels": {long_key.as_str(): "v"}}),
        ),
        (
            "bad-value",
            "x y",
            serde_json::json!({"id": "bad-value", "labels": {"team": "not a value!"}}),
        ),
        (
            "too-many",
            "default",
            serde_json::json!({"id": "too-many", "labels": many}),
        ),
        (
            "reserved",
            "default",
            serde_json::json!({"id": "reserved", "labels": {"airlock.dev/run-id": "victim"}}),
        ),
        // One bad label keeps all of them out, the good one too.
        (
            "mixed",
            "default",
            serde_json::json!({"id": "mixed", "labels": {"team": "a", "bad key!": "v"}}),
        ),
        ("not-json", "default", serde_json::json!("{labels")),
    ];
    for (id, queue, request) in &hostile {
        assert_eq!(
            s.reject(id, &delivery(id), &refusal(queue, request.clone()))
                .await?,
            Refusal::Recorded,
            "{id}"
        );
    }
    // A refusal of a request whose queue and labels are fine (its env is not): listed as today.
    let valid = serde_json::json!({
        "id": "valid-refusal", "image": "busybox", "env": {"AIRLOCK_X": "1"}, "labels": {"team": "a"},
    });
    assert_eq!(
        s.reject(
            "valid-refusal",
            &delivery("valid-refusal"),
            &refusal("default", valid)
        )
        .await?,
        Refusal::Recorded
    );
    // The transition script applies the same rule to whatever it is given.
    s.transition(
        "odd-write",
        RunStatus::Queued,
        &queued("x.y", &[("bad key!", "v")], "odd-write"),
    )
    .await?;

    let mut expected: std::collections::BTreeSet<String> = [
        "airlock:idx:all",
        "airlock:idx:status:rejected",
        "airlock:idx:status:queued",
        "airlock:idx:queue:default",
        "airlock:idx:label:team=a",
        "airlock:runs:active",
        "airlock:run:valid-refusal",
        "airlock:run:odd-write",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    expected.extend(hostile.iter().map(|(id, _, _)| format!("airlock:run:{id}")));
    assert_eq!(keyspace(&s).await?, expected);

    // Each refusal keeps what was sent on its record, and is listed by status and in `all`.
    let rec = s.get("bad-queue").await?.expect("record");
    assert_eq!(rec.queue.as_deref(), Some("a.b"));
    let rejected = ListFilter {
        status: Some(RunStatus::Rejected),
        ..ListFilter::default()
    };
    let mut got = ids(&s, &rejected).await?;
    got.sort();
    let mut want: Vec<&str> = hostile.iter().map(|(id, _, _)| *id).collect();
    want.push("valid-refusal");
    want.sort();
    assert_eq!(got, want);
    assert_eq!(ids(&s, &ListFilter::default()).await?.len(), want.len() + 1);

    // The well-formed refusal by its queue and by its label, as before.
    let team_a = ListFilter {
        label: Some(("team".into(), "a".into())),
        ..ListFilter::default()
    };
    assert_eq!(ids(&s, &team_a).await?, ["valid-refusal"]);
    let rejected_on_default = ListFilter {
        status: Some(RunStatus::Rejected),
        queue: Some("default".into()),
        label: Some(("team".into(), "a".into())),
    };
    assert_eq!(ids(&s, &rejected_on_default).await?, ["valid-refusal"]);
    let on_default = ListFilter {
        queue: Some("default".into()),
        ..ListFilter::default()
    };
    let mut got = ids(&s, &on_default).await?;
    got.sort();
    assert_eq!(
        got,
        [
            "bad-label",
            "mixed",
            "not-json",
            "reserved",
            "too-many",
            "valid-refusal"
        ]
    );
    Ok(())
}
