//! The whole system on Kubernetes: the three services as processes with `--runtime kube`, against the
//! Kubernetes API emulator started in this process in image mode (see `kube_cluster`: its kubelet runs the
//! job image, busybox plus our `airlock` binary, so a job publishes its result with `airlock emit` from
//! inside its image).
//!
//! # Against a real cluster
//!
//! With `AIRLOCK_TEST_KUBECONFIG=/path/to/kubeconfig` (the same switch as `dispatcher/tests/cluster.rs`) these
//! tests run against that cluster instead, each in a namespace of its own that is deleted afterwards, and the
//! emulator-only checks (object counters, schema validation of everything accepted) are skipped. Jobs there
//! run a real image, so two more variables are needed, or the tests are skipped with a message:
//! - `AIRLOCK_TEST_JOB_IMAGE`: an image with `sh` and the `airlock` binary on its `PATH` (the job runs
//!   `echo '{...}' | airlock emit`);
//! - `AIRLOCK_TEST_JOB_NATS_URL`: the URL at which pods reach the NATS server the test starts (it listens
//!   on 127.0.0.1 only, so e.g. a tunnel or port-forward into the cluster); the NetworkPolicy's NATS egress
//!   comes from `AIRLOCK_TEST_NATS_EGRESS_CIDRS` (comma-separated) when set.

mod common;
mod kube_cluster;

use airlock_kube_emulator::Kind;
use airlock_schemas::RunStatus;
use common::{System, T};
use kube_cluster::Cluster;
use serde_json::json;

