//! A real single-node Kubernetes for the tests: etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, containerd and the kubelet as processes on this machine, built from the pinned Go module
//! `tests/cluster` (`scripts/cluster-build`), with a loopback `docker-registry` as the only image source.
//!
//! One cluster serves a whole test run: `scripts/test-cluster up DIR` ([`up`]) starts it in the background
//! and `scripts/test-cluster down DIR` ([`down`]) stops every process it started by its pid; tests find it
//! through `AIRLOCK_TEST_CLUSTER=DIR` ([`TestCluster::from_env`]) and each keeps to namespaces of its own
//! ([`TestCluster::sandbox`], made from `deploy/base` as an operator applies it).
//!
//! Nothing here talks to anything but loopback and the cluster's own pod network (`10.244.0.0/24`, whose
//! gateway `10.244.0.1` is the host as pods see it); forwarding out of the pod network is dropped.
//!
//! # Layout
//! - `certs`: the cluster CA, component certificates and kubeconfigs.
//! - `config`: the components' configuration files.
//! - `up` / `down`: starting and stopping the processes.
//! - `sandbox`: per-test sandbox namespaces from `deploy/base`, ServiceAccount kubeconfigs.

mod certs;
mod config;
mod down;
mod sandbox;
mod up;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

pub use down::down;
pub use sandbox::Sandbox;
pub use up::up;

/// The pods' subnet.
pub const POD_CIDR: &str = "10.244.0.0/24";
/// The host as pods see it: the CNI bridge's gateway address.
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// Service IPs (no kube-proxy: nothing answers on them; routed nowhere).
pub const SERVICE_CIDR: &str = "10.0.0.0/24";
/// The node's name: resolves to 127.0.0.1 everywhere, where the kubelet listens.
pub const NODE: &str = "localhost";
/// The CNI bridge.
const BRIDGE: &str = "airlock-br0";
/// Names the directory of the machine's running cluster (one at a time).
const OWNER: &str = "/run/airlock-test-cluster";

/// Where one cluster keeps its files: everything under `dir`, containerd's state (with its socket, whose
/// path must stay short) under `run`.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    dir: PathBuf,
    run: PathBuf,
}

impl Layout {
    fn new(dir: &Path) -> Result<Self> {
        let dir = std::path::absolute(dir)?;
        let tag = &hex::encode(sha2::Digest::finalize(sha2::Digest::chain_update(
            sha2::Sha256::default(),
            dir.as_os_str().as_encoded_bytes(),
        )))[..12];
        Ok(Self {
            run: PathBuf::from(format!("/run/airlock-cluster-{tag}")),
            dir,
        })
    }

    fn containerd_socket(&self) -> PathBuf {
        self.run.join("containerd.sock")
    }

    fn log(&self, component: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{component}.log"))
    }
}

/// A running cluster, as `DIR/env` and `DIR/kubeconfig` describe it.
#[derive(Debug, Clone)]
pub struct TestCluster {
    dir: PathBuf,
    env: BTreeMap<String, String>,
}

impl TestCluster {
    /// The cluster of `AIRLOCK_TEST_CLUSTER`; an error that names the setup step when it is not set or
    /// not running.
    pub fn from_env() -> Result<Self> {
        let Some(dir) = std::env::var_os("AIRLOCK_TEST_CLUSTER") else {
            bail!(
                "no test cluster: the Kubernetes tests run on a real cluster. Start one with \
                 `scripts/test-cluster up DIR` and set AIRLOCK_TEST_CLUSTER=DIR (scripts/test does both)"
            );
        };
        Self::open(Path::new(&dir))
    }

    /// The cluster whose files are in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(dir.join("env")).with_context(|| {
            format!(
                "{}/env: no test cluster there (scripts/test-cluster up {})",
                dir.display(),
                dir.display()
            )
        })?;
        let env = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            env,
        })
    }

    fn var(&self, key: &str) -> Result<&str> {
        self.env
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("{}/env has no {key}", self.dir.display()))
    }

    /// The admin kubeconfig (`system:masters`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// `127.0.0.1:PORT`: the loopback registry the node pulls from.
    pub fn registry(&self) -> Result<String> {
        self.var("REGISTRY").map(String::from)
    }

    /// `127.0.0.1:PORT`: the TLS registry with htpasswd auth ([`crate::oci::USER`]), whose certificate
    /// the cluster CA ([`TestCluster::ca_pem`]) signed and whose credentials the kubelet has.
    pub fn tls_registry(&self) -> Result<String> {
        self.var("TLS_REGISTRY").map(String::from)
    }

    /// The cluster CA, PEM.
    pub fn ca_pem(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.var("CA")?)?)
    }

    /// Requests the plain registry served so far, from its access log.
    pub fn registry_requests(&self) -> Result<Vec<crate::registry::RegistryRequest>> {
        let log = std::fs::read_to_string(self.dir.join("logs/docker-registry.access.log"))?;
        Ok(crate::registry::parse_access_log(&log))
    }

    /// The address pods reach the host on (bind test servers that jobs talk to there).
    pub fn host_addr(&self) -> Result<Ipv4Addr> {
        Ok(self.var("HOST_ADDR")?.parse()?)
    }

    /// The cluster's own `kubectl` (built from the same Kubernetes module).
    pub fn kubectl(&self) -> Result<PathBuf> {
        self.var("KUBECTL").map(PathBuf::from)
    }

    /// An admin client.
    pub async fn client(&self) -> Result<kube::Client> {
        client(&self.kubeconfig()).await
    }

    /// Runs the cluster's `kubectl` as admin with `args`, `stdin` on its standard input; its stdout.
    pub async fn kubectl_run(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        use tokio::io::AsyncWriteExt as _;
        let mut cmd = tokio::process::Command::new(self.kubectl()?);
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("spawning kubectl")?;
        if let Some(mut i) = child.stdin.take() {
            i.write_all(stdin.unwrap_or_default().as_bytes()).await?;
        }
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A client from a kubeconfig file.
pub async fn client(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

/// Runs a host command (`ip`, `iptables`), failing with its stderr.
fn host(cmd: &str, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd} (scripts/setup installs it)"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The iptables rule that keeps pod traffic inside the pod network (the host's own address is input,
/// not forwarded, so pods still reach it).
fn forward_guard(op: &str) -> Vec<String> {
    [
        "-w",
        op,
        "FORWARD",
        "-s",
        POD_CIDR,
        "!",
        "-d",
        POD_CIDR,
        "-m",
        "comment",
        "--comment",
        "airlock-test-cluster: pods reach only the pod network",
        "-j",
        "DROP",
    ]
    .map(String::from)
    .to_vec()
}
