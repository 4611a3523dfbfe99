//! Decoding a request body: exactly one JSON object, with the path of the field at fault.
//!
//! One function so it can become `schemas::json::from_slice_object` once that exists.

use airlock_schemas::api::ErrorDetail;
use serde::de::DeserializeOwned;

/// Decodes `body` as one JSON object of type `T` (nothing before or after it), or says which field is
/// wrong.
pub(crate) fn from_slice_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, ErrorDetail> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ErrorDetail {
            field: ".".into(),
            message: "the request must be one JSON object".into(),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ErrorDetail {
            field: if path.is_empty() { ".".into() } else { path },
            message: e.into_inner().to_string(),
        }
    })?;
    de.end().map_err(|e| ErrorDetail {
        field: ".".into(),
        message: format!("trailing data after the JSON object: {e}"),
    })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_schemas::api::RunRef;

    #[test]
    fn only_one_object_with_the_right_fields_is_accepted() {
        assert!(from_slice_object::<RunRef>(br#" {"id":"a"} "#).is_ok());
        assert_eq!(
            from_slice_object::<RunRef>(b"[1]")
                .expect_err("refused")
                .field,
            "."
        );
        assert_eq!(
            from_slice_object::<RunRef>(br#"{"id":5}"#)
                .expect_err("refused")
                .field,
            "id"
        );
        assert_eq!(
            from_slice_object::<RunRef>(br#"{"id":"a"} {}"#)
                .expect_err("refused")
                .field,
            "."
        );
        assert!(from_slice_object::<RunRef>(br#"{"id":"a","x":1}"#).is_err());
    }
}
