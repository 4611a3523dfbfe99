//! `airlock dev`: the whole system on one machine.
//!
//! Starts `nats-server` (JetStream, store in the data dir) and `redis-server` (append-only file in the data
//! dir) as child processes, creates a token secret, imports the demo image (an OCI layout that
//! `scripts/setup` builds into `<data dir>/demo-image`) into the image store `<data dir>/images` (the one
//! `airlock image` uses), and runs the dispatcher (local sandbox runtime), the ingester and the janitor in this
//! process. No registry is needed. Ctrl-C (or the end of `--demo`) stops the services, then the servers.
//!
//! A developer tool: the local runtime it starts accepts running without a memory cgroup (with the runtime's
//! warning), so it works on machines without cgroup delegation.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use airlock_images::{ImageStore, StoreConfig};
use airlock_schemas::{RunRequest, RunStatus, Subjects};
use anyhow::{Context, bail};
use clap::{Args, Parser};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::dev_client as client;

/// Run the whole system locally.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where NATS, Redis and the sandboxes keep their state.
    #[arg(long, env = "AIRLOCK_DEV_DIR", default_value = ".airlock")]
    data_dir: PathBuf,
    /// NATS port (0 picks a free one).
    #[arg(long, default_value_t = 4222)]
    nats_port: u16,
    /// Redis port (0 picks a free one).
    #[arg(long, default_value_t = 6379)]
    redis_port: u16,
    /// Submit a sample run, print its result, and stop.
    #[arg(long)]
    demo: bool,
    /// nats-server binary (default: .venv/bin/nats-server, then PATH).
    #[arg(long, env = "AIRLOCK_NATS_SERVER")]
    nats_server: Option<PathBuf>,
    /// redis-server binary (default: PATH).
    #[arg(long, env = "AIRLOCK_REDIS_SERVER")]
    redis_server: Option<PathBuf>,
    /// OCI layout of the demo image (default: <data-dir>/demo-image, built by scripts/setup).
    #[arg(long, env = "AIRLOCK_DEMO_IMAGE")]
    demo_image: Option<PathBuf>,
}

/// The demo image's reference (`scripts/build-demo-image` names it so).
pub const DEMO_IMAGE: &str = "airlock.local/demo/busybox:1";

fn find(explicit: &Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.clone());
    }
    let mut candidates = vec![PathBuf::from(".venv/bin").join(name)];
    if let Ok(exe) = std::env::current_exe() {
        // target/debug/airlock → the workspace's .venv
        for dir in exe.ancestors().skip(1).take(4) {
            candidates.push(dir.join(".venv/bin").join(name));
        }
    }
    candidates.extend(
        std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .map(|d| Path::new(d).join(name)),
    );
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found: run scripts/setup first"))
}

