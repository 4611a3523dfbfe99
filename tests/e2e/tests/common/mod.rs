//! Shared set-up of the end-to-end tests: a [`System`] is a real `nats-server` and `redis-server` (each test
//! its own, on free 127.0.0.1 ports) plus `airlock-dispatcher`, `airlock-ingester` and `airlock-janitor` as
//! child processes, configured for one [`Runtime`]. Tests submit requests the way clients do (JetStream
//! publish with `Nats-Msg-Id`) and wait on what the system publishes: lifecycle events on
//! `airlock.events.<id>` (an ordered consumer), then the Redis record. Nothing sleeps to synchronise: state
//! with no event (a Redis field, a process exit, a readiness flag) is polled with `wait_until`.
//! [`local`] has what tests of the local runtime share: images imported before a system starts, and gates
//! opened through a job's result file.

#![allow(dead_code)]

pub mod local;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_schemas::record::RunRecord;
use airlock_schemas::subjects::STREAM_EVENTS;
use airlock_schemas::{LifecycleEvent, ResultRejected, Subjects};
use airlock_test_support::{NatsServer, RedisServer, Service, free_port, wait_until};
use anyhow::{Context, Result, bail};
use async_nats::jetstream;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The token secret shared by the dispatcher and the ingester (at least 16 bytes).
pub const SECRET: &str = "e2e-token-secret-0123456789abcdef";
/// Queue every test submits to.
pub const QUEUE: &str = "default";
/// Upper bound of any single wait; generous for 2 loaded cores, never reached when things work.
pub const T: Duration = Duration::from_secs(60);

/// First sandbox uid of the e2e tests' ranges (above the default range of `airlock dev`).
const UID_BASE: u32 = 1_100_000_000;
/// Sandbox slots (uids) per system.
const LOCAL_SLOTS: u32 = 16;
/// Systems per test process with distinct ranges (`cargo test` runs a file's tests as threads of one).
const SYSTEMS_PER_PROCESS: u32 = 16;

/// A uid range no other system running now uses: a live pid is unique, and a counter tells apart the
/// systems of one process (pid_max 2^22 keeps the ranges below 2^32).
fn uid_base() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SYSTEMS_PER_PROCESS;
    UID_BASE + (std::process::id() * SYSTEMS_PER_PROCESS + n) * LOCAL_SLOTS
}

/// Where the services run jobs.
#[derive(Debug, Clone)]
pub enum Runtime {
    /// Local bubblewrap sandboxes; the dispatcher and the janitor share `dir`.
    Local { dir: PathBuf },
    /// Kubernetes (the real test cluster), pods in `namespace`.
    Kube {
        /// Each service's kubeconfig (on the real cluster, its own ServiceAccount's token).
        kubeconfigs: Kubeconfigs,
        namespace: String,
        /// Extra dispatcher flags (e.g. `--nats-egress-cidrs`).
        dispatcher_args: Vec<String>,
        /// Where NATS listens so that pods reach it (the test cluster's host address); 127.0.0.1 when
        /// `None`.
        nats_addr: Option<std::net::Ipv4Addr>,
    },
}

/// The kubeconfig of each service that talks to Kubernetes.
#[derive(Debug, Clone)]
pub struct Kubeconfigs {
    pub dispatcher: PathBuf,
    pub janitor: PathBuf,
    pub api: PathBuf,
}

impl Kubeconfigs {
    fn of(&self, service: usize) -> &Path {
        match service {
            JANITOR => &self.janitor,
            API => &self.api,
            _ => &self.dispatcher,
        }
    }
}

impl Runtime {
    /// The backend flags of service `service` ([`DISPATCHER`], [`JANITOR`] or [`API`]).
    pub fn backend_args(&self, service: usize) -> Vec<String> {
        match self {
            Runtime::Local { dir } => vec![
                "--runtime".into(),
                "local".into(),
                "--local-dir".into(),
                dir.display().to_string(),
                // Sandbox uids of their own: a local runtime kills every process of a run's uid when the run
                // ends, so two systems on one host (tests in parallel) must not share the uid range.
                "--local-uid-base".into(),
                uid_base().to_string(),
                "--local-slots".into(),
                LOCAL_SLOTS.to_string(),
                // Machines without cgroup delegation run these tests too.
                "--local-allow-no-memory-cgroup".into(),
                "true".into(),
            ],
            Runtime::Kube {
                kubeconfigs,
                namespace,
                ..
            } => vec![
                "--runtime".into(),
                "kube".into(),
                "--kubeconfig".into(),
                kubeconfigs.of(service).display().to_string(),
                "--namespace".into(),
                namespace.clone(),
            ],
        }
    }
}

