//! Local mode: trivial sandboxed runs end to end (submit → result stored → reaped) with the three services
//! and `--runtime local`; runs/s and p50/p99 submit → terminal event, beside the bare sandbox's cost measured
//! in the same run.

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
/// Longest the stage may take.
const LIMIT: Duration = Duration::from_secs(600);

/// Runs the local stage.
pub async fn run(scale: &Scale) -> Result<Vec<Row>> {
    let bare = ceilings::bwrap(scale.bwrap).await?;
    let w = World::start().await?;
    let dir = tempfile::Builder::new()
        .prefix("airlock-bench-")
        .tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
    let state = dir.path().join("state").display().to_string();
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
    let d = w.service("dispatcher", &flags).await?;
    let i = w.service("ingester", &[]).await?;
    let j = w.service("janitor", &flags).await?;
    let subjects = Subjects::default();
    let mut events = w
        .client
        .subscribe(format!("{}.events.>", subjects.prefix()))
        .await?;
    let n = scale.local;
    let cpu = || -> Result<Duration> { Ok(d.cpu()? + i.cpu()? + j.cpu()?) };
    let cpu0 = cpu()?;
    let mut sent = HashMap::new();
    let start = Instant::now();
    for k in 0..n {
        let id = format!("local-{k}");
        let body = json!({
            "id": id,
            "image": "docker.io/library/busybox:1.36",
            "command": ["/bin/sh", "-c", "printf '{\"ok\":1}' > \"$AIRLOCK_RESULT_FILE\""],
            "deadline_seconds": 600,
        });
        let mut h = async_nats::HeaderMap::new();
        h.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        w.js.publish_with_headers(
            subjects.runs("default"),
            h,
            serde_json::to_vec(&body)?.into(),
        )
        .await?
        .await?;
        sent.insert(id, Instant::now());
    }
    let mut latencies = Vec::with_capacity(n);
    let mut last = Instant::now();
    while latencies.len() < n {
        let m = tokio::time::timeout_at((start + LIMIT).into(), events.next())
            .await
            .with_context(|| format!("[local] only {}/{n} runs ended", latencies.len()))?
            .context("events ended")?;
        let Ok(ev) = serde_json::from_slice::<LifecycleEvent>(&m.payload) else {
            continue;
        };
        if ev.status.is_terminal()
            && let Some(t) = sent.remove(&ev.run_id)
        {
            if ev.status != airlock_schemas::RunStatus::Succeeded {
                bail!(
                    "[local] run {} ended {}: {:?}",
                    ev.run_id,
                    ev.status,
                    ev.reason
                );
            }
            latencies.push(t.elapsed());
        }
        if last.elapsed() >= Duration::from_secs(1) {
            eprintln!("[local] {}/{n} runs ended", latencies.len());
            last = Instant::now();
        }
    }
    let took = start.elapsed();
    let cpu = cpu()? - cpu0;
    latencies.sort();
    let q = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    eprintln!("[local] {n} runs in {took:.2?}");
    let sandbox_rate = 1.0 / parse_ms(&bare.figure).unwrap_or(f64::NAN) * 1000.0;
    let r = n as f64 / took.as_secs_f64();
    Ok(vec![
        Row {
            what: format!("local: {n} trivial sandboxed runs, submit → succeeded"),
            figure: rate(r, "runs"),
            ceiling: Some((
                format!("bare bwrap in a row {}", rate(sandbox_rate, "runs")),
                r / sandbox_rate,
            )),
            cpu: cpu_ms(cpu, n, "three services"),
        },
        Row {
            what: "local: p50 / p99 submit → succeeded (burst)".into(),
            figure: format!("{:.0} ms / {:.0} ms", ms(q(0.5)), ms(q(0.99))),
            ceiling: None,
            cpu: String::new(),
        },
        bare,
    ])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The milliseconds a bare-sandbox figure starts with (`"6.2 ms wall ..."`).
fn parse_ms(figure: &str) -> Option<f64> {
    figure.split_whitespace().next()?.parse().ok()
}
