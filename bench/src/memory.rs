//! Memory: peak RSS of each service with many live runs (pods held Pending, so every run stays live), read
//! from `/proc/<pid>/status` (`VmHWM`).

use airlock_kube_emulator::{Emulator, EmulatorConfig};
use anyhow::Result;

use crate::Scale;
use crate::dispatch::{NS, burst, dispatcher_flags, kube_flags};
use crate::report::Row;
use crate::world::World;

/// Runs the memory stage.
pub async fn run(scale: &Scale) -> Result<Vec<Row>> {
    let w = World::start().await?;
    let emu = Emulator::start(EmulatorConfig::default().namespace(NS)).await?;
    emu.hold_pending(airlock_schemas::labels::RUN_ID)?;
    let d = w.service("dispatcher", &dispatcher_flags(&emu)).await?;
    let i = w.service("ingester", &[]).await?;
    let j = w.service("janitor", &kube_flags(&emu)).await?;
    let n = scale.live;
    burst(&w, &emu, &[&d], "live", n).await?;
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
    let mut rows = Vec::new();
    for (name, c) in [("dispatcher", &d), ("ingester", &i), ("janitor", &j)] {
        rows.push(Row {
            what: format!("memory: {name} peak RSS with {n} live runs"),
            figure: mib(c.peak_rss()?),
            ceiling: None,
            cpu: String::new(),
        });
    }
    Ok(rows)
}
