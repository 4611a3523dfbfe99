//! The end-to-end path checked only through the Kubernetes API, on the real test cluster
//! (`AIRLOCK_TEST_CLUSTER`, see `tests/support/src/cluster`): each test in a sandbox namespace of its own
//! made as `deploy/base` makes `airlock-sandbox`, the dispatcher with its ServiceAccount's token and the
//! janitor's view (`KubeBackend`) with the janitor's, so the shipped RBAC is what the API server enforces.
//! Pod states are real: the kubelet runs busybox from the cluster's loopback registry, kills on OOM and at
//! the deadline, and evictions go through the Eviction API. Faults a real API server does not produce on
//! demand stay with the emulator in the other test files.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use airlock_backend::kube::{KubeBackend, KubeConfig};
use airlock_backend::{Phase, Removed};
use airlock_test_support::cluster::{Sandbox, TestCluster};
use airlock_test_support::oci::{self, ImageSpec, Pusher};
use common::{Env, policy_file, request};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, EvictParams, ListParams};
use kube::runtime::wait::await_condition;
use serde_json::json;

const T: Duration = Duration::from_secs(120);

/// One test's sandbox namespace on the test cluster.
struct Cluster {
    sandbox: Sandbox,
    /// The dispatcher's kubeconfig (its ServiceAccount).
    kubeconfig: PathBuf,
    /// An admin client, for the test's own reads.
    client: kube::Client,
    /// The janitor's client (its ServiceAccount), for the backend's view.
    janitor: kube::Client,
    ns: String,
    /// busybox, by digest, in the cluster's registry.
    image: String,
}

