//! Airlock's wire contract, version 1.
//!
//! Everything an upstream system, a job or an operator can observe of Airlock is defined here as Rust types:
//! the NATS subjects and streams, the [`RunRequest`] a client publishes, the job environment, the result
//! token, the timer and lifecycle events, and the Redis run record. JSON Schemas generated from these types
//! are committed under `schemas/json/`.
//!
//! # Layout
//! - [`api`]: the request-reply API on `airlock.api.<op>`: operations, requests, replies, errors.
//! - [`subjects`]: subject names and stream names, all under a configurable prefix.
//! - [`request`]: [`RunRequest`] and its validation against an operator [`Policy`].
//! - [`limits`]: the size bounds of a request the contract states (env, args, labels, metadata).
//! - [`json`]: strict decoding of client bodies (exactly one JSON object, nothing else).
//! - [`quantity`]: Kubernetes resource quantities (`500m`, `256Mi`).
//! - [`record`]: the Redis run record, [`RunStatus`] and its forward-only ordering.
//! - [`event`]: [`TimerEvent`] for the janitor, [`LifecycleEvent`], [`ResultRejected`] and
//!   [`RequestRejected`] for clients.
//! - [`token`]: the HMAC run token that authenticates a job's result.
//! - [`env`]: the environment every job receives.
//! - [`labels`]: Kubernetes labels Airlock puts on what it creates.
//! - [`trace`]: the W3C `traceparent` a run carries across the services and its job.

pub mod api;
pub mod env;
pub mod event;
pub mod json;
pub mod labels;
pub mod limits;
pub mod quantity;
pub mod record;
pub mod request;
pub mod subjects;
pub mod token;
pub mod trace;

pub use event::{LifecycleEvent, RequestRejected, ResultRejected, TimerEvent, TimerKind};
pub use record::{RunStatus, TransitionError};
pub use request::{
    EgressDestination, EgressPort, FieldError, ImagePullPolicy, Policy, ResourceList, Resources,
    RunRequest, ValidatedRun, decode_request, is_valid_name, labels_are_valid,
};
pub use subjects::Subjects;
pub use trace::TraceParent;

/// Version of the wire contract these types describe.
pub const CONTRACT_VERSION: &str = "v1";

/// Returns the JSON Schemas of every public wire type, keyed by file name under `schemas/json/`.
pub fn json_schemas() -> Vec<(&'static str, serde_json::Value)> {
    fn schema<T: schemars::JsonSchema>() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(T)).unwrap_or(serde_json::Value::Null)
    }
    vec![
        ("run-request.v1.json", schema::<RunRequest>()),
        ("timer-event.v1.json", schema::<TimerEvent>()),
        ("lifecycle-event.v1.json", schema::<LifecycleEvent>()),
        ("result-rejected.v1.json", schema::<ResultRejected>()),
        ("request-rejected.v1.json", schema::<RequestRejected>()),
        ("run-record.v1.json", schema::<record::RunRecord>()),
        ("policy.v1.json", schema::<Policy>()),
        ("api/error.v1.json", schema::<api::ErrorReply>()),
        ("api/run-ref.v1.json", schema::<api::RunRef>()),
        ("api/run-view.v1.json", schema::<api::RunView>()),
        ("api/result-reply.v1.json", schema::<api::ResultReply>()),
        ("api/logs-request.v1.json", schema::<api::LogsRequest>()),
        ("api/log-chunk.v1.json", schema::<api::LogChunk>()),
        ("api/list-request.v1.json", schema::<api::ListRequest>()),
        ("api/list-reply.v1.json", schema::<api::ListReply>()),
        ("api/cancel-request.v1.json", schema::<api::CancelRequest>()),
        ("api/cancel-reply.v1.json", schema::<api::CancelReply>()),
        ("api/submit-request.v1.json", schema::<api::SubmitRequest>()),
        ("api/submit-reply.v1.json", schema::<api::SubmitReply>()),
    ]
}
