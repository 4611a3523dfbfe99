//! Dispatch in kube mode against the emulator, pods held Pending (API work only): runs/s from publish to pod
//! created and request acked, with one and two replicas; p50/p99 publish → pod at a fixed offered load; and
//! beside them the emulator's own create rate and JetStream's publish rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use airlock_kube_emulator::{Emulator, EmulatorConfig, EmulatorHandle, Kind};
use airlock_runtime::nats::stream_name;
use airlock_schemas::Subjects;
use airlock_schemas::subjects::STREAM_RUNS;
use anyhow::{Context, Result};
use async_nats::jetstream;
use serde_json::json;

use crate::Scale;
use crate::ceilings;
use crate::report::{Row, cpu_ms, rate};
use crate::world::{Child, World, own_cpu, progress, quantile};

/// Namespace of the runs' pods.
pub(crate) const NS: &str = "airlock-sandbox";
/// The queue every request goes to.
const QUEUE: &str = "default";
/// Longest any dispatch phase may take.
const LIMIT: Duration = Duration::from_secs(600);

/// Runs the dispatch stage (`airlock` false: only its ceilings).
pub async fn run(scale: &Scale, airlock: bool) -> Result<Vec<Row>> {
    let w = World::start().await?;
    let publish = ceilings::jetstream_publish(&w, scale.raw).await?;
    let emu = Emulator::start(EmulatorConfig::default().namespace(NS)).await?;
    emu.hold_pending(airlock_schemas::labels::RUN_ID)?;
    let mut rows = Vec::new();
    let flags = dispatcher_flags(&emu);
    let d1 = w.service("dispatcher", &flags).await?;

    // The pairs the emulator is asked to create below are copies of what the dispatcher creates.
    let warm = if airlock { scale.dispatch } else { 1 };
    let one = burst(&w, &emu, &[&d1], "d1", warm).await?;
    let pod = emu
        .objects(Kind::Pod)
        .into_iter()
        .next()
        .context("no pod")?;
    let policy = emu
        .objects(Kind::NetworkPolicy)
        .into_iter()
        .next()
        .context("no policy")?;
    let (emu_rate, emu_cpu) =
        ceilings::emulator_creates(&emu, NS, &pod, &policy, scale.emulator).await?;
    let emu_ceiling = format!("emulator {}", rate(emu_rate, "pod+policy pairs"));

    if airlock {
        rows.push(Row {
            what: "dispatch (kube, pods held Pending), 1 replica".into(),
            figure: rate(one.rate, "runs"),
            ceiling: Some((emu_ceiling.clone(), one.rate / emu_rate)),
            cpu: cpu_ms(one.cpu, scale.dispatch, "dispatcher"),
        });
        rows.push(Row {
            what: "emulator, pods held Pending (1-replica burst)".into(),
            figure: String::new(),
            ceiling: None,
            cpu: cpu_ms(one.emu_cpu, scale.dispatch, "emulator + bench driver"),
        });
        let (offered, secs) = scale.offered;
        let before = d1.metrics().await?;
        paced(&w, &emu, offered, secs).await?;
        let after = d1.metrics().await?;
        let name = "airlock_dispatch_latency_seconds";
        let ms = |q| {
            quantile(&before, &after, name, &[], q)
                .map_or("-".into(), |s| format!("{:.1} ms", s * 1000.0))
        };
        rows.push(Row {
            what: format!("dispatch p50 / p99 publish → pod at {offered} runs/s offered"),
            figure: format!("{} / {}", ms(0.5), ms(0.99)),
            ceiling: None,
            cpu: String::new(),
        });
        let d2 = w.service("dispatcher", &flags).await?;
        let two = burst(&w, &emu, &[&d1, &d2], "d2", scale.dispatch).await?;
        rows.push(Row {
            what: "dispatch (kube, pods held Pending), 2 replicas".into(),
            figure: rate(two.rate, "runs"),
            ceiling: Some((emu_ceiling.clone(), two.rate / emu_rate)),
            cpu: cpu_ms(two.cpu, scale.dispatch, "both dispatchers"),
        });
    }
    rows.push(Row {
        what: "ceiling: emulator creating NetworkPolicy+Pod pairs, 16 concurrent".into(),
        figure: rate(emu_rate, "pairs"),
        ceiling: None,
        cpu: cpu_ms(emu_cpu, scale.emulator, "emulator + client"),
    });
    rows.push(Row {
        what: "ceiling: JetStream pipelined publish".into(),
        figure: rate(publish, "msg"),
        ceiling: None,
        cpu: String::new(),
    });
    Ok(rows)
}

