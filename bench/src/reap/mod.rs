//! Reap: runs whose pods really run (`true`, started by the emulator's kubelet), offered at a steady rate,
//! are reaped by the janitor; throughput from the first reap to the last, the emulator's CPU per pod, and
//! p50/p99 reap lag after the job finished, three ways:
//! - the bench's own, to the millisecond ([`seen`]): its own pod watch saw the pod finished → the record's
//!   `reaped_at`;
//! - the janitor's `airlock_reap_lag_seconds{from="observed"}`: its watcher saw the pod finished (ms) →
//!   terminal status recorded;
//! - the janitor's `{from="finish"}`: Kubernetes' `finishedAt` (whole seconds, truncated, so up to 1 s too
//!   long) → terminal status recorded.
//!
//! The histogram quantiles are interpolated inside their buckets; the bench's own are exact (nearest rank).
//!
//! # Layout
//! - this module: the stage.
//! - [`seen`]: the bench's own pod watch and the exact lags.

pub(crate) mod seen;

use std::time::{Duration, Instant};

use airlock_kube_emulator::{Emulator, EmulatorConfig};
use anyhow::{Result, bail};

use crate::Scale;
use crate::dispatch::{NS, dispatcher_flags, kube_flags, send};
use crate::report::{Row, cpu_ms, rate};
use crate::world::{World, own_cpu, quantile};

/// Longest the stage may take.
const LIMIT: Duration = Duration::from_secs(600);

/// Runs the reap stage.
pub async fn run(scale: &Scale) -> Result<Vec<Row>> {
    let w = World::start().await?;
    let emu = Emulator::start(EmulatorConfig::default().namespace(NS)).await?;
    let flags = dispatcher_flags(&emu);
    let _d = w.service("dispatcher", &flags).await?;
    let j = w.service("janitor", &kube_flags(&emu)).await?;
    let (seen, watch) = seen::Seen::watch(emu.kubeconfig_path(), NS).await?;
    let before = j.metrics().await?;
    let (n, per_s) = (scale.reap, scale.reap_rate);
    let emu_cpu0 = own_cpu()?;
    // Offered at a steady rate (not a burst, whose lag would only measure the backlog), pipelined.
    let offering = {
        let js = w.js.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let (mut sent, mut acks) = (0, Vec::with_capacity(n));
            while sent < n {
                tick.tick().await;
                let due = ((start.elapsed().as_secs_f64() * per_s as f64) as usize).min(n);
                while sent < due {
                    acks.push(send(&js, &format!("reap-{sent}")).await?);
                    sent += 1;
                }
            }
            for a in acks {
                a.await?;
            }
            anyhow::Ok(())
        })
    };
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
        tokio::time::sleep(Duration::from_millis(20)).await;
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (took, cpu) = (t0.elapsed(), j.cpu()? - cpu0);
    let emu_cpu = own_cpu()? - emu_cpu0;
    offering.await??;
    let after = j.metrics().await?;
    let name = "airlock_reap_lag_seconds";
    let ms = |from, q| {
        quantile(&before, &after, name, &[("from", from)], q)
            .map_or("-".into(), |s| format!("{:.0} ms", s * 1000.0))
    };
    let ids: Vec<String> = (0..n).map(|i| format!("reap-{i}")).collect();
    let own = seen.lags_of_all(&w, &ids).await?;
    watch.abort();
    let exact =
        |q| seen::exact_quantile(&own, q).map_or("-".into(), |s| format!("{:.0} ms", s * 1000.0));
    let within = own.iter().filter(|l| l.0 <= 1.0).count();
    let slowest: Vec<String> = own
        .iter()
        .rev()
        .take(8)
        .map(|(l, id)| format!("{id} {:.0} ms", l * 1000.0))
        .collect();
    eprintln!("[reap] slowest (own): {}", slowest.join(", "));
    eprintln!(
        "[reap] {n} reaped in {took:.2?}; {} seen finished by the bench, {} with both stamps",
        seen.len(),
        own.len()
    );
    Ok(vec![
        Row {
            what: format!("reap, {n} runs of `true` (kubelet live) at {per_s} runs/s offered"),
            figure: rate(n as f64 / took.as_secs_f64(), "runs"),
            ceiling: None,
            cpu: cpu_ms(cpu, n, "janitor"),
        },
        Row {
            what: format!("emulator with its kubelet live, {n} pods that run"),
            figure: String::new(),
            ceiling: None,
            cpu: cpu_ms(emu_cpu, n, "emulator + bench driver"),
        },
        Row {
            what: format!(
                "reap lag p50 / p99 / max, the bench's own: pod seen finished (its own watch, ms) → \
                 `reaped_at` (ms); {}/{n} within 1 s",
                within
            ),
            figure: format!("{} / {} / {}", exact(0.5), exact(0.99), exact(1.0)),
            ceiling: None,
            cpu: String::new(),
        },
        Row {
            what: "reap lag p50 / p99, janitor `from=\"observed\"`: its watcher saw the pod finished (ms) → status recorded".into(),
            figure: format!("{} / {}", ms("observed", 0.5), ms("observed", 0.99)),
            ceiling: None,
            cpu: String::new(),
        },
        Row {
            what: "reap lag p50 / p99, janitor `from=\"finish\"`: `finishedAt` (whole seconds, up to 1 s early) → status recorded".into(),
            figure: format!("{} / {}", ms("finish", 0.5), ms("finish", 0.99)),
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
