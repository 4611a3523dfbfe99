//! The whole system with the local sandbox runtime: `airlock-dispatcher --runtime local`, `airlock-ingester`
//! and `airlock-janitor --runtime local` as processes sharing one state directory, real NATS and Redis.

mod common;

use airlock_schemas::RunStatus;
use airlock_test_support::wait_until;
use common::local::{gated, open_gate, runs_dir};
use common::{DISPATCHER, Runtime, SECRET, System, T, dir_entries, request, traversable_tempdir};
use serde_json::json;

/// A job that writes `{"answer":42}` as its result once the test opens its gate ([`open_gate`]: nothing of
/// the host is visible in the sandbox but its result file), after a line of output.
fn gated_job() -> String {
    gated(
        r#"echo "working on $AIRLOCK_RUN_ID""#,
        r#"printf '{"answer":42}' > "$AIRLOCK_RESULT_FILE""#,
    )
}

async fn local_system() -> anyhow::Result<(System, tempfile::TempDir)> {
    common::local::local_system("airlock-e2e-local-", &[]).await
}

#[tokio::test]
async fn a_submitted_run_succeeds_with_its_result_and_logs_and_its_sandbox_is_reaped()
-> anyhow::Result<()> {
    let (sys, dir) = local_system().await?;
    let mut events = sys.events("ok-1").await?;
    sys.submit(&request(
        "ok-1",
        &[
            "/bin/sh",
            "-c",
            r#"echo "hello from $AIRLOCK_RUN_ID"; printf '{"answer":42}' > "$AIRLOCK_RESULT_FILE""#,
        ],
        30,
    ))
    .await?;
    let terminal = events.until_terminal().await?;
    assert_eq!(terminal.status, RunStatus::Succeeded);
    assert_eq!(terminal.exit_code, Some(0));
    assert_eq!(
        terminal.metadata,
        Some(json!({"test": "ok-1"})),
        "metadata is echoed"
    );
    common::assert_forward_only(&events.lifecycle(), RunStatus::Succeeded);

    let rec = sys
        .wait_record("ok-1", "result stored and reaped", |r| {
            r.result.is_some() && r.reaped_at.is_some()
        })
        .await?;
    assert_eq!(rec.status, Some(RunStatus::Succeeded));
    assert_eq!(rec.result, Some(json!({"answer": 42})));
    assert_eq!(rec.exit_code, Some(0));
    assert!(rec.result_rejections.is_empty(), "{rec:?}");
    let logs = rec.logs.as_deref().unwrap_or_default();
    assert!(logs.contains("hello from ok-1"), "logs: {logs:?}");
    for t in [&rec.submitted_at, &rec.started_at, &rec.finished_at] {
        assert!(t.is_some(), "timestamps recorded: {rec:?}");
    }
    assert!(
        dir_entries(&runs_dir(&dir)).is_empty(),
        "the sandbox directory is reaped: {:?}",
        dir_entries(&runs_dir(&dir))
    );
    sys.stop().await
}

#[tokio::test]
async fn a_run_past_its_deadline_is_killed_and_ends_timed_out() -> anyhow::Result<()> {
    let (sys, dir) = local_system().await?;
    sys.submit(&request("slow-1", &["sleep", "60"], 1)).await?;
    let (events, rec) = sys.wait_terminal("slow-1").await?;
    common::assert_timed_out(&events, &rec);
    assert!(dir_entries(&runs_dir(&dir)).is_empty());
    sys.stop().await
}

#[tokio::test]
async fn an_invalid_request_is_rejected_with_every_reason_and_nothing_runs() -> anyhow::Result<()> {
    let (sys, dir) = local_system().await?;
    sys.submit(&json!({
        "id": "bad-1",
        "image": "",
        "command": ["true"],
        "env": { "AIRLOCK_RUN_TOKEN": "mine" },
        "labels": { "airlock.dev/run-id": "someone-else" },
        "deadline_seconds": 0,
        "egress": ["the-internet"],
    }))
    .await?;
    let (events, rec) = sys.wait_terminal("bad-1").await?;
    assert_eq!(rec.status, Some(RunStatus::Rejected));
    let reason = rec.reason.clone().unwrap_or_default();
    for expected in [
        "image: required",
        "env.AIRLOCK_RUN_TOKEN: reserved prefix",
        "labels.airlock.dev/run-id: reserved label",
        "deadline_seconds: must be at least 1",
        "egress",
    ] {
        assert!(
            reason.contains(expected),
            "{expected:?} missing from {reason:?}"
        );
    }
    assert_eq!(events.len(), 1, "one event: {events:?}");
    assert_eq!(events[0].reason.as_deref(), Some(reason.as_str()));
    assert!(rec.started_at.is_none() && rec.result.is_none());
    assert!(
        dir_entries(&runs_dir(&dir)).is_empty(),
        "nothing was launched"
    );
    common::wait_until_runs_acked(&sys).await?;
    sys.stop().await
}

