//! The HTTP front: routing, discovery, CRUD, watch, logs, fault injection and the admin API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::faults::{FaultAction, FaultRule, RequestRecord};
use crate::kinds::Kind;
use crate::kubelet::{ForcedState, Kubelet};
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::{ApiError, json_response};
use crate::store::{Change, Store};
use crate::validation;

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
        return admin(&app, req)
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
        ["api", "v1"] => get_only(resource_list("v1", "")),
        ["apis"] => get_only(json!({
            "kind": "APIGroupList", "apiVersion": "v1",
            "groups": [group_body()],
        })),
        ["apis", "networking.k8s.io"] => get_only(json!({
            "kind": "APIGroup", "apiVersion": "v1",
            "name": "networking.k8s.io",
            "versions": [{"groupVersion": "networking.k8s.io/v1", "version": "v1"}],
            "preferredVersion": {"groupVersion": "networking.k8s.io/v1", "version": "v1"},
        })),
        ["apis", "networking.k8s.io", "v1"] => {
            get_only(resource_list("networking.k8s.io/v1", "networking.k8s.io"))
        }
        ["api", "v1", rest @ ..] => resource(app, "", rest, req).await,
        ["apis", "networking.k8s.io", "v1", rest @ ..] => {
            resource(app, "networking.k8s.io", rest, req).await
        }
        _ => Err(ApiError::path_not_found()),
    }
}

