//! The ceiling of Kubernetes mode on a real API server: `pairs` (`tests/cluster/cmd/pairs`, client-go, built
//! by `scripts/cluster-build` beside the cluster's `kubectl`) creating copies of one NetworkPolicy+Pod pair
//! the dispatcher created, policy first, at the dispatcher's concurrency, with the dispatcher's credentials.

use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_schemas::labels;
use airlock_test_support::cluster::{Sandbox, TestCluster};
use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ApiResource, DynamicObject};
use serde_json::Value;

use super::{API, CONCURRENCY, Components};
use crate::report::rate;
use crate::world::proc_cpu_fields;

/// One NetworkPolicy+Pod pair as the API server has it (JSON).
pub struct Pair {
    pod: Value,
    policy: Value,
}

impl Pair {
    /// The pair the dispatcher created for run `run_id` in `sb`'s namespace, read whole with the admin client.
    pub async fn of(sb: &Sandbox, run_id: &str) -> Result<Self> {
        let name = labels::object_name(run_id);
        let get = |r: ApiResource| {
            let api: Api<DynamicObject> = Api::namespaced_with(sb.client(), &sb.namespace, &r);
            let name = name.clone();
            async move {
                let o = api
                    .get(&name)
                    .await
                    .with_context(|| format!("{} {name}", r.kind))?;
                anyhow::Ok(serde_json::to_value(o)?)
            }
        };
        Ok(Self {
            pod: get(ApiResource::erase::<Pod>(&())).await?,
            policy: get(ApiResource::erase::<NetworkPolicy>(&())).await?,
        })
    }
}

/// What the ceiling measured.
pub struct Ceiling {
    /// Pairs per second.
    pub rate: f64,
    /// The `pairs` process's CPU.
    pub cpu: Duration,
    /// The API server's and etcd's meanwhile.
    pub api_cpu: Duration,
}

/// `pairs`: `AIRLOCK_PAIRS`, or beside the cluster's `kubectl`.
fn binary(cluster: &TestCluster) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("AIRLOCK_PAIRS") {
        return Ok(p.into());
    }
    let kubectl = cluster.kubectl()?;
    let p = kubectl.with_file_name("pairs");
    if !p.exists() {
        bail!(
            "{} not found: build it with scripts/cluster-build (it builds cmd/pairs beside kubectl)",
            p.display()
        );
    }
    Ok(p)
}

/// Creates `n` copies of `pair` in `ns` with `kubeconfig`'s credentials, [`CONCURRENCY`] at once.
pub async fn run(
    cluster: &TestCluster,
    kubeconfig: &Path,
    ns: &str,
    pair: &Pair,
    n: usize,
    comps: &Components,
) -> Result<Ceiling> {
    let dir = tempfile::Builder::new()
        .prefix("airlock-pairs-")
        .tempdir()?;
    let (pod, policy) = (dir.path().join("pod.json"), dir.path().join("policy.json"));
    std::fs::write(&pod, serde_json::to_vec(&pair.pod)?)?;
    std::fs::write(&policy, serde_json::to_vec(&pair.policy)?)?;
    let bin = binary(cluster)?;
    // Its CPU is this process's reaped children's: nothing else is reaped meanwhile (the services run on).
    let reaped = || proc_cpu_fields("/proc/self/stat", 13..15);
    let (cpu0, api0) = (reaped()?, comps.cpu(API)?);
    eprintln!("[kube-real] pairs: {n} NetworkPolicy+Pod pairs, {CONCURRENCY} concurrent");
    let out = tokio::process::Command::new(&bin)
        .arg(format!("-kubeconfig={}", kubeconfig.display()))
        .arg(format!("-namespace={ns}"))
        .arg(format!("-pod={}", pod.display()))
        .arg(format!("-policy={}", policy.display()))
        .arg(format!("-n={n}"))
        .arg(format!("-concurrency={CONCURRENCY}"))
        .arg("-prefix=pairs")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {}", bin.display()))?;
    let (cpu, api_cpu) = (reaped()? - cpu0, comps.cpu(API)? - api0);
    if !out.status.success() {
        bail!("{} exited with {}", bin.display(), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().context("pairs printed nothing")?;
    let v: Value = serde_json::from_str(line).with_context(|| format!("pairs printed {line:?}"))?;
    let r = v["per_second"]
        .as_f64()
        .with_context(|| format!("no per_second in {line:?}"))?;
    eprintln!(
        "[ceiling] client-go NetworkPolicy+Pod creates: {}",
        rate(r, "pairs")
    );
    Ok(Ceiling {
        rate: r,
        cpu,
        api_cpu,
    })
}
