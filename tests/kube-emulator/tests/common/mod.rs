//! Shared helpers for the emulator's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use airlock_kube_emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;

/// How long any single wait may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// Start an emulator with the `airlock-sandbox` namespace.
pub async fn start() -> EmulatorHandle {
    Emulator::start(EmulatorConfig::default().namespace("airlock-sandbox"))
        .await
        .expect("emulator starts")
}

/// A kube client built from the kubeconfig the emulator wrote.
pub async fn client(emu: &EmulatorHandle) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(emu.kubeconfig_path()).expect("kubeconfig reads");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kubeconfig loads");
    kube::Client::try_from(cfg).expect("client builds")
}

/// A pod running `sh -c script` with airlock's labels.
pub fn shell_pod(name: &str, script: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "airlock", "airlock/run": name}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "main", "image": "busybox:1.36",
                "command": ["/bin/sh", "-c", script],
                "env": [{"name": "GREETING", "value": "hello"}],
            }],
        },
    }))
    .unwrap()
}

/// A NetworkPolicy owned by `pod` (denying all egress).
pub fn owned_policy(name: &str, pod: &Pod) -> NetworkPolicy {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "ownerReferences": [{
            "apiVersion": "v1", "kind": "Pod",
            "name": pod.metadata.name.clone().unwrap(),
            "uid": pod.metadata.uid.clone().unwrap(),
            "controller": true, "blockOwnerDeletion": true,
        }]},
        "spec": {"podSelector": {"matchLabels": {"airlock/run": pod.metadata.name.clone().unwrap()}}, "policyTypes": ["Egress"], "egress": []},
    }))
    .unwrap()
}

/// A raw HTTP request to the emulator, returning (status, body).
pub async fn raw(
    emu: &EmulatorHandle,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(emu.addr()).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.to_string())),
    )
}