fn pick_port(wanted: u16) -> anyhow::Result<u16> {
    if wanted != 0 && std::net::TcpListener::bind(("127.0.0.1", wanted)).is_ok() {
        return Ok(wanted);
    }
    if wanted != 0 {
        eprintln!("port {wanted} is busy; picking a free one");
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_port(port: u16, child: &mut Child, what: &str) -> anyhow::Result<()> {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Some(s) = child.try_wait()? {
            bail!("{what} exited with {s}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{what} did not start listening on port {port}")
}

fn token_secret_file(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("token-secret");
    if !path.exists() {
        let mut bytes = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(hex::encode(bytes).as_bytes())?;
    }
    Ok(path)
}

/// Imports the demo image from the OCI layout at `layout` into the store at `image_dir` unless it is there
/// already; a missing layout is an error for `--demo` and a warning otherwise.
async fn import_demo_image(image_dir: &Path, layout: &Path, demo: bool) -> anyhow::Result<()> {
    let store = ImageStore::open(StoreConfig::from_env(image_dir))?;
    let present = store
        .list()
        .await?
        .iter()
        .any(|i| i.references.iter().any(|r| r == DEMO_IMAGE));
    if present {
        return Ok(());
    }
    if !layout.exists() {
        let why = format!(
            "the demo image {DEMO_IMAGE} is not in {} and there is no OCI layout at {} to import \
             (run scripts/setup, or scripts/build-demo-image {})",
            image_dir.display(),
            layout.display(),
            layout.display()
        );
        if demo {
            bail!(why);
        }
        eprintln!("warning: {why}");
        return Ok(());
    }
    store
        .import(layout, Some(DEMO_IMAGE))
        .await
        .with_context(|| format!("importing the demo image from {}", layout.display()))?;
    Ok(())
}

fn init_logs(demo: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if demo { "warn" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// `airlock dev`.
pub async fn run(a: DevArgs) -> anyhow::Result<()> {
    // The demo prints its own story; the services' info logs are for a long-running `airlock dev`.
    init_logs(a.demo);
    std::fs::create_dir_all(&a.data_dir)?;
    let data_dir = std::fs::canonicalize(&a.data_dir)?;
    // 0711: other users may traverse (the sandbox uid must reach sandbox/), not list; secrets inside are 0600.
    std::fs::set_permissions(
        &data_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )?;
    let mut servers = Servers::start(&a, &data_dir).await?;
    let (nats_url, redis_url) = (servers.nats_url.clone(), servers.redis_url.clone());
    let secret = token_secret_file(&data_dir)?;
    let sandbox_dir = data_dir.join("sandbox");
    let image_dir = data_dir.join("images");
    let demo_layout = a
        .demo_image
        .clone()
        .unwrap_or_else(|| data_dir.join("demo-image"));
    import_demo_image(&image_dir, &demo_layout, a.demo).await?;
    let common = |bin: &str| -> Vec<String> {
        vec![
            bin.to_string(),
            "--nats-url".into(),
            nats_url.clone(),
            "--redis-url".into(),
            redis_url.clone(),
            "--token-secret-file".into(),
            secret.display().to_string(),
            "--shutdown-grace".into(),
            "5s".into(),
        ]
    };
    let backend = |mut v: Vec<String>| -> Vec<String> {
        v.extend([
            "--runtime".into(),
            "local".into(),
            "--local-dir".into(),
            sandbox_dir.display().to_string(),
            "--local-image-dir".into(),
            image_dir.display().to_string(),
            "--local-allow-no-memory-cgroup".into(),
            "true".into(),
        ]);
        v
    };

    // Listen for Ctrl-C/SIGTERM before anything runs, so an early signal still stops everything cleanly.
    let signals = airlock_runtime::shutdown::on_signals();
    let shutdown = CancellationToken::new();
    let dispatcher_cfg =
        airlock_dispatcher::Config::try_parse_from(backend(common("airlock-dispatcher")))?;
    let ingester_cfg = airlock_ingester::Config::try_parse_from(common("airlock-ingester"))?;
    let janitor_cfg = airlock_janitor::Config::try_parse_from(backend(common("airlock-janitor")))?;
    let mut services = spawn_services(dispatcher_cfg, ingester_cfg, janitor_cfg, &shutdown);
    let api_cfg = airlock_api::Config::try_parse_from(backend(common("airlock-api")))?;
    let s = shutdown.clone();
    services.spawn(async move {
        airlock_api::run(api_cfg, s)
            .await
            .map_err(anyhow::Error::from)
            .context("api")
    });
    print_banner(&data_dir, &nats_url, &redis_url);
    let outcome = if a.demo {
        tokio::select! {
            r = demo(&nats_url, &redis_url) => r,
            Some(r) = services.join_next() => Err(anyhow::anyhow!("a service stopped early: {:?}", r.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| format!("{e:#}"))))),
        }
    } else {
        tokio::select! {
            _ = signals.cancelled() => Ok(()),
            Some(r) = services.join_next() => Err(anyhow::anyhow!("a service stopped early: {:?}", r.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| format!("{e:#}"))))),
        }
    };
    shutdown.cancel();
    while let Some(r) = services.join_next().await {
        if let Ok(Err(e)) = r {
            eprintln!("service error during shutdown: {e:#}");
        }
    }
    // Runs outlive a dispatcher (each has a supervisor process); `airlock dev` stops everything it started.
    airlock_backend::local::stop_supervisors(&sandbox_dir).await;
    servers.stop().await;
    outcome
}

/// The NATS and Redis servers `airlock dev` runs, on loopback, with their state under the data dir.
struct Servers {
    nats: tokio::process::Child,
    redis: tokio::process::Child,
    nats_url: String,
    redis_url: String,
}

impl Servers {
    async fn start(a: &DevArgs, data_dir: &std::path::Path) -> anyhow::Result<Self> {
        let nats_bin = find(&a.nats_server, "nats-server")?;
        let redis_bin = find(&a.redis_server, "redis-server")?;
        let nats_port = pick_port(a.nats_port)?;
        let redis_port = pick_port(a.redis_port)?;

        std::fs::create_dir_all(data_dir.join("redis"))?;
        let mut nats = Command::new(&nats_bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &nats_port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(data_dir.join("nats"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", nats_bin.display()))?;
        let mut redis = Command::new(&redis_bin)
            .args([
                "--port",
                &redis_port.to_string(),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(data_dir.join("redis"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", redis_bin.display()))?;
        wait_port(nats_port, &mut nats, "nats-server").await?;
        wait_port(redis_port, &mut redis, "redis-server").await?;
        Ok(Self {
            nats,
            redis,
            nats_url: format!("nats://127.0.0.1:{nats_port}"),
            redis_url: format!("redis://127.0.0.1:{redis_port}"),
        })
    }

    async fn stop(&mut self) {
        let _ = self.nats.kill().await;
        let _ = self.redis.kill().await;
    }
}

/// Runs the three services in this process until `shutdown`.
fn spawn_services(
    dispatcher_cfg: airlock_dispatcher::Config,
    ingester_cfg: airlock_ingester::Config,
    janitor_cfg: airlock_janitor::Config,
    shutdown: &CancellationToken,
) -> tokio::task::JoinSet<anyhow::Result<()>> {
    let mut services = tokio::task::JoinSet::new();
    let s = shutdown.clone();
    services.spawn(async move {
        airlock_dispatcher::run(dispatcher_cfg, s)
            .await
            .map_err(anyhow::Error::from)
            .context("dispatcher")
    });
    let s = shutdown.clone();
    services.spawn(async move {
        airlock_ingester::run(ingester_cfg, s)
            .await
            .map_err(anyhow::Error::from)
            .context("ingester")
    });
    let s = shutdown.clone();
    services.spawn(async move {
        airlock_janitor::run(janitor_cfg, s)
            .await
            .map_err(anyhow::Error::from)
            .context("janitor")
    });

    services
}

fn print_banner(data_dir: &std::path::Path, nats_url: &str, redis_url: &str) {
    eprintln!();
    eprintln!(
        "Airlock is running (local sandbox runtime). State: {}",
        data_dir.display()
    );
    eprintln!("  NATS  {nats_url}");
    eprintln!("  Redis {redis_url}");
    eprintln!("Submit a run from another terminal:");
    eprintln!("  export AIRLOCK_NATS_URL={nats_url} AIRLOCK_REDIS_URL={redis_url}");
    eprintln!(
        "  cargo run -p airlock-cli -- submit --wait --image {DEMO_IMAGE} -- sh -c 'echo {{\\\"hello\\\": 1}} > $AIRLOCK_RESULT_FILE'"
    );
    eprintln!("Stop with Ctrl-C.");
    eprintln!();
}

async fn demo(nats_url: &str, redis_url: &str) -> anyhow::Result<()> {
    let subjects = Subjects::default();
    let client = airlock_runtime::nats::connect(nats_url, "airlock-dev-demo").await?;
    let js = async_nats::jetstream::new(client);
    // The services create the streams as they start; wait for the runs stream.
    let runs = airlock_schemas::subjects::STREAM_RUNS;
    for _ in 0..500 {
        if js.get_stream(runs).await.is_ok()
            && js
                .get_stream(airlock_schemas::subjects::STREAM_EVENTS)
                .await
                .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let request = RunRequest {
        id: client::new_run_id(),
        image: DEMO_IMAGE.into(),
        image_pull_policy: None,
        command: vec!["/bin/sh".into(), "-c".into()],
        args: vec![
            "echo \"computing in $(pwd) as uid $(id -u)\"; printf '{\"answer\": %d, \"run\": \"%s\"}' $((6 * 7)) \"$AIRLOCK_RUN_ID\" > \"$AIRLOCK_RESULT_FILE\"".into(),
        ],
        env: Default::default(),
        resources: Default::default(),
        deadline_seconds: Some(30),
        egress: Vec::new(),
        labels: Default::default(),
        metadata: Some(serde_json::json!({"submitted_by": "airlock dev --demo"})),
    };
    eprintln!(
        "demo: submitting run {} to {}",
        request.id,
        subjects.runs("default")
    );
    client::publish_request(&js, &subjects, "default", &request).await?;
    let ev = client::wait_terminal(&js, &subjects, &request.id, Duration::from_secs(60)).await?;
    // The result may land a moment after the terminal event when the ingester is behind; wait briefly for it.
    let store =
        airlock_runtime::store::Store::connect(redis_url, "airlock", Duration::from_secs(0))
            .await?;
    for _ in 0..250 {
        if store
            .get(&request.id)
            .await?
            .is_some_and(|r| r.result.is_some())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rec = client::print_record(redis_url, "airlock", &request.id).await?;
    if ev.status != RunStatus::Succeeded {
        bail!("demo run ended {}", ev.status);
    }
    match rec.and_then(|r| r.result) {
        Some(result) => {
            eprintln!("demo: result of {}: {result}", request.id);
            Ok(())
        }
        None => bail!("demo run succeeded but no result was stored"),
    }
}
