//! A real third-party client, `kubectl`, against the emulator.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;

use airlock_kube_emulator::Kind;
use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use tokio::io::{AsyncBufReadExt, BufReader};

fn kubectl() -> Option<String> {
    let path = std::env::var("KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into());
    if std::path::Path::new(&path).exists() {
        Some(path)
    } else {
        eprintln!(
            "\n\n!!!!!! SKIPPING kubectl TEST: no kubectl at {path} (apt-get install kubernetes-client, or set KUBECTL)\n"
        );
        None
    }
}

async fn run(bin: &str, emu: &airlock_kube_emulator::EmulatorHandle, args: &[&str]) -> String {
    let out = tokio::process::Command::new(bin)
        .arg("--kubeconfig")
        .arg(emu.kubeconfig_path())
        .args(args)
        .env("HOME", emu.kubeconfig_path().parent().unwrap())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn kubectl_discovers_gets_lists_watches_reads_logs_and_deletes_pods() {
    let Some(bin) = kubectl() else { return };
    let emu = start().await;
    let pods: Api<Pod> = Api::namespaced(client(&emu).await, "airlock-sandbox");
    pods.create(
        &PostParams::default(),
        &shell_pod("kc1", "echo hello-from-kc1"),
    )
    .await
    .unwrap();
    emu.wait_for_pod_phase("airlock-sandbox", "kc1", "Succeeded", WAIT)
        .await
        .unwrap();

    let resources = run(&bin, &emu, &["api-resources"]).await;
    assert!(resources.contains("networkpolicies"), "{resources}");

    let table = run(&bin, &emu, &["get", "pods"]).await;
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("kc1") && l.contains("Completed")),
        "{table}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&run(&bin, &emu, &["get", "pods", "-o", "json"]).await).unwrap();
    assert_eq!(json["items"][0]["metadata"]["name"], "kc1");
    assert_eq!(json["items"][0]["status"]["phase"], "Succeeded");

    let one: serde_json::Value =
        serde_json::from_str(&run(&bin, &emu, &["get", "pod", "kc1", "-o", "json"]).await).unwrap();
    assert_eq!(one["kind"], "Pod");

    assert_eq!(run(&bin, &emu, &["logs", "kc1"]).await, "hello-from-kc1\n");

    // Watch: the existing pod first, then a newly created one.
    let mut child = tokio::process::Command::new(&bin)
        .arg("--kubeconfig")
        .arg(emu.kubeconfig_path())
        .args(["get", "pods", "--watch", "-o", "name"])
        .env("HOME", emu.kubeconfig_path().parent().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first, "pod/kc1");
    pods.create(&PostParams::default(), &shell_pod("kc2", "true"))
        .await
        .unwrap();
    let next = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next, "pod/kc2");
    child.kill().await.unwrap();

    let deleted = run(&bin, &emu, &["delete", "pod", "kc1"]).await;
    assert!(deleted.contains("pod \"kc1\" deleted"), "{deleted}");
    assert!(emu.object(Kind::Pod, "airlock-sandbox", "kc1").is_none());
    let after = run(&bin, &emu, &["get", "pods", "-o", "name"]).await;
    assert!(!after.contains("kc1"), "{after}");
}

#[tokio::test]
async fn the_standalone_binary_writes_a_kubeconfig_that_kubectl_uses() {
    let Some(bin) = kubectl() else { return };
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    let mut emu = tokio::process::Command::new(env!("CARGO_BIN_EXE_airlock-kube-emulator"))
        .args(["--port", "0", "--kubeconfig"])
        .arg(&kc)
        .args(["--namespace", "airlock-sandbox"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(emu.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let text = std::fs::read_to_string(&kc).unwrap();
    assert!(text.contains(&format!("server: {url}")), "{text}");
    let out = tokio::process::Command::new(&bin)
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["get", "namespaces", "-o", "name"])
        .env("HOME", dir.path())
        .output()
        .await
        .unwrap();
    let names = String::from_utf8_lossy(&out.stdout);
    assert!(names.contains("namespace/airlock-sandbox"), "{names}");
    emu.kill().await.unwrap();
}

#[tokio::test]
async fn kubectl_applies_all_of_deploy_server_side_with_validation_and_again_idempotently() {
    let Some(bin) = kubectl() else { return };
    let emu = start().await;
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    for dir in ["", "dev-deps"] {
        let path = deploy.join(dir);
        let path = path.to_str().unwrap();
        let out = run(&bin, &emu, &["apply", "--server-side", "-k", path]).await;
        assert!(out.contains("serverside-applied"), "{out}");
    }
    let d = emu
        .object(Kind::Deployment, "airlock-system", "airlock-dispatcher")
        .expect("the dispatcher Deployment is stored");
    assert_eq!(d["metadata"]["managedFields"][0]["manager"], "kubectl");
    assert_eq!(d["metadata"]["managedFields"][0]["operation"], "Apply");
    assert!(
        emu.object(Kind::Role, "airlock-sandbox", "airlock-dispatcher")
            .is_some()
    );
    assert!(
        emu.object(Kind::StatefulSet, "airlock-system", "nats")
            .is_some()
    );
    let again = run(
        &bin,
        &emu,
        &["apply", "--server-side", "-k", deploy.to_str().unwrap()],
    )
    .await;
    assert!(
        again.contains("deployment.apps/airlock-dispatcher serverside-applied"),
        "{again}"
    );
}

#[tokio::test]
async fn kubectl_creates_a_namespace_a_configmap_and_a_secret_it_sends_as_protobuf_and_they_read_back_as_json()
 {
    let Some(bin) = kubectl() else { return };
    let emu = start().await;
    let out = run(&bin, &emu, &["create", "namespace", "team-x"]).await;
    assert!(out.contains("namespace/team-x created"), "{out}");
    let out = run(
        &bin,
        &emu,
        &[
            "create",
            "configmap",
            "settings",
            "-n",
            "team-x",
            "--from-literal=color=blue",
            "--from-literal=size=2",
        ],
    )
    .await;
    assert!(out.contains("configmap/settings created"), "{out}");
    let out = run(
        &bin,
        &emu,
        &[
            "create",
            "secret",
            "generic",
            "token",
            "-n",
            "team-x",
            "--from-literal=key=s3cret",
        ],
    )
    .await;
    assert!(out.contains("secret/token created"), "{out}");
    // Each create went through once (kubectl sends these as protobuf and never retries as JSON).
    let posts: Vec<u16> = emu
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.status)
        .collect();
    assert_eq!(posts, [201, 201, 201]);

    let ns: serde_json::Value =
        serde_json::from_str(&run(&bin, &emu, &["get", "namespace", "team-x", "-o", "json"]).await)
            .unwrap();
    assert_eq!(ns["metadata"]["name"], "team-x");
    assert_eq!(ns["status"]["phase"], "Active");
    let cm: serde_json::Value = serde_json::from_str(
        &run(
            &bin,
            &emu,
            &["get", "configmap", "settings", "-n", "team-x", "-o", "json"],
        )
        .await,
    )
    .unwrap();
    assert_eq!(
        cm["data"],
        serde_json::json!({"color": "blue", "size": "2"})
    );
    let secret = emu.object(Kind::Secret, "team-x", "token").unwrap();
    assert_eq!(secret["data"]["key"], "czNjcmV0");
}
