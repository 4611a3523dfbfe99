//! Exit codes and one-line errors: every failure the CLI expects names its cause and what to do.
//!
//! | Code | Meaning |
//! | --- | --- |
//! | 0 | success (for `submit --wait` / `wait`: the run succeeded) |
//! | 1 | the run failed |
//! | 2 | usage error (bad flags) |
//! | 3 | the run timed out |
//! | 4 | the run was rejected (invalid request or refused by policy) |
//! | 5 | the run was cancelled |
//! | 6 | `--wait-timeout` passed before the run ended |
//! | 7 | no such run |
//! | 8 | the request is invalid (each field at fault is printed) |
//! | 9 | the run has no result (yet) |
//! | 10 | the run already ended (cancel) |
//! | 69 | could not reach Airlock (NATS unreachable, no API answering, or a dependency unavailable) |
//! | 70 | any other error |

use std::process::ExitCode;

use airlock_schemas::RunStatus;
use airlock_schemas::api::{ApiError, ErrorCode};

/// The exit codes (see the module documentation).
pub mod code {
    /// Success.
    pub const OK: u8 = 0;
    /// The run failed.
    pub const FAILED: u8 = 1;
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

/// The text `--help` shows about exit codes.
pub const HELP: &str = "Exit codes: 0 success (run succeeded), 1 run failed, 2 usage error, 3 run timed out, \
4 run rejected, 5 run cancelled, 6 --wait-timeout passed, 7 no such run, 8 invalid request, 9 no result yet, \
10 run already ended, 69 could not reach Airlock, 70 other error.";

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
    use super::*;

    #[test]
    fn every_outcome_has_its_own_exit_code() {
        let codes: std::collections::BTreeSet<u8> = [
            status_code(RunStatus::Succeeded),
            status_code(RunStatus::Failed),
            status_code(RunStatus::TimedOut),
            status_code(RunStatus::Rejected),
            status_code(RunStatus::Cancelled),
            code::WAIT_TIMEOUT,
            code::UNREACHABLE,
        ]
        .into();
        assert_eq!(codes.len(), 7);
    }
}
