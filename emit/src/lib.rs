//! `airlock-emit`: what a job runs to deliver its result, in either runtime, with no more than the standard
//! library and `serde_json` (a static binary to copy into any image).
//!
//! ```text
//! airlock-emit [--file PATH | -] [--timeout SECONDS]
//! ```
//! The result (a JSON object) comes from `--file` or standard input. With `AIRLOCK_RESULT_FILE` set (the
//! local sandbox) it is written there and the runtime publishes it when the job ends. Otherwise it is
//! published to `AIRLOCK_RESULT_SUBJECT` on `AIRLOCK_NATS_URL` with the `Airlock-Run-Token` header
//! (`AIRLOCK_RUN_TOKEN`), as a request whose reply is JetStream's publish acknowledgement: success means
//! the results stream stored it. The run's `TRACEPARENT`, when set, goes with it as the `traceparent` header.
//!
//! Refusals it can see end with exit code 1 and one line saying why: not a JSON object, larger than
//! `AIRLOCK_MAX_RESULT_BYTES` (default 1 MiB, the ingester's default), the stream's error, or a NATS
//! permissions violation. The ingester's later checks (token, operator schema) are recorded on the run as
//! `result_rejections`, which the submitter sees with `airlock status`; a job cannot read them (jobs have no
//! access to events). Exit codes: 0 delivered, 1 refused, 2 usage, 3 NATS unreachable or no answer.
//!
//! # Layout
//! - this module: arguments, reading and checking the result, choosing the delivery.
//! - `nats`: a minimal blocking NATS client (CONNECT, PING/PONG, SUB, HPUB, MSG/HMSG) over a `TcpStream`.

mod nats;

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

/// Delivered.
pub const EXIT_OK: u8 = 0;
/// Refused (invalid result, stream error, permissions).
pub const EXIT_REFUSED: u8 = 1;
/// Bad arguments or environment.
pub const EXIT_USAGE: u8 = 2;
/// NATS could not be reached, or did not answer.
pub const EXIT_UNREACHABLE: u8 = 3;

const USAGE: &str = "usage: airlock-emit [--file PATH | -] [--timeout SECONDS]
Delivers this job's result (a JSON object from PATH or standard input): into AIRLOCK_RESULT_FILE when set
(local sandbox), else to AIRLOCK_RESULT_SUBJECT on AIRLOCK_NATS_URL with AIRLOCK_RUN_TOKEN.
Exit codes: 0 delivered, 1 refused, 2 usage, 3 NATS unreachable or no answer.";

/// Why delivering failed, with its exit code.
#[derive(Debug)]
pub enum EmitError {
    /// Bad arguments or environment.
    Usage(String),
    /// The result was refused.
    Refused(String),
    /// NATS could not be reached or did not answer.
    Unreachable(String),
}

impl EmitError {
    fn code(&self) -> u8 {
        match self {
            EmitError::Usage(_) => EXIT_USAGE,
            EmitError::Refused(_) => EXIT_REFUSED,
            EmitError::Unreachable(_) => EXIT_UNREACHABLE,
        }
    }
}

impl std::fmt::Display for EmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EmitError::Usage(m) | EmitError::Refused(m) | EmitError::Unreachable(m) => {
                f.write_str(m)
            }
        }
    }
}

impl std::error::Error for EmitError {}

/// Parsed arguments.
#[derive(Debug, Default)]
struct Args {
    file: Option<PathBuf>,
    timeout: Option<Duration>,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Args>, EmitError> {
    let mut a = Args::default();
    let mut it = args.into_iter().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "-" => a.file = None,
            "--file" => {
                let p = it
                    .next()
                    .ok_or_else(|| EmitError::Usage("--file needs a path".into()))?;
                a.file = (p != "-").then(|| PathBuf::from(p));
            }
            "--timeout" => {
                let s = it
                    .next()
                    .ok_or_else(|| EmitError::Usage("--timeout needs seconds".into()))?;
                let secs: f64 = s
                    .parse()
                    .ok()
                    .filter(|v: &f64| v.is_finite() && *v > 0.0)
                    .ok_or_else(|| {
                        EmitError::Usage(format!("--timeout {s:?} is not a number of seconds"))
                    })?;
                a.timeout = Some(Duration::from_secs_f64(secs));
            }
            other => return Err(EmitError::Usage(format!("unexpected argument {other:?}"))),
        }
    }
    Ok(Some(a))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Checks the result as the ingester will: a JSON object within the size limit.
