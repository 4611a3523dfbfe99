//! The v1 contract: serde round-trips, JSON Schemas (current and agreeing with the types), and validation
//! that reports every problem with its field path.

use std::path::Path;

use airlock_schemas::{Policy, RunRequest, decode_request, json_schemas};
use serde_json::json;

fn full_request() -> serde_json::Value {
    json!({
        "id": "run-42",
        "image": "docker.io/library/python:3.12@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "command": ["python3", "-c"],
        "args": ["print(1)"],
        "env": {"MODE": "fast", "_X1": ""},
        "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
        "deadline_seconds": 120,
        "egress": ["pypi"],
        "labels": {"team": "ml", "example.com/tier": "batch"},
        "metadata": {"ticket": 7, "nested": [1, 2, {"a": null}]}
    })
}

fn policy() -> Policy {
    let mut p = Policy::default();
    p.egress.insert(
        "pypi".into(),
        airlock_schemas::EgressDestination {
            cidrs: vec!["10.0.0.0/8".into()],
            pod_labels: Default::default(),
            namespace_labels: Default::default(),
            ports: vec![airlock_schemas::EgressPort {
                port: 443,
                protocol: "TCP".into(),
            }],
        },
    );
    p
}

fn schema_validator(file: &str) -> jsonschema::Validator {
    let schema = json_schemas()
        .into_iter()
        .find(|(f, _)| *f == file)
        .map(|(_, s)| s)
        .expect("schema exists");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

#[test]
fn a_valid_request_round_trips_through_serde_and_its_json_schema() {
    let value = full_request();
    let req: RunRequest = serde_json::from_value(value.clone()).expect("decodes");
    assert_eq!(serde_json::to_value(&req).expect("encodes"), value);
    let v = schema_validator("run-request.v1.json");
    assert!(
        v.is_valid(&value),
        "{:?}",
        v.iter_errors(&value)
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    );
    let run = decode_request(
        &serde_json::to_vec(&value).expect("encodes"),
        "default",
        &policy(),
    )
    .expect("valid");
    assert_eq!(run.deadline_seconds, 120);
    assert_eq!(run.request, req);
}

#[test]
fn the_json_schema_rejects_what_serde_rejects() {
    let v = schema_validator("run-request.v1.json");
    let mut unknown = full_request();
    unknown["surprise"] = json!(1);
    assert!(!v.is_valid(&unknown));
    assert!(serde_json::from_value::<RunRequest>(unknown).is_err());
    let missing_image = json!({"id": "a"});
    assert!(!v.is_valid(&missing_image));
    assert!(serde_json::from_value::<RunRequest>(missing_image).is_err());
}

#[test]
fn policy_defaults_fill_missing_resources_and_deadline() {
    let run =
        decode_request(br#"{"id":"a","image":"alpine"}"#, "q", &Policy::default()).expect("valid");
    assert_eq!(
        run.deadline_seconds,
        Policy::default().default_deadline_seconds
    );
    assert_eq!(run.request.resources, Policy::default().default_resources);
}

#[test]
fn every_invalid_field_is_reported_with_its_path() {
    let bad = json!({
        "id": "Bad_ID-",
        "image": "UPPER/case:tag!",
        "command": ["ok", "nul\u{0}byte"],
        "env": {"AIRLOCK_X": "1", "1BAD": "x"},
        "resources": {"requests": {"cpu": "lots", "memory": "2Gi"}, "limits": {"cpu": "64", "memory": "1Gi"}},
        "deadline_seconds": 999999,
        "egress": ["pypi", "internet"],
        "labels": {"airlock.dev/run-id": "x", "ok": "not a valid value"}
    });
    let errs = decode_request(
        &serde_json::to_vec(&bad).expect("encodes"),
        "Queue!",
        &policy(),
    )
    .expect_err("invalid");
    let got: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let expected_paths = [
        "queue",
        "id",
        "image",
        "command.1",
        "env.AIRLOCK_X: reserved prefix",
        "env.1BAD",
        "resources.requests.cpu",
        "resources.limits.cpu",
        "resources.requests.memory: exceeds resources.limits.memory",
        "deadline_seconds",
        "egress.1: unknown egress destination \"internet\"",
        "labels.airlock.dev/run-id: reserved label",
        "labels.ok",
    ];
    for p in expected_paths {
        assert!(
            got.iter().any(|g| g.starts_with(p)),
            "no error for {p:?} in {got:#?}"
        );
    }
    assert!(
        !got.iter().any(|g| g.starts_with("egress.0")),
        "a known egress name was rejected: {got:#?}"
    );
}

#[test]
fn type_errors_and_unknown_fields_name_their_path() {
    let errs = decode_request(
        br#"{"id":"a","image":"alpine","resources":{"limits":{"gpu":"1"}}}"#,
        "q",
        &Policy::default(),
    )
    .expect_err("unknown field");
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].path, "resources.limits.gpu");
    assert!(
        errs[0].message.contains("unknown field `gpu`"),
        "{}",
        errs[0].message
    );

    let errs = decode_request(
        br#"{"id":"a","image":"alpine","env":{"A":1}}"#,
        "q",
        &Policy::default(),
    )
    .expect_err("type");
    assert_eq!(errs[0].path, "env.A");

    let errs = decode_request(b"not json", "q", &Policy::default()).expect_err("syntax");
    assert_eq!(errs[0].path, ".");
}

