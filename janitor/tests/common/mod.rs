//! Shared set-up for the janitor's tests: real NATS and Redis, the Kubernetes emulator, a janitor running
//! in-process, and stand-ins for what the dispatcher does (record the run, launch its objects, publish the
//! `finished` timer its watcher would), so no test depends on another service's crate.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use airlock_backend::{Backend, BackendArgs, LaunchSpec, Launched};
use airlock_janitor::{Config, Metrics};
use airlock_kube_emulator::{Emulator, EmulatorConfig, EmulatorHandle, Kind};
use airlock_runtime::metrics::{JanitorAction, Service};
use airlock_runtime::nats::{StreamOptions, ensure_streams};
use airlock_runtime::publish::Publisher;
use airlock_runtime::store::{RecordUpdate, Store};
use airlock_schemas::record::RunRecord;
use airlock_schemas::{
    LifecycleEvent, Policy, RunRequest, RunStatus, Subjects, TimerEvent, TimerKind,
};
use airlock_test_support::{NatsServer, RedisServer, wait_until};
use anyhow::{Context, Result};
use async_nats::jetstream;
use clap::Parser;
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Namespace of run pods.
pub const NS: &str = "airlock-sandbox";
/// Queue of test runs.
pub const QUEUE: &str = "default";

/// Servers, emulator and clients of one test.
pub struct Env {
    pub nats: NatsServer,
    pub redis: RedisServer,
    pub emu: EmulatorHandle,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub store: Store,
    pub backend: Backend,
    pub subjects: Subjects,
    pub publisher: Publisher,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// A janitor running in-process.
pub struct RunningJanitor {
    pub metrics: Metrics,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), airlock_janitor::Error>>,
}

impl RunningJanitor {
    /// Stops it and returns its result.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.task.await??;
        Ok(())
    }
}

#[derive(Parser)]
struct BackendOnly {
    #[command(flatten)]
    backend: BackendArgs,
}

pub fn init_tracing() {
    let _ = tracing_subscriber_init();
}

fn tracing_subscriber_init() -> Option<()> {
    std::mem::forget(airlock_runtime::telemetry::init(
        airlock_runtime::config::LogFormat::Human,
        "airlock-janitor",
    ));
    Some(())
}

impl Env {
    pub async fn start() -> Result<Self> {
        init_tracing();
        let (nats, redis) = tokio::try_join!(NatsServer::start(), RedisServer::start())?;
        let emu = Emulator::start(EmulatorConfig::default().namespace(NS)).await?;
        let client = nats.client().await?;
        let js = jetstream::new(client.clone());
        let subjects = Subjects::default();
        ensure_streams(&js, &subjects, &StreamOptions::default()).await?;
        let store = Store::connect(
            &redis.url(),
            subjects.prefix(),
            Duration::from_secs(7 * 24 * 3600),
        )
        .await?;
        let args = BackendOnly::try_parse_from(Self::backend_flags(&emu))?.backend;
        let backend = Backend::from_args(&args, &client, &subjects).await?;
        let publisher = Publisher::new(js.clone(), subjects.clone());
        Ok(Self {
            nats,
            redis,
            emu,
            client,
            js,
            store,
            backend,
            subjects,
            publisher,
            shutdown: CancellationToken::new(),
            tasks: Vec::new(),
        })
    }

    fn backend_flags(emu: &EmulatorHandle) -> Vec<String> {
        vec![
            "test".into(),
            "--runtime".into(),
            "kube".into(),
            "--kubeconfig".into(),
            emu.kubeconfig_path().display().to_string(),
            "--namespace".into(),
            NS.into(),
            "--nats-egress-cidrs".into(),
            "127.0.0.1/32".into(),
            "--pod-termination-grace".into(),
            "1".into(),
        ]
    }

    /// The janitor's configuration for this environment, plus `extra` flags.
    pub fn config(&self, extra: &[&str]) -> Result<Config> {
        let mut argv = Self::backend_flags(&self.emu);
        argv[0] = "airlock-janitor".into();
        argv.extend(
            [
                "--nats-url",
                &self.nats.url(),
                "--redis-url",
                &self.redis.url(),
                "--shutdown-grace",
                "3s",
            ]
            .map(String::from),
        );
        argv.extend(extra.iter().map(|s| s.to_string()));
        Ok(Config::try_parse_from(argv)?)
    }

    /// Starts a janitor in-process with `extra` flags.
    pub fn janitor(&self, extra: &[&str]) -> Result<RunningJanitor> {
        let config = self.config(extra)?;
        let metrics = Metrics::new(Service::Janitor);
        let shutdown = self.shutdown.child_token();
        let task = tokio::spawn(airlock_janitor::run_with_metrics(
            config,
            metrics.clone(),
            shutdown.clone(),
        ));
        Ok(RunningJanitor {
            metrics,
            shutdown,
            task,
        })
    }

