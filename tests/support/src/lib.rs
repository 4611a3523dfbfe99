//! Test harness: real `nats-server` and `redis-server` processes on free loopback ports with throwaway state,
//! and helpers to run Airlock's own binaries as processes.
//!
//! # Layout
//! - [`NatsServer`]: JetStream-enabled nats-server; [`NatsServer::stop`]/[`NatsServer::restart`] simulate outages.
//! - [`RedisServer`]: redis-server without persistence; stop/restart likewise.
//! - [`Service`]: one of our binaries started as a child process, killed on drop.
//! - [`wait_until`]: poll an async condition with a timeout (for state that has no event to await).
//! - [`registry`]: a real OCI registry (Debian's `docker-registry`), plain or TLS with htpasswd.
//! - [`cluster`]: a real single-node Kubernetes (etcd, API server, controller manager, scheduler,
//!   containerd, kubelet) for the Kubernetes tests, started once per test run by `scripts/test-cluster`.
//! - [`oci`]: images built by tests (busybox-static, the job image with our `airlock` and `airlock-emit`,
//!   any config, hostile layers), pushed to a [`registry::Registry`] or written as OCI layouts.
//!
//! Binaries are found through `AIRLOCK_NATS_SERVER` / `AIRLOCK_REDIS_SERVER`, then the project venv
//! (`.venv/bin/nats-server`), then `PATH`. Nothing here talks to anything but 127.0.0.1.

pub mod cluster;
pub mod oci;
pub mod registry;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

/// Root of the workspace (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(l.local_addr()?.port())
}

pub(crate) fn find_binary(env_var: &str, name: &str) -> Result<PathBuf> {
    if let Ok(p) = std::env::var(env_var) {
        return Ok(PathBuf::from(p));
    }
    let venv = workspace_root().join(".venv/bin").join(name);
    if venv.exists() {
        return Ok(venv);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{name} not found: set {env_var}, or run scripts/setup to install it")
}

/// Waits until something accepts TCP connections on addr:port.
async fn wait_for_port(
    addr: std::net::Ipv4Addr,
    port: u16,
    child: &mut Child,
    what: &str,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if tokio::net::TcpStream::connect((addr, port)).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status} before listening on port {port}");
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{what} did not listen on port {port} within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `f` every 20 ms until it returns `Some`, or fails after `timeout`.
///
/// For state with no event to await (a Redis field, a process exit); prefer awaiting events where they exist.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server process on a free port with a throwaway directory: spawned with fixed arguments, restartable on
/// the same port, killed on drop. What [`NatsServer`] and [`RedisServer`] share.
#[derive(Debug)]
struct ServerProcess {
    name: &'static str,
    binary: PathBuf,
    args: Vec<std::ffi::OsString>,
    port: u16,
    /// The address it listens on.
    addr: std::net::Ipv4Addr,
    /// Kept for its lifetime: the directory is removed when the server is dropped.
    _dir: tempfile::TempDir,
    child: Option<Child>,
}

impl ServerProcess {
    /// Starts `name` (found through `env_var`, the venv or PATH) with the arguments `args(port, dir)` returns.
    async fn start(
        env_var: &str,
        name: &'static str,
        args: impl FnOnce(u16, &Path) -> Vec<std::ffi::OsString>,
    ) -> Result<Self> {
        Self::start_on(env_var, name, std::net::Ipv4Addr::LOCALHOST, args).await
    }

    /// [`ServerProcess::start`] for a server told (by `args`) to listen on `addr`.
    async fn start_on(
        env_var: &str,
        name: &'static str,
        addr: std::net::Ipv4Addr,
        args: impl FnOnce(u16, &Path) -> Vec<std::ffi::OsString>,
    ) -> Result<Self> {
        let binary = find_binary(env_var, name)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("airlock-{name}-"))
            .tempdir()?;
        let port = free_port()?;
        let args = args(port, dir.path());
        let mut s = Self {
            name,
            binary,
            args,
            port,
            addr,
            _dir: dir,
            child: None,
        };
        s.spawn().await?;
        Ok(s)
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut child = Command::new(&self.binary)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        wait_for_port(self.addr, self.port, &mut child, self.name).await?;
        self.child = Some(child);
        Ok(())
    }

    async fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().await?;
        }
        Ok(())
    }

    async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.spawn().await
    }
}

fn os_args(args: &[&str]) -> Vec<std::ffi::OsString> {
    args.iter().map(Into::into).collect()
}

