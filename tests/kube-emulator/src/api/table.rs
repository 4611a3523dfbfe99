//! `meta.k8s.io/v1` Tables, as `kubectl get` asks for.

use serde_json::{Value, json};

use crate::kinds::Kind;

pub(super) fn age(obj: &Value) -> String {
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
pub(super) fn table(kind: Kind, items: &[Value], meta: Value) -> Value {
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

pub(super) fn partial(kind: Kind, o: &Value) -> Value {
    let _ = kind;
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))})
}
