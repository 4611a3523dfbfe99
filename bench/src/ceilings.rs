//! The raw ceilings, measured in the same run as Airlock's figures: what the parts Airlock is built on can do
//! on this machine with nothing of Airlock in the way.

use std::time::{Duration, Instant};

use airlock_kube_emulator::EmulatorHandle;
use anyhow::{Context, Result, bail};
use async_nats::jetstream::{consumer, stream};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, PostParams};
use serde_json::Value;

use crate::report::{Row, cpu_ms, rate};
use crate::world::{World, own_cpu, proc_cpu_fields};

/// Stream of the raw JetStream ceilings.
const STREAM: &str = "BENCH_RAW";
/// Publish acks in flight at once.
const WINDOW: usize = 4096;

/// Pipelined JetStream publish of `n` small messages into a file stream: messages/s.
pub async fn jetstream_publish(w: &World, n: usize) -> Result<f64> {
    let _ = w.js.delete_stream(STREAM).await;
    w.js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec!["bench.raw.>".into()],
        ..Default::default()
    })
    .await?;
    let body =
        bytes::Bytes::from_static(br#"{"answer":42,"pad":"................................"}"#);
    let start = Instant::now();
    let mut acks = FuturesUnordered::new();
    for i in 0..n {
        let ack =
            w.js.publish(format!("bench.raw.{}", i % 64), body.clone())
                .await?;
        acks.push(ack.into_future());
        if acks.len() >= WINDOW {
            acks.next().await.context("ack")??;
        }
    }
    while let Some(a) = acks.next().await {
        a?;
    }
    let r = n as f64 / start.elapsed().as_secs_f64();
    eprintln!("[ceiling] JetStream publish: {}", rate(r, "msg"));
    Ok(r)
}

/// Pull-consume and ack the `n` messages [`jetstream_publish`] left: messages/s.
pub async fn jetstream_consume(w: &World, n: usize) -> Result<f64> {
    let s = w.js.get_stream(STREAM).await?;
    let c: consumer::PullConsumer = s
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await?;
    let start = Instant::now();
    let mut msgs = c.stream().max_messages_per_batch(1000).messages().await?;
    let mut got = 0;
    while got < n {
        let m = msgs.next().await.context("consumer ended")?;
        m.map_err(|e| anyhow::anyhow!("{e}"))?
            .ack()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        got += 1;
    }
    w.client.flush().await?;
    let r = n as f64 / start.elapsed().as_secs_f64();
    eprintln!("[ceiling] JetStream consume+ack: {}", rate(r, "msg"));
    w.js.delete_stream(STREAM).await?;
    Ok(r)
}

/// Pipelined Redis hash writes (five fields, as a stored result) of `n` keys: writes/s.
pub async fn redis_hash_writes(w: &World, n: usize) -> Result<f64> {
    let mut conn = w.redis.connection().await?;
    let start = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.hset_multiple(
                format!("bench:raw:{i}"),
                &[
                    ("status", "running"),
                    ("result", r#"{"answer":42}"#),
                    ("result_at", "2026-01-01T00:00:00.000000Z"),
                    ("updated_at", "2026-01-01T00:00:00.000000Z"),
                    ("attempt", "1"),
                ],
            )
            .ignore();
        }
        let _: () = pipe.query_async(&mut conn).await?;
    }
    let r = n as f64 / start.elapsed().as_secs_f64();
    eprintln!(
        "[ceiling] Redis pipelined hash writes: {}",
        rate(r, "writes")
    );
    Ok(r)
}

/// A bare bubblewrap sandbox around `true`, `n` times in a row: wall time and CPU per sandbox.
pub async fn bwrap(n: usize) -> Result<Row> {
    let args = [
        "--unshare-all",
        "--die-with-parent",
        "--ro-bind",
        "/",
        "/",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "true",
    ];
    // In a shell of its own, which waits for each bwrap: its `cutime + cstime` (read before it exits) are the
    // sandboxes' CPU alone, whatever else this process reaps meanwhile (an earlier stage's services).
    let line = args.join(" ");
    let script = format!(
        "i=0; while [ $i -lt {n} ]; do bwrap {line} || exit 1; i=$((i+1)); done; echo done; read _"
    );
    let start = Instant::now();
    let mut sh = tokio::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running bwrap in a shell")?;
    let mut out = tokio::io::BufReader::new(sh.stdout.take().context("stdout")?);
    let mut said = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut out, &mut said).await?;
    let wall = start.elapsed() / n.max(1) as u32;
    if said.trim() != "done" {
        bail!("bwrap {args:?} failed: {}", sh.wait().await?);
    }
    let pid = sh.id().context("the shell exited")?;
    let cpu = proc_cpu_fields(&format!("/proc/{pid}/stat"), 13..15)?;
    drop(sh.stdin.take());
    sh.wait().await?;
    eprintln!("[ceiling] bare bwrap true: {wall:.2?} wall");
    Ok(Row {
        what: "ceiling: bare bubblewrap around `true`, in a row".into(),
        figure: format!(
            "{:.1} ms wall ({})",
            wall.as_secs_f64() * 1000.0,
            rate(1.0 / wall.as_secs_f64(), "runs")
        ),
        ceiling: None,
        cpu: cpu_ms(cpu, n, "bwrap"),
    })
}

/// The emulator's own rate creating `n` NetworkPolicy+Pod pairs like `pod` and `policy` (copies of what the
/// dispatcher created) with 16 concurrent requests: pairs/s, and this process's CPU per pair (the emulator
/// and the client both run here).
pub async fn emulator_creates(
    emu: &EmulatorHandle,
    ns: &str,
    pod: &Value,
    policy: &Value,
    n: usize,
) -> Result<(f64, Duration)> {
    let kc = kube::config::Kubeconfig::read_from(emu.kubeconfig_path())?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    let client = kube::Client::try_from(config)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let nps: Api<NetworkPolicy> = Api::namespaced(client, ns);
    let (cpu0, start) = (own_cpu()?, Instant::now());
    let work = futures::stream::iter(0..n).map(|i| {
        let (pods, nps) = (pods.clone(), nps.clone());
        let name = format!("raw-{i}");
        let np: NetworkPolicy = serde_json::from_value(renamed(policy, &name)).unwrap_or_default();
        let p: Pod = serde_json::from_value(renamed(pod, &name)).unwrap_or_default();
        async move {
            nps.create(&PostParams::default(), &np).await?;
            pods.create(&PostParams::default(), &p).await?;
            Ok::<_, kube::Error>(())
        }
    });
    let results: Vec<_> = work.buffer_unordered(16).collect().await;
    for r in results {
        r?;
    }
    let took = start.elapsed();
    let cpu = own_cpu()? - cpu0;
    let r = n as f64 / took.as_secs_f64();
    eprintln!(
        "[ceiling] emulator NetworkPolicy+Pod creates: {}",
        rate(r, "pairs")
    );
    Ok((r, cpu))
}

/// `obj` as a new object named `name`: metadata the server sets and the status removed.
pub(crate) fn renamed(obj: &Value, name: &str) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "ownerReferences",
            "generation",
        ] {
            m.remove(k);
        }
        m.insert("name".into(), Value::String(name.into()));
    }
    if let Some(o) = o.as_object_mut() {
        o.remove("status");
    }
    if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("nodeName");
    }
    o
}
