//! The process kubelet: schedules pods onto one fake node and runs each pod's first
//! container `command` + `args` as a local process group.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::kinds::Kind;
use crate::selector::LabelSelector;
use crate::store::{EventType, Store, now_rfc3339};

/// A final state a test can force onto a pod.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ForcedState {
    /// Node-pressure eviction: phase Failed, reason `Evicted`.
    Evicted,
    /// The container was OOM-killed: terminated reason `OOMKilled`, exit code 137.
    OomKilled,
    /// The container exited with this code (phase Failed unless 0).
    Exited(i32),
}

/// The captured output of one pod's container (stdout and stderr interleaved).
#[derive(Debug)]
pub struct PodLog {
    data: Mutex<Vec<u8>>,
    changed: watch::Sender<usize>,
    closed: AtomicBool,
    /// Container name the log belongs to.
    pub container: String,
}

impl PodLog {
    fn new(container: String) -> Self {
        Self {
            data: Mutex::new(Vec::new()),
            changed: watch::channel(0).0,
            closed: AtomicBool::new(false),
            container,
        }
    }

    /// A copy of everything logged so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.data.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Whether the writer side has closed (the process and its children are gone).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Subscribe to growth notifications.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.changed.subscribe()
    }

    fn append(&self, chunk: &[u8]) {
        let len = match self.data.lock() {
            Ok(mut d) => {
                d.extend_from_slice(chunk);
                d.len()
            }
            Err(_) => 0,
        };
        self.changed.send_replace(len);
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.changed.send_modify(|_| {});
    }
}

/// Running pod tasks: (namespace, name) -> (uid, control channel).
type PodTasks = HashMap<(String, String), (String, watch::Sender<Control>)>;

#[derive(Debug, Clone)]
enum Control {
    Run,
    Terminate { grace: Duration },
    Deleted,
    Force(ForcedState),
}

/// Kubelet settings.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// Delay between a pod's creation and its scheduling.
    pub schedule_delay: Duration,
    /// The node name written into `spec.nodeName`.
    pub node_name: String,
    /// Upper bound on the grace period honoured when deleting a running pod.
    pub max_grace: Duration,
}

/// The kubelet and scheduler.
#[derive(Debug)]
pub struct Kubelet {
    store: Arc<Store>,
    cfg: KubeletConfig,
    pods: Mutex<PodTasks>,
    logs: Mutex<HashMap<(String, String), Arc<PodLog>>>,
    holds: Mutex<Vec<LabelSelector>>,
    holds_changed: watch::Sender<u64>,
    groups: Mutex<HashMap<String, rustix::process::Pid>>,
}

impl Kubelet {
    /// A kubelet on `store`; call [`Kubelet::run`] to start it.
    pub fn new(store: Arc<Store>, cfg: KubeletConfig) -> Arc<Self> {
        Arc::new(Self {
            store,
            cfg,
            pods: Mutex::new(HashMap::new()),
            logs: Mutex::new(HashMap::new()),
            holds: Mutex::new(Vec::new()),
            holds_changed: watch::channel(0).0,
            groups: Mutex::new(HashMap::new()),
        })
    }

