//! Admission-time checks: strict decoding, object names, and minimal semantic validation.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::kinds::Kind;
use crate::status::ApiError;

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

/// Whether `s` is an RFC 1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 chars).
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Whether `s` is an RFC 1123 subdomain (dot-separated labels, at most 253 chars).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Validate an object name for `kind`, returning the 422 causes.
pub fn name_causes(kind: Kind, name: &str) -> Vec<(String, &'static str, String)> {
    let mut causes = Vec::new();
    let (ok, msg, max) = match kind {
        Kind::Namespace => (is_dns1123_label(name), DNS1123_LABEL_MSG, 63),
        // Events accept any path-segment name upstream; treat them as subdomains loosely.
        Kind::Event => (
            !name.is_empty() && !name.contains('/') && name != "." && name != "..",
            "may not contain '/'",
            253,
        ),
        _ => (is_dns1123_subdomain(name), DNS1123_SUBDOMAIN_MSG, 253),
    };
    if name.len() > max {
        causes.push((
            "metadata.name".into(),
            "FieldValueInvalid",
            format!("Invalid value: \"{name}\": must be no more than {max} characters"),
        ));
    } else if !ok {
        causes.push((
            "metadata.name".into(),
            "FieldValueInvalid",
            format!("Invalid value: \"{name}\": {msg}"),
        ));
    }
    causes
}

/// Decode `input` as `T`, failing with the API server's strict-decoding 400 on unknown fields.
///
/// `strict` mirrors `fieldValidation=Strict` (the emulator's default); when false the
/// unknown fields are returned as warnings instead.
pub fn strict_decode<T: DeserializeOwned + Serialize>(
    kind: Kind,
    input: &Value,
    strict: bool,
) -> Result<Vec<String>, ApiError> {
    let prefix = format!(
        "{} in version \"{}\" cannot be handled as a {}",
        kind.name(),
        kind.api_version().rsplit('/').next().unwrap_or("v1"),
        kind.name()
    );
    let typed: T = serde_json::from_value(input.clone())
        .map_err(|e| ApiError::bad_request(format!("{prefix}: {e}")))?;
    let back = serde_json::to_value(&typed)
        .map_err(|e| ApiError::bad_request(format!("{prefix}: {e}")))?;
    let mut unknown = Vec::new();
    unknown_fields(input, &back, "", &mut unknown);
    if unknown.is_empty() {
        return Ok(Vec::new());
    }
    let msgs: Vec<String> = unknown
        .iter()
        .map(|p| format!("unknown field \"{p}\""))
        .collect();
    if strict {
        Err(ApiError::bad_request(format!(
            "{prefix}: strict decoding error: {}",
            msgs.join(", ")
        )))
    } else {
        Ok(msgs)
    }
}

fn unknown_fields(input: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (input, back) {
        (Value::Object(i), Value::Object(b)) => {
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(bv) => unknown_fields(v, bv, &p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Object(i), _) => {
            // The typed value dropped the whole object: every non-null key is unknown.
            for (k, v) in i {
                if !v.is_null() {
                    out.push(if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    });
                }
            }
        }
        (Value::Array(i), Value::Array(b)) => {
            for (n, (iv, bv)) in i.iter().zip(b.iter()).enumerate() {
                unknown_fields(iv, bv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Check `apiVersion` and `kind` in a request body against the endpoint's kind.
pub fn check_type_meta(kind: Kind, body: &Value, raw: &[u8]) -> Result<(), ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::bad_request(format!(
            "couldn't get version/kind; json parse error: json: cannot unmarshal {} into Go value of type struct {{ APIVersion string \"json:\\\"apiVersion,omitempty\\\"\"; Kind string \"json:\\\"kind,omitempty\\\"\" }}",
            json_type_name(body)
        )));
    };
    match obj.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            return Err(ApiError::bad_request(format!(
                "Object 'Kind' is missing in '{}'",
                String::from_utf8_lossy(raw).trim()
            )));
        }
        Some(k) if k != kind.name() => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                kind.name()
            )));
        }
        _ => {}
    }
    match obj.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => Err(ApiError::bad_request(format!(
            "Object 'apiVersion' is missing in '{}'",
            String::from_utf8_lossy(raw).trim()
        ))),
        Some(v) if v != kind.api_version() => Err(ApiError::bad_request(format!(
            "the API version in the data ({v}) does not match the expected API version ({})",
            kind.api_version()
        ))),
        _ => Ok(()),
    }
}

fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Parse a request body as JSON, with the API server's parse-error wording.
pub fn parse_body(raw: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(raw).map_err(|e| {
        ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
    })
}

/// Strictly decode `obj` as the typed k8s-openapi struct for `kind`.
pub fn decode_kind(kind: Kind, obj: &Value, strict: bool) -> Result<Vec<String>, ApiError> {
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::networking::v1 as net;
    match kind {
        Kind::Pod => strict_decode::<core::Pod>(kind, obj, strict),
        Kind::NetworkPolicy => strict_decode::<net::NetworkPolicy>(kind, obj, strict),
        Kind::Namespace => strict_decode::<core::Namespace>(kind, obj, strict),
        Kind::Event => strict_decode::<core::Event>(kind, obj, strict),
    }
}

/// Semantic validation beyond the schema, returning 422 causes.
pub fn semantic_causes(kind: Kind, obj: &Value) -> Vec<(String, &'static str, String)> {
    let mut causes = Vec::new();
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
