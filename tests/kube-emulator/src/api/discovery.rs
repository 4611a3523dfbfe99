//! Discovery documents: `/api`, `/apis`, group and resource lists.

use serde_json::{Value, json};

use super::GIT_VERSION;
use crate::kinds::Kind;

/// The discovery document at `segs` (`[]`, `version`, `api`, `api/v1`, `apis`, `apis/<group>[/v1]`).
pub(super) fn document(segs: &[&str]) -> Option<Value> {
    let doc = match segs {
        [] => {
            let mut paths = vec!["/api".to_string(), "/api/v1".into(), "/apis".into()];
            for g in Kind::GROUPS {
                paths.push(format!("/apis/{g}"));
                paths.push(format!("/apis/{g}/v1"));
            }
            paths.extend(
                [
                    "/healthz",
                    "/livez",
                    "/openapi/v2",
                    "/openapi/v3",
                    "/readyz",
                    "/version",
                ]
                .map(String::from),
            );
            json!({ "paths": paths })
        }
        ["version"] => json!({
            "major": "1", "minor": "33", "emulationMajor": "1", "emulationMinor": "33",
            "minCompatibilityMajor": "1", "minCompatibilityMinor": "32",
            "gitVersion": GIT_VERSION, "gitCommit": "airlock-kube-emulator", "gitTreeState": "clean",
            "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.2", "compiler": "gc",
            "platform": "linux/amd64",
        }),
        ["api"] => json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
        }),
        ["api", "v1"] => resource_list("v1", ""),
        ["apis"] => json!({
            "kind": "APIGroupList", "apiVersion": "v1",
            "groups": Kind::GROUPS.map(group_body),
        }),
        ["apis", g] if Kind::GROUPS.contains(g) => {
            let mut body = group_body(g);
            body["kind"] = json!("APIGroup");
            body["apiVersion"] = json!("v1");
            body
        }
        ["apis", g, "v1"] if Kind::GROUPS.contains(g) => resource_list(&format!("{g}/v1"), g),
        _ => return None,
    };
    Some(doc)
}

fn group_body(group: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/v1"), "version": "v1"});
    json!({"name": group, "versions": [gv], "preferredVersion": gv})
}

fn resource_list(gv: &str, group: &str) -> Value {
    let verbs = json!([
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch"
    ]);
    let mut resources = Vec::new();
    for k in Kind::ALL.into_iter().filter(|k| k.group() == group) {
        let mut r = json!({
            "name": k.plural(), "singularName": k.singular(), "namespaced": k.namespaced(),
            "kind": k.name(), "verbs": verbs, "shortNames": k.short_names(),
        });
        if k == Kind::Pod {
            r["categories"] = json!(["all"]);
        }
        if k == Kind::Namespace {
            r["verbs"] = json!([
                "create", "delete", "get", "list", "patch", "update", "watch"
            ]);
        }
        resources.push(r);
        if matches!(k, Kind::Pod | Kind::Namespace) {
            resources.push(json!({"name": format!("{}/status", k.plural()), "singularName": "", "namespaced": k.namespaced(), "kind": k.name(), "verbs": ["get", "patch", "update"]}));
        }
        if k == Kind::Pod {
            resources.push(json!({"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}));
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}
