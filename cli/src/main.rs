//! The `airlock` command.
//!
//! # Layout
//! - `dev`: runs the whole system on this machine (NATS, Redis, the three services with the local sandbox).
//! - `client`: `submit`, `status`, `cancel` for users of a running system.
//! - `job`: `result`, run inside a job to publish its result with its token.

mod client;
mod dev;
mod image;
mod job;

use clap::{Parser, Subcommand};

/// Airlock: run untrusted containers from a queue, isolated, and keep their results safe.
#[derive(Debug, Parser)]
#[command(name = "airlock", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run NATS, Redis and the three services locally with the sandbox runtime.
    Dev(dev::DevArgs),
    /// Submit a run request.
    Submit(client::SubmitArgs),
    /// Show a run's record.
    Status(client::StatusArgs),
    /// Cancel a run.
    Cancel(client::CancelArgs),
    /// Inside a job: publish the job's result with its run token.
    Result(job::ResultArgs),
    /// Manage the local image store (import OCI layouts for air-gapped machines, list, remove).
    Image(image::ImageArgs),
}

fn main() -> std::process::ExitCode {
    // `airlock dev`'s local runs are supervised by this executable in a hidden mode.
    if let Some(code) = airlock_backend::local::supervise_if_asked() {
        return code;
    }
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Dev(a) => dev::run(a).await,
        Command::Submit(a) => client::submit(a).await,
        Command::Status(a) => client::status(a).await,
        Command::Cancel(a) => client::cancel(a).await,
        Command::Result(a) => job::result(a).await,
        Command::Image(a) => image::run(a.command, &a.store_dir).await,
    }
}
