//! The operations: decoding a request, answering it.

mod logs;
mod read;
mod view;
mod write;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use airlock_backend::Backend;
use airlock_runtime::publish::Publisher;
use airlock_runtime::store::Store;
use airlock_schemas::Policy;
use airlock_schemas::api::{ApiError, ErrorCode, Op};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::serve::respond;

/// What every operation uses.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// The run store.
    pub store: Store,
    /// Publishes requests and timers.
    pub publisher: Publisher,
    /// The NATS connection (follow chunks and probes).
    pub client: async_nats::Client,
    /// Where the logs are.
    pub backend: Backend,
    /// The operator policy `submit` validates against.
    pub policy: Policy,
    /// Queues `submit` accepts (empty: any valid name).
    pub queues: Vec<String>,
    /// Most bytes of a `logs` tail.
    pub log_tail_bytes: usize,
    /// How often a follow probes its follower.
    pub follow_probe: Duration,
    /// Ends follows when the service stops.
    pub shutdown: CancellationToken,
    /// Follows relaying now (reported in `$SRV.STATS` as the `logs` endpoint's `data.follows`).
    pub follows: Arc<AtomicUsize>,
}

impl Ctx {
    /// Answers one request of `op`.
    pub(crate) async fn handle(&self, op: Op, req: async_nats::service::Request) {
        match op {
            Op::Status => respond(&req, self.status(&req.message.payload).await).await,
            Op::Result => respond(&req, self.result(&req.message.payload).await).await,
            Op::List => respond(&req, self.list(&req.message.payload).await).await,
            Op::Cancel => respond(&req, self.cancel(&req.message.payload).await).await,
            Op::Submit => respond(&req, self.submit(&req.message.payload).await).await,
            Op::Logs => self.logs(req).await,
        }
    }
}

/// Decodes a request body, or the `invalid` error naming the field.
fn decode<T: DeserializeOwned + Serialize>(body: &[u8]) -> Result<T, ApiError> {
    airlock_schemas::json::from_slice_object(body).map_err(|e| {
        ApiError::invalid(
            format!("invalid request: {}: {}", e.path, e.message),
            vec![airlock_schemas::api::ErrorDetail {
                field: e.path,
                message: e.message,
            }],
        )
    })
}

/// The `invalid` error for a malformed run id.
fn check_id(id: &str) -> Result<(), ApiError> {
    if airlock_schemas::is_valid_name(id) {
        return Ok(());
    }
    Err(ApiError::invalid(
        format!("{id:?} is not a run id"),
        vec![airlock_schemas::api::ErrorDetail {
            field: "id".into(),
            message: "1-40 characters of [a-z0-9-], starting and ending alphanumeric".into(),
        }],
    ))
}

/// `unavailable` for a failed dependency, logged.
fn unavailable(what: &str, id: Option<&str>, e: &dyn std::fmt::Display) -> ApiError {
    warn!(run_id = id.unwrap_or(""), error = %e, "{what} failed");
    ApiError::new(
        ErrorCode::Unavailable,
        format!("{what} failed ({e}); try again shortly"),
    )
}
