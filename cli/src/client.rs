//! `submit`, `status` and `cancel`: the client side of a running system.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use airlock_runtime::config::Endpoints;
use airlock_runtime::publish::Publisher;
use airlock_runtime::store::Store;
use airlock_schemas::{LifecycleEvent, RunRequest, Subjects};
use anyhow::{Context, bail};
use async_nats::jetstream;
use clap::Args;
use futures::StreamExt;

/// Submit a run request.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    /// Queue to submit to.
    #[arg(long, default_value = "default")]
    queue: String,
    /// A request as a JSON file (other request flags are then ignored).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Run id (generated when absent).
    #[arg(long)]
    id: Option<String>,
    /// Image.
    #[arg(long, default_value = "docker.io/library/busybox:1.36")]
    image: String,
    /// Deadline in seconds.
    #[arg(long)]
    deadline: Option<u64>,
    /// Environment variable `NAME=VALUE` (repeatable).
    #[arg(long = "env", value_parser = parse_kv)]
    env: Vec<(String, String)>,
    /// Wait for the run to end and print its record.
    #[arg(long)]
    wait: bool,
    /// How long `--wait` waits.
    #[arg(long, default_value = "600")]
    wait_seconds: u64,
    /// Command and arguments.
    #[arg(last = true)]
    command: Vec<String>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

/// A fresh run id: `run-` and 12 hex characters.
pub fn new_run_id() -> String {
    let mut bytes = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    format!("run-{}", hex::encode(bytes))
}

/// Publishes `request` to `airlock.runs.<queue>` (deduplicated by run id) and waits for the stream's ack.
pub async fn publish_request(
    js: &jetstream::Context,
    subjects: &Subjects,
    queue: &str,
    request: &RunRequest,
) -> anyhow::Result<()> {
    Publisher::new(js.clone(), subjects.clone())
        .request(queue, request, 1)
        .await
        .context(
            "the run request was not stored (are the services running? they create the streams)",
        )?;
    Ok(())
}

/// Waits for a terminal lifecycle event of `run_id`.
pub async fn wait_terminal(
    js: &jetstream::Context,
    subjects: &Subjects,
    run_id: &str,
    timeout: Duration,
) -> anyhow::Result<LifecycleEvent> {
    let stream = js
        .get_stream(airlock_runtime::nats::stream_name(
            subjects,
            airlock_schemas::subjects::STREAM_EVENTS,
        ))
        .await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subjects.events(run_id),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let wait = async {
        while let Some(msg) = messages.next().await {
            let msg = msg?;
            if let Ok(ev) = serde_json::from_slice::<LifecycleEvent>(&msg.payload) {
                eprintln!(
                    "  {} {}{}",
                    ev.at.format("%H:%M:%S%.3f"),
                    ev.status,
                    ev.reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                );
                if ev.status.is_terminal() {
                    return Ok(ev);
                }
            }
        }
        bail!("the event stream ended")
    };
    tokio::time::timeout(timeout, wait)
        .await
        .with_context(|| format!("run {run_id} did not end within {timeout:?}"))?
}

/// Prints a run's record as JSON.
pub async fn print_record(
    redis_url: &str,
    prefix: &str,
    run_id: &str,
) -> anyhow::Result<Option<airlock_schemas::record::RunRecord>> {
    let store = Store::connect(redis_url, prefix, Duration::from_secs(0)).await?;
    let rec = store.get(run_id).await?;
    match &rec {
        Some(r) => println!("{}", serde_json::to_string_pretty(r)?),
        None => eprintln!("no run {run_id}"),
    }
    Ok(rec)
}

/// `airlock submit`.
pub async fn submit(a: SubmitArgs) -> anyhow::Result<()> {
    let subjects = Subjects::new(&a.endpoints.subject_prefix);
    let request: RunRequest = match &a.file {
        Some(p) => serde_json::from_slice(&std::fs::read(p)?)
            .with_context(|| format!("{} is not a run request", p.display()))?,
        None => RunRequest {
            id: a.id.clone().unwrap_or_else(new_run_id),
            image: a.image.clone(),
            image_pull_policy: None,
            command: a.command.clone(),
            args: Vec::new(),
            env: a.env.iter().cloned().collect::<BTreeMap<_, _>>(),
            resources: Default::default(),
            deadline_seconds: a.deadline,
            egress: Vec::new(),
            labels: Default::default(),
            metadata: None,
        },
    };
    let client = airlock_runtime::nats::options_for(&a.endpoints.nats_url)?
        .connect(&a.endpoints.nats_url)
        .await?;
    let js = jetstream::new(client);
    publish_request(&js, &subjects, &a.queue, &request).await?;
    println!("{}", request.id);
    if a.wait {
        let ev = wait_terminal(
            &js,
            &subjects,
            &request.id,
            Duration::from_secs(a.wait_seconds),
        )
        .await?;
        print_record(
            &a.endpoints.redis_url,
            &a.endpoints.subject_prefix,
            &request.id,
        )
        .await?;
        if ev.status != airlock_schemas::RunStatus::Succeeded {
            bail!("run {} ended {}", request.id, ev.status);
        }
    }
    Ok(())
}

/// Show a run.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    /// Run id.
    run_id: String,
}

/// `airlock status`.
pub async fn status(a: StatusArgs) -> anyhow::Result<()> {
    if print_record(
        &a.endpoints.redis_url,
        &a.endpoints.subject_prefix,
        &a.run_id,
    )
    .await?
    .is_none()
    {
        bail!("no run {}", a.run_id);
    }
    Ok(())
}

/// Cancel a run.
#[derive(Debug, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    endpoints: Endpoints,
    /// Run id.
    run_id: String,
}

/// `airlock cancel`.
pub async fn cancel(a: CancelArgs) -> anyhow::Result<()> {
    let subjects = Subjects::new(&a.endpoints.subject_prefix);
    let client = airlock_runtime::nats::options_for(&a.endpoints.nats_url)?
        .connect(&a.endpoints.nats_url)
        .await?;
    let reply = client
        .request(subjects.cancel(&a.run_id), "".into())
        .await
        .context("no janitor answered")?;
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
    println!("{v}");
    if v.get("ok") != Some(&serde_json::Value::Bool(true)) {
        bail!("cancel refused");
    }
    Ok(())
}
