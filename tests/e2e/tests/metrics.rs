//! `/metrics` of all three services after an end-to-end run on Kubernetes (the real test cluster): the
//! counts match the runs the test made.

mod common;
mod kube_cluster;

use airlock_runtime::metrics::Samples;
use airlock_schemas::RunStatus;
use anyhow::Result;
use common::{DISPATCHER, INGESTER, JANITOR, QUEUE, System, request};
use serde_json::json;

/// Runs that succeed with a result.
const RUNS: usize = 3;

/// `name{labels}` of `m`.
fn v(m: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.get(name, labels)
}

#[tokio::test]
async fn every_service_serves_metrics_whose_counts_match_the_runs_made() -> Result<()> {
    let cluster = kube_cluster::Cluster::new("metrics").await?;
    let sys = System::start(cluster.runtime()).await?;
    let script = r#"echo '{"n":1}' | airlock emit"#;

    // RUNS good runs, one past its deadline, one invalid request, one to a queue nobody serves, one forged
    // result.
    let ids: Vec<String> = (0..RUNS).map(|i| format!("metrics-{i}")).collect();
    for id in &ids {
        sys.submit(&cluster.request(id, script, 60)).await?;
    }
    sys.submit(&cluster.request("metrics-slow", "sleep 60", 2))
        .await?;
    let mut bad = request("metrics-bad", &["true"], 60);
    bad["image"] = json!("");
    sys.submit(&bad).await?;
    let stray = request("metrics-stray", &["true"], 60);
    let mut h = async_nats::HeaderMap::new();
    h.insert(async_nats::header::NATS_MESSAGE_ID, "metrics-stray");
    let body = serde_json::to_vec(&stray)?.into();
    sys.js
        .publish_with_headers(sys.subjects.runs("nobody-serves-this"), h, body)
        .await?
        .await?;
    for id in &ids {
        let (_, rec) = sys.wait_terminal(id).await?;
        assert_eq!(rec.status, Some(RunStatus::Succeeded), "{rec:?}");
        sys.wait_record(id, "result", |r| r.result.is_some())
            .await?;
    }
    let (_, rec) = sys.wait_terminal("metrics-slow").await?;
    assert_eq!(rec.status, Some(RunStatus::TimedOut), "{rec:?}");
    for id in ["metrics-bad", "metrics-stray"] {
        let (_, rec) = sys.wait_terminal(id).await?;
        assert_eq!(rec.status, Some(RunStatus::Rejected), "{rec:?}");
    }
    sys.publish_result(&ids[0], "forged-token", &json!({"n": 2}))
        .await?;
    let queue = [("queue", QUEUE)];
    let consumer = format!("airlock-dispatcher-{QUEUE}");

    // Dispatcher: accepted, rejected, launched, latencies, two creates per run, nothing left.
    let d = sys
        .wait_metrics(DISPATCHER, "dispatcher metrics to settle", |m| {
            v(m, "airlock_slots_in_use", &queue) == 0.0
                && v(
                    m,
                    "airlock_consumer_ack_pending",
                    &[("consumer", &consumer)],
                ) == 0.0
        })
        .await?;
    let n = RUNS as f64;
    // Every valid request (the slow one too) was accepted, launched, and made two objects.
    let valid = n + 1.0;
    assert_eq!(v(&d, "airlock_runs_accepted_total", &queue), valid);
    let invalid = [("queue", QUEUE), ("reason", "invalid")];
    assert_eq!(v(&d, "airlock_runs_rejected_total", &invalid), 1.0);
    let unknown = [("queue", ""), ("reason", "unknown_queue")];
    assert_eq!(v(&d, "airlock_runs_rejected_total", &unknown), 1.0);
    assert_eq!(v(&d, "airlock_runs_rejected_total", &[]), 2.0);
    assert_eq!(v(&d, "airlock_runs_launched_total", &queue), valid);
    assert_eq!(
        v(&d, "airlock_dispatch_latency_seconds_count", &queue),
        valid
    );
    // Two objects per run, and the dispatcher's pod-watch Lease, created once when it starts.
    let created = [("verb", "create"), ("code", "ok")];
    assert_eq!(
        v(&d, "airlock_backend_api_calls_total", &created),
        2.0 * valid + 1.0
    );
    assert_eq!(v(&d, "airlock_backend_api_retries_total", &[]), 0.0);
    assert_eq!(
        v(&d, "airlock_consumer_pending", &[("consumer", &consumer)]),
        0.0
    );

    // Ingester: every result stored once, the forgery rejected, every message in some batch.
    let i = sys
        .wait_metrics(INGESTER, "the forged result to be rejected", |m| {
            v(m, "airlock_results_rejected_total", &[]) >= 1.0
        })
        .await?;
    assert_eq!(v(&i, "airlock_results_stored_total", &[]), n);
    let forged = [("reason", "invalid_token")];
    assert_eq!(v(&i, "airlock_results_rejected_total", &forged), 1.0);
    assert_eq!(v(&i, "airlock_results_rejected_total", &[]), 1.0);
    assert_eq!(v(&i, "airlock_ingest_batch_size_sum", &[]), n + 1.0);
    assert_eq!(
        v(
            &i,
            "airlock_consumer_pending",
            &[("consumer", "airlock-ingester")]
        ),
        0.0
    );

    // Janitor: each run reaped once with its final status, each with a reap lag from the job's finish (or
    // from its deadline timer when the pod had not finished), and each handed over by the watcher's
    // `finished` timer also with one from the watcher's observation (milliseconds).
    let j = sys
        .wait_metrics(JANITOR, "every run reaped", |m| {
            v(m, "airlock_reaps_total", &[]) >= valid
        })
        .await?;
    let succeeded = [("status", "succeeded")];
    assert_eq!(v(&j, "airlock_reaps_total", &succeeded), n);
    let timed_out = [("status", "timed_out")];
    assert_eq!(v(&j, "airlock_reaps_total", &timed_out), 1.0);
    assert_eq!(v(&j, "airlock_reaps_total", &[]), valid);
    let lag = [("from", "finish")];
    assert!(v(&j, "airlock_reap_lag_seconds_count", &lag) >= n);
    let observed = v(
        &j,
        "airlock_reap_lag_seconds_count",
        &[("from", "observed")],
    );
    assert!(
        observed >= n && observed <= v(&j, "airlock_reap_lag_seconds_count", &lag),
        "{observed} lags from an observation"
    );
    assert_eq!(
        v(&j, "airlock_reap_lag_seconds_count", &[]),
        valid + observed
    );
    let deleted = [("verb", "delete")];
    assert!(v(&j, "airlock_backend_api_calls_total", &deleted) >= 2.0 * valid);
    assert!(!j.has("airlock_runs_accepted_total") && !i.has("airlock_reaps_total"));
    sys.stop().await?;
    cluster.cleanup().await;
    Ok(())
}
