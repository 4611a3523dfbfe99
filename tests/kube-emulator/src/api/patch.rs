//! PATCH: JSON merge, JSON patch and strategic merge (applied as a merge patch). Server-side apply
//! is not served (415).

use std::sync::Arc;

use axum::response::Response;
use serde_json::Value;

use super::write::update_object;
use super::{App, Q};
use crate::kinds::Kind;
use crate::status::ApiError;

#[allow(clippy::too_many_arguments)]
pub(super) fn patch(
    app: &Arc<App>,
    kind: Kind,
    ns: &str,
    name: &str,
    status_only: bool,
    ct: &str,
    q: &Q,
    raw: &[u8],
) -> Result<Response, ApiError> {
    let ct = ct.split(';').next().unwrap_or("").trim().to_string();
    let patch_body: Value = serde_json::from_slice(raw)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let Some(current) = app.store.get_shared(kind, ns, name) else {
        return Err(ApiError::not_found(kind, name));
    };
    let mut next = Value::clone(&current);
    match ct.as_str() {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            if !patch_body.is_object() {
                return Err(ApiError::bad_request(
                    "error decoding patch: json: cannot unmarshal non-object into Go value of type map[string]interface {}",
                ));
            }
            json_patch::merge(&mut next, &patch_body);
        }
        "application/json-patch+json" => {
            let p: json_patch::Patch = serde_json::from_value(patch_body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::patch(&mut next, &p).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    }
    let expected_rv = patch_body_rv(&next, &current);
    update_object(app, kind, ns, name, status_only, q, next, expected_rv)
}

/// A patch that sets metadata.resourceVersion acts as a precondition.
pub(super) fn patch_body_rv(next: &Value, current: &Value) -> Option<String> {
    let a = next
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str);
    let b = current
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str);
    if a != b { a.map(str::to_string) } else { None }
}
