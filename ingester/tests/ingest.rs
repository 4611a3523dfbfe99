//! Genuine results are stored once; every kind of bad submission is rejected with its reason.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use airlock_ingester::RejectKind;
use airlock_schemas::record::field;
use airlock_schemas::{ResultRejected, token};
use airlock_test_support::wait_until;
use common::{Counts, Env, InProcess};
use futures::StreamExt;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_result_with_the_right_token_is_stored_once_when_delivered_three_times()
-> anyhow::Result<()> {
    let env = Env::start(&[]).await?;
    env.create_runs(&["r-1".to_string()], "running", &[])
        .await?;
    let ing = InProcess::start(env.config());

    // Idle ingester: a single result is written at once, not held back to fill a batch.
    let body = br#"{"answer":42}"#;
    env.publish_genuine("r-1", body).await?;
    let m = ing.metrics.clone();
    wait_until(T, "the first result stored", || async {
        (m.stored() == 1).then_some(())
    })
    .await?;
    let first_at = env
        .field("r-1", field::RESULT_AT)
        .await?
        .expect("result_at");

    // The same result twice more, then a different genuine one: the first result wins.
    env.publish_genuine("r-1", body).await?;
    env.publish_genuine("r-1", body).await?;
    env.publish_genuine("r-1", br#"{"answer":43}"#).await?;
    wait_until(T, "three duplicates", || async {
        (m.duplicate() == 3).then_some(())
    })
    .await?;
    wait_until(T, "the stream drained", || async {
        (env.results_in_stream().await.ok()? == 0).then_some(())
    })
    .await?;

    assert_eq!(m.stored(), 1);
    assert_eq!(m.rejected_total(), 0);
    assert_eq!(
        env.field("r-1", field::RESULT).await?.as_deref(),
        Some(r#"{"answer":42}"#)
    );
    assert_eq!(env.field("r-1", field::RESULT_AT).await?, Some(first_at));
    ing.stop().await
}

#[tokio::test]
async fn each_bad_submission_is_rejected_with_its_reason_and_never_overwrites_a_stored_result()
-> anyhow::Result<()> {
    let env = Env::start(&[]).await?;
    let dir = tempfile::tempdir()?;
    let schemas = dir.path().join("schemas.json");
    std::fs::write(
        &schemas,
        r#"{"queue:scored": {"type": "object", "required": ["score"],
              "properties": {"score": {"type": "integer"}}}}"#,
    )?;
    let mut config = env.config();
    config.max_result_bytes = 4096;
    config.result_schemas = Some(schemas);

    let scored = [(field::QUEUE, "scored"), (field::IMAGE, "img:1")];
    env.create_runs(&["r-main".into(), "r-schema".into()], "running", &scored)
        .await?;
    let past = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let future = (chrono::Utc::now() + chrono::Duration::minutes(1)).to_rfc3339();
    env.create_runs(
        &["r-reaped".into()],
        "succeeded",
        &[(field::REAPED_AT, &past)],
    )
    .await?;
    // Reaped after this result was published (the ingester was down meanwhile): still stored.
    env.create_runs(
        &["r-late".into()],
        "succeeded",
        &[(field::REAPED_AT, &future)],
    )
    .await?;

    let mut events = env.client.subscribe("airlock.events.>").await?;
    let ing = InProcess::start(config);
    let m = ing.metrics.clone();

    env.publish_genuine("r-main", br#"{"score":1}"#).await?;
    wait_until(T, "the genuine result stored", || async {
        (m.stored() == 1).then_some(())
    })
    .await?;
    let stored_at = env.field("r-main", field::RESULT_AT).await?;

    let subject = env.subjects.results("r-main");
    let forged = token::sign(b"not-the-secret-0123456789", "r-main");
    let other_runs_token = token::sign(common::SECRET.as_bytes(), "r-schema");
    let oversize = format!(r#"{{"score":1,"pad":"{}"}}"#, "x".repeat(5000));
    env.publish(&subject, Some(&forged), br#"{"score":2}"#)
        .await?;
    env.publish(&subject, Some(&other_runs_token), br#"{"score":3}"#)
        .await?;
    env.publish(&subject, None, br#"{"score":4}"#).await?;
    env.publish_genuine("r-main", b"[1,2]").await?;
    env.publish_genuine("r-main", b"{\"score\":\"\xff\"}")
        .await?;
    env.publish_genuine("r-main", oversize.as_bytes()).await?;
    env.publish_genuine("r-main", br#"{"score":"high"}"#)
        .await?;
    env.publish_genuine("r-unknown", br#"{"score":1}"#).await?;
    env.publish_genuine("r-reaped", br#"{"score":1}"#).await?;
    env.publish_genuine("r-schema", br#"{"points":1}"#).await?;
    env.publish(&env.subjects.results("Not_A_Run"), Some("00"), b"{}")
        .await?;
    env.publish_genuine("r-schema", br#"{"score":7}"#).await?;
    env.publish_genuine("r-late", br#"{"score":8}"#).await?;

    wait_until(T, "every submission handled", || async {
        (m.rejected_total() == 11 && m.stored() == 3).then_some(())
    })
    .await?;
    let counts = [
        (RejectKind::InvalidToken, 2),
        (RejectKind::MissingToken, 1),
        (RejectKind::NotAnObject, 1),
        (RejectKind::InvalidUtf8, 1),
        (RejectKind::TooLarge, 1),
        (RejectKind::Schema, 2),
        (RejectKind::UnknownRun, 1),
        (RejectKind::RunReaped, 1),
        (RejectKind::InvalidRunId, 1),
    ];
    for (kind, n) in counts {
        assert_eq!(m.rejected(kind), n, "{kind:?}");
    }

    // The stored result is untouched; the rejections are recorded on the run, each with its reason.
    assert_eq!(
        env.field("r-main", field::RESULT).await?.as_deref(),
        Some(r#"{"score":1}"#)
    );
    assert_eq!(env.field("r-main", field::RESULT_AT).await?, stored_at);
    let recorded: Vec<String> = serde_json::from_str(
        &env.field("r-main", field::RESULT_REJECTIONS)
            .await?
            .expect("rejections recorded"),
    )?;
    let mut recorded_sorted = recorded.clone();
    recorded_sorted.sort();
    let oversize_reason = format!("body is {} bytes, the limit is 4096", oversize.len());
    let mut expected = vec![
        "invalid token",
        "invalid token",
        "missing token",
        "not a JSON object: got an array",
        "invalid UTF-8 at byte 10",
        oversize_reason.as_str(),
    ];
    expected.sort();
    let without_schema: Vec<&str> = recorded_sorted
        .iter()
        .map(String::as_str)
        .filter(|r| !r.starts_with("schema: "))
        .collect();
    assert_eq!(without_schema, expected, "{recorded:?}");
    let schema_reason = recorded
        .iter()
        .find(|r| r.starts_with("schema: "))
        .expect("schema reason");
    assert!(
        schema_reason.starts_with("schema: /score: "),
        "{schema_reason}"
    );

    // Unknown and reaped runs get no result; the schema-checked run keeps only its valid result.
    assert_eq!(
        env.field("r-unknown", field::STATUS).await?,
        None,
        "no record created"
    );
    assert_eq!(env.field("r-reaped", field::RESULT).await?, None);
    assert_eq!(
        env.field("r-schema", field::RESULT).await?.as_deref(),
        Some(r#"{"score":7}"#)
    );
    let schema_rejections: Vec<String> = serde_json::from_str(
        &env.field("r-schema", field::RESULT_REJECTIONS)
            .await?
            .expect("recorded"),
    )?;
    assert_eq!(
        schema_rejections,
        [r#"schema: /: "score" is a required property"#]
    );
    assert_eq!(
        env.field("r-late", field::RESULT).await?.as_deref(),
        Some(r#"{"score":8}"#)
    );

    // Every rejection of an existing run was announced; none of the unknown run.
    let mut announced: HashMap<String, Vec<String>> = HashMap::new();
    let mut n = 0;
    while n < 9 {
        let msg = tokio::time::timeout(T, events.next())
            .await?
            .expect("subscription open");
        let ev: ResultRejected = serde_json::from_slice(&msg.payload)?;
        announced.entry(ev.run_id).or_default().push(ev.reason);
        n += 1;
    }
    assert_eq!(announced["r-main"].len(), 7);
    assert!(!announced.contains_key("r-unknown"), "{announced:?}");
    assert_eq!(announced["r-reaped"], ["run already reaped"]);
    assert!(announced["r-schema"][0].starts_with("schema: /: "));
    ing.stop().await
}
