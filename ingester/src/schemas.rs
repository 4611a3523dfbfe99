//! JSON Schemas an operator registered for results, by queue or image.
//!
//! The configuration is a JSON object mapping `queue:<name>` or `image:<ref>` to a JSON Schema, in one file
//! or in every `*.json` file of a directory (merged; a key defined twice is an error). A result is validated
//! against every schema that applies to its run (its image's and its queue's).

use std::collections::HashMap;
use std::path::Path;

use jsonschema::Validator;

use crate::Error;
use crate::verify::{Rejection, schema_rejection};

/// Compiled result schemas.
#[derive(Debug, Default)]
pub struct ResultSchemas {
    by_queue: HashMap<String, Validator>,
    by_image: HashMap<String, Validator>,
}

impl ResultSchemas {
    /// No schemas: every JSON object is accepted.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether no schema is registered.
    pub fn is_empty(&self) -> bool {
        self.by_queue.is_empty() && self.by_image.is_empty()
    }

    /// Loads a file or a directory of `*.json` files.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let err = |message: String| Error::Schemas {
            path: path.display().to_string(),
            message,
        };
        let mut files = Vec::new();
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| err(e.to_string()))?;
            for entry in entries {
                let p = entry.map_err(|e| err(e.to_string()))?.path();
                if p.extension().is_some_and(|e| e == "json") {
                    files.push(p);
                }
            }
            files.sort();
        } else {
            files.push(path.to_path_buf());
        }
        let mut merged = serde_json::Map::new();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| err(format!("{}: {e}", file.display())))?;
            let map: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&text).map_err(|e| err(format!("{}: {e}", file.display())))?;
            for (k, v) in map {
                if merged.insert(k.clone(), v).is_some() {
                    return Err(err(format!("{k:?} is defined twice")));
                }
            }
        }
        Self::from_map(&merged).map_err(err)
    }

    /// Compiles a map of `queue:<name>` / `image:<ref>` to schemas.
    pub fn from_map(map: &serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        let mut out = Self::default();
        for (key, schema) in map {
            let validator = jsonschema::validator_for(schema)
                .map_err(|e| format!("{key:?}: invalid JSON Schema: {e}"))?;
            if let Some(queue) = key.strip_prefix("queue:") {
                out.by_queue.insert(queue.to_string(), validator);
            } else if let Some(image) = key.strip_prefix("image:") {
                out.by_image.insert(image.to_string(), validator);
            } else {
                return Err(format!(
                    "{key:?}: keys must be `queue:<name>` or `image:<ref>`"
                ));
            }
        }
        Ok(out)
    }

    /// Validates a result of a run with `queue` and `image` against every schema registered for them.
    pub fn validate(
        &self,
        queue: Option<&str>,
        image: Option<&str>,
        value: &serde_json::Value,
    ) -> Result<(), Rejection> {
        let applicable = [
            image.and_then(|i| self.by_image.get(i)),
            queue.and_then(|q| self.by_queue.get(q)),
        ];
        let mut errors = Vec::new();
        for v in applicable.into_iter().flatten() {
            errors.extend(
                v.iter_errors(value)
                    .map(|e| (e.instance_path().to_string(), e.to_string())),
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(schema_rejection(errors.into_iter()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn results_are_validated_against_the_queue_and_image_schemas_with_error_paths() {
        let map = json!({
            "queue:q": {"type": "object", "required": ["score"], "properties": {"score": {"type": "integer"}}},
            "image:img:1": {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}}},
        });
        let s = ResultSchemas::from_map(map.as_object().expect("object")).expect("compiles");
        assert!(s.validate(Some("q"), None, &json!({"score": 1})).is_ok());
        assert!(s.validate(Some("other"), None, &json!({})).is_ok());
        let r = s
            .validate(
                Some("q"),
                Some("img:1"),
                &json!({"score": "x", "tags": [1]}),
            )
            .expect_err("invalid against both schemas");
        assert!(r.reason.starts_with("schema: "), "{}", r.reason);
        assert!(r.reason.contains("/score: "), "{}", r.reason);
        assert!(r.reason.contains("/tags/0: "), "{}", r.reason);
        assert!(ResultSchemas::from_map(json!({"x": {}}).as_object().expect("object")).is_err());
    }
}
