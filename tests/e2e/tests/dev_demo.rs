//! `airlock dev`: the whole system on one machine, as a user runs it.

mod common;

use std::process::Stdio;
use std::time::Duration;

use airlock_test_support::{our_binary, wait_until};
use common::{T, children_of, port_open, process_alive, traversable_tempdir};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn airlock_dev_demo_runs_a_sandboxed_job_prints_its_result_and_exits_0() -> anyhow::Result<()>
{
    let tmp = traversable_tempdir("airlock-e2e-dev-")?;
    let data_dir = tmp.path().join("data");
    // What scripts/setup leaves in the default data dir: the demo image as an OCI layout (built here).
    write_demo_layout(&data_dir)?;
    let child = Command::new(our_binary("airlock")?)
        .args([
            "dev",
            "--demo",
            "--nats-port",
            "0",
            "--redis-port",
            "0",
            "--data-dir",
        ])
        .arg(&data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let out = tokio::time::timeout(T, child.wait_with_output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "airlock dev --demo: {}\n{stdout}",
        out.status
    );
    let record: Value = serde_json::from_str(stdout.trim())
        .map_err(|e| anyhow::anyhow!("stdout is not one JSON record ({e}): {stdout}"))?;
    assert_eq!(record["status"], "succeeded", "{record:#}");
    assert_eq!(record["result"]["answer"], 42, "{record:#}");
    assert_eq!(
        record["result"]["run"], record["id"],
        "the job saw its own run id: {record:#}"
    );
    assert_eq!(record["exit_code"], 0);
    assert!(
        record["logs"]
            .as_str()
            .is_some_and(|l| l.contains("computing in")),
        "the job's output is in the record: {record:#}"
    );
    assert!(record["reaped_at"].is_string(), "{record:#}");
    assert!(
        common::dir_entries(&data_dir.join("sandbox/runs")).is_empty(),
        "the sandbox was reaped"
    );
    Ok(())
}

/// Writes the demo image's OCI layout where `airlock dev` looks for it (`scripts/setup` does in real life).
fn write_demo_layout(data_dir: &std::path::Path) -> anyhow::Result<()> {
    use airlock_test_support::oci::{ImageSpec, build, busybox_layer, write_layout};
    let demo = build(&ImageSpec::new(vec![busybox_layer("demo")?]))?;
    write_layout(
        &data_dir.join("demo-image"),
        &demo,
        "airlock.local/demo/busybox:1",
    )?;
    Ok(())
}

/// Starts `airlock dev` (no demo), waits until its janitor answers, starts a long job, stops it with
/// `signal`, and checks that it exited cleanly and that its nats-server, redis-server, the job's supervisor
/// process and its sandbox are gone.
async fn stopping_airlock_dev_stops_everything_it_started(signal: &str) -> anyhow::Result<()> {
    let tmp = traversable_tempdir("airlock-e2e-dev-")?;
    write_demo_layout(&tmp.path().join("data"))?;
    let mut child = Command::new(our_binary("airlock")?)
        .args(["dev", "--nats-port", "0", "--redis-port", "0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().expect("running");
    // Its banner names the servers; forward everything it prints to the test output.
    let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
    let (mut nats_url, mut redis_url) = (None, None);
    tokio::time::timeout(T, async {
        while let Some(line) = lines.next_line().await? {
            eprintln!("{line}");
            let t = line.trim();
            if let Some(u) = t.strip_prefix("NATS") {
                nats_url = Some(u.trim().to_string());
            } else if let Some(u) = t.strip_prefix("Redis") {
                redis_url = Some(u.trim().to_string());
            } else if t.starts_with("Stop with Ctrl-C") {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("airlock dev exited before it was up")
    })
    .await??;
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{line}");
        }
    });
    let nats_url = nats_url.expect("NATS URL printed");
    let redis_url = redis_url.expect("Redis URL printed");
    let port_of = |u: &str| -> u16 {
        u.rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port")
    };
    let (nats_port, redis_port) = (port_of(&nats_url), port_of(&redis_url));

    // Up: its janitor answers cancel requests (an unknown run is refused, but answered).
    let nats = async_nats::connect(&nats_url).await?;
    wait_until(T, "the janitor of airlock dev to answer", || async {
        nats.request("airlock.cancel.no-such-run", "".into())
            .await
            .ok()
            .map(|_| ())
    })
    .await?;
    // A job that runs until stopped, under a supervisor process of its own.
    let request = serde_json::json!({"id": "long-1", "image": "airlock.local/demo/busybox:1",
        "command": ["sleep", "600"], "deadline_seconds": 600});
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "long-1");
    async_nats::jetstream::new(nats.clone())
        .publish_with_headers(
            "airlock.runs.default",
            headers,
            serde_json::to_vec(&request)?.into(),
        )
        .await?
        .await?;
    let status_file = tmp.path().join("data/sandbox/runs/long-1/status.json");
    let (supervisor, sandbox) = wait_until(T, "the job to run", || async {
        let s: Value = serde_json::from_slice(&std::fs::read(&status_file).ok()?).ok()?;
        (s["phase"] == "Running").then_some((s["supervisor_pid"].as_u64()?, s["pid"].as_u64()?))
    })
    .await?;
    assert_ne!(
        supervisor,
        u64::from(pid),
        "the run has a supervisor process of its own"
    );
    drop(nats);

    let servers = children_of(pid);
    let names: Vec<&str> = servers.iter().map(|(_, n)| n.as_str()).collect();
    assert!(
        names.contains(&"nats-server") && names.contains(&"redis-server"),
        "airlock dev runs its servers as children: {servers:?}"
    );

    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()?;
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    assert!(exit.success(), "airlock dev exited with {exit}");
    for (p, name) in &servers {
        if name == "nats-server" || name == "redis-server" {
            assert!(!process_alive(*p), "{name} (pid {p}) outlived airlock dev");
        }
    }
    for (p, what) in [
        (supervisor, "the run's supervisor"),
        (sandbox, "the run's sandbox"),
    ] {
        let p = u32::try_from(p)?;
        wait_until(T, "the job's processes to be gone", || async {
            (!process_alive(p)).then_some(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("{what} (pid {p}) outlived airlock dev: {e}"))?;
    }
    assert!(
        !port_open(nats_port).await,
        "nothing listens on the NATS port any more"
    );
    assert!(
        !port_open(redis_port).await,
        "nothing listens on the Redis port any more"
    );
    Ok(())
}

#[tokio::test]
async fn stopping_airlock_dev_with_ctrl_c_stops_its_servers_and_running_jobs() -> anyhow::Result<()>
{
    stopping_airlock_dev_stops_everything_it_started("-INT").await
}

#[tokio::test]
async fn stopping_airlock_dev_with_sigterm_stops_its_servers_and_running_jobs() -> anyhow::Result<()>
{
    stopping_airlock_dev_stops_everything_it_started("-TERM").await
}
