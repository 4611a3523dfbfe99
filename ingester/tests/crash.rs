//! The real `airlock-ingester` binary, SIGKILLed mid-batch and restarted, loses and duplicates nothing.

mod common;

use std::time::{Duration, Instant};

use airlock_schemas::record::field;
use airlock_test_support::{Service, wait_until};
use common::{Env, ids};

const N: usize = 10_000;

#[tokio::test]
async fn an_ingester_killed_mid_batch_and_restarted_loses_nothing_and_duplicates_nothing()
-> anyhow::Result<()> {
    let env = Env::start(&[]).await?;
    let runs = ids("run", N);
    env.create_runs(&runs, "running", &[]).await?;
    let items: Vec<(String, Vec<u8>)> = runs
        .iter()
        .map(|id| (id.clone(), format!(r#"{{"run":"{id}"}}"#).into_bytes()))
        .collect();
    env.publish_many(&items).await?;

    let mut service_env = env.service_env();
    // Info, so the restarted ingester's final metrics (stored vs duplicate) show in the test output.
    service_env.push(("RUST_LOG", "info,async_nats=warn".into()));
    service_env.push(("AIRLOCK_INGESTER_BATCH_SIZE", "64".into()));
    service_env.push(("AIRLOCK_INGESTER_ACK_WAIT", "2s".into()));
    let envs: Vec<(&str, String)> = service_env.iter().map(|(k, v)| (*k, v.clone())).collect();

    let mut first = Service::start("airlock-ingester", &[], &envs)?;
    // Kill it once it is well under way, with batches in flight and most of the backlog left.
    wait_until(Duration::from_secs(30), "a quarter acked", || async {
        (env.results_in_stream().await.ok()? < (N - N / 4) as u64).then_some(())
    })
    .await?;
    first.kill().await?;
    let left = env.results_in_stream().await?;
    let at_kill = env.fields(&runs, field::RESULT_AT).await?;
    let stored_at_kill = at_kill.iter().filter(|r| r.is_some()).count();
    eprintln!(
        "killed with {} acked, {stored_at_kill} stored",
        N as u64 - left
    );
    assert!(
        stored_at_kill < N,
        "the ingester finished before it was killed"
    );
    assert!(
        N as u64 - left <= stored_at_kill as u64,
        "acked before stored"
    );

    let started = Instant::now();
    let mut second = Service::start("airlock-ingester", &[], &envs)?;
    wait_until(
        Duration::from_secs(60),
        "every result stored and acked",
        || async {
            let stored = env.stored_count(&runs).await.ok()?;
            let left = env.results_in_stream().await.ok()?;
            (stored == N && left == 0).then_some(())
        },
    )
    .await?;
    eprintln!("the restarted ingester finished in {:?}", started.elapsed());
    second.terminate(Duration::from_secs(10)).await?;

    // Nothing lost, nothing overwritten: each run has its own result, stored before the kill or after.
    let results = env.fields(&runs, field::RESULT).await?;
    let now_at = env.fields(&runs, field::RESULT_AT).await?;
    for (i, id) in runs.iter().enumerate() {
        assert_eq!(
            results[i].as_deref(),
            Some(format!(r#"{{"run":"{id}"}}"#).as_str())
        );
        if at_kill[i].is_some() {
            assert_eq!(
                at_kill[i], now_at[i],
                "{id}: a redelivery rewrote the result"
            );
        }
    }
    Ok(())
}
