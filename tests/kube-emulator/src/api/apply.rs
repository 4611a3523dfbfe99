//! Server-side apply (`PATCH` with `application/apply-patch+yaml`), kept to what one manager
//! applying its configuration needs.
//!
//! - Field sets are leaf paths (`.data.key`, `.spec.replicas`); lists are atomic (owned whole,
//!   replaced whole), unlike the API server's associative lists merged by key.
//! - `managedFields` holds one `Apply` entry per applying manager, as `FieldsV1`.
//! - Applying creates a missing object; applying again merges the configuration and removes the
//!   fields the manager applied before but no longer does.
//! - Once an object has `managedFields`, other writes (PUT, merge/JSON patch) with a
//!   `fieldManager` record the leaves they change as that manager's (`Update` operation); a later
//!   apply that sets one of them to another value is refused with 409 `Apply failed with N
//!   conflict(s)`, unless `force=true` takes the fields over.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::response::Response;
use serde_json::{Map, Value, json};

use super::write::{create, update_object};
use super::{App, Q};
use crate::kinds::Kind;
use crate::status::ApiError;
use crate::store::now_rfc3339;

/// A leaf path, e.g. `["data", "key"]`.
type Leaf = Vec<String>;

/// One `managedFields` entry.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    fields: BTreeSet<Leaf>,
}

/// Leaves a configuration sets (type meta, name, namespace, status and server fields excluded).
fn config_leaves(config: &Value) -> BTreeSet<Leaf> {
    let mut c = config.clone();
    if let Some(o) = c.as_object_mut() {
        for k in ["apiVersion", "kind", "status"] {
            o.remove(k);
        }
    }
    if let Some(m) = c.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "name",
            "namespace",
            "managedFields",
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
        ] {
            m.remove(k);
        }
    }
    if c.get("metadata")
        .and_then(Value::as_object)
        .is_some_and(Map::is_empty)
        && let Some(o) = c.as_object_mut()
    {
        o.remove("metadata");
    }
    let mut out = BTreeSet::new();
    leaves(&c, &mut Vec::new(), &mut out);
    out
}

fn leaves(v: &Value, prefix: &mut Leaf, out: &mut BTreeSet<Leaf>) {
    match v.as_object() {
        Some(o) if !o.is_empty() => {
            for (k, child) in o {
                prefix.push(k.clone());
                leaves(child, prefix, out);
                prefix.pop();
            }
        }
        _ if !prefix.is_empty() => {
            out.insert(prefix.clone());
        }
        _ => {}
    }
}

fn to_fields_v1(set: &BTreeSet<Leaf>) -> Value {
    let mut root = Map::new();
    for leaf in set {
        let mut node = &mut root;
        for seg in leaf {
            node = node
                .entry(format!("f:{seg}"))
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("fieldsV1 nodes are objects");
        }
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value, prefix: &mut Leaf, out: &mut BTreeSet<Leaf>) {
    let children: Vec<(&String, &Value)> = v
        .as_object()
        .map(|o| o.iter().filter(|(k, _)| k.starts_with("f:")).collect())
        .unwrap_or_default();
    if children.is_empty() {
        if !prefix.is_empty() {
            out.insert(prefix.clone());
        }
        return;
    }
    for (k, child) in children {
        prefix.push(k[2..].to_string());
        from_fields_v1(child, prefix, out);
        prefix.pop();
    }
}

fn entries(obj: &Value) -> Vec<Entry> {
    let list = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array);
    let s = |e: &Value, k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    list.into_iter()
        .flatten()
        .map(|e| {
            let mut fields = BTreeSet::new();
            from_fields_v1(
                e.get("fieldsV1").unwrap_or(&Value::Null),
                &mut Vec::new(),
                &mut fields,
            );
            Entry {
                manager: s(e, "manager"),
                operation: s(e, "operation"),
                api_version: s(e, "apiVersion"),
                time: s(e, "time"),
                fields,
            }
        })
        .collect()
}

fn set_entries(obj: &mut Value, list: &[Entry]) {
    let v: Vec<Value> = list
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&e.fields),
            })
        })
        .collect();
    obj["metadata"]["managedFields"] = Value::Array(v);
}

fn at<'a>(v: &'a Value, leaf: &Leaf) -> Option<&'a Value> {
    leaf.iter().try_fold(v, |v, k| v.get(k))
}

fn remove_at(v: &mut Value, leaf: &Leaf) {
    if let Some((last, parents)) = leaf.split_last()
        && let Some(Value::Object(m)) = parents.iter().try_fold(&mut *v, |v, k| v.get_mut(k))
    {
        m.remove(last);
    }
}

fn display(leaf: &Leaf) -> String {
    leaf.iter().map(|s| format!(".{s}")).collect()
}

fn overlaps(a: &Leaf, b: &Leaf) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Internal query key marking an update made by apply (its managedFields are already set).
pub(super) const APPLYING: &str = "\u{0}applying";