    /// Follow store events forever, starting a task per new pod.
    pub async fn run(self: Arc<Self>, mut rx: broadcast::Receiver<Arc<crate::store::Change>>) {
        loop {
            match rx.recv().await {
                Ok(change) if change.kind == Kind::Pod => self.on_change(&change),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => self.resync(),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn resync(self: &Arc<Self>) {
        let (pods, _) = self.store.list(Kind::Pod, None);
        for p in pods {
            let (ns, name, uid) = ids(&p);
            let known = self
                .pods
                .lock()
                .map(|m| m.contains_key(&(ns.clone(), name.clone())))
                .unwrap_or(true);
            if !known {
                self.start_pod(ns, name, uid);
            }
        }
    }

    fn on_change(self: &Arc<Self>, change: &crate::store::Change) {
        let (ns, name, uid) = ids(&change.object);
        match change.etype {
            EventType::Added => self.start_pod(ns, name, uid),
            EventType::Modified => {
                if change
                    .object
                    .pointer("/metadata/deletionTimestamp")
                    .is_some()
                {
                    let grace = change
                        .object
                        .pointer("/metadata/deletionGracePeriodSeconds")
                        .and_then(Value::as_u64)
                        .unwrap_or(30);
                    let grace = Duration::from_secs(grace).min(self.cfg.max_grace);
                    self.control(&ns, &name, &uid, Control::Terminate { grace });
                }
            }
            EventType::Deleted => {
                self.control(&ns, &name, &uid, Control::Deleted);
            }
        }
    }

    fn control(&self, ns: &str, name: &str, uid: &str, c: Control) -> bool {
        let pods = match self.pods.lock() {
            Ok(p) => p,
            Err(_) => return false,
        };
        match pods.get(&(ns.to_string(), name.to_string())) {
            Some((u, tx)) if u == uid => {
                tx.send_replace(c);
                true
            }
            _ => false,
        }
    }

    /// Whether the kubelet is currently running a process (or will) for the pod.
    pub fn has_task(&self, ns: &str, name: &str) -> bool {
        self.pods
            .lock()
            .map(|p| p.contains_key(&(ns.to_string(), name.to_string())))
            .unwrap_or(false)
    }

    /// Force a final state on a pod (kills its process). Returns false if it has no task.
    pub fn force(&self, ns: &str, name: &str, state: ForcedState) -> bool {
        let uid = self
            .store
            .get(Kind::Pod, ns, name)
            .and_then(|p| {
                p.pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_default();
        self.control(ns, name, &uid, Control::Force(state))
    }

    /// Keep pods matching the selector Pending (Unschedulable) until released.
    pub fn hold_pending(&self, sel: LabelSelector) {
        if let Ok(mut h) = self.holds.lock() {
            h.push(sel);
        }
        self.holds_changed.send_modify(|v| *v += 1);
    }

    /// Release every hold, letting pending pods schedule.
    pub fn release_holds(&self) {
        if let Ok(mut h) = self.holds.lock() {
            h.clear();
        }
        self.holds_changed.send_modify(|v| *v += 1);
    }

    /// The log of a pod, if its container has started.
    pub fn log(&self, ns: &str, name: &str) -> Option<Arc<PodLog>> {
        self.logs
            .lock()
            .ok()?
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    fn held(&self, pod: &Value) -> bool {
        self.holds
            .lock()
            .map(|h| h.iter().any(|s| s.matches_object(pod)))
            .unwrap_or(false)
    }

    /// Kill every process the kubelet started.
    pub fn kill_all(&self) {
        if let Ok(groups) = self.groups.lock() {
            for pg in groups.values() {
                let _ = rustix::process::kill_process_group(*pg, rustix::process::Signal::KILL);
            }
        }
        if let Ok(pods) = self.pods.lock() {
            for (_, tx) in pods.values() {
                tx.send_replace(Control::Deleted);
            }
        }
    }

    fn start_pod(self: &Arc<Self>, ns: String, name: String, uid: String) {
        let (tx, rx) = watch::channel(Control::Run);
        if let Ok(mut pods) = self.pods.lock() {
            pods.insert((ns.clone(), name.clone()), (uid.clone(), tx));
        }
        if let Ok(mut logs) = self.logs.lock() {
            logs.remove(&(ns.clone(), name.clone()));
        }
        let me = self.clone();
        tokio::spawn(async move {
            me.clone().pod_task(&ns, &name, &uid, rx).await;
            if let Ok(mut pods) = me.pods.lock()
                && pods
                    .get(&(ns.clone(), name.clone()))
                    .is_some_and(|(u, _)| *u == uid)
            {
                pods.remove(&(ns, name));
            }
        });
    }

    /// Update the pod's status (only if it is still the same pod).
    fn set_status(&self, ns: &str, name: &str, uid: &str, f: impl FnOnce(&mut Value)) -> bool {
        self.store
            .modify(Kind::Pod, ns, name, None, false, |pod| {
                if pod.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
                    return Err(crate::status::ApiError::conflict(Kind::Pod, name));
                }
                f(pod);
                Ok(())
            })
            .is_ok()
    }

    async fn pod_task(
        self: Arc<Self>,
        ns: &str,
        name: &str,
        uid: &str,
        mut ctl: watch::Receiver<Control>,
    ) {
        // Scheduling delay.
        tokio::select! {
            _ = tokio::time::sleep(self.cfg.schedule_delay) => {}
            _ = ctl.changed() => {}
        }
        // Unschedulable holds.
        let mut holds_rx = self.holds_changed.subscribe();
        let mut marked = false;
        loop {
            match ctl.borrow_and_update().clone() {
                Control::Run => {}
                Control::Deleted => return,
                Control::Terminate { .. } => {
                    self.store.remove(Kind::Pod, ns, name, true);
                    return;
                }
                Control::Force(state) => {
                    self.finish_forced(ns, name, uid, &state, None, None);
                    return;
                }
            }
            let Some(pod) = self.store.get(Kind::Pod, ns, name) else {
                return;
            };
            if !self.held(&pod) {
                break;
            }
            if !marked {
                marked = true;
                self.set_status(ns, name, uid, |p| {
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
                });
            }
            tokio::select! {
                _ = holds_rx.changed() => {}
                r = ctl.changed() => if r.is_err() { return },
            }
        }
        // Bind and start.
        let Some(pod) = self.store.get(Kind::Pod, ns, name) else {
            return;
        };
        let container = pod
            .pointer("/spec/containers/0")
            .cloned()
            .unwrap_or(json!({}));
        let cname = container
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("main")
            .to_string();
        let image = container
            .get("image")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let node = self.cfg.node_name.clone();
        let start_time = now_rfc3339();
        let log = Arc::new(PodLog::new(cname.clone()));
        if let Ok(mut logs) = self.logs.lock() {
            logs.insert((ns.to_string(), name.to_string()), log.clone());
        }
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
        let workdir = tempfile::Builder::new()
            .prefix(&format!("airlock-pod-{name}-"))
            .tempdir()
            .ok();
        let mut spawn_err = None;
        let mut child = None;
        if !has_command {
            spawn_err = Some(format!(
                "emulator kubelet: container {cname:?} has no command; images are not run, so the pod's container must set `command`"
            ));
        } else {
            match spawn(
                &argv,
                &container,
                name,
                workdir.as_ref().map(|d| d.path()),
                &log,
            ) {
                Ok(c) => child = Some(c),
                Err(e) => {
                    spawn_err = Some(format!(
                        "failed to create containerd task: failed to start {:?}: {e}",
                        argv[0]
                    ))
                }
            }
        }
        let pid = child.as_ref().and_then(|c| c.id());
        let container_id = format!("emulator://{}", pid.unwrap_or(0));
        let scheduled_at = now_rfc3339();
        self.set_status(ns, name, uid, |p| {
            if let Some(spec) = p.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("nodeName".into(), json!(node));
            }
            let qos = p.pointer("/status/qosClass").cloned().unwrap_or(json!("BestEffort"));
            let running = spawn_err.is_none();
            let cond = |t: &str, ok: bool| json!({"type": t, "status": if ok {"True"} else {"False"}, "lastProbeTime": null, "lastTransitionTime": scheduled_at});
            p["status"] = json!({
                "phase": if running { "Running" } else { "Pending" },
                "qosClass": qos,
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
            });
        });
        let started = Instant::now();
        let Some(mut child) = child else {
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
        let deadline = pod
            .pointer("/spec/activeDeadlineSeconds")
            .and_then(Value::as_u64)
            .map(|s| started + Duration::from_secs(s));
        let pgid = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32));
        if let (Some(pg), Ok(mut groups)) = (pgid, self.groups.lock()) {
            groups.insert(uid.to_string(), pg);
        }
        let kill_group = |sig: rustix::process::Signal| {
            if let Some(pg) = pgid {
                let _ = rustix::process::kill_process_group(pg, sig);
            }
        };
        enum End {
            Exited(i32),
            Deadline,
            Deleted,
            Terminated,
            Forced(ForcedState),
        }
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
        let finished = now_rfc3339();
        match end {
            End::Exited(code) => {
                self.set_status(ns, name, uid, |p| {
                    let ok = code == 0;
                    p["status"]["phase"] = json!(if ok { "Succeeded" } else { "Failed" });
                    set_not_ready(p);
                    p["status"]["containerStatuses"][0]["state"] = json!({"terminated": {
                        "exitCode": code,
                        "reason": if ok { "Completed" } else { "Error" },
                        "startedAt": start_time,
                        "finishedAt": finished,
                        "containerID": container_id,
                    }});
                });
            }
            End::Deadline => {
                self.set_status(ns, name, uid, |p| {
                    p["status"]["phase"] = json!("Failed");
                    p["status"]["reason"] = json!("DeadlineExceeded");
                    p["status"]["message"] =
                        json!("Pod was active on the node longer than the specified deadline");
                    set_not_ready(p);
                    p["status"]["containerStatuses"][0]["state"] = json!({"terminated": {
                        "exitCode": 137,
                        "reason": "Error",
                        "startedAt": start_time,
                        "finishedAt": finished,
                        "containerID": container_id,
                    }});
                });
            }
            End::Forced(state) => {
                self.finish_forced(
                    ns,
                    name,
                    uid,
                    &state,
                    Some(&start_time),
                    Some(&container_id),
                );
            }
            End::Terminated => {
                self.store.remove(Kind::Pod, ns, name, true);
                return;
            }
            End::Deleted => return,
        }
        drop(workdir);
        self.wait_removal(ns, name, ctl).await;
    }

    /// After the container finished, finalize a graceful deletion when it comes.
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
                let c = p.pointer("/spec/containers/0").cloned().unwrap_or(json!({}));
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

fn ids(obj: &Value) -> (String, String, String) {
    let s = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (
        s("/metadata/namespace"),
        s("/metadata/name"),
        s("/metadata/uid"),
    )
}

fn spawn(
    argv: &[String],
    container: &Value,
    pod_name: &str,
    workdir: Option<&std::path::Path>,
    log: &Arc<PodLog>,
) -> std::io::Result<tokio::process::Child> {
    let (mut reader, writer) = std::io::pipe()?;
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd.env_clear();
    cmd.env(
        "PATH",
        std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
    );
    cmd.env("HOSTNAME", pod_name);
    if let Some(dir) = workdir {
        cmd.env("HOME", dir);
        cmd.current_dir(dir);
    }
    if let Some(wd) = container.get("workingDir").and_then(Value::as_str)
        && std::path::Path::new(wd).is_dir()
    {
        cmd.current_dir(wd);
    }
    if let Some(env) = container.get("env").and_then(Value::as_array) {
        for e in env {
            if let (Some(k), Some(v)) = (
                e.get("name").and_then(Value::as_str),
                e.get("value").and_then(Value::as_str),
            ) {
                cmd.env(k, v);
            }
        }
    }
    cmd.stdin(std::process::Stdio::null());
    cmd.stdout(writer.try_clone()?);
    cmd.stderr(writer);
    cmd.process_group(0);
    cmd.kill_on_drop(true);
    let child = cmd.spawn();
    drop(cmd);
    let child = child?;
    let log = log.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => log.append(&buf[..n]),
            }
        }
        log.close();
    });
    Ok(child)
}
