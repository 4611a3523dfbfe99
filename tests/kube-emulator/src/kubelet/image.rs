//! Image mode: before a container starts, the kubelet pulls its image through the shared image store
//! (honouring `imagePullPolicy`), verifies its user against `runAsNonRoot`, and resolves what runs
//! (`command`/`args` over the image's `Entrypoint`/`Cmd`, image `Env` under the container's, `WorkingDir`).
//!
//! Failures show as a node shows them: the container `waiting` with reason `ErrImagePull`, then
//! `ImagePullBackOff` while the back-off runs (doubling up to a cap, then pulled again), `ErrImageNeverPull`,
//! `InvalidImageName`, `CreateContainerConfigError` or `CreateContainerError`, the pod `Pending`, and the
//! matching events.

use std::time::Duration;

use airlock_images::{ImageError, LeasedImage, PullPolicy};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use super::events::Severity;
use super::process::DEFAULT_PATH;
use super::user::{RunAs, UserError, run_as};
use super::{Control, Kubelet};
use crate::kinds::Kind;
use crate::store::now_rfc3339;

/// A container ready to start in image mode. The lease keeps its image in the store while it runs.
#[derive(Debug)]
pub(super) struct Prepared {
    pub image: LeasedImage,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: String,
    pub user: RunAs,
}

/// Why a container is not starting (a waiting reason and its message).
struct Waiting {
    reason: &'static str,
    message: String,
}

impl Kubelet {
    /// Pulls and checks until the container can start; `None` when the pod went away, was forced to an end
    /// or passed its `activeDeadlineSeconds` meanwhile.
    pub(super) async fn prepare_image(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        pod: &Value,
        ctl: &mut watch::Receiver<Control>,
    ) -> Option<Prepared> {
        let store = self.cfg.images.as_ref()?.store.clone();
        let container = super::first_container(pod);
        let image = container
            .get("image")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let policy = container
            .get("imagePullPolicy")
            .and_then(Value::as_str)
            .and_then(|p| p.parse::<PullPolicy>().ok())
            .unwrap_or_default();
        let deadline = pod
            .pointer("/spec/activeDeadlineSeconds")
            .and_then(Value::as_u64)
            .map(|s| Instant::now() + Duration::from_secs(s));
        let mut backoff = self.cfg.images.as_ref()?.backoff;
        self.set_waiting(ns, name, uid, pod, "ContainerCreating", None);
        loop {
            if policy != PullPolicy::Never && airlock_images::normalize_reference(&image).is_ok() {
                self.event(
                    pod,
                    Severity::Normal,
                    "Pulling",
                    &format!("Pulling image {image:?}"),
                );
            }
            let pulled = tokio::select! {
                r = store.ensure(&image, policy) => Some(r),
                r = ctl.changed() => if r.is_err() { return None } else { None },
            };
            let Some(pulled) = pulled else {
                if !self.still_runnable(ns, name, uid, ctl) {
                    return None;
                }
                continue;
            };
            let waiting = match pulled {
                Ok(img) => {
                    self.event(
                        pod,
                        Severity::Normal,
                        "Pulled",
                        &format!("Container image {image:?} already present on machine or pulled"),
                    );
                    match resolve(pod, &container, img) {
                        Ok(p) => return Some(p),
                        Err(w) => w,
                    }
                }
                Err(e) => self.pull_failed(pod, &image, &e),
            };
            let shown = match waiting.reason {
                "CreateContainerConfigError" | "CreateContainerError" => &waiting.message,
                reason => reason,
            };
            self.event(pod, Severity::Warning, "Failed", &format!("Error: {shown}"));
            let backing_off = waiting.reason == "ErrImagePull";
            let message = waiting.message.clone();
            self.set_waiting(ns, name, uid, pod, waiting.reason, Some(waiting.message));
            if backing_off {
                // ErrImagePull shows until the next sync; then the back-off.
                if !self
                    .pause(
                        ns,
                        name,
                        uid,
                        ctl,
                        backoff.min(Duration::from_secs(1)),
                        deadline,
                    )
                    .await
                {
                    return None;
                }
                self.event(
                    pod,
                    Severity::Normal,
                    "BackOff",
                    &format!("Back-off pulling image {image:?}"),
                );
                self.event(pod, Severity::Warning, "Failed", "Error: ImagePullBackOff");
                let msg = format!("Back-off pulling image {image:?}: ErrImagePull: {message}");
                self.set_waiting(ns, name, uid, pod, "ImagePullBackOff", Some(msg));
            }
            if !self.pause(ns, name, uid, ctl, backoff, deadline).await {
                return None;
            }
            backoff = (backoff * 2).min(self.cfg.images.as_ref()?.max_backoff);
        }
    }

    /// The waiting state and events of a failed pull.
    fn pull_failed(&self, pod: &Value, image: &str, e: &ImageError) -> Waiting {
        match e {
            ImageError::InvalidReference { .. } => {
                let message = format!(
                    "Failed to apply default image tag {image:?}: couldn't parse image name {image:?}: invalid reference format"
                );
                self.event(pod, Severity::Warning, "InspectFailed", &message);
                Waiting {
                    reason: "InvalidImageName",
                    message,
                }
            }
            ImageError::NotPresent { .. } => {
                let message =
                    format!("Container image {image:?} is not present with pull policy of Never");
                self.event(pod, Severity::Warning, "ErrImageNeverPull", &message);
                Waiting {
                    reason: "ErrImageNeverPull",
                    message,
                }
            }
            e => {
                self.event(
                    pod,
                    Severity::Warning,
                    "Failed",
                    &format!("Failed to pull image {image:?}: {e}"),
                );
                Waiting {
                    reason: "ErrImagePull",
                    message: e.to_string(),
                }
            }
        }
    }

