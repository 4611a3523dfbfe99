//! Request and reply types of each API operation.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{RunRequest, RunStatus};

/// `status` and `result`: names one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRef {
    /// Run id.
    pub id: String,
}

/// `status`: what is known of a run (its record, without result and logs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunView {
    /// Run id.
    pub id: String,
    /// Current status (absent only for a record being written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    /// Why the run has its status (rejection reasons, failure reason, `DeadlineExceeded`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Exit code of the job's process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The request's labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Attempt (1-based).
    pub attempt: u32,
    /// Received at (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<String>,
    /// Started at (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Finished at (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Whether a result is stored (read it with `result`).
    pub has_result: bool,
    /// Rejected result submissions (forged, oversized...), most recent last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub result_rejections: Vec<String>,
}

/// `result`: the stored result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResultReply {
    /// Run id.
    pub id: String,
    /// The job's result (a JSON object).
    pub result: serde_json::Value,
    /// When it was stored (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_at: Option<String>,
}

/// `logs`: which run, and whether to follow it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsRequest {
    /// Run id.
    pub id: String,
    /// Keep streaming chunks to the reply subject until the run ends.
    #[serde(default)]
    pub follow: bool,
}

/// `logs`: one piece of a run's output; with `follow`, many arrive, the last with `end`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogChunk {
    /// Run id.
    pub id: String,
    /// Position of this chunk in the stream (0 first); a gap means chunks were lost.
    pub seq: u64,
    /// Output text (UTF-8, invalid bytes replaced); may be empty (a liveness probe).
    pub data: String,
    /// Nothing follows this chunk.
    pub end: bool,
    /// The run's status when the stream ended (on the `end` chunk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
}

/// `list`: filters and paging; runs come newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListRequest {
    /// Only runs with this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    /// Only runs of this queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Only runs with this label, `key=value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Most runs in the page (1-500, default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Where to continue: a previous page's `next_cursor` (opaque).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `list`: one page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListReply {
    /// The runs, newest submitted first.
    pub runs: Vec<RunView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `cancel`: which run, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// Run id.
    pub id: String,
    /// Why (kept on the record, at most 256 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `cancel`: the cancel request is durably recorded; the run ends `cancelled` shortly (unless it finished
/// first, which keeps its real outcome).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelReply {
    /// Run id.
    pub id: String,
    /// The status when the cancel was recorded.
    pub status: RunStatus,
}

/// `submit`: a run request for a queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// Queue (`airlock.runs.<queue>`).
    pub queue: String,
    /// The run request (validated against the contract and the operator policy).
    #[schemars(with = "RunRequest")]
    pub request: serde_json::Value,
}

/// `submit`: accepted for the queue (published to `airlock.runs.<queue>` with `Nats-Msg-Id` = id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitReply {
    /// Run id.
    pub id: String,
}
