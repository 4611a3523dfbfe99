//! The process kubelet: schedules pods onto one fake node and runs each pod's first container's
//! `command` + `args` as a local process group on the host (images are not pulled or run).
//!
//! # Layout
//!
//! - this file: [`Kubelet`] (pod tasks, holds, forced states, logs) and its public API.
//! - `pod`: one pod's life: scheduling, start, supervision, final status.
//! - `start`: starting the container and its Running status. `process`: the host command.
//! - `log`: [`PodLog`].

mod log;
mod pod;
mod process;
mod start;

pub use log::PodLog;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{broadcast, watch};

use crate::kinds::Kind;
use crate::selector::LabelSelector;
use crate::store::{EventType, Store};

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
            .modify(Kind::Pod, ns, name, None, |pod| {
                if pod.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
                    return Err(crate::status::ApiError::conflict(Kind::Pod, name));
                }
                f(pod);
                Ok(())
            })
            .is_ok()
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

/// The pod's first container (`{}` when it has none): the one the kubelet runs.
fn first_container(pod: &Value) -> Value {
    pod.pointer("/spec/containers/0")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({}))
}
