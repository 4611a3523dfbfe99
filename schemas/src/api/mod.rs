//! The request-reply API, version 1: a NATS "micro" service named [`SERVICE_NAME`] whose endpoints are
//! `airlock.api.<op>` ([`Op`]), served in a queue group by stateless replicas.
//!
//! Every request and every reply is one JSON object. A failed operation answers [`ErrorReply`]
//! (`{"error": {"code", "message", "details": [{"field", "message"}]}}`) and sets the micro service's
//! `Nats-Service-Error` / `Nats-Service-Error-Code` headers too, so generic NATS tooling sees the failure.
//!
//! `logs` with `follow` streams: the first reply is the current tail, then further [`LogChunk`]s are
//! published to the same reply subject, in order, until one with `end: true` (the run ended, or the
//! follow was stopped). A follower therefore subscribes to its own inbox and publishes the request with
//! that inbox as reply subject (a plain one-reply request only sees the first chunk). The service probes the
//! inbox every few seconds with an empty chunk sent as a request; when the server answers "no responders"
//! the follower is gone and the relay stops.
//!
//! # Layout
//! - this module: operations, errors and the service identity.
//! - `ops`: the request and reply types of each operation.

mod ops;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use ops::{
    CancelReply, CancelRequest, ListReply, ListRequest, LogChunk, LogsRequest, ResultReply, RunRef,
    RunView, SubmitReply, SubmitRequest,
};

use crate::FieldError;

/// Name of the NATS micro service (`$SRV.INFO.airlock`).
pub const SERVICE_NAME: &str = "airlock";

/// Version of the service's API (semver, as the micro convention wants).
pub const SERVICE_VERSION: &str = "1.0.0";

/// Queue group every replica's endpoints join.
pub const QUEUE_GROUP: &str = "airlock-api";

/// Most runs one `list` page holds.
pub const MAX_LIST_LIMIT: u32 = 500;

/// `list` page size when the request names none.
pub const DEFAULT_LIST_LIMIT: u32 = 50;

/// One operation: the last token of its subject `airlock.api.<op>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`RunRef`] → [`RunView`].
    Status,
    /// [`RunRef`] → [`ResultReply`] (or `not_ready`).
    Result,
    /// [`LogsRequest`] → [`LogChunk`]s.
    Logs,
    /// [`ListRequest`] → [`ListReply`].
    List,
    /// [`CancelRequest`] → [`CancelReply`].
    Cancel,
    /// [`SubmitRequest`] → [`SubmitReply`] (or `invalid` with every problem).
    Submit,
}

impl Op {
    /// Every operation.
    pub const ALL: [Op; 6] = [
        Op::Status,
        Op::Result,
        Op::Logs,
        Op::List,
        Op::Cancel,
        Op::Submit,
    ];

    /// Its subject token and endpoint name.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Status => "status",
            Op::Result => "result",
            Op::Logs => "logs",
            Op::List => "list",
            Op::Cancel => "cancel",
            Op::Submit => "submit",
        }
    }

    /// Parses a subject token.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// What kind of failure an [`ApiError`] is; clients decide by this, never by the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No run with this id (never submitted, or its record expired).
    NotFound,
    /// The request is not acceptable; `details` names every field at fault.
    Invalid,
    /// The run has no result (yet); ask again later or after it ended.
    NotReady,
    /// The run already ended, so it cannot be cancelled.
    Conflict,
    /// A dependency (Redis, JetStream, the runtime) is unavailable; retrying later may succeed.
    Unavailable,
    /// The service failed in a way retrying will not fix.
    Internal,
}

impl ErrorCode {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::Invalid => "invalid",
            Self::NotReady => "not_ready",
            Self::Conflict => "conflict",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The HTTP-like number for the micro service's `Nats-Service-Error-Code` header.
    pub fn status(self) -> usize {
        match self {
            Self::NotFound => 404,
            Self::Invalid => 400,
            Self::NotReady => 425,
            Self::Conflict => 409,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }
}

/// A problem with one field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// Dotted path of the field (`request.env.AIRLOCK_X`; `.` for the whole document).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl From<FieldError> for ErrorDetail {
    fn from(e: FieldError) -> Self {
        Self {
            field: e.path,
            message: e.message,
        }
    }
}

/// A failed operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// One line for people.
    pub message: String,
    /// Every field at fault (for `invalid`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<ErrorDetail>,
}

impl ApiError {
    /// An error without field details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// An `invalid` error listing `details`.
    pub fn invalid(message: impl Into<String>, details: Vec<ErrorDetail>) -> Self {
        Self {
            code: ErrorCode::Invalid,
            message: message.into(),
            details,
        }
    }

    /// `not_found` for run `id`.
    pub fn not_found(id: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("no run {id:?}"))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)?;
        for d in &self.details {
            write!(f, "; {}: {}", d.field, d.message)?;
        }
        Ok(())
    }
}

/// The reply of a failed operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorReply {
    /// What went wrong.
    pub error: ApiError,
}

/// Decodes a reply body: the operation's reply type `T`, or the [`ApiError`] it carries.
pub fn decode_reply<T: serde::de::DeserializeOwned>(
    body: &[u8],
) -> Result<Result<T, ApiError>, serde_json::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<T> {
        Err(ErrorReply),
        Ok(T),
    }
    Ok(match serde_json::from_slice::<Either<T>>(body)? {
        Either::Ok(t) => Ok(t),
        Either::Err(e) => Err(e.error),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_decodes_as_its_type_or_as_the_error_it_carries() {
        let ok = decode_reply::<SubmitReply>(br#"{"id":"r1"}"#).expect("json");
        assert_eq!(ok, Ok(SubmitReply { id: "r1".into() }));
        let body = serde_json::to_vec(&ErrorReply {
            error: ApiError::invalid(
                "bad",
                vec![ErrorDetail {
                    field: "request.image".into(),
                    message: "required".into(),
                }],
            ),
        })
        .expect("encodes");
        let err = decode_reply::<SubmitReply>(&body)
            .expect("json")
            .expect_err("an error");
        assert_eq!(err.code, ErrorCode::Invalid);
        assert_eq!(err.details[0].field, "request.image");
        assert!(decode_reply::<SubmitReply>(br#"{"other":1}"#).is_err());
    }

    #[test]
    fn every_operation_and_error_code_has_its_wire_name() {
        for op in Op::ALL {
            assert_eq!(Op::parse(op.as_str()), Some(op));
        }
        let code: ErrorCode = serde_json::from_str("\"not_ready\"").expect("parses");
        assert_eq!(code.as_str(), "not_ready");
    }
}
