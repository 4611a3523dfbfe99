//! One pod watcher across dispatcher replicas: the holder of the watch Lease; a standby takes over when the
//! holder dies, and a replica shutting down gives the Lease up.

mod common;

use std::time::Duration;

use airlock_kube_emulator::Kind;
use airlock_test_support::wait_until;
use common::{Env, NS, request};

const T: Duration = Duration::from_secs(30);
const LEASE: &str = "airlock-dispatcher-watch";

/// Pod watch requests the emulator has answered (one per watching replica while nothing breaks).
fn pod_watches(env: &Env) -> usize {
    env.emu
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.uri.contains("/pods?") && r.uri.contains("watch=true"))
        .count()
}

/// Successful `(GET, PUT)` requests on the watch Lease: the holder reads before each renewal, a standby
/// only reads, so the difference counts the standby's refused attempts.
fn lease_reads_and_writes(env: &Env) -> (usize, usize) {
    let reqs = env.emu.requests();
    let on_lease = |m: &str| {
        reqs.iter()
            .filter(|r| {
                r.method == m && r.status == 200 && r.uri.contains(&format!("/leases/{LEASE}"))
            })
            .count()
    };
    (on_lease("GET"), on_lease("PUT"))
}

fn lease_spec(env: &Env, field: &str) -> Option<serde_json::Value> {
    env.emu
        .object(Kind::Lease, NS, LEASE)?
        .pointer(&format!("/spec/{field}"))
        .cloned()
}

fn holder(env: &Env) -> Option<String> {
    lease_spec(env, "holderIdentity")?
        .as_str()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_replicas_only_the_lease_holder_watches_pods_and_a_standby_takes_over_when_it_dies()
-> anyhow::Result<()> {
    let env = Env::start().await?;
    let args = ["--watch-lease-duration", "2s"];
    let (t1, _s1) = env.spawn(env.config(&args));
    let first = wait_until(T, "a replica to hold the watch lease", || async {
        holder(&env)
    })
    .await?;
    wait_until(T, "the holder's pod watch", || async {
        (pod_watches(&env) == 1).then_some(())
    })
    .await?;

    let (t2, s2) = env.spawn(env.config(&args));
    wait_until(T, "the second replica to try the lease twice", || async {
        let (reads, writes) = lease_reads_and_writes(&env);
        (reads >= writes + 2).then_some(())
    })
    .await?;
    env.publish(
        "default",
        &request("lease-1", &["sh", "-c", "sleep 1"]),
        None,
    )
    .await?;
    env.wait_status("lease-1", "running", T).await?;
    assert_eq!(pod_watches(&env), 1, "only the holder watches pods");
    assert_eq!(holder(&env).as_deref(), Some(first.as_str()));

    // The holder dies without a word: its Lease expires and the standby takes it.
    t1.abort();
    assert!(t1.await.is_err_and(|e| e.is_cancelled()));
    let second = wait_until(T, "the standby to take the watch lease", || async {
        holder(&env).filter(|h| *h != first)
    })
    .await?;
    assert_eq!(lease_spec(&env, "leaseTransitions"), Some(1.into()));
    wait_until(T, "the new holder's pod watch", || async {
        (pod_watches(&env) == 2).then_some(())
    })
    .await?;
    env.publish(
        "default",
        &request("lease-2", &["sh", "-c", "sleep 1"]),
        None,
    )
    .await?;
    env.wait_status("lease-2", "running", T).await?;

    // Shutting down gives the Lease up at once.
    s2.cancel();
    t2.await?;
    assert_eq!(holder(&env), None, "{second} released the lease");
    Ok(())
}

#[tokio::test]
async fn with_the_watch_lease_off_every_replica_watches_pods() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let (t1, s1) = env.spawn(env.config(&["--watch-lease", ""]));
    let (t2, s2) = env.spawn(env.config(&["--watch-lease", ""]));
    wait_until(T, "both replicas' pod watches", || async {
        (pod_watches(&env) == 2).then_some(())
    })
    .await?;
    assert!(env.emu.objects(Kind::Lease).is_empty());
    s1.cancel();
    s2.cancel();
    t1.await?;
    t2.await?;
    Ok(())
}
