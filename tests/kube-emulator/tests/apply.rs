//! Server-side apply and the OpenAPI v3 documents kubectl reads before it applies.
#![allow(clippy::unwrap_used)]

mod common;

use airlock_kube_emulator::Kind;
use common::*;
use serde_json::{Value, json};

const CM: &str = "/api/v1/namespaces/airlock-sandbox/configmaps/settings";
const APPLY: &str = "application/apply-patch+yaml";

fn config(data: Value) -> String {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": data})
        .to_string()
}

fn managers(obj: &Value) -> Vec<(String, String)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["manager"].as_str().unwrap().to_string(),
                e["operation"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn applying_creates_then_merges_and_drops_what_the_manager_no_longer_applies() {
    let emu = start().await;
    let url = format!("{CM}?fieldManager=ops");
    let (code, created) = raw(
        &emu,
        "PATCH",
        &url,
        APPLY,
        &config(json!({"a": "1", "b": "2"})),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(
        managers(&created),
        [("ops".to_string(), "Apply".to_string())]
    );
    assert_eq!(
        created["metadata"]["managedFields"][0]["fieldsV1"],
        json!({"f:data": {"f:a": {}, "f:b": {}}})
    );
    let (code, applied) = raw(
        &emu,
        "PATCH",
        &url,
        APPLY,
        &config(json!({"a": "10", "c": "3"})),
    )
    .await;
    assert_eq!(code, 200, "{applied}");
    assert_eq!(applied["data"], json!({"a": "10", "c": "3"}));
    let stored = emu
        .object(Kind::ConfigMap, "airlock-sandbox", "settings")
        .unwrap();
    assert_eq!(stored["data"], json!({"a": "10", "c": "3"}));
}

#[tokio::test]
async fn an_apply_over_another_managers_change_is_refused_with_409_unless_forced() {
    let emu = start().await;
    let ops = format!("{CM}?fieldManager=ops");
    raw(&emu, "PATCH", &ops, APPLY, &config(json!({"a": "1"}))).await;
    let edit = format!("{CM}?fieldManager=editor");
    let (code, edited) = raw(
        &emu,
        "PATCH",
        &edit,
        "application/merge-patch+json",
        &json!({"data": {"a": "2"}}).to_string(),
    )
    .await;
    assert_eq!(code, 200, "{edited}");
    assert!(managers(&edited).contains(&("editor".into(), "Update".into())));

    let (code, status) = raw(&emu, "PATCH", &ops, APPLY, &config(json!({"a": "1"}))).await;
    assert_eq!((code, status["reason"].as_str()), (409, Some("Conflict")));
    assert_eq!(
        status["message"],
        "Apply failed with 1 conflict: conflict with \"editor\" using v1: .data.a"
    );
    assert_eq!(
        status["details"]["causes"][0]["reason"],
        "FieldManagerConflict"
    );
    assert_eq!(status["details"]["causes"][0]["field"], ".data.a");

    // Applying the value the other manager set is no conflict; forcing takes the field over.
    let (code, _) = raw(&emu, "PATCH", &ops, APPLY, &config(json!({"a": "2"}))).await;
    assert_eq!(code, 200);
    raw(
        &emu,
        "PATCH",
        &edit,
        "application/merge-patch+json",
        &json!({"data": {"a": "3"}}).to_string(),
    )
    .await;
    let forced = format!("{ops}&force=true");
    let (code, taken) = raw(&emu, "PATCH", &forced, APPLY, &config(json!({"a": "1"}))).await;
    assert_eq!(code, 200, "{taken}");
    assert_eq!(taken["data"]["a"], "1");
    assert_eq!(managers(&taken), [("ops".to_string(), "Apply".to_string())]);
}

#[tokio::test]
async fn an_apply_without_a_field_manager_is_refused_with_422() {
    let emu = start().await;
    let (code, status) = raw(&emu, "PATCH", CM, APPLY, &config(json!({"a": "1"}))).await;
    assert_eq!(code, 422, "{status}");
    assert_eq!(
        status["message"],
        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
    );
}

#[tokio::test]
async fn the_openapi_v3_documents_tell_kubectl_that_the_server_validates_fields() {
    let emu = start().await;
    let (code, index) = raw(&emu, "GET", "/openapi/v3", "application/json", "").await;
    assert_eq!(code, 200);
    let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, doc) = raw(&emu, "GET", &url, "application/json", "").await;
    assert_eq!(code, 200);
    let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
    assert_eq!(
        patch["x-kubernetes-group-version-kind"],
        json!({"group": "apps", "version": "v1", "kind": "Deployment"})
    );
    let params: Vec<&str> = patch["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["in"] == "query")
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(params.contains(&"fieldValidation"), "{params:?}");
}
