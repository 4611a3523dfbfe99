//! Forged results cannot grow the events stream without bound, and every one of them is acknowledged.

mod common;

use std::time::Duration;

use airlock_ingester::MAX_REJECTION_EVENTS;
use airlock_schemas::record::field;
use airlock_schemas::{ResultRejected, token};
use airlock_test_support::wait_until;
use async_nats::jetstream::consumer;
use common::{Counts, Env, InProcess};
use futures::StreamExt;

const T: Duration = Duration::from_secs(60);

/// Messages in `AIRLOCK_EVENTS` on `subject`.
async fn events_on(env: &Env, subject: &str) -> anyhow::Result<Vec<ResultRejected>> {
    let stream = env.js.get_stream("AIRLOCK_EVENTS").await?;
    let mut c: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: subject.to_string(),
            ..Default::default()
        })
        .await?;
    let pending = c.info().await?.num_pending;
    let mut out = Vec::new();
    if pending > 0 {
        let mut msgs = c.fetch().max_messages(pending as usize).messages().await?;
        while let Some(m) = msgs.next().await {
            out.push(serde_json::from_slice(
                &m.map_err(|e| anyhow::anyhow!(e))?.payload,
            )?);
        }
    }
    Ok(out)
}

/// Publishes `n` results on `run_id`'s subject with `token`, 50 at a time, each batch drained by the
/// ingester before the next (the results stream bounds a run's backlog).
async fn flood(env: &Env, run_id: &str, token: &str, n: usize) -> anyhow::Result<()> {
    let subject = env.subjects.results(run_id);
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        for i in chunk {
            env.publish(
                &subject,
                Some(token),
                format!("{{\"forged\":{i}}}").as_bytes(),
            )
            .await?;
        }
        wait_until(T, "the results stream drained", || async {
            (env.results_in_stream().await.ok()? == 0).then_some(())
        })
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_thousand_forged_results_for_one_run_publish_a_bounded_number_of_events_and_none_for_an_unknown_run()
-> anyhow::Result<()> {
    let env = Env::start(&[]).await?;
    env.create_runs(&["victim".to_string()], "running", &[])
        .await?;
    let ing = InProcess::start(env.config());
    let m = ing.metrics.clone();

    let forged = token::sign(b"not-the-secret-0123456789", "victim");
    flood(&env, "victim", &forged, 1_000).await?;
    // Unknown runs: with a token that verifies (the run never existed) and with a forged one.
    let ghost_token = token::sign(common::SECRET.as_bytes(), "ghost");
    flood(&env, "ghost", &ghost_token, 100).await?;
    flood(&env, "ghost2", &forged, 100).await?;

    wait_until(T, "every forgery handled", || async {
        (m.rejected_total() == 1_200).then_some(())
    })
    .await?;
    assert_eq!(env.results_in_stream().await?, 0, "all acknowledged");

    let victim = events_on(&env, "airlock.events.victim").await?;
    assert_eq!(victim.len() as u64, MAX_REJECTION_EVENTS + 1, "{victim:?}");
    assert!(
        victim[victim.len() - 1]
            .reason
            .contains("later ones are only counted"),
        "{victim:?}"
    );
    assert!(events_on(&env, "airlock.events.ghost").await?.is_empty());
    assert!(events_on(&env, "airlock.events.ghost2").await?.is_empty());
    let mut events = env.js.get_stream("AIRLOCK_EVENTS").await?;
    assert_eq!(
        events.info().await?.state.messages,
        MAX_REJECTION_EVENTS + 1
    );

    // The record counts them all and keeps a bounded list; nothing was created for the unknown runs.
    assert_eq!(
        env.field("victim", field::RESULT_REJECTIONS_TOTAL)
            .await?
            .as_deref(),
        Some("1000")
    );
    let kept: Vec<String> = serde_json::from_str(
        &env.field("victim", field::RESULT_REJECTIONS)
            .await?
            .expect("recorded"),
    )?;
    assert_eq!(kept.len(), airlock_ingester::MAX_REJECTIONS);
    assert_eq!(env.field("ghost", field::STATUS).await?, None);
    assert_eq!(env.field("ghost2", field::STATUS).await?, None);

    // The run still takes its genuine result.
    env.publish_genuine("victim", br#"{"ok":true}"#).await?;
    wait_until(T, "the genuine result stored", || async {
        (m.stored() == 1).then_some(())
    })
    .await?;
    ing.stop().await
}
