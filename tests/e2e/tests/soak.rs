//! The soak: a steady mixed load on the whole system in Kubernetes mode (the real test cluster), with random
//! SIGKILLs of every service and of nats-server and redis-server, then checks that nothing was lost,
//! duplicated or leaked, and prints the figures (see `docs/RELIABILITY.md`).
//!
//! Not part of the default run (ignored). Run it with:
//!
//! ```text
//! AIRLOCK_SOAK_MINUTES=10 cargo nextest run -p airlock-e2e --run-ignored only -E 'test(soak)' --no-capture
//! ```
//!
//! `AIRLOCK_SOAK_MINUTES` (default 10) is how long load and kills go on; `AIRLOCK_SOAK_INTERVAL_MS`
//! (default 1000) the time between two submissions. A watch of the sandbox namespace's pods records every
//! pod whose job container started (by uid), which is how "each job ran exactly once" is checked.

mod common;
mod kube_cluster;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_schemas::{LifecycleEvent, RunStatus, Subjects, token};
use anyhow::{Context, Result};
use async_nats::jetstream;
use common::{DISPATCHER, INGESTER, JANITOR, System};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
/// Forged results published for each `Forged` run.
const FORGERIES: usize = 20;

/// What a soak job does, and so how its run must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Job {
    Success,
    Failure,
    Deadline,
    Cancel,
    Forged,
}

impl Job {
    const ALL: [Job; 5] = [
        Job::Success,
        Job::Failure,
        Job::Deadline,
        Job::Cancel,
        Job::Forged,
    ];

    fn expected(self) -> RunStatus {
        match self {
            Job::Success | Job::Forged => RunStatus::Succeeded,
            Job::Failure => RunStatus::Failed,
            Job::Deadline => RunStatus::TimedOut,
            Job::Cancel => RunStatus::Cancelled,
        }
    }
}

/// A small deterministic generator (xorshift), seeded from the clock; the seed is printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The request of run `id` doing `job` in `image`; it publishes its result with retries (NATS may be
/// down for a moment when it finishes).
fn job_request(cluster: &kube_cluster::Cluster, id: &str, job: Job, n: usize) -> Value {
    let publish = format!(
        r#"for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do echo '{{"n":{n}}}' | airlock emit && exit 0; sleep 1; done; exit 1"#
    );
    let (script, deadline) = match job {
        Job::Success | Job::Forged => (publish, 300),
        Job::Failure => ("exit 3".to_string(), 300),
        Job::Deadline => ("sleep 60".to_string(), 3),
        Job::Cancel => ("sleep 60".to_string(), 300),
    };
    cluster.request(id, &script, deadline)
}

/// Run id → uids of its pods whose job container started, from a watch of the namespace's pods.
type Starts = Arc<Mutex<HashMap<String, HashSet<String>>>>;

/// Watches the pods of `ns` until dropped, recording into `starts` each pod whose container ran.
fn watch_starts(client: kube::Client, ns: &str, starts: Starts) -> tokio::task::JoinHandle<()> {
    use kube::runtime::{WatchStreamExt as _, watcher};
    let pods: Api<Pod> = Api::namespaced(client, ns);
    tokio::spawn(async move {
        let mut s = std::pin::pin!(watcher(pods, watcher::Config::default()).applied_objects());
        while let Some(ev) = s.next().await {
            let Ok(pod) = ev else { continue };
            let started = pod
                .status
                .as_ref()
                .and_then(|st| st.container_statuses.as_ref())
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.state
                            .as_ref()
                            .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
                    })
                });
            let run = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(airlock_schemas::labels::RUN_ID).cloned());
            if let (true, Some(run), Some(uid)) = (started, run, pod.metadata.uid.clone()) {
                starts
                    .lock()
                    .expect("lock")
                    .entry(run)
                    .or_default()
                    .insert(uid);
            }
        }
    })
}

/// Publishes `body` on `subject` with `headers`, retrying while NATS is away.
async fn publish_retrying(
    js: &jetstream::Context,
    subject: String,
    headers: async_nats::HeaderMap,
    body: Vec<u8>,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let attempt = async {
            js.publish_with_headers(subject.clone(), headers.clone(), body.clone().into())
                .await?
                .await?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(())) => return Ok(()),
            _ if start.elapsed() < Duration::from_secs(120) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(Err(e)) => return Err(e.context(format!("publishing to {subject}"))),
            Err(_) => anyhow::bail!("publishing to {subject} timed out"),
        }
    }
}