impl Cluster {
    async fn new(name: &str) -> anyhow::Result<Self> {
        let test = TestCluster::from_env()?;
        let sandbox = test.sandbox(name).await?;
        let spec = ImageSpec::new(vec![oci::busybox_layer("busybox")?])
            .with_run(json!({"Env": ["PATH=/bin"]}));
        let image = Pusher::plain_host(&test.registry()?)
            .push_once("busybox:1", &spec)
            .await?;
        let kubeconfig = sandbox.kubeconfig_for("dispatcher").await?;
        let janitor =
            airlock_backend::kube::client(Some(&sandbox.kubeconfig_for("janitor").await?)).await?;
        Ok(Self {
            kubeconfig,
            client: sandbox.client(),
            janitor,
            ns: sandbox.namespace.clone(),
            image,
            sandbox,
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

    /// A request for busybox running `command`.
    fn request(&self, id: &str, command: &[&str]) -> serde_json::Value {
        let mut r = request(id, command);
        r["image"] = json!(self.image);
        r
    }

    /// The janitor's view of the cluster.
    fn backend(&self) -> KubeBackend {
        KubeBackend::new(self.janitor.clone(), KubeConfig::new(&self.ns))
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn policies(&self) -> Api<NetworkPolicy> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn cleanup(self) {
        let _ = self.sandbox.delete().await;
    }
}

fn config(env: &Env, cluster: &Cluster) -> airlock_dispatcher::Config {
    config_with(env, cluster, &[])
}

fn config_with(env: &Env, cluster: &Cluster, extra: &[&str]) -> airlock_dispatcher::Config {
    let args = cluster.args();
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(extra);
    env.config(&args)
}

fn pod_phase(phase: &'static str) -> impl Fn(Option<&Pod>) -> bool {
    move |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            == Some(phase)
    }
}

/// A request with every part that reaches the objects (named egress destinations of both kinds, resources,
/// env, labels, a deadline): the real API server validates the policy and the pod it becomes, which is how
/// the objects the dispatcher makes are known to be valid Kubernetes (the emulator's tests check their
/// shape, not their validity).
#[tokio::test]
async fn on_the_cluster_a_request_becomes_a_policy_and_a_pod_that_runs_to_completion()
-> anyhow::Result<()> {
    let env = Env::start().await?;
    let cluster = Cluster::new("run").await?;
    let dir = tempfile::tempdir()?;
    let policy = policy_file(&dir);
    let (task, stop) = env.spawn(config_with(&env, &cluster, &["--policy-file", &policy]));
    let mut req = cluster.request(
        "e2e-1",
        &[
            "sh",
            "-c",
            "echo hello from $AIRLOCK_RUN_ID as $(id -u), $GREETING",
        ],
    );
    req["egress"] = json!(["pypi", "cache"]);
    req["deadline_seconds"] = json!(120);
    req["env"] = json!({ "GREETING": "hi" });
    req["resources"] = json!({ "limits": { "cpu": "500m", "memory": "256Mi" } });
    req["labels"] = json!({ "team": "ml" });
    env.publish("default", &req, Some("e2e-1")).await?;
    let name = "airlock-run-e2e-1";
    tokio::time::timeout(
        T,
        await_condition(cluster.pods(), name, pod_phase("Succeeded")),
    )
    .await??;
    let np = cluster.policies().get(name).await?;
    let pod = cluster.pods().get(name).await?;
    let egress = np
        .spec
        .as_ref()
        .and_then(|s| s.egress.as_ref())
        .map_or(0, Vec::len);
    assert_eq!(egress, 4, "nats, dns, pypi, cache: {np:?}");
    assert_eq!(
        pod.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("team"))
            .map(String::as_str),
        Some("ml")
    );
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
    let backend = cluster.backend();
    let seen = backend.observe("e2e-1").await?.expect("observed");
    assert_eq!(
        (seen.phase, seen.exit_code, seen.queue.as_deref()),
        (Phase::Succeeded, Some(0), Some("default"))
    );
    assert!(seen.finished_at.is_some() && !seen.lost);
    let logs = backend.logs_tail("e2e-1", 1024).await?;
    assert!(logs.contains("hello from e2e-1 as "), "logs: {logs:?}");
    assert!(logs.contains(", hi"), "the request's env: {logs:?}");
    assert!(
        logs.contains("as 65532"),
        "runs as the non-root uid: {logs:?}"
    );
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
    let cluster = Cluster::new("dup").await?;
    for _ in 0..3 {
        env.publish("default", &cluster.request("e2e-dup", &["true"]), None)
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
    // The run's policy beside the namespace's own `default-deny-all`.
    let nps = cluster
        .policies()
        .list(&ListParams::default().labels("airlock.dev/run-id"))
        .await?;
    let names: Vec<_> = nps
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(names, ["airlock-run-e2e-dup"]);
    stop.cancel();
    task.await?;
    cluster.cleanup().await;
    Ok(())
}

/// Real pod states as the backend reads them: an eviction through the Eviction API (as `kubectl drain`
/// makes it) is a lost job, an out-of-memory kill and an exit code are the job's own, the pod's deadline
/// is `DeadlineExceeded`.
#[tokio::test]
async fn observe_maps_evictions_oom_kills_deadlines_and_exit_codes() -> anyhow::Result<()> {
    let env = Env::start().await?;
    let cluster = Cluster::new("observe").await?;
    let (task, stop) = env.spawn(config(&env, &cluster));
    let mut slow = cluster.request("ev-1", &["sleep", "30"]);
    slow["deadline_seconds"] = json!(60);
    env.publish("default", &slow, None).await?;
    // `tail` keeps every byte of a stream without newlines: it grows until the memory limit kills it.
    let mut oom = cluster.request("oom-1", &["tail", "/dev/zero"]);
    oom["resources"] = json!({"limits": {"memory": "32Mi"}, "requests": {"memory": "32Mi"}});
    env.publish("default", &oom, None).await?;
    env.publish(
        "default",
        &cluster.request("exit-3", &["sh", "-c", "exit 3"]),
        None,
    )
    .await?;
    let mut dl = cluster.request("dl-1", &["sleep", "30"]);
    dl["deadline_seconds"] = json!(1);
    env.publish("default", &dl, None).await?;
    tokio::time::timeout(
        T,
        await_condition(cluster.pods(), "airlock-run-ev-1", pod_phase("Running")),
    )
    .await??;
    env.wait_status("ev-1", "running", T).await?;
    cluster
        .pods()
        .evict("airlock-run-ev-1", &EvictParams::default())
        .await?;
    let backend = cluster.backend();
    let ev = airlock_test_support::wait_until(T, "ev-1 observed lost", || async {
        backend
            .observe("ev-1")
            .await
            .ok()
            .flatten()
            .filter(|o| o.lost)
    })
    .await?;
    assert_eq!(
        ev.reason.as_ref().map(ToString::to_string).as_deref(),
        Some("Evicted"),
        "{ev:?}"
    );
    for id in ["oom-1", "exit-3", "dl-1"] {
        let name = format!("airlock-run-{id}");
        tokio::time::timeout(
            T,
            await_condition(cluster.pods(), &name, pod_phase("Failed")),
        )
        .await??;
    }
    let oom = backend.observe("oom-1").await?.expect("oom-1");
    assert_eq!(
        (
            oom.reason.as_ref().map(ToString::to_string).as_deref(),
            oom.exit_code,
            oom.lost
        ),
        (Some("OOMKilled"), Some(137), false)
    );
    let ex = backend.observe("exit-3").await?.expect("exit-3");
    assert_eq!((ex.exit_code, ex.lost), (Some(3), false));
    let dl = backend.observe("dl-1").await?.expect("dl-1");
    assert_eq!(
        (
            dl.reason.as_ref().map(ToString::to_string).as_deref(),
            dl.lost
        ),
        (Some("DeadlineExceeded"), false)
    );
    stop.cancel();
    task.await?;
    cluster.cleanup().await;
    Ok(())
}