    /// A validated request for `id` running `script` under `sh -c`.
    pub fn request(id: &str, script: &str, deadline_seconds: u64) -> Result<RunRequest> {
        Ok(serde_json::from_value(serde_json::json!({
            "id": id,
            "image": "docker.io/library/busybox:1.36",
            "command": ["sh", "-c", script],
            "deadline_seconds": deadline_seconds,
            "metadata": {"test": id},
        }))?)
    }

    /// What the API and dispatcher do at submit: record the run (`pending`, attempt 1) and create its
    /// NetworkPolicy and Pod.
    pub async fn submit(&self, id: &str, script: &str, deadline_seconds: u64) -> Result<()> {
        let request = Self::request(id, script, deadline_seconds)?;
        self.record_pending(&request).await?;
        self.launch(&request, 1).await
    }

    /// Records `request` as `pending`, attempt 1, as the dispatcher does.
    pub async fn record_pending(&self, request: &RunRequest) -> Result<()> {
        let validated = request
            .clone()
            .validate(QUEUE, &Policy::default())
            .map_err(|e| anyhow::anyhow!("invalid request: {e:?}"))?;
        self.store
            .transition(
                &request.id,
                RunStatus::Pending,
                &RecordUpdate {
                    queue: Some(QUEUE.into()),
                    image: Some(request.image.clone()),
                    request: Some(serde_json::to_string(&validated.request)?),
                    submitted_at: Some(chrono::Utc::now()),
                    attempt: Some(1),
                    ..RecordUpdate::default()
                },
            )
            .await?;
        Ok(())
    }

    /// Creates the run's NetworkPolicy and Pod for `attempt`, retrying while an older attempt's pod is
    /// still going away.
    pub async fn launch(&self, request: &RunRequest, attempt: u32) -> Result<()> {
        let validated = request
            .clone()
            .validate(QUEUE, &Policy::default())
            .map_err(|e| anyhow::anyhow!("invalid request: {e:?}"))?;
        let spec = LaunchSpec {
            run: validated,
            attempt,
            env: BTreeMap::new(),
        };
        let launched = wait_until(Duration::from_secs(15), "launch", || async {
            match self.backend.launch(&spec).await {
                Ok(l) => Some(Ok(l)),
                Err(e) if e.is_retryable() => None,
                Err(e) => Some(Err(e)),
            }
        })
        .await??;
        anyhow::ensure!(launched == Launched::Created, "objects already existed");
        Ok(())
    }

    /// Creates only the NetworkPolicy of `request` (a dispatcher that crashed before creating the pod).
    pub async fn create_policy_only(&self, request: &RunRequest) -> Result<()> {
        let Backend::Kube(k) = &self.backend else {
            anyhow::bail!("not the Kubernetes backend");
        };
        let validated = request
            .clone()
            .validate(QUEUE, &Policy::default())
            .map_err(|e| anyhow::anyhow!("invalid request: {e:?}"))?;
        let spec = LaunchSpec {
            run: validated,
            attempt: 1,
            env: BTreeMap::new(),
        };
        let np = k.network_policy(&spec)?;
        let api: kube::Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
            kube::Api::namespaced(k.client().clone(), NS);
        api.create(&kube::api::PostParams::default(), &np).await?;
        Ok(())
    }

