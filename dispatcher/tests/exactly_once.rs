//! Exactly once under crashes and replicas: a dispatcher SIGKILLed mid-flight, two replicas on 1,000 requests.

mod common;

use std::time::{Duration, Instant};

use airlock_kube_emulator::{FaultAction, Kind};
use airlock_test_support::{Service, wait_until};
use common::{Env, NS, SECRET, request};
use futures::StreamExt;

#[tokio::test]
async fn a_redelivery_after_a_dispatcher_is_killed_mid_flight_still_yields_one_pod()
-> anyhow::Result<()> {
    let env = Env::start().await?;
    env.emu
        .hold_pending("app.kubernetes.io/managed-by=airlock")?;
    // The owner-reference patch keeps failing, so the first dispatcher has created the policy and the pod but
    // has not acknowledged the request when it is killed.
    env.emu.fail_next(
        Some("PATCH"),
        "/networkpolicies",
        FaultAction::InternalError,
        100_000,
    );
    let envs = vec![
        ("AIRLOCK_NATS_URL", env.nats.url()),
        ("AIRLOCK_REDIS_URL", env.redis.url()),
        ("AIRLOCK_TOKEN_SECRET", SECRET.to_string()),
        (
            "AIRLOCK_KUBECONFIG",
            env.emu.kubeconfig_path().display().to_string(),
        ),
        ("AIRLOCK_NAMESPACE", NS.to_string()),
        ("AIRLOCK_NATS_EGRESS_CIDRS", "10.0.0.10/32".to_string()),
        ("AIRLOCK_QUEUES", "default=10".to_string()),
        ("AIRLOCK_DISPATCHER_ACK_WAIT", "3s".to_string()),
        ("AIRLOCK_RETRY_TIMES", "1000".to_string()),
        ("AIRLOCK_RETRY_MAX_DELAY", "100ms".to_string()),
    ];
    let mut first = Service::start("airlock-dispatcher", &[], &envs)?;
    env.publish("default", &request("crash-1", &["true"]), Some("crash-1"))
        .await?;
    wait_until(
        Duration::from_secs(20),
        "the pod to exist and the patch to be failing",
        || async {
            let patched = env
                .emu
                .requests()
                .iter()
                .any(|r| r.method == "PATCH" && r.injected);
            (patched
                && env
                    .emu
                    .object(Kind::Pod, NS, "airlock-run-crash-1")
                    .is_some())
            .then_some(())
        },
    )
    .await?;
    first.kill().await?;
    let info = env.consumer_info("default").await?;
    assert_eq!(
        info.num_ack_pending, 1,
        "the request was in flight: {info:?}"
    );
    assert_eq!(
        env.record("crash-1")
            .await
            .get("status")
            .map(String::as_str),
        Some("queued")
    );

    env.emu.clear_faults();
    let _second = Service::start("airlock-dispatcher", &[], &envs)?;
    let rec = env
        .wait_status("crash-1", "pending", Duration::from_secs(30))
        .await?;
    assert_eq!(rec["attempt"], "1");
    wait_until(
        Duration::from_secs(10),
        "the redelivered request to be acknowledged",
        || async {
            let i = env.consumer_info("default").await.ok()?;
            (i.num_ack_pending == 0 && i.num_pending == 0).then_some(i)
        },
    )
    .await?;
    assert_eq!(env.emu.create_count(Kind::Pod), 1, "still one pod");
    assert_eq!(
        env.emu.create_count(Kind::NetworkPolicy),
        1,
        "still one policy"
    );
    let conflicts = env
        .emu
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.status == 409)
        .count();
    assert_eq!(conflicts, 2, "the redelivery found both objects by name");
    let np = env
        .emu
        .object(Kind::NetworkPolicy, NS, "airlock-run-crash-1")
        .expect("policy");
    assert_eq!(
        np.pointer("/metadata/ownerReferences/0/kind")
            .and_then(|k| k.as_str()),
        Some("Pod")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatcher_replicas_consuming_1000_requests_create_exactly_1000_pods()
-> anyhow::Result<()> {
    const N: usize = 1000;
    let env = Env::start().await?;
    // Pods stay Pending (no 1,000 processes); every replica still watches all of them.
    env.emu
        .hold_pending("app.kubernetes.io/managed-by=airlock")?;
    let published = Instant::now();
    let acks: Vec<_> = futures::stream::iter(0..N)
        .map(|i| {
            let js = env.js.clone();
            async move {
                let mut h = async_nats::HeaderMap::new();
                h.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    format!("load-{i}").as_str(),
                );
                let body = serde_json::to_vec(&request(&format!("load-{i}"), &["true"]))?;
                js.publish_with_headers("airlock.runs.default", h, body.into())
                    .await?
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for a in acks {
        a?;
    }
    let publish_time = published.elapsed();

    let args = ["--queues", "default=5000", "--max-running", "5000"];
    let started = Instant::now();
    let (t1, s1) = env.spawn(env.config(&args));
    let (t2, s2) = env.spawn(env.config(&args));
    env.emu
        .wait_for("1,000 pods", Duration::from_secs(90), |h| {
            h.objects(Kind::Pod).len() >= N
        })
        .await?;
    let pods_time = started.elapsed();
    wait_until(
        Duration::from_secs(60),
        "every request acknowledged",
        || async {
            let i = env.consumer_info("default").await.ok()?;
            (i.num_pending == 0 && i.num_ack_pending == 0).then_some(())
        },
    )
    .await?;
    let acked_time = started.elapsed();
    let mut conn = env.redis.connection().await?;
    let mut pipe = redis::pipe();
    for i in 0..N {
        pipe.hget(format!("airlock:run:load-{i}"), "status");
    }
    let statuses: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
    let pending = statuses
        .iter()
        .filter(|s| s.as_deref() == Some("pending"))
        .count();
    assert_eq!(pending, N, "every run recorded pending");
    assert_eq!(env.emu.objects(Kind::Pod).len(), N);
    assert_eq!(env.emu.objects(Kind::NetworkPolicy).len(), N);
    assert_eq!(
        env.emu.create_count(Kind::Pod),
        N as u64,
        "exactly 1,000 pod creations"
    );
    assert_eq!(env.emu.create_count(Kind::NetworkPolicy), N as u64);
    let conflicts = env
        .emu
        .requests()
        .iter()
        .filter(|r| r.status == 409)
        .count();
    eprintln!(
        "published {N} in {publish_time:?}; {N} pods after {pods_time:?}; all acknowledged after {acked_time:?}; {conflicts} conflicts"
    );
    s1.cancel();
    s2.cancel();
    t1.await?;
    t2.await?;
    Ok(())
}
