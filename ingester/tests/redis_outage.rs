//! Redis goes away while results arrive: nothing is acked before it is stored, everything lands once.

mod common;

use std::time::{Duration, Instant};

use airlock_schemas::record::field;
use airlock_test_support::wait_until;
use common::{Counts, Env, InProcess, ids};

const N: usize = 10_000;

#[tokio::test]
async fn results_published_while_redis_is_down_are_all_stored_once_and_none_is_acked_before_it_is_stored()
-> anyhow::Result<()> {
    // Persistence on, so the run records survive the outage as they would in production.
    let mut env = Env::start(&["--appendonly", "yes", "--appendfsync", "always"]).await?;
    let runs = ids("run", N);
    env.create_runs(&runs, "running", &[]).await?;
    env.create_runs(&["warm-up".to_string()], "running", &[])
        .await?;

    let mut config = env.config();
    config.consumer.redelivery_cap = Duration::from_secs(1);
    let ing = InProcess::start(config);
    let m = ing.metrics.clone();
    env.publish_genuine("warm-up", b"{}").await?;
    wait_until(Duration::from_secs(20), "the ingester running", || async {
        (m.stored() == 1).then_some(())
    })
    .await?;

    env.redis.stop().await?;
    let items: Vec<(String, Vec<u8>)> = runs
        .iter()
        .map(|id| (id.clone(), format!(r#"{{"run":"{id}"}}"#).into_bytes()))
        .collect();
    env.publish_many(&items).await?;
    // Failed round trips nak their batch and the ingester goes on to the next (each waits for the
    // connection manager's reconnect attempts first, so a second failure takes a few seconds).
    wait_until(
        Duration::from_secs(30),
        "two failed Redis round trips",
        || async { (m.redis_errors() >= 2).then_some(()) },
    )
    .await?;
    // Nothing was acked (acked messages leave the work-queue stream).
    assert_eq!(
        env.results_in_stream().await?,
        N as u64,
        "a result was acked while Redis was down"
    );
    assert_eq!(m.stored(), 1);

    env.redis.restart().await?;
    env.redis_conn = env.redis.connection().await?;
    let back = Instant::now();
    // Sample the invariant as results land: acked(t1) <= stored(t2) for t1 < t2.
    let mut samples = 0;
    loop {
        let acked = N as u64 - env.results_in_stream().await?;
        let stored = env.stored_count(&runs).await? as u64;
        assert!(acked <= stored, "{acked} acked but only {stored} stored");
        samples += 1;
        if stored == N as u64 && acked == N as u64 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "only {stored} of {N} stored after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = back.elapsed();
    eprintln!(
        "{N} results landed {took:?} after Redis came back ({:.0}/s, {samples} samples); metrics {:?}",
        N as f64 / took.as_secs_f64(),
        m.encode()
    );

    // Exactly once: every run has its own result, and the ingester stored each once.
    let results = env.fields(&runs, field::RESULT).await?;
    for (id, r) in runs.iter().zip(&results) {
        assert_eq!(r.as_deref(), Some(format!(r#"{{"run":"{id}"}}"#).as_str()));
    }
    assert_eq!(m.stored(), N as u64 + 1);
    assert_eq!(m.duplicate(), 0);
    assert_eq!(m.rejected_total(), 0);
    ing.stop().await
}