#[test]
fn an_oversized_request_is_rejected_before_parsing() {
    let p = Policy {
        max_request_bytes: 10,
        ..Policy::default()
    };
    let errs = decode_request(br#"{"id":"a","image":"alpine"}"#, "q", &p).expect_err("too big");
    assert!(errs[0].message.contains("limit is 10"));
}

#[test]
fn an_image_outside_the_allowlist_is_rejected_with_that_reason() {
    let p = Policy {
        image_allowlist: vec!["docker.io/library/".into(), "ghcr.io/acme/tool:1".into()],
        ..Policy::default()
    };
    assert!(decode_request(br#"{"id":"a","image":"docker.io/library/alpine"}"#, "q", &p).is_ok());
    assert!(decode_request(br#"{"id":"a","image":"ghcr.io/acme/tool:1"}"#, "q", &p).is_ok());
    let errs = decode_request(br#"{"id":"a","image":"evil.example/miner"}"#, "q", &p)
        .expect_err("refused");
    assert_eq!(
        errs[0].to_string(),
        "image: image not in the operator's allowlist"
    );
}

#[test]
fn run_ids_fit_kubernetes_names_and_labels() {
    for ok in ["a", "0", "run-1", &"a".repeat(40)] {
        assert!(airlock_schemas::is_valid_name(ok), "{ok}");
    }
    for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(41)] {
        assert!(!airlock_schemas::is_valid_name(bad), "{bad}");
    }
    assert!(airlock_schemas::labels::object_name(&"a".repeat(40)).len() <= 63);
}

/// Set `AIRLOCK_BLESS=1` to rewrite the committed schemas after changing the types.
#[test]
fn the_committed_json_schemas_are_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
    let bless = std::env::var_os("AIRLOCK_BLESS").is_some();
    let mut stale = Vec::new();
    for (file, schema) in json_schemas() {
        let text = serde_json::to_string_pretty(&schema).expect("encodes") + "\n";
        let path = dir.join(file);
        if bless {
            std::fs::create_dir_all(path.parent().unwrap_or(&dir)).expect("mkdir");
            std::fs::write(&path, &text).expect("write");
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(file);
        }
    }
    assert!(
        stale.is_empty(),
        "stale schemas {stale:?}: run `AIRLOCK_BLESS=1 cargo test -p airlock-schemas` and commit"
    );
}

#[test]
fn a_request_is_exactly_one_json_object_and_nothing_else() {
    let p = Policy::default();
    for body in [
        r#"{"id":"a","image":"alpine"} trailing-garbage"#,
        r#"{"id":"a","image":"alpine"}{"id":"b","image":"alpine"}"#,
        r#"["a", "alpine", null, ["cmd"]]"#,
        r#"{"id":"a","image":"alpine","resources":[{"cpu":"1"}]}"#,
    ] {
        let errs = decode_request(body.as_bytes(), "q", &p).expect_err(body);
        assert_eq!(errs.len(), 1, "{body}: {errs:?}");
    }
    assert!(decode_request(b"\n {\"id\":\"a\",\"image\":\"alpine\"} \n", "q", &p).is_ok());
}

#[test]
fn env_args_labels_and_metadata_beyond_the_stated_limits_are_rejected_with_their_path() {
    use airlock_schemas::limits::*;
    let p = Policy {
        max_request_bytes: 4 * 1024 * 1024,
        ..Policy::default()
    };
    let reasons = |v: serde_json::Value| -> Vec<String> {
        let Err(errs) = decode_request(&serde_json::to_vec(&v).expect("encodes"), "q", &p) else {
            panic!("accepted a request over a limit");
        };
        errs.iter().map(ToString::to_string).collect()
    };
    let env: serde_json::Map<String, serde_json::Value> =
        (0..4_500).map(|i| (format!("V{i}"), json!("x"))).collect();
    let got = reasons(json!({"id": "a", "image": "alpine", "env": env}));
    assert_eq!(
        got,
        [format!("env: 4500 entries, the limit is {MAX_ENV_ENTRIES}")]
    );

    let args: Vec<String> = (0..9_500).map(|i| i.to_string()).collect();
    let got = reasons(json!({"id": "a", "image": "alpine", "command": ["sh"], "args": args}));
    assert_eq!(
        got,
        [format!(
            "args: command and args have 9501 items together, the limit is {MAX_ARGV_ITEMS}"
        )]
    );

    let big = "x".repeat(MAX_ENV_BYTES.max(MAX_ARGV_BYTES) + 1);
    let got = reasons(json!({"id": "a", "image": "alpine", "env": {"BIG": big}}));
    assert!(got[0].starts_with("env: names and values are"), "{got:?}");
    let got = reasons(json!({"id": "a", "image": "alpine", "args": [big]}));
    assert!(got[0].starts_with("args: command and args are"), "{got:?}");

    let labels: serde_json::Map<String, serde_json::Value> = (0..MAX_LABELS + 1)
        .map(|i| (format!("l{i}"), json!("v")))
        .collect();
    let got = reasons(json!({"id": "a", "image": "alpine", "labels": labels}));
    assert_eq!(
        got,
        [format!("labels: 65 labels, the limit is {MAX_LABELS}")]
    );

    let got = reasons(
        json!({"id": "a", "image": "alpine", "metadata": {"m": "x".repeat(MAX_METADATA_BYTES)}}),
    );
    assert!(got[0].starts_with("metadata: "), "{got:?}");

    // At the limits, all is well.
    let env: serde_json::Map<String, serde_json::Value> = (0..MAX_ENV_ENTRIES)
        .map(|i| (format!("V{i}"), json!("x")))
        .collect();
    let args: Vec<String> = (0..MAX_ARGV_ITEMS - 1).map(|i| i.to_string()).collect();
    let ok = json!({"id": "a", "image": "alpine", "command": ["sh"], "args": args, "env": env});
    assert!(decode_request(&serde_json::to_vec(&ok).expect("encodes"), "q", &p).is_ok());
}

#[test]
fn the_json_schema_states_the_count_limits() {
    use airlock_schemas::limits::*;
    let schema = json_schemas()
        .into_iter()
        .find(|(f, _)| *f == "run-request.v1.json")
        .map(|(_, s)| s)
        .expect("schema exists");
    let prop = |name: &str, key: &str| schema["properties"][name][key].as_u64();
    assert_eq!(prop("command", "maxItems"), Some(MAX_ARGV_ITEMS as u64));
    assert_eq!(prop("args", "maxItems"), Some(MAX_ARGV_ITEMS as u64));
    assert_eq!(prop("env", "maxProperties"), Some(MAX_ENV_ENTRIES as u64));
    assert_eq!(prop("labels", "maxProperties"), Some(MAX_LABELS as u64));
    assert_eq!(prop("egress", "maxItems"), Some(MAX_EGRESS as u64));
    let v = schema_validator("run-request.v1.json");
    let env: serde_json::Map<String, serde_json::Value> = (0..MAX_ENV_ENTRIES + 1)
        .map(|i| (format!("V{i}"), json!("x")))
        .collect();
    assert!(!v.is_valid(&json!({"id": "a", "image": "alpine", "env": env})));
}

#[test]
fn too_many_problems_are_reported_as_the_first_fifty_and_a_count() {
    let env: serde_json::Map<String, serde_json::Value> = (0..200)
        .map(|i| (format!("AIRLOCK_{i}"), json!("x")))
        .collect();
    let errs = decode_request(
        &serde_json::to_vec(&json!({"id": "a", "image": "alpine", "env": env})).expect("encodes"),
        "q",
        &Policy::default(),
    )
    .expect_err("reserved names");
    assert_eq!(errs.len(), airlock_schemas::request::MAX_REPORTED + 1);
    assert_eq!(
        errs.last().map(ToString::to_string).as_deref(),
        Some(".: and 150 more problems")
    );
}

#[test]
fn labels_are_valid_exactly_when_a_request_with_them_has_no_label_problem() {
    let many: std::collections::BTreeMap<String, String> = (0..airlock_schemas::limits::MAX_LABELS
        + 1)
        .map(|i| (format!("l{i}"), "v".to_string()))
        .collect();
    let cases: Vec<std::collections::BTreeMap<String, String>> = vec![
        [("team", "ml"), ("example.com/tier", "batch"), ("empty", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        Default::default(),
        [("bad key!".to_string(), "v".to_string())].into(),
        [("k".repeat(300), "v".to_string())].into(),
        [("team".to_string(), "not a value!".to_string())].into(),
        [("airlock.dev/run-id".to_string(), "x".to_string())].into(),
        [("app.kubernetes.io/managed-by".to_string(), "x".to_string())].into(),
        many,
    ];
    for labels in cases {
        let body = json!({"id": "a", "image": "alpine", "labels": labels});
        let problems = match decode_request(body.to_string().as_bytes(), "q", &policy()) {
            Ok(_) => Vec::new(),
            Err(errors) => errors,
        };
        let label_problem = problems
            .iter()
            .any(|e| e.path == "labels" || e.path.starts_with("labels."));
        assert_eq!(
            airlock_schemas::labels_are_valid(&labels),
            !label_problem,
            "{labels:?}: {problems:?}"
        );
    }
}
