//! The `airlock` command.
//!
//! Every command but `dev` and `image` talks to Airlock only through its NATS API (`airlock.api.>`): no
//! Redis, no stream internals. Errors are one line naming the cause and the fix; exit codes are listed in
//! `exit` (and in `airlock --help`).
//!
//! # Layout
//! - `dev`: runs the whole system on this machine (NATS, Redis, the services with the local sandbox);
//!   `dev_client`: what its `--demo` uses.
//! - `conn`: connecting like the `nats` CLI (`--nats-url`, `--creds`, `--context`) and calling the API.
//! - `submit`: `submit [--wait]` and `wait`; `read`: `status`, `result`, `logs [-f]`, `list`, `cancel`.
//! - `output`: `--output text|json`; `exit`: exit codes and errors.
//! - `image`: the local image store.

mod conn;
mod dev;
mod dev_client;
mod exit;
mod image;
mod output;
mod read;
mod submit;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::exit::CliError;
use crate::output::Output;

/// Airlock: run untrusted containers from a queue, isolated, and keep their results safe.
#[derive(Debug, Parser)]
#[command(name = "airlock", version, about, after_help = exit::help())]
struct Cli {
    #[command(flatten)]
    conn: conn::ConnArgs,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run NATS, Redis and the services locally with the sandbox runtime.
    Dev(dev::DevArgs),
    /// Submit a run; prints its id (with --wait, waits and exits with the run's outcome).
    #[command(after_help = exit::help())]
    Submit(submit::SubmitArgs),
    /// Show a run.
    Status(read::IdArgs),
    /// Print a run's result.
    Result(read::IdArgs),
    /// Print a run's logs (-f: follow them until the run ends).
    Logs(read::LogsArgs),
    /// Cancel a run.
    Cancel(read::CancelArgs),
    /// List runs, newest first.
    List(read::ListArgs),
    /// Wait for a run to end; exits with its outcome.
    #[command(after_help = exit::help())]
    Wait(submit::WaitArgs),
    /// Inside a job: publish its result (the same as the `airlock-emit` binary).
    Emit {
        /// `airlock-emit`'s arguments (see `airlock emit --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Manage the local image store (import OCI layouts for air-gapped machines, list, remove).
    Image(image::ImageArgs),
}

fn main() -> ExitCode {
    // `airlock dev`'s local runs are supervised by this executable in a hidden mode.
    if let Some(code) = airlock_backend::local::supervise_if_asked() {
        return code;
    }
    run()
}

#[tokio::main]
async fn run() -> ExitCode {
    let cli = Cli::parse();
    let out = cli.output;
    let api_command = |c: &Command| {
        matches!(
            c,
            Command::Submit(_)
                | Command::Status(_)
                | Command::Result(_)
                | Command::Logs(_)
                | Command::Cancel(_)
                | Command::List(_)
                | Command::Wait(_)
        )
    };
    if api_command(&cli.command) {
        let api = match cli.conn.connect().await {
            Ok(a) => a,
            Err(e) => return e.report(),
        };
        let r = match cli.command {
            Command::Submit(a) => submit::submit(&api, a, out).await,
            Command::Wait(a) => submit::wait(&api, a, out).await,
            Command::Status(a) => read::status(&api, a, out).await,
            Command::Result(a) => read::result(&api, a, out).await,
            Command::Logs(a) => read::logs(&api, a, out).await,
            Command::Cancel(a) => read::cancel(&api, a, out).await,
            Command::List(a) => read::list(&api, a, out).await,
            _ => Ok(()),
        };
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => e.report(),
        };
    }
    let r: anyhow::Result<()> = match cli.command {
        Command::Dev(a) => dev::run(a).await,
        Command::Image(a) => image::run(a.command, &a.store_dir).await,
        Command::Emit { args } => {
            let code = airlock_emit::main_with(
                std::iter::once("airlock emit".to_string()).chain(args),
                &mut std::io::stdin(),
            );
            return ExitCode::from(code);
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "airlock",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        _ => Ok(()),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => CliError::Other(format!("{e:#}")).report(),
    }
}