#[tokio::test]
async fn a_cancelled_run_is_stopped_and_ends_cancelled() -> anyhow::Result<()> {
    let (sys, dir) = local_system().await?;
    let mut events = sys.events("cancel-1").await?;
    sys.submit(&request("cancel-1", &["sleep", "60"], 120))
        .await?;
    events.until_status("running").await?;

    // Through the CLI (the API's `cancel`, which records the same cancel timer as airlock.cancel.<id>).
    let (status, out) = sys.cli(&["cancel", "cancel-1", "--output", "json"]).await?;
    assert!(status.success(), "airlock cancel: {status} {out}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(out.trim())?,
        json!({"id": "cancel-1", "status": "running"})
    );

    let terminal = events.until_terminal().await?;
    assert_eq!(terminal.status, RunStatus::Cancelled);
    let rec = sys
        .wait_record("cancel-1", "reaped", |r| r.reaped_at.is_some())
        .await?;
    assert_eq!(rec.status, Some(RunStatus::Cancelled));
    assert!(
        dir_entries(&runs_dir(&dir)).is_empty(),
        "the sandbox is gone"
    );

    // A second cancel, as a raw request, is refused: the run is over.
    let reply = sys
        .client
        .request(sys.subjects.cancel("cancel-1"), "".into())
        .await?;
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload)?;
    assert_eq!(reply["ok"], json!(false), "{reply}");
    sys.stop().await
}

#[tokio::test]
async fn a_forged_result_is_rejected_and_the_genuine_result_stays() -> anyhow::Result<()> {
    let (sys, dir) = local_system().await?;
    let req = request("forged-1", &["/bin/sh", "-c", &gated_job()], 60);
    let mut events = sys.events("forged-1").await?;
    sys.submit(&req).await?;
    events.until_status("running").await?;

    // While the job runs: a result with a made-up token, and one with a genuine token of another run.
    sys.publish_result("forged-1", "00ff", &json!({"answer": 0}))
        .await?;
    let r1 = events.until_rejection().await?;
    assert!(r1.reason.starts_with("invalid token"), "{r1:?}");
    let other = airlock_schemas::token::sign(SECRET.as_bytes(), "some-other-run");
    sys.publish_result("forged-1", &other, &json!({"answer": 1}))
        .await?;
    let r2 = events.until_rejection().await?;
    assert!(r2.reason.starts_with("invalid token"), "{r2:?}");
    assert!(
        sys.record("forged-1").await?.result.is_none(),
        "nothing stored"
    );

    open_gate(&dir, "forged-1", 1).await?;
    let terminal = events.until_terminal().await?;
    assert_eq!(terminal.status, RunStatus::Succeeded);
    sys.wait_record("forged-1", "result", |r| {
        r.result.is_some() && r.reaped_at.is_some()
    })
    .await?;

    // After the genuine result: another forgery changes nothing.
    sys.publish_result("forged-1", "not-hex", &json!({"answer": 2}))
        .await?;
    events.until_rejection().await?;
    let rec = sys
        .wait_record("forged-1", "three rejections recorded", |r| {
            r.result_rejections.len() == 3
        })
        .await?;
    assert_eq!(rec.result, Some(json!({"answer": 42})), "{rec:?}");
    assert_eq!(rec.status, Some(RunStatus::Succeeded));
    for r in &rec.result_rejections {
        assert!(r.starts_with("invalid token"), "{rec:?}");
    }
    sys.stop().await
}

#[tokio::test]
async fn a_dispatcher_killed_mid_flight_and_restarted_adopts_its_runs_which_run_exactly_once()
-> anyhow::Result<()> {
    let (mut sys, dir) = local_system().await?;
    let ids: Vec<String> = (0..8).map(|i| format!("crash-{i}")).collect();
    let mut all_events = Vec::new();
    for id in &ids {
        let mut events = sys.events(id).await?;
        sys.submit(&request(id, &["/bin/sh", "-c", &gated_job()], 60))
            .await?;
        events.until_status("running").await?;
        all_events.push(events);
    }

    // The jobs wait at their gates; the dispatcher dies. Each run's supervisor process keeps it going.
    sys.kill(DISPATCHER).await?;
    // Half of the jobs finish while no dispatcher runs, the other half after it is back: the restarted one
    // adopts all of them and publishes their results.
    let (early, late) = ids.split_at(ids.len() / 2);
    for id in early {
        open_gate(&dir, id, 1).await?;
        let status_file = runs_dir(&dir).join(id).join("status.json");
        wait_until(T, "the job to finish", || async {
            let status: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&status_file).ok()?).ok()?;
            (status["phase"] == "Succeeded").then_some(())
        })
        .await?;
    }
    sys.restart(DISPATCHER).await?;
    for id in late {
        open_gate(&dir, id, 1).await?;
    }

    for (id, events) in ids.iter().zip(all_events.iter_mut()) {
        let terminal = events.until_terminal().await?;
        assert_eq!(terminal.status, RunStatus::Succeeded, "{:?}", events.seen);
        let rec = sys
            .wait_record(id, "result stored and reaped", |r| {
                r.result.is_some() && r.reaped_at.is_some()
            })
            .await?;
        assert_eq!(rec.result, Some(json!({"answer":42})));
        assert!(rec.result_rejections.is_empty(), "{rec:?}");
        assert_eq!(
            rec.attempt,
            Some(1),
            "the run was not dispatched again: {rec:?}"
        );
        let logs = rec.logs.clone().unwrap_or_default();
        assert_eq!(
            logs.matches(&format!("working on {id}")).count(),
            1,
            "the job ran exactly once: {rec:?}"
        );
        let terminals = events
            .lifecycle()
            .iter()
            .filter(|e| e.status.is_terminal())
            .count();
        assert_eq!(terminals, 1, "one terminal event: {:?}", events.seen);
    }
    common::wait_until_runs_acked(&sys).await?;
    assert!(
        dir_entries(&runs_dir(&dir)).is_empty(),
        "no sandbox is left: {:?}",
        dir_entries(&runs_dir(&dir))
    );
    sys.stop().await
}

