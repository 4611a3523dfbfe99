//! Exit codes and one-line errors: every failure the CLI expects names its cause and what to do.
//!
//! The codes and what they mean are [`TABLE`]: `--help` lists it ([`help`]) and README's exit-code table
//! states exactly it (a test reads README against it).

use std::process::ExitCode;

use airlock_schemas::RunStatus;
use airlock_schemas::api::{ApiError, ErrorCode};

/// The exit codes (see the module documentation).
pub mod code {
    /// Success.
    pub const OK: u8 = 0;
    /// The run failed.
    pub const FAILED: u8 = 1;
    /// Usage error: clap's own code for bad flags or arguments (it exits before any command runs).
    pub const USAGE: u8 = 2;
    /// The run timed out.
    pub const TIMED_OUT: u8 = 3;
    /// The run was rejected.
    pub const REJECTED: u8 = 4;
    /// The run was cancelled.
    pub const CANCELLED: u8 = 5;
    /// Waiting gave up before the run ended.
    pub const WAIT_TIMEOUT: u8 = 6;
    /// No such run.
    pub const NOT_FOUND: u8 = 7;
    /// Invalid request.
    pub const INVALID: u8 = 8;
    /// No result (yet).
    pub const NOT_READY: u8 = 9;
    /// The run already ended.
    pub const CONFLICT: u8 = 10;
    /// Could not reach Airlock.
    pub const UNREACHABLE: u8 = 69;
    /// Anything else.
    pub const OTHER: u8 = 70;
}

/// Every exit code and what it means, in order: the table README shows.
pub const TABLE: [(u8, &str); 13] = [
    (
        code::OK,
        "success (`submit --wait` / `wait`: the run succeeded)",
    ),
    (code::FAILED, "the run failed"),
    (code::USAGE, "usage error"),
    (code::TIMED_OUT, "the run timed out"),
    (code::REJECTED, "the run was rejected"),
    (code::CANCELLED, "the run was cancelled"),
    (
        code::WAIT_TIMEOUT,
        "`--wait-timeout` passed before the run ended",
    ),
    (code::NOT_FOUND, "no such run"),
    (
        code::INVALID,
        "invalid request (each field at fault is printed)",
    ),
    (code::NOT_READY, "the run has no result (yet)"),
    (code::CONFLICT, "the run already ended (cancel)"),
    (
        code::UNREACHABLE,
        "could not reach Airlock (NATS unreachable, no API answering, a dependency unavailable)",
    ),
    (code::OTHER, "any other error"),
];

/// The text `--help` shows about exit codes: [`TABLE`] on one line.
pub fn help() -> String {
    let rows: Vec<String> = TABLE.iter().map(|(c, m)| format!("{c} {m}")).collect();
    format!("Exit codes: {}.", rows.join(", "))
}

/// A failure of a command, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// NATS or the API could not be reached.
    #[error("{0}")]
    Unreachable(String),
    /// The API answered with an error.
    #[error("{}", describe(.0))]
    Api(ApiError),
    /// A run ended other than succeeded (`wait`).
    #[error("run {id} ended {status}{}", .reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Run {
        /// Run id.
        id: String,
        /// How it ended.
        status: RunStatus,
        /// Why.
        reason: Option<String>,
    },
    /// Waiting gave up.
    #[error("run {0} has not ended within --wait-timeout; wait again with `airlock wait {0}`")]
    WaitTimeout(String),
    /// Anything else (reading a file, encoding).
    #[error("{0}")]
    Other(String),
}

fn describe(e: &ApiError) -> String {
    let hint = match e.code {
        ErrorCode::NotFound => "; check the id with `airlock list`",
        ErrorCode::Invalid => "; fix the fields below and submit again",
        ErrorCode::NotReady => "; wait for the run with `airlock wait <id>`",
        ErrorCode::Unavailable => "; Airlock is degraded, try again shortly",
        _ => "",
    };
    let mut s = format!("{}{hint}", e.message);
    for d in &e.details {
        s.push_str(&format!("\n  {}: {}", d.field, d.message));
    }
    s
}