/// Asks the janitor to cancel `id` until it answers `ok` (the run may not be recorded yet, or the janitor
/// or NATS may be away).
async fn cancel_retrying(client: &async_nats::Client, subjects: &Subjects, id: &str) -> Result<()> {
    let start = Instant::now();
    loop {
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            client.request(subjects.cancel(id), r#"{"reason":"soak"}"#.into()),
        )
        .await;
        if let Ok(Ok(m)) = reply
            && serde_json::from_slice::<Value>(&m.payload)
                .ok()
                .and_then(|v| v.get("ok").and_then(Value::as_bool))
                == Some(true)
        {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(180),
            "cancel of {id} never accepted"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Submits one job of each kind in turn, every `interval`, until `until`; returns what was submitted.
async fn load(
    js: jetstream::Context,
    client: async_nats::Client,
    until: Instant,
    interval: Duration,
    requests: impl Fn(&str, Job, usize) -> Value,
) -> Result<Vec<(String, Job)>> {
    let subjects = Subjects::default();
    let mut submitted = Vec::new();
    let mut side = tokio::task::JoinSet::new();
    let mut n = 0;
    while Instant::now() < until {
        let job = Job::ALL[n % Job::ALL.len()];
        let id = format!("soak-{n}");
        let body = serde_json::to_vec(&requests(&id, job, n))?;
        let mut h = async_nats::HeaderMap::new();
        h.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        publish_retrying(&js, subjects.runs(common::QUEUE), h, body).await?;
        match job {
            Job::Cancel => {
                let (client, subjects, id) = (client.clone(), subjects.clone(), id.clone());
                side.spawn(async move { cancel_retrying(&client, &subjects, &id).await });
            }
            Job::Forged => {
                let (js, subjects, id) = (js.clone(), subjects.clone(), id.clone());
                side.spawn(async move {
                    let forged = token::sign(b"not-the-soak-secret-0123456789", &id);
                    for i in 0..FORGERIES {
                        let mut h = async_nats::HeaderMap::new();
                        h.insert(airlock_schemas::env::RUN_TOKEN_HEADER, forged.as_str());
                        let body = format!(r#"{{"forged":{i}}}"#).into_bytes();
                        publish_retrying(&js, subjects.results(&id), h, body).await?;
                    }
                    Ok(())
                });
            }
            _ => {}
        }
        submitted.push((id, job));
        n += 1;
        tokio::time::sleep(interval).await;
    }
    while let Some(r) = side.join_next().await {
        r??;
    }
    Ok(submitted)
}

/// Status and `reaped_at` of every run, in one pipelined read.
async fn heads(sys: &System, ids: &[String]) -> Result<Vec<(Option<String>, bool)>> {
    let mut c = sys.redis.connection().await?;
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("HMGET")
            .arg(airlock_schemas::record::key("airlock", id))
            .arg("status")
            .arg("reaped_at");
    }
    let v: Vec<(Option<String>, Option<String>)> = pipe.query_async(&mut c).await?;
    Ok(v.into_iter().map(|(s, r)| (s, r.is_some())).collect())
}

/// Every lifecycle event in `AIRLOCK_EVENTS`, by run.
async fn lifecycle_events(sys: &System) -> Result<HashMap<String, Vec<LifecycleEvent>>> {
    let stream = sys.js.get_stream("AIRLOCK_EVENTS").await?;
    let mut c: jetstream::consumer::PullConsumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: "airlock.events.>".into(),
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let mut left = c.info().await?.num_pending;
    let mut out: HashMap<String, Vec<LifecycleEvent>> = HashMap::new();
    while left > 0 {
        let mut batch = c.fetch().max_messages(1000).messages().await?;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!(e))?;
            left -= 1;
            if let Ok(ev) = serde_json::from_slice::<LifecycleEvent>(&m.payload) {
                out.entry(ev.run_id.clone()).or_default().push(ev);
            }
        }
    }
    Ok(out)
}

async fn stream_messages(sys: &System, name: &str) -> Result<u64> {
    let mut s = sys.js.get_stream(name).await?;
    Ok(s.info().await?.state.messages)
}

#[tokio::test]
#[ignore = "soak: minutes of load and kills; run with --run-ignored only -E 'test(soak)'"]
async fn soak_mixed_jobs_under_random_kills_end_exactly_once_and_nothing_grows_without_bound()
-> Result<()> {
    let minutes: f64 = env_or("AIRLOCK_SOAK_MINUTES", 10.0);
    let interval = Duration::from_millis(env_or("AIRLOCK_SOAK_INTERVAL_MS", 1000));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    eprintln!("soak: {minutes} min, a job every {interval:?}, seed {seed}");

    let cluster = Arc::new(kube_cluster::Cluster::new("soak").await?);
    let mut sys = System::start_with_redis(
        cluster.runtime(),
        &["--appendonly", "yes", "--appendfsync", "always"],
    )
    .await?;
    let starts: Starts = Arc::default();
    let watch = watch_starts(cluster.client.clone(), &cluster.ns, starts.clone());

    let started = Instant::now();
    let until = started + Duration::from_secs_f64(minutes * 60.0);
    let requests = {
        let cluster = cluster.clone();
        move |id: &str, job: Job, n: usize| job_request(&cluster, id, job, n)
    };
    let load = tokio::spawn(load(
        sys.js.clone(),
        sys.client.clone(),
        until,
        interval,
        requests,
    ));

    // Chaos: one component at a time, SIGKILLed and started again on the same port and state.
    let names = [
        "dispatcher",
        "ingester",
        "janitor",
        "nats-server",
        "redis-server",
    ];
    let mut kills: BTreeMap<&str, u32> = BTreeMap::new();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(3_000 + rng.below(9_000))).await;
        if Instant::now() >= until {
            break;
        }
        let victim = rng.below(names.len() as u64) as usize;
        let down = Duration::from_millis(rng.below(2_000));
        match victim {
            0..=2 => {
                let i = [DISPATCHER, INGESTER, JANITOR][victim];
                sys.kill(i).await?;
                tokio::time::sleep(down).await;
                sys.restart(i).await?;
            }
            3 => {
                sys.nats.stop().await?;
                tokio::time::sleep(down).await;
                sys.nats.restart().await?;
            }
            _ => {
                sys.redis.stop().await?;
                tokio::time::sleep(down).await;
                sys.redis.restart().await?;
            }
        }
        *kills.entry(names[victim]).or_default() += 1;
    }
    let submitted = load.await??;
    let load_done = started.elapsed();
    eprintln!(
        "soak: load over after {load_done:?}: {} runs submitted; kills {kills:?}",
        submitted.len()
    );

    // Every run ends and is reaped.
    let ids: Vec<String> = submitted.iter().map(|(id, _)| id.clone()).collect();
    let settle = Instant::now();
    let mut last = Vec::new();
    while settle.elapsed() < Duration::from_secs(600) {
        last = heads(&sys, &ids).await.unwrap_or_default();
        let open = last
            .iter()
            .filter(|(s, reaped)| {
                !(s.as_deref()
                    .and_then(RunStatus::parse)
                    .is_some_and(RunStatus::is_terminal)
                    && *reaped)
            })
            .count();
        if open == 0 && !last.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let settled_after = settle.elapsed();

    // Checks, collected so every figure is printed before failing.
    let mut problems: Vec<String> = Vec::new();
    watch.abort();
    let starts: HashMap<String, usize> = starts
        .lock()
        .expect("lock")
        .iter()
        .map(|(run, uids)| (run.clone(), uids.len()))
        .collect();
    let events = lifecycle_events(&sys).await?;
    let mut by_status: BTreeMap<String, u32> = BTreeMap::new();
    let mut per_kind: BTreeMap<Job, (u32, u32)> = BTreeMap::new();
    let mut conn = sys.redis.connection().await?;
    for ((id, job), (status, reaped)) in submitted.iter().zip(&last) {
        let status = status.clone().unwrap_or_else(|| "none".into());
        *by_status.entry(status.clone()).or_default() += 1;
        let e = per_kind.entry(*job).or_default();
        e.0 += 1;
        if status != job.expected().as_str() || !reaped {
            problems.push(format!(
                "{id} ({job:?}) ended {status} (reaped: {reaped}), expected {}",
                job.expected()
            ));
            continue;
        }
        e.1 += 1;
        let terminal: Vec<&LifecycleEvent> = events
            .get(id)
            .map(|v| v.iter().filter(|e| e.status.is_terminal()).collect())
            .unwrap_or_default();
        if terminal.len() != 1 {
            problems.push(format!("{id}: {} terminal events", terminal.len()));
        }
        let started_n = starts.get(id).copied().unwrap_or(0);
        let ok = match job {
            Job::Cancel => started_n <= 1,
            _ => started_n == 1,
        };
        if !ok {
            problems.push(format!("{id} ({job:?}): the job started {started_n} times"));
        }
        if matches!(job, Job::Success | Job::Forged) {
            let rec = sys.record(id).await?;
            let n: usize = id.trim_start_matches("soak-").parse()?;
            if rec.result != Some(json!({ "n": n })) {
                problems.push(format!("{id}: result {:?}", rec.result));
            }
        }
    }

    // Nothing grows without bound.
    let zcard = |key: &'static str| redis::cmd("ZCARD").arg(key).clone();
    let slots_all: u64 = zcard("airlock:slots:all").query_async(&mut conn).await?;
    let slots_q: u64 = zcard("airlock:slots:queue:default")
        .query_async(&mut conn)
        .await?;
    let active: u64 = redis::cmd("SCARD")
        .arg("airlock:runs:active")
        .query_async(&mut conn)
        .await?;
    let keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await?;
    let mut other_keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await?;
    other_keys.retain(|k| !k.starts_with("airlock:run:"));
    other_keys.sort();
    let claims: Vec<String> = redis::cmd("KEYS")
        .arg("airlock:janitor:claim:*")
        .query_async(&mut conn)
        .await?;
    let runs = ListParams::default().labels(airlock_schemas::labels::RUN_ID);
    let pod_api = Api::<Pod>::namespaced(cluster.client.clone(), &cluster.ns);
    // Pods reaped last may still be in their termination grace: deleted, not leaked. Give them the grace.
    let _ =
        airlock_test_support::wait_until(Duration::from_secs(60), "reaped pods to go", || async {
            pod_api
                .list(&runs)
                .await
                .ok()
                .filter(|l| {
                    l.items
                        .iter()
                        .all(|p| p.metadata.deletion_timestamp.is_none())
                        && l.items.is_empty()
                })
                .map(|_| ())
        })
        .await;
    let pods = pod_api.list(&runs).await?.items.len();
    let policies = Api::<NetworkPolicy>::namespaced(cluster.client.clone(), &cluster.ns)
        .list(&runs)
        .await?
        .items
        .len();
    let jobs_started: usize = starts.values().sum();
    let streams = [
        ("AIRLOCK_RUNS", stream_messages(&sys, "AIRLOCK_RUNS").await?),
        (
            "AIRLOCK_RESULTS",
            stream_messages(&sys, "AIRLOCK_RESULTS").await?,
        ),
        (
            "AIRLOCK_TIMERS",
            stream_messages(&sys, "AIRLOCK_TIMERS").await?,
        ),
        (
            "AIRLOCK_EVENTS",
            stream_messages(&sys, "AIRLOCK_EVENTS").await?,
        ),
    ];
    let (outstanding, in_flight) = sys.runs_outstanding().await?;

    eprintln!("\n=== soak figures ===");
    eprintln!("duration of load: {load_done:?}; settled {settled_after:?} later");
    eprintln!("seed: {seed}");
    eprintln!("kills (SIGKILL, restarted on the same port and state): {kills:?}");
    eprintln!("runs submitted: {}", submitted.len());
    for (job, (n, right)) in &per_kind {
        eprintln!(
            "  {job:?}: {n} submitted, {right} ended {} and were reaped",
            job.expected()
        );
    }
    eprintln!("final statuses: {by_status:?}");
    eprintln!(
        "jobs started: {jobs_started} (distinct runs {})",
        starts.len()
    );
    eprintln!(
        "slots held: all {slots_all}, queue {slots_q}; active set: {active}; janitor claims: {}",
        claims.len()
    );
    eprintln!(
        "redis keys: {keys} (run records: {}); others: {other_keys:?}",
        submitted.len()
    );
    eprintln!("pods left: {pods}; policies left: {policies}");
    eprintln!("runs consumer: {outstanding} pending, {in_flight} unacknowledged");
    for (name, n) in &streams {
        eprintln!("stream {name}: {n} messages");
    }
    eprintln!("problems: {}", problems.len());
    for p in problems.iter().take(30) {
        eprintln!("  {p}");
    }

    let mut leaks = Vec::new();
    if slots_all + slots_q + active > 0 || !claims.is_empty() {
        leaks.push("slots, active runs or claims left");
    }
    // Besides the records: the listing indexes (all, the one queue, one per status), nothing per run.
    let bounded = |k: &String| {
        k == "airlock:idx:all"
            || k == "airlock:idx:queue:default"
            || k.strip_prefix("airlock:idx:status:")
                .is_some_and(|st| RunStatus::parse(st).is_some())
    };
    if !other_keys.iter().all(bounded) {
        leaks.push("Redis keys beyond the run records and the listing indexes");
    }
    if jobs_started > submitted.len() {
        leaks.push("more jobs started than runs");
    }
    if pods + policies > 0 {
        leaks.push("pods or policies left");
    }
    if streams[0].1 + streams[1].1 > 0 || outstanding + in_flight as u64 > 0 {
        leaks.push("requests or results left in the work queues");
    }
    if streams[3].1 > submitted.len() as u64 * 64 {
        leaks.push("more events than the per-run bound allows");
    }
    sys.stop().await.context("stopping the services")?;
    if let Ok(c) = Arc::try_unwrap(cluster) {
        c.cleanup().await;
    }
    anyhow::ensure!(
        problems.is_empty() && leaks.is_empty(),
        "{} problems, leaks: {leaks:?}",
        problems.len()
    );
    Ok(())
}
