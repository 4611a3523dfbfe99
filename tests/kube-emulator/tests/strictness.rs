//! Strict API-server behaviour: Status bodies and codes, faults, quantities, media types.
#![allow(clippy::unwrap_used)]

mod common;

use airlock_kube_emulator::{FaultAction, Kind};
use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;

const PODS: &str = "/api/v1/namespaces/airlock-sandbox/pods";

fn pod_json(name: &str) -> serde_json::Value {
    serde_json::to_value(shell_pod(name, "true")).unwrap()
}

#[tokio::test]
async fn an_unknown_field_is_rejected_with_400_strict_decoding_error() {
    let emu = start().await;
    let mut body = pod_json("u1");
    body["spec"]["foo"] = json!(1);
    body["spec"]["containers"][0]["bar"] = json!("x");
    let (code, status) = raw(&emu, "POST", PODS, "application/json", &body.to_string()).await;
    assert_eq!(code, 400);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "BadRequest");
    assert_eq!(status["code"], 400);
    assert_eq!(
        status["message"],
        "Pod in version \"v1\" cannot be handled as a Pod: strict decoding error: unknown field \"spec.containers[0].bar\", unknown field \"spec.foo\""
    );
    assert!(emu.objects(Kind::Pod).is_empty());
}

#[tokio::test]
async fn an_invalid_name_is_rejected_with_422_invalid_and_causes() {
    let emu = start().await;
    let pods: Api<Pod> = Api::namespaced(client(&emu).await, "airlock-sandbox");
    let err = pods
        .create(&PostParams::default(), &shell_pod("Bad_Name", "true"))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = err else {
        panic!("expected API error")
    };
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert!(s.message.starts_with("Pod \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"), "{}", s.message);
    let (_, body) = raw(
        &emu,
        "POST",
        PODS,
        "application/json",
        &pod_json("Bad_Name").to_string(),
    )
    .await;
    assert_eq!(body["details"]["name"], "Bad_Name");
    assert_eq!(body["details"]["kind"], "Pod");
    assert_eq!(body["details"]["causes"][0]["field"], "metadata.name");
    assert_eq!(body["details"]["causes"][0]["reason"], "FieldValueInvalid");
}

#[tokio::test]
async fn a_duplicate_create_is_rejected_with_409_already_exists() {
    let emu = start().await;
    let pods: Api<Pod> = Api::namespaced(client(&emu).await, "airlock-sandbox");
    pods.create(&PostParams::default(), &shell_pod("dup", "true"))
        .await
        .unwrap();
    let err = pods
        .create(&PostParams::default(), &shell_pod("dup", "true"))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = err else {
        panic!("expected API error")
    };
    assert_eq!(
        (s.code, s.reason.as_str(), s.message.as_str()),
        (409, "AlreadyExists", "pods \"dup\" already exists")
    );
    let (_, body) = raw(
        &emu,
        "POST",
        PODS,
        "application/json",
        &pod_json("dup").to_string(),
    )
    .await;
    assert_eq!(body["details"], json!({"name": "dup", "kind": "pods"}));
}

#[tokio::test]
async fn a_missing_object_or_namespace_is_404_not_found() {
    let emu = start().await;
    let pods: Api<Pod> = Api::namespaced(client(&emu).await, "airlock-sandbox");
    let kube::Error::Api(s) = pods.get("nope").await.unwrap_err() else {
        panic!()
    };
    assert_eq!(
        (s.code, s.reason.as_str(), s.message.as_str()),
        (404, "NotFound", "pods \"nope\" not found")
    );
    let (code, body) = raw(
        &emu,
        "POST",
        "/api/v1/namespaces/ghost/pods",
        "application/json",
        &pod_json("p").to_string(),
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(body["message"], "namespaces \"ghost\" not found");
    assert_eq!(
        body["details"],
        json!({"name": "ghost", "kind": "namespaces"})
    );
    let (code, body) = raw(
        &emu,
        "DELETE",
        &format!("{PODS}/nope"),
        "application/json",
        "",
    )
    .await;
    assert_eq!((code, body["reason"].as_str()), (404, Some("NotFound")));
}

#[tokio::test]
async fn a_malformed_body_is_400_bad_request() {
    let emu = start().await;
    let (code, body) = raw(&emu, "POST", PODS, "application/json", "{not json").await;
    assert_eq!(code, 400);
    assert_eq!(body["reason"], "BadRequest");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("couldn't get version/kind; json parse error")
    );
    let (code, body) = raw(
        &emu,
        "POST",
        PODS,
        "application/json",
        r#"{"apiVersion":"v1","kind":"Pod","spec":{"activeDeadlineSeconds":"soon"}}"#,
    )
    .await;
    assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")));
}

