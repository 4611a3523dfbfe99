//! `airlock-kube-emulator`: run the Kubernetes API emulator standalone.
//!
//! # Layout
//!
//! One `main`: parse flags, start the emulator (in image mode with `--image-store`), write the
//! kubeconfig, print the URL, serve until Ctrl-C (or SIGTERM), then stop and kill every pod process.

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
    /// Directory of Kubernetes 1.33 JSON schemas (default: auto-discover in .venv).
    #[arg(long)]
    schema_dir: Option<PathBuf>,
    /// Image mode: the kubelet pulls pods' images into this image store (shareable with Airlock's local
    /// runtime) and runs them in their rootfs. Without it, pods' commands run on the host.
    #[arg(long)]
    image_store: Option<PathBuf>,
    /// A registry (`host:port`) spoken to over plain HTTP (repeatable). Also `AIRLOCK_INSECURE_REGISTRIES`.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// A Docker auth file with registry credentials (default: `AIRLOCK_REGISTRY_AUTH_FILE`, then
    /// `$DOCKER_CONFIG/config.json`, then `~/.docker/config.json`). TLS trusts the system roots or
    /// `SSL_CERT_FILE`.
    #[arg(long)]
    registry_auth_file: Option<PathBuf>,
    /// First image pull back-off in milliseconds (doubles up to ten times this).
    #[arg(long, default_value_t = 500)]
    image_pull_backoff_ms: u64,
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
    cfg.schema_dir = args.schema_dir;
    cfg.image_pull_backoff = Duration::from_millis(args.image_pull_backoff_ms);
    if let Some(dir) = args.image_store {
        let mut store = airlock_images::StoreConfig::from_env(dir);
        store
            .registry
            .insecure_registries
            .extend(args.insecure_registries);
        if args.registry_auth_file.is_some() {
            store.registry.auth_file = args.registry_auth_file;
        }
        cfg = cfg.images(store);
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
