//! Validation of stored objects against the official Kubernetes 1.33 OpenAPI schemas,
//! as JSON schemas shipped by the PyPI package `kubernetes-validate`.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::kinds::Kind;

/// The schema directory name inside the `kubernetes_validate` package.
pub const SCHEMA_VERSION_DIR: &str = "v1.33.0-local-strict";

/// Why schema validation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// No schema directory was found.
    #[error(
        "Kubernetes 1.33 JSON schemas not found ({0}); install them with `.venv/bin/pip install kubernetes-validate` or set AIRLOCK_K8S_SCHEMA_DIR"
    )]
    NotFound(String),
    /// A schema file could not be read or parsed.
    #[error("cannot load schema {path}: {message}")]
    Load {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// One object that failed validation.
#[derive(Debug, Clone, Serialize)]
pub struct ValidationFailure {
    /// Kind of the object.
    pub kind: String,
    /// `namespace/name`.
    pub name: String,
    /// Schema errors (`path: message`).
    pub errors: Vec<String>,
}

/// The outcome of validating stored objects.
#[derive(Debug, Clone, Serialize)]
pub struct ValidationReport {
    /// Where the schemas came from.
    pub schema_dir: PathBuf,
    /// How many objects were checked.
    pub checked: usize,
    /// The objects that failed.
    pub failures: Vec<ValidationFailure>,
}

impl ValidationReport {
    /// Whether every object validated.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Locate the schema directory: explicit path, `AIRLOCK_K8S_SCHEMA_DIR`, or a `.venv`
/// (in the workspace or any ancestor of the current directory) with `kubernetes-validate`.
pub fn find_schema_dir(explicit: Option<&Path>) -> Result<PathBuf, SchemaError> {
    let ok = |p: &Path| p.join("pod-v1.json").is_file() && p.join("_definitions.json").is_file();
    if let Some(p) = explicit {
        return if ok(p) {
            Ok(p.to_path_buf())
        } else {
            Err(SchemaError::NotFound(p.display().to_string()))
        };
    }
    if let Some(p) = std::env::var_os("AIRLOCK_K8S_SCHEMA_DIR") {
        let p = PathBuf::from(p);
        return if ok(&p) {
            Ok(p)
        } else {
            Err(SchemaError::NotFound(p.display().to_string()))
        };
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    roots.extend(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(Path::to_path_buf),
    );
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    let mut searched = Vec::new();
    for root in roots {
        let lib = root.join(".venv").join("lib");
        searched.push(lib.display().to_string());
        let Ok(entries) = std::fs::read_dir(&lib) else {
            continue;
        };
        for e in entries.flatten() {
            let dir = e
                .path()
                .join("site-packages/kubernetes_validate/kubernetes-json-schema")
                .join(SCHEMA_VERSION_DIR);
            if ok(&dir) {
                return Ok(dir);
            }
        }
    }
    Err(SchemaError::NotFound(format!(
        "searched {}",
        searched.join(", ")
    )))
}

fn load(path: &Path) -> Result<Value, SchemaError> {
    let err = |m: String| SchemaError::Load {
        path: path.to_path_buf(),
        message: m,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| err(e.to_string()))
}

fn rewrite_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                if k == "$ref"
                    && let Value::String(s) = val
                    && let Some(rest) = s.strip_prefix("/api/_definitions.json")
                {
                    *s = rest.to_string();
                } else {
                    rewrite_refs(val);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

/// A compiled validator for one kind.
fn validator(dir: &Path, file: &str, defs: &Value) -> Result<jsonschema::Validator, SchemaError> {
    let path = dir.join(file);
    let mut schema = load(&path)?;
    rewrite_refs(&mut schema);
    if let Some(o) = schema.as_object_mut() {
        o.remove("$id");
        o.insert("$defs".into(), defs.clone());
    }
    jsonschema::validator_for(&schema).map_err(|e| SchemaError::Load {
        path,
        message: e.to_string(),
    })
}

/// Validate pods and networkpolicies among `objects` against the 1.33 schemas.
pub fn validate_objects(
    dir: Option<&Path>,
    objects: &[Value],
) -> Result<ValidationReport, SchemaError> {
    let dir = find_schema_dir(dir)?;
    let defs_path = dir.join("_definitions.json");
    let defs = load(&defs_path)?
        .get("$defs")
        .cloned()
        .ok_or_else(|| SchemaError::Load {
            path: defs_path.clone(),
            message: "no $defs".into(),
        })?;
    let pod = validator(&dir, "pod-v1.json", &defs)?;
    let netpol = validator(&dir, "networkpolicy-networking-v1.json", &defs)?;
    let mut report = ValidationReport {
        schema_dir: dir,
        checked: 0,
        failures: Vec::new(),
    };
    for o in objects {
        let kind = o.get("kind").and_then(Value::as_str).unwrap_or("");
        let v = match Kind::parse(kind) {
            Some(Kind::Pod) => &pod,
            Some(Kind::NetworkPolicy) => &netpol,
            _ => continue,
        };
        report.checked += 1;
        let errors: Vec<String> = v
            .iter_errors(o)
            .map(|e| format!("{}: {}", e.instance_path(), e))
            .collect();
        if !errors.is_empty() {
            let s = |p: &str| {
                o.pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            report.failures.push(ValidationFailure {
                kind: kind.to_string(),
                name: format!("{}/{}", s("/metadata/namespace"), s("/metadata/name")),
                errors,
            });
        }
    }
    Ok(report)
}
