//! Kubernetes mode on a real API server: the test cluster of `AIRLOCK_TEST_CLUSTER` (`scripts/test-cluster up
//! DIR`), shared with whatever else uses it (other engineers' tests), so nothing cluster-wide is touched: each
//! phase runs in a namespace of its own made as `deploy/base` makes `airlock-sandbox`, deleted (and waited
//! for) afterwards, and the services talk to the API server with their ServiceAccounts' tokens.
//! - [`held`]: dispatch with the pods held unschedulable (API work only), beside the client-go ceiling of the
//!   same NetworkPolicy+Pod pairs at the same concurrency ([`pairs`]).
//! - [`e2e`]: a burst of small runs end to end with the kubelet running the pods: runs/s, p50/p99 submit →
//!   succeeded, reap lag.
//!
//! The cluster's own processes (by the pids `DIR/pids` records) have their CPU read too; it includes
//! whatever else used the cluster meanwhile, so it is an upper bound of what Airlock's runs cost it.
//!
//! # Layout
//! - this module: the stage, the row when it is not run, the cluster's CPU, namespace deletion.
//! - [`held`], [`pairs`], [`e2e`]: the phases.

mod e2e;
mod held;
mod pairs;

use std::path::PathBuf;
use std::time::Duration;

use airlock_test_support::cluster::{Sandbox, TestCluster};
use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;

use crate::Scale;
use crate::report::Row;

/// The variable naming the running test cluster's directory.
pub const ENV: &str = "AIRLOCK_TEST_CLUSTER";
/// Requests each dispatcher handles at once (its default), and the `pairs` ceiling's concurrency.
const CONCURRENCY: usize = 16;
/// How long a deleted namespace may take to go.
const GONE: Duration = Duration::from_secs(300);

/// Runs the stage; fails, naming how to start one, without a test cluster.
pub async fn run(scale: &Scale) -> Result<Vec<Row>> {
    let cluster = TestCluster::from_env()
        .context("the kube-real stage measures Airlock against a real Kubernetes API server")?;
    let mut rows = held::run(&cluster, scale).await?;
    rows.extend(e2e::run(&cluster, scale).await?);
    Ok(rows)
}

/// Whether a test cluster is named (`all` runs the stage only then).
pub fn configured() -> bool {
    std::env::var_os(ENV).is_some()
}

/// The row `all` prints in the stage's place when no test cluster is named.
pub fn not_run() -> Row {
    Row {
        what: "kube-real (Kubernetes mode on a real API server): not run".into(),
        figure: format!(
            "{ENV} is not set: start a cluster with `scripts/test-cluster up DIR` and set {ENV}=DIR"
        ),
        ceiling: None,
        cpu: String::new(),
    }
}

/// The flags of a service in kube mode against namespace `ns` with the credentials of `kubeconfig`.
fn kube_flags(kubeconfig: &std::path::Path, ns: &str) -> Vec<String> {
    vec![
        "--runtime".into(),
        "kube".into(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--namespace".into(),
        ns.into(),
    ]
}

/// Deletes the namespace of `sb` (whatever the outcome `out` of the phase that ran in it) and waits until it
/// is gone, so that its pods load the API server no longer; then `out`.
async fn finish<T>(sb: Sandbox, out: Result<T>) -> Result<T> {
    let (ns, client) = (sb.namespace.clone(), sb.client());
    eprintln!("[kube-real] deleting namespace {ns}");
    let deleted = sb.delete().await;
    let gone = airlock_test_support::wait_until(GONE, &format!("namespace {ns} gone"), || {
        let api = Api::<Namespace>::all(client.clone());
        let ns = ns.clone();
        async move { api.get_opt(&ns).await.ok()?.is_none().then_some(()) }
    })
    .await;
    let v = out?;
    deleted?;
    gone?;
    Ok(v)
}

/// The CPU time of the cluster's processes, by the names `DIR/pids` gives them.
struct Components(Vec<(String, u32)>);

/// The API server and its store.
const API: &[&str] = &["kube-apiserver", "etcd"];
/// Every process the cluster started but the registries.
const NODE: &[&str] = &[
    "kube-apiserver",
    "etcd",
    "kube-scheduler",
    "kube-controller-manager",
    "kubelet",
    "containerd",
];

impl Components {
    fn open() -> Result<Self> {
        let dir = PathBuf::from(std::env::var_os(ENV).context(ENV)?);
        let text = std::fs::read_to_string(dir.join("pids"))
            .with_context(|| format!("{}/pids", dir.display()))?;
        Ok(Self(
            text.lines()
                .filter_map(|l| {
                    let (name, pid) = l.split_once(' ')?;
                    Some((name.to_string(), pid.trim().parse().ok()?))
                })
                .collect(),
        ))
    }

    /// The CPU used so far by the processes `names`.
    fn cpu(&self, names: &[&str]) -> Result<Duration> {
        let mut sum = Duration::ZERO;
        for name in names {
            let (_, pid) = self
                .0
                .iter()
                .find(|(n, _)| n == name)
                .with_context(|| format!("no {name} in the cluster's pids"))?;
            sum += crate::world::proc_cpu_fields(&format!("/proc/{pid}/stat"), 11..13)
                .with_context(|| format!("{name} (pid {pid}) is not running"))?;
        }
        Ok(sum)
    }
}
