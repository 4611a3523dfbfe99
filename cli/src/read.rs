//! `status`, `result`, `logs`, `list`, `cancel`: reading and cancelling runs through the API.

use std::io::Write;

use airlock_schemas::RunStatus;
use airlock_schemas::api::{
    CancelReply, CancelRequest, ListReply, ListRequest, LogChunk, LogsRequest, Op, ResultReply,
    RunRef, RunView,
};
use clap::Args;
use futures::StreamExt;

use crate::conn::{Api, decode};
use crate::exit::CliError;
use crate::output::{Output, print_json, print_view};

/// `airlock status|result|cancel <id>`.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// Run id.
    pub id: String,
}

/// `airlock cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Run id.
    pub id: String,
    /// Why (kept on the run).
    #[arg(long)]
    pub reason: Option<String>,
}

/// `airlock logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Run id.
    pub id: String,
    /// Keep printing output as the run writes it, until the run ends.
    #[arg(short, long)]
    pub follow: bool,
}

/// `airlock list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only runs with this status (queued, pending, running, succeeded, failed, timed_out, cancelled,
    /// rejected).
    #[arg(long, value_parser = parse_status)]
    pub status: Option<RunStatus>,
    /// Only runs of this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Only runs with this label, `key=value`.
    #[arg(long)]
    pub label: Option<String>,
    /// Runs per page.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Continue after a previous page (its `next_cursor`).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Fetch every page.
    #[arg(long)]
    pub all: bool,
}

fn parse_status(s: &str) -> Result<RunStatus, String> {
    RunStatus::parse(s).ok_or_else(|| {
        let all: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown status {s:?} (one of {})", all.join(", "))
    })
}

/// `airlock status`.
pub async fn status(api: &Api, a: IdArgs, out: Output) -> Result<(), CliError> {
    let v: RunView = api.call(Op::Status, &RunRef { id: a.id }).await?;
    match out {
        Output::Json => print_json(&v),
        Output::Text => print_view(&v),
    }
}

/// `airlock result`.
pub async fn result(api: &Api, a: IdArgs, out: Output) -> Result<(), CliError> {
    let r: ResultReply = api.call(Op::Result, &RunRef { id: a.id }).await?;
    match out {
        Output::Json => print_json(&r),
        Output::Text => print_json(&r.result),
    }
}

/// `airlock cancel`.
pub async fn cancel(api: &Api, a: CancelArgs, out: Output) -> Result<(), CliError> {
    let r: CancelReply = api
        .call(
            Op::Cancel,
            &CancelRequest {
                id: a.id,
                reason: a.reason,
            },
        )
        .await?;
    match out {
        Output::Json => print_json(&r),
        Output::Text => {
            println!("cancel requested for {} (was {})", r.id, r.status);
            Ok(())
        }
    }
}

/// `airlock list`.
pub async fn list(api: &Api, a: ListArgs, out: Output) -> Result<(), CliError> {
    let mut cursor = a.cursor.clone();
    let mut all = Vec::new();
    loop {
        let page: ListReply = api
            .call(
                Op::List,
                &ListRequest {
                    status: a.status,
                    queue: a.queue.clone(),
                    label: a.label.clone(),
                    limit: Some(a.limit),
                    cursor: cursor.clone(),
                },
            )
            .await?;
        if !a.all {
            return match out {
                Output::Json => print_json(&page),
                Output::Text => {
                    print_table(&page.runs);
                    if let Some(c) = &page.next_cursor {
                        eprintln!("more: --cursor {c}");
                    }
                    Ok(())
                }
            };
        }
        all.extend(page.runs);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    match out {
        Output::Json => print_json(&ListReply {
            runs: all,
            next_cursor: None,
        }),
        Output::Text => {
            print_table(&all);
            Ok(())
        }
    }
}

fn print_table(runs: &[RunView]) {
    for r in runs {
        println!(
            "{:<42} {:<10} {:<12} {}",
            r.id,
            r.status.map_or("-", |s| s.as_str()),
            r.queue.as_deref().unwrap_or("-"),
            r.submitted_at.as_deref().unwrap_or("-")
        );
    }
}

/// `airlock logs [-f]`.
pub async fn logs(api: &Api, a: LogsArgs, out: Output) -> Result<(), CliError> {
    let req = LogsRequest {
        id: a.id.clone(),
        follow: a.follow,
    };
    if !a.follow {
        let c: LogChunk = api.call(Op::Logs, &req).await?;
        return match out {
            Output::Json => print_json(&c),
            Output::Text => {
                print!("{}", c.data);
                let _ = std::io::stdout().flush();
                Ok(())
            }
        };
    }
    // A follow: chunks arrive on our own inbox until one says `end`.
    let subject = api.subjects.api(Op::Logs);
    let inbox = api.client.new_inbox();
    let mut sub =
        api.client.subscribe(inbox.clone()).await.map_err(|e| {
            CliError::Unreachable(format!("subscribing to a reply inbox failed ({e})"))
        })?;
    let body = serde_json::to_vec(&req).map_err(|e| CliError::Other(e.to_string()))?;
    api.client
        .publish_with_reply(subject.clone(), inbox, body.into())
        .await
        .map_err(|e| CliError::Unreachable(format!("publishing on {subject} failed ({e})")))?;
    let first = tokio::time::timeout(api.timeout, sub.next()).await;
    let mut next = match first {
        Ok(Some(m)) => Some(m),
        Ok(None) | Err(_) => {
            return Err(CliError::Unreachable(format!(
                "no Airlock API answered on {subject} within {:?}; is airlock-api running?",
                api.timeout
            )));
        }
    };
    let mut stdout = std::io::stdout();
    while let Some(msg) = next {
        if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            return Err(CliError::Unreachable(format!(
                "no Airlock API answers on {subject}; start airlock-api (or `airlock dev`)"
            )));
        }
        let chunk: LogChunk = decode(&msg.payload)?;
        if let Some(reply) = &msg.reply {
            // A liveness probe: answer so the service knows we are still here.
            let _ = api.client.publish(reply.clone(), "".into()).await;
        }
        match out {
            Output::Json => print_json(&chunk)?,
            Output::Text => {
                let _ = write!(stdout, "{}", chunk.data);
                let _ = stdout.flush();
            }
        }
        if chunk.end {
            if chunk.status.is_some_and(|s| !s.is_terminal()) {
                return Err(CliError::Unreachable(format!(
                    "the follow of {} stopped before the run ended (the API is restarting); run `airlock logs -f {}` again",
                    a.id, a.id
                )));
            }
            return Ok(());
        }
        next = sub.next().await;
    }
    Err(CliError::Unreachable(
        "the NATS connection closed during the follow; run the command again".into(),
    ))
}
