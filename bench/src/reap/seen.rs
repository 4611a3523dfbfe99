//! The bench's own reap lag, independent of the janitor's metrics: it watches the pods itself (as an operator's
//! `kubectl get pods --watch` would) and stamps, in milliseconds, when it first sees each run's pod finished;
//! the reap time is the run record's `reaped_at` (milliseconds, set once the status is recorded, the objects
//! deleted and the lifecycle event published). Kubernetes' `finishedAt` (whole seconds) is not used.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_schemas::labels;
use airlock_schemas::record::{self, field};
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;

use crate::world::World;

/// When the bench saw each run's pod finished, by run id (and the last such pod, whole).
#[derive(Clone, Default)]
pub struct Seen(
    Arc<Mutex<HashMap<String, DateTime<Utc>>>>,
    Arc<Mutex<Option<Pod>>>,
);

impl Seen {
    /// Watches the pods of `ns` with the client of `kubeconfig` until dropped (the task ends with the bench's
    /// runtime).
    pub async fn watch(kubeconfig: &Path, ns: &str) -> Result<(Self, tokio::task::JoinHandle<()>)> {
        let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?;
        let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(config)?, ns);
        let seen = Self::default();
        let into = seen.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher(pods, watcher::Config::default()).boxed();
            while let Some(ev) = events.next().await {
                let now = Utc::now();
                let pod = match ev {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
                    Ok(_) => continue,
                    Err(e) => {
                        eprintln!("[pod watch] {e}");
                        continue;
                    }
                };
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                if !matches!(phase, Some("Succeeded" | "Failed")) {
                    continue;
                }
                let run = pod
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(labels::RUN_ID));
                if let (Some(run), Ok(mut seen)) = (run, into.0.lock()) {
                    seen.entry(run.clone()).or_insert(now);
                }
                if let Ok(mut last) = into.1.lock() {
                    *last = Some(pod);
                }
            }
        });
        Ok((seen, task))
    }

    /// The last pod seen finished, as the API server had it.
    pub fn last_pod(&self) -> Option<Pod> {
        self.1.lock().ok()?.clone()
    }

    /// How many runs were seen finished.
    pub fn len(&self) -> usize {
        self.0.lock().map_or(0, |s| s.len())
    }

    /// Each of `ids`' lag from being seen finished to its record's `reaped_at`, in seconds, sorted, with the
    /// run's id; runs not seen or not reaped are left out (their number is the difference in length).
    pub async fn lags(&self, w: &World, ids: &[String]) -> Result<Vec<(f64, String)>> {
        let seen = self
            .0
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone();
        let mut conn = w.redis.connection().await?;
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hget(record::key("airlock", id), field::REAPED_AT);
        }
        let reaped: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
        let mut lags: Vec<(f64, String)> = ids
            .iter()
            .zip(reaped)
            .filter_map(|(id, r)| {
                let reaped = record::parse_timestamp(&r?)?;
                let lag = reaped - *seen.get(id)?;
                Some((lag.num_microseconds()? as f64 / 1e6, id.clone()))
            })
            .collect();
        lags.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(lags)
    }

    /// [`Seen::lags`] once every one of `ids` has one, or as they are 10 s on (the last `reaped_at` lands
    /// just after the last terminal status is counted).
    pub async fn lags_of_all(&self, w: &World, ids: &[String]) -> Result<Vec<(f64, String)>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let own = self.lags(w, ids).await?;
            if own.len() >= ids.len() || Instant::now() > deadline {
                return Ok(own);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The `q` quantile (0..1) of sorted `xs`, nearest rank.
pub fn exact_quantile(xs: &[(f64, String)], q: f64) -> Result<f64> {
    let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len().max(1));
    xs.get(rank - 1).map(|x| x.0).context("no samples")
}
