//! Strict decoding of what clients send: exactly one JSON object, the whole body, nothing else.
//!
//! `serde_json` on its own is lenient in two ways that matter for untrusted bodies: a derived struct also
//! accepts a JSON array in positional form (`["id", "image", ["cmd"]]`), and a streaming deserializer stops
//! after the first value (`{...} trailing-garbage`, two concatenated objects). Every body Airlock parses from
//! a client (run requests, results, cancel requests, API requests) goes through [`from_slice_object`] or
//! [`object_from_slice`].

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::FieldError;

/// The stable start of the message of a body that is not exactly one JSON object.
pub const NOT_AN_OBJECT: &str = "not a JSON object";

/// Parses `bytes` as exactly one JSON object (whitespace around it allowed) and returns its members.
///
/// Errors name the path `.` (the whole body): invalid JSON, trailing characters, or another kind of value.
pub fn object_from_slice(bytes: &[u8]) -> Result<Map<String, Value>, FieldError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| FieldError::new(".", format!("{NOT_AN_OBJECT}: invalid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(FieldError::new(
            ".",
            format!("{NOT_AN_OBJECT}: got {}", kind(&other)),
        )),
    }
}

/// Decodes `bytes` as one `T` written as one JSON object, with no positional (array) form anywhere a
/// struct is expected; the error names the field's path (`resources.limits.gpu`, `.` for the body).
pub fn from_slice_object<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<T, FieldError> {
    let members = object_from_slice(bytes)?;
    // Decoded from the bytes (not the parsed value) so syntax and type errors keep their line and column.
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let decoded: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path.is_empty() { ".".into() } else { path };
        FieldError::new(path, e.into_inner().to_string())
    })?;
    let encoded = serde_json::to_value(&decoded)
        .map_err(|e| FieldError::new(".", format!("cannot be encoded again: {e}")))?;
    if let Some(path) = positional(&Value::Object(members), &encoded, "") {
        return Err(FieldError::new(
            path,
            "expected a JSON object, found an array",
        ));
    }
    Ok(decoded)
}

/// The path of the first place where `sent` has an array and `decoded` (the same value encoded again) an
/// object: a struct given in positional form.
fn positional(sent: &Value, decoded: &Value, path: &str) -> Option<String> {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (sent, decoded) {
        (Value::Array(_), Value::Object(_)) => Some(if path.is_empty() {
            ".".into()
        } else {
            path.to_string()
        }),
        (Value::Object(s), Value::Object(d)) => s
            .iter()
            .find_map(|(k, v)| d.get(k).and_then(|dv| positional(v, dv, &join(k)))),
        (Value::Array(s), Value::Array(d)) => s
            .iter()
            .zip(d)
            .enumerate()
            .find_map(|(i, (sv, dv))| positional(sv, dv, &join(&i.to_string()))),
        _ => None,
    }
}

/// What kind of JSON value `v` is, for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RunRequest;

    fn err(body: &str) -> FieldError {
        from_slice_object::<RunRequest>(body.as_bytes()).expect_err("refused")
    }

    #[test]
    fn exactly_one_object_is_accepted_with_surrounding_whitespace() {
        let r: RunRequest =
            from_slice_object(b" \n{\"id\":\"a\",\"image\":\"alpine\"}\n ").expect("accepted");
        assert_eq!(r.id, "a");
    }

    #[test]
    fn trailing_garbage_and_a_second_object_are_refused() {
        let e = err(r#"{"id":"a","image":"alpine"} trailing-garbage"#);
        assert_eq!(e.path, ".");
        assert!(e.message.contains("trailing characters"), "{e}");
        let e = err(r#"{"id":"a","image":"alpine"}{"id":"b","image":"alpine"}"#);
        assert!(e.message.contains("trailing characters"), "{e}");
    }

    #[test]
    fn a_positional_array_is_refused_at_the_top_and_inside() {
        let e = err(r#"["a", "alpine", null, ["cmd"]]"#);
        assert_eq!(e.to_string(), ".: not a JSON object: got an array");
        let e = err(r#"{"id":"a","image":"alpine","resources":[{"cpu":"1"}]}"#);
        assert_eq!(e.path, "resources");
        assert!(e.message.contains("found an array"), "{e}");
        let e = err(r#"{"id":"a","image":"alpine","resources":{"limits":["1"]}}"#);
        assert_eq!(e.path, "resources.limits");
    }

    #[test]
    fn arrays_where_arrays_belong_are_fine() {
        let r: RunRequest = from_slice_object(
            br#"{"id":"a","image":"alpine","command":["x"],"metadata":{"l":[[1],{"a":[]}]}}"#,
        )
        .expect("accepted");
        assert_eq!(r.command, ["x"]);
    }

    #[test]
    fn untyped_bodies_must_be_one_object_too() {
        assert!(object_from_slice(b"{\"a\":1}").is_ok());
        for bad in ["[1]", "1", "\"s\"", "null", "{} {}", "{\"a\":1} x", ""] {
            let e = object_from_slice(bad.as_bytes()).expect_err(bad);
            assert_eq!(e.path, ".", "{bad}");
        }
    }
}
