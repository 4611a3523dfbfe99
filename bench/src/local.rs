//! Local mode: trivial sandboxed runs end to end (submit → result stored → reaped) with the three services
//! and `--runtime local`: a burst (runs/s, p50/p99 submit → terminal event), then the same number of runs at a
//! fixed offered load (p50/p99), beside the bare sandbox's cost measured in the same run.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use airlock_schemas::{LifecycleEvent, Subjects};
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde_json::json;

use crate::Scale;
use crate::ceilings;
use crate::report::{Row, cpu_ms, rate};
use crate::world::World;

/// First sandbox uid: above `airlock dev`'s default range, below the e2e tests' ranges.
const UID_BASE: &str = "1050000000";
/// Sandbox slots.
const SLOTS: &str = "64";
/// The queue and its cap (as many runs at once as there are slots).
const QUEUE_CAP: &str = "default=64";
/// Longest the stage may take.
const LIMIT: Duration = Duration::from_secs(600);

/// Runs the local stage.
pub async fn run(scale: &Scale) -> Result<Vec<Row>> {
    let bare = ceilings::bwrap(scale.bwrap).await?;
    let w = World::start().await?;
    // The run state on tmpfs, as a container runtime keeps its (containerd's `/run/containerd`): it does not
    // outlive a boot anyway. On a disk, this machine's ext4 without a journal scans recently deleted inodes at
    // every file creation, which dominated the services' CPU.
    let tmpfs = std::path::Path::new("/dev/shm");
    let dir = tempfile::Builder::new()
        .prefix("airlock-bench-")
        .tempdir_in(if tmpfs.is_dir() {
            tmpfs.to_path_buf()
        } else {
            std::env::temp_dir()
        })?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
    let state = dir.path().join("state").display().to_string();
    // The job's image, imported into the runtime's image store: the benchmark talks to no registry.
    import_busybox(&dir.path().join("state").join("images"), dir.path()).await?;
    let flags: Vec<String> = [
        "--runtime",
        "local",
        "--local-dir",
        &state,
        "--local-uid-base",
        UID_BASE,
        "--local-slots",
        SLOTS,
    ]
    .map(String::from)
    .to_vec();
    // The queue's cap at the uid slots: no launch waits for a uid.
    let queues = ["--queues".to_string(), QUEUE_CAP.to_string()];
    let d = w
        .service("dispatcher", &[&flags[..], &queues[..]].concat())
        .await?;
    let i = w.service("ingester", &[]).await?;
    let j = w.service("janitor", &flags).await?;
    let subjects = Subjects::default();
    let mut events = w
        .client
        .subscribe(format!("{}.events.>", subjects.prefix()))
        .await?;
    let n = scale.local;
    let cpu = || -> Result<Cpu> { Ok(Cpu([d.cpu()?, i.cpu()?, j.cpu()?])) };
    // Burst: every request published at once.
    let cpu0 = cpu()?;
    let reaped0 = d.reaped_cpu()?;
    let start = Instant::now();
    let mut burst = submit(&w, "local-burst", n, None, &mut events, &body).await?;
    let took = start.elapsed();
    let burst_cpu = cpu()?.since(&cpu0);
    let burst_reaped = d.reaped_cpu()? - reaped0;
    eprintln!("[local] {n} runs in {took:.2?}");
    // Paced: a fixed offered load, well below the burst rate.
    let cpu0 = cpu()?;
    let reaped0 = d.reaped_cpu()?;
    let mut paced = submit(&w, "local-paced", n, Some(OFFERED), &mut events, &body).await?;
    let paced_cpu = cpu()?.since(&cpu0);
    let paced_reaped = d.reaped_cpu()? - reaped0;
    // And at half that load: the latency of a run when the machine is not near its capacity.
    let mut light = submit(
        &w,
        "local-light",
        n / 2,
        Some(OFFERED / 2.0),
        &mut events,
        &body,
    )
    .await?;
    light.sort();
    burst.sort();
    paced.sort();
    let sandbox_rate = 1.0 / parse_ms(&bare.figure).unwrap_or(f64::NAN) * 1000.0;
    let r = n as f64 / took.as_secs_f64();
    Ok(vec![
        Row {
            what: format!("local: {n} trivial sandboxed runs, submit → succeeded (burst)"),
            figure: rate(r, "runs"),
            ceiling: Some((
                format!("bare bwrap in a row {}", rate(sandbox_rate, "runs")),
                r / sandbox_rate,
            )),
            cpu: format!(
                "{}; {}",
                burst_cpu.describe(n),
                cpu_ms(
                    burst_reaped,
                    n,
                    "supervisors + sandboxes the dispatcher reaped"
                )
            ),
        },
        latency_row("(burst)", &burst, String::new()),
        latency_row(
            &format!("at {OFFERED:.0} runs/s offered"),
            &paced,
            format!(
                "{}; {}",
                paced_cpu.describe(n),
                cpu_ms(
                    paced_reaped,
                    n,
                    "supervisors + sandboxes the dispatcher reaped"
                )
            ),
        ),
        latency_row(
            &format!("at {:.0} runs/s offered", OFFERED / 2.0),
            &light,
            String::new(),
        ),
        bare,
    ])
}

/// `local: p50 / p99 submit → succeeded <phase>` of the sorted latencies `sorted`.
fn latency_row(phase: &str, sorted: &[Duration], cpu: String) -> Row {
    Row {
        what: format!("local: p50 / p99 submit → succeeded {phase}"),
        figure: format!(
            "{:.0} ms / {:.0} ms",
            ms(q(sorted, 0.5)),
            ms(q(sorted, 0.99))
        ),
        ceiling: None,
        cpu,
    }
}

