//! The NATS identities of `deploy/nats/nats-server.conf`: a real nats-server with the shipped configuration
//! lets the `jobs` user publish a result (and get the JetStream ack) and nothing else, and lets the
//! `services` user run the streams and consumers; the real `airlock-api` serves as the `api` user, `clients`
//! reach it (and direct submits) and `jobs` reach neither.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use airlock_test_support::{free_port, workspace_root};
use anyhow::{Context, Result, anyhow, bail, ensure};
use futures::StreamExt;

mod deploy;
use deploy::*;

// ---------------------------------------------------------------------------------------------------------
// The NATS identities

/// nats-server started with deploy/nats/nats-server.conf (port, store and monitor port overridden).
struct ConfiguredNats {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for ConfiguredNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SERVICES_PW: &str = "services-test-password";
const JOBS_PW: &str = "jobs-test-password";
const CLIENTS_PW: &str = "clients-test-password";
const API_PW: &str = "api-test-password";

impl ConfiguredNats {
    fn start(binary: &Path) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        // The shipped file, with only its store directory pointed at a throwaway one (nats-server refuses
        // `-sd` next to a configured store_dir).
        let shipped = std::fs::read_to_string(deploy_dir().join("nats/nats-server.conf"))?;
        ensure!(
            shipped.contains("store_dir: /data/jetstream"),
            "nats-server.conf: store_dir moved; update this test"
        );
        let store = dir.path().join("store");
        let conf = dir.path().join("nats-server.conf");
        std::fs::write(
            &conf,
            shipped.replace(
                "store_dir: /data/jetstream",
                &format!("store_dir: {:?}", store.display().to_string()),
            ),
        )?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&conf)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["--http_port", &free_port()?.to_string()])
            .env("AIRLOCK_NATS_SERVICES_PASSWORD", SERVICES_PW)
            .env("AIRLOCK_NATS_JOBS_PASSWORD", JOBS_PW)
            .env("AIRLOCK_NATS_CLIENTS_PASSWORD", CLIENTS_PW)
            .env("AIRLOCK_NATS_API_PASSWORD", API_PW)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let mut s = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = s.child.try_wait()? {
                bail!("nats-server exited with {status}: is deploy/nats/nats-server.conf valid?");
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(s)
    }

    /// Connects as `user`. (Explicit user and password: async-nats 0.51 ignores credentials embedded in
    /// the URL, so the services cannot use a `nats://user:pass@host` URL yet; see docs/DEPLOY.md.)
    async fn connect(&self, user: &str, password: &str) -> Result<async_nats::Client> {
        async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
            .name(user)
            .connect(format!("nats://127.0.0.1:{}", self.port))
            .await
            .with_context(|| format!("the {user} user cannot connect"))
    }
}

fn nats_server() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("AIRLOCK_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let venv = workspace_root().join(".venv/bin/nats-server");
    venv.exists().then_some(venv)
}

/// Nothing arrives on `sub` within a short while.
async fn stays_silent(sub: &mut async_nats::Subscriber, what: &str) -> Result<()> {
    match tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
        Err(_) | Ok(None) => Ok(()),
        Ok(Some(m)) => bail!("{what}: received {} ({:?})", m.subject, m.payload),
    }
}

