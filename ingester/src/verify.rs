//! Checks on one result message that need no database: subject, token, size, encoding, shape; and the
//! reasons a submission is rejected.

use airlock_schemas::{Subjects, env, is_valid_name, json, token};

/// Why a submission was rejected, as a counter label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectKind {
    /// The subject does not name a valid run id.
    InvalidRunId,
    /// No `Airlock-Run-Token` header.
    MissingToken,
    /// The token is not the run's token.
    InvalidToken,
    /// The body is over the size limit.
    TooLarge,
    /// The body is not UTF-8.
    InvalidUtf8,
    /// The body is not a JSON object.
    NotAnObject,
    /// No record for the run.
    UnknownRun,
    /// The run is terminal and reaped, and the result was published after the reaping.
    RunReaped,
    /// The body does not match the JSON Schema registered for the run's image or queue.
    Schema,
}

impl RejectKind {
    /// Every kind, in counter order.
    pub const ALL: [RejectKind; 9] = [
        Self::InvalidRunId,
        Self::MissingToken,
        Self::InvalidToken,
        Self::TooLarge,
        Self::InvalidUtf8,
        Self::NotAnObject,
        Self::UnknownRun,
        Self::RunReaped,
        Self::Schema,
    ];

    /// Label for metrics (`snake_case`).
    pub fn label(self) -> &'static str {
        match self {
            Self::InvalidRunId => "invalid_run_id",
            Self::MissingToken => "missing_token",
            Self::InvalidToken => "invalid_token",
            Self::TooLarge => "too_large",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::NotAnObject => "not_an_object",
            Self::UnknownRun => "unknown_run",
            Self::RunReaped => "run_reaped",
            Self::Schema => "schema",
        }
    }
}

/// A rejected submission: its kind and the reason recorded on the run (a stable prefix, then details).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Kind, for counting.
    pub kind: RejectKind,
    /// Reason, for the record and the event.
    pub reason: String,
}

impl Rejection {
    /// A rejection whose reason is just the kind's fixed text.
    pub fn simple(kind: RejectKind) -> Self {
        let reason = match kind {
            RejectKind::InvalidRunId => "invalid run id",
            RejectKind::MissingToken => "missing token",
            RejectKind::InvalidToken => "invalid token",
            RejectKind::TooLarge => "body too large",
            RejectKind::InvalidUtf8 => "invalid UTF-8",
            RejectKind::NotAnObject => "not a JSON object",
            RejectKind::UnknownRun => "unknown run",
            RejectKind::RunReaped => "run already reaped",
            RejectKind::Schema => "schema",
        };
        Self {
            kind,
            reason: reason.to_string(),
        }
    }

    fn with(kind: RejectKind, reason: String) -> Self {
        Self { kind, reason }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// A message that passed every check needing no database.
#[derive(Debug)]
pub struct Candidate {
    /// The body as published (a JSON object, UTF-8).
    pub text: String,
    /// The body parsed, for schema validation.
    pub value: serde_json::Value,
}

/// The run id named by a result subject, if it is a valid run id.
pub fn run_id_of<'a>(subjects: &Subjects, subject: &'a str) -> Result<&'a str, Rejection> {
    subjects
        .run_of_result(subject)
        .filter(|id| is_valid_name(id))
        .ok_or_else(|| Rejection::simple(RejectKind::InvalidRunId))
}

/// Checks token, size, encoding and shape, in that order: nothing about an unauthenticated body is looked at.
pub fn check(
    secret: &[u8],
    run_id: &str,
    headers: Option<&async_nats::HeaderMap>,
    body: &[u8],
    max_bytes: usize,
) -> Result<Candidate, Rejection> {
    let token = headers
        .and_then(|h| h.get(env::RUN_TOKEN_HEADER))
        .map(|v| v.as_str())
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| Rejection::simple(RejectKind::MissingToken))?;
    if !token::verify(secret, run_id, token) {
        return Err(Rejection::simple(RejectKind::InvalidToken));
    }
    if body.len() > max_bytes {
        return Err(Rejection::with(
            RejectKind::TooLarge,
            format!("body is {} bytes, the limit is {max_bytes}", body.len()),
        ));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        Rejection::with(
            RejectKind::InvalidUtf8,
            format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        )
    })?;
    // Exactly one JSON object, the whole body: no trailing bytes, no second object, no other value.
    let value = json::object_from_slice(body)
        .map(serde_json::Value::Object)
        .map_err(|e| Rejection::with(RejectKind::NotAnObject, e.message))?;
    Ok(Candidate {
        text: text.to_string(),
        value,
    })
}

