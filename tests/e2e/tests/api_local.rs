//! The API and the `airlock` CLI against the whole system with the local sandbox runtime: logs followed
//! live, `submit --wait` exit codes, `airlock-emit` inside a sandbox, and an independent Python client.

mod common;

use std::process::Stdio;

use airlock_test_support::{free_port, our_binary, wait_until};
use anyhow::{Context, Result};
use common::local::{gated, open_gate};
use common::{System, T};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

async fn local_system() -> Result<(System, tempfile::TempDir)> {
    common::local::local_system("airlock-e2e-api-", &[]).await
}

/// The CLI's exit code, stdout and stderr.
async fn airlock(sys: &System, args: &[&str]) -> Result<(i32, String, String)> {
    let out = airlock_cmd(sys, args)?.output().await?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn airlock_cmd(sys: &System, args: &[&str]) -> Result<tokio::process::Command> {
    let mut c = tokio::process::Command::new(our_binary("airlock")?);
    c.args(args)
        .env("AIRLOCK_NATS_URL", sys.nats.url())
        .env_remove("AIRLOCK_REDIS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    Ok(c)
}

async fn status_of(sys: &System, id: &str) -> Option<String> {
    let (code, out, _) = airlock(sys, &["status", id, "-o", "json"]).await.ok()?;
    (code == 0).then_some(())?;
    serde_json::from_str::<Value>(&out).ok()?["status"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test]
async fn logs_follow_streams_the_lines_of_a_running_local_job_and_ends_when_the_run_ends()
-> Result<()> {
    let (sys, dir) = local_system().await?;
    // The job empties its result file again once the gate is open: it ends without a result.
    let script = gated(
        "echo line-one",
        r#": > "$AIRLOCK_RESULT_FILE"; echo line-two"#,
    );
    let (code, out, err) = airlock(
        &sys,
        &[
            "submit",
            "--id",
            "follow-1",
            "--deadline",
            "60",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ],
    )
    .await?;
    assert_eq!(code, 0, "submit: {out} {err}");
    assert_eq!(out.trim(), "follow-1");
    // The run has a record once a dispatcher took its request.
    wait_until(T, "follow-1 dispatched", || async {
        status_of(&sys, "follow-1").await.map(drop)
    })
    .await?;

    let mut follow = airlock_cmd(&sys, &["logs", "-f", "follow-1"])?.spawn()?;
    let mut lines = BufReader::new(follow.stdout.take().context("stdout")?).lines();
    let first = tokio::time::timeout(T, lines.next_line())
        .await
        .context("no line followed")??;
    assert_eq!(first.as_deref(), Some("line-one"));
    // The job cannot end before its gate opens, so it was in progress when its first line was streamed
    // (its record may still say `pending` until the watcher notices): the record reaches `running` while
    // the follow goes on.
    let now = status_of(&sys, "follow-1").await;
    assert!(
        matches!(now.as_deref(), Some("pending" | "running")),
        "{now:?}"
    );
    wait_until(T, "follow-1 running", || async {
        (status_of(&sys, "follow-1").await.as_deref() == Some("running")).then_some(())
    })
    .await?;
    assert!(follow.try_wait()?.is_none(), "logs -f ended early");
    open_gate(&dir, "follow-1", 1).await?;
    let mut rest = Vec::new();
    while let Some(l) = tokio::time::timeout(T, lines.next_line()).await?? {
        rest.push(l);
    }
    assert_eq!(rest, ["line-two"]);
    let status = tokio::time::timeout(T, follow.wait()).await??;
    assert!(status.success(), "logs -f ended {status}");
    assert_eq!(
        status_of(&sys, "follow-1").await.as_deref(),
        Some("succeeded")
    );

    let (code, out, _) = airlock(&sys, &["logs", "follow-1"]).await?;
    assert_eq!((code, out.as_str()), (0, "line-one\nline-two\n"));
    sys.stop().await
}

#[tokio::test]
async fn submit_wait_exits_with_the_documented_code_for_each_outcome() -> Result<()> {
    let (system, _dir) = local_system().await?;
    let sys = &system;
    let wait = |id: &'static str, extra: &'static [&'static str], script: &'static str| async move {
        let mut args = vec!["submit", "--wait", "--id", id];
        args.extend_from_slice(extra);
        args.extend(["--", "/bin/sh", "-c", script]);
        airlock(sys, &args).await
    };
    let (ok, failed, timed_out, rejected) = tokio::try_join!(
        wait("w-ok", &[], "exit 0"),
        wait("w-failed", &[], "exit 3"),
        wait("w-slow", &["--deadline", "1"], "sleep 60"),
        // No dispatcher serves this queue: the dispatchers' scan records it rejected.
        wait("w-rejected", &["--queue", "nosuch"], "exit 0"),
    )?;
    assert_eq!(ok.0, 0, "succeeded: {ok:?}");
    assert_eq!(failed.0, 1, "failed: {failed:?}");
    assert_eq!(timed_out.0, 3, "timed out: {timed_out:?}");
    assert_eq!(rejected.0, 4, "rejected: {rejected:?}");
    assert!(failed.2.contains("run w-failed ended failed"), "{failed:?}");

    // Cancelled: a waiting submit, then a cancel from another CLI.
    let waiting = airlock_cmd(
        sys,
        &["submit", "--wait", "--id", "w-cancel", "--", "sleep", "60"],
    )?
    .spawn()?;
    wait_until(T, "w-cancel running", || async {
        (status_of(sys, "w-cancel").await.as_deref() == Some("running")).then_some(())
    })
    .await?;
    let (code, _, err) = airlock(sys, &["wait", "w-cancel", "--wait-timeout", "200ms"]).await?;
    assert_eq!(code, 6, "wait timeout: {err}");
    let (code, _, err) = airlock(sys, &["cancel", "w-cancel"]).await?;
    assert_eq!(code, 0, "cancel: {err}");
    let mut waiting = waiting;
    let status = tokio::time::timeout(T, waiting.wait()).await??;
    let mut stderr = String::new();
    if let Some(mut e) = waiting.stderr.take() {
        e.read_to_string(&mut stderr).await?;
    }
    assert_eq!(status.code(), Some(5), "cancelled: {stderr}");
    // When piped, the status line is plain lines, one per status.
    assert!(stderr.contains("w-cancel running\n"), "{stderr}");
    let (code, _, err) = airlock(sys, &["cancel", "w-cancel"]).await?;
    assert_eq!(code, 10, "already ended: {err}");

    let (code, _, err) = airlock(sys, &["submit", "--image", "", "--", "true"]).await?;
    assert_eq!(code, 8, "{err}");
    assert!(err.contains("request.image"), "{err}");
    let (code, _, err) = airlock(sys, &["status", "no-such-run"]).await?;
    assert_eq!(code, 7, "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let (code, _, err) = airlock(sys, &["result", "w-failed"]).await?;
    assert_eq!(code, 9, "{err}");

    let nowhere = format!("nats://127.0.0.1:{}", free_port()?);
    let (code, _, err) = airlock(sys, &["--nats-url", &nowhere, "status", "w-ok"]).await?;
    assert_eq!(code, 69, "{err}");
    assert!(
        err.starts_with("error: cannot reach NATS") && err.contains("--nats-url"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line, no backtrace: {err}");
    system.stop().await
}

/// The job image: busybox and our `airlock-emit` (with the libraries it links) as `/bin/airlock-emit`.
const EMIT_IMAGE: &str = "airlock.local/e2e/emit:1";

#[tokio::test]
async fn airlock_emit_delivers_a_result_from_inside_a_local_sandbox_and_refuses_a_non_object()
-> Result<()> {
    let spec = airlock_test_support::oci::job_image("emit")?;
    let (sys, _dir) =
        common::local::local_system("airlock-e2e-api-", &[(EMIT_IMAGE, spec)]).await?;
    let script = r#"echo '[1]' | /bin/airlock-emit; echo "refused=$?"; printf '{"answer":7}' | /bin/airlock-emit"#;
    let (code, out, err) = airlock(
        &sys,
        &[
            "submit", "--wait", "--id", "emit-1", "--image", EMIT_IMAGE, "--", "/bin/sh", "-c",
            script,
        ],
    )
    .await?;
    assert_eq!(code, 0, "{out} {err}");
    let (code, out, _) = airlock(&sys, &["result", "emit-1"]).await?;
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out)?, json!({"answer": 7}));
    let (_, logs, _) = airlock(&sys, &["logs", "emit-1"]).await?;
    assert!(logs.contains("refused=1"), "{logs}");
    assert!(logs.contains("must be a JSON object"), "{logs}");
    sys.stop().await
}

#[tokio::test]
async fn an_independent_python_client_submits_and_reads_status_result_and_logs_with_the_published_schemas()
-> Result<()> {
    let root = airlock_test_support::workspace_root();
    let python = std::env::var("AIRLOCK_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join(".venv/bin/python"));
    if !python.exists() && which("python3").is_none() {
        eprintln!("SKIPPED: python3 is missing (run scripts/setup)");
        return Ok(());
    }
    let python = if python.exists() {
        python
    } else {
        "python3".into()
    };
    let (sys, _dir) = local_system().await?;
    let out = tokio::process::Command::new(&python)
        .arg(root.join("tests/python/api_client.py"))
        .env("NATS_URL", sys.nats.url())
        .env("AIRLOCK_SCHEMAS", root.join("schemas/json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "python client failed ({}); if nats-py is missing run scripts/setup\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("python client: ok"), "{stdout}");
    sys.stop().await
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The `data.follows` the API reports for its `logs` endpoint in `$SRV.STATS`.
async fn follows(sys: &System) -> Option<u64> {
    let msg = sys
        .client
        .request("$SRV.STATS.airlock", "".into())
        .await
        .ok()?;
    let stats: Value = serde_json::from_slice(&msg.payload).ok()?;
    stats["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == "logs")?["data"]["follows"]
        .as_u64()
}

#[tokio::test]
async fn a_follow_is_relayed_only_while_its_follower_listens() -> Result<()> {
    use futures::StreamExt;
    let (sys, _dir) = local_system().await?;
    // The gate is never opened: the job runs until it is cancelled.
    let script = gated("echo line-one", "true");
    let (code, _, err) = airlock(
        &sys,
        &["submit", "--id", "left-1", "--", "/bin/sh", "-c", &script],
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    wait_until(T, "left-1 running", || async {
        (status_of(&sys, "left-1").await.as_deref() == Some("running")).then_some(())
    })
    .await?;

    // A follower: its own inbox as the reply subject of the request.
    let inbox = sys.client.new_inbox();
    let mut sub = sys.client.subscribe(inbox.clone()).await?;
    sys.client
        .publish_with_reply(
            "airlock.api.logs",
            inbox,
            serde_json::to_vec(&json!({"id": "left-1", "follow": true}))?.into(),
        )
        .await?;
    let mut text = String::new();
    while !text.contains("line-one") {
        let msg = tokio::time::timeout(T, sub.next())
            .await?
            .context("follow ended")?;
        let chunk: Value = serde_json::from_slice(&msg.payload)?;
        assert_eq!(chunk["end"], false, "{chunk}");
        text.push_str(chunk["data"].as_str().unwrap_or_default());
    }
    assert_eq!(follows(&sys).await, Some(1));

    // The follower leaves: the relay notices (its probe finds no responders) and stops.
    sub.unsubscribe().await?;
    sys.client.flush().await?;
    wait_until(T, "the follow to stop", || async {
        (follows(&sys).await == Some(0)).then_some(())
    })
    .await?;
    let (code, _, err) = airlock(&sys, &["cancel", "left-1"]).await?;
    assert_eq!(code, 0, "{err}");
    sys.stop().await
}
