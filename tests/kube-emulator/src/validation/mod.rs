//! Admission-time checks: strict decoding, object names, and minimal semantic validation.
//!
//! # Layout
//!
//! - this file: body parsing, type meta, names, strict decoding into k8s-openapi types.
//! - `resources`: quantity fields (decoded as `Quantity.UnmarshalJSON` does) and pod resource rules.
//! - `semantic`: the 422 checks beyond decoding, and the defaults the API server fills in.

mod resources;
mod semantic;

pub use resources::{normalize_quantities, resource_causes};
pub use semantic::{apply_defaults, semantic_causes};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::kinds::Kind;
use crate::status::ApiError;

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
pub(crate) const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

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
    let prefix = || {
        format!(
            "{} in version \"{}\" cannot be handled as a {}",
            kind.name(),
            kind.api_version().rsplit('/').next().unwrap_or("v1"),
            kind.name()
        )
    };
    let typed =
        T::deserialize(input).map_err(|e| ApiError::bad_request(format!("{}: {e}", prefix())))?;
    let back = serde_json::to_value(&typed)
        .map_err(|e| ApiError::bad_request(format!("{}: {e}", prefix())))?;
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
            "{}: strict decoding error: {}",
            prefix(),
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

/// Check `apiVersion` and `kind` in a request body against the endpoint's kind (`raw` gives the body's
/// bytes for an error message, only when one is needed).
pub fn check_type_meta(
    kind: Kind,
    body: &Value,
    raw: impl FnOnce() -> Vec<u8>,
) -> Result<(), ApiError> {
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
                String::from_utf8_lossy(&raw()).trim()
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
            String::from_utf8_lossy(&raw()).trim()
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

/// Decode `obj` as the API server does: quantities first (400 on a bad one, normalized text
/// otherwise), then strictly into the typed k8s-openapi struct for `kind`.
pub fn decode_kind(kind: Kind, obj: &mut Value, strict: bool) -> Result<Vec<String>, ApiError> {
    normalize_quantities(kind, obj)?;
    use k8s_openapi::api::coordination::v1 as coordination;
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::networking::v1 as net;
    let obj = &*obj;
    match kind {
        Kind::Pod => strict_decode::<core::Pod>(kind, obj, strict),
        Kind::NetworkPolicy => strict_decode::<net::NetworkPolicy>(kind, obj, strict),
        Kind::Namespace => strict_decode::<core::Namespace>(kind, obj, strict),
        Kind::Lease => strict_decode::<coordination::Lease>(kind, obj, strict),
    }
}
