//! End to end on the real cluster, the kubelet running the pods: a burst of small runs (busybox publishing a
//! result with `airlock-emit` to NATS on the address pods reach the host on), through the dispatcher, the
//! ingester and the janitor: runs/s, p50/p99 submit → succeeded (the terminal lifecycle event), and reap lag
//! measured as the reap stage does (the bench's own pod watch → the record's `reaped_at`; and the janitor's
//! `from="observed"`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_schemas::Subjects;
use airlock_test_support::cluster::{Sandbox, TestCluster};
use airlock_test_support::oci::{ImageSpec, Pusher, binary_layer, busybox_layer, users_layer};
use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use super::{CONCURRENCY, Components, NODE, kube_flags};
use crate::Scale;
use crate::ceilings::renamed;
use crate::local::{Cpu, ms, q, submit};
use crate::reap::seen::{Seen, exact_quantile};
use crate::report::{Row, cpu_ms, rate};
use crate::world::{World, progress, quantile};

/// Longest the bare pods may take.
const LIMIT: Duration = Duration::from_secs(600);

/// Runs the phase in a namespace of its own.
pub async fn run(cluster: &TestCluster, scale: &Scale) -> Result<Vec<Row>> {
    let sb = cluster.sandbox("bench-e2e").await?;
    let out = measure(cluster, &sb, scale).await;
    super::finish(sb, out).await
}

/// The job image: busybox and `airlock-emit`, pushed to the cluster's registry; its reference by digest.
async fn image(cluster: &TestCluster) -> Result<String> {
    let emit = airlock_test_support::our_binary("airlock-emit").context(
        "the jobs deliver their results with airlock-emit: build it beside the bench \
         (cargo build [--release] -p airlock-emit)",
    )?;
    let mut spec = ImageSpec::new(vec![
        busybox_layer("airlock bench")?,
        users_layer(),
        binary_layer(&emit, "/bin/airlock-emit")?,
    ])
    .with_run(json!({"Env": ["PATH=/bin"]}));
    for (_, c) in &mut spec.layers {
        *c = airlock_test_support::oci::Compression::None;
    }
    Pusher::plain_host(&cluster.registry()?)
        .push_once("airlock-bench-job:1", &spec)
        .await
}

async fn measure(cluster: &TestCluster, sb: &Sandbox, scale: &Scale) -> Result<Vec<Row>> {
    let ns = &sb.namespace;
    let host = cluster.host_addr()?;
    let image = image(cluster).await?;
    let w = World::start_on(host).await?;
    let mut dispatcher = kube_flags(&sb.kubeconfig_for("dispatcher").await?, ns);
    dispatcher.extend(
        [
            "--nats-egress-cidrs",
            &format!("{host}/32"),
            "--queues",
            "default=1000",
            "--max-running",
            "1000",
            "--concurrency",
            &CONCURRENCY.to_string(),
        ]
        .map(String::from),
    );
    let d = w.service("dispatcher", &dispatcher).await?;
    let i = w.service("ingester", &[]).await?;
    let j = w
        .service(
            "janitor",
            &kube_flags(&sb.kubeconfig_for("janitor").await?, ns),
        )
        .await?;
    let (seen, watch) = Seen::watch(&cluster.kubeconfig(), ns).await?;
    let mut events = w
        .client
        .subscribe(format!("{}.events.>", Subjects::default().prefix()))
        .await?;
    let body = |id: &str| {
        json!({
            "id": id,
            "image": image,
            "command": ["sh", "-c", "printf '{\"ok\":1}' | airlock-emit"],
            "deadline_seconds": 600,
            "resources": {
                "requests": { "cpu": "10m", "memory": "16Mi" },
                "limits": { "cpu": "100m", "memory": "64Mi" },
            },
        })
    };
    // One run first: the node pulls the image once (IfNotPresent), outside the burst.
    submit(&w, "kube-e2e-warm", 1, None, &mut events, &body).await?;

    let comps = Components::open()?;
    let n = scale.kube_e2e;
    let cpu = || -> Result<Cpu> { Ok(Cpu([d.cpu()?, i.cpu()?, j.cpu()?])) };
    let (cpu0, node0, before) = (cpu()?, comps.cpu(NODE)?, j.metrics().await?);
    let start = Instant::now();
    let mut latencies = submit(&w, "kube-e2e", n, None, &mut events, &body).await?;
    let took = start.elapsed();
    let (cpu, node_cpu, after) = (
        cpu()?.since(&cpu0),
        comps.cpu(NODE)? - node0,
        j.metrics().await?,
    );
    latencies.sort();
    eprintln!("[kube-real] {n} runs end to end in {took:.2?}");

    let ids: Vec<String> = (0..n).map(|k| format!("kube-e2e-{k}")).collect();
    let own = seen.lags_of_all(&w, &ids).await?;
    let sample = seen.last_pod().context("no finished pod seen")?;
    watch.abort();
    // Nothing of Airlock may see the copies: they keep its labels.
    drop((d, i, j));
    let bare = bare(sb, &serde_json::to_value(sample)?, n).await?;
    let exact = |p| exact_quantile(&own, p).map_or("-".into(), |s| format!("{:.0} ms", s * 1000.0));
    let observed = |p| {
        let only = [("from", "observed")];
        quantile(&before, &after, "airlock_reap_lag_seconds", &only, p)
            .map_or("-".into(), |s| format!("{:.0} ms", s * 1000.0))
    };
    let within = own.iter().filter(|l| l.0 <= 1.0).count();
    Ok(vec![
        Row {
            what: format!(
                "kube-real: {n} small runs end to end (kubelet live, result via airlock-emit), submit → \
                 succeeded (burst)"
            ),
            figure: rate(n as f64 / took.as_secs_f64(), "runs"),
            ceiling: Some((
                format!(
                    "the same pods created directly, {}",
                    rate(bare.rate, "pods")
                ),
                (n as f64 / took.as_secs_f64()) / bare.rate,
            )),
            cpu: format!(
                "{}; {}",
                cpu.describe(n),
                cpu_ms(
                    node_cpu,
                    n,
                    "cluster: API server, etcd, scheduler, controllers, kubelet, containerd; shared"
                )
            ),
        },
        Row {
            what: format!(
                "ceiling: the same {n} pods created directly ({CONCURRENCY} concurrent) until each finished, \
                 nothing of Airlock running; {}/{n} succeeded",
                bare.succeeded
            ),
            figure: rate(bare.rate, "pods"),
            ceiling: None,
            cpu: cpu_ms(bare.node_cpu, n, "cluster, shared"),
        },
        Row {
            what: "kube-real: p50 / p99 submit → succeeded (burst)".into(),
            figure: format!(
                "{:.0} ms / {:.0} ms",
                ms(q(&latencies, 0.5)),
                ms(q(&latencies, 0.99))
            ),
            ceiling: None,
            cpu: String::new(),
        },
        Row {
            what: format!(
                "kube-real: reap lag p50 / p99 / max, the bench's own: pod seen finished (its own watch, ms) \
                 → `reaped_at` (ms); {within}/{n} within 1 s"
            ),
            figure: format!("{} / {} / {}", exact(0.5), exact(0.99), exact(1.0)),
            ceiling: None,
            cpu: String::new(),
        },
        Row {
            what: "kube-real: reap lag p50 / p99, janitor `from=\"observed\"`".into(),
            figure: format!("{} / {}", observed(0.5), observed(0.99)),
            ceiling: None,
            cpu: String::new(),
        },
    ])
}