/// A schema rejection listing at most a few error paths, each message shortened (they may quote the body).
pub fn schema_rejection<'a>(errors: impl Iterator<Item = (String, String)> + 'a) -> Rejection {
    const MAX_ERRORS: usize = 5;
    const MAX_MESSAGE: usize = 160;
    let mut parts = Vec::new();
    let mut more = 0usize;
    for (path, message) in errors {
        if parts.len() == MAX_ERRORS {
            more += 1;
            continue;
        }
        let path = if path.is_empty() {
            "/".to_string()
        } else {
            path
        };
        parts.push(format!(
            "{}: {}",
            shorten(&path, MAX_MESSAGE),
            shorten(&message, MAX_MESSAGE)
        ));
    }
    let mut reason = format!("schema: {}", parts.join("; "));
    if more > 0 {
        reason.push_str(&format!("; and {more} more"));
    }
    Rejection::with(RejectKind::Schema, reason)
}

fn shorten(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123";

    fn headers(token: &str) -> async_nats::HeaderMap {
        let mut h = async_nats::HeaderMap::new();
        h.insert(env::RUN_TOKEN_HEADER, token);
        h
    }

    #[test]
    fn each_bad_submission_gets_its_specific_reason() {
        let good = headers(&token::sign(SECRET, "r-1"));
        let reason = |h: Option<&async_nats::HeaderMap>, body: &[u8]| {
            check(SECRET, "r-1", h, body, 16)
                .map(|_| ())
                .expect_err("rejected")
                .reason
        };
        assert_eq!(reason(None, b"{}"), "missing token");
        assert_eq!(reason(Some(&headers("abc")), b"{}"), "invalid token");
        assert_eq!(
            reason(Some(&headers(&token::sign(SECRET, "r-2"))), b"{}"),
            "invalid token"
        );
        assert_eq!(
            reason(Some(&good), &[b'x'; 17]),
            "body is 17 bytes, the limit is 16"
        );
        assert_eq!(
            reason(Some(&good), b"{\"a\":\"\xff\"}"),
            "invalid UTF-8 at byte 6"
        );
        assert_eq!(
            reason(Some(&good), b"[1]"),
            "not a JSON object: got an array"
        );
        assert!(reason(Some(&good), b"{").starts_with("not a JSON object: invalid JSON"));
        for two in [&b"{} x"[..], b"{}{}", b"{\"a\":1} {\"a\":2}"] {
            assert!(
                reason(Some(&good), two).starts_with("not a JSON object: invalid JSON: trailing"),
                "{two:?}"
            );
        }
        assert!(check(SECRET, "r-1", Some(&good), b"{\"a\":1}", 16).is_ok());
    }

    #[test]
    fn run_ids_come_from_the_subject_and_must_be_valid() {
        let s = Subjects::default();
        assert_eq!(run_id_of(&s, "airlock.results.r-1"), Ok("r-1"));
        assert!(run_id_of(&s, "airlock.results.R_1").is_err());
        assert!(run_id_of(&s, "airlock.results.a.b").is_err());
    }

    #[test]
    fn schema_reasons_are_bounded() {
        let errs = (0..8).map(|i| (format!("/a/{i}"), "x".repeat(500)));
        let r = schema_rejection(errs);
        assert!(r.reason.starts_with("schema: /a/0: xxx"));
        assert!(r.reason.ends_with("; and 3 more"));
        assert!(r.reason.len() < 1000);
        let r = schema_rejection(std::iter::once((String::new(), "m".to_string())));
        assert_eq!(r.reason, "schema: /: m");
    }
}
