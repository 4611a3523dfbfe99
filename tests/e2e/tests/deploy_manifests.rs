//! The Kubernetes manifests under `deploy/` and the NATS identities of `deploy/nats/nats-server.conf`.
//!
//! - Every manifest (and both kustomizations, rendered) validates against the official Kubernetes 1.33
//!   schemas, with `kubernetes-validate` from the project venv (installed by `scripts/setup`). Without the
//!   tool (or `kubectl` for rendering) these tests fail under `CI=true` and are skipped loudly otherwise.
//! - The RBAC Roles grant exactly the API calls the services make, the sandbox enforces PSA `restricted`
//!   behind a default-deny NetworkPolicy, every `AIRLOCK_*` variable set is one a service reads, and the
//!   operator policy parses as a `Policy`.
//! - A real nats-server with the shipped configuration lets the `jobs` user publish a result (and get the
//!   JetStream ack) and nothing else, and lets the `services` user run the streams and consumers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use airlock_test_support::{free_port, workspace_root};
use anyhow::{Context, Result, anyhow, bail, ensure};
use futures::StreamExt;
use serde::Deserialize as _;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------------------
// Reading deploy/

fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

/// Every `*.yaml` / `*.yml` file under `dir`, sorted.
fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn is_kustomization(path: &Path) -> bool {
    matches!(
        path.file_name().and_then(|n| n.to_str()),
        Some("kustomization.yaml" | "kustomization.yml")
    )
}

/// The Kubernetes manifests under deploy/ (every YAML file but the kustomizations).
fn manifest_files() -> Result<Vec<PathBuf>> {
    let files: Vec<PathBuf> = yaml_files(&deploy_dir())?
        .into_iter()
        .filter(|p| !is_kustomization(p))
        .collect();
    ensure!(
        !files.is_empty(),
        "no manifests under {}",
        deploy_dir().display()
    );
    Ok(files)
}

/// The documents of a YAML file, as JSON values (empty documents skipped).
fn documents(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let v = Value::deserialize(doc)
            .with_context(|| format!("{}: document {} is not valid YAML", path.display(), i + 1))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Every object of every manifest under deploy/, with the file it is in.
fn all_objects() -> Result<Vec<(PathBuf, Value)>> {
    let mut out = Vec::new();
    for f in manifest_files()? {
        for d in documents(&f)? {
            out.push((f.clone(), d));
        }
    }
    Ok(out)
}

fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or_default()
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

fn namespace(o: &Value) -> &str {
    o["metadata"]["namespace"].as_str().unwrap_or_default()
}

fn find<'a>(objects: &'a [(PathBuf, Value)], k: &str, ns: &str, n: &str) -> Result<&'a Value> {
    objects
        .iter()
        .map(|(_, o)| o)
        .find(|o| kind(o) == k && namespace(o) == ns && name(o) == n)
        .ok_or_else(|| anyhow!("no {k} {ns}/{n} under deploy/"))
}

// ---------------------------------------------------------------------------------------------------------
// External tools: required in CI, skipped loudly elsewhere

/// Whether a missing tool may skip a test (never in CI).
fn skip_missing(tool: &str, how: &str) -> Result<()> {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        bail!("{tool} is required in CI but was not found: {how}");
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: {tool} not found ({how}); this test checks nothing here. It is required when CI=true. !!!!!!!!\n"
    );
    Ok(())
}

fn kubernetes_validate() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("AIRLOCK_KUBERNETES_VALIDATE") {
        return Some(PathBuf::from(p));
    }
    let venv = workspace_root().join(".venv/bin/kubernetes-validate");
    venv.exists().then_some(venv)
}

fn kubectl() -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("kubectl"))
        .find(|p| p.exists())
}

