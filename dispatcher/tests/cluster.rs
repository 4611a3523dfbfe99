//! The end-to-end path checked only through the Kubernetes API, so it runs unchanged against a real cluster.
//!
//! By default the cluster is the emulator. With `AIRLOCK_TEST_KUBECONFIG=/path/to/kubeconfig` the same tests
//! run against that cluster (e.g. kind, see `.github/workflows/kind-e2e.yml`), each in a namespace of its own
//! that is deleted afterwards; the image `docker.io/library/busybox:1.36` must be pullable there.
//! Emulator-only checks (fault injection, forced pod states) live in the other test files and below.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use airlock_backend::kube::{KubeBackend, KubeConfig};
use airlock_backend::{Phase, Removed};
use airlock_kube_emulator::ForcedState;
use common::{Env, request};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::wait::await_condition;
use serde_json::json;

const T: Duration = Duration::from_secs(120);

/// The cluster under test: the real one from `AIRLOCK_TEST_KUBECONFIG`, else the environment's emulator.
struct Cluster {
    kubeconfig: PathBuf,
    client: kube::Client,
    ns: String,
    real: bool,
}

impl Cluster {
    async fn new(env: &Env, name: &str) -> anyhow::Result<Self> {
        let (kubeconfig, real) = match std::env::var_os("AIRLOCK_TEST_KUBECONFIG") {
            Some(p) => (PathBuf::from(p), true),
            None => {
                eprintln!(
                    "AIRLOCK_TEST_KUBECONFIG not set: running against the Kubernetes emulator"
                );
                (env.emu.kubeconfig_path().to_path_buf(), false)
            }
        };
        let client = airlock_backend::kube::client(Some(&kubeconfig)).await?;
        let ns = format!("airlock-e2e-{name}-{}", std::process::id());
        let nsobj: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns } }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &nsobj)
            .await?;
        Ok(Self {
            kubeconfig,
            client,
            ns,
            real,
        })
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--kubeconfig".into(),
            self.kubeconfig.display().to_string(),
            "--namespace".into(),
            self.ns.clone(),
        ]
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn policies(&self) -> Api<NetworkPolicy> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn cleanup(self) {
        let _ = Api::<Namespace>::all(self.client)
            .delete(&self.ns, &DeleteParams::default())
            .await;
    }
}

fn config(env: &Env, cluster: &Cluster) -> airlock_dispatcher::Config {
    let args = cluster.args();
    env.config(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn pod_phase(phase: &'static str) -> impl Fn(Option<&Pod>) -> bool {
    move |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            == Some(phase)
    }
}

#[tokio::test]
async fn on_the_cluster_a_request_becomes_a_policy_and_a_pod_that_runs_to_completion()
-> anyhow::Result<()> {
    let env = Env::start().await?;
    let cluster = Cluster::new(&env, "run").await?;
    let (task, stop) = env.spawn(config(&env, &cluster));
    env.publish(
        "default",
        &request(
            "e2e-1",
            &["sh", "-c", "echo hello from $AIRLOCK_RUN_ID as $(id -u)"],
        ),
        Some("e2e-1"),
    )
    .await?;
    let name = "airlock-run-e2e-1";
    tokio::time::timeout(
        T,
        await_condition(cluster.pods(), name, pod_phase("Succeeded")),
    )
    .await??;
    let np = cluster.policies().get(name).await?;
    let pod = cluster.pods().get(name).await?;
    let owner = &np.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), Some(&owner.uid)),
        ("Pod", pod.metadata.uid.as_ref())
    );
    assert!(
        np.metadata.creation_timestamp <= pod.metadata.creation_timestamp,
        "the policy exists before the pod"
    );

    // The backend's view, as the janitor sees it.
    let backend = KubeBackend::new(cluster.client.clone(), KubeConfig::new(&cluster.ns));
    let seen = backend.observe("e2e-1").await?.expect("observed");
    assert_eq!(
        (seen.phase, seen.exit_code, seen.queue.as_deref()),
        (Phase::Succeeded, Some(0), Some("default"))
    );
    assert!(seen.finished_at.is_some() && !seen.lost);
    let logs = backend.logs_tail("e2e-1", 1024).await?;
    assert!(logs.contains("hello from e2e-1 as "), "logs: {logs:?}");
    if cluster.real {
        // The emulator's kubelet runs processes as the test's own user; a real kubelet applies runAsUser.
        assert!(
            logs.contains("as 65532"),
            "runs as the non-root uid: {logs:?}"
        );
    }
    assert_eq!(
        backend.logs_tail("e2e-1", 5).await?.len(),
        5,
        "only the tail"
    );
    assert_eq!(backend.list().await?.len(), 1);
    airlock_test_support::wait_until(T, "e2e-1 recorded pending or running", || async {
        let r = env.record("e2e-1").await;
        matches!(
            r.get("status").map(String::as_str),
            Some("pending" | "running")
        )
        .then_some(())
    })
    .await?;

    assert_eq!(backend.remove("e2e-1").await?, Removed::Deleted);
    tokio::time::timeout(
        T,
        await_condition(cluster.pods(), name, |p: Option<&Pod>| p.is_none()),
    )
    .await??;
    assert!(cluster.policies().get_opt(name).await?.is_none());
    assert_eq!(backend.remove("e2e-1").await?, Removed::Absent);
    assert!(backend.observe("e2e-1").await?.is_none());
    stop.cancel();
    task.await?;
    cluster.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn on_the_cluster_duplicates_yield_one_pod_and_invalid_requests_create_nothing()