/// What the bare-pods ceiling measured.
struct Bare {
    /// Pods per second, from the first create to the last pod finished.
    rate: f64,
    succeeded: usize,
    /// The cluster's CPU meanwhile.
    node_cpu: Duration,
}

/// Creates `n` copies `bare-<k>` of `pod` (a pod Airlock created) with the admin client, [`CONCURRENCY`] at
/// once, and waits until each finished (its own watch).
async fn bare(sb: &Sandbox, pod: &serde_json::Value, n: usize) -> Result<Bare> {
    let pods: Api<Pod> = Api::namespaced(sb.client(), &sb.namespace);
    let finished: Arc<Mutex<HashMap<String, bool>>> = Arc::default();
    let watch = {
        let (pods, finished) = (pods.clone(), finished.clone());
        tokio::spawn(async move {
            let mut events = watcher(pods, watcher::Config::default()).boxed();
            while let Some(ev) = events.next().await {
                let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev else {
                    continue;
                };
                let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
                let name = p.metadata.name.unwrap_or_default();
                if name.starts_with("bare-")
                    && matches!(phase.as_str(), "Succeeded" | "Failed")
                    && let Ok(mut f) = finished.lock()
                {
                    f.insert(name, phase == "Succeeded");
                }
            }
        })
    };
    let copies = (0..n)
        .map(|k| Ok(serde_json::from_value(renamed(pod, &format!("bare-{k}")))?))
        .collect::<Result<Vec<Pod>>>()?;
    let comps = Components::open()?;
    let (node0, start) = (comps.cpu(NODE)?, Instant::now());
    let created: Vec<_> = futures::stream::iter(copies)
        .map(|p| {
            let pods = pods.clone();
            async move { pods.create(&PostParams::default(), &p).await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for c in created {
        c?;
    }
    let took = progress("kube-real bare pods", n, start, LIMIT, || async {
        Ok(finished.lock().map_or(0, |f| f.len()))
    })
    .await;
    watch.abort();
    let took = took?;
    let succeeded = finished
        .lock()
        .map_or(0, |f| f.values().filter(|s| **s).count());
    Ok(Bare {
        rate: n as f64 / took.as_secs_f64(),
        succeeded,
        node_cpu: comps.cpu(NODE)? - node0,
    })
}
