//! `submit` and `wait`: a run from flags or a file, and waiting for its end with a live status line.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use airlock_schemas::api::{ErrorCode, Op, RunRef, RunView, SubmitReply, SubmitRequest};
use clap::Args;

use crate::conn::Api;
use crate::exit::{CliError, status_code};
use crate::output::{Output, print_json, print_view};

/// `airlock submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Queue to submit to.
    #[arg(long, default_value = "default")]
    queue: String,
    /// A run request as a JSON file (`-` for standard input); the request flags below are then ignored.
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
    /// Label `key=value` (repeatable).
    #[arg(long = "label", value_parser = parse_kv)]
    labels: Vec<(String, String)>,
    /// Wait for the run to end; the exit code says how it ended.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    waiting: WaitOptions,
    /// Command and arguments.
    #[arg(last = true)]
    command: Vec<String>,
}

/// How `--wait` and `wait` wait.
#[derive(Debug, Args)]
pub struct WaitOptions {
    /// Give up waiting after this long (exit code 6); the run goes on.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    wait_timeout: Duration,
}

/// `airlock wait`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Run id.
    id: String,
    #[command(flatten)]
    waiting: WaitOptions,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

/// A fresh run id: `run-` and 12 hex characters.
fn new_run_id() -> String {
    let mut bytes = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    format!("run-{}", hex::encode(bytes))
}

fn request_of(a: &SubmitArgs) -> Result<serde_json::Value, CliError> {
    if let Some(p) = &a.file {
        let bytes = if p.as_os_str() == "-" {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
                .map_err(|e| CliError::Other(format!("reading standard input: {e}")))?;
            b
        } else {
            std::fs::read(p).map_err(|e| {
                CliError::Other(format!(
                    "cannot read {}: {e}; check the --file path",
                    p.display()
                ))
            })?
        };
        return serde_json::from_slice(&bytes).map_err(|e| {
            CliError::Other(format!(
                "{} is not JSON ({e}); a run request is a JSON object (schemas/json/run-request.v1.json)",
                p.display()
            ))
        });
    }
    let mut r = serde_json::json!({
        "id": a.id.clone().unwrap_or_else(new_run_id),
        "image": a.image,
    });
    if !a.command.is_empty() {
        r["command"] = serde_json::json!(a.command);
    }
    if !a.env.is_empty() {
        r["env"] = serde_json::json!(a.env.iter().cloned().collect::<BTreeMap<_, _>>());
    }
    if !a.labels.is_empty() {
        r["labels"] = serde_json::json!(a.labels.iter().cloned().collect::<BTreeMap<_, _>>());
    }
    if let Some(d) = a.deadline {
        r["deadline_seconds"] = serde_json::json!(d);
    }
    Ok(r)
}

/// `airlock submit`: prints the id (or, with `--wait`, the final run).
pub async fn submit(api: &Api, a: SubmitArgs, out: Output) -> Result<(), CliError> {
    let request = request_of(&a)?;
    let reply: SubmitReply = api
        .call(
            Op::Submit,
            &SubmitRequest {
                queue: a.queue.clone(),
                request,
            },
        )
        .await?;
    if !a.wait {
        return match out {
            Output::Json => print_json(&reply),
            Output::Text => {
                println!("{}", reply.id);
                Ok(())
            }
        };
    }
    if out == Output::Text {
        println!("{}", reply.id);
    }
    wait_for(api, &reply.id, &a.waiting, out, true).await
}

/// `airlock wait`.
pub async fn wait(api: &Api, a: WaitArgs, out: Output) -> Result<(), CliError> {
    wait_for(api, &a.id, &a.waiting, out, false).await
}

/// Polls the run's status until it ended, showing a live line on a terminal (plain lines when piped);
/// prints the final run and turns its status into the exit code. A run `just_submitted` has no record until
/// a dispatcher takes its request from the queue, so until then it shows as `submitted`.
async fn wait_for(
    api: &Api,
    id: &str,
    w: &WaitOptions,
    out: Output,
    just_submitted: bool,
) -> Result<(), CliError> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last = None;
    let mut delay = Duration::from_millis(100);
    let view = loop {
        let v: RunView = match api.call(Op::Status, &RunRef { id: id.into() }).await {
            Err(CliError::Api(e)) if just_submitted && e.code == ErrorCode::NotFound => RunView {
                id: id.into(),
                ..RunView::default()
            },
            r => r?,
        };
        let status = v.status.map_or("submitted".to_string(), |s| s.to_string());
        if tty {
            eprint!("\r\x1b[2K{id} {status} {:>4}s", started.elapsed().as_secs());
            let _ = std::io::stderr().flush();
        } else if last.as_ref() != Some(&status) {
            eprintln!("{id} {status}");
        }
        last = Some(status);
        if v.status.is_some_and(|s| s.is_terminal()) {
            break v;
        }
        if started.elapsed() >= w.wait_timeout {
            if tty {
                eprintln!();
            }
            return Err(CliError::WaitTimeout(id.into()));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    };
    if tty {
        eprintln!();
    }
    match out {
        Output::Json => print_json(&view)?,
        Output::Text => print_view(&view)?,
    }
    let status = view.status.unwrap_or(airlock_schemas::RunStatus::Failed);
    if status_code(status) == 0 {
        Ok(())
    } else {
        Err(CliError::Run {
            id: id.into(),
            status,
            reason: view.reason,
        })
    }
}