-> anyhow::Result<()> {
    let env = Env::start().await?;
    let cluster = Cluster::new(&env, "dup").await?;
    for _ in 0..3 {
        env.publish("default", &request("e2e-dup", &["true"]), None)
            .await?;
    }
    env.publish(
        "default",
        &json!({ "id": "e2e-bad", "image": "", "egress": ["nowhere"] }),
        None,
    )
    .await?;
    let (task, stop) = env.spawn(config(&env, &cluster));
    env.wait_status("e2e-bad", "rejected", T).await?;
    airlock_test_support::wait_until(T, "every copy acknowledged", || async {
        let i = env.consumer_info("default").await.ok()?;
        (i.num_pending == 0 && i.num_ack_pending == 0 && i.delivered.stream_sequence == 4)
            .then_some(())
    })
    .await?;
    let pods = cluster.pods().list(&ListParams::default()).await?;
    let names: Vec<_> = pods
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(names, ["airlock-run-e2e-dup"]);
    let nps = cluster.policies().list(&ListParams::default()).await?;
    assert_eq!(nps.items.len(), 1);
    stop.cancel();
    task.await?;
    cluster.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn observe_maps_evictions_oom_kills_deadlines_and_exit_codes() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let cluster = Cluster::new(&env, "observe").await?;
    if cluster.real {
        eprintln!("forcing pod states needs the emulator; skipped on a real cluster");
        cluster.cleanup().await;
        return Ok(());
    }
    let (task, stop) = env.spawn(config(&env, &cluster));
    let mut slow = request("ev-1", &["sleep", "30"]);
    slow["deadline_seconds"] = json!(60);
    env.publish("default", &slow, None).await?;
    env.publish("default", &request("oom-1", &["sleep", "30"]), None)
        .await?;
    env.publish("default", &request("exit-3", &["sh", "-c", "exit 3"]), None)
        .await?;
    let mut dl = request("dl-1", &["sleep", "30"]);
    dl["deadline_seconds"] = json!(1);
    env.publish("default", &dl, None).await?;
    for id in ["ev-1", "oom-1"] {
        let name = format!("airlock-run-{id}");
        tokio::time::timeout(
            T,
            await_condition(cluster.pods(), &name, pod_phase("Running")),
        )
        .await??;
        env.wait_status(id, "running", T).await?;
    }
    assert!(
        env.emu
            .force_pod_state(&cluster.ns, "airlock-run-ev-1", ForcedState::Evicted)
    );
    assert!(
        env.emu
            .force_pod_state(&cluster.ns, "airlock-run-oom-1", ForcedState::OomKilled)
    );
    for id in ["ev-1", "oom-1", "exit-3", "dl-1"] {
        let name = format!("airlock-run-{id}");
        tokio::time::timeout(
            T,
            await_condition(cluster.pods(), &name, pod_phase("Failed")),
        )
        .await??;
    }
    let backend = KubeBackend::new(cluster.client.clone(), KubeConfig::new(&cluster.ns));
    let ev = backend.observe("ev-1").await?.expect("ev-1");
    assert_eq!(
        (ev.phase, ev.reason.as_deref(), ev.lost),
        (Phase::Failed, Some("Evicted"), true)
    );
    let oom = backend.observe("oom-1").await?.expect("oom-1");
    assert_eq!(
        (oom.reason.as_deref(), oom.exit_code, oom.lost),
        (Some("OOMKilled"), Some(137), false)
    );
    let ex = backend.observe("exit-3").await?.expect("exit-3");
    assert_eq!((ex.exit_code, ex.lost), (Some(3), false));
    let dl = backend.observe("dl-1").await?.expect("dl-1");
    assert_eq!(
        (dl.reason.as_deref(), dl.lost),
        (Some("DeadlineExceeded"), false)
    );
    stop.cancel();
    task.await?;
    cluster.cleanup().await;
    Ok(())
}
