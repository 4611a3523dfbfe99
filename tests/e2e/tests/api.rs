//! The request-reply API (`airlock-api`) alone against a real `nats-server` and `redis-server`: records are
//! written by the real run store (whose scripts keep the listing indexes), requests go over NATS exactly as
//! any client's would.

mod common;

use std::time::Duration;

use airlock_runtime::store::{RecordUpdate, Store};
use airlock_schemas::RunStatus;
use airlock_test_support::{NatsServer, RedisServer, Service, free_port, wait_until};
use anyhow::{Context, Result};
use async_nats::jetstream;
use common::{T, http_get_status};
use serde_json::{Value, json};

/// NATS, Redis and one `airlock-api`.
struct ApiOnly {
    nats: NatsServer,
    _redis: RedisServer,
    _api: Service,
    _dir: tempfile::TempDir,
    client: async_nats::Client,
    store: Store,
}

impl ApiOnly {
    async fn start() -> Result<Self> {
        let (nats, redis) = tokio::try_join!(NatsServer::start(), RedisServer::start())?;
        let dir = common::traversable_tempdir("api-")?;
        let port = free_port()?;
        let api = Service::start(
            "airlock-api",
            &[
                "--runtime",
                "local",
                "--local-dir",
                &dir.path().display().to_string(),
            ],
            &[
                ("AIRLOCK_NATS_URL", nats.url()),
                ("AIRLOCK_REDIS_URL", redis.url()),
                ("AIRLOCK_HTTP_ADDR", format!("127.0.0.1:{port}")),
                ("AIRLOCK_QUEUES", "default,other".into()),
                ("RUST_LOG", "info".into()),
            ],
        )?;
        wait_until(T, "airlock-api to be ready", || async move {
            http_get_status(port, "/readyz").await.filter(|s| *s == 200)
        })
        .await?;
        let client = nats.client().await?;
        let store = Store::connect(&redis.url(), "airlock", Duration::from_secs(3600)).await?;
        Ok(Self {
            nats,
            _redis: redis,
            _api: api,
            _dir: dir,
            client,
            store,
        })
    }

    /// Calls `airlock.api.<op>` with `body` and returns the JSON reply.
    async fn call(&self, op: &str, body: Value) -> Result<Value> {
        let msg = self
            .client
            .request(
                format!("airlock.api.{op}"),
                serde_json::to_vec(&body)?.into(),
            )
            .await
            .with_context(|| format!("airlock.api.{op}"))?;
        Ok(serde_json::from_slice(&msg.payload)?)
    }

