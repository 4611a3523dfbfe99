//! Reading runs back: a pod as [`Observed`], logs, listings and the pod watch.

use std::collections::BTreeMap;

use airlock_schemas::labels;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, ListParams, LogParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use serde::Deserialize;
use tracing::warn;

use super::api::unless_status;
use super::{CONTAINER, KubeBackend, KubeConfig};
use crate::{BackendError, Observed, Phase, Reason, RunObjects, Stuck, StuckUntil};

impl KubeBackend {
    /// The run's pod as [`Observed`], or `None` when it does not exist.
    pub async fn observe(&self, run_id: &str) -> Result<Option<Observed>, BackendError> {
        let name = labels::object_name(run_id);
        let pod = self.call("get Pod", self.pods().get_opt(&name)).await?;
        Ok(pod.as_ref().and_then(observe_pod))
    }

    /// When the observed pod, stuck ([`Observed::stuck`]), is to fail (see [`crate::Backend::stuck`]): its
    /// [`Observed::waiting_since`] plus `--image-pull-grace` or `--unschedulable-grace`. No API call: the
    /// observation carries the time.
    pub fn stuck(&self, o: &Observed) -> Option<StuckUntil> {
        stuck_until(o, self.config())
    }

    /// The last `max_bytes` of the job container's log.
    pub async fn logs_tail(&self, run_id: &str, max_bytes: usize) -> Result<String, BackendError> {
        let name = labels::object_name(run_id);
        let lp = LogParams {
            container: Some(CONTAINER.into()),
            tail_lines: Some(((max_bytes / 16).max(100)) as i64),
            limit_bytes: Some((max_bytes.saturating_mul(4)).max(1024) as i64),
            ..Default::default()
        };
        // 400 or 404: gone, or the container never started: no logs.
        let logs = unless_status(
            self.call("get logs", self.pods().logs(&name, &lp)).await,
            &[400, 404],
        )?;
        Ok(logs
            .map(|s| tail(&s, max_bytes).to_string())
            .unwrap_or_default())
    }

    /// Every managed pod in the sandbox namespace.
    pub async fn list(&self) -> Result<Vec<Observed>, BackendError> {
        let lp = ListParams::default().labels(&labels::managed_selector());
        let pods = self.call("list Pods", self.pods().list(&lp)).await?;
        Ok(pods.items.iter().filter_map(observe_pod).collect())
    }

    /// One entry per run id found on a managed Pod or NetworkPolicy in the sandbox namespace (so a policy
    /// whose pod is gone or was never created is reported, with `observed: None`), in run id order.
    pub async fn list_objects(&self) -> Result<Vec<RunObjects>, BackendError> {
        let lp = ListParams::default().labels(&labels::managed_selector());
        let (pods_api, policies_api) = (self.pods(), self.policies());
        let (pods, policies) = tokio::try_join!(
            self.call("list Pods", pods_api.list(&lp)),
            self.call("list NetworkPolicies", policies_api.list(&lp)),
        )?;
        let mut runs: BTreeMap<String, RunObjects> = BTreeMap::new();
        for pod in &pods.items {
            if let Some(entry) = add_object(&mut runs, &pod.metadata) {
                entry.observed = observe_pod(pod);
            }
        }
        for np in &policies.items {
            add_object(&mut runs, &np.metadata);
        }
        Ok(runs.into_values().collect())
    }

    /// Changes of managed pods (a `kube-runtime` watcher with backoff): the current state of each first,
    /// then every change. A pod deleted before it finished is reported `Failed`, reason `Deleted`, `lost`.
    pub fn watch(&self) -> BoxStream<'static, Observed> {
        let cfg = watcher::Config::default().labels(&labels::managed_selector());
        let pods = Api::<WatchedPod>::namespaced(self.client().clone(), &self.config().namespace);
        let stream = watcher(pods, cfg)
            .default_backoff()
            .filter_map(|ev| async move {
                match ev {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p.observe(),
                    Ok(watcher::Event::Delete(p)) => p.observe().map(deleted),
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                    Err(e) => {
                        warn!(error = %e, "Pod watch failed; will retry");
                        None
                    }
                }
            });
        Box::pin(stream)
    }
}

/// [`KubeBackend::stuck`] under `config`'s graces.
fn stuck_until(o: &Observed, config: &KubeConfig) -> Option<StuckUntil> {
    let cause = o.stuck()?;
    let since = o.waiting_since.unwrap_or_else(Utc::now);
    let grace = match cause {
        Stuck::Start => config.image_pull_grace,
        Stuck::Unschedulable => config.unschedulable_grace,
    };
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    Some(StuckUntil {
        cause,
        since,
        fail_at: since.checked_add_signed(grace).unwrap_or(since),
    })
}

/// A deleted pod as the watch reports it: lost, unless it had finished.
fn deleted(mut o: Observed) -> Observed {
    if !o.phase.is_finished() {
        o.phase = Phase::Failed;
        o.reason = Some(Reason::Deleted);
        o.waiting_since = None;
        o.message = Some("the pod was deleted before it finished".into());
        o.lost = true;
    }
    o
}

fn to_chrono(t: &Time) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
}

/// Counts one object into its run's entry of `runs` (oldest creation time; terminating only while every
/// object is); `None` for an object without a run id label.
fn add_object<'a>(
    runs: &'a mut BTreeMap<String, RunObjects>,
    meta: &ObjectMeta,
) -> Option<&'a mut RunObjects> {
    let run_id = meta.labels.as_ref()?.get(labels::RUN_ID)?;
    let created = meta.creation_timestamp.as_ref().and_then(to_chrono);
    let terminating = meta.deletion_timestamp.is_some();
    let entry = runs.entry(run_id.clone()).or_insert_with(|| RunObjects {
        run_id: run_id.clone(),
        observed: None,
        created_at: created,
        terminating,
    });
    entry.created_at = match (entry.created_at, created) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    entry.terminating &= terminating;
    Some(entry)
}

