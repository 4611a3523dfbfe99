//! Fault injection rules and the request log.

use serde::{Deserialize, Serialize};

/// What an injected fault does to a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FaultAction {
    /// 429 TooManyRequests with `Retry-After: seconds`.
    TooManyRequests {
        /// Retry-After seconds.
        retry_after_seconds: u64,
    },
    /// 500 InternalError.
    InternalError,
    /// Close the connection without any response.
    DropConnection,
    /// Serve the request as usual, `millis` late (a slow API server).
    Delay {
        /// How late.
        millis: u64,
    },
}

/// A rule: fail the next `count` requests matching method and path substring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultRule {
    /// HTTP method to match (`None` = any).
    #[serde(default)]
    pub method: Option<String>,
    /// Substring the path (without query) must contain (`None` = any).
    #[serde(default)]
    pub path_contains: Option<String>,
    /// Substring the query string must contain, e.g. `watch=true` (`None` = any).
    #[serde(default)]
    pub query_contains: Option<String>,
    /// What to do.
    pub action: FaultAction,
    /// How many matching requests to fail.
    pub count: u32,
}

impl FaultRule {
    /// A rule failing the next `count` requests whose method is `method` (or any) and
    /// whose path contains `path_contains`.
    pub fn new(method: Option<&str>, path_contains: &str, action: FaultAction, count: u32) -> Self {
        Self {
            method: method.map(str::to_ascii_uppercase),
            path_contains: Some(path_contains.to_string()),
            query_contains: None,
            action,
            count,
        }
    }

    pub(crate) fn matches(&self, method: &str, path: &str, query: &str) -> bool {
        self.count > 0
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
            && self
                .query_contains
                .as_deref()
                .is_none_or(|q| query.contains(q))
    }
}

/// One served request, for assertions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Response status code (0 for a dropped connection).
    pub status: u16,
    /// Whether an injected fault produced the response.
    pub injected: bool,
}
