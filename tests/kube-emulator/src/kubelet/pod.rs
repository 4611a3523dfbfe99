//! One pod's life on the kubelet: scheduling (and Unschedulable holds), binding and starting
//! its container, supervising it (exit, `activeDeadlineSeconds`, deletion, forced states), and
//! the final status.

use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use super::start::Started;
use super::{Control, ForcedState, Kubelet};
use crate::kinds::Kind;
use crate::store::now_rfc3339;

/// Longest wait for a finished container's output to be read to its end.
const LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// How a running container ended.
enum End {
    Exited(i32),
    Deadline,
    Deleted,
    Terminated,
    Forced(ForcedState),
}

impl Kubelet {
    /// The whole life of one pod.
    pub(super) async fn pod_task(
        self: Arc<Self>,
        ns: &str,
        name: &str,
        uid: &str,
        mut ctl: watch::Receiver<Control>,
    ) {
        tokio::select! {
            _ = tokio::time::sleep(self.cfg.schedule_delay) => {}
            _ = ctl.changed() => {}
        }
        if !self.wait_schedulable(ns, name, uid, &mut ctl).await {
            return;
        }
        let Some(pod) = self.store.get_shared(Kind::Pod, ns, name) else {
            return;
        };
        let started = self.start_container(ns, name, uid, &pod);
        let Started {
            child,
            spawn_err,
            container_id,
            start_time,
            log,
            workdir,
        } = started;
        let Some(child) = child else {
            log.close();
            let msg = spawn_err.unwrap_or_default();
            self.set_status(ns, name, uid, |p| {
                p["status"]["phase"] = json!("Failed");
                p["status"]["containerStatuses"][0]["state"] = json!({"terminated": {
                    "exitCode": 128, "reason": "StartError", "message": msg,
                    "startedAt": "1970-01-01T00:00:00Z", "finishedAt": now_rfc3339(),
                    "containerID": container_id,
                }});
            });
            self.wait_removal(ns, name, ctl).await;
            return;
        };
        let end = self.supervise(uid, &pod, child, &mut ctl).await;
        // As a runtime flushes a container's output before reporting its exit: the whole log is
        // readable once the pod shows the container terminated (bounded, in case something outside
        // the process group still holds the pipe).
        log.wait_closed(LOG_FLUSH_TIMEOUT).await;
        if !self.record_end(ns, name, uid, end, &start_time, &container_id) {
            return;
        }
        drop(workdir);
        self.wait_removal(ns, name, ctl).await;
    }

    /// Wait while a hold keeps the pod Unschedulable; false when the pod is gone or finished.
    async fn wait_schedulable(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        ctl: &mut watch::Receiver<Control>,
    ) -> bool {
        let mut holds_rx = self.holds_changed.subscribe();
        let mut marked = false;
        loop {
            match ctl.borrow_and_update().clone() {
                Control::Run => {}
                Control::Deleted => return false,
                Control::Terminate { .. } => {
                    self.store.remove(Kind::Pod, ns, name, true);
                    return false;
                }
                Control::Force(state) => {
                    self.finish_forced(ns, name, uid, &state, None, None);
                    return false;
                }
            }
            let Some(pod) = self.store.get_shared(Kind::Pod, ns, name) else {
                return false;
            };
            if !self.held(&pod) {
                return true;
            }
            if !marked {
                marked = true;
                self.set_status(ns, name, uid, mark_unschedulable);
            }
            tokio::select! {
                _ = holds_rx.changed() => {}
                r = ctl.changed() => if r.is_err() { return false },
            }
        }
    }

