//! GET and LIST of objects (JSON only: no Table).

use std::sync::Arc;

use axum::response::Response;
use serde_json::{Value, json};

use super::request::selectors;
use super::{App, Q};
use crate::kinds::Kind;
use crate::status::{ApiError, json_response};

pub(super) fn list(
    app: &Arc<App>,
    kind: Kind,
    ns: Option<&str>,
    q: &Q,
) -> Result<Response, ApiError> {
    let (ls, fs) = selectors(q)?;
    if q.get("resourceVersionMatch").map(String::as_str) == Some("Exact")
        && let Some(rv) = q.get("resourceVersion").and_then(|r| r.parse::<u64>().ok())
        && app.store.watch_from(rv).is_err()
    {
        return Err(ApiError::expired(rv, app.store.current_rv()));
    }
    let (items, rv) = app.store.list(kind, ns);
    let mut items: Vec<Value> = items
        .into_iter()
        .filter(|o| ls.matches_object(o) && fs.matches(o))
        .collect();
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(cont) = q.get("continue").filter(|c| !c.is_empty()) {
        let idx = items
            .iter()
            .position(|o| object_key(o) == *cont)
            .map(|i| i + 1)
            .unwrap_or(items.len());
        items.drain(..idx);
    }
    if let Some(limit) = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        && items.len() > limit
    {
        let remaining = items.len() - limit;
        items.truncate(limit);
        if let Some(last) = items.last() {
            meta["continue"] = json!(object_key(last));
            meta["remainingItemCount"] = json!(remaining);
        }
    }
    Ok(json_response(
        200,
        &json!({
            "kind": format!("{}List", kind.name()),
            "apiVersion": kind.api_version(),
            "metadata": meta,
            "items": items,
        }),
    ))
}

pub(super) fn object_key(o: &Value) -> String {
    let s = |p: &str| {
        o.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    format!("{}/{}", s("/metadata/namespace"), s("/metadata/name"))
}

pub(super) fn get(app: &Arc<App>, kind: Kind, ns: &str, name: &str) -> Result<Response, ApiError> {
    let obj = app
        .store
        .get(kind, ns, name)
        .ok_or_else(|| ApiError::not_found(kind, name))?;
    Ok(json_response(200, &obj))
}