/// A private temp directory the sandbox uid can traverse (0711; see `backend/src/local/rundir.rs`).
pub fn traversable_tempdir(prefix: &str) -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::Builder::new().prefix(prefix).tempdir()?;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o711))?;
    Ok(d)
}

/// The image every request of [`request`] names.
pub const IMAGE: &str = "docker.io/library/busybox:1.36";

/// One of the services, with what is needed to start it again.
struct ServiceSpec {
    binary: &'static str,
    args: Vec<String>,
    envs: Vec<(&'static str, String)>,
    health_port: u16,
}

impl ServiceSpec {
    fn start(&self) -> Result<Service> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut envs = self.envs.clone();
        envs.push((
            "AIRLOCK_HTTP_ADDR",
            format!("127.0.0.1:{}", self.health_port),
        ));
        Service::start(self.binary, &args, &envs)
    }
}

/// NATS, Redis and the four services, as processes.
pub struct System {
    pub nats: NatsServer,
    pub redis: RedisServer,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub runtime: Runtime,
    specs: Vec<ServiceSpec>,
    services: Vec<Option<Service>>,
}

/// Index of each service in [`System`].
pub const DISPATCHER: usize = 0;
pub const INGESTER: usize = 1;
pub const JANITOR: usize = 2;
pub const API: usize = 3;

impl System {
    /// Starts NATS and Redis, then the three services, and waits until each reports ready on `/readyz`.
    pub async fn start(runtime: Runtime) -> Result<Self> {
        Self::start_with(runtime, Vec::new(), &[]).await
    }

