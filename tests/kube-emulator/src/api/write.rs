//! CREATE, UPDATE (PUT) and the shared admission path of every write.

use std::sync::Arc;

use axum::response::Response;
use serde_json::{Value, json};

use super::request::{is_dry_run, strictness, warn_header};
use super::{App, Q};
use crate::kinds::Kind;
use crate::status::{ApiError, json_response};
use crate::validation;

/// The name and semantic checks of an already decoded object (422 with every cause).
fn validate(kind: Kind, obj: &Value) -> Result<(), ApiError> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut causes = validation::name_causes(kind, name);
    causes.extend(validation::semantic_causes(kind, obj));
    if !causes.is_empty() {
        return Err(ApiError::invalid(kind, name, causes));
    }
    Ok(())
}

pub(super) fn create(
    app: &Arc<App>,
    kind: Kind,
    ns: &str,
    q: &Q,
    raw: &[u8],
) -> Result<Response, ApiError> {
    let mut obj = validation::parse_body(raw)?;
    validation::check_type_meta(kind, &obj, || raw.to_vec())?;
    let warnings = validation::decode_kind(kind, &mut obj, strictness(q))?;
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
    if kind.namespaced() && !app.store.contains(Kind::Namespace, "", ns) {
        return Err(ApiError::not_found(Kind::Namespace, ns));
    }
    validation::apply_defaults(kind, &mut obj);
    // Decoded (strictly) above; the defaults only add known fields, so only the checks remain.
    validate(kind, &obj)?;
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
        Arc::new(obj)
    } else {
        app.store.create(kind, ns, obj)?
    };
    let mut resp = json_response(201, &created);
    warn_header(&mut resp, &warnings);
    Ok(resp)
}

/// Pod spec fields a running pod may change (everything else is immutable).
pub(super) fn pod_spec_mutable_view(spec: &Value) -> Value {
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
pub(super) fn update_object(
    app: &Arc<App>,
    kind: Kind,
    ns: &str,
    name: &str,
    status_only: bool,
    q: &Q,
    mut next: Value,
    expected_rv: Option<String>,
) -> Result<Response, ApiError> {
    validation::check_type_meta(kind, &next, || {
        serde_json::to_vec(&next).unwrap_or_default()
    })?;
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
    let warnings = validation::decode_kind(kind, &mut next, strictness(q))?;
    validation::apply_defaults(kind, &mut next);
    let dry = is_dry_run(q);
    let mut result_holder = None;
    let updated = app.store.modify(kind, ns, name, expected_rv.as_deref(), |cur| {
        let mut candidate = next;
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
        Err(e) if e.reason == "DryRun" => Arc::new(result_holder.unwrap_or_default()),
        other => other?,
    };
    let mut resp = json_response(200, &updated);
    warn_header(&mut resp, &warnings);
    Ok(resp)
}

pub(super) fn replace(
    app: &Arc<App>,
    kind: Kind,
    ns: &str,
    name: &str,
    status_only: bool,
    q: &Q,
    raw: &[u8],
) -> Result<Response, ApiError> {
    let obj = validation::parse_body(raw)?;
    validation::check_type_meta(kind, &obj, || raw.to_vec())?;
    let rv = obj
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    if !app.store.contains(kind, ns, name) {
        return Err(ApiError::not_found(kind, name));
    }
    update_object(app, kind, ns, name, status_only, q, obj, rv)
}
