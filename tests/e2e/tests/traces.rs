//! One run is one trace: the request's `traceparent` reaches the job (`TRACEPARENT`), comes back with its
//! result, and the dispatcher, the ingester and the janitor log and export their work on the run under
//! that trace id. The services are real processes, in the local sandbox runtime and on the real test
//! cluster, exporting OTLP/HTTP to a tiny receiver in this test, on 127.0.0.1.

mod common;
mod kube_cluster;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use airlock_schemas::TraceParent;
use airlock_test_support::{NatsServer, RedisServer, free_port, our_binary, wait_until};
use anyhow::{Context, Result};
use async_nats::jetstream;
use axum::routing::post;
use common::{QUEUE, Runtime, SECRET, T, http_get_status, request, traversable_tempdir};
use tokio::process::{Child, Command};

/// Trace id of the request the test sends.
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// The bodies POSTed to `/v1/traces`.
type Received = Arc<Mutex<Vec<bytes::Bytes>>>;

/// An OTLP/HTTP receiver on 127.0.0.1 keeping every export request's body; returns its endpoint.
async fn otlp_receiver(received: Received) -> Result<String> {
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: bytes::Bytes| {
            let received = received.clone();
            async move {
                received.lock().expect("lock").push(body);
                // An empty ExportTraceServiceResponse.
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}

/// One service process whose stderr goes to a file.
struct Logged {
    _child: Child,
    log: PathBuf,
    health_port: u16,
}

fn start(binary: &str, args: &[String], envs: &[(&str, String)], dir: &Path) -> Result<Logged> {
    let log = dir.join(format!("{binary}.log"));
    let health_port = free_port()?;
    let mut cmd = Command::new(our_binary(binary)?);
    cmd.args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .env("AIRLOCK_HTTP_ADDR", format!("127.0.0.1:{health_port}"))
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true);
    Ok(Logged {
        _child: cmd.spawn().with_context(|| format!("spawning {binary}"))?,
        log,
        health_port,
    })
}

/// The service's log so far, without colour codes.
fn log_of(s: &Logged) -> String {
    let raw = std::fs::read_to_string(&s.log).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether some export request of service `name` holds a span of trace `trace_id`.
fn exported(received: &Received, name: &str, trace_id: &[u8; 16]) -> bool {
    received
        .lock()
        .expect("lock")
        .iter()
        .any(|b| contains(b, name.as_bytes()) && contains(b, trace_id))
}

/// Whether an export of service `name` holds span `span_id` of trace `trace_id` as a root span (`None`: not
/// exported yet). In OTLP's protobuf a `Span` begins with its trace id (field 1, tag 0x0a) and span id (field 2,
/// tag 0x12); a parent span id would come next as field 4 (tag 0x22), the empty trace state being omitted.
fn exported_as_root(
    received: &Received,
    name: &str,
    trace_id: &[u8; 16],
    span_id: &[u8; 8],
) -> Option<bool> {
    let mut head = vec![0x0a, 0x10];
    head.extend_from_slice(trace_id);
    head.extend_from_slice(&[0x12, 0x08]);
    head.extend_from_slice(span_id);
    let bodies = received.lock().expect("lock");
    bodies
        .iter()
        .filter(|b| contains(b, name.as_bytes()))
        .find_map(|b| {
            let at = b.windows(head.len()).position(|w| w == head.as_slice())?;
            Some(b.get(at + head.len()) != Some(&0x22))
        })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn one_run_is_one_trace_in_the_logs_and_the_otlp_export_of_dispatcher_ingester_and_janitor()
-> Result<()> {
    let dir = traversable_tempdir("airlock-e2e-traces-")?;
    let state = dir.path().join("state");
    common::local::import_test_busybox(&state.join("images"), dir.path()).await?;
    let job = r#"echo "job sees $TRACEPARENT"; printf '{"answer":1}' > "$AIRLOCK_RESULT_FILE""#;
    one_run_is_one_trace(&dir, Runtime::Local { dir: state }, job, common::IMAGE).await
}

#[tokio::test]
async fn on_kubernetes_one_run_is_one_trace_in_the_logs_and_the_otlp_export_of_dispatcher_ingester_and_janitor()
-> Result<()> {
    let cluster = kube_cluster::Cluster::new("traces").await?;
    let dir = traversable_tempdir("airlock-e2e-traces-")?;
    let job = r#"echo "job sees $TRACEPARENT"; printf '{"answer":1}' | airlock-emit"#;
    one_run_is_one_trace(&dir, cluster.runtime(), job, &cluster.image).await?;
    cluster.cleanup().await;
    Ok(())
}

/// Services of `runtime` exporting to a receiver here; a run with a traceparent and one without, each
/// running `job` (a shell script) in `image`.
async fn one_run_is_one_trace(
    dir: &tempfile::TempDir,
    runtime: Runtime,
    job: &str,
    image: &str,
) -> Result<()> {
    let received: Received = Arc::default();
    let endpoint = otlp_receiver(received.clone()).await?;
    let nats_addr = match &runtime {
        Runtime::Kube {
            nats_addr: Some(a), ..
        } => *a,
        _ => std::net::Ipv4Addr::LOCALHOST,
    };
    let (nats, redis) = tokio::try_join!(NatsServer::start_on(nats_addr), RedisServer::start())?;
    let envs = vec![
        ("AIRLOCK_NATS_URL", nats.url()),
        ("AIRLOCK_REDIS_URL", redis.url()),
        ("AIRLOCK_TOKEN_SECRET", SECRET.to_string()),
        ("AIRLOCK_SHUTDOWN_GRACE", "2s".to_string()),
        ("RUST_LOG", "info,airlock_ingester=debug".to_string()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".to_string()),
    ];
    let mut dispatcher_args = runtime.backend_args(common::DISPATCHER);
    dispatcher_args.extend(["--deadline-grace".into(), "2s".into()]);
    if let Runtime::Kube {
        dispatcher_args: extra,
        ..
    } = &runtime
    {
        dispatcher_args.extend(extra.iter().cloned());
    }
    let services = [
        start("airlock-dispatcher", &dispatcher_args, &envs, dir.path())?,
        start("airlock-ingester", &[], &envs, dir.path())?,
        start(
            "airlock-janitor",
            &runtime.backend_args(common::JANITOR),
            &envs,
            dir.path(),
        )?,
    ];
    for s in &services {
        wait_until(T, "a service to be ready", || async {
            (http_get_status(s.health_port, "/readyz").await == Some(200)).then_some(())
        })
        .await?;
    }
    let client = nats.client().await?;
    let js = jetstream::new(client.clone());
    let subjects = airlock_schemas::Subjects::default();

    // A request with a traceparent, and one without.
    let job = ["/bin/sh", "-c", job];
    for (id, tp) in [("traced-1", Some(TRACEPARENT)), ("untraced-1", None)] {
        let mut h = async_nats::HeaderMap::new();
        h.insert(async_nats::header::NATS_MESSAGE_ID, id);
        if let Some(tp) = tp {
            h.insert("traceparent", tp);
        }
        let mut req = request(id, &job, 30);
        req["image"] = serde_json::json!(image);
        let body = serde_json::to_vec(&req)?;
        js.publish_with_headers(subjects.runs(QUEUE), h, body.into())
            .await?
            .await?;
    }

    // Both run to the end and are reaped.
    let mut redis_conn = redis.connection().await?;
    let mut records = Vec::new();
    for id in ["traced-1", "untraced-1"] {
        let rec = wait_until(T, "the run to be reaped with its result", || {
            let mut c = redis_conn.clone();
            async move {
                let h: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
                    .arg(format!("airlock:run:{id}"))
                    .query_async(&mut c)
                    .await
                    .ok()?;
                let rec = airlock_schemas::record::RunRecord::from_hash(id, &h);
                (rec.reaped_at.is_some() && rec.result.is_some()).then_some(rec)
            }
        })
        .await?;
        records.push(rec);
    }
    let _ = &mut redis_conn;

    // The traced run keeps the request's trace: recorded, seen by the job, logged and exported by all three.
    let traced = &records[0];
    let recorded = TraceParent::parse(
        traced
            .traceparent
            .as_deref()
            .context("no traceparent recorded")?,
    )
    .context("the recorded traceparent is valid")?;
    assert_eq!(recorded.trace_id_hex(), TRACE_ID);
    let logs = traced.logs.as_deref().unwrap_or_default();
    assert!(
        logs.contains(&format!("job sees 00-{TRACE_ID}-")),
        "job logs: {logs}"
    );
    let trace_id: [u8; 16] = recorded.trace_id;
    for (s, line) in services
        .iter()
        .zip(["Run launched", "Result stored", "Run reaped"])
    {
        wait_until(T, "the trace id in the service's log", || async {
            log_of(s)
                .lines()
                .any(|l| {
                    l.contains(&format!("trace_id={TRACE_ID}"))
                        && l.contains("run_id=traced-1")
                        && l.contains(line)
                })
                .then_some(())
        })
        .await
        .with_context(|| format!("{}:\n{}", s.log.display(), log_of(s)))?;
    }
    for name in ["airlock-dispatcher", "airlock-ingester", "airlock-janitor"] {
        wait_until(T, "a span of the run's trace exported", || async {
            exported(&received, name, &trace_id).then_some(())
        })
        .await
        .with_context(|| format!("no span of trace {TRACE_ID} exported by {name}"))?;
    }

    // The run without a traceparent got a new trace of its own, used by the dispatcher and the janitor.
    let untraced = &records[1];
    let new = TraceParent::parse(
        untraced
            .traceparent
            .as_deref()
            .context("no traceparent recorded")?,
    )
    .context("the recorded traceparent is valid")?;
    assert_ne!(new.trace_id_hex(), TRACE_ID);
    // Its first span (the dispatcher's, whose id the record carries) is the trace's root, exported as such.
    let root = wait_until(T, "the new trace's first span exported", || async {
        exported_as_root(&received, "airlock-dispatcher", &new.trace_id, &new.span_id)
    })
    .await?;
    assert!(root, "the dispatcher's span of a new trace has no parent");
    for s in [&services[0], &services[2]] {
        let needle = format!("trace_id={}", new.trace_id_hex());
        wait_until(T, "the new trace id in the service's log", || async {
            log_of(s)
                .lines()
                .any(|l| l.contains(&needle) && l.contains("run_id=untraced-1"))
                .then_some(())
        })
        .await?;
    }
    Ok(())
}
