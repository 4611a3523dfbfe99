//! Events the kubelet records about a pod (`v1/Event`, source `kubelet`), as a node does: `Pulling`,
//! `Pulled`, `Failed`, `BackOff`, `ErrImageNeverPull`, `InspectFailed`, `Created`, `Started`.

use serde_json::{Value, json};

use super::Kubelet;
use crate::kinds::Kind;
use crate::store::now_rfc3339;

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Severity {
    Normal,
    Warning,
}

impl Kubelet {
    /// Records one event about the pod's first container. Repeats of the same reason and message
    /// bump `count` and `lastTimestamp` of the existing event, as the event recorder aggregates them.
    pub(super) fn event(&self, pod: &Value, severity: Severity, reason: &str, message: &str) {
        let s = |p: &str| pod.pointer(p).and_then(Value::as_str).unwrap_or("");
        let (ns, pod_name, uid) = (
            s("/metadata/namespace"),
            s("/metadata/name"),
            s("/metadata/uid"),
        );
        let cname = s("/spec/containers/0/name");
        let now = now_rfc3339();
        let existing = self
            .store
            .list(Kind::Event, Some(ns))
            .0
            .into_iter()
            .find(|e| {
                e.pointer("/involvedObject/uid").and_then(Value::as_str) == Some(uid)
                    && e.get("reason").and_then(Value::as_str) == Some(reason)
                    && e.get("message").and_then(Value::as_str) == Some(message)
            });
        if let Some(e) = existing {
            let name = e
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let _ = self
                .store
                .modify(Kind::Event, ns, &name, None, false, |ev| {
                    let count = ev.get("count").and_then(Value::as_i64).unwrap_or(1);
                    ev["count"] = json!(count + 1);
                    ev["lastTimestamp"] = json!(now);
                    Ok(())
                });
            return;
        }
        let name = format!("{pod_name}.{}", self.store.random_suffix());
        let ev = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": name,
                "namespace": ns,
            },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod_name,
                "namespace": ns,
                "uid": uid,
                "fieldPath": format!("spec.containers{{{cname}}}"),
            },
            "reason": reason,
            "message": message,
            "source": {"component": "kubelet", "host": self.cfg.node_name},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": match severity { Severity::Normal => "Normal", Severity::Warning => "Warning" },
            "reportingComponent": "kubelet",
            "reportingInstance": self.cfg.node_name,
        });
        if let Err(e) = self.store.create(Kind::Event, ns, ev, false) {
            tracing::debug!(pod = pod_name, error = %e, "Recording an event failed");
        }
    }
}