/// The backend flags every service needs: kube mode against `emu`.
pub(crate) fn kube_flags(emu: &EmulatorHandle) -> Vec<String> {
    let kubeconfig = emu.kubeconfig_path().display().to_string();
    [
        "--runtime",
        "kube",
        "--kubeconfig",
        &kubeconfig,
        "--namespace",
        NS,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The dispatcher's flags: kube mode, no practical cap.
pub(crate) fn dispatcher_flags(emu: &EmulatorHandle) -> Vec<String> {
    let mut f = kube_flags(emu);
    f.extend(
        [
            "--nats-egress-cidrs",
            "127.0.0.1/32",
            "--queues",
            "default=1000000",
            "--max-running",
            "1000000",
        ]
        .map(String::from),
    );
    f
}

/// What one burst measured.
pub(crate) struct Burst {
    pub rate: f64,
    pub cpu: Duration,
    /// This process's CPU meanwhile: the emulator, plus the publisher and progress polling.
    pub emu_cpu: Duration,
}

/// Publishes `n` requests as fast as JetStream takes them and waits until each has its pod and was acked.
pub(crate) async fn burst(
    w: &World,
    emu: &EmulatorHandle,
    ds: &[&Child],
    tag: &str,
    n: usize,
) -> Result<Burst> {
    let cpu = |ds: &[&Child]| -> Result<Duration> { ds.iter().map(|d| d.cpu()).sum() };
    let (cpu0, pods0) = (cpu(ds)?, emu.create_count(Kind::Pod) as usize);
    let emu_cpu0 = own_cpu()?;
    let published = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let publisher = tokio::spawn(publish(
        w.js.clone(),
        tag.to_string(),
        n,
        published.clone(),
        request,
    ));
    let took = progress(&format!("dispatch {tag}"), n, start, LIMIT, || {
        let published = published.clone();
        async move { done(w, emu, pods0, published.load(Ordering::Acquire)).await }
    })
    .await?;
    publisher.await??;
    Ok(Burst {
        rate: n as f64 / took.as_secs_f64(),
        cpu: cpu(ds)? - cpu0,
        emu_cpu: own_cpu()? - emu_cpu0,
    })
}

/// Runs done: pods created since `pods0`, but no more than the requests acked (published and gone from the
/// work-queue stream).
async fn done(w: &World, emu: &EmulatorHandle, pods0: usize, published: usize) -> Result<usize> {
    let pods = emu.create_count(Kind::Pod) as usize - pods0;
    Ok(pods.min(published.saturating_sub(queued(w).await?)))
}

/// Requests still in the work-queue stream (not yet acked).
pub(crate) async fn queued(w: &World) -> Result<usize> {
    let name = stream_name(&Subjects::default(), STREAM_RUNS);
    Ok(w.js.get_stream(&name).await?.info().await?.state.messages as usize)
}

/// Publishes `n` requests `<tag>-<i>` made by `body`, pipelined, counting into `published` as JetStream
/// confirms.
pub(crate) async fn publish(
    js: jetstream::Context,
    tag: String,
    n: usize,
    published: Arc<AtomicUsize>,
    body: fn(&str) -> serde_json::Value,
) -> Result<()> {
    let mut acks = Vec::with_capacity(1024);
    for i in 0..n {
        let id = format!("{tag}-{i}");
        acks.push(send_body(&js, &id, &body(&id)).await?);
        if acks.len() == 1024 {
            for a in acks.drain(..) {
                a.await?;
                published.fetch_add(1, Ordering::AcqRel);
            }
        }
    }
    for a in acks {
        a.await?;
        published.fetch_add(1, Ordering::AcqRel);
    }
    Ok(())
}

/// The request of run `id`: `true` in busybox.
fn request(id: &str) -> serde_json::Value {
    json!({
        "id": id,
        "image": "docker.io/library/busybox:1.36",
        "command": ["true"],
        "deadline_seconds": 3600,
    })
}

/// Publishes one request the way a client does (`Nats-Msg-Id` = run id).
pub(crate) async fn send(
    js: &jetstream::Context,
    id: &str,
) -> Result<jetstream::context::PublishAckFuture> {
    send_body(js, id, &request(id)).await
}

/// Publishes request `body` of run `id` the way a client does (`Nats-Msg-Id` = run id).
pub(crate) async fn send_body(
    js: &jetstream::Context,
    id: &str,
    body: &serde_json::Value,
) -> Result<jetstream::context::PublishAckFuture> {
    let mut h = async_nats::HeaderMap::new();
    h.insert(async_nats::header::NATS_MESSAGE_ID, id);
    let subject = Subjects::default().runs(QUEUE);
    Ok(js
        .publish_with_headers(subject, h, serde_json::to_vec(body)?.into())
        .await?)
}

/// Offers `per_s` requests a second for `secs` seconds, then waits until all have their pods.
async fn paced(w: &World, emu: &EmulatorHandle, per_s: usize, secs: usize) -> Result<()> {
    let pods0 = emu.create_count(Kind::Pod) as usize;
    let n = per_s * secs;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0;
    let mut acks = Vec::with_capacity(n);
    while sent < n {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * per_s as f64) as usize).min(n);
        while sent < due {
            // Pipelined: waiting for each ack in turn would cap the offered rate at one round trip each.
            acks.push(send(&w.js, &format!("p-{sent}")).await?);
            sent += 1;
        }
    }
    for a in acks {
        a.await?;
    }
    progress("dispatch paced", n, start, LIMIT, || async {
        done(w, emu, pods0, n).await
    })
    .await?;
    Ok(())
}
