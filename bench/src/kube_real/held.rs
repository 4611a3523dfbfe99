//! Dispatch on the real API server with the pods held unschedulable (API work only): runs/s from publish to
//! pod created and request acked, and the dispatcher's CPU per run, beside the client-go ceiling of the same
//! NetworkPolicy+Pod pairs at the same concurrency ([`super::pairs`]).
//!
//! The node is shared, so it is not cordoned: each pod requests more CPU than any node has (within the
//! operator policy's and the LimitRange's maximum of 4), so the scheduler never places one. The namespace's
//! ResourceQuota (`requests.cpu` 64) would admit only 21 such pods: it is deleted from this namespace.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use airlock_test_support::cluster::{Sandbox, TestCluster};
use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::{Node, ResourceQuota};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;

use super::{API, CONCURRENCY, Components, kube_flags};
use crate::Scale;
use crate::dispatch::{publish, queued};
use crate::report::{Row, cpu_ms, rate};
use crate::world::{Child, World, progress};

/// CPU each held pod requests, in cores: more than the node's 2, at most the policy's 4.
const HELD_CPU: u32 = 3;
/// Runs before the measured burst: connections and the watch set up, the pair the ceiling copies.
const WARM: usize = 16;
/// How long the dispatcher's idle CPU is measured.
const IDLE: Duration = Duration::from_secs(3);
/// How long the dispatcher's CPU must stay still to count as settled, and the longest wait for that.
const QUIET: Duration = Duration::from_secs(1);
const SETTLE: Duration = Duration::from_secs(60);
/// Longest a burst may take.
const LIMIT: Duration = Duration::from_secs(600);

/// Runs the phase in a namespace of its own.
pub async fn run(cluster: &TestCluster, scale: &Scale) -> Result<Vec<Row>> {
    unplaceable(cluster).await?;
    let sb = cluster.sandbox("bench-held").await?;
    let out = measure(cluster, &sb, scale).await;
    super::finish(sb, out).await
}

/// Fails unless every node has less CPU than a held pod requests.
async fn unplaceable(cluster: &TestCluster) -> Result<()> {
    let nodes = Api::<Node>::all(cluster.client().await?)
        .list(&ListParams::default())
        .await?;
    for n in nodes {
        let cpu = n
            .status
            .and_then(|s| s.allocatable)
            .and_then(|a| a.get("cpu").cloned())
            .unwrap_or(Quantity(String::new()));
        let millis = cores_millis(&cpu.0);
        if millis.is_none_or(|m| m >= u64::from(HELD_CPU) * 1000) {
            bail!(
                "node {:?} has {} CPUs allocatable: pods requesting {HELD_CPU} would be scheduled, not held",
                n.metadata.name.unwrap_or_default(),
                cpu.0
            );
        }
    }
    Ok(())
}

/// `2` or `1500m` in millicores.
fn cores_millis(q: &str) -> Option<u64> {
    match q.strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => q.parse::<u64>().ok().map(|c| c * 1000),
    }
}