#[tokio::test]
async fn injected_faults_really_happen_429_500_and_dropped_connections() {
    let emu = start().await;
    let pods: Api<Pod> = Api::namespaced(client(&emu).await, "airlock-sandbox");
    emu.fail_next(Some("GET"), "/pods", FaultAction::InternalError, 1);
    emu.fail_next(Some("GET"), "/pods", FaultAction::DropConnection, 1);
    let kube::Error::Api(s) = pods.get("x").await.unwrap_err() else {
        panic!()
    };
    assert_eq!((s.code, s.reason.as_str()), (500, "InternalError"));
    let err = pods.get("x").await.unwrap_err();
    assert!(
        !matches!(err, kube::Error::Api(_)),
        "a dropped connection is a transport error, got {err:?}"
    );
    // kube retries a 429 after Retry-After by itself: the request log shows the 429 then the retry.
    emu.fail_next(
        Some("GET"),
        "/pods",
        FaultAction::TooManyRequests {
            retry_after_seconds: 1,
        },
        1,
    );
    let kube::Error::Api(s) = pods.get("x").await.unwrap_err() else {
        panic!()
    };
    assert_eq!(s.code, 404, "faults are used up");
    let statuses: Vec<(u16, bool)> = emu
        .requests()
        .iter()
        .map(|r| (r.status, r.injected))
        .collect();
    assert_eq!(
        statuses,
        vec![(500, true), (0, true), (429, true), (404, false)]
    );
    // The raw 429 carries Retry-After.
    emu.fail_next(
        None,
        "/pods",
        FaultAction::TooManyRequests {
            retry_after_seconds: 7,
        },
        1,
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(emu.addr()).await.unwrap();
    s.write_all(format!("GET {PODS} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 429"), "{out}");
    assert!(out.to_ascii_lowercase().contains("retry-after: 7"), "{out}");
}

#[tokio::test]
async fn the_admin_api_injects_faults_and_exposes_objects_and_counters() {
    let emu = start().await;
    let rule =
        json!({"method": "POST", "pathContains": "/pods", "action": "internalError", "count": 1});
    let (code, _) = raw(
        &emu,
        "POST",
        "/__emulator/faults",
        "application/json",
        &rule.to_string(),
    )
    .await;
    assert_eq!(code, 201);
    let (code, _) = raw(
        &emu,
        "POST",
        PODS,
        "application/json",
        &pod_json("a").to_string(),
    )
    .await;
    assert_eq!(code, 500);
    let (code, _) = raw(
        &emu,
        "POST",
        PODS,
        "application/json",
        &pod_json("a").to_string(),
    )
    .await;
    assert_eq!(code, 201);
    let (_, objs) = raw(
        &emu,
        "GET",
        "/__emulator/objects?kind=pods",
        "application/json",
        "",
    )
    .await;
    assert_eq!(objs.as_array().unwrap().len(), 1);
    let (_, counters) = raw(&emu, "GET", "/__emulator/counters", "application/json", "").await;
    assert_eq!(counters["creates"]["Pod"], 1);
}

fn pod_with_resources(name: &str, resources: serde_json::Value) -> serde_json::Value {
    let mut body = pod_json(name);
    body["spec"]["containers"][0]["resources"] = resources;
    body
}

#[tokio::test]
async fn a_quantity_with_an_inner_space_is_refused_with_400_as_the_api_server_decodes_it() {
    let emu = start().await;
    let body = pod_with_resources("q1", json!({"requests": {"memory": "256 Mi"}}));
    let (code, status) = raw(&emu, "POST", PODS, "application/json", &body.to_string()).await;
    assert_eq!((code, status["reason"].as_str()), (400, Some("BadRequest")));
    assert_eq!(
        status["message"],
        "Pod in version \"v1\" cannot be handled as a Pod: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    );
    assert!(emu.objects(Kind::Pod).is_empty());
}

#[tokio::test]
async fn a_quantity_with_an_unknown_suffix_is_refused_with_400() {
    let emu = start().await;
    let body = pod_with_resources("q2", json!({"limits": {"cpu": "1K"}}));
    let (code, status) = raw(&emu, "POST", PODS, "application/json", &body.to_string()).await;
    assert_eq!(code, 400);
    assert_eq!(
        status["message"],
        "Pod in version \"v1\" cannot be handled as a Pod: unable to parse quantity's suffix"
    );
}

#[tokio::test]
async fn a_quantity_with_surrounding_whitespace_is_accepted_and_stored_trimmed() {
    let emu = start().await;
    let body = pod_with_resources(
        "q3",
        json!({"requests": {"memory": " 256Mi", "cpu": 0.5}, "limits": {"cpu": "1."}}),
    );
    let (code, created) = raw(&emu, "POST", PODS, "application/json", &body.to_string()).await;
    assert_eq!(code, 201, "{created}");
    let res = &created["spec"]["containers"][0]["resources"];
    assert_eq!(res["requests"]["memory"], "256Mi");
    assert_eq!(res["requests"]["cpu"], "0.5");
    assert_eq!(res["limits"]["cpu"], "1.");
}

#[tokio::test]
async fn a_negative_request_is_refused_with_422_invalid() {
    let emu = start().await;
    let body = pod_with_resources("q4", json!({"requests": {"cpu": "-1"}}));
    let (code, status) = raw(&emu, "POST", PODS, "application/json", &body.to_string()).await;
    assert_eq!((code, status["reason"].as_str()), (422, Some("Invalid")));
    assert_eq!(
        status["message"],
        "Pod \"q4\" is invalid: spec.containers[0].resources.requests[cpu]: Invalid value: \"-1\": must be greater than or equal to 0"
    );
    assert_eq!(
        status["details"]["causes"][0]["field"],
        "spec.containers[0].resources.requests[cpu]"
    );
}

#[tokio::test]
async fn a_request_above_its_limit_is_refused_with_422_invalid() {
    let emu = start().await;
    let body = pod_with_resources(
        "q5",
        json!({"requests": {"memory": "1Gi"}, "limits": {"memory": "512Mi"}}),
    );
    let (code, status) = raw(&emu, "POST", PODS, "application/json", &body.to_string()).await;
    assert_eq!(code, 422, "{status}");
    assert_eq!(
        status["message"],
        "Pod \"q5\" is invalid: spec.containers[0].resources.requests: Invalid value: \"1Gi\": must be less than or equal to memory limit of 512Mi"
    );
}

#[tokio::test]
async fn a_body_that_is_not_json_is_refused_with_415() {
    let emu = start().await;
    let (code, status) = raw(
        &emu,
        "POST",
        PODS,
        "application/vnd.kubernetes.protobuf",
        "k8s\u{0}\n\t\n\u{2}v1\u{12}\u{3}Pod\u{12}\u{5}\n\u{3}\n\u{1}x",
    )
    .await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );
    assert!(emu.object(Kind::Pod, "airlock-sandbox", "x").is_none());
    let (code, _) = raw(
        &emu,
        "POST",
        "/api/v1/namespaces",
        "application/yaml",
        "kind: Namespace",
    )
    .await;
    assert_eq!(code, 415);
}
