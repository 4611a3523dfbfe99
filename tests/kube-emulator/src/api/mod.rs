//! The HTTP front: routing, CRUD, watch, logs, fault injection and the admin API.
//!
//! # Layout
//!
//! - this file: [`App`] (shared state), [`entry`] (faults, request log) and top-level routing.
//! - `request`: path → target, verb dispatch.
//! - `read`: get/list. `write`: create/update and admission. `patch`, `delete`.
//! - `watch`, `logs`, `admin` (`/__emulator/`).

mod admin;
mod delete;
mod logs;
mod patch;
mod read;
mod request;
mod watch;
mod write;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::faults::{FaultAction, FaultRule, RequestRecord};
use crate::kinds::Kind;
use crate::kubelet::Kubelet;
use crate::status::ApiError;
use crate::store::Store;

/// Shared server state.
#[derive(Debug)]
pub struct App {
    /// The object store.
    pub store: Arc<Store>,
    /// The kubelet.
    pub kubelet: Arc<Kubelet>,
    /// Pending fault rules.
    pub faults: Mutex<Vec<FaultRule>>,
    /// Served requests.
    pub requests: Mutex<Vec<RequestRecord>>,
    /// Interval between watch bookmarks.
    pub bookmark_interval: Duration,
}

type Q = HashMap<String, String>;

fn query_of(req: &Request) -> Q {
    Query::<Q>::try_from_uri(req.uri())
        .map(|q| q.0)
        .unwrap_or_default()
}

impl App {
    fn take_fault(&self, method: &str, path: &str, query: &str) -> Option<FaultAction> {
        let mut faults = self.faults.lock().ok()?;
        let rule = faults.iter_mut().find(|r| r.matches(method, path, query))?;
        rule.count -= 1;
        let action = rule.action;
        faults.retain(|r| r.count > 0);
        Some(action)
    }

    fn record(&self, method: &str, uri: &str, status: u16, injected: bool) {
        if let Ok(mut r) = self.requests.lock() {
            r.push(RequestRecord {
                method: method.to_string(),
                uri: uri.to_string(),
                status,
                injected,
            });
        }
    }
}

/// The single axum handler: every request goes through here.
pub async fn entry(State(app): State<Arc<App>>, req: Request) -> Response {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let uri = req.uri().to_string();
    if path.starts_with("/__emulator") {
        return admin::admin(&app, req)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    let fault = app.take_fault(&method, &path, &query);
    let resp = match fault {
        None => None,
        Some(FaultAction::Delay { millis }) => {
            tracing::debug!(%method, %uri, millis, "delaying");
            tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
            None
        }
        Some(
            action @ FaultAction::TooManyRequests {
                retry_after_seconds,
            },
        ) => Some((
            action,
            ApiError::too_many_requests(retry_after_seconds).into_response(),
        )),
        Some(action @ FaultAction::InternalError) => {
            Some((action, ApiError::internal("injected fault").into_response()))
        }
        Some(action @ FaultAction::DropConnection) => Some((action, dropped_connection())),
    };
    if let Some((action, resp)) = resp {
        tracing::debug!(%method, %uri, ?action, "injecting fault");
        let status = if action == FaultAction::DropConnection {
            0
        } else {
            resp.status().as_u16()
        };
        app.record(&method, &uri, status, true);
        return resp;
    }
    let resp = route(&app, req)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    app.record(&method, &uri, resp.status().as_u16(), fault.is_some());
    resp
}

/// A response whose body fails before anything is written: hyper closes the connection.
fn dropped_connection() -> Response {
    let stream = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("injected dropped connection"))
    });
    Response::new(Body::from_stream(stream))
}

/// The resource paths of the served kinds, and health checks; nothing else (no discovery, no OpenAPI).
async fn route(app: &Arc<App>, req: Request) -> Result<Response, ApiError> {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["healthz" | "livez" | "readyz", ..] => {
            Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "ok").into_response())
        }
        ["api", "v1", rest @ ..] if !rest.is_empty() => request::resource(app, "", rest, req).await,
        ["apis", group, "v1", rest @ ..] if !rest.is_empty() && Kind::GROUPS.contains(group) => {
            request::resource(app, group, rest, req).await
        }
        _ => Err(ApiError::path_not_found()),
    }
}