fn group_body() -> Value {
    json!({
        "name": "networking.k8s.io",
        "versions": [{"groupVersion": "networking.k8s.io/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "networking.k8s.io/v1", "version": "v1"},
    })
}

fn resource_list(gv: &str, group: &str) -> Value {
    let verbs = json!([
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch"
    ]);
    let mut resources = Vec::new();
    for k in Kind::ALL.into_iter().filter(|k| k.group() == group) {
        let mut r = json!({
            "name": k.plural(), "singularName": k.singular(), "namespaced": k.namespaced(),
            "kind": k.name(), "verbs": verbs, "shortNames": k.short_names(),
        });
        if k == Kind::Pod {
            r["categories"] = json!(["all"]);
        }
        if k == Kind::Namespace {
            r["verbs"] = json!([
                "create", "delete", "get", "list", "patch", "update", "watch"
            ]);
        }
        resources.push(r);
        if matches!(k, Kind::Pod | Kind::Namespace) {
            resources.push(json!({"name": format!("{}/status", k.plural()), "singularName": "", "namespaced": k.namespaced(), "kind": k.name(), "verbs": ["get", "patch", "update"]}));
        }
        if k == Kind::Pod {
            resources.push(json!({"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}));
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

struct Target<'a> {
    kind: Kind,
    ns: Option<&'a str>,
    name: Option<&'a str>,
    sub: Option<&'a str>,
}

fn parse_target<'a>(group: &str, rest: &[&'a str]) -> Result<Target<'a>, ApiError> {
    let kind_of = |p: &str| Kind::from_plural(group, p).ok_or_else(ApiError::path_not_found);
    let t = match rest {
        [plural] => Target {
            kind: kind_of(plural)?,
            ns: None,
            name: None,
            sub: None,
        },
        ["namespaces", ns, plural]
            if Kind::from_plural(group, plural).is_some_and(Kind::namespaced) =>
        {
            Target {
                kind: kind_of(plural)?,
                ns: Some(ns),
                name: None,
                sub: None,
            }
        }
        ["namespaces", name] if group.is_empty() => Target {
            kind: Kind::Namespace,
            ns: None,
            name: Some(name),
            sub: None,
        },
        ["namespaces", name, sub] if group.is_empty() => Target {
            kind: Kind::Namespace,
            ns: None,
            name: Some(name),
            sub: Some(sub),
        },
        ["namespaces", ns, plural, name] => Target {
            kind: kind_of(plural)?,
            ns: Some(ns),
            name: Some(name),
            sub: None,
        },
        ["namespaces", ns, plural, name, sub] => Target {
            kind: kind_of(plural)?,
            ns: Some(ns),
            name: Some(name),
            sub: Some(sub),
        },
        [plural, name] => Target {
            kind: kind_of(plural)?,
            ns: None,
            name: Some(name),
            sub: None,
        },
        _ => return Err(ApiError::path_not_found()),
    };
    if t.kind.namespaced() && t.name.is_some() && t.ns.is_none() {
        return Err(ApiError::path_not_found());
    }
    match (t.kind, t.sub) {
        (_, None) | (Kind::Pod, Some("status" | "log")) | (Kind::Namespace, Some("status")) => {
            Ok(t)
        }
        _ => Err(ApiError::path_not_found()),
    }
}

async fn resource(
    app: &Arc<App>,
    group: &str,
    rest: &[&str],
    req: Request,
) -> Result<Response, ApiError> {
    let t = parse_target(group, rest)?;
    let q = query_of(&req);
    let method = req.method().clone();
    let headers = req.headers().clone();
    let raw = axum::body::to_bytes(req.into_body(), 64 * 1024 * 1024)
        .await
        .map_err(|e| ApiError::bad_request(format!("unable to read request body: {e}")))?;
    let ns = t.ns.unwrap_or("");
    match (t.name, t.sub, method.clone()) {
        (None, None, Method::GET) => {
            if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
                watch(app, t.kind, t.ns, &q)
            } else {
                list(app, t.kind, t.ns, &q, &headers)
            }
        }
        (None, None, Method::POST) => {
            if t.kind.namespaced() && t.ns.is_none() {
                return Err(ApiError::method_not_allowed("POST"));
            }
            create(app, t.kind, ns, &q, &raw)
        }
        (None, None, Method::DELETE) => delete_collection(app, t.kind, t.ns, &q),
        (Some(name), None, Method::GET) => get(app, t.kind, ns, name, &headers),
        (Some(name), Some("status"), Method::GET) => get(app, t.kind, ns, name, &headers),
        (Some(name), sub @ (None | Some("status")), Method::PUT) => {
            replace(app, t.kind, ns, name, sub.is_some(), &q, &raw)
        }
        (Some(name), sub @ (None | Some("status")), Method::PATCH) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            patch(app, t.kind, ns, name, sub.is_some(), &ct, &q, &raw)
        }
        (Some(name), None, Method::DELETE) => delete(app, t.kind, ns, name, &q, &raw),
        (Some(name), Some("log"), Method::GET) => logs(app, ns, name, &q).await,
        _ => Err(ApiError::method_not_allowed(method.as_str())),
    }
}

fn selectors(q: &Q) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let ls = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let fs = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    Ok((ls, fs))
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

fn list(
    app: &Arc<App>,
    kind: Kind,
    ns: Option<&str>,
    q: &Q,
    headers: &HeaderMap,
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
    if wants_table(headers) {
        return Ok(json_response(200, &table(kind, &items, meta)));
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

fn object_key(o: &Value) -> String {
    let s = |p: &str| {
        o.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    format!("{}/{}", s("/metadata/namespace"), s("/metadata/name"))
}

fn get(
    app: &Arc<App>,
    kind: Kind,
    ns: &str,
    name: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let obj = app
        .store
        .get(kind, ns, name)
        .ok_or_else(|| ApiError::not_found(kind, name))?;
    if wants_table(headers) {
        let rv = obj
            .pointer("/metadata/resourceVersion")
            .cloned()
            .unwrap_or(json!(""));
        return Ok(json_response(
            200,
            &table(kind, &[obj], json!({"resourceVersion": rv})),
        ));
    }
    Ok(json_response(200, &obj))
}

fn age(obj: &Value) -> String {
    let created = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    let Some(c) = created else {
        return "<unknown>".into();
    };
    let secs = (chrono::Utc::now() - c.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// A `meta.k8s.io/v1` Table, as `kubectl get` asks for.
fn table(kind: Kind, items: &[Value], meta: Value) -> Value {
    let col = |name: &str, ty: &str, desc: &str, prio: i32| json!({"name": name, "type": ty, "format": if name == "Name" {"name"} else {""}, "description": desc, "priority": prio});
    let s = |o: &Value, p: &str| {
        o.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let (cols, rows): (Vec<Value>, Vec<Value>) = match kind {
        Kind::Pod => (
            vec![
                col("Name", "string", "Name must be unique within a namespace.", 0),
                col("Ready", "string", "The aggregate readiness state of this pod for accepting traffic.", 0),
                col("Status", "string", "The aggregate status of the containers in this pod.", 0),
                col("Restarts", "string", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.", 0),
                col("Age", "string", "CreationTimestamp is a timestamp representing the server time when this object was created.", 0),
                col("IP", "string", "The IP address of the pod", 1),
                col("Node", "string", "The node the pod is scheduled on", 1),
            ],
            items.iter().map(|o| {
                let total = o.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
                let ready = o.pointer("/status/containerStatuses").and_then(Value::as_array)
                    .map_or(0, |cs| cs.iter().filter(|c| c["ready"] == json!(true)).count());
                let mut status = s(o, "/status/reason");
                if status.is_empty() {
                    status = o.pointer("/status/containerStatuses/0/state/terminated/reason")
                        .or_else(|| o.pointer("/status/containerStatuses/0/state/waiting/reason"))
                        .and_then(Value::as_str).map(str::to_string)
                        .unwrap_or_else(|| s(o, "/status/phase"));
                }
                if o.pointer("/metadata/deletionTimestamp").is_some() {
                    status = "Terminating".into();
                }
                let node = s(o, "/spec/nodeName");
                let ip = s(o, "/status/podIP");
                json!({"cells": [s(o, "/metadata/name"), format!("{ready}/{total}"), status, "0", age(o),
                    if ip.is_empty() {"<none>".to_string()} else {ip}, if node.is_empty() {"<none>".to_string()} else {node}],
                    "object": partial(kind, o)})
            }).collect(),
        ),
        Kind::Namespace => (
            vec![col("Name", "string", "Name must be unique within a namespace.", 0), col("Status", "string", "The status of the namespace", 0), col("Age", "string", "CreationTimestamp", 0)],
            items.iter().map(|o| json!({"cells": [s(o, "/metadata/name"), s(o, "/status/phase"), age(o)], "object": partial(kind, o)})).collect(),
        ),
        _ => (
            vec![col("Name", "string", "Name must be unique within a namespace.", 0), col("Age", "string", "CreationTimestamp", 0)],
            items.iter().map(|o| json!({"cells": [s(o, "/metadata/name"), age(o)], "object": partial(kind, o)})).collect(),
        ),
    };
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": cols, "rows": rows})
}

fn partial(kind: Kind, o: &Value) -> Value {
    let _ = kind;
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))})
}

fn strictness(q: &Q) -> bool {
    !matches!(
        q.get("fieldValidation").map(String::as_str),
        Some("Ignore" | "Warn")
    )
}

fn warn_header(resp: &mut Response, warnings: &[String]) {
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{}\"", w.replace('"', "\\\""))) {
            resp.headers_mut().append("Warning", v);
        }
    }
}

fn is_dry_run(q: &Q) -> bool {
    q.get("dryRun").is_some_and(|d| d == "All")
}

/// Decode, default and validate a whole object body for `kind` named `name`.
fn admit(kind: Kind, obj: &Value, q: &Q) -> Result<Vec<String>, ApiError> {
    let warnings = validation::decode_kind(kind, obj, strictness(q))?;
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut causes = validation::name_causes(kind, name);
    causes.extend(validation::semantic_causes(kind, obj));
    if !causes.is_empty() {
        return Err(ApiError::invalid(kind, name, causes));
    }
    Ok(warnings)
}

fn create(app: &Arc<App>, kind: Kind, ns: &str, q: &Q, raw: &[u8]) -> Result<Response, ApiError> {
    let mut obj = validation::parse_body(raw)?;
    validation::check_type_meta(kind, &obj, raw)?;
    let warnings = validation::decode_kind(kind, &obj, strictness(q))?;
    if obj.get("metadata").is_none_or(Value::is_null) {
        obj["metadata"] = json!({});
    }
    if kind.namespaced()
        && let Some(body_ns) = obj.pointer("/metadata/namespace").and_then(Value::as_str)
        && !body_ns.is_empty()
        && body_ns != ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty() {
        match obj
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
        {
            Some(g) if !g.is_empty() => {
                let generated = format!("{g}{}", app.store.random_suffix());
                obj["metadata"]["name"] = json!(generated);
            }
            _ => {
                return Err(ApiError::invalid(
                    kind,
                    "",
                    vec![(
                        "metadata.name".into(),
                        "FieldValueRequired",
                        "Required value: name or generateName is required".into(),
                    )],
                ));
            }
        }
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if kind.namespaced() && app.store.get(Kind::Namespace, "", ns).is_none() {
        return Err(ApiError::not_found(Kind::Namespace, ns));
    }
    validation::apply_defaults(kind, &mut obj);
    admit(kind, &obj, q)?;
    match kind {
        Kind::Pod => {
            let qos = "BestEffort";
            obj["status"] = json!({"phase": "Pending", "qosClass": qos});
        }
        Kind::Namespace => {
            obj["status"] = json!({"phase": "Active"});
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
        }
        _ => {}
    }
    let created = if is_dry_run(q) {
        obj
    } else {
        app.store.create(kind, ns, obj, true)?
    };
    let mut resp = json_response(201, &created);
    warn_header(&mut resp, &warnings);
    Ok(resp)
}

/// Pod spec fields a running pod may change (everything else is immutable).
fn pod_spec_mutable_view(spec: &Value) -> Value {
    let mut s = spec.clone();
    if let Some(o) = s.as_object_mut() {
        o.remove("activeDeadlineSeconds");
        o.remove("tolerations");
        o.remove("schedulingGates");
        for list in ["containers", "initContainers"] {
            if let Some(cs) = o.get_mut(list).and_then(Value::as_array_mut) {
                for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                    c.remove("image");
                }
            }
        }
    }
    s
}

/// Validate and store `next` as the new version of an existing object.
#[allow(clippy::too_many_arguments)]
fn update_object(
    app: &Arc<App>,
    kind: Kind,
    ns: &str,
    name: &str,
    status_only: bool,
    q: &Q,
    mut next: Value,
    expected_rv: Option<String>,
) -> Result<Response, ApiError> {
    validation::check_type_meta(kind, &next, &serde_json::to_vec(&next).unwrap_or_default())?;
    let body_name = next
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let warnings = validation::decode_kind(kind, &next, strictness(q))?;
    validation::apply_defaults(kind, &mut next);
    let dry = is_dry_run(q);
    let mut result_holder = None;
    let updated = app.store.modify(kind, ns, name, expected_rv.as_deref(), !dry, |cur| {
        let mut candidate = next.clone();
        if status_only {
            let mut c = cur.clone();
            c["status"] = candidate.get("status").cloned().unwrap_or(json!({}));
            candidate = c;
        } else if matches!(kind, Kind::Pod | Kind::Namespace) {
            candidate["status"] = cur.get("status").cloned().unwrap_or(json!({}));
        }
        if kind == Kind::Pod && !status_only {
            let a = pod_spec_mutable_view(cur.get("spec").unwrap_or(&Value::Null));
            let b = pod_spec_mutable_view(candidate.get("spec").unwrap_or(&Value::Null));
            if a != b {
                return Err(ApiError::invalid(kind, name, vec![(
                    "spec".into(),
                    "FieldValueForbidden",
                    "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into(),
                )]));
            }
        }
        if let Some(m) = candidate.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let causes = validation::semantic_causes(kind, &candidate);
        if !causes.is_empty() {
            return Err(ApiError::invalid(kind, name, causes));
        }
        if dry {
            result_holder = Some(candidate);
            return Err(ApiError::new(200, "DryRun", ""));
        }
        *cur = candidate;
        Ok(())
    });
    let updated = match updated {
        Err(e) if e.reason == "DryRun" => result_holder.unwrap_or_default(),
        other => other?,
    };
    let mut resp = json_response(200, &updated);
    warn_header(&mut resp, &warnings);
    Ok(resp)
}

fn replace(
    app: &Arc<App>,
    kind: Kind,
    ns: &str,
    name: &str,
    status_only: bool,
    q: &Q,
    raw: &[u8],
) -> Result<Response, ApiError> {
    let obj = validation::parse_body(raw)?;
    validation::check_type_meta(kind, &obj, raw)?;
    let rv = obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    if app.store.get(kind, ns, name).is_none() {
        return Err(ApiError::not_found(kind, name));
    }
    update_object(app, kind, ns, name, status_only, q, obj, rv)
}

#[allow(clippy::too_many_arguments)]
fn patch(
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
    let current = app.store.get(kind, ns, name);
    let Some(current) = current else {
        if ct == "application/apply-patch+yaml" && !status_only {
            return create(app, kind, ns, q, raw);
        }
        return Err(ApiError::not_found(kind, name));
    };
    let mut next = current.clone();
    match ct.as_str() {
        "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "application/apply-patch+yaml" => {
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
fn patch_body_rv(next: &Value, current: &Value) -> Option<String> {
    let a = next
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str);
    let b = current
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str);
    if a != b { a.map(str::to_string) } else { None }
}

struct DeleteOpts {
    grace: Option<i64>,
    orphan: bool,
    uid: Option<String>,
    rv: Option<String>,
    dry: bool,
}

fn delete_opts(q: &Q, raw: &[u8]) -> Result<DeleteOpts, ApiError> {
    let body: Value = if raw.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(raw).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        })?
    };
    let grace = q
        .get("gracePeriodSeconds")
        .and_then(|g| g.parse().ok())
        .or_else(|| body.get("gracePeriodSeconds").and_then(Value::as_i64));
    let policy = q.get("propagationPolicy").cloned().or_else(|| {
        body.get("propagationPolicy")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let orphan =
        policy.as_deref() == Some("Orphan") || body.get("orphanDependents") == Some(&json!(true));
    let s = |p: &str| body.pointer(p).and_then(Value::as_str).map(str::to_string);
    let dry = is_dry_run(q)
        || body
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All"));
    Ok(DeleteOpts {
        grace,
        orphan,
        uid: s("/preconditions/uid"),
        rv: s("/preconditions/resourceVersion"),
        dry,
    })
}

fn delete(
    app: &Arc<App>,
    kind: Kind,
    ns: &str,
    name: &str,
    q: &Q,
    raw: &[u8],
) -> Result<Response, ApiError> {
    let opts = delete_opts(q, raw)?;
    let obj = app
        .store
        .get(kind, ns, name)
        .ok_or_else(|| ApiError::not_found(kind, name))?;
    let s = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    if let Some(uid) = &opts.uid
        && *uid != s("/metadata/uid")
    {
        let mut e = ApiError::conflict(kind, name);
        e.message = format!(
            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
            s("/metadata/uid")
        );
        return Err(e);
    }
    if let Some(rv) = &opts.rv
        && *rv != s("/metadata/resourceVersion")
    {
        let mut e = ApiError::conflict(kind, name);
        e.message = format!(
            "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
            s("/metadata/resourceVersion")
        );
        return Err(e);
    }
    if opts.dry {
        return Ok(json_response(200, &obj));
    }
    match kind {
        Kind::Pod => {
            let grace = opts
                .grace
                .or_else(|| {
                    obj.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(30);
            let finished = matches!(s("/status/phase").as_str(), "Succeeded" | "Failed");
            let unscheduled = s("/spec/nodeName").is_empty();
            if grace <= 0 || unscheduled || finished || !app.kubelet.has_task(ns, name) {
                let removed = app.store.remove(kind, ns, name, !opts.orphan);
                Ok(json_response(200, removed.first().unwrap_or(&obj)))
            } else {
                let marked = app
                    .store
                    .mark_deleting(kind, ns, name, grace)
                    .unwrap_or(obj);
                Ok(json_response(200, &marked))
            }
        }
        Kind::Namespace => {
            if matches!(name, "default" | "kube-system" | "kube-public") {
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
                    ),
                ));
            }
            let marked = app.store.modify(kind, "", name, None, false, |n| {
                n["status"]["phase"] = json!("Terminating");
                Ok(())
            })?;
            app.store.remove(kind, "", name, true);
            Ok(json_response(200, &marked))
        }
        _ => {
            app.store.remove(kind, ns, name, !opts.orphan);
            let mut details =
                json!({"name": name, "kind": kind.plural(), "uid": s("/metadata/uid")});
            if !kind.group().is_empty() {
                details["group"] = json!(kind.group());
            }
            Ok(json_response(
                200,
                &json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details,
                }),
            ))
        }
    }
}