    /// Writes a record as the dispatcher would: queued with its request and queue.
    async fn queued(&self, id: &str, queue: &str, labels: Value) -> Result<()> {
        let request =
            json!({"id": id, "image": "docker.io/library/busybox:1.36", "labels": labels});
        self.store
            .transition(
                id,
                RunStatus::Queued,
                &RecordUpdate {
                    queue: Some(queue.into()),
                    image: Some("docker.io/library/busybox:1.36".into()),
                    request: Some(request.to_string()),
                    submitted_at: Some(chrono_now()),
                    ..RecordUpdate::default()
                },
            )
            .await?;
        Ok(())
    }
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// The `(field, message)` details of an error reply with `code`.
fn error_fields(reply: &Value, code: &str) -> Vec<String> {
    assert_eq!(reply["error"]["code"], code, "{reply:#}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{reply:#}"
    );
    reply["error"]["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|d| d["field"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_service_is_discoverable_and_its_info_lists_every_endpoint() -> Result<()> {
    let sys = ApiOnly::start().await?;
    let ping = sys.client.request("$SRV.PING.airlock", "".into()).await?;
    let ping: Value = serde_json::from_slice(&ping.payload)?;
    assert_eq!(ping["name"], "airlock");
    let info = sys.client.request("$SRV.INFO.airlock", "".into()).await?;
    let info: Value = serde_json::from_slice(&info.payload)?;
    let mut subjects: Vec<&str> = info["endpoints"]
        .as_array()
        .context("endpoints")?
        .iter()
        .filter_map(|e| e["subject"].as_str())
        .collect();
    subjects.sort_unstable();
    assert_eq!(
        subjects,
        [
            "airlock.api.cancel",
            "airlock.api.list",
            "airlock.api.logs",
            "airlock.api.result",
            "airlock.api.status",
            "airlock.api.submit"
        ]
    );
    assert!(
        info["endpoints"]
            .as_array()
            .context("endpoints")?
            .iter()
            .all(|e| e["queue_group"] == "airlock-api"),
        "{info:#}"
    );
    sys.call("status", json!({"id": "nope"})).await?;
    let stats = sys.client.request("$SRV.STATS.airlock", "".into()).await?;
    let stats: Value = serde_json::from_slice(&stats.payload)?;
    let status = stats["endpoints"]
        .as_array()
        .context("endpoints")?
        .iter()
        .find(|e| e["name"] == "status")
        .context("status stats")?;
    assert_eq!(status["num_requests"], 1, "{stats:#}");
    Ok(())
}

#[tokio::test]
async fn status_and_result_answer_from_the_record_or_say_not_found_not_ready_or_invalid()
-> Result<()> {
    let sys = ApiOnly::start().await?;
    sys.queued("st-1", "default", json!({"team": "a"})).await?;
    let v = sys.call("status", json!({"id": "st-1"})).await?;
    assert_eq!(v["id"], "st-1");
    assert_eq!(v["status"], "queued");
    assert_eq!(v["queue"], "default");
    assert_eq!(v["labels"], json!({"team": "a"}));
    assert_eq!(v["attempt"], 1);
    assert_eq!(v["has_result"], false);

    let r = sys.call("result", json!({"id": "st-1"})).await?;
    error_fields(&r, "not_ready");
    sys.store.store_result("st-1", r#"{"answer":42}"#).await?;
    let r = sys.call("result", json!({"id": "st-1"})).await?;
    assert_eq!(r["result"], json!({"answer": 42}), "{r:#}");

    error_fields(
        &sys.call("status", json!({"id": "no-such-run"})).await?,
        "not_found",
    );
    error_fields(
        &sys.call("result", json!({"id": "no-such-run"})).await?,
        "not_found",
    );
    error_fields(
        &sys.call("logs", json!({"id": "no-such-run"})).await?,
        "not_found",
    );
    assert_eq!(
        error_fields(
            &sys.call("status", json!({"id": "Bad_Id"})).await?,
            "invalid"
        ),
        ["id"]
    );
    assert_eq!(
        error_fields(&sys.call("status", json!({"id": 5})).await?, "invalid"),
        ["id"]
    );
    assert_eq!(
        error_fields(&sys.call("status", json!([1])).await?, "invalid"),
        ["."]
    );
    let garbage = sys
        .client
        .request("airlock.api.status", "{\"id\":".into())
        .await?;
    let garbage: Value = serde_json::from_slice(&garbage.payload)?;
    error_fields(&garbage, "invalid");
    assert!(
        garbage["error"]["code"].is_string() && garbage["error"]["details"].is_array(),
        "{garbage:#}"
    );
    Ok(())
}

#[tokio::test]
async fn submit_validates_at_once_with_field_paths_and_publishes_a_valid_request_once() -> Result<()>
{
    let sys = ApiOnly::start().await?;
    let bad = sys
        .call(
            "submit",
            json!({"queue": "nosuch", "request": {"id": "Bad!", "image": "", "env": {"AIRLOCK_X": "1"}}}),
        )
        .await?;
    let fields = error_fields(&bad, "invalid");
    for f in [
        "queue",
        "request.id",
        "request.image",
        "request.env.AIRLOCK_X",
    ] {
        assert!(fields.iter().any(|x| x == f), "{f} missing in {fields:?}");
    }
    let bad = sys.call("submit", json!({"queue": "default"})).await?;
    assert_eq!(error_fields(&bad, "invalid"), ["."], "{bad:#}");

    let js = jetstream::new(sys.client.clone());
    let req = json!({"queue": "default", "request": {"id": "sub-1", "image": "docker.io/library/busybox:1.36"}});
    for _ in 0..2 {
        let ok = sys.call("submit", req.clone()).await?;
        assert_eq!(ok, json!({"id": "sub-1"}));
    }
    let mut stream = js.get_stream("AIRLOCK_RUNS").await?;
    assert_eq!(
        stream.info().await?.state.messages,
        1,
        "published once (Nats-Msg-Id)"
    );
    let msg = stream
        .get_last_raw_message_by_subject("airlock.runs.default")
        .await?;
    let headers = msg.headers;
    assert_eq!(
        headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str()),
        Some("sub-1")
    );
    let body: Value = serde_json::from_slice(&msg.payload)?;
    assert_eq!(body["id"], "sub-1");
    Ok(())
}

#[tokio::test]
async fn cancel_records_a_cancel_timer_for_an_active_run_and_refuses_ended_or_unknown_runs()
-> Result<()> {
    let sys = ApiOnly::start().await?;
    sys.queued("c-1", "default", json!({})).await?;
    let r = sys
        .call("cancel", json!({"id": "c-1", "reason": "by test"}))
        .await?;
    assert_eq!(r, json!({"id": "c-1", "status": "queued"}));
    let js = jetstream::new(sys.client.clone());
    let timers = js.get_stream("AIRLOCK_TIMERS").await?;
    let timer = timers
        .get_last_raw_message_by_subject("airlock.timers.cancel.c-1")
        .await?;
    let timer: Value = serde_json::from_slice(&timer.payload)?;
    assert_eq!(timer["reason"], "by test", "{timer:#}");

    sys.store
        .transition("c-1", RunStatus::Cancelled, &RecordUpdate::default())
        .await?;
    error_fields(&sys.call("cancel", json!({"id": "c-1"})).await?, "conflict");
    error_fields(
        &sys.call("cancel", json!({"id": "c-404"})).await?,
        "not_found",
    );
    Ok(())
}

#[tokio::test]
async fn paging_through_a_thousand_runs_with_filters_returns_each_once_newest_first() -> Result<()>
{
    let sys = ApiOnly::start().await?;
    let mut expected_all = Vec::new();
    let mut expected_filtered = Vec::new();
    for i in 0..1000 {
        let id = format!("p-{i:04}");
        let queue = if i % 2 == 0 { "default" } else { "other" };
        let team = if i % 3 == 0 { "x" } else { "y" };
        sys.queued(&id, queue, json!({"team": team})).await?;
        let status = if i % 5 == 0 {
            RunStatus::Succeeded
        } else {
            RunStatus::Running
        };
        sys.store
            .transition(&id, status, &RecordUpdate::default())
            .await?;
        if queue == "default" && team == "x" && status == RunStatus::Succeeded {
            expected_filtered.push(id.clone());
        }
        expected_all.push(id);
    }
    // Newest first: ids were written in order (ties in the same millisecond order by id, descending too).
    expected_all.reverse();
    expected_filtered.reverse();

    let page_through = |filter: Value| {
        let sys = &sys;
        async move {
            let mut ids = Vec::new();
            let mut cursor: Option<String> = None;
            let mut pages = 0;
            loop {
                let mut req = filter.clone();
                req["limit"] = json!(37);
                if let Some(c) = &cursor {
                    req["cursor"] = json!(c);
                }
                let page = sys.call("list", req).await?;
                pages += 1;
                let runs = page["runs"].as_array().context("runs")?;
                assert!(runs.len() <= 37);
                ids.extend(
                    runs.iter()
                        .map(|r| r["id"].as_str().unwrap_or_default().to_string()),
                );
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_string()),
                    None => return anyhow::Ok((ids, pages)),
                }
            }
        }
    };
    let (all, pages) = page_through(json!({})).await?;
    assert_eq!(all, expected_all);
    assert_eq!(pages, 1000_usize.div_ceil(37));
    let (filtered, _) =
        page_through(json!({"status": "succeeded", "queue": "default", "label": "team=x"})).await?;
    assert_eq!(filtered, expected_filtered);
    assert!(!filtered.is_empty());
    let (running, _) = page_through(json!({"status": "running"})).await?;
    assert_eq!(running.len(), 800);

