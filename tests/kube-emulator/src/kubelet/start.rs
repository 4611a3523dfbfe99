//! Starting a pod's first container on the host (`command` + `args` as they are) and the Running status.

use std::sync::Arc;

use serde_json::{Value, json};

use super::process::{host_command, spawn};
use super::{Kubelet, PodLog};
use crate::store::now_rfc3339;

/// A started container: what its final status needs.
pub(super) struct Started {
    pub child: Option<tokio::process::Child>,
    pub spawn_err: Option<String>,
    pub container_id: String,
    pub start_time: String,
    pub log: Arc<PodLog>,
    pub workdir: Option<tempfile::TempDir>,
}

impl Kubelet {
    /// Bind the pod to the node, spawn its first container and record it Running (or Pending
    /// with a start error).
    pub(super) fn start_container(&self, ns: &str, name: &str, uid: &str, pod: &Value) -> Started {
        let container = super::first_container(pod);
        let cname = container
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("main")
            .to_string();
        let start_time = now_rfc3339();
        let log = Arc::new(PodLog::new(cname.clone()));
        if let Ok(mut logs) = self.logs.lock() {
            logs.insert((ns.to_string(), name.to_string()), log.clone());
        }
        let workdir = tempfile::Builder::new()
            .prefix(&format!("airlock-pod-{name}-"))
            .tempdir()
            .ok();
        let (child, spawn_err) = launch(&container, &cname, name, workdir.as_ref(), &log);
        let container_id = format!(
            "emulator://{}",
            child.as_ref().and_then(|c| c.id()).unwrap_or(0)
        );
        let running = spawn_err.is_none();
        let status = running_status(&container, &cname, &start_time, &container_id, running);
        let node = self.cfg.node_name.clone();
        self.set_status(ns, name, uid, |p| {
            if let Some(spec) = p.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("nodeName".into(), json!(node));
            }
            let qos = p
                .pointer("/status/qosClass")
                .cloned()
                .unwrap_or(json!("BestEffort"));
            let start = p.pointer("/status/startTime").cloned();
            let mut status = status;
            if let Some(s) = start {
                status["startTime"] = s;
            }
            p["status"] = status;
            p["status"]["qosClass"] = qos;
        });
        Started {
            child,
            spawn_err,
            container_id,
            start_time,
            log,
            workdir,
        }
    }
}

/// Spawn the container's `command` + `args`; a container without `command` cannot start.
fn launch(
    container: &Value,
    cname: &str,
    pod_name: &str,
    workdir: Option<&tempfile::TempDir>,
    log: &Arc<PodLog>,
) -> (Option<tokio::process::Child>, Option<String>) {
    let mut argv: Vec<String> = Vec::new();
    for field in ["command", "args"] {
        if let Some(a) = container.get(field).and_then(Value::as_array) {
            argv.extend(a.iter().filter_map(Value::as_str).map(str::to_string));
        }
    }
    let has_command = container
        .get("command")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if !has_command {
        return (
            None,
            Some(format!(
                "emulator kubelet: container {cname:?} has no command; images are not run, so the pod's container must set `command`"
            )),
        );
    }
    let cmd = host_command(&argv, container, pod_name, workdir.map(|d| d.path()));
    match spawn(cmd, log) {
        Ok(c) => (Some(c), None),
        Err(e) => (
            None,
            Some(format!(
                "failed to create containerd task: failed to start {:?}: {e}",
                argv[0]
            )),
        ),
    }
}

/// The status of a freshly started (or failed-to-start) container.
fn running_status(
    container: &Value,
    cname: &str,
    start_time: &str,
    container_id: &str,
    running: bool,
) -> Value {
    let image = container.get("image").and_then(Value::as_str).unwrap_or("");
    let scheduled_at = now_rfc3339();
    let cond = |t: &str, ok: bool| json!({"type": t, "status": if ok {"True"} else {"False"}, "lastProbeTime": null, "lastTransitionTime": scheduled_at});
    json!({
        "phase": if running { "Running" } else { "Pending" },
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": "127.0.0.1",
        "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": start_time,
        "conditions": [
            cond("PodReadyToStartContainers", true),
            cond("Initialized", true),
            cond("Ready", running),
            cond("ContainersReady", running),
            cond("PodScheduled", true),
        ],
        "containerStatuses": [{
            "name": cname,
            "image": image,
            "imageID": format!("{image}@sha256:emulated"),
            "containerID": container_id,
            "ready": running,
            "restartCount": 0,
            "started": running,
            "state": {"running": {"startedAt": start_time}},
            "lastState": {},
        }],
    })
}
