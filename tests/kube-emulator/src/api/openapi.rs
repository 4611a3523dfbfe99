//! OpenAPI v3 discovery: the index at `/openapi/v3` and one document per group-version.
//!
//! kubectl (1.32) reads these to decide where validation happens: a PATCH operation tagged with
//! the kind's `x-kubernetes-group-version-kind` that takes the `fieldValidation` query parameter
//! tells it the server validates (as a real 1.33 server does), so it sends `fieldValidation=Strict`
//! instead of validating client-side. The documents carry paths only, no component schemas;
//! `/openapi/v2` answers 404 as on servers that dropped it (kubectl then stays on v3).

use axum::response::Response;
use serde_json::{Map, Value, json};

use crate::kinds::Kind;
use crate::status::{ApiError, json_response};

/// The hash that versions every document (the emulator's API never changes while it runs).
const HASH: &str = "airlock-emulator-v1-33";

/// Serve `/openapi/<segs...>`.
pub(super) fn serve(segs: &[&str]) -> Result<Response, ApiError> {
    match segs {
        ["v3"] => Ok(json_response(200, &index())),
        ["v3", "api", "v1"] => Ok(json_response(200, &document(""))),
        ["v3", "apis", group, "v1"] if Kind::GROUPS.contains(group) => {
            Ok(json_response(200, &document(group)))
        }
        _ => Err(ApiError::path_not_found()),
    }
}

/// The group-version path prefix, e.g. `api/v1` or `apis/apps/v1`.
fn gv_path(group: &str) -> String {
    if group.is_empty() {
        "api/v1".into()
    } else {
        format!("apis/{group}/v1")
    }
}

fn index() -> Value {
    let mut paths = Map::new();
    for group in std::iter::once("").chain(Kind::GROUPS) {
        let p = gv_path(group);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={HASH}")}),
        );
    }
    json!({ "paths": paths })
}

fn query_param(name: &str, description: &str) -> Value {
    json!({
        "name": name, "in": "query", "description": description,
        "schema": {"type": "string", "uniqueItems": true},
    })
}

/// One group-version's document: a collection and an item path per kind.
fn document(group: &str) -> Value {
    let mut paths = Map::new();
    for kind in Kind::ALL.into_iter().filter(|k| k.group() == group) {
        let gvk = json!({"group": group, "version": "v1", "kind": kind.name()});
        let op = |verb: &str, params: Vec<Value>| {
            json!({
                "operationId": format!("{verb}{}", kind.name()),
                "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
            })
        };
        let write_params = || {
            vec![
                query_param("dryRun", "When present, modifications are not persisted."),
                query_param(
                    "fieldManager",
                    "The name of the actor making these changes.",
                ),
                query_param(
                    "fieldValidation",
                    "How to handle unknown or duplicate fields: Ignore, Warn or Strict.",
                ),
            ]
        };
        let mut patch_params = write_params();
        patch_params.push(json!({"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}}));
        let base = format!("/{}", gv_path(group));
        let collection = if kind.namespaced() {
            format!("{base}/namespaces/{{namespace}}/{}", kind.plural())
        } else {
            format!("{base}/{}", kind.plural())
        };
        paths.insert(
            collection.clone(),
            json!({"get": op("list", vec![]), "post": op("post", write_params())}),
        );
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({
                "get": op("get", vec![]),
                "put": op("put", write_params()),
                "patch": op("patch", patch_params),
                "delete": op("delete", vec![query_param("dryRun", "When present, modifications are not persisted.")]),
            }),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": super::GIT_VERSION},
        "paths": paths,
        "components": {"schemas": {}},
    })
}
