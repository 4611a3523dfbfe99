//! `airlock result`: what a job runs to publish its result (Kubernetes runtime).

use std::io::Read;
use std::path::PathBuf;

use airlock_schemas::env;
use anyhow::{Context, bail};
use clap::Args;

/// Publish this job's result.
#[derive(Debug, Args)]
pub struct ResultArgs {
    /// File holding the result JSON object; standard input when absent.
    #[arg(long)]
    file: Option<PathBuf>,
    /// NATS URL.
    #[arg(long, env = "AIRLOCK_NATS_URL")]
    nats_url: String,
    /// Subject to publish to.
    #[arg(long, env = "AIRLOCK_RESULT_SUBJECT")]
    subject: String,
    /// The run token.
    #[arg(long, env = "AIRLOCK_RUN_TOKEN", hide_env_values = true)]
    token: String,
}

/// Publishes the result with the `Airlock-Run-Token` header and waits until the server has it.
pub async fn result(a: ResultArgs) -> anyhow::Result<()> {
    let body = match &a.file {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => {
            let mut b = Vec::new();
            std::io::stdin().read_to_end(&mut b)?;
            b
        }
    };
    if !matches!(
        serde_json::from_slice::<serde_json::Value>(&body),
        Ok(serde_json::Value::Object(_))
    ) {
        bail!("the result must be a JSON object");
    }
    let client = airlock_runtime::nats::options_for(&a.nats_url)?
        .connect(&a.nats_url)
        .await
        .context("connecting to NATS")?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(env::RUN_TOKEN_HEADER, a.token.as_str());
    // A request on the stream's subject gets the JetStream publish ack as its reply: stored, not just sent.
    let reply = client
        .request_with_headers(a.subject.clone(), headers, body.into())
        .await
        .context("publishing the result")?;
    let ack: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
    if ack.get("error").is_some() {
        bail!("the result was not stored: {ack}");
    }
    eprintln!("result published to {}", a.subject);
    Ok(())
}