    /// [`System::start`] with extra environment variables for the services.
    pub async fn start_with_env(
        runtime: Runtime,
        extra_env: Vec<(&'static str, String)>,
    ) -> Result<Self> {
        Self::start_with(runtime, extra_env, &[]).await
    }

    /// [`System::start`] with extra `redis-server` arguments (e.g. persistence, so Redis can be restarted).
    pub async fn start_with_redis(runtime: Runtime, redis_args: &[&str]) -> Result<Self> {
        Self::start_with(runtime, Vec::new(), redis_args).await
    }

    /// [`System::start`] with extra service environment variables and `redis-server` arguments.
    pub async fn start_with(
        runtime: Runtime,
        extra_env: Vec<(&'static str, String)>,
        redis_args: &[&str],
    ) -> Result<Self> {
        let nats_addr = match &runtime {
            Runtime::Kube {
                nats_addr: Some(a), ..
            } => *a,
            _ => std::net::Ipv4Addr::LOCALHOST,
        };
        let (nats, redis) = tokio::try_join!(
            NatsServer::start_on(nats_addr),
            RedisServer::start_with_args(redis_args)
        )?;
        let mut base_env = vec![
            ("AIRLOCK_NATS_URL", nats.url()),
            ("AIRLOCK_REDIS_URL", redis.url()),
            ("AIRLOCK_TOKEN_SECRET", SECRET.to_string()),
            ("AIRLOCK_SHUTDOWN_GRACE", "2s".to_string()),
            ("RUST_LOG", "info".to_string()),
        ];
        base_env.extend(extra_env);
        let mut dispatcher_args = runtime.backend_args(DISPATCHER);
        dispatcher_args.extend([
            // A request whose delivery died with a dispatcher comes back quickly.
            "--ack-wait".into(),
            "2s".into(),
            "--deadline-grace".into(),
            "2s".into(),
        ]);
        if let Runtime::Kube {
            dispatcher_args: extra,
            ..
        } = &runtime
        {
            dispatcher_args.extend(extra.iter().cloned());
        }
        let api_args = runtime.backend_args(API);
        let mut janitor_args = runtime.backend_args(JANITOR);
        janitor_args.extend(["--sweep-interval".into(), "2s".into()]);
        let specs = vec![
            ServiceSpec {
                binary: "airlock-dispatcher",
                args: dispatcher_args,
                envs: base_env.clone(),
                health_port: free_port()?,
            },
            ServiceSpec {
                binary: "airlock-ingester",
                args: Vec::new(),
                envs: base_env.clone(),
                health_port: free_port()?,
            },
            ServiceSpec {
                binary: "airlock-janitor",
                args: janitor_args,
                envs: base_env.clone(),
                health_port: free_port()?,
            },
            ServiceSpec {
                binary: "airlock-api",
                args: api_args,
                // A follower that left is noticed within a second.
                envs: [
                    base_env,
                    vec![("AIRLOCK_API_FOLLOW_PROBE", "500ms".to_string())],
                ]
                .concat(),
                health_port: free_port()?,
            },
        ];
        let client = nats.client().await?;
        let js = jetstream::new(client.clone());
        let mut sys = Self {
            nats,
            redis,
            client,
            js,
            subjects: Subjects::default(),
            runtime,
            specs,
            services: Vec::new(),
        };
        for i in 0..sys.specs.len() {
            sys.services.push(Some(sys.specs[i].start()?));
        }
        for i in 0..sys.specs.len() {
            sys.wait_ready(i).await?;
        }
        Ok(sys)
    }

    /// Service `i`'s `/metrics`, parsed.
    pub async fn metrics(&self, i: usize) -> Result<airlock_runtime::metrics::Samples> {
        let body = http_get_body(self.specs[i].health_port, "/metrics").await?;
        Ok(airlock_runtime::metrics::Samples::parse(&body))
    }

    /// Waits until service `i`'s `/metrics` satisfy `pred`; returns them.
    pub async fn wait_metrics(
        &self,
        i: usize,
        what: &str,
        pred: impl Fn(&airlock_runtime::metrics::Samples) -> bool,
    ) -> Result<airlock_runtime::metrics::Samples> {
        let (pred, last) = (&pred, &std::sync::Mutex::new(None));
        let r = wait_until(T, what, || async move {
            let m = self.metrics(i).await;
            let ok = m.as_ref().ok().filter(|m| pred(m)).cloned();
            *last.lock().expect("not poisoned") = Some(m);
            ok
        })
        .await;
        r.with_context(|| format!("last scrape: {:?}", last.lock().expect("not poisoned")))
    }

    /// Waits until service `i` answers 200 on `/readyz` (it set up its streams and consumers).
    pub async fn wait_ready(&self, i: usize) -> Result<()> {
        let spec = &self.specs[i];
        let port = spec.health_port;
        wait_until(T, &format!("{} to be ready", spec.binary), || async move {
            http_get_status(port, "/readyz")
                .await
                .filter(|s| *s == 200)
                .map(|_| ())
        })
        .await
    }

    /// Service `i`'s process.
    pub fn service(&mut self, i: usize) -> &mut Service {
        self.services[i].as_mut().expect("service running")
    }

    /// Kills service `i` with SIGKILL, as a crash would.
    pub async fn kill(&mut self, i: usize) -> Result<()> {
        if let Some(mut s) = self.services[i].take() {
            s.kill().await?;
        }
        Ok(())
    }

    /// Starts service `i` again with the same configuration and waits until it is ready.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i).await?;
        self.services[i] = Some(self.specs[i].start()?);
        self.wait_ready(i).await
    }

    /// Publishes a run request (any JSON, valid or not) to `airlock.runs.default` with `Nats-Msg-Id` = its
    /// `id`, and waits for the stream's acknowledgement.
    pub async fn submit(&self, request: &Value) -> Result<()> {
        let id = request["id"].as_str().context("request without an id")?;
        let mut h = async_nats::HeaderMap::new();
        h.insert(async_nats::header::NATS_MESSAGE_ID, id);
        self.js
            .publish_with_headers(
                self.subjects.runs(QUEUE),
                h,
                serde_json::to_vec(request)?.into(),
            )
            .await?
            .await
            .context("the run request was not stored")?;
        Ok(())
    }

    /// Follows `airlock.events.<id>` from the beginning.
    pub async fn events(&self, run_id: &str) -> Result<Events> {
        let stream = self.js.get_stream(STREAM_EVENTS).await?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: self.subjects.events(run_id),
                ..Default::default()
            })
            .await?;
        Ok(Events {
            run_id: run_id.to_string(),
            messages: consumer.messages().await?,
            seen: Vec::new(),
        })
    }

    /// Waits for the run's terminal lifecycle event, then for its record to be reaped (`reaped_at` is set
    /// after the event), and returns every lifecycle event seen and the record.
    pub async fn wait_terminal(&self, run_id: &str) -> Result<(Vec<LifecycleEvent>, RunRecord)> {
        let mut events = self.events(run_id).await?;
        events.until_terminal().await?;
        let lifecycle = events.lifecycle();
        let terminal = lifecycle.last().context("a terminal event")?.status;
        let record = if terminal == airlock_schemas::RunStatus::Rejected {
            // Nothing was created, so nothing is reaped.
            self.record(run_id).await?
        } else {
            self.wait_record(run_id, "reaped", |r| r.reaped_at.is_some())
                .await?
        };
        assert_eq!(
            record.status,
            Some(terminal),
            "the record agrees with the terminal event: {record:?}"
        );
        Ok((lifecycle, record))
    }

    /// The run record `airlock:run:<id>` (empty status when there is none).
    pub async fn record(&self, run_id: &str) -> Result<RunRecord> {
        let mut c = self.redis.connection().await?;
        let h: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(airlock_schemas::record::key("airlock", run_id))
            .query_async(&mut c)
            .await?;
        Ok(RunRecord::from_hash(run_id, &h))
    }

    /// Polls the record until `pred` holds.
    pub async fn wait_record(
        &self,
        run_id: &str,
        what: &str,
        pred: impl Fn(&RunRecord) -> bool,
    ) -> Result<RunRecord> {
        let pred = &pred;
        wait_until(T, &format!("run {run_id}: {what}"), || async move {
            self.record(run_id).await.ok().filter(|r| pred(r))
        })
        .await
    }

    /// Publishes a result to `airlock.results.<id>` with `token` and waits until the stream stored it.
    pub async fn publish_result(&self, run_id: &str, token: &str, body: &Value) -> Result<()> {
        let mut h = async_nats::HeaderMap::new();
        h.insert(airlock_schemas::env::RUN_TOKEN_HEADER, token);
        self.js
            .publish_with_headers(
                self.subjects.results(run_id),
                h,
                serde_json::to_vec(body)?.into(),
            )
            .await?
            .await
            .context("the result was not stored in the stream")?;
        Ok(())
    }

    /// Runs our `airlock` CLI against this system and returns its exit status and stdout.
    pub async fn cli(&self, args: &[&str]) -> Result<(std::process::ExitStatus, String)> {
        let out = tokio::process::Command::new(airlock_test_support::our_binary("airlock")?)
            .args(args)
            // No Redis URL: the CLI reaches Airlock only through the API.
            .env("AIRLOCK_NATS_URL", self.nats.url())
            .env_remove("AIRLOCK_REDIS_URL")
            .stderr(std::process::Stdio::inherit())
            .output()
            .await?;
        Ok((
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    /// How many messages of the runs stream are still waiting for, or held by, the dispatcher.
    pub async fn runs_outstanding(&self) -> Result<(u64, usize)> {
        let stream = self.js.get_stream("AIRLOCK_RUNS").await?;
        let mut c: jetstream::consumer::PullConsumer = stream
            .get_consumer(&format!("airlock-dispatcher-{QUEUE}"))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let i = c.info().await?;
        Ok((i.num_pending, i.num_ack_pending))
    }

    /// Stops every service with SIGTERM and checks each exits successfully.
    pub async fn stop(mut self) -> Result<()> {
        for (i, s) in self.services.iter_mut().enumerate() {
            if let Some(s) = s.as_mut() {
                let status = s.terminate(Duration::from_secs(20)).await?;
                if !status.success() {
                    bail!("{} exited with {status}", self.specs[i].binary);
                }
            }
        }
        Ok(())
    }
}

/// The lifecycle events of one run, read from the stream in order.
pub struct Events {
    run_id: String,
    messages: jetstream::consumer::pull::Ordered,
    /// Every message seen so far (lifecycle events and result rejections), as JSON.
    pub seen: Vec<Value>,
}

impl Events {
    /// The next message on `airlock.events.<id>`.
    pub async fn next(&mut self) -> Result<Value> {
        let m = tokio::time::timeout(T, self.messages.next())
            .await
            .with_context(|| format!("no event for run {} within {T:?}", self.run_id))?
            .context("the event stream ended")?
            .map_err(|e| anyhow::anyhow!("reading events: {e}"))?;
        let v: Value = serde_json::from_slice(&m.payload)
            .with_context(|| format!("an event that is not JSON: {:?}", m.payload))?;
        self.seen.push(v.clone());
        Ok(v)
    }

    /// Reads until a lifecycle event with `status` (e.g. `running`).
    pub async fn until_status(&mut self, status: &str) -> Result<LifecycleEvent> {
        loop {
            let v = self.next().await?;
            if v.get("status").and_then(Value::as_str) == Some(status) {
                return Ok(serde_json::from_value(v)?);
            }
        }
    }

    /// Reads until a terminal lifecycle event.
    pub async fn until_terminal(&mut self) -> Result<LifecycleEvent> {
        loop {
            let v = self.next().await?;
            if let Ok(ev) = serde_json::from_value::<LifecycleEvent>(v)
                && ev.status.is_terminal()
            {
                return Ok(ev);
            }
        }
    }

    /// Reads until a result rejection.
    pub async fn until_rejection(&mut self) -> Result<ResultRejected> {
        loop {
            let v = self.next().await?;
            if v.get("status").is_none() {
                return Ok(serde_json::from_value(v)?);
            }
        }
    }

    /// The lifecycle events seen so far.
    pub fn lifecycle(&self) -> Vec<LifecycleEvent> {
        self.seen
            .iter()
            .filter_map(|v| serde_json::from_value(v.clone()).ok())
            .collect()
    }
}

/// Checks a run's lifecycle events: statuses only move forward, each is published once, `running` was seen,
/// and the last is `terminal`. (`pending` may be skipped: the watcher can record `running` first.)
pub fn assert_forward_only(events: &[LifecycleEvent], terminal: airlock_schemas::RunStatus) {
    let statuses: Vec<_> = events.iter().map(|e| e.status).collect();
    assert!(
        statuses.windows(2).all(|w| w[0].rank() < w[1].rank()),
        "statuses move forward, once each: {statuses:?}"
    );
    assert!(
        statuses.contains(&airlock_schemas::RunStatus::Running),
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&terminal), "{statuses:?}");
}

/// Asserts a run ended `timed_out` for `DeadlineExceeded`, without a result, and that its last event says so.
pub fn assert_timed_out(events: &[LifecycleEvent], rec: &RunRecord) {
    assert_eq!(
        rec.status,
        Some(airlock_schemas::RunStatus::TimedOut),
        "{rec:?}"
    );
    assert!(
        rec.reason
            .as_deref()
            .unwrap_or_default()
            .starts_with("DeadlineExceeded"),
        "{rec:?}"
    );
    assert!(rec.result.is_none(), "{rec:?}");
    assert_eq!(
        events.last().map(|e| e.status),
        Some(airlock_schemas::RunStatus::TimedOut)
    );
}

/// A valid request running `command`.
pub fn request(id: &str, command: &[&str], deadline_seconds: u64) -> Value {
    json!({
        "id": id,
        "image": IMAGE,
        "command": command,
        "deadline_seconds": deadline_seconds,
        "metadata": { "test": id },
    })
}

/// The body of a `200` answer to `GET path` on 127.0.0.1:port.
pub async fn http_get_body(port: u16, path: &str) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8(buf)?;
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => bail!("GET {path} on port {port} answered: {text}"),
    }
}

/// The HTTP status of `GET path` on 127.0.0.1:port, or `None` when nothing answers.
pub async fn http_get_status(port: u16, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Whether a process with this pid exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Children of `pid` as (pid, command name).
pub fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head
            .split_once('(')
            .map(|(_, n)| n)
            .unwrap_or("")
            .to_string();
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push((child, name));
        }
    }
    out
}

/// Whether something accepts TCP connections on 127.0.0.1:port.
pub async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// Entries of a directory (empty when it does not exist), dot-files excluded.
pub fn dir_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the dispatcher holds no request: every request was handled and acknowledged.
pub async fn wait_until_runs_acked(sys: &System) -> Result<()> {
    wait_until(T, "every run request acknowledged", || async {
        matches!(sys.runs_outstanding().await, Ok((0, 0))).then_some(())
    })
    .await
}
