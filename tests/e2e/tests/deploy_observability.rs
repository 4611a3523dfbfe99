//! The opt-in dashboard and alerts under `deploy/observability/`.
//!
//! Every metric a dashboard query or an alert expression names is one the services export: the names are
//! checked against the series of `Metrics::new(Service::All)` (so a renamed family breaks this test, not a
//! production dashboard). The kustomization builds into the dashboard ConfigMap and the PrometheusRule.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use airlock_runtime::metrics::{
    ApiCall, ApiCode, JanitorAction, LagFrom, Metrics, RejectClass, Service, Verb,
};
use anyhow::{Context, Result, ensure};
use serde_json::Value;

mod deploy;
use deploy::*;

/// Every series name the metrics registry can produce: a counter `x` as `x_total`, a histogram `x` as
/// `x_bucket`, `x_sum` and `x_count`, anything else by its own name. A labelled family is rendered once it
/// has a series, so each is given one first.
fn exported_series() -> BTreeSet<String> {
    let m = Metrics::new(Service::All);
    m.run_accepted("q");
    m.run_rejected("q", RejectClass::Invalid);
    m.run_launched("q", "r", chrono::Utc::now());
    m.run_running("r");
    m.set_slots_in_use("q", 1);
    m.backend_call("create Pod", ApiCode::Ok);
    m.backend_retry(ApiCall {
        verb: Verb::Create,
        code: ApiCode::Timeout,
    });
    m.result_rejected("invalid_token");
    m.run_reaped("succeeded", &[(LagFrom::Finish, chrono::Utc::now())]);
    m.janitor(JanitorAction::Sweep);
    m.set_consumer("c", 1, 1, 1);
    let text = m.encode();
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                out.insert(format!("{name}_total"));
            }
            "histogram" => {
                for s in ["bucket", "sum", "count"] {
                    out.insert(format!("{name}_{s}"));
                }
            }
            _ => {
                out.insert(name.to_string());
            }
        }
    }
    out
}

/// The `airlock_*` metric names a PromQL expression mentions.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("airlock_") {
        let before_ok = rest[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if before_ok {
            out.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

fn dashboard() -> Result<Value> {
    let path = observability_dir().join("airlock-dashboard.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

fn dashboard_exprs(d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push(e.to_string());
            }
        }
    }
    out
}

fn rule_exprs() -> Result<Vec<(String, String)>> {
    let docs = documents(&observability_dir().join("prometheus-rule.yaml"))?;
    ensure!(docs.len() == 1, "prometheus-rule.yaml holds one object");
    let rule = &docs[0];
    ensure!(
        rule["apiVersion"] == "monitoring.coreos.com/v1" && rule["kind"] == "PrometheusRule",
        "prometheus-rule.yaml is a monitoring.coreos.com/v1 PrometheusRule"
    );
    let mut out = Vec::new();
    for g in rule["spec"]["groups"].as_array().into_iter().flatten() {
        for r in g["rules"].as_array().into_iter().flatten() {
            let alert = r["alert"]
                .as_str()
                .context("a rule without an alert name")?;
            let expr = r["expr"]
                .as_str()
                .with_context(|| format!("alert {alert} has no expr"))?;
            out.push((alert.to_string(), expr.to_string()));
        }
    }
    Ok(out)
}

#[test]
fn every_metric_the_dashboard_queries_is_one_the_services_export() -> Result<()> {
    let known = exported_series();
    ensure!(
        known.contains("airlock_runs_accepted_total"),
        "the registry renders its families"
    );
    let d = dashboard()?;
    ensure!(d["uid"] == "airlock" && d["title"].is_string());
    let exprs = dashboard_exprs(&d);
    ensure!(exprs.len() >= 10, "the dashboard has its queries");
    let mut used = BTreeSet::new();
    for e in &exprs {
        let names = metric_names(e);
        ensure!(!names.is_empty(), "query {e:?} names no airlock metric");
        for n in names {
            ensure!(
                known.contains(&n),
                "query {e:?} uses {n}, which no service exports"
            );
            used.insert(n);
        }
    }
    // What the dashboard is for: throughput, latency percentiles, failures, queue depth, reap lag, slots.
    for must in [
        "airlock_runs_accepted_total",
        "airlock_dispatch_latency_seconds_bucket",
        "airlock_runs_rejected_total",
        "airlock_results_rejected_total",
        "airlock_consumer_pending",
        "airlock_reap_lag_seconds_bucket",
        "airlock_slots_in_use",
    ] {
        ensure!(used.contains(must), "the dashboard does not show {must}");
    }
    ensure!(
        exprs.iter().any(|e| e.contains("histogram_quantile(0.99")),
        "latency percentiles come from histogram_quantile"
    );
    Ok(())
}

#[test]
fn every_alert_expression_names_only_exported_metrics() -> Result<()> {
    let known = exported_series();
    let rules = rule_exprs()?;
    for (alert, expr) in &rules {
        let names = metric_names(expr);
        ensure!(!names.is_empty(), "alert {alert} names no airlock metric");
        for n in names {
            ensure!(
                known.contains(&n),
                "alert {alert} uses {n}, which no service exports"
            );
        }
    }
    for (alert, metric) in [
        ("AirlockRunsStuckPastDeadline", "airlock_unreaped_runs"),
        ("AirlockReapLagHigh", "airlock_reap_lag_seconds_bucket"),
        (
            "AirlockIngestRejectionsRising",
            "airlock_results_rejected_total",
        ),
        ("AirlockConsumerLag", "airlock_consumer_pending"),
    ] {
        ensure!(
            rules.iter().any(|(a, e)| a == alert && e.contains(metric)),
            "alert {alert} on {metric} is missing"
        );
    }
    Ok(())
}

#[test]
fn a_misspelt_metric_is_caught_by_the_name_check() {
    let known = exported_series();
    let names = metric_names("sum(rate(airlock_runs_acepted_total[5m])) / airlock_slots_in_use");
    assert_eq!(
        names,
        ["airlock_runs_acepted_total", "airlock_slots_in_use"]
    );
    assert!(!known.contains(&names[0]));
    assert!(known.contains(&names[1]));
}

#[test]
fn the_observability_kustomization_builds_the_dashboard_config_map_and_the_rule() -> Result<()> {
    let Some(kubectl) = kubectl() else {
        return skip_missing(
            "kubectl",
            "scripts/setup installs it (Debian kubernetes-client)",
        );
    };
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(observability_dir())
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "kubectl kustomize deploy/observability failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let mut kinds = BTreeSet::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        use serde::Deserialize as _;
        let v = Value::deserialize(doc)?;
        kinds.insert(kind(&v).to_string());
        ensure!(v["metadata"]["namespace"] == "airlock-system");
        if kind(&v) == "ConfigMap" {
            ensure!(v["metadata"]["labels"]["grafana_dashboard"] == "1");
            let json = v["data"]["airlock-dashboard.json"]
                .as_str()
                .context("the ConfigMap holds the dashboard")?;
            let d: Value = serde_json::from_str(json)?;
            ensure!(d["uid"] == "airlock");
        }
    }
    ensure!(
        kinds == BTreeSet::from(["ConfigMap".to_string(), "PrometheusRule".to_string()]),
        "rendered kinds: {kinds:?}"
    );
    Ok(())
}
