//! Why a run waits, on the real test cluster with the whole system: while a run is `pending` its record and
//! the API's `status` say why, as Kubernetes says it (a pod the scheduler cannot place: `Unschedulable` with
//! the scheduler's message; an image that cannot be pulled: `ErrImagePull` / `ImagePullBackOff` with the
//! kubelet's), updated as it changes; and a run that stays so past its grace ends `failed` with that reason,
//! long before its deadline.
//!
//! The unschedulable run asks for the policy's most CPU (the default policy's `max_cpu_millis`, 4 cores,
//! within the sandbox LimitRange's per-container ceiling), more than the test cluster's node has: it needs
//! a node with fewer allocatable CPUs than that, and says so when the node has more.

mod common;
mod kube_cluster;

use std::time::Duration;

use airlock_schemas::{Policy, RunStatus, quantity};
use anyhow::Context;
use common::System;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use kube_cluster::Cluster;
use serde_json::{Value, json};

/// The unschedulable grace of these tests (the default is 5 min): long enough to see the pending reason.
const UNSCHEDULABLE_GRACE: &str = "10s";
/// The image pull grace of these tests (the default is 60 s): the kubelet reports `ErrImagePull` first
/// and `ImagePullBackOff` after its first back-off (10 s), so long enough to see both.
const IMAGE_PULL_GRACE: &str = "30s";

async fn start(cluster: &mut Cluster, flags: &[&str]) -> anyhow::Result<System> {
    cluster
        .dispatcher_args
        .extend(flags.iter().map(|s| s.to_string()));
    System::start(cluster.runtime()).await
}

/// The API's `status` reply for `id`.
async fn api_status(sys: &System, id: &str) -> anyhow::Result<Value> {
    let msg = sys
        .client
        .request(
            "airlock.api.status",
            serde_json::to_vec(&json!({ "id": id }))?.into(),
        )
        .await
        .context("airlock.api.status")?;
    Ok(serde_json::from_slice(&msg.payload)?)
}

/// Waits until the run is `pending` with a reason `pred` accepts; returns the reason.
async fn pending_with(
    sys: &System,
    id: &str,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let rec = sys
        .wait_record(id, what, |r| {
            r.status == Some(RunStatus::Pending) && r.reason.as_deref().is_some_and(&pred)
        })
        .await?;
    Ok(rec.reason.unwrap_or_default())
}

/// The most CPU (millicores) any node can give a pod.
async fn largest_node_cpu_millis(cluster: &Cluster) -> anyhow::Result<u64> {
    let nodes = Api::<Node>::all(cluster.test.client().await?)
        .list(&ListParams::default())
        .await?;
    nodes
        .items
        .iter()
        .filter_map(|n| n.status.as_ref()?.allocatable.as_ref()?.get("cpu"))
        .filter_map(|q| quantity::cpu_millis(&q.0))
        .max()
        .context("no node reports its allocatable cpu")
}

#[tokio::test]
async fn on_kubernetes_a_run_no_node_has_room_for_shows_unschedulable_with_the_schedulers_message_and_fails_after_the_grace()
-> anyhow::Result<()> {
    let mut cluster = Cluster::new("unplaced").await?;
    let cpu = Policy::default().max_cpu_millis;
    let node_cpu = largest_node_cpu_millis(&cluster).await?;
    anyhow::ensure!(
        node_cpu < cpu,
        "this test needs a node with less than {cpu}m allocatable cpu (the policy's most) so that no node \
         can take the run; the largest has {node_cpu}m"
    );
    let sys = start(
        &mut cluster,
        &["--unschedulable-grace", UNSCHEDULABLE_GRACE],
    )
    .await?;
    let id = "kube-unplaced-1";
    let mut req = cluster.request(id, "echo never runs", 600);
    let cores = format!("{cpu}m");
    req["resources"] = json!({
        "requests": { "cpu": cores, "memory": "32Mi" },
        "limits": { "cpu": cores, "memory": "64Mi" },
    });
    sys.submit(&req).await?;

    let reason = pending_with(&sys, id, "pending, unschedulable", |r| {
        r.starts_with("Unschedulable: ")
    })
    .await?;
    assert!(
        reason.contains("nodes are available") && reason.contains("Insufficient cpu"),
        "the scheduler's message: {reason}"
    );
    let status = api_status(&sys, id).await?;
    assert_eq!(
        (&status["status"], &status["reason"]),
        (&json!("pending"), &json!(reason)),
        "{status}"
    );

    let (events, rec) = sys.wait_terminal(id).await?;
    assert_eq!(rec.status, Some(RunStatus::Failed), "{rec:?}");
    let failed = rec.reason.clone().unwrap_or_default();
    assert!(
        failed.starts_with("Unschedulable: ") && failed.contains("Insufficient cpu"),
        "{failed}"
    );
    let statuses: Vec<_> = events.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        [RunStatus::Pending, RunStatus::Failed],
        "it never ran"
    );
    let waited = chrono::DateTime::parse_from_rfc3339(rec.finished_at.as_deref().unwrap_or(""))?
        - chrono::DateTime::parse_from_rfc3339(rec.submitted_at.as_deref().unwrap_or(""))?;
    assert!(
        waited < chrono::Duration::from_std(Duration::from_secs(120))?,
        "failed after the grace, not at the deadline: {waited}"
    );
    cluster.wait_objects_gone(id).await?;
    sys.stop().await?;
    cluster.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn on_kubernetes_a_run_whose_image_is_absent_shows_the_image_pull_reason_while_pending_and_fails_after_the_grace()
-> anyhow::Result<()> {
    let mut cluster = Cluster::new("absent").await?;
    let sys = start(&mut cluster, &["--image-pull-grace", IMAGE_PULL_GRACE]).await?;
    let id = "kube-absent-1";
    let image = cluster.pusher.reference("absent:1");
    let mut req = cluster.request(id, "true", 600);
    req["image"] = json!(image);
    sys.submit(&req).await?;

    let reason = pending_with(&sys, id, "pending, its image failing", |r| {
        r.starts_with("ErrImagePull: ") || r.starts_with("ImagePullBackOff: ")
    })
    .await?;
    let status = api_status(&sys, id).await?;
    assert_eq!(status["status"], json!("pending"), "{status}");
    let shown = status["reason"].as_str().unwrap_or_default();
    assert!(
        shown.starts_with("ErrImagePull: ") || shown.starts_with("ImagePullBackOff: "),
        "the API shows why: {status} (the record said {reason})"
    );
    // Updated as it changes: the kubelet backs off after its first failures.
    let backing_off = pending_with(&sys, id, "pending, backing off", |r| {
        r.starts_with("ImagePullBackOff: ")
    })
    .await?;
    assert!(
        backing_off.starts_with(&format!(
            "ImagePullBackOff: Back-off pulling image {image:?}"
        )),
        "{backing_off}"
    );

    let (events, rec) = sys.wait_terminal(id).await?;
    assert_eq!(rec.status, Some(RunStatus::Failed), "{rec:?}");
    let failed = rec.reason.clone().unwrap_or_default();
    assert!(
        (failed.starts_with("ImagePullBackOff: ") || failed.starts_with("ErrImagePull: "))
            && failed.contains("absent"),
        "{failed}"
    );
    let statuses: Vec<_> = events.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        [RunStatus::Pending, RunStatus::Failed],
        "it never ran"
    );
    cluster.wait_objects_gone(id).await?;
    sys.stop().await?;
    cluster.cleanup().await;
    Ok(())
}