#[tokio::test]
async fn on_kubernetes_a_run_succeeds_with_its_result_and_logs_and_its_pod_and_policy_are_deleted()
-> anyhow::Result<()> {
    let Some(cluster) = Cluster::new("ok").await? else {
        return Ok(());
    };
    let sys = System::start(cluster.runtime()).await?;
    let script = format!(
        r#"echo "hello from $AIRLOCK_RUN_ID"; echo '{{"answer":42}}' | {} emit"#,
        cluster.airlock
    );
    let mut req = cluster.request("kube-ok-1", &script, 60);
    req["labels"] = json!({ "team": "e2e" });
    req["resources"] =
        json!({ "requests": { "cpu": "50m", "memory": "32Mi" }, "limits": { "memory": "64Mi" } });
    sys.submit(&req).await?;
    let (events, rec) = sys.wait_terminal("kube-ok-1").await?;
    assert_eq!(rec.status, Some(RunStatus::Succeeded), "{rec:?}");
    common::assert_forward_only(&events, RunStatus::Succeeded);
    let rec = sys
        .wait_record("kube-ok-1", "result", |r| r.result.is_some())
        .await?;
    assert_eq!(rec.result, Some(json!({"answer": 42})));
    assert_eq!(rec.exit_code, Some(0));
    assert!(rec.result_rejections.is_empty(), "{rec:?}");
    let logs = rec.logs.as_deref().unwrap_or_default();
    assert!(logs.contains("hello from kube-ok-1"), "logs: {logs:?}");

    cluster.wait_objects_gone("kube-ok-1").await?;
    if let Some(emu) = &cluster.emu {
        assert_eq!(emu.create_count(Kind::Pod), 1, "one pod");
        assert_eq!(emu.create_count(Kind::NetworkPolicy), 1, "one policy");
        assert!(emu.objects(Kind::Pod).is_empty() && emu.objects(Kind::NetworkPolicy).is_empty());
    }
    cluster.validate_accepted_objects();
    sys.stop().await?;
    cluster.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn on_kubernetes_a_job_past_its_deadline_ends_timed_out_and_is_deleted() -> anyhow::Result<()>
{
    let Some(cluster) = Cluster::new("deadline").await? else {
        return Ok(());
    };
    let sys = System::start(cluster.runtime()).await?;
    sys.submit(&cluster.request("kube-slow-1", "echo started; sleep 60", 2))
        .await?;
    let (events, rec) = sys.wait_terminal("kube-slow-1").await?;
    common::assert_timed_out(&events, &rec);
    cluster.wait_objects_gone("kube-slow-1").await?;
    cluster.validate_accepted_objects();
    sys.stop().await?;
    cluster.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn on_kubernetes_a_cancelled_run_ends_cancelled_and_its_pod_is_deleted() -> anyhow::Result<()>
{
    let Some(cluster) = Cluster::new("cancel").await? else {
        return Ok(());
    };
    let sys = System::start(cluster.runtime()).await?;
    let mut events = sys.events("kube-cancel-1").await?;
    sys.submit(&cluster.request("kube-cancel-1", "sleep 60", 120))
        .await?;
    events.until_status("running").await?;
    let reply = sys
        .client
        .request(
            sys.subjects.cancel("kube-cancel-1"),
            r#"{"reason":"no longer needed"}"#.into(),
        )
        .await?;
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload)?;
    assert_eq!(reply, json!({"ok": true}));
    let terminal = events.until_terminal().await?;
    assert_eq!(terminal.status, RunStatus::Cancelled);
    assert_eq!(terminal.reason.as_deref(), Some("no longer needed"));
    cluster.wait_objects_gone("kube-cancel-1").await?;
    cluster.validate_accepted_objects();
    sys.stop().await?;
    cluster.cleanup().await;
    Ok(())
}

/// Emulator only (the job waits for the test on loopback): `airlock logs -f` relays the pod's log as it
/// is written and ends when the run ends; the job delivers its result with `airlock-emit`.
#[tokio::test]
async fn on_kubernetes_logs_follow_streams_a_running_pods_lines_and_airlock_emit_delivers_its_result()
-> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let Some(cluster) = Cluster::new("follow").await? else {
        return Ok(());
    };
    if cluster.emu.is_none() {
        eprintln!("SKIPPED on a real cluster: the job waits for a file on the test's host");
        cluster.cleanup().await;
        return Ok(());
    }
    let sys = System::start(cluster.runtime()).await?;
    // The pod sees only its image, but shares the host's loopback (the emulator's kubelet runs pods in the
    // host network): the job blocks on a connection to the test until the test closes it.
    let gate = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let script = format!(
        r#"echo line-one; nc 127.0.0.1 {} </dev/null; echo line-two; printf '{{"answer":9}}' | airlock-emit"#,
        gate.local_addr()?.port()
    );
    let req = cluster.request("kube-follow-1", &script, 60);
    sys.submit(&req).await?;
    sys.wait_record("kube-follow-1", "running", |r| {
        r.status == Some(RunStatus::Running)
    })
    .await?;

    let mut follow = tokio::process::Command::new(airlock_test_support::our_binary("airlock")?)
        .args(["logs", "-f", "kube-follow-1"])
        .env("AIRLOCK_NATS_URL", sys.nats.url())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(follow.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(T, lines.next_line()).await??;
    assert_eq!(first.as_deref(), Some("line-one"));
    assert_eq!(
        sys.record("kube-follow-1").await?.status,
        Some(RunStatus::Running)
    );
    let (conn, _) = tokio::time::timeout(T, gate.accept()).await??;
    drop(conn);
    let mut rest = Vec::new();
    while let Some(l) = tokio::time::timeout(T, lines.next_line()).await?? {
        rest.push(l);
    }
    assert!(rest.iter().any(|l| l == "line-two"), "{rest:?}");
    let status = tokio::time::timeout(T, follow.wait()).await??;
    assert!(status.success(), "logs -f ended {status}");

    let rec = sys
        .wait_record("kube-follow-1", "result", |r| r.result.is_some())
        .await?;
    assert_eq!(rec.result, Some(json!({"answer": 9})));
    assert_eq!(rec.status, Some(RunStatus::Succeeded));
    sys.stop().await?;
    cluster.cleanup().await;
    Ok(())
}
