//! `metav1.Status` error bodies, shaped like the real API server's.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::kinds::Kind;

/// An API error that renders as a `Status` body with the matching HTTP code.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `Status.reason`, e.g. `NotFound`.
    pub reason: &'static str,
    /// `Status.message`.
    pub message: String,
    /// `Status.details`, if any.
    pub details: Option<Value>,
    /// `Retry-After` seconds, if any.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A bare error.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 404 NotFound for a named object.
    pub fn not_found(kind: Kind, name: &str) -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            format!("{} \"{}\" not found", qualified(kind), name),
        );
        e.details = Some(details(kind, name));
        e
    }

    /// 404 NotFound for an unknown path.
    pub fn path_not_found() -> Self {
        let mut e = Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
        e.details = Some(json!({}));
        e
    }

    /// 409 AlreadyExists.
    pub fn already_exists(kind: Kind, name: &str) -> Self {
        let mut e = Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{}\" already exists", qualified(kind), name),
        );
        e.details = Some(details(kind, name));
        e
    }

    /// 409 Conflict on a stale resourceVersion.
    pub fn conflict(kind: Kind, name: &str) -> Self {
        let mut e = Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                qualified(kind),
                name
            ),
        );
        e.details = Some(details(kind, name));
        e
    }

    /// 422 Invalid with field causes `(field, cause-reason, message)`.
    pub fn invalid(kind: Kind, name: &str, causes: Vec<(String, &'static str, String)>) -> Self {
        let joined: Vec<String> = causes
            .iter()
            .map(|(field, _, msg)| format!("{field}: {msg}"))
            .collect();
        let message = if joined.len() == 1 {
            format!(
                "{} \"{}\" is invalid: {}",
                kind.qualified_name(),
                name,
                joined[0]
            )
        } else {
            format!(
                "{} \"{}\" is invalid: [{}]",
                kind.qualified_name(),
                name,
                joined.join(", ")
            )
        };
        let causes: Vec<Value> = causes
            .into_iter()
            .map(|(field, reason, msg)| json!({"reason": reason, "message": msg, "field": field}))
            .collect();
        let mut e = Self::new(422, "Invalid", message);
        let mut d = json!({"name": name, "kind": kind.name(), "causes": causes});
        if !kind.group().is_empty() {
            d["group"] = json!(kind.group());
        }
        e.details = Some(d);
        e
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(ct: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct})"
            ),
        )
    }

    /// 410 Expired for a too-old resourceVersion.
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        let mut e = Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        );
        e.details = Some(json!({"causes": [{"message": e.message.clone()}]}));
        e
    }

    /// 429 TooManyRequests with a Retry-After.
    pub fn too_many_requests(retry_after: u64) -> Self {
        let mut e = Self::new(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
        );
        e.details = Some(json!({"retryAfterSeconds": retry_after}));
        e.retry_after = Some(retry_after);
        e
    }

    /// The `Status` JSON body.
    pub fn body(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (code, json_bytes(&self.body())).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// `pods` or `networkpolicies.networking.k8s.io`, as in real messages.
pub fn qualified(kind: Kind) -> String {
    if kind.group().is_empty() {
        kind.plural().to_string()
    } else {
        format!("{}.{}", kind.plural(), kind.group())
    }
}

fn details(kind: Kind, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": kind.plural()});
    if !kind.group().is_empty() {
        d["group"] = json!(kind.group());
    }
    d
}

/// Serialize a value as a JSON body (never fails for `Value`).
pub fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// A 200/201 JSON response.
pub fn json_response(code: u16, v: &Value) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    let mut resp = (code, json_bytes(v)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
