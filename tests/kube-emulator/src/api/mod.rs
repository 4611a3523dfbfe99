//! The HTTP front: routing, discovery, CRUD, watch, logs, fault injection and the admin API.
//!
//! # Layout
//!
//! - this file: [`App`] (shared state), [`entry`] (faults, request log) and top-level routing.
//! - `discovery`: `/api`, `/apis` and resource lists. `request`: path → target, verb dispatch.
//! - `read` and `table`: get/list. `write`: create/update and admission. `patch`, `delete`.
//! - `watch`, `logs`, `admin` (`/__emulator/`).

mod admin;
mod delete;
mod discovery;
mod logs;
mod patch;
mod read;
mod request;
mod table;
mod watch;
mod write;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::faults::{FaultAction, FaultRule, RequestRecord};
use crate::kubelet::Kubelet;
use crate::status::{ApiError, json_response};
use crate::store::Store;

/// The Kubernetes version the emulator claims to be.
pub const GIT_VERSION: &str = "v1.33.0";

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
    /// Schema directory for validation, if known.
    pub schema_dir: Option<std::path::PathBuf>,
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
    if let Some(action) = app.take_fault(&method, &path, &query) {
        tracing::debug!(%method, %uri, ?action, "injecting fault");
        let resp = match action {
            FaultAction::TooManyRequests {
                retry_after_seconds,
            } => ApiError::too_many_requests(retry_after_seconds).into_response(),
            FaultAction::InternalError => ApiError::internal("injected fault").into_response(),
            FaultAction::DropConnection => dropped_connection(),
        };
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
    app.record(&method, &uri, resp.status().as_u16(), false);
    resp
}

/// A response whose body fails before anything is written: hyper closes the connection.
fn dropped_connection() -> Response {
    let stream = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("injected dropped connection"))
    });
    Response::new(Body::from_stream(stream))
}

async fn route(app: &Arc<App>, req: Request) -> Result<Response, ApiError> {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    let get_only = |r: Value| -> Result<Response, ApiError> {
        if method == Method::GET {
            Ok(json_response(200, &r))
        } else {
            Err(ApiError::method_not_allowed(method.as_str()))
        }
    };
    match segs.as_slice() {
        [] => get_only(
            json!({"paths": ["/api", "/api/v1", "/apis", "/apis/networking.k8s.io", "/apis/networking.k8s.io/v1", "/healthz", "/livez", "/readyz", "/version"]}),
        ),
        ["version"] => get_only(json!({
            "major": "1", "minor": "33", "emulationMajor": "1", "emulationMinor": "33",
            "minCompatibilityMajor": "1", "minCompatibilityMinor": "32",
            "gitVersion": GIT_VERSION, "gitCommit": "airlock-kube-emulator", "gitTreeState": "clean",
            "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.2", "compiler": "gc",
            "platform": "linux/amd64",
        })),
        ["healthz" | "livez" | "readyz", ..] => {
            Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "ok").into_response())
        }
        ["api"] => get_only(json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
        })),
        ["api", "v1"] => get_only(discovery::resource_list("v1", "")),
        ["apis"] => get_only(json!({
            "kind": "APIGroupList", "apiVersion": "v1",
            "groups": [discovery::group_body()],
        })),
        ["apis", "networking.k8s.io"] => get_only(json!({
            "kind": "APIGroup", "apiVersion": "v1",
            "name": "networking.k8s.io",
            "versions": [{"groupVersion": "networking.k8s.io/v1", "version": "v1"}],
            "preferredVersion": {"groupVersion": "networking.k8s.io/v1", "version": "v1"},
        })),
        ["apis", "networking.k8s.io", "v1"] => get_only(discovery::resource_list(
            "networking.k8s.io/v1",
            "networking.k8s.io",
        )),
        ["api", "v1", rest @ ..] => request::resource(app, "", rest, req).await,
        ["apis", "networking.k8s.io", "v1", rest @ ..] => {
            request::resource(app, "networking.k8s.io", rest, req).await
        }
        _ => Err(ApiError::path_not_found()),
    }
}