#[tokio::test]
async fn the_jobs_nats_identity_can_publish_results_and_nothing_else() -> Result<()> {
    let Some(binary) = nats_server() else {
        return skip_missing("nats-server", "run scripts/setup to install it into .venv");
    };
    let nats = ConfiguredNats::start(&binary)?;
    let subjects = airlock_schemas::Subjects::new(airlock_schemas::subjects::DEFAULT_PREFIX);

    // Anonymous and wrong-password connections are refused.
    ensure!(
        async_nats::ConnectOptions::new()
            .connect(format!("nats://127.0.0.1:{}", nats.port))
            .await
            .is_err(),
        "an anonymous client was accepted"
    );
    ensure!(
        nats.connect("jobs", "wrong").await.is_err(),
        "a wrong password was accepted"
    );

    // The services user sets everything up with the services' own stream and consumer code.
    let services = nats.connect("services", SERVICES_PW).await?;
    let sjs = async_nats::jetstream::new(services.clone());
    airlock_runtime::nats::ensure_streams(
        &sjs,
        &subjects,
        &airlock_runtime::nats::StreamOptions::default(),
    )
    .await
    .context("the services user cannot create the streams")?;
    let results = airlock_runtime::nats::ensure_consumer(
        &sjs,
        &airlock_runtime::nats::ConsumerSpec {
            stream: airlock_runtime::nats::stream_name(
                &subjects,
                airlock_schemas::subjects::STREAM_RESULTS,
            ),
            durable: "airlock-ingester".into(),
            filter: subjects.results_all(),
            max_ack_pending: 100,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
        },
    )
    .await
    .context("the services user cannot create a consumer")?;

    // A job publishes its result with JetStream and gets the stream's ack, across the account boundary.
    let job = nats.connect("jobs", JOBS_PW).await?;
    let jjs = async_nats::jetstream::new(job.clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(airlock_schemas::env::RUN_TOKEN_HEADER, "the-token");
    let ack = jjs
        .publish_with_headers(subjects.results("run-1"), headers, "{\"ok\":true}".into())
        .await
        .context("publishing the result")?
        .await
        .context("the job got no JetStream ack for its result")?;
    ensure!(ack.stream == "AIRLOCK_RESULTS", "acked by {}", ack.stream);

    // The ingester (services) receives it, header intact, and can acknowledge it.
    let mut batch = results
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await?;
    let msg = batch
        .next()
        .await
        .ok_or_else(|| anyhow!("the result did not reach the results stream"))?
        .map_err(|e| anyhow!("{e}"))?;
    ensure!(msg.subject.as_str() == subjects.results("run-1"));
    ensure!(
        msg.headers
            .as_ref()
            .and_then(|h| h.get(airlock_schemas::env::RUN_TOKEN_HEADER))
            .map(|v| v.as_str())
            == Some("the-token"),
        "the run token header was lost"
    );
    msg.ack()
        .await
        .map_err(|e| anyhow!("services cannot ack: {e}"))?;

    // The job sees nothing of anyone else: not with `>`, not with `_INBOX.>`.
    let mut everything = job.subscribe(">").await?;
    let mut inboxes = job.subscribe("_INBOX.>").await?;
    job.flush().await?;

    // Services traffic the job must not see: an event, a run request pulled through an inbox, an API reply.
    services
        .publish(subjects.events("run-1"), "{}".into())
        .await?;
    sjs.publish(subjects.runs("default"), "{\"id\":\"secret-run\"}".into())
        .await?
        .await?;
    let runs_consumer = airlock_runtime::nats::ensure_consumer(
        &sjs,
        &airlock_runtime::nats::ConsumerSpec {
            stream: airlock_runtime::nats::stream_name(
                &subjects,
                airlock_schemas::subjects::STREAM_RUNS,
            ),
            durable: "airlock-dispatcher-default".into(),
            filter: subjects.runs("default"),
            max_ack_pending: 10,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
        },
    )
    .await?;
    let mut pulled = runs_consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await?;
    ensure!(
        pulled.next().await.is_some(),
        "services could not pull a run request"
    );
    // Nor another job's result (with its run token): the jobs share one account.
    let other_job = nats.connect("jobs", JOBS_PW).await?;
    other_job
        .publish(subjects.results("run-2"), "{\"theirs\":true}".into())
        .await?;
    other_job.flush().await?;
    services.flush().await?;
    stays_silent(&mut everything, "a job subscribed to `>`").await?;
    stays_silent(&mut inboxes, "a job subscribed to `_INBOX.>`").await?;

    // What the job publishes outside airlock.results.> goes nowhere.
    let mut runs = services.subscribe(subjects.runs_all()).await?;
    let mut timers = services.subscribe(subjects.timers_all()).await?;
    services.flush().await?;
    job.publish(subjects.runs("default"), "{\"id\":\"forged\"}".into())
        .await?;
    job.publish(
        subjects.timer(airlock_schemas::TimerKind::Cancel, Some("run-1")),
        "{}".into(),
    )
    .await?;
    job.flush().await?;
    stays_silent(&mut runs, "services listening on airlock.runs.>").await?;
    stays_silent(&mut timers, "services listening on airlock.timers.>").await?;

    // And it has no JetStream API.
    ensure!(
        !matches!(
            tokio::time::timeout(Duration::from_secs(3), jjs.get_stream("AIRLOCK_RESULTS")).await,
            Ok(Ok(_))
        ),
        "a job could read stream information"
    );
    Ok(())
}

#[tokio::test]
async fn the_api_serves_as_its_own_identity_and_clients_reach_it_but_jobs_do_not() -> Result<()> {
    let Some(binary) = nats_server() else {
        return skip_missing("nats-server", "run scripts/setup");
    };
    let nats = ConfiguredNats::start(&binary)?;
    let redis = airlock_test_support::RedisServer::start().await?;
    let dir = tempfile::tempdir()?;
    let health = free_port()?;
    let _api = airlock_test_support::Service::start(
        "airlock-api",
        &[
            "--runtime",
            "local",
            "--local-dir",
            &dir.path().display().to_string(),
        ],
        &[
            (
                "AIRLOCK_NATS_URL",
                format!("nats://api:{API_PW}@127.0.0.1:{}", nats.port),
            ),
            ("AIRLOCK_REDIS_URL", redis.url()),
            ("AIRLOCK_HTTP_ADDR", format!("127.0.0.1:{health}")),
        ],
    )?;
    airlock_test_support::wait_until(
        Duration::from_secs(60),
        "airlock-api ready as `api`",
        || async move {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", health))
                .await
                .ok()?;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await.ok()?;
            let mut buf = String::new();
            s.read_to_string(&mut buf).await.ok()?;
            buf.split_whitespace()
                .nth(1)
                .filter(|c| *c == "200")
                .map(drop)
        },
    )
    .await?;

    // Clients call the API and discover it.
    let client = nats.connect("clients", CLIENTS_PW).await?;
    let reply = client
        .request("airlock.api.status", r#"{"id":"nope"}"#.into())
        .await
        .context("clients cannot call the API")?;
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload)?;
    ensure!(reply["error"]["code"] == "not_found", "{reply}");
    let submitted = client
        .request(
            "airlock.api.submit",
            r#"{"queue":"default","request":{"id":"via-api","image":"docker.io/library/busybox:1.36"}}"#.into(),
        )
        .await
        .context("clients cannot submit through the API")?;
    let submitted: serde_json::Value = serde_json::from_slice(&submitted.payload)?;
    ensure!(
        submitted["id"] == "via-api",
        "the api user could not publish the request: {submitted}"
    );
    let info = client
        .request("$SRV.INFO.airlock", "".into())
        .await
        .context("clients cannot discover the API")?;
    let info: serde_json::Value = serde_json::from_slice(&info.payload)?;
    ensure!(info["name"] == "airlock", "{info}");

    // Clients cannot impersonate the API (subscribe to its subjects).
    let mut fake = client.subscribe("airlock.api.status").await?;
    client.flush().await?;
    let other = nats.connect("clients", CLIENTS_PW).await?;
    let _ = other
        .request("airlock.api.status", r#"{"id":"nope"}"#.into())
        .await;
    stays_silent(&mut fake, "a client subscribed to airlock.api.status").await?;

    // Jobs reach neither the API nor the runs subjects.
    let job = nats.connect("jobs", JOBS_PW).await?;
    ensure!(
        job.request("airlock.api.status", r#"{"id":"nope"}"#.into())
            .await
            .is_err(),
        "a job reached the API"
    );
    let services = nats.connect("services", SERVICES_PW).await?;
    let mut runs = services.subscribe("airlock.runs.>").await?;
    services.flush().await?;
    job.publish("airlock.runs.default", r#"{"id":"from-job"}"#.into())
        .await?;
    job.flush().await?;
    stays_silent(&mut runs, "services listening on airlock.runs.>").await?;
    Ok(())
}
