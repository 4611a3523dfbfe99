//! Reap: runs whose pods really run (`true`, started by the emulator's kubelet) are reaped by the janitor;
//! throughput from the first reap to the last, and p50/p99 reap lag after the job finished (from the janitor's
//! `airlock_reap_lag_seconds`; Kubernetes timestamps have one-second resolution, so the lag is ±1 s).

use std::time::{Duration, Instant};

use airlock_kube_emulator::{Emulator, EmulatorConfig};
use anyhow::{Result, bail};

use crate::Scale;
use crate::dispatch::{NS, dispatcher_flags, kube_flags, send};
use crate::report::{Row, cpu_ms, rate};
use crate::world::{World, quantile};

/// Longest the stage may take.
const LIMIT: Duration = Duration::from_secs(600);

/// Runs the reap stage.
pub async fn run(scale: &Scale) -> Result<Vec<Row>> {
    let w = World::start().await?;
    let emu = Emulator::start(EmulatorConfig::default().namespace(NS)).await?;
    let flags = dispatcher_flags(&emu);
    let _d = w.service("dispatcher", &flags).await?;
    let j = w.service("janitor", &kube_flags(&emu)).await?;
    let before = j.metrics().await?;
    let n = scale.reap;
    for i in 0..n {
        send(&w.js, &format!("reap-{i}")).await?.await?;
    }
    let reaped = || async {
        Ok::<_, anyhow::Error>(j.metrics().await?.get("airlock_reaps_total", &[]) as usize)
    };
    let deadline = Instant::now() + LIMIT;
    let (t0, cpu0) = loop {
        if reaped().await? > 0 {
            break (Instant::now(), j.cpu()?);
        }
        if Instant::now() > deadline {
            bail!("[reap] nothing reaped");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut last = Instant::now();
    loop {
        let r = reaped().await?;
        if r >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!("[reap] only {r}/{n} reaped");
        }
        if last.elapsed() >= Duration::from_secs(1) {
            eprintln!("[reap] {r}/{n} reaped");
            last = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (took, cpu) = (t0.elapsed(), j.cpu()? - cpu0);
    let after = j.metrics().await?;
    let name = "airlock_reap_lag_seconds";
    let ms = |q| {
        quantile(&before, &after, name, q).map_or("-".into(), |s| format!("{:.0} ms", s * 1000.0))
    };
    eprintln!("[reap] {n} reaped in {took:.2?}");
    Ok(vec![
        Row {
            what: format!("reap, {n} runs of `true` (kubelet live)"),
            figure: rate(n as f64 / took.as_secs_f64(), "runs"),
            ceiling: None,
            cpu: cpu_ms(cpu, n, "janitor"),
        },
        Row {
            what: "reap lag p50 / p99 after the job finished".into(),
            figure: format!("{} / {}", ms(0.5), ms(0.99)),
            ceiling: None,
            cpu: String::new(),
        },
        Row {
            what: format!("memory: janitor peak RSS reaping {n} runs"),
            figure: format!("{:.1} MiB", j.peak_rss()? as f64 / 1048576.0),
            ceiling: None,
            cpu: String::new(),
        },
    ])
}
