//! Discovery documents: `/api`, `/apis`, group and resource lists.

use serde_json::{Value, json};

use crate::kinds::Kind;

pub(super) fn group_body() -> Value {
    json!({
        "name": "networking.k8s.io",
        "versions": [{"groupVersion": "networking.k8s.io/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "networking.k8s.io/v1", "version": "v1"},
    })
}

pub(super) fn resource_list(gv: &str, group: &str) -> Value {
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