/// Runs kubernetes-validate (strict, Kubernetes 1.33) on `files`; any error, or any warning (an unknown
/// kind or apiVersion has no schema and is only a warning to the tool), fails.
fn validate_files(tool: &Path, files: &[PathBuf]) -> Result<()> {
    let out = Command::new(tool)
        .args(["--kubernetes-version", "1.33.0", "--strict", "--quiet"])
        .args(files)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", tool.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let problems: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ERROR") || l.starts_with("WARN"))
        .collect();
    ensure!(
        out.status.success() && problems.is_empty(),
        "kubernetes-validate rejected the manifests ({}):\n{text}",
        out.status
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Schema validation

#[test]
fn every_deploy_manifest_validates_against_the_kubernetes_1_33_schemas() -> Result<()> {
    let files = manifest_files()?;
    // Parse them ourselves too, so a YAML error is reported whether or not the tool is there.
    for f in &files {
        let docs = documents(f)?;
        ensure!(!docs.is_empty(), "{} holds no object", f.display());
        for d in docs {
            ensure!(
                !kind(&d).is_empty() && d["apiVersion"].is_string() && !name(&d).is_empty(),
                "{}: an object without kind, apiVersion or name",
                f.display()
            );
        }
    }
    let Some(tool) = kubernetes_validate() else {
        return skip_missing(
            "kubernetes-validate",
            "run scripts/setup to install it into .venv",
        );
    };
    validate_files(&tool, &files)
}

#[test]
fn both_kustomizations_build_and_every_rendered_object_validates_against_kubernetes_1_33()
-> Result<()> {
    let Some(kubectl) = kubectl() else {
        return skip_missing(
            "kubectl",
            "scripts/setup installs it (Debian kubernetes-client)",
        );
    };
    let dir = tempfile::tempdir()?;
    let mut rendered = Vec::new();
    for (label, path) in [
        ("production", deploy_dir()),
        ("dev-deps", deploy_dir().join("dev-deps")),
    ] {
        let out = Command::new(&kubectl)
            .arg("kustomize")
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .context("running kubectl kustomize")?;
        ensure!(
            out.status.success(),
            "kubectl kustomize {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let file = dir.path().join(format!("{label}.yaml"));
        std::fs::write(&file, &out.stdout)?;
        let objects = documents(&file)?;
        // The production build holds no NATS or Redis server; dev-deps adds exactly those.
        let statefulsets: BTreeSet<&str> = objects
            .iter()
            .filter(|o| kind(o) == "StatefulSet")
            .map(name)
            .collect();
        let deployments: BTreeSet<&str> = objects
            .iter()
            .filter(|o| kind(o) == "Deployment")
            .map(name)
            .collect();
        ensure!(
            deployments
                == BTreeSet::from(["airlock-dispatcher", "airlock-ingester", "airlock-janitor"]),
            "{label}: deployments {deployments:?}"
        );
        let expected: BTreeSet<&str> = if label == "dev-deps" {
            BTreeSet::from(["nats", "redis"])
        } else {
            BTreeSet::new()
        };
        ensure!(
            statefulsets == expected,
            "{label}: statefulsets {statefulsets:?}"
        );
        rendered.push(file);
    }
    let Some(tool) = kubernetes_validate() else {
        return skip_missing(
            "kubernetes-validate",
            "run scripts/setup to install it into .venv",
        );
    };
    validate_files(&tool, &rendered)
}

// ---------------------------------------------------------------------------------------------------------
// RBAC

/// The Kubernetes API calls each service makes, as (API group, resource, verb). Derived by reading the code;
/// update this list together with the code and deploy/base/rbac.yaml.
///
/// dispatcher — backend/src/kube/:
///   `KubeBackend::launch`: `policies.create`, `policies.get_opt` (on 409), `pods.create`, `pods.get_opt`
///   (on 409), `policies.patch` (merge patch of ownerReferences);
///   `KubeBackend::remove` (dispatcher/src/handler.rs, a failed run's cleanup): `pods.delete`,
///   `policies.delete`;
///   `KubeBackend::watch` (dispatcher/src/watcher.rs): a kube-runtime watcher on Pods = list + watch;
///   `KubeBackend::list` (slot reconciliation in dispatcher/src/watcher.rs): `pods.list`.
/// janitor — backend/src/kube/ via janitor/src/reaper.rs and janitor/src/sweep.rs:
///   `KubeBackend::observe`: `pods.get_opt`; `KubeBackend::logs_tail`: `pods.logs` (get pods/log);
///   `KubeBackend::remove`: `pods.delete`, `policies.delete`; `KubeBackend::list`: `pods.list`;
///   `Sweep::policy_run_ids`: NetworkPolicy `list`. The janitor never watches.
/// ingester — no Kubernetes client at all.
fn calls_made_by(service: &str) -> BTreeSet<(String, String, String)> {
    let net = "networking.k8s.io";
    let calls: &[(&str, &str, &str)] = match service {
        "airlock-dispatcher" => &[
            ("", "pods", "create"),
            ("", "pods", "get"),
            ("", "pods", "list"),
            ("", "pods", "watch"),
            ("", "pods", "delete"),
            (net, "networkpolicies", "create"),
            (net, "networkpolicies", "get"),
            (net, "networkpolicies", "patch"),
            (net, "networkpolicies", "delete"),
        ],
        "airlock-janitor" => &[
            ("", "pods", "get"),
            ("", "pods", "list"),
            ("", "pods", "delete"),
            ("", "pods/log", "get"),
            (net, "networkpolicies", "list"),
            (net, "networkpolicies", "delete"),
        ],
        _ => &[],
    };
    calls
        .iter()
        .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// What a Role grants, expanded to (group, resource, verb); wildcards and resourceNames are refused.
fn granted(role: &Value) -> Result<BTreeSet<(String, String, String)>> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().cloned().unwrap_or_default() {
        ensure!(
            rule.get("resourceNames").is_none() && rule.get("nonResourceURLs").is_none(),
            "role {}: resourceNames/nonResourceURLs are not expected",
            name(role)
        );
        let (groups, resources, verbs) = (
            strings(&rule["apiGroups"]),
            strings(&rule["resources"]),
            strings(&rule["verbs"]),
        );
        for s in groups.iter().chain(&resources).chain(&verbs) {
            ensure!(!s.contains('*'), "role {}: wildcard {s:?}", name(role));
        }
        for g in &groups {
            for r in &resources {
                for v in &verbs {
                    out.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    Ok(out)
}

#[test]
fn the_rbac_roles_grant_exactly_the_kubernetes_calls_each_service_makes() -> Result<()> {
    let objects = all_objects()?;
    for (f, o) in &objects {
        ensure!(
            !matches!(kind(o), "ClusterRole" | "ClusterRoleBinding"),
            "{}: {} {} — Airlock needs no cluster-wide permission",
            f.display(),
            kind(o),
            name(o)
        );
    }
    let roles: Vec<&Value> = objects
        .iter()
        .map(|(_, o)| o)
        .filter(|o| kind(o) == "Role")
        .collect();
    let bindings: Vec<&Value> = objects
        .iter()
        .map(|(_, o)| o)
        .filter(|o| kind(o) == "RoleBinding")
        .collect();
    for service in ["airlock-dispatcher", "airlock-janitor", "airlock-ingester"] {
        // Everything bound to the service's account, wherever it is.
        let mut grants = BTreeSet::new();
        for b in &bindings {
            let bound = b["subjects"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .any(|s| {
                    s["kind"] == "ServiceAccount"
                        && s["name"] == service
                        && s["namespace"] == "airlock-system"
                });
            if !bound {
                continue;
            }
            ensure!(
                namespace(b) == "airlock-sandbox",
                "{service} is bound in {:?}; only airlock-sandbox",
                namespace(b)
            );
            ensure!(
                b["roleRef"]["kind"] == "Role",
                "{service}: roleRef must be a Role"
            );
            let role_name = b["roleRef"]["name"].as_str().unwrap_or_default();
            let role = roles
                .iter()
                .find(|r| name(r) == role_name && namespace(r) == namespace(b))
                .ok_or_else(|| anyhow!("{service}: bound Role {role_name} does not exist"))?;
            grants.extend(granted(role)?);
        }
        let needed = calls_made_by(service);
        let missing: Vec<_> = needed.difference(&grants).collect();
        let extra: Vec<_> = grants.difference(&needed).collect();
        ensure!(
            missing.is_empty() && extra.is_empty(),
            "{service}: RBAC differs from the calls the code makes; missing {missing:?}, not needed {extra:?}"
        );
        // Its ServiceAccount exists; the one without permissions gets no token at all.
        let sa = find(&objects, "ServiceAccount", "airlock-system", service)?;
        let deployment = find(&objects, "Deployment", "airlock-system", service)?;
        let pod = &deployment["spec"]["template"]["spec"];
        ensure!(
            pod["serviceAccountName"] == service,
            "{service}: the Deployment must run as its own ServiceAccount"
        );
        if needed.is_empty() {
            ensure!(
                sa["automountServiceAccountToken"] == false
                    && pod["automountServiceAccountToken"] == false,
                "{service} needs no Kubernetes access: automountServiceAccountToken must be false"
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// The sandbox namespace

#[test]
fn the_sandbox_namespace_enforces_pod_security_restricted_behind_a_default_deny_network_policy()
-> Result<()> {
    let objects = all_objects()?;
    let ns = find(&objects, "Namespace", "", "airlock-sandbox")?;
    let labels = &ns["metadata"]["labels"];
    ensure!(
        labels["pod-security.kubernetes.io/enforce"] == "restricted",
        "airlock-sandbox must enforce PSA restricted, labels: {labels}"
    );
    let version = labels["pod-security.kubernetes.io/enforce-version"]
        .as_str()
        .unwrap_or("latest");
    ensure!(
        version == "latest" || version == "v1.33",
        "enforce-version {version:?}"
    );

    // A NetworkPolicy selecting every pod, isolating both directions, allowing nothing.
    let deny = objects
        .iter()
        .map(|(_, o)| o)
        .filter(|o| kind(o) == "NetworkPolicy" && namespace(o) == "airlock-sandbox")
        .find(|o| {
            let spec = &o["spec"];
            let all_pods = spec["podSelector"]
                .as_object()
                .is_some_and(|m| m.is_empty());
            let types: BTreeSet<String> = strings(&spec["policyTypes"]).into_iter().collect();
            let nothing =
                |k: &str| spec[k].is_null() || spec[k].as_array().is_some_and(|a| a.is_empty());
            all_pods
                && types == BTreeSet::from(["Ingress".to_string(), "Egress".to_string()])
                && nothing("ingress")
                && nothing("egress")
        });
    ensure!(
        deny.is_some(),
        "airlock-sandbox needs a default-deny NetworkPolicy (podSelector {{}}, Ingress and Egress, no rules)"
    );
    for k in ["ResourceQuota", "LimitRange"] {
        ensure!(
            objects
                .iter()
                .any(|(_, o)| kind(o) == k && namespace(o) == "airlock-sandbox"),
            "airlock-sandbox needs a {k}"
        );
    }
    // Nothing of ours runs in the sandbox but the jobs.
    for (f, o) in &objects {
        ensure!(
            !(namespace(o) == "airlock-sandbox"
                && matches!(
                    kind(o),
                    "Deployment" | "StatefulSet" | "Pod" | "ServiceAccount"
                )),
            "{}: {} {} must not live in the sandbox namespace",
            f.display(),
            kind(o),
            name(o)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Configuration

/// Every environment variable `binary` reads, as its `--help` names them (`[env: AIRLOCK_...=]`).
fn env_vars_read_by(binary: &str) -> Result<BTreeSet<String>> {
    let path = airlock_test_support::our_binary(binary)?;
    let out = std::process::Command::new(&path)
        .arg("--help")
        .env_clear()
        .output()
        .with_context(|| format!("running {} --help", path.display()))?;
    let help = String::from_utf8_lossy(&out.stdout);
    Ok(help
        .split("[env: ")
        .skip(1)
        .filter_map(|piece| piece.split_once('=').map(|(name, _)| name.to_string()))
        .collect())
}

#[test]
fn every_airlock_variable_a_deployment_sets_is_one_its_service_reads() -> Result<()> {
    let objects = all_objects()?;
    for service in ["airlock-dispatcher", "airlock-ingester", "airlock-janitor"] {
        let known = env_vars_read_by(service)?;
        ensure!(
            known.contains("AIRLOCK_NATS_URL"),
            "could not read the env names of {service}"
        );
        let deployment = find(&objects, "Deployment", "airlock-system", service)?;
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let mut set = BTreeMap::new();
        for e in container["env"].as_array().cloned().unwrap_or_default() {
            set.insert(
                e["name"].as_str().unwrap_or_default().to_string(),
                "env".to_string(),
            );
        }
        for from in container["envFrom"].as_array().cloned().unwrap_or_default() {
            let cm = from["configMapRef"]["name"]
                .as_str()
                .ok_or_else(|| anyhow!("{service}: envFrom other than a ConfigMap"))?;
            let cm = find(&objects, "ConfigMap", "airlock-system", cm)?;
            for k in cm["data"].as_object().cloned().unwrap_or_default().keys() {
                set.insert(k.clone(), format!("ConfigMap {}", name(cm)));
            }
        }
        let unknown: Vec<_> = set
            .iter()
            .filter(|(k, _)| k.starts_with("AIRLOCK_") && !known.contains(*k))
            .collect();
        ensure!(
            unknown.is_empty(),
            "{service} is given variables it never reads (typo, or renamed in the code?): {unknown:?}"
        );
        for required in ["AIRLOCK_NATS_URL", "AIRLOCK_REDIS_URL", "AIRLOCK_HTTP_ADDR"] {
            ensure!(
                set.contains_key(required),
                "{service}: {required} is not set"
            );
        }
        if service != "airlock-janitor" {
            ensure!(
                set.contains_key("AIRLOCK_TOKEN_SECRET_FILE"),
                "{service}: needs the token secret"
            );
        }
        if service == "airlock-dispatcher" {
            // Unset, the dispatcher hands jobs its own NATS URL, services credential included.
            ensure!(
                set.get("AIRLOCK_JOB_NATS_URL").map(String::as_str) == Some("env"),
                "the dispatcher must get AIRLOCK_JOB_NATS_URL (the jobs credential) from the Secret"
            );
        }
    }
    Ok(())
}

#[test]
fn the_operator_policy_in_its_config_map_is_a_valid_policy() -> Result<()> {
    let objects = all_objects()?;
    let cm = find(&objects, "ConfigMap", "airlock-system", "airlock-policy")?;
    let json = cm["data"]["policy.json"]
        .as_str()
        .ok_or_else(|| anyhow!("airlock-policy has no policy.json"))?;
    let policy: airlock_schemas::Policy =
        serde_json::from_str(json).context("policy.json is not a valid Policy")?;
    ensure!(policy.max_deadline_seconds >= policy.default_deadline_seconds);
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// The NATS identities

/// nats-server started with deploy/nats/nats-server.conf (port, store and monitor port overridden).
struct ConfiguredNats {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for ConfiguredNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SERVICES_PW: &str = "services-test-password";
const JOBS_PW: &str = "jobs-test-password";
const CLIENTS_PW: &str = "clients-test-password";

impl ConfiguredNats {
    fn start(binary: &Path) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        // The shipped file, with only its store directory pointed at a throwaway one (nats-server refuses
        // `-sd` next to a configured store_dir).
        let shipped = std::fs::read_to_string(deploy_dir().join("nats/nats-server.conf"))?;
        ensure!(
            shipped.contains("store_dir: /data/jetstream"),
            "nats-server.conf: store_dir moved; update this test"
        );
        let store = dir.path().join("store");
        let conf = dir.path().join("nats-server.conf");
        std::fs::write(
            &conf,
            shipped.replace(
                "store_dir: /data/jetstream",
                &format!("store_dir: {:?}", store.display().to_string()),
            ),
        )?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&conf)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["--http_port", &free_port()?.to_string()])
            .env("AIRLOCK_NATS_SERVICES_PASSWORD", SERVICES_PW)
            .env("AIRLOCK_NATS_JOBS_PASSWORD", JOBS_PW)
            .env("AIRLOCK_NATS_CLIENTS_PASSWORD", CLIENTS_PW)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let mut s = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = s.child.try_wait()? {
                bail!("nats-server exited with {status}: is deploy/nats/nats-server.conf valid?");
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(s)
    }

    /// Connects as `user`. (Explicit user and password: async-nats 0.51 ignores credentials embedded in
    /// the URL, so the services cannot use a `nats://user:pass@host` URL yet; see docs/DEPLOY.md.)
    async fn connect(&self, user: &str, password: &str) -> Result<async_nats::Client> {
        async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
            .name(user)
            .connect(format!("nats://127.0.0.1:{}", self.port))
            .await
            .with_context(|| format!("the {user} user cannot connect"))
    }
}

fn nats_server() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("AIRLOCK_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let venv = workspace_root().join(".venv/bin/nats-server");
    venv.exists().then_some(venv)
}

/// Nothing arrives on `sub` within a short while.
async fn stays_silent(sub: &mut async_nats::Subscriber, what: &str) -> Result<()> {
    match tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
        Err(_) | Ok(None) => Ok(()),
        Ok(Some(m)) => bail!("{what}: received {} ({:?})", m.subject, m.payload),
    }
}

#[tokio::test]
async fn the_jobs_nats_identity_can_publish_results_and_nothing_else() -> Result<()> {
    let Some(binary) = nats_server() else {
        return skip_missing("nats-server", "run scripts/setup to install it into .venv");
    };
    let nats = ConfiguredNats::start(&binary)?;
    let subjects = airlock_schemas::Subjects::new(airlock_schemas::subjects::DEFAULT_PREFIX);

    // Anonymous and wrong-password connections are refused.
    ensure!(
        async_nats::ConnectOptions::new()
            .connect(format!("nats://127.0.0.1:{}", nats.port))
            .await
            .is_err(),
        "an anonymous client was accepted"
    );
    ensure!(
        nats.connect("jobs", "wrong").await.is_err(),
        "a wrong password was accepted"
    );

    // The services user sets everything up with the services' own stream and consumer code.
    let services = nats.connect("services", SERVICES_PW).await?;
    let sjs = async_nats::jetstream::new(services.clone());
    airlock_runtime::nats::ensure_streams(
        &sjs,
        &subjects,
        &airlock_runtime::nats::StreamOptions::default(),
    )
    .await
    .context("the services user cannot create the streams")?;
    let results = airlock_runtime::nats::ensure_consumer(
        &sjs,
        &airlock_runtime::nats::ConsumerSpec {
            stream: airlock_runtime::nats::stream_name(
                &subjects,
                airlock_schemas::subjects::STREAM_RESULTS,
            ),
            durable: "airlock-ingester".into(),
            filter: subjects.results_all(),
            max_ack_pending: 100,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
        },
    )
    .await
    .context("the services user cannot create a consumer")?;

    // A job publishes its result with JetStream and gets the stream's ack, across the account boundary.
    let job = nats.connect("jobs", JOBS_PW).await?;
    let jjs = async_nats::jetstream::new(job.clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(airlock_schemas::env::RUN_TOKEN_HEADER, "the-token");
    let ack = jjs
        .publish_with_headers(subjects.results("run-1"), headers, "{\"ok\":true}".into())
        .await
        .context("publishing the result")?
        .await
        .context("the job got no JetStream ack for its result")?;
    ensure!(ack.stream == "AIRLOCK_RESULTS", "acked by {}", ack.stream);

    // The ingester (services) receives it, header intact, and can acknowledge it.
    let mut batch = results
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await?;
    let msg = batch
        .next()
        .await
        .ok_or_else(|| anyhow!("the result did not reach the results stream"))?
        .map_err(|e| anyhow!("{e}"))?;
    ensure!(msg.subject.as_str() == subjects.results("run-1"));
    ensure!(
        msg.headers
            .as_ref()
            .and_then(|h| h.get(airlock_schemas::env::RUN_TOKEN_HEADER))
            .map(|v| v.as_str())
            == Some("the-token"),
        "the run token header was lost"
    );
    msg.ack()
        .await
        .map_err(|e| anyhow!("services cannot ack: {e}"))?;

    // The job sees nothing of anyone else: not with `>`, not with `_INBOX.>`.
    let mut everything = job.subscribe(">").await?;
    let mut inboxes = job.subscribe("_INBOX.>").await?;
    job.flush().await?;

    // Services traffic the job must not see: an event, a run request pulled through an inbox, an API reply.
    services
        .publish(subjects.events("run-1"), "{}".into())
        .await?;
    sjs.publish(subjects.runs("default"), "{\"id\":\"secret-run\"}".into())
        .await?
        .await?;
    let runs_consumer = airlock_runtime::nats::ensure_consumer(
        &sjs,
        &airlock_runtime::nats::ConsumerSpec {
            stream: airlock_runtime::nats::stream_name(
                &subjects,
                airlock_schemas::subjects::STREAM_RUNS,
            ),
            durable: "airlock-dispatcher-default".into(),
            filter: subjects.runs("default"),
            max_ack_pending: 10,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
        },
    )
    .await?;
    let mut pulled = runs_consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await?;
    ensure!(
        pulled.next().await.is_some(),
        "services could not pull a run request"
    );
    // Nor another job's result (with its run token): the jobs share one account.
    let other_job = nats.connect("jobs", JOBS_PW).await?;
    other_job
        .publish(subjects.results("run-2"), "{\"theirs\":true}".into())
        .await?;
    other_job.flush().await?;
    services.flush().await?;
    stays_silent(&mut everything, "a job subscribed to `>`").await?;
    stays_silent(&mut inboxes, "a job subscribed to `_INBOX.>`").await?;

    // What the job publishes outside airlock.results.> goes nowhere.
    let mut runs = services.subscribe(subjects.runs_all()).await?;
    let mut timers = services.subscribe(subjects.timers_all()).await?;
    services.flush().await?;
    job.publish(subjects.runs("default"), "{\"id\":\"forged\"}".into())
        .await?;
    job.publish(
        subjects.timer(airlock_schemas::TimerKind::Cancel, Some("run-1")),
        "{}".into(),
    )
    .await?;
    job.flush().await?;
    stays_silent(&mut runs, "services listening on airlock.runs.>").await?;
    stays_silent(&mut timers, "services listening on airlock.timers.>").await?;

    // And it has no JetStream API.
    ensure!(
        !matches!(
            tokio::time::timeout(Duration::from_secs(3), jjs.get_stream("AIRLOCK_RESULTS")).await,
            Ok(Ok(_))
        ),
        "a job could read stream information"
    );
    Ok(())
}