impl CliError {
    /// The process exit code.
    pub fn code(&self) -> u8 {
        match self {
            CliError::Unreachable(_) => code::UNREACHABLE,
            CliError::Api(e) => match e.code {
                ErrorCode::NotFound => code::NOT_FOUND,
                ErrorCode::Invalid => code::INVALID,
                ErrorCode::NotReady => code::NOT_READY,
                ErrorCode::Conflict => code::CONFLICT,
                ErrorCode::Unavailable => code::UNREACHABLE,
                ErrorCode::Internal => code::OTHER,
            },
            CliError::Run { status, .. } => status_code(*status),
            CliError::WaitTimeout(_) => code::WAIT_TIMEOUT,
            CliError::Other(_) => code::OTHER,
        }
    }

    /// Prints the error (one line, plus field details) and returns the exit code.
    pub fn report(&self) -> ExitCode {
        eprintln!("error: {self}");
        ExitCode::from(self.code())
    }
}

/// The exit code of a run that ended with `status`.
pub fn status_code(status: RunStatus) -> u8 {
    match status {
        RunStatus::Succeeded => code::OK,
        RunStatus::TimedOut => code::TIMED_OUT,
        RunStatus::Rejected => code::REJECTED,
        RunStatus::Cancelled => code::CANCELLED,
        _ => code::FAILED,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn api(code: ErrorCode) -> CliError {
        CliError::Api(ApiError {
            code,
            message: "m".into(),
            details: Vec::new(),
        })
    }

    fn run(status: RunStatus) -> CliError {
        CliError::Run {
            id: "r".into(),
            status,
            reason: None,
        }
    }

    /// The code each outcome exits with, found by the code paths the commands take.
    fn outcomes() -> Vec<(&'static str, u8)> {
        let usage = crate::Cli::try_parse_from(["airlock", "--no-such-flag"])
            .expect_err("a bad flag is a usage error")
            .exit_code();
        vec![
            ("succeeded", status_code(RunStatus::Succeeded)),
            ("failed", run(RunStatus::Failed).code()),
            ("usage", u8::try_from(usage).expect("small")),
            ("timed out", run(RunStatus::TimedOut).code()),
            ("rejected", run(RunStatus::Rejected).code()),
            ("cancelled", run(RunStatus::Cancelled).code()),
            ("wait timeout", CliError::WaitTimeout("r".into()).code()),
            ("not found", api(ErrorCode::NotFound).code()),
            ("invalid", api(ErrorCode::Invalid).code()),
            ("not ready", api(ErrorCode::NotReady).code()),
            ("conflict", api(ErrorCode::Conflict).code()),
            ("unreachable", CliError::Unreachable("x".into()).code()),
            ("unavailable", api(ErrorCode::Unavailable).code()),
            ("internal", api(ErrorCode::Internal).code()),
            ("other", CliError::Other("x".into()).code()),
        ]
    }

    #[test]
    fn every_outcome_exits_with_the_code_the_table_states() {
        let want = [
            ("succeeded", 0),
            ("failed", 1),
            ("usage", 2),
            ("timed out", 3),
            ("rejected", 4),
            ("cancelled", 5),
            ("wait timeout", 6),
            ("not found", 7),
            ("invalid", 8),
            ("not ready", 9),
            ("conflict", 10),
            ("unreachable", 69),
            ("unavailable", 69),
            ("internal", 70),
            ("other", 70),
        ];
        assert_eq!(outcomes(), want);
        let table: Vec<u8> = TABLE.iter().map(|(c, _)| *c).collect();
        assert_eq!(table, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 69, 70]);
    }

    /// The rows of README's table under the `| Exit code | Meaning |` header.
    fn readme_rows() -> Vec<(u8, String)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(path).expect("README.md is readable");
        let lines = readme
            .lines()
            .skip_while(|l| l.trim() != "| Exit code | Meaning |")
            .skip(2);
        let mut rows = Vec::new();
        for line in lines.take_while(|l| l.starts_with('|')) {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
            let [code, meaning] = cells[..] else {
                panic!("not a two-cell row: {line:?}");
            };
            rows.push((
                code.parse()
                    .unwrap_or_else(|_| panic!("not a code: {line:?}")),
                meaning.to_string(),
            ));
        }
        rows
    }

    #[test]
    fn the_readmes_exit_code_table_is_the_clis() {
        let want: Vec<(u8, String)> = TABLE.iter().map(|(c, m)| (*c, m.to_string())).collect();
        assert_eq!(readme_rows(), want);
    }
}
