//! What `airlock dev --demo` uses to submit its sample run and show its record. It reads Redis directly,
//! which only `airlock dev` may do (it runs Redis itself); every other command goes through the API.

use std::time::Duration;

use airlock_runtime::publish::Publisher;
use airlock_runtime::store::Store;
use airlock_schemas::{LifecycleEvent, RunRequest, Subjects};
use anyhow::{Context, bail};
use async_nats::jetstream;
use futures::StreamExt;

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