fn delete_collection(
    app: &Arc<App>,
    kind: Kind,
    ns: Option<&str>,
    q: &Q,
) -> Result<Response, ApiError> {
    let (ls, fs) = selectors(q)?;
    let (items, _) = app.store.list(kind, ns);
    let mut deleted = Vec::new();
    for o in items
        .into_iter()
        .filter(|o| ls.matches_object(o) && fs.matches(o))
    {
        let s = |p: &str| {
            o.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let resp = delete(
            app,
            kind,
            &s("/metadata/namespace"),
            &s("/metadata/name"),
            q,
            b"",
        );
        if resp.is_ok() {
            deleted.push(o);
        }
    }
    let rv = app.store.current_rv();
    Ok(json_response(
        200,
        &json!({
            "kind": format!("{}List", kind.name()), "apiVersion": kind.api_version(),
            "metadata": {"resourceVersion": rv.to_string()}, "items": deleted,
        }),
    ))
}

fn event_line(etype: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": etype, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn watch(app: &Arc<App>, kind: Kind, ns: Option<&str>, q: &Q) -> Result<Response, ApiError> {
    let (ls, fs) = selectors(q)?;
    let bookmarks = matches!(
        q.get("allowWatchBookmarks").map(String::as_str),
        Some("true" | "1")
    );
    let send_initial = matches!(
        q.get("sendInitialEvents").map(String::as_str),
        Some("true" | "1")
    );
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let rv_param = q.get("resourceVersion").cloned().unwrap_or_default();
    let ns = ns.map(str::to_string);
    let matches = move |c: &Change| -> bool {
        c.kind == kind
            && ns.as_deref().is_none_or(|n| n == c.namespace)
            && ls.matches_object(&c.object)
            && fs.matches(&c.object)
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    let mut initial: Vec<Bytes> = Vec::new();
    let (mut live, start_rv): (broadcast::Receiver<Arc<Change>>, u64);
    if rv_param.is_empty() || rv_param == "0" || send_initial {
        let (items, rv, r) = app.store.snapshot_and_subscribe(kind);
        for o in &items {
            let c = Change {
                rv,
                kind,
                namespace: o
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                etype: crate::store::EventType::Added,
                object: Arc::new(o.clone()),
            };
            if matches(&c) {
                initial.push(event_line("ADDED", o));
            }
        }
        if send_initial && bookmarks {
            initial.push(event_line("BOOKMARK", &json!({
                "kind": kind.name(), "apiVersion": kind.api_version(),
                "metadata": {"resourceVersion": rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}},
            })));
        }
        live = r;
        start_rv = rv;
    } else {
        let Ok(rv) = rv_param.parse::<u64>() else {
            return Err(ApiError::bad_request(format!(
                "invalid resource version: {rv_param}"
            )));
        };
        match app.store.watch_from(rv) {
            Ok((backlog, r)) => {
                for c in backlog.iter().filter(|c| matches(c)) {
                    initial.push(event_line(c.etype.as_str(), &c.object));
                }
                live = r;
                start_rv = backlog.last().map_or(rv, |c| c.rv.max(rv));
            }
            Err(oldest) => {
                let err = ApiError::expired(rv, oldest);
                initial.push(event_line("ERROR", &err.body()));
                let body = Body::from_stream(futures::stream::iter(
                    initial.into_iter().map(Ok::<_, std::io::Error>),
                ));
                return Ok(stream_response(body));
            }
        }
    }
    let interval = app.bookmark_interval;
    tokio::spawn(async move {
        for line in initial {
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        let end = tokio::time::Instant::now() + timeout;
        let mut last_seen = start_rv;
        let mut last_bookmark = start_rv;
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(end) => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if bookmarks => {
                    if last_seen > last_bookmark {
                        last_bookmark = last_seen;
                        let b = event_line("BOOKMARK", &json!({"kind": kind.name(), "apiVersion": kind.api_version(), "metadata": {"resourceVersion": last_seen.to_string()}}));
                        if tx.send(Ok(b)).await.is_err() { return; }
                    }
                }
                r = live.recv() => match r {
                    Ok(c) => {
                        if c.rv <= last_seen { continue; }
                        last_seen = c.rv;
                        if matches(&c) && tx.send(Ok(event_line(c.etype.as_str(), &c.object))).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let e = ApiError::expired(last_seen, last_seen + 1);
                        let _ = tx.send(Ok(event_line("ERROR", &e.body()))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    Ok(stream_response(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}

fn stream_response(body: Body) -> Response {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    resp
}

async fn logs(app: &Arc<App>, ns: &str, name: &str, q: &Q) -> Result<Response, ApiError> {
    let pod = app
        .store
        .get(Kind::Pod, ns, name)
        .ok_or_else(|| ApiError::not_found(Kind::Pod, name))?;
    let containers: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let container = match q.get("container").filter(|c| !c.is_empty()) {
        Some(c) if containers.contains(c) => c.clone(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )));
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )));
        }
    };
    if matches!(q.get("previous").map(String::as_str), Some("true" | "1")) {
        return Err(ApiError::bad_request(format!(
            "previous terminated container \"{container}\" in pod \"{name}\" not found"
        )));
    }
    let log = app
        .kubelet
        .log(ns, name)
        .filter(|l| l.container == container);
    let Some(log) = log else {
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
        )));
    };
    let tail = q.get("tailLines").and_then(|t| t.parse::<usize>().ok());
    let limit = q
        .get("limitBytes")
        .and_then(|t| t.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let follow = matches!(q.get("follow").map(String::as_str), Some("true" | "1"));
    let mut data = log.bytes();
    if let Some(n) = tail {
        data = tail_lines(&data, n);
    }
    let text_plain = |resp: &mut Response| {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    };
    if !follow {
        if let Some(l) = limit {
            data.truncate(l);
        }
        let mut resp = Response::new(Body::from(data));
        text_plain(&mut resp);
        return Ok(resp);
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let mut sent_total = log.bytes().len();
    let mut budget = limit.unwrap_or(usize::MAX);
    tokio::spawn(async move {
        let mut sub = log.subscribe();
        let first: Vec<u8> = data.into_iter().take(budget).collect();
        budget -= first.len();
        if !first.is_empty() && tx.send(Ok(Bytes::from(first))).await.is_err() {
            return;
        }
        loop {
            if budget == 0 {
                return;
            }
            let all = log.bytes();
            if all.len() > sent_total {
                let chunk: Vec<u8> = all[sent_total..].iter().copied().take(budget).collect();
                sent_total = all.len();
                budget -= chunk.len();
                if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                    return;
                }
                continue;
            }
            if log.is_closed() {
                return;
            }
            tokio::select! {
                r = sub.changed() => if r.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    text_plain(&mut resp);
    Ok(resp)
}

fn tail_lines(data: &[u8], n: usize) -> Vec<u8> {
    if n == 0 {
        return Vec::new();
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut count = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            count += 1;
            if count == n {
                return data[i + 1..].to_vec();
            }
        }
    }
    data.to_vec()
}

async fn admin(app: &Arc<App>, req: Request) -> Result<Response, ApiError> {
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
        (Method::GET, "accepted") => Ok(json_response(200, &Value::Array(app.store.accepted()))),
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
        (Method::GET, "validate") => {
            let report =
                crate::schema::validate_objects(app.schema_dir.as_deref(), &app.store.accepted())
                    .map_err(|e| ApiError::new(503, "ServiceUnavailable", e.to_string()))?;
            Ok(json_response(
                200,
                &serde_json::to_value(report).unwrap_or_default(),
            ))
        }
        _ => Err(ApiError::path_not_found()),
    }
}