    for (bad, field) in [
        (json!({"limit": 0}), "limit"),
        (json!({"limit": 100000}), "limit"),
        (json!({"cursor": "not-a-cursor"}), "cursor"),
        (json!({"label": "novalue"}), "label"),
        (json!({"status": "sleeping"}), "status"),
    ] {
        let r = sys.call("list", bad.clone()).await?;
        assert_eq!(error_fields(&r, "invalid"), [field], "{bad}: {r:#}");
    }
    Ok(())
}

#[tokio::test]
async fn the_cli_finds_nats_through_a_nats_context_prints_completions_and_documents_exit_codes()
-> Result<()> {
    let sys = ApiOnly::start().await?;
    let airlock = airlock_test_support::our_binary("airlock")?;
    let home = tempfile::tempdir()?;
    let ctx_dir = home.path().join(".config/nats/context");
    std::fs::create_dir_all(&ctx_dir)?;
    std::fs::write(
        ctx_dir.join("test.json"),
        json!({ "url": sys.nats.url() }).to_string(),
    )?;
    std::fs::write(home.path().join(".config/nats/context.txt"), "test")?;
    let run = |args: &[&str], selected: bool| {
        let mut c = std::process::Command::new(&airlock);
        c.args(args)
            .env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("AIRLOCK_NATS_URL")
            .env_remove("NATS_CONTEXT");
        if !selected {
            c.env("XDG_CONFIG_HOME", home.path().join("nowhere"));
        }
        c.output()
    };
    // Reached through the named context, and through the selected one: the API answers "no such run".
    let out = run(&["--context", "test", "status", "nope"], true)?;
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["status", "nope"], true)?;
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["--context", "missing", "status", "nope"], true)?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{err}");
    assert!(err.contains("nats context save missing"), "{err}");

    let out = run(&["completions", "bash"], false)?;
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("_airlock") && script.contains("logs"),
        "{script}"
    );
    let out = run(&["submit", "--help"], false)?;
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Exit codes:") && help.contains("69 could not reach Airlock"),
        "{help}"
    );
    Ok(())
}

