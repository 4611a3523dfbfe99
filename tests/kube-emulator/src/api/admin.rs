//! The admin API under `/__emulator/` (objects, requests, faults, holds, forced states).

use std::sync::Arc;

use axum::extract::Request;
use axum::http::Method;
use axum::response::Response;
use serde_json::{Value, json};

use super::{App, query_of};
use crate::faults::FaultRule;
use crate::kinds::Kind;
use crate::kubelet::ForcedState;
use crate::selector::LabelSelector;
use crate::status::{ApiError, json_response};

/// Serve one admin request.
///
/// Longer than 80 lines on purpose: it is the admin API's route table, one short arm per
/// endpoint, and reads best as one list.
pub(super) async fn admin(app: &Arc<App>, req: Request) -> Result<Response, ApiError> {
    let q = query_of(&req);
    let method = req.method().clone();
    let path = req
        .uri()
        .path()
        .trim_start_matches("/__emulator")
        .trim_matches('/')
        .to_string();
    let raw = axum::body::to_bytes(req.into_body(), 16 * 1024 * 1024)
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let kind_param = || -> Result<Kind, ApiError> {
        let k = q.get("kind").map(String::as_str).unwrap_or("pods");
        Kind::parse(k).ok_or_else(|| ApiError::bad_request(format!("unknown kind {k}")))
    };
    match (method, path.as_str()) {
        (Method::GET, "objects") => {
            let (items, _) = app
                .store
                .list(kind_param()?, q.get("namespace").map(String::as_str));
            Ok(json_response(200, &Value::Array(items)))
        }
        (Method::GET, "requests") => {
            let r = app.requests.lock().map(|r| r.clone()).unwrap_or_default();
            Ok(json_response(
                200,
                &serde_json::to_value(r).unwrap_or_default(),
            ))
        }
        (Method::DELETE, "requests") => {
            if let Ok(mut r) = app.requests.lock() {
                r.clear();
            }
            Ok(json_response(200, &json!({})))
        }
        (Method::GET, "counters") => {
            let mut deletes = serde_json::Map::new();
            let mut creates = serde_json::Map::new();
            for k in Kind::ALL {
                deletes.insert(k.name().into(), json!(app.store.delete_count(k)));
                creates.insert(k.name().into(), json!(app.store.create_count(k)));
            }
            Ok(json_response(
                200,
                &json!({"deletes": deletes, "creates": creates, "resourceVersion": app.store.current_rv().to_string()}),
            ))
        }
        (Method::POST, "faults") => {
            let rule: FaultRule = serde_json::from_slice(&raw)
                .map_err(|e| ApiError::bad_request(format!("bad fault rule: {e}")))?;
            if let Ok(mut f) = app.faults.lock() {
                f.push(rule);
            }
            Ok(json_response(201, &json!({})))
        }
        (Method::DELETE, "faults") => {
            if let Ok(mut f) = app.faults.lock() {
                f.clear();
            }
            Ok(json_response(200, &json!({})))
        }
        (Method::POST, "hold") => {
            let sel =
                LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
                    .map_err(ApiError::bad_request)?;
            app.kubelet.hold_pending(sel);
            Ok(json_response(201, &json!({})))
        }
        (Method::DELETE, "hold") => {
            app.kubelet.release_holds();
            Ok(json_response(200, &json!({})))
        }
        (Method::POST, "force") => {
            let ns = q.get("namespace").map(String::as_str).unwrap_or("default");
            let name = q.get("name").map(String::as_str).unwrap_or("");
            let state = match q.get("state").map(String::as_str).unwrap_or("") {
                "Evicted" => ForcedState::Evicted,
                "OOMKilled" => ForcedState::OomKilled,
                s => match s.strip_prefix("Exit:").and_then(|c| c.parse().ok()) {
                    Some(c) => ForcedState::Exited(c),
                    None => {
                        return Err(ApiError::bad_request(format!(
                            "unknown state {s:?}; use Evicted, OOMKilled or Exit:N"
                        )));
                    }
                },
            };
            if app.kubelet.force(ns, name, state) {
                Ok(json_response(200, &json!({})))
            } else {
                Err(ApiError::not_found(Kind::Pod, name))
            }
        }
        (Method::POST, "compact") => {
            app.store.compact();
            Ok(json_response(
                200,
                &json!({"resourceVersion": app.store.current_rv().to_string()}),
            ))
        }
        _ => Err(ApiError::path_not_found()),
    }
}
