//! What the `deploy/` tests share: reading the manifests, and the external tools they check them with.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use airlock_test_support::workspace_root;
use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Deserialize as _;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------------------
// Reading deploy/

pub fn deploy_dir() -> PathBuf {
    workspace_root().join("deploy")
}

/// The opt-in dashboard and alerts.
pub fn observability_dir() -> PathBuf {
    deploy_dir().join("observability")
}

/// Every `*.yaml` / `*.yml` file under `dir`, sorted.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
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

pub fn is_kustomization(path: &Path) -> bool {
    matches!(
        path.file_name().and_then(|n| n.to_str()),
        Some("kustomization.yaml" | "kustomization.yml")
    )
}

/// The Kubernetes manifests under deploy/ (every YAML file but the kustomizations and the opt-in
/// `observability/`, whose Prometheus Operator objects are not in the Kubernetes schemas; they have their
/// own tests in deploy_observability.rs).
pub fn manifest_files() -> Result<Vec<PathBuf>> {
    let files: Vec<PathBuf> = yaml_files(&deploy_dir())?
        .into_iter()
        .filter(|p| !is_kustomization(p) && !p.starts_with(observability_dir()))
        .collect();
    ensure!(
        !files.is_empty(),
        "no manifests under {}",
        deploy_dir().display()
    );
    Ok(files)
}

/// The documents of a YAML file, as JSON values (empty documents skipped).
pub fn documents(path: &Path) -> Result<Vec<Value>> {
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
pub fn all_objects() -> Result<Vec<(PathBuf, Value)>> {
    let mut out = Vec::new();
    for f in manifest_files()? {
        for d in documents(&f)? {
            out.push((f.clone(), d));
        }
    }
    Ok(out)
}

pub fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or_default()
}

pub fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

pub fn namespace(o: &Value) -> &str {
    o["metadata"]["namespace"].as_str().unwrap_or_default()
}

pub fn find<'a>(objects: &'a [(PathBuf, Value)], k: &str, ns: &str, n: &str) -> Result<&'a Value> {
    objects
        .iter()
        .map(|(_, o)| o)
        .find(|o| kind(o) == k && namespace(o) == ns && name(o) == n)
        .ok_or_else(|| anyhow!("no {k} {ns}/{n} under deploy/"))
}

// ---------------------------------------------------------------------------------------------------------
// External tools: required in CI, skipped loudly elsewhere

/// Whether a missing tool may skip a test (never in CI).
pub fn skip_missing(tool: &str, how: &str) -> Result<()> {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        bail!("{tool} is required in CI but was not found: {how}");
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED: {tool} not found ({how}); this test checks nothing here. It is required when CI=true. !!!!!!!!\n"
    );
    Ok(())
}

pub fn kubernetes_validate() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("AIRLOCK_KUBERNETES_VALIDATE") {
        return Some(PathBuf::from(p));
    }
    let venv = workspace_root().join(".venv/bin/kubernetes-validate");
    venv.exists().then_some(venv)
}

pub fn kubectl() -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("kubectl"))
        .find(|p| p.exists())
}

/// Runs kubernetes-validate (strict, Kubernetes 1.33) on `files`; any error, or any warning (an unknown
/// kind or apiVersion has no schema and is only a warning to the tool), fails.
pub fn validate_files(tool: &Path, files: &[PathBuf]) -> Result<()> {
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