/// A real nats-server with JetStream, on a free port, with a throwaway store. Killed on drop.
#[derive(Debug)]
pub struct NatsServer(ServerProcess, std::net::Ipv4Addr);

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub async fn start() -> Result<Self> {
        Self::start_with_args(&[]).await
    }

    /// Starts a server listening on `addr` instead of 127.0.0.1 (the test cluster's host address, where
    /// its pods reach it).
    pub async fn start_on(addr: std::net::Ipv4Addr) -> Result<Self> {
        Self::start_on_with_args(addr, &[]).await
    }

    /// Starts a server with extra `nats-server` arguments after the defaults (e.g. `["-c", "auth.conf"]`).
    pub async fn start_with_args(extra_args: &[&str]) -> Result<Self> {
        Self::start_on_with_args(std::net::Ipv4Addr::LOCALHOST, extra_args).await
    }

    async fn start_on_with_args(addr: std::net::Ipv4Addr, extra_args: &[&str]) -> Result<Self> {
        let host = addr.to_string();
        let p = ServerProcess::start_on("AIRLOCK_NATS_SERVER", "nats-server", addr, |port, dir| {
            let mut a = os_args(&[
                "-a",
                &host,
                "-p",
                &port.to_string(),
                "-js",
                "--http_port",
                "0",
                "-sd",
            ]);
            a.push(dir.join("store").into());
            a.extend(os_args(extra_args));
            a
        })
        .await?;
        Ok(Self(p, addr))
    }

    /// `nats://ADDR:PORT` (127.0.0.1 unless started with [`NatsServer::start_on`]).
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.1, self.0.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// A connected client.
    pub async fn client(&self) -> Result<async_nats::Client> {
        Ok(async_nats::connect(self.url()).await?)
    }

    /// Kills the server (its store stays, as after a crash).
    pub async fn stop(&mut self) -> Result<()> {
        self.0.stop().await
    }

    /// Starts it again on the same port with the same store.
    pub async fn restart(&mut self) -> Result<()> {
        self.0.restart().await
    }

    /// Version string printed by the binary (`nats-server: v2.x.y`).
    pub fn version(&self) -> Result<String> {
        let out = std::process::Command::new(&self.0.binary)
            .arg("--version")
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// A real redis-server on a free port, without persistence. Killed on drop.
#[derive(Debug)]
pub struct RedisServer(ServerProcess);

impl RedisServer {
    /// Starts a server and waits until it accepts connections.
    pub async fn start() -> Result<Self> {
        Self::start_with_args(&[]).await
    }

    /// Starts a server with extra `redis-server` arguments, which override the defaults (e.g.
    /// `["--appendonly", "yes", "--appendfsync", "always"]` so data survives [`RedisServer::restart`]).
    pub async fn start_with_args(extra_args: &[&str]) -> Result<Self> {
        let p = ServerProcess::start("AIRLOCK_REDIS_SERVER", "redis-server", |port, dir| {
            let port = port.to_string();
            let mut a = os_args(&[
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ]);
            a.push(dir.into());
            a.extend(os_args(extra_args));
            a
        })
        .await?;
        Ok(Self(p))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.0.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// A multiplexed connection.
    pub async fn connection(&self) -> Result<redis::aio::MultiplexedConnection> {
        let c = redis::Client::open(self.url())?;
        Ok(c.get_multiplexed_async_connection().await?)
    }

    /// Kills the server (its data is lost unless persistence was turned on with extra arguments).
    pub async fn stop(&mut self) -> Result<()> {
        self.0.stop().await
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) -> Result<()> {
        self.0.restart().await
    }
}

/// Directory holding our binaries (next to the test executable's `deps/` directory).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("AIRLOCK_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of one of our binaries, e.g. `airlock-dispatcher`.
pub fn our_binary(name: &str) -> Result<PathBuf> {
    let p = bin_dir().join(name);
    if !p.exists() {
        bail!(
            "{} not built (run the tests through cargo nextest / cargo test --workspace)",
            p.display()
        );
    }
    Ok(p)
}

/// One of our binaries running as a child process; killed on drop.
#[derive(Debug)]
pub struct Service {
    name: String,
    child: Child,
}

impl Service {
    /// Starts `binary` with `args` and `envs` (stdout/stderr inherited so test output shows its logs).
    pub fn start(binary: &str, args: &[&str], envs: &[(&str, String)]) -> Result<Self> {
        let path = our_binary(binary)?;
        let mut cmd = Command::new(&path);
        cmd.args(args).kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", path.display()))?;
        Ok(Self {
            name: binary.to_string(),
            child,
        })
    }

    /// Process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub async fn kill(&mut self) -> Result<()> {
        self.child
            .kill()
            .await
            .with_context(|| format!("killing {}", self.name))
    }

    /// Asks it to stop (SIGTERM) and waits for its exit status.
    pub async fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| format!("{} did not stop within {timeout:?}", self.name))?
            .map_err(Into::into)
    }
}
