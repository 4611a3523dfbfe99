//! `airlock-bench`: Airlock's throughput and latency beside the raw ceilings of what it is built on, measured
//! in the same run on the same machine, printed as one table (figure, ceiling, ratio, CPU per item).
//!
//! `cargo run --release -p airlock-bench -- all` starts its own `nats-server` and `redis-server` (as the tests
//! do, `AIRLOCK_NATS_SERVER` naming the former) and the Kubernetes API emulator, runs each stage, shows
//! progress on stderr and prints the table on stdout. `--quick` uses small counts (seconds), so CI runs it and
//! it never rots; it prints figures and ratios and never asserts a time.
//!
//! The services run as child processes of this same binary (`airlock-bench __service <name> <flags>`), so each
//! one's CPU time and peak RSS are its own, read from `/proc`.
//!
//! # Layout
//! - this module: the command line and the stage order.
//! - `world`: NATS, Redis and services as child processes; CPU and RSS from `/proc`; scraping `/metrics`.
//! - `ceilings`: the raw ceilings (JetStream publish and consume+ack, Redis pipelined hash writes, bare
//!   bubblewrap, the emulator's own create rate).
//! - `dispatch`: runs/s publish → pod created and acked (kube mode, pods held Pending); p50/p99 at a fixed
//!   offered load.
//! - `ingest`: results/s verified, stored and acked, draining a backlog.
//! - `reap`: runs that really run (kubelet live) reaped by the janitor: throughput and reap lag.
//! - `local`: trivial runs end to end in local sandbox mode, beside the bare sandbox.
//! - `memory`: peak RSS of each service with many live runs.
//! - `kube_real`: Kubernetes mode on a real API server (the test cluster of `AIRLOCK_TEST_CLUSTER`): dispatch
//!   with pods held unschedulable beside client-go's pair rate, and runs end to end with the kubelet live.
//! - `report`: the table.

mod ceilings;
mod dispatch;
mod ingest;
mod kube_real;
mod local;
mod memory;
mod reap;
mod report;
mod world;

use clap::{Parser, ValueEnum};

/// Which stages to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Stage {
    /// Every stage.
    All,
    /// Only the raw ceilings.
    Ceilings,
    /// Dispatch (with the JetStream publish and emulator ceilings).
    Dispatch,
    /// Ingest (with the JetStream consume and Redis ceilings).
    Ingest,
    /// Reap: throughput and reap lag.
    Reap,
    /// Local sandbox mode, beside the bare sandbox.
    Local,
    /// Peak RSS per service with many live runs.
    Memory,
    /// Kubernetes mode on a real API server (the test cluster of `AIRLOCK_TEST_CLUSTER`), beside client-go.
    KubeReal,
}

/// The benchmark's command line.
#[derive(Debug, Parser)]
#[command(
    name = "airlock-bench",
    about = "Airlock against its ceilings, measured in one run"
)]
struct Cli {
    /// The stage to run.
    #[arg(value_enum, default_value_t = Stage::All)]
    stage: Stage,
    /// Small counts: seconds, for CI (figures are then rough).
    #[arg(long)]
    quick: bool,
}

/// How much work each stage does.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// Messages for the JetStream and Redis ceilings.
    pub raw: usize,
    /// Runs for the dispatch throughput.
    pub dispatch: usize,
    /// Offered load (runs/s) and duration (s) for the dispatch latency.
    pub offered: (usize, usize),
    /// NetworkPolicy+Pod pairs for the emulator's own rate.
    pub emulator: usize,
    /// Results in the ingest backlog.
    pub ingest: usize,
    /// Bare sandboxes.
    pub bwrap: usize,
    /// Runs reaped.
    pub reap: usize,
    /// Runs offered per second in the reap stage.
    pub reap_rate: usize,
    /// Live runs for the memory stage.
    pub live: usize,
    /// Trivial runs in local mode.
    pub local: usize,
    /// Runs dispatched with their pods held unschedulable on the real API server (and client-go pairs).
    pub kube_held: usize,
    /// Small runs end to end on the real cluster.
    pub kube_e2e: usize,
}

impl Scale {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                raw: 5_000,
                dispatch: 200,
                offered: (50, 2),
                emulator: 200,
                ingest: 2_000,
                bwrap: 10,
                reap: 30,
                reap_rate: 30,
                live: 300,
                local: 20,
                kube_held: 50,
                kube_e2e: 10,
            }
        } else {
            Self {
                raw: 100_000,
                dispatch: 3_000,
                offered: (1_000, 5),
                emulator: 3_000,
                ingest: 30_000,
                bwrap: 200,
                reap: 500,
                reap_rate: 100,
                live: 10_000,
                local: 300,
                kube_held: 1_000,
                kube_e2e: 100,
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    // The dispatcher in local mode starts each run's supervisor as this executable (`--local-supervisor self`).
    if let Some(code) = airlock_backend::local::supervise_if_asked() {
        std::process::exit(i32::from(code != std::process::ExitCode::SUCCESS));
    }
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.get(1).map(String::as_str) == Some(world::SERVICE_ARG) {
        return rt.block_on(world::serve(&args[2..]));
    }
    let cli = Cli::parse();
    let scale = Scale::new(cli.quick);
    rt.block_on(run(cli.stage, scale))
}

async fn run(stage: Stage, scale: Scale) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let has = |s: Stage| stage == Stage::All || stage == s;
    if has(Stage::Dispatch) || stage == Stage::Ceilings {
        rows.extend(dispatch::run(&scale, stage != Stage::Ceilings).await?);
    }
    if has(Stage::Ingest) || stage == Stage::Ceilings {
        rows.extend(ingest::run(&scale, stage != Stage::Ceilings).await?);
    }
    if stage == Stage::Ceilings {
        rows.push(ceilings::bwrap(scale.bwrap).await?);
    }
    if has(Stage::Reap) {
        rows.extend(reap::run(&scale).await?);
    }
    if has(Stage::Memory) {
        rows.extend(memory::run(&scale).await?);
    }
    if has(Stage::Local) {
        rows.extend(local::run(&scale).await?);
    }
    if stage == Stage::KubeReal || (stage == Stage::All && kube_real::configured()) {
        rows.extend(kube_real::run(&scale).await?);
    } else if stage == Stage::All {
        rows.push(kube_real::not_run());
    }
    report::print(&rows);
    Ok(())
}
