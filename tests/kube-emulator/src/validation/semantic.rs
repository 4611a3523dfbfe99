//! Semantic (422) checks beyond decoding, and the defaults the API server fills in on create.

use serde_json::Value;

use super::{DNS1123_LABEL_MSG, is_dns1123_label};
use crate::kinds::Kind;

/// Semantic validation beyond the schema, returning 422 causes.
pub fn semantic_causes(kind: Kind, obj: &Value) -> Vec<(String, &'static str, String)> {
    let mut causes = super::resource_causes(kind, obj);
    let req = |field: String, causes: &mut Vec<_>| {
        causes.push((field, "FieldValueRequired", "Required value".to_string()));
    };
    if kind == Kind::Pod {
        let containers = obj.pointer("/spec/containers").and_then(Value::as_array);
        match containers {
            None => req("spec.containers".into(), &mut causes),
            Some(cs) if cs.is_empty() => req("spec.containers".into(), &mut causes),
            Some(cs) => {
                for (i, c) in cs.iter().enumerate() {
                    match c.get("name").and_then(Value::as_str) {
                        None | Some("") => req(format!("spec.containers[{i}].name"), &mut causes),
                        Some(n) if !is_dns1123_label(n) => causes.push((
                            format!("spec.containers[{i}].name"),
                            "FieldValueInvalid",
                            format!("Invalid value: \"{n}\": {DNS1123_LABEL_MSG}"),
                        )),
                        _ => {}
                    }
                    if c.get("image")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        req(format!("spec.containers[{i}].image"), &mut causes);
                    }
                }
            }
        }
        if let Some(rp) = obj.pointer("/spec/restartPolicy").and_then(Value::as_str)
            && !matches!(rp, "Always" | "OnFailure" | "Never")
        {
            causes.push((
                "spec.restartPolicy".into(),
                "FieldValueNotSupported",
                format!("Unsupported value: \"{rp}\": supported values: \"Always\", \"OnFailure\", \"Never\""),
            ));
        }
        if let Some(d) = obj
            .pointer("/spec/activeDeadlineSeconds")
            .and_then(Value::as_i64)
            && d <= 0
        {
            causes.push((
                "spec.activeDeadlineSeconds".into(),
                "FieldValueInvalid",
                format!("Invalid value: {d}: must be greater than or equal to 1"),
            ));
        }
    }
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            let ok = v.as_str().is_some_and(|s| {
                s.len() <= 63
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                    && s.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
                    && s.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
            });
            if !ok {
                causes.push((
                    "metadata.labels".to_string(),
                    "FieldValueInvalid",
                    format!("Invalid value: {v}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"),
                ));
            }
            let name = k.rsplit('/').next().unwrap_or("");
            if name.is_empty() || name.len() > 63 {
                causes.push((
                    "metadata.labels".into(),
                    "FieldValueInvalid",
                    format!("Invalid value: \"{k}\": name part must be non-empty and no more than 63 characters"),
                ));
            }
        }
    }
    causes
}

/// Fill in the defaults the real API server adds on create.
pub fn apply_defaults(kind: Kind, obj: &mut Value) {
    if kind != Kind::Pod {
        if kind == Kind::NetworkPolicy
            && let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut)
            && !spec.contains_key("policyTypes")
        {
            let mut types = vec![Value::from("Ingress")];
            if spec.contains_key("egress") {
                types.push(Value::from("Egress"));
            }
            spec.insert("policyTypes".into(), Value::Array(types));
        }
        return;
    }
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let defaults = [
        ("restartPolicy", Value::from("Always")),
        ("terminationGracePeriodSeconds", Value::from(30)),
        ("dnsPolicy", Value::from("ClusterFirst")),
        ("schedulerName", Value::from("default-scheduler")),
        ("enableServiceLinks", Value::from(true)),
        ("securityContext", serde_json::json!({})),
        ("preemptionPolicy", Value::from("PreemptLowerPriority")),
        ("priority", Value::from(0)),
    ];
    for (k, v) in defaults {
        spec.entry(k).or_insert(v);
    }
    if let Some(cs) = spec.get_mut("containers").and_then(Value::as_array_mut) {
        for c in cs.iter_mut().filter_map(Value::as_object_mut) {
            c.entry("terminationMessagePath")
                .or_insert("/dev/termination-log".into());
            c.entry("terminationMessagePolicy").or_insert("File".into());
            c.entry("resources").or_insert(serde_json::json!({}));
            let image = c.get("image").and_then(Value::as_str).unwrap_or("");
            let last = image.rsplit('/').next().unwrap_or("");
            let pull = if image.contains('@') || (last.contains(':') && !last.ends_with(":latest"))
            {
                "IfNotPresent"
            } else {
                "Always"
            };
            c.entry("imagePullPolicy").or_insert(pull.into());
        }
    }
}
