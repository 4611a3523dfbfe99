//! The Kubernetes manifests under `deploy/`.
//!
//! - Every manifest (and both kustomizations, rendered) validates against the official Kubernetes 1.33
//!   schemas, with `kubernetes-validate` from the project venv (installed by `scripts/setup`). Without the
//!   tool (or `kubectl` for rendering) these tests fail under `CI=true` and are skipped loudly otherwise.
//! - The RBAC Roles grant exactly the API calls the services make, the sandbox enforces PSA `restricted`
//!   behind a default-deny NetworkPolicy, every `AIRLOCK_*` variable set is one a service reads, and the
//!   operator policy parses as a `Policy`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, ensure};
use serde_json::Value;

mod deploy;
use deploy::*;

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
                == BTreeSet::from([
                    "airlock-api",
                    "airlock-dispatcher",
                    "airlock-ingester",
                    "airlock-janitor"
                ]),
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
///   `KubeBackend::list` (slot reconciliation in dispatcher/src/watcher.rs): `pods.list`;
///   `KubeBackend::hold_lease` / `::release_lease` (dispatcher/src/leader.rs, the watch Lease):
///   `leases.get_opt`, `leases.create`, `leases.replace` (update).
/// janitor — backend/src/kube/ via janitor/src/reaper.rs and janitor/src/sweep.rs:
///   `KubeBackend::observe`: `pods.get_opt`; `KubeBackend::logs_tail`: `pods.logs` (get pods/log);
///   `KubeBackend::remove`: `pods.delete`, `policies.delete`; `KubeBackend::list`: `pods.list`;
///   `Sweep::policy_run_ids`: NetworkPolicy `list`. The janitor never watches.
/// api — backend/src/kube/ via api/src/ops/logs.rs: `KubeBackend::logs_tail` and `::logs_follow`:
///   `pods.logs` / `pods.log_stream` (get pods/log). Nothing else.
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
            ("coordination.k8s.io", "leases", "get"),
            ("coordination.k8s.io", "leases", "create"),
            ("coordination.k8s.io", "leases", "update"),
        ],
        "airlock-janitor" => &[
            ("", "pods", "get"),
            ("", "pods", "list"),
            ("", "pods", "delete"),
            ("", "pods/log", "get"),
            (net, "networkpolicies", "list"),
            (net, "networkpolicies", "delete"),
        ],
        "airlock-api" => &[("", "pods/log", "get")],
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
    for service in [
        "airlock-dispatcher",
        "airlock-janitor",
        "airlock-ingester",
        "airlock-api",
    ] {
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
    for service in [
        "airlock-dispatcher",
        "airlock-ingester",
        "airlock-janitor",
        "airlock-api",
    ] {
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
        if !matches!(service, "airlock-janitor" | "airlock-api") {
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