fn check(body: &[u8]) -> Result<(), EmitError> {
    let max: usize = env("AIRLOCK_MAX_RESULT_BYTES")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024 * 1024);
    if body.len() > max {
        return Err(EmitError::Refused(format!(
            "the result is {} bytes, the limit is {max}; store large outputs elsewhere and return a reference",
            body.len()
        )));
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(EmitError::Refused(
            "the result must be a JSON object ({...}), not another JSON value".into(),
        )),
        Err(e) => Err(EmitError::Refused(format!(
            "the result is not valid JSON: {e}"
        ))),
    }
}

/// Delivers the result read from `--file` or `stdin`, as the environment says.
pub fn emit(
    args: impl IntoIterator<Item = String>,
    stdin: &mut dyn Read,
) -> Result<String, EmitError> {
    let Some(a) = parse_args(args)? else {
        return Ok(USAGE.to_string());
    };
    let body = match &a.file {
        Some(p) => std::fs::read(p)
            .map_err(|e| EmitError::Usage(format!("cannot read {}: {e}", p.display())))?,
        None => {
            let mut b = Vec::new();
            stdin
                .read_to_end(&mut b)
                .map_err(|e| EmitError::Usage(format!("reading standard input: {e}")))?;
            b
        }
    };
    check(&body)?;
    if let Some(path) = env("AIRLOCK_RESULT_FILE") {
        std::fs::write(&path, &body)
            .map_err(|e| EmitError::Refused(format!("cannot write the result file {path}: {e}")))?;
        return Ok(format!("result written to {path}"));
    }
    let need = |name: &str| {
        env(name).ok_or_else(|| {
            EmitError::Usage(format!(
                "{name} is not set: run airlock-emit inside an Airlock job (it sets AIRLOCK_RESULT_FILE, or \
                 AIRLOCK_NATS_URL, AIRLOCK_RESULT_SUBJECT and AIRLOCK_RUN_TOKEN)"
            ))
        })
    };
    let (url, subject, token) = (
        need("AIRLOCK_NATS_URL")?,
        need("AIRLOCK_RESULT_SUBJECT")?,
        need("AIRLOCK_RUN_TOKEN")?,
    );
    let timeout = a.timeout.unwrap_or(Duration::from_secs(10));
    let mut headers = vec![("Airlock-Run-Token", token.as_str())];
    // The run's trace goes on with the result; a value that is no header value is left out.
    let traceparent = env("TRACEPARENT").filter(|t| is_traceparent(t));
    if let Some(t) = &traceparent {
        headers.push(("traceparent", t.as_str()));
    }
    let ack = nats::publish_acked(&url, &subject, &headers, &body, timeout)?;
    Ok(format!("result stored ({ack})"))
}

/// Whether `t` has the shape of a W3C `traceparent` (`00-` then hex and dashes, 55 characters).
fn is_traceparent(t: &str) -> bool {
    t.len() == 55
        && t.starts_with("00-")
        && t.bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Runs `airlock-emit` with `args` (the first is the program name); prints one line and returns the exit
/// code.
pub fn main_with(args: impl IntoIterator<Item = String>, stdin: &mut dyn Read) -> u8 {
    match emit(args, stdin) {
        Ok(msg) => {
            eprintln!("{msg}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("airlock-emit: {e}");
            e.code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_json_object_within_the_limit_passes_the_local_check() {
        assert!(check(br#"{"a":1}"#).is_ok());
        assert!(matches!(check(b"[1]"), Err(EmitError::Refused(_))));
        assert!(matches!(check(b"{"), Err(EmitError::Refused(_))));
        assert!(matches!(check(b"\"x\""), Err(EmitError::Refused(_))));
    }

    #[test]
    fn only_a_w3c_shaped_traceparent_is_passed_on() {
        assert!(is_traceparent(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ));
        assert!(!is_traceparent(""));
        assert!(!is_traceparent(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nX: y"
        ));
        assert!(!is_traceparent(
            "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01"
        ));
    }

    #[test]
    fn arguments_are_checked() {
        let args = |v: &[&str]| parse_args(v.iter().map(|s| s.to_string()));
        assert!(matches!(args(&["e", "--file"]), Err(EmitError::Usage(_))));
        assert!(matches!(args(&["e", "--bogus"]), Err(EmitError::Usage(_))));
        assert!(matches!(
            args(&["e", "--timeout", "-1"]),
            Err(EmitError::Usage(_))
        ));
        assert!(matches!(args(&["e", "--help"]), Ok(None)));
    }
}