    /// Stands in for the dispatcher's watcher: publishes a `finished` timer, stamped when it saw the pod
    /// finish, whenever a pod finishes.
    pub fn watch_like_the_dispatcher(&mut self) {
        let backend = self.backend.clone();
        let publisher = self.publisher.clone();
        let shutdown = self.shutdown.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut changes = backend.watch();
            loop {
                let obs = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    o = changes.next() => match o { Some(o) => o, None => return },
                };
                if obs.phase.is_finished() {
                    let seen = chrono::Utc::now();
                    let ev = TimerEvent {
                        kind: TimerKind::Finished,
                        run_id: Some(obs.run_id.clone()),
                        attempt: Some(obs.attempt),
                        reason: None,
                    };
                    if let Err(e) = publisher.timer_observed(&ev, Some(seen)).await {
                        tracing::warn!(error = %e, "test watcher could not publish a finished timer");
                    }
                }
            }
        }));
    }

    /// Stands in for the dispatcher on `airlock.runs.>`: launches every request as the attempt its
    /// `Airlock-Attempt` header names. Returns the attempts it received, in order.
    pub async fn dispatch_like_the_dispatcher(
        &mut self,
    ) -> Result<Arc<std::sync::Mutex<Vec<(String, u32)>>>> {
        let stream = self.js.get_stream("AIRLOCK_RUNS").await?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some("test-dispatcher".into()),
                filter_subject: self.subjects.runs_all(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await?;
        let mut msgs = consumer.messages().await?;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = seen.clone();
        let backend = self.backend.clone();
        let shutdown = self.shutdown.clone();
        self.tasks.push(tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    m = msgs.next() => match m { Some(Ok(m)) => m, _ => return },
                };
                let attempt = airlock_runtime::consume::attempt_of(&msg);
                let Ok(request) = serde_json::from_slice::<RunRequest>(&msg.payload) else {
                    let _ = msg.ack().await;
                    continue;
                };
                if let Ok(mut s) = seen.lock() {
                    s.push((request.id.clone(), attempt));
                }
                let Ok(validated) = request.validate(QUEUE, &Policy::default()) else {
                    let _ = msg.ack().await;
                    continue;
                };
                let spec = LaunchSpec {
                    run: validated,
                    attempt,
                    env: BTreeMap::new(),
                };
                // Like the dispatcher: an older attempt still terminating is transient.
                let launched =
                    wait_until(Duration::from_secs(15), "re-dispatch launch", || async {
                        match backend.launch(&spec).await {
                            Ok(_) => Some(()),
                            Err(e) if e.is_retryable() => None,
                            Err(e) => {
                                tracing::warn!(error = %e, "test dispatcher could not launch");
                                Some(())
                            }
                        }
                    })
                    .await;
                if let Err(e) = launched {
                    tracing::warn!(error = %e, "test dispatcher gave up");
                }
                let _ = msg.ack().await;
            }
        }));
        Ok(out)
    }

    /// The run's record.
    pub async fn record(&self, id: &str) -> Result<RunRecord> {
        self.store.get(id).await?.context("no record")
    }

    /// Waits until the run is reaped (terminal with `reaped_at`) and returns its record.
    pub async fn reaped(&self, id: &str, timeout: Duration) -> Result<RunRecord> {
        wait_until(timeout, &format!("run {id} to be reaped"), || async {
            self.store
                .get(id)
                .await
                .ok()
                .flatten()
                .filter(|r| r.reaped_at.is_some() && r.status.is_some_and(RunStatus::is_terminal))
        })
        .await
    }

    /// Name of the run's Pod and NetworkPolicy.
    pub fn object(id: &str) -> String {
        airlock_schemas::labels::object_name(id)
    }

    /// Waits until the run's Pod and NetworkPolicy are gone.
    pub async fn objects_gone(&self, id: &str) -> Result<()> {
        let name = Self::object(id);
        self.emu
            .wait_for_absent(Kind::Pod, NS, &name, Duration::from_secs(15))
            .await?;
        self.emu
            .wait_for_absent(Kind::NetworkPolicy, NS, &name, Duration::from_secs(15))
            .await?;
        Ok(())
    }

    /// Lifecycle events of a run stored so far (result rejections and others skipped).
    pub async fn events(&self, id: &str) -> Result<Vec<LifecycleEvent>> {
        let stream = self.js.get_stream("AIRLOCK_EVENTS").await?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: self.subjects.events(id),
                ..Default::default()
            })
            .await?;
        let pending = consumer.cached_info().num_pending;
        let mut out = Vec::new();
        if pending == 0 {
            return Ok(out);
        }
        let mut msgs = consumer.messages().await?;
        for _ in 0..pending {
            let msg = tokio::time::timeout(Duration::from_secs(5), msgs.next())
                .await?
                .context("events stream ended")??;
            if let Ok(ev) = serde_json::from_slice::<LifecycleEvent>(&msg.payload) {
                out.push(ev);
            }
        }
        Ok(out)
    }

    /// Number of DELETE requests the emulator served for the run's Pod.
    pub fn pod_delete_requests(&self, id: &str) -> usize {
        let path = format!("/pods/{}", Self::object(id));
        self.emu
            .requests()
            .iter()
            .filter(|r| {
                r.method == "DELETE" && r.uri.split('?').next().is_some_and(|p| p.ends_with(&path))
            })
            .count()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Parses an RFC 3339 field of a record.
pub fn time(s: Option<&str>) -> Result<chrono::DateTime<chrono::Utc>> {
    let s = s.context("timestamp missing")?;
    Ok(chrono::DateTime::parse_from_rfc3339(s)?.with_timezone(&chrono::Utc))
}

/// The janitor's counters, read from its metrics as a scrape would.
pub trait Counts {
    /// `airlock_janitor_actions_total{action}`.
    fn action(&self, action: JanitorAction) -> u64;
    /// `airlock_reaps_total`, every status.
    fn reaped(&self) -> u64;
    /// `airlock_handler_errors_total`.
    fn handler_errors(&self) -> u64;
}

impl Counts for Metrics {
    fn action(&self, action: JanitorAction) -> u64 {
        let l = [("action", action.as_str())];
        self.samples().get("airlock_janitor_actions_total", &l) as u64
    }
    fn reaped(&self) -> u64 {
        self.samples().get("airlock_reaps_total", &[]) as u64
    }
    fn handler_errors(&self) -> u64 {
        self.samples().get("airlock_handler_errors_total", &[]) as u64
    }
}
