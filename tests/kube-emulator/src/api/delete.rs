//! DELETE of one object (graceful for running pods) and of collections.

use std::sync::Arc;

use axum::response::Response;
use serde_json::{Value, json};

use super::request::{is_dry_run, selectors};
use super::{App, Q};
use crate::kinds::Kind;
use crate::status::{ApiError, json_response};

pub(super) struct DeleteOpts {
    grace: Option<i64>,
    orphan: bool,
    uid: Option<String>,
    rv: Option<String>,
    dry: bool,
}

pub(super) fn delete_opts(q: &Q, raw: &[u8]) -> Result<DeleteOpts, ApiError> {
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

/// Delete one object, honouring preconditions and dry runs.
///
/// Longer than 80 lines on purpose: after the shared preconditions, one arm per kind says how
/// that kind goes away (graceful pods, protected and terminating namespaces, plain removal).
pub(super) fn delete(
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
            let marked = app.store.modify(kind, "", name, None, |n| {
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

pub(super) fn delete_collection(
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