/// CPU time of the dispatcher, the ingester and the janitor.
pub(crate) struct Cpu(pub [Duration; 3]);

impl Cpu {
    pub fn since(&self, before: &Cpu) -> Cpu {
        Cpu(std::array::from_fn(|k| {
            self.0[k].saturating_sub(before.0[k])
        }))
    }

    /// `x ms (three services: dispatcher a, ingester b, janitor c)` per run.
    pub fn describe(&self, n: usize) -> String {
        let per = |d: Duration| d.as_secs_f64() * 1000.0 / n as f64;
        let [d, i, j] = self.0;
        format!(
            "{} (dispatcher {:.3}, ingester {:.3}, janitor {:.3})",
            cpu_ms(d + i + j, n, "three services"),
            per(d),
            per(i),
            per(j)
        )
    }
}

/// Imports a static-busybox image as `IMAGE` into the image store at `store`.
async fn import_busybox(store: &std::path::Path, scratch: &std::path::Path) -> Result<()> {
    use airlock_test_support::oci::{ImageSpec, build, busybox_layer, write_layout};
    let built = build(&ImageSpec::new(vec![busybox_layer("bench")?]))?;
    let layout = write_layout(&scratch.join("busybox-layout"), &built, IMAGE)?;
    let images = airlock_images::ImageStore::open(airlock_images::StoreConfig::new(store))?;
    images.import(&layout, Some(IMAGE)).await?;
    Ok(())
}

/// The image every run uses (imported, never pulled).
const IMAGE: &str = "docker.io/library/busybox:1.36";

/// The fixed offered load of the paced phase (runs/s).
const OFFERED: f64 = 100.0;

/// A trivial run `id` that writes its result file.
fn body(id: &str) -> serde_json::Value {
    json!({
        "id": id,
        "image": IMAGE,
        "command": ["/bin/sh", "-c", "printf '{\"ok\":1}' > \"$AIRLOCK_RESULT_FILE\""],
        "deadline_seconds": 600,
    })
}

/// Submits `n` runs `<tag>-<k>` whose requests `body` makes (all at once, or `per_second`), waits until every
/// one succeeded; their latencies, submit → terminal event (whose subscription `events` is).
pub(crate) async fn submit(
    w: &World,
    tag: &str,
    n: usize,
    per_second: Option<f64>,
    events: &mut async_nats::Subscriber,
    body: &dyn Fn(&str) -> serde_json::Value,
) -> Result<Vec<Duration>> {
    let subjects = Subjects::default();
    let start = Instant::now();
    let mut sent = HashMap::new();
    let mut latencies = Vec::with_capacity(n);
    let mut last = Instant::now();
    let mut k = 0;
    while latencies.len() < n {
        if k < n {
            let due = per_second.map(|r| start + Duration::from_secs_f64(k as f64 / r));
            let ready = due.is_none_or(|t| Instant::now() >= t);
            if ready {
                let id = format!("{tag}-{k}");
                let body = body(&id);
                let mut h = async_nats::HeaderMap::new();
                h.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
                let ack =
                    w.js.publish_with_headers(
                        subjects.runs("default"),
                        h,
                        serde_json::to_vec(&body)?.into(),
                    )
                    .await?;
                sent.insert(id, Instant::now());
                ack.await?;
                k += 1;
                continue;
            }
            // Paced: take events until the next request is due.
            let until = due.unwrap_or_else(Instant::now);
            match tokio::time::timeout_at(until.into(), events.next()).await {
                Ok(Some(m)) => take(&m, &mut sent, &mut latencies)?,
                Ok(None) => bail!("events ended"),
                Err(_) => continue,
            }
        } else {
            let m = tokio::time::timeout_at((start + LIMIT).into(), events.next())
                .await
                .with_context(|| format!("[{tag}] only {}/{n} runs ended", latencies.len()))?
                .context("events ended")?;
            take(&m, &mut sent, &mut latencies)?;
        }
        if last.elapsed() >= Duration::from_secs(1) {
            eprintln!("[{tag}] {}/{n} runs ended", latencies.len());
            last = Instant::now();
        }
    }
    Ok(latencies)
}

/// Records the latency of a run whose terminal event `m` is; fails on a run that did not succeed.
fn take(
    m: &async_nats::Message,
    sent: &mut HashMap<String, Instant>,
    latencies: &mut Vec<Duration>,
) -> Result<()> {
    let Ok(ev) = serde_json::from_slice::<LifecycleEvent>(&m.payload) else {
        return Ok(());
    };
    if ev.status.is_terminal()
        && let Some(t) = sent.remove(&ev.run_id)
    {
        if ev.status != airlock_schemas::RunStatus::Succeeded {
            bail!("run {} ended {}: {:?}", ev.run_id, ev.status, ev.reason);
        }
        latencies.push(t.elapsed());
    }
    Ok(())
}

/// The `p` quantile of sorted `v`.
pub(crate) fn q(v: &[Duration], p: f64) -> Duration {
    v.get(((v.len().saturating_sub(1)) as f64 * p) as usize)
        .copied()
        .unwrap_or_default()
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The milliseconds a bare-sandbox figure starts with (`"6.2 ms wall ..."`).
fn parse_ms(figure: &str) -> Option<f64> {
    figure.split_whitespace().next()?.parse().ok()
}