/// Apply `raw` (a JSON configuration) as `fieldManager` to the object at `ns/name`.
pub(super) fn apply(
    app: &Arc<App>,
    kind: Kind,
    ns: &str,
    name: &str,
    q: &Q,
    raw: &[u8],
) -> Result<Response, ApiError> {
    let manager = q.get("fieldManager").filter(|m| !m.is_empty()).ok_or_else(|| {
        ApiError::new(
            422,
            "Invalid",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        )
    })?;
    let config: Value = serde_json::from_slice(raw)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    crate::validation::check_type_meta(kind, &config, || raw.to_vec())?;
    let force = q.get("force").is_some_and(|f| f == "true");
    let applied = config_leaves(&config);
    let mine = Entry {
        manager: manager.clone(),
        operation: "Apply".into(),
        api_version: kind.api_version(),
        time: now_rfc3339(),
        fields: applied.clone(),
    };
    let Some(current) = app.store.get(kind, ns, name) else {
        let mut obj = config;
        set_entries(&mut obj, &[mine]);
        return create(
            app,
            kind,
            ns,
            q,
            &serde_json::to_vec(&obj).unwrap_or_default(),
        );
    };
    let mut others: Vec<Entry> = entries(&current)
        .into_iter()
        .filter(|e| !(e.manager == *manager && e.operation == "Apply"))
        .collect();
    check_conflicts(kind, name, &config, &current, &applied, &others, force)?;
    for e in &mut others {
        e.fields.retain(|f| !applied.iter().any(|a| overlaps(a, f)));
    }
    let previous = entries(&current)
        .into_iter()
        .find(|e| e.manager == *manager && e.operation == "Apply")
        .map(|e| e.fields)
        .unwrap_or_default();
    let mut next = current.clone();
    for gone in previous.difference(&applied) {
        if !others.iter().any(|e| e.fields.contains(gone)) {
            remove_at(&mut next, gone);
        }
    }
    let mut patch = config;
    if let Some(o) = patch.as_object_mut() {
        o.remove("status");
    }
    json_patch::merge(&mut next, &patch);
    others.push(mine);
    set_entries(&mut next, &others);
    let mut q = q.clone();
    q.insert(APPLYING.into(), "true".into());
    update_object(app, kind, ns, name, false, &q, next, None)
}

/// 409 when another manager owns a leaf the configuration sets to a different value.
fn check_conflicts(
    kind: Kind,
    name: &str,
    config: &Value,
    current: &Value,
    applied: &BTreeSet<Leaf>,
    others: &[Entry],
    force: bool,
) -> Result<(), ApiError> {
    if force {
        return Ok(());
    }
    let mut conflicts: Vec<(String, String, String)> = Vec::new();
    for e in others {
        for leaf in applied
            .iter()
            .filter(|a| e.fields.iter().any(|f| overlaps(a, f)))
        {
            if at(config, leaf) != at(current, leaf) {
                conflicts.push((e.manager.clone(), e.api_version.clone(), display(leaf)));
            }
        }
    }
    if conflicts.is_empty() {
        return Ok(());
    }
    let n = conflicts.len();
    let message = if n == 1 {
        let (m, v, f) = &conflicts[0];
        format!("Apply failed with 1 conflict: conflict with \"{m}\" using {v}: {f}")
    } else {
        let lines: Vec<String> = conflicts
            .iter()
            .map(|(m, v, f)| format!("conflict with \"{m}\" using {v}: {f}"))
            .collect();
        format!("Apply failed with {n} conflicts: {}", lines.join("\n"))
    };
    let mut e = ApiError::conflict(kind, name);
    e.message = message;
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, v, f)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\" using {v}"), "field": f}))
        .collect();
    e.details = Some(json!({"name": name, "kind": kind.plural(), "causes": causes}));
    if !kind.group().is_empty()
        && let Some(d) = e.details.as_mut()
    {
        d["group"] = json!(kind.group());
    }
    Err(e)
}

/// After a non-apply write by `manager`, record the leaves it changed as that manager's
/// (`Update`), taking them from every other manager. Objects without `managedFields` are left as
/// they are.
pub(super) fn record_update(manager: Option<&str>, before: &Value, after: &mut Value) {
    let Some(manager) = manager.filter(|m| !m.is_empty()) else {
        return;
    };
    let mut list = entries(before);
    if list.is_empty() {
        return;
    }
    let (old, new) = (config_leaves(before), config_leaves(after));
    let changed: BTreeSet<Leaf> = new
        .iter()
        .filter(|l| at(before, l) != at(after, l))
        .chain(old.difference(&new))
        .cloned()
        .collect();
    if changed.is_empty() {
        set_entries(after, &list);
        return;
    }
    for e in &mut list {
        e.fields.retain(|f| !changed.iter().any(|c| overlaps(c, f)));
    }
    let api_version = after
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("v1")
        .to_string();
    match list
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == "Update")
    {
        Some(e) => e.fields.extend(changed.intersection(&new).cloned()),
        None => list.push(Entry {
            manager: manager.to_string(),
            operation: "Update".into(),
            api_version,
            time: now_rfc3339(),
            fields: changed.intersection(&new).cloned().collect(),
        }),
    }
    set_entries(after, &list);
}