#[tokio::test]
async fn wait_shows_a_live_status_line_on_a_terminal_and_exits_with_the_runs_outcome() -> Result<()>
{
    use tokio::io::AsyncReadExt;
    let Some(script) = ["/usr/bin/script", "/bin/script"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        eprintln!("SKIPPED: util-linux `script` (a pseudo-terminal) is missing");
        return Ok(());
    };
    let sys = ApiOnly::start().await?;
    sys.queued("tty-1", "default", json!({})).await?;
    let airlock = airlock_test_support::our_binary("airlock")?;
    let mut child = tokio::process::Command::new(script)
        .args(["-q", "-e", "-f", "-c"])
        .arg(format!("{} wait tty-1", airlock.display()))
        .arg("/dev/null")
        .env("AIRLOCK_NATS_URL", sys.nats.url())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut seen = Vec::new();
    let live = "\r\x1b[2Ktty-1 queued";
    tokio::time::timeout(T, async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains(live) {
            let n = stdout.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "the terminal closed early");
            seen.extend_from_slice(&buf[..n]);
        }
        anyhow::Ok(())
    })
    .await
    .context("no live status line")??;
    sys.store
        .transition("tty-1", RunStatus::Failed, &RecordUpdate::default())
        .await?;
    stdout.read_to_end(&mut seen).await?;
    let status = tokio::time::timeout(T, child.wait()).await??;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("\r\x1b[2Ktty-1 failed"), "{text:?}");
    assert_eq!(status.code(), Some(1), "a failed run exits 1: {text:?}");
    Ok(())
}