#[tokio::test]
async fn a_run_whose_supervisor_process_dies_is_detected_lost_and_dispatched_again()
-> anyhow::Result<()> {
    let (sys, dir) = local_system().await?;
    let req = request("lost-1", &["/bin/sh", "-c", &gated_job()], 60);
    let mut events = sys.events("lost-1").await?;
    sys.submit(&req).await?;
    events.until_status("running").await?;
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(runs_dir(&dir).join("lost-1/status.json"))?)?;
    let supervisor = status["supervisor_pid"].as_u64().expect("supervisor pid");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &supervisor.to_string()])
        .status()?;
    assert!(killed.success());
    open_gate(&dir, "lost-1", 2).await?;
    let terminal = events.until_terminal().await?;
    assert_eq!(terminal.status, RunStatus::Succeeded, "{:?}", events.seen);
    let rec = sys
        .wait_record("lost-1", "result stored and reaped", |r| {
            r.result.is_some() && r.reaped_at.is_some()
        })
        .await?;
    assert_eq!(
        rec.attempt,
        Some(2),
        "the lost attempt ran again, once: {rec:?}"
    );
    sys.stop().await
}

#[tokio::test]
async fn an_image_from_a_tls_registry_with_htpasswd_runs_with_its_ca_in_ssl_cert_file_and_an_auth_file_pulled_once()
-> anyhow::Result<()> {
    use airlock_test_support::oci::{
        ImageSpec, PASSWORD, Pusher, USER, auth_file, busybox_layer, tls_registry,
    };
    let dir = traversable_tempdir("airlock-e2e-local-")?;
    let tls = tls_registry(dir.path()).await?;
    let pusher = Pusher::tls(&tls.registry, &tls.ca_pem);
    pusher
        .push(
            "private:1",
            &ImageSpec::new(vec![busybox_layer("from-the-tls-registry")?]),
        )
        .await?;
    let auth = auth_file(dir.path(), &tls.registry.host(), USER, PASSWORD)?;
    let sys = System::start_with_env(
        Runtime::Local {
            dir: dir.path().join("state"),
        },
        vec![
            ("SSL_CERT_FILE", tls.ca_file.display().to_string()),
            ("AIRLOCK_REGISTRY_AUTH_FILE", auth.display().to_string()),
        ],
    )
    .await?;
    let mut req = request("tls-1", &["cat", "/etc/airlock-marker"], 60);
    req["image"] = json!(pusher.reference("private:1"));
    let mut events = sys.events("tls-1").await?;
    sys.submit(&req).await?;
    let terminal = events.until_terminal().await?;
    assert_eq!(terminal.status, RunStatus::Succeeded, "{:?}", events.seen);
    let rec = sys
        .wait_record("tls-1", "logs stored", |r| r.reaped_at.is_some())
        .await?;
    assert!(
        rec.logs
            .as_deref()
            .unwrap_or_default()
            .contains("from-the-tls-registry"),
        "{rec:?}"
    );

    // A second run of the image finds it in the cache; the dispatcher counts one pull and one cache hit.
    let mut again = req.clone();
    again["id"] = json!("tls-2");
    let mut events = sys.events("tls-2").await?;
    sys.submit(&again).await?;
    let terminal = events.until_terminal().await?;
    assert_eq!(terminal.status, RunStatus::Succeeded, "{:?}", events.seen);
    let m = sys
        .wait_metrics(DISPATCHER, "the cache hit to be counted", |m| {
            m.get("airlock_image_cache_hits_total", &[]) >= 1.0
        })
        .await?;
    assert_eq!(m.get("airlock_image_pulls_total", &[]), 1.0);
    assert_eq!(m.get("airlock_image_cache_hits_total", &[]), 1.0);
    assert!(
        m.get("airlock_image_pull_bytes_total", &[]) > 1000.0,
        "the layers' bytes are counted"
    );
    sys.stop().await
}