    /// Wait for the container to end: exit, deadline, deletion (graceful or not), forced state.
    async fn supervise(
        &self,
        uid: &str,
        pod: &Value,
        mut child: tokio::process::Child,
        ctl: &mut watch::Receiver<Control>,
    ) -> End {
        let started = Instant::now();
        let deadline = pod
            .pointer("/spec/activeDeadlineSeconds")
            .and_then(Value::as_u64)
            .map(|s| started + Duration::from_secs(s));
        let pgid = child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32));
        if let (Some(pg), Ok(mut groups)) = (pgid, self.groups.lock()) {
            groups.insert(uid.to_string(), pg);
        }
        let kill_group = |sig: rustix::process::Signal| {
            if let Some(pg) = pgid {
                let _ = rustix::process::kill_process_group(pg, sig);
            }
        };
        let end = loop {
            let sleep_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => futures::future::pending::<()>().await,
                }
            };
            tokio::select! {
                st = child.wait() => {
                    let code = match st {
                        Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(9)),
                        Err(_) => 128,
                    };
                    break End::Exited(code);
                }
                _ = sleep_deadline => break End::Deadline,
                r = ctl.changed() => {
                    if r.is_err() { break End::Deleted; }
                    let c = ctl.borrow_and_update().clone();
                    match c {
                        Control::Run => continue,
                        Control::Deleted => break End::Deleted,
                        Control::Terminate { grace } => {
                            kill_group(rustix::process::Signal::TERM);
                            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                                kill_group(rustix::process::Signal::KILL);
                            }
                            break End::Terminated;
                        }
                        Control::Force(s) => break End::Forced(s),
                    }
                }
            }
        };
        // Tear the container down: nothing in its process group outlives it.
        kill_group(rustix::process::Signal::KILL);
        let _ = child.wait().await;
        if let Ok(mut groups) = self.groups.lock() {
            groups.remove(uid);
        }
        end
    }

    /// Write the final status for `end`; false when the pod is already gone.
    fn record_end(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        end: End,
        start_time: &str,
        container_id: &str,
    ) -> bool {
        let finished = now_rfc3339();
        let terminated = |code: i32, reason: &str| {
            json!({"terminated": {
                "exitCode": code, "reason": reason, "startedAt": start_time,
                "finishedAt": finished, "containerID": container_id,
            }})
        };
        match end {
            End::Exited(code) => {
                self.set_status(ns, name, uid, |p| {
                    let ok = code == 0;
                    p["status"]["phase"] = json!(if ok { "Succeeded" } else { "Failed" });
                    set_not_ready(p);
                    p["status"]["containerStatuses"][0]["state"] =
                        terminated(code, if ok { "Completed" } else { "Error" });
                });
            }
            End::Deadline => {
                self.set_status(ns, name, uid, |p| {
                    p["status"]["phase"] = json!("Failed");
                    p["status"]["reason"] = json!("DeadlineExceeded");
                    p["status"]["message"] =
                        json!("Pod was active on the node longer than the specified deadline");
                    set_not_ready(p);
                    p["status"]["containerStatuses"][0]["state"] = terminated(137, "Error");
                });
            }
            End::Forced(state) => {
                self.finish_forced(ns, name, uid, &state, Some(start_time), Some(container_id));
            }
            End::Terminated => {
                self.store.remove(Kind::Pod, ns, name, true);
                return false;
            }
            End::Deleted => return false,
        }
        true
    }

    async fn wait_removal(&self, ns: &str, name: &str, mut ctl: watch::Receiver<Control>) {
        loop {
            match ctl.borrow_and_update().clone() {
                Control::Deleted => return,
                Control::Terminate { .. } => {
                    self.store.remove(Kind::Pod, ns, name, true);
                    return;
                }
                _ => {}
            }
            if ctl.changed().await.is_err() {
                return;
            }
        }
    }

    fn finish_forced(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        state: &ForcedState,
        started: Option<&str>,
        container_id: Option<&str>,
    ) {
        let finished = now_rfc3339();
        let started = started.unwrap_or(&finished).to_string();
        self.set_status(ns, name, uid, |p| {
            if p.pointer("/status/containerStatuses/0").is_none() {
                let c = super::first_container(p);
                let image = c.get("image").cloned().unwrap_or(json!(""));
                p["status"]["containerStatuses"] = json!([{
                    "name": c.get("name").cloned().unwrap_or(json!("main")),
                    "image": image,
                    "imageID": "",
                    "ready": false,
                    "restartCount": 0,
                    "state": {},
                }]);
            }
            set_not_ready(p);
            let (phase, exit, reason) = match state {
                ForcedState::Evicted => ("Failed", 137, "Error"),
                ForcedState::OomKilled => ("Failed", 137, "OOMKilled"),
                ForcedState::Exited(0) => ("Succeeded", 0, "Completed"),
                ForcedState::Exited(c) => ("Failed", *c, "Error"),
            };
            p["status"]["phase"] = json!(phase);
            let mut term = json!({"exitCode": exit, "reason": reason, "startedAt": started, "finishedAt": finished});
            if let Some(id) = container_id {
                term["containerID"] = json!(id);
            }
            p["status"]["containerStatuses"][0]["state"] = json!({"terminated": term});
            if *state == ForcedState::Evicted {
                p["status"]["reason"] = json!("Evicted");
                p["status"]["message"] = json!("The node was low on resource: memory. Threshold quantity: 100Mi, available: 51200Ki. ");
                if let Some(conds) = p["status"]["conditions"].as_array_mut() {
                    conds.push(json!({"type": "DisruptionTarget", "status": "True", "lastProbeTime": null, "lastTransitionTime": finished, "reason": "TerminationByKubelet", "message": "The node was low on resource: memory. "}));
                } else {
                    p["status"]["conditions"] = json!([{"type": "DisruptionTarget", "status": "True", "lastProbeTime": null, "lastTransitionTime": finished, "reason": "TerminationByKubelet", "message": "The node was low on resource: memory. "}]);
                }
            }
        });
        if let Some(log) = self.log(ns, name) {
            log.close();
        }
    }
}

/// The status of a pod that waits on an Unschedulable hold.
fn mark_unschedulable(p: &mut Value) {
    p["status"] = json!({
        "phase": "Pending",
        "qosClass": p.pointer("/status/qosClass").cloned().unwrap_or(json!("BestEffort")),
        "conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "lastProbeTime": null,
            "lastTransitionTime": now_rfc3339(),
            "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.",
        }],
    });
}

fn set_not_ready(p: &mut Value) {
    if let Some(conds) = p
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    {
        for c in conds.iter_mut() {
            if matches!(
                c["type"].as_str(),
                Some("Ready" | "ContainersReady" | "PodReadyToStartContainers")
            ) {
                c["status"] = json!("False");
                if c["type"] != "PodReadyToStartContainers" {
                    c["reason"] = json!("PodCompleted");
                }
            }
        }
    }
    if let Some(cs) = p.pointer_mut("/status/containerStatuses/0") {
        cs["ready"] = json!(false);
        cs["started"] = json!(false);
    }
}