    /// Whether the pod still wants its container (no deletion, no forced state) after a control change.
    fn still_runnable(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        ctl: &mut watch::Receiver<Control>,
    ) -> bool {
        match ctl.borrow_and_update().clone() {
            Control::Run => true,
            Control::Deleted => false,
            Control::Terminate { .. } => {
                self.store.remove(Kind::Pod, ns, name, true);
                false
            }
            Control::Force(state) => {
                self.finish_forced(ns, name, uid, &state, None, None);
                false
            }
        }
    }

    /// Waits `d` (or until the deadline); false when the pod is done meanwhile.
    async fn pause(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        ctl: &mut watch::Receiver<Control>,
        d: Duration,
        deadline: Option<Instant>,
    ) -> bool {
        let until = Instant::now() + d;
        loop {
            let wake = deadline.map_or(until, |dl| dl.min(until));
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {
                    if deadline.is_some_and(|dl| Instant::now() >= dl) {
                        self.set_status(ns, name, uid, |p| {
                            p["status"]["phase"] = json!("Failed");
                            p["status"]["reason"] = json!("DeadlineExceeded");
                            p["status"]["message"] =
                                json!("Pod was active on the node longer than the specified deadline");
                        });
                        return false;
                    }
                    return true;
                }
                r = ctl.changed() => {
                    if r.is_err() || !self.still_runnable(ns, name, uid, ctl) {
                        return false;
                    }
                }
            }
        }
    }

    /// Binds the pod (first time) and shows its container waiting with `reason`.
    fn set_waiting(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        pod: &Value,
        reason: &str,
        message: Option<String>,
    ) {
        let container = super::first_container(pod);
        let cname = container
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("main")
            .to_string();
        let image = container.get("image").cloned().unwrap_or(json!(""));
        let node = self.cfg.node_name.clone();
        let mut waiting = json!({"reason": reason});
        if let Some(m) = message {
            waiting["message"] = json!(m);
        }
        self.set_status(ns, name, uid, |p| {
            if let Some(spec) = p.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("nodeName".into(), json!(node));
            }
            let now = now_rfc3339();
            let start = p
                .pointer("/status/startTime")
                .cloned()
                .unwrap_or(json!(now));
            let qos = p
                .pointer("/status/qosClass")
                .cloned()
                .unwrap_or(json!("BestEffort"));
            let unready = format!("containers with unready status: [{cname}]");
            let since = |t: &str| {
                p.pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|cs| cs.iter().find(|c| c["type"] == t))
                    .and_then(|c| c.get("lastTransitionTime").cloned())
                    .unwrap_or(json!(now))
            };
            let cond = |t: &str, ok: bool| {
                let mut c = json!({"type": t, "status": if ok {"True"} else {"False"},
                    "lastProbeTime": null, "lastTransitionTime": since(t)});
                if !ok {
                    c["reason"] = json!("ContainersNotReady");
                    c["message"] = json!(unready);
                }
                c
            };
            let conditions = json!([
                cond("PodReadyToStartContainers", true),
                cond("Initialized", true),
                cond("Ready", false),
                cond("ContainersReady", false),
                cond("PodScheduled", true),
            ]);
            p["status"] = json!({
                "phase": "Pending",
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "startTime": start,
                "qosClass": qos,
                "conditions": conditions,
                "containerStatuses": [{
                    "name": cname,
                    "image": image,
                    "imageID": "",
                    "ready": false,
                    "restartCount": 0,
                    "started": false,
                    "state": {"waiting": waiting},
                    "lastState": {},
                }],
            });
        });
    }
}

/// What runs, as Kubernetes combines the container with its image.
fn resolve(pod: &Value, container: &Value, image: LeasedImage) -> Result<Prepared, Waiting> {
    let cfg = image.config().clone();
    let strings = |f: &str| -> Option<Vec<String>> {
        container
            .get(f)
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
    };
    let argv: Vec<String> = match (strings("command"), strings("args")) {
        (Some(c), Some(a)) => c.into_iter().chain(a).collect(),
        (Some(c), None) => c,
        (None, Some(a)) => cfg.entrypoint.iter().cloned().chain(a).collect(),
        (None, None) => cfg.default_command(),
    };
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if argv.is_empty() {
        return Err(Waiting {
            reason: "CreateContainerError",
            message: format!(
                "failed to generate container {pod_name:?} spec: failed to generate spec: no command specified"
            ),
        });
    }
    let user =
        run_as(pod, container, cfg.user.as_deref(), image.rootfs()).map_err(|e| match e {
            UserError::Config(message) => Waiting {
                reason: "CreateContainerConfigError",
                message,
            },
            UserError::Create(message) => Waiting {
                reason: "CreateContainerError",
                message,
            },
        })?;
    let mut env: Vec<(String, String)> = vec![("HOSTNAME".into(), pod_name.to_string())];
    let mut set = |k: String, v: String| match env.iter_mut().find(|(n, _)| *n == k) {
        Some(e) => e.1 = v,
        None => env.push((k, v)),
    };
    for (k, v) in cfg.env.iter().cloned() {
        set(k, v);
    }
    for (k, v) in super::process::container_env(container) {
        set(k, v);
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        env.push(("HOME".into(), "/".into()));
    }
    let workdir = container
        .get("workingDir")
        .and_then(Value::as_str)
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .or(cfg.working_dir.clone())
        .unwrap_or_else(|| "/".into());
    Ok(Prepared {
        image,
        argv,
        env,
        workdir,
        user,
    })
}
