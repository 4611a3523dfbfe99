//! `airlock-kube-emulator`: run the Kubernetes API emulator standalone.
//!
//! # Layout
//!
//! One `main`: parse flags, start the emulator, write the kubeconfig, print the URL, serve until Ctrl-C
//! (or SIGTERM), then stop and kill every pod process. Faults, holds and forced states go through the
//! admin API under `/__emulator/`.

use std::path::PathBuf;
use std::time::Duration;

use airlock_kube_emulator::{Emulator, EmulatorConfig};
use clap::Parser;

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "airlock-kube-emulator",
    about = "A strict Kubernetes API emulator with a process kubelet"
)]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Where to write the kubeconfig.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Namespaces to create at start (repeatable); the first is the context's default.
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// Delay before the kubelet schedules a new pod, in milliseconds.
    #[arg(long, default_value_t = 50)]
    schedule_delay_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut cfg = EmulatorConfig::default()
        .port(args.port)
        .kubeconfig_path(&args.kubeconfig)
        .schedule_delay(Duration::from_millis(args.schedule_delay_ms));
    for ns in &args.namespaces {
        cfg = cfg.namespace(ns.clone());
    }
    let emu = Emulator::start(cfg).await?;
    println!("{}", emu.url());
    eprintln!("kubeconfig written to {}", emu.kubeconfig_path().display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    emu.shutdown().await;
    Ok(())
}
