//! Starting a cluster: certificates, the node's network, then each component in order, each waited for.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};

use super::certs::Pki;
use super::{BRIDGE, HOST_ADDR, Layout, NODE, POD_CIDR, SERVICE_CIDR, TestCluster, config, host};
use crate::oci::{self, ImageSpec, Pusher};

/// How long one component may take to become ready.
const READY: Duration = Duration::from_secs(120);

/// Starts a cluster whose files go to `dir`, with the components found in `bin` (`scripts/cluster-build`),
/// and returns once its node is `Ready` and `deploy/base` is applied (but its Deployments: the tests run
/// the services as processes). Writes `dir/kubeconfig`, `dir/env` and `dir/pids`; the processes go on
/// after this returns, until [`super::down`].
pub async fn up(dir: &Path, bin: &Path) -> Result<TestCluster> {
    let l = Layout::new(dir)?;
    // One cluster per machine: they would share the bridge, the pod subnet and the kubelet's cgroups.
    if let Ok(other) = std::fs::read_to_string(super::OWNER)
        && Path::new(other.trim()) != l.dir
        && super::down::running(&Layout::new(Path::new(other.trim()))?)?
    {
        bail!(
            "another test cluster is running from {}: use it (AIRLOCK_TEST_CLUSTER={0}) or stop it (scripts/test-cluster down {0})",
            other.trim()
        );
    }
    if super::down::running(&l)? {
        bail!(
            "a cluster is already running from {}: stop it first (scripts/test-cluster down {0})",
            l.dir.display()
        );
    }
    // A fresh cluster: nothing of an earlier one (its etcd, images, pods) is reused.
    for d in [
        "logs",
        "pki",
        "etcd",
        "containerd",
        "kubelet",
        "kubelet-pki",
        "cni",
        "cni-ipam",
        "registry",
    ] {
        let _ = std::fs::remove_dir_all(l.dir.join(d));
    }
    let _ = std::fs::remove_dir_all(&l.run);
    for d in [
        "logs",
        "pki",
        "etcd",
        "containerd/root",
        "kubelet",
        "kubelet-pki",
        "cni",
        "cni-ipam",
        "registry",
    ] {
        std::fs::create_dir_all(l.dir.join(d))?;
    }
    std::fs::create_dir_all(&l.run)?;
    std::fs::write(l.dir.join("pids"), "")?;
    std::fs::write(super::OWNER, l.dir.display().to_string())?;
    let mut procs = Procs {
        l: l.clone(),
        children: Vec::new(),
    };
    let started = std::time::Instant::now();

    let service_ip = Ipv4Addr::new(10, 0, 0, 1);
    let pki = Pki::create(&l.dir.join("pki"))?;
    let api_port = crate::free_port()?;
    let server = format!("https://127.0.0.1:{api_port}");
    let serving = pki.apiserver(service_ip, HOST_ADDR)?;
    let kubelet_client = pki.client(
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        Some("system:masters"),
    )?;
    let admin = pki.client("admin", "admin", Some("system:masters"))?;
    pki.kubeconfig(&l.dir.join("kubeconfig"), &server, "admin", &admin)?;
    let kcm = l.dir.join("pki/kcm.kubeconfig");
    let cert = pki.client("kcm", "system:kube-controller-manager", None)?;
    pki.kubeconfig(&kcm, &server, "system:kube-controller-manager", &cert)?;
    let sched = l.dir.join("pki/scheduler.kubeconfig");
    let cert = pki.client("scheduler", "system:kube-scheduler", None)?;
    pki.kubeconfig(&sched, &server, "system:kube-scheduler", &cert)?;
    let node = l.dir.join("pki/node.kubeconfig");
    let cert = pki.client("node", &format!("system:node:{NODE}"), Some("system:nodes"))?;
    pki.kubeconfig(&node, &server, &format!("system:node:{NODE}"), &cert)?;

    network()?;

    // The image sources: a plain loopback registry with the sandbox ("pause") image, a TLS one with
    // htpasswd auth (certificate from the cluster CA, credentials in the kubelet's config.json), and every
    // other registry pointed at a closed loopback port.
    let reg_bin = crate::find_binary("AIRLOCK_DOCKER_REGISTRY", "docker-registry")?;
    let registry = procs
        .registry(&reg_bin, "docker-registry", None, None)
        .await?;
    let tls = pki.server("registry", "127.0.0.1")?;
    let hash = bcrypt::hash(oci::PASSWORD, 4)?;
    std::fs::write(
        l.dir.join("registry/htpasswd"),
        format!("{}:{hash}\n", oci::USER),
    )?;
    let tls_registry = procs
        .registry(
            &reg_bin,
            "docker-registry-tls",
            Some(&(tls.cert, tls.key)),
            Some(&l.dir.join("registry/htpasswd")),
        )
        .await?;
    let pause = format!("{registry}/pause:1");
    let spec = ImageSpec::new(vec![oci::busybox_layer("pause")?])
        .with_run(serde_json::json!({"Cmd": ["/bin/sleep", "2147483647"]}));
    push_when_ready(&Pusher::plain_host(&registry), "pause:1", &spec).await?;
    let ca = pki.ca_file();
    for (host_dir, hosts) in [
        (
            registry.as_str(),
            config::hosts(&format!("http://{registry}"), None),
        ),
        (
            tls_registry.as_str(),
            config::hosts(&format!("https://{tls_registry}"), Some(&ca)),
        ),
        ("_default", config::hosts(config::CLOSED, None)),
    ] {
        let d = l.dir.join("certs.d").join(host_dir);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("hosts.toml"), hosts)?;
    }
    {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            oci::USER,
            oci::PASSWORD
        ));
        let docker_config = serde_json::json!({"auths": {tls_registry.clone(): {"auth": auth}}});
        // The kubelet reads registry credentials from config.json in its root directory.
        std::fs::write(l.dir.join("kubelet/config.json"), docker_config.to_string())?;
    }

    let etcd_port = crate::free_port()?;
    let peer_port = crate::free_port()?;
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    procs.spawn(
        "etcd",
        &bin.join("etcd"),
        &[
            "--name=airlock-test".into(),
            format!("--data-dir={}", l.dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=airlock-test={peer_url}"),
            // A throwaway store: durability costs the tests time and proves nothing about Airlock.
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ],
    )?;
    procs.wait_port("etcd", etcd_port).await?;

    let p = |f: &Path| f.display().to_string();
    procs.spawn(
        "kube-apiserver",
        &bin.join("kube-apiserver"),
        &[
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--tls-cert-file={}", p(&serving.cert)),
            format!("--tls-private-key-file={}", p(&serving.key)),
            format!("--client-ca-file={}", p(&pki.ca_file())),
            format!("--service-account-issuer={server}"),
            format!("--service-account-key-file={}", p(&pki.sa_pub())),
            format!("--service-account-signing-key-file={}", p(&pki.sa_key())),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--authorization-mode=Node,RBAC".into(),
            "--allow-privileged=false".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            format!("--kubelet-client-certificate={}", p(&kubelet_client.cert)),
            format!("--kubelet-client-key={}", p(&kubelet_client.key)),
            // The node's name resolves to 127.0.0.1, where the kubelet listens.
            "--kubelet-preferred-address-types=Hostname".into(),
            "--profiling=false".into(),
        ],
    )?;
    let cluster = TestCluster {
        dir: l.dir.clone(),
        env: Default::default(),
    };
    let admin_client = procs
        .wait("kube-apiserver", || async {
            let c = cluster.client().await.ok()?;
            let r = c
                .request_text(http::Request::get("/readyz").body(Vec::new()).ok()?)
                .await
                .ok()?;
            (r.trim() == "ok").then_some(c)
        })
        .await?;

    procs.spawn(
        "kube-controller-manager",
        &bin.join("kube-controller-manager"),
        &[
            format!("--kubeconfig={}", p(&kcm)),
            format!("--authentication-kubeconfig={}", p(&kcm)),
            format!("--authorization-kubeconfig={}", p(&kcm)),
            "--leader-elect=false".into(),
            "--use-service-account-credentials".into(),
            format!("--service-account-private-key-file={}", p(&pki.sa_key())),
            format!("--root-ca-file={}", p(&pki.ca_file())),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=0".into(),
            "--profiling=false".into(),
        ],
    )?;
    let sched_config = l.dir.join("scheduler.yaml");
    std::fs::write(&sched_config, config::scheduler(&sched))?;
    procs.spawn(
        "kube-scheduler",
        &bin.join("kube-scheduler"),
        &[
            format!("--config={}", p(&sched_config)),
            format!("--authentication-kubeconfig={}", p(&sched)),
            format!("--authorization-kubeconfig={}", p(&sched)),
            "--secure-port=0".into(),
            "--profiling=false".into(),
        ],
    )?;

    std::fs::write(
        l.dir.join("cni/10-bridge.conflist"),
        config::cni(BRIDGE, POD_CIDR, &l.dir.join("cni-ipam")),
    )?;
    let ctrd_config = l.dir.join("containerd.toml");
    std::fs::write(&ctrd_config, config::containerd(&l, &pause))?;
    let containerd = crate::find_binary("AIRLOCK_CONTAINERD", "containerd")?;
    procs.spawn(
        "containerd",
        &containerd,
        &["--config".into(), p(&ctrd_config)],
    )?;
    let sock = l.containerd_socket();
    procs
        .wait("containerd", || async { sock.exists().then_some(()) })
        .await?;

    let kubelet_config = l.dir.join("kubelet.yaml");
    std::fs::write(
        &kubelet_config,
        config::kubelet(&l, crate::free_port()?, crate::free_port()?),
    )?;
    procs.spawn(
        "kubelet",
        &bin.join("kubelet"),
        &[
            format!("--config={}", p(&kubelet_config)),
            format!("--kubeconfig={}", p(&node)),
            format!("--hostname-override={NODE}"),
            format!("--root-dir={}", p(&l.dir.join("kubelet"))),
            format!("--cert-dir={}", p(&l.dir.join("kubelet-pki"))),
        ],
    )?;
    let nodes: Api<Node> = Api::all(admin_client.clone());
    procs
        .wait("the node to be Ready (kubelet)", || async {
            let list = nodes.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|n| {
                    n.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .then_some(())
        })
        .await?;

    let kubectl = bin.join("kubectl");
    let env = format!(
        "REGISTRY={registry}\nTLS_REGISTRY={tls_registry}\nCA={}\nHOST_ADDR={HOST_ADDR}\nAPI_SERVER={server}\nKUBECTL={}\nPOD_CIDR={POD_CIDR}\nNODE={NODE}\n",
        ca.display(),
        kubectl.display()
    );
    std::fs::write(l.dir.join("env"), env)?;
    let cluster = TestCluster::open(&l.dir)?;
    super::sandbox::apply_base(&cluster).await?;
    eprintln!(
        "test-cluster: up in {:.1} s ({}): kubeconfig {}",
        started.elapsed().as_secs_f64(),
        l.dir.display(),
        cluster.kubeconfig().display()
    );
    Ok(cluster)
}

/// The CNI bridge with the host's address on it (so servers can bind there before the first pod), and
/// the rule that drops pod traffic leaving the pod network.
fn network() -> Result<()> {
    let addr = format!("{HOST_ADDR}/24");
    if !Path::new("/sys/class/net").join(BRIDGE).exists() {
        host("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    }
    let shown = Command::new("ip")
        .args(["-4", "addr", "show", "dev", BRIDGE])
        .output()?;
    if !String::from_utf8_lossy(&shown.stdout).contains(&addr) {
        host("ip", &["addr", "add", &addr, "dev", BRIDGE])?;
    }
    host("ip", &["link", "set", BRIDGE, "up"])?;
    let check: Vec<String> = super::forward_guard("-C");
    let present = Command::new("iptables")
        .args(&check)
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        let insert = super::forward_guard("-I");
        host(
            "iptables",
            &insert.iter().map(String::as_str).collect::<Vec<_>>(),
        )?;
    }
    Ok(())
}

/// Pushes `spec` once the registry answers.
async fn push_when_ready(pusher: &Pusher, name: &str, spec: &ImageSpec) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match pusher.push(name, spec).await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(e.context("pushing the pause image"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The processes started so far, each recorded in `DIR/pids` as it starts (so `down` stops what a
/// failed `up` left).
struct Procs {
    l: Layout,
    children: Vec<(String, Child)>,
}

impl Procs {
    fn spawn(&mut self, name: &str, bin: &Path, args: &[String]) -> Result<()> {
        let log = std::fs::File::create(self.l.log(name))?;
        self.spawn_to(name, bin, args, log.try_clone()?, log)
    }

    /// A docker-registry on a free port (its access log in `logs/NAME.access.log`); its `127.0.0.1:PORT`.
    async fn registry(
        &mut self,
        bin: &Path,
        name: &str,
        tls: Option<&(PathBuf, PathBuf)>,
        htpasswd: Option<&Path>,
    ) -> Result<String> {
        let port = crate::free_port()?;
        let config = self.l.dir.join(format!("registry/{name}.yml"));
        let data = self.l.dir.join(format!("registry/{name}"));
        std::fs::write(
            &config,
            crate::registry::config_yaml(&data, port, tls, htpasswd),
        )?;
        let access = std::fs::File::create(self.l.dir.join(format!("logs/{name}.access.log")))?;
        let log = std::fs::File::create(self.l.log(name))?;
        self.spawn_to(
            name,
            bin,
            &["serve".into(), config.display().to_string()],
            access,
            log,
        )?;
        self.wait_port(name, port).await?;
        Ok(format!("127.0.0.1:{port}"))
    }

    fn spawn_to(
        &mut self,
        name: &str,
        bin: &Path,
        args: &[String],
        stdout: std::fs::File,
        stderr: std::fs::File,
    ) -> Result<()> {
        if !bin.exists() {
            bail!(
                "{} not found: build the cluster with scripts/cluster-build (scripts/setup does)",
                bin.display()
            );
        }
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group: a Ctrl-C at the terminal that ran `up` does not reach it.
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut pids = std::fs::OpenOptions::new()
            .append(true)
            .open(self.l.dir.join("pids"))?;
        writeln!(pids, "{name} {}", child.id())?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    async fn wait_port(&mut self, what: &str, port: u16) -> Result<()> {
        self.wait(what, || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await
    }

    /// Polls `f` until it yields, failing early (with the end of its log) when a started process exits.
    async fn wait<T, F, Fut>(&mut self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + READY;
        loop {
            if let Some(v) = f().await {
                return Ok(v);
            }
            for (name, c) in &mut self.children {
                if let Some(status) = c.try_wait()? {
                    bail!(
                        "{name} exited ({status}) while waiting for {what}:\n{}",
                        tail(&self.l.log(name))
                    );
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{what} not ready within {READY:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The last lines of a log file.
fn tail(path: &PathBuf) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