async fn measure(cluster: &TestCluster, sb: &Sandbox, scale: &Scale) -> Result<Vec<Row>> {
    let ns = &sb.namespace;
    Api::<ResourceQuota>::namespaced(sb.client(), ns)
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    let w = World::start().await?;
    let kubeconfig = sb.kubeconfig_for("dispatcher").await?;
    let mut flags = kube_flags(&kubeconfig, ns);
    flags.extend(
        [
            "--nats-egress-cidrs",
            "127.0.0.1/32",
            "--queues",
            "default=1000000",
            "--max-running",
            "1000000",
            "--concurrency",
            &CONCURRENCY.to_string(),
        ]
        .map(String::from),
    );
    let d = w.service("dispatcher", &flags).await?;
    burst(&w, &d, "held-warm", WARM).await?;
    let pair = super::pairs::Pair::of(sb, "held-warm-0").await?;

    let comps = Components::open()?;
    let n = scale.kube_held;
    let m0 = d.metrics().await?;
    // What it spends idle (the Lease, scans), deducted from the settling below.
    let idle = {
        let (c0, t0) = (d.cpu()?, Instant::now());
        tokio::time::sleep(IDLE).await;
        (d.cpu()? - c0).as_secs_f64() / t0.elapsed().as_secs_f64()
    };
    let (api0, d0, t0) = (comps.cpu(API)?, d.cpu()?, Instant::now());
    let one = burst(&w, &d, "held", n).await?;
    let api_cpu = comps.cpu(API)? - api0;
    // The scheduler marks each pod unschedulable in its own time, and the dispatcher handles that change
    // (the run's waiting reason) as it comes: its CPU per run counts until its watch has settled.
    settle(&d).await?;
    let settled = (d.cpu()? - d0).saturating_sub(t0.elapsed().mul_f64(idle));
    let m1 = d.metrics().await?;
    // The ceiling with no dispatcher watching: the copies keep the labels its watch selects.
    drop(d);
    let calls = |name: &str, s: &airlock_runtime::metrics::Samples| s.get(name, &[]);
    let per_run = |name| (calls(name, &m1) - calls(name, &m0)) / n as f64;
    let per_run_of = |label: (&str, &str)| {
        let name = "airlock_backend_api_calls_total";
        (m1.get(name, &[label]) - m0.get(name, &[label])) / n as f64
    };
    let verbs: Vec<String> = ["create", "patch", "get"]
        .iter()
        .map(|v| format!("{v} {:.2}", per_run_of(("verb", v))))
        .collect();
    let not_ok = per_run("airlock_backend_api_calls_total") - per_run_of(("code", "ok"));
    let ceiling = super::pairs::run(cluster, &kubeconfig, ns, &pair, n, &comps).await?;
    let ratio = one.rate / ceiling.rate;
    eprintln!(
        "[kube-real] held: Airlock {} against client-go {} ({:.0}%)",
        rate(one.rate, "runs"),
        rate(ceiling.rate, "pairs"),
        ratio * 100.0
    );
    Ok(vec![
        Row {
            what: format!(
                "kube-real: dispatch on a real API server (pods held unschedulable), 1 replica, {n} runs: \
                 publish → pod created and request acked"
            ),
            figure: rate(one.rate, "runs"),
            ceiling: Some((
                format!(
                    "client-go {} ({CONCURRENCY} concurrent)",
                    rate(ceiling.rate, "NetworkPolicy+Pod pairs")
                ),
                ratio,
            )),
            cpu: format!(
                "{}; {}",
                cpu_ms(one.cpu, n, "dispatcher, during the burst"),
                cpu_ms(
                    settled,
                    n,
                    &format!("to its watch settled, less its idle {:.1} ms/s", idle * 1000.0)
                )
            ),
        },
        Row {
            what: "kube-real: API server per held run (kube-apiserver + etcd; shared with the cluster's other users)"
                .into(),
            figure: String::new(),
            ceiling: None,
            cpu: format!(
                "{}; per client-go pair {}",
                cpu_ms(api_cpu, n, "kube-apiserver + etcd"),
                cpu_ms(ceiling.api_cpu, n, "kube-apiserver + etcd")
            ),
        },
        Row {
            what: "kube-real: dispatcher API calls per held run".into(),
            figure: format!(
                "{:.2} ({}); not ok {not_ok:.2}; retries {:.2}",
                per_run("airlock_backend_api_calls_total"),
                verbs.join(", "),
                per_run("airlock_backend_api_retries_total")
            ),
            ceiling: None,
            cpu: String::new(),
        },
        Row {
            what: format!(
                "ceiling: client-go (`pairs`) creating NetworkPolicy+Pod pairs on the real API server, \
                 {CONCURRENCY} concurrent"
            ),
            figure: rate(ceiling.rate, "pairs"),
            ceiling: None,
            cpu: cpu_ms(ceiling.cpu, n, "pairs"),
        },
    ])
}

/// The request of run `id`: `true`, requesting more CPU than the node has.
fn held(id: &str) -> serde_json::Value {
    let cpu = HELD_CPU.to_string();
    json!({
        "id": id,
        "image": "docker.io/library/busybox:1.36",
        "command": ["true"],
        "deadline_seconds": 3600,
        "resources": {
            "requests": { "cpu": cpu, "memory": "32Mi" },
            "limits": { "cpu": cpu, "memory": "64Mi" },
        },
    })
}

/// Returns once the dispatcher's CPU time has not grown for [`QUIET`] (its watch has no more changes to
/// handle), or after [`SETTLE`].
async fn settle(d: &Child) -> Result<()> {
    let start = Instant::now();
    let (mut last, mut since) = (d.cpu()?, Instant::now());
    while since.elapsed() < QUIET && start.elapsed() < SETTLE {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = d.cpu()?;
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    eprintln!(
        "[kube-real] dispatcher settled after {:.2?}",
        start.elapsed()
    );
    Ok(())
}

/// What one burst measured.
struct Burst {
    rate: f64,
    cpu: Duration,
}

/// Publishes `n` requests `<tag>-<i>` as fast as JetStream takes them and waits until each was acked: the
/// dispatcher acks a request once its pod exists (checked at the end from its launches, not polled: each
/// scrape of its `/metrics` would add to its CPU).
async fn burst(w: &World, d: &Child, tag: &str, n: usize) -> Result<Burst> {
    let launched = || async {
        Ok::<_, anyhow::Error>(d.metrics().await?.get("airlock_runs_launched_total", &[]) as usize)
    };
    let (launched0, cpu0) = (launched().await?, d.cpu()?);
    let published = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let publisher = tokio::spawn(publish(
        w.js.clone(),
        tag.to_string(),
        n,
        published.clone(),
        held,
    ));
    let took = progress(&format!("kube-real {tag}"), n, start, LIMIT, || {
        let published = published.load(Ordering::Acquire);
        async move { Ok(published.saturating_sub(queued(w).await?)) }
    })
    .await?;
    let cpu = d.cpu()? - cpu0;
    publisher.await??;
    let pods = launched().await? - launched0;
    if pods < n {
        bail!("[kube-real {tag}] {n} requests acked but only {pods} pods created");
    }
    Ok(Burst {
        rate: n as f64 / took.as_secs_f64(),
        cpu,
    })
}
