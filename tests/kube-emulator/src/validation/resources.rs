//! Quantity fields and pod resource rules.
//!
//! The API server decodes every `resource.Quantity` with `Quantity.UnmarshalJSON`: a bad one fails
//! the whole decode with 400 BadRequest (`Pod in version "v1" cannot be handled as a Pod:
//! quantities must match the regular expression ...`), before strict field checks. Pod validation
//! then refuses negative requests/limits and requests above limits with 422 Invalid.

use serde_json::Value;

use crate::kinds::Kind;
use crate::quantity::{self, Quantity};
use crate::status::ApiError;

/// Quantity fields of a PodSpec, relative to it (`[]`: every element, `*`: every map value).
const POD_SPEC: [&str; 11] = [
    "containers[].resources.limits.*",
    "containers[].resources.requests.*",
    "initContainers[].resources.limits.*",
    "initContainers[].resources.requests.*",
    "ephemeralContainers[].resources.limits.*",
    "ephemeralContainers[].resources.requests.*",
    "overhead.*",
    "resources.limits.*",
    "resources.requests.*",
    "volumes[].emptyDir.sizeLimit",
    "volumes[].ephemeral.volumeClaimTemplate.spec.resources.requests.*",
];

/// Quantity field patterns of `kind`, from the object root (only pods have any).
fn patterns(kind: Kind) -> Vec<String> {
    match kind {
        Kind::Pod => POD_SPEC.iter().map(|p| format!("spec.{p}")).collect(),
        _ => Vec::new(),
    }
}

/// Pattern segments: `containers[]` becomes `containers`, `[]`.
fn segments(pattern: &str) -> Vec<&str> {
    pattern
        .split('.')
        .flat_map(|s| match s.strip_suffix("[]") {
            Some(k) => vec![k, "[]"],
            None => vec![s],
        })
        .collect()
}

/// Call `f(field_path, value)` on every value `segs` reaches, with Kubernetes field paths
/// (`spec.containers[0].resources.requests[cpu]`).
fn visit<E>(
    v: &mut Value,
    segs: &[&str],
    path: &str,
    f: &mut impl FnMut(&str, &mut Value) -> Result<(), E>,
) -> Result<(), E> {
    let Some((first, rest)) = segs.split_first() else {
        return f(path, v);
    };
    match *first {
        "[]" => {
            for (i, item) in v.as_array_mut().into_iter().flatten().enumerate() {
                visit(item, rest, &format!("{path}[{i}]"), f)?;
            }
        }
        "*" => {
            for (k, item) in v.as_object_mut().into_iter().flatten() {
                visit(item, rest, &format!("{path}[{k}]"), f)?;
            }
        }
        key => {
            if let Some(item) = v.get_mut(key) {
                let p = if path.is_empty() {
                    key.to_string()
                } else {
                    format!("{path}.{key}")
                };
                visit(item, rest, &p, f)?;
            }
        }
    }
    Ok(())
}

/// Decode every quantity field of `obj` as `Quantity.UnmarshalJSON` does, replacing it with its
/// text (trimmed; numbers as strings) so it decodes into k8s-openapi's `Quantity`.
pub fn normalize_quantities(kind: Kind, obj: &mut Value) -> Result<(), ApiError> {
    for pattern in patterns(kind) {
        visit(obj, &segments(&pattern), "", &mut |_, v| {
            let (text, _) = quantity::from_json(v).map_err(|e| {
                ApiError::bad_request(format!(
                    "{} in version \"v1\" cannot be handled as a {}: {e}",
                    kind.name(),
                    kind.name()
                ))
            })?;
            *v = Value::String(text);
            Ok(())
        })?;
    }
    Ok(())
}

fn parsed(v: &Value) -> Option<(String, Quantity)> {
    quantity::from_json(v).ok()
}

/// 422 causes for container resources: negative amounts, requests above limits.
pub fn resource_causes(kind: Kind, obj: &Value) -> Vec<(String, &'static str, String)> {
    if kind != Kind::Pod {
        return Vec::new();
    }
    let mut causes = Vec::new();
    let spec = obj.get("spec").unwrap_or(&Value::Null);
    for list in ["initContainers", "containers"] {
        let containers = spec.get(list).and_then(Value::as_array);
        for (i, c) in containers.into_iter().flatten().enumerate() {
            let path = format!("spec.{list}[{i}].resources");
            container_causes(&path, c.get("resources"), &mut causes);
        }
    }
    causes
}

fn container_causes(
    path: &str,
    resources: Option<&Value>,
    causes: &mut Vec<(String, &'static str, String)>,
) {
    let map = |k: &str| {
        resources
            .and_then(|r| r.get(k))
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(name, v)| parsed(v).map(|q| (name.clone(), q)))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let (limits, requests) = (map("limits"), map("requests"));
    for (which, list) in [("limits", &limits), ("requests", &requests)] {
        for (name, (text, q)) in list {
            if q.value < 0.0 {
                causes.push((
                    format!("{path}.{which}[{name}]"),
                    "FieldValueInvalid",
                    format!("Invalid value: \"{text}\": must be greater than or equal to 0"),
                ));
            }
        }
    }
    for (name, (text, q)) in &requests {
        if let Some((_, (ltext, l))) = limits.iter().find(|(n, _)| n == name)
            && q.value > l.value
        {
            causes.push((
                format!("{path}.requests"),
                "FieldValueInvalid",
                format!(
                    "Invalid value: \"{text}\": must be less than or equal to {name} limit of {ltext}"
                ),
            ));
        }
    }
}