/// The last `max` bytes of `s`, cut at a character boundary.
fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Pod status reasons meaning the pod was lost through no fault of the job.
const LOST_REASONS: [&str; 5] = [
    "Evicted",
    "NodeLost",
    "NodeShutdown",
    "Terminated",
    "Preempting",
];

/// A pod as the watch reads it: its metadata and status. The spec, most of a pod's bytes and never read
/// here, is skipped by the decoder instead of being built for every event.
#[derive(Clone, Debug, Deserialize)]
struct WatchedPod {
    metadata: ObjectMeta,
    #[serde(default)]
    status: Option<PodStatus>,
}

impl k8s_openapi::Resource for WatchedPod {
    const API_VERSION: &'static str = <Pod as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <Pod as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <Pod as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <Pod as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str = <Pod as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = <Pod as k8s_openapi::Resource>::Scope;
}

impl k8s_openapi::Metadata for WatchedPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl WatchedPod {
    fn observe(&self) -> Option<Observed> {
        observe_parts(&self.metadata, self.status.as_ref())
    }
}

/// Maps a pod to what the janitor and the watcher need; `None` for pods without a run id label.
pub fn observe_pod(pod: &Pod) -> Option<Observed> {
    observe_parts(&pod.metadata, pod.status.as_ref())
}

/// [`observe_pod`] of a pod's metadata and status: the one place a pod's reasons are read.
///
/// The reason is the first of: the pod's own (`Evicted`, `DeadlineExceeded`...), the job container's
/// terminated reason (`OOMKilled`, `Error`...), its waiting reason (`ContainerCreating`, `ErrImagePull`...),
/// and, for a pod the scheduler cannot place, the `PodScheduled=False` condition's (`Unschedulable`); the
/// message is the first of theirs in the same order.
fn observe_parts(metadata: &ObjectMeta, status: Option<&PodStatus>) -> Option<Observed> {
    let l = metadata.labels.as_ref()?;
    let run_id = l.get(labels::RUN_ID)?.clone();
    let default = PodStatus::default();
    let status = status.unwrap_or(&default);
    let cs: Option<&ContainerStatus> = status
        .container_statuses
        .as_ref()
        .and_then(|v| v.iter().find(|c| c.name == CONTAINER).or_else(|| v.first()));
    let state = cs.and_then(|c| c.state.as_ref());
    let terminated = state.and_then(|s| s.terminated.as_ref());
    let running = state.and_then(|s| s.running.as_ref());
    let waiting = state.and_then(|s| s.waiting.as_ref());
    let unscheduled = status.conditions.as_ref().and_then(|cs| {
        cs.iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    });
    // Set by an eviction through the API (`kubectl drain`), a preemption or a taint: the kubelet then kills
    // the job, which ends with its own exit reason (`Error`, 137), not the pod's.
    let disruption = status.conditions.as_ref().and_then(|cs| {
        cs.iter()
            .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
    });
    let disrupted = disruption.is_some();
    let phase = match status.phase.as_deref() {
        Some("Running") => Phase::Running,
        Some("Succeeded") => Phase::Succeeded,
        Some("Failed") => Phase::Failed,
        _ => Phase::Pending,
    };
    let reason = status
        .reason
        .as_ref()
        .or_else(|| terminated.and_then(|t| t.reason.as_ref()))
        .or_else(|| waiting.and_then(|w| w.reason.as_ref()))
        .or_else(|| unscheduled.and_then(|c| c.reason.as_ref()));
    let message = status
        .message
        .as_ref()
        .or_else(|| terminated.and_then(|t| t.message.as_ref()))
        .or_else(|| waiting.and_then(|w| w.message.as_ref()))
        .or_else(|| unscheduled.and_then(|c| c.message.as_ref()));
    let lost = status
        .reason
        .as_deref()
        .is_some_and(|r| LOST_REASONS.contains(&r))
        || (disrupted && phase == Phase::Failed && terminated.is_none_or(|t| t.exit_code != 0));
    // A disrupted job that did not finish by itself was evicted, whatever its exit reads as.
    let (reason, message) = match disruption {
        Some(c) if lost && status.reason.is_none() => (
            Some(Reason::Evicted),
            Some(match (&c.reason, &c.message) {
                (Some(r), Some(m)) => format!("{r}: {m}"),
                (r, m) => r.clone().or_else(|| m.clone()).unwrap_or_default(),
            }),
        ),
        _ => (reason.map(|r| Reason::from(r.as_str())), message.cloned()),
    };
    let created = metadata.creation_timestamp.as_ref();
    let waiting_since = (phase == Phase::Pending)
        .then(|| match unscheduled {
            Some(c) => c.last_transition_time.as_ref().or(created),
            None => status.start_time.as_ref().or(created),
        })
        .flatten()
        .and_then(to_chrono);
    Some(Observed {
        run_id,
        queue: l.get(labels::QUEUE).cloned(),
        attempt: l
            .get(labels::ATTEMPT)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1),
        phase,
        exit_code: terminated.map(|t| t.exit_code),
        reason,
        message,
        waiting_since,
        started_at: running
            .and_then(|r| r.started_at.as_ref())
            .or_else(|| terminated.and_then(|t| t.started_at.as_ref()))
            .and_then(to_chrono),
        finished_at: terminated
            .and_then(|t| t.finished_at.as_ref())
            .and_then(to_chrono),
        lost,
        image_fetch: None,
    })
}

#[cfg(test)]
mod tests;
