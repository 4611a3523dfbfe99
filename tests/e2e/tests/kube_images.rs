//! Images on Kubernetes, on the real test cluster with the whole system (our services as processes, real
//! NATS and Redis, the cluster's loopback registries): the job runs inside its image, the image's
//! Entrypoint/Cmd/Env/WorkingDir apply as Kubernetes applies them, and a pod that cannot start
//! (`ImagePullBackOff`, `CreateContainerConfigError`, `ErrImageNeverPull`) is visible with `kubectl` and
//! fails the run with that reason after the image pull grace, long before its deadline.

mod common;
mod kube_cluster;

use std::path::Path;

use airlock_schemas::RunStatus;
use airlock_test_support::oci::{self, ImageSpec};
use common::{System, T};
use kube_cluster::{Cluster, MARKER};
use serde_json::{Value, json};

/// The image pull grace of these tests (the default is 60 s).
const GRACE: &str = "5s";

/// `kubectl … -o json` against the cluster; `None` when kubectl fails (e.g. the object is not there).
async fn kubectl_json(cluster: &Cluster, args: &[&str]) -> anyhow::Result<Option<Value>> {
    let out = tokio::process::Command::new(cluster.test.kubectl()?)
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(["-n", &cluster.ns])
        .args(args)
        .args(["-o", "json"])
        .output()
        .await?;
    if !out.status.success() {
        return Ok(None);
    }
    Ok(Some(serde_json::from_slice(&out.stdout)?))
}

/// Polls `kubectl get pod` until the run's container waits with `reason`; returns the pod.
async fn kubectl_pod_waiting(
    cluster: &Cluster,
    run_id: &str,
    reason: &str,
) -> anyhow::Result<Value> {
    let name = format!("airlock-run-{run_id}");
    airlock_test_support::wait_until(
        T,
        &format!("kubectl showing {name} in {reason}"),
        || async {
            let pod = kubectl_json(cluster, &["get", "pod", &name])
                .await
                .ok()
                .flatten()?;
            (pod.pointer("/status/containerStatuses/0/state/waiting/reason")
                == Some(&json!(reason)))
            .then_some(pod)
        },
    )
    .await
}

fn waiting_message(pod: &Value) -> String {
    pod.pointer("/status/containerStatuses/0/state/waiting/message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

async fn start(cluster: &mut Cluster, extra: &[&str]) -> anyhow::Result<System> {
    start_with_grace(cluster, GRACE, extra).await
}

async fn start_with_grace(
    cluster: &mut Cluster,
    grace: &str,
    extra: &[&str],
) -> anyhow::Result<System> {
    cluster
        .dispatcher_args
        .extend(["--image-pull-grace".to_string(), grace.to_string()]);
    cluster
        .dispatcher_args
        .extend(extra.iter().map(|s| s.to_string()));
    System::start(cluster.runtime()).await
}

#[tokio::test]
async fn on_kubernetes_a_job_reads_a_marker_file_that_exists_only_in_its_image_and_cannot_see_the_hosts_usr_or_etc()
-> anyhow::Result<()> {
    let mut cluster = Cluster::new("marker").await?;
    let sys = start(&mut cluster, &[]).await?;
    assert!(Path::new("/usr/bin/env").exists() && Path::new("/etc/debian_version").exists());
    let script = r#"visible=false; if test -e /usr/bin/env || test -e /etc/debian_version; then visible=true; fi
        echo "{\"marker\":\"$(cat /etc/airlock-marker)\",\"host_visible\":$visible,\"uid\":$(id -u)}" | airlock-emit"#;
    sys.submit(&cluster.request("kube-marker-1", script, 60))
        .await?;
    let (_, rec) = sys.wait_terminal("kube-marker-1").await?;
    assert_eq!(rec.status, Some(RunStatus::Succeeded), "{rec:?}");
    let rec = sys
        .wait_record("kube-marker-1", "result", |r| r.result.is_some())
        .await?;
    assert_eq!(
        rec.result,
        Some(json!({"marker": MARKER, "host_visible": false, "uid": 65532}))
    );
    cluster.wait_objects_gone("kube-marker-1").await?;
    sys.stop().await?;
    cluster.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn on_kubernetes_entrypoint_cmd_env_and_working_dir_apply_by_tag_and_by_digest_and_from_a_tls_registry_with_credentials()
-> anyhow::Result<()> {
    let mut cluster = Cluster::new("entrypoint").await?;
    // The job image plus a workdir, with a config that publishes what the job sees.
    let mut spec = oci::job_image(MARKER)?;
    spec.layers.push((
        oci::Tar::default()
            .dir("app/")
            .file("app/data", b"from the workdir"),
        oci::Compression::Gzip,
    ));
    let publish = r#"echo "{\"by\":\"$1\",\"pwd\":\"$(pwd)\",\"data\":\"$(cat data)\",\"env\":\"$FROM_IMAGE $OVERRIDE\"}" | airlock-emit"#;
    spec.run = json!({
        "Entrypoint": ["/bin/sh", "-c", publish, "job"],
        "Cmd": ["cmd-default"],
        "Env": ["PATH=/bin", "FROM_IMAGE=image-env", "OVERRIDE=image"],
        "WorkingDir": "/app",
    });
    let plain = &cluster.pusher;
    let digest = plain.push("configured:1", &spec).await?;
    let by_tag = plain.reference("configured:1");
    let by_digest = plain.reference(&format!("configured@{digest}"));
    let tls = &cluster.tls;
    tls.push("private/configured:1", &spec).await?;
    let private = tls.reference("private/configured:1");
    let sys = start(&mut cluster, &[]).await?;

    let runs = [
        // Entrypoint + Cmd, the image's Env and WorkingDir.
        ("kube-ep-tag", json!({"image": by_tag})),
        // args replace Cmd; the request's env comes over the image's.
        (
            "kube-ep-digest",
            json!({"image": by_digest, "args": ["by-args"], "env": {"OVERRIDE": "request"}}),
        ),
        // Over TLS with the kubelet's credentials.
        (
            "kube-ep-tls",
            json!({"image": private, "args": ["over-tls"]}),
        ),
    ];
    for (id, fields) in &runs {
        let mut req = common::request(id, &[], 60);
        req.as_object_mut().expect("object").remove("command");
        for (k, v) in fields.as_object().expect("object") {
            req[k] = v.clone();
        }
        sys.submit(&req).await?;
    }
    let want = [
        json!({"by": "cmd-default", "pwd": "/app", "data": "from the workdir", "env": "image-env image"}),
        json!({"by": "by-args", "pwd": "/app", "data": "from the workdir", "env": "image-env request"}),
        json!({"by": "over-tls", "pwd": "/app", "data": "from the workdir", "env": "image-env image"}),
    ];
    for ((id, _), want) in runs.iter().zip(want) {
        let (_, rec) = sys.wait_terminal(id).await?;
        assert_eq!(rec.status, Some(RunStatus::Succeeded), "{id}: {rec:?}");
        let rec = sys
            .wait_record(id, "result", |r| r.result.is_some())
            .await?;
        assert_eq!(rec.result, Some(want), "{id}");
    }
    sys.stop().await?;
    cluster.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn on_kubernetes_a_missing_image_shows_image_pull_back_off_in_kubectl_and_the_run_fails_with_that_reason_within_the_grace()
-> anyhow::Result<()> {
    let mut cluster = Cluster::new("pull").await?;
    // The kubelet reports ErrImagePull first and ImagePullBackOff after its first back-off (10 s): a
    // grace long enough to see both.
    let sys = start_with_grace(&mut cluster, "30s", &[]).await?;
    let plain = &cluster.pusher;
    let image = plain.reference("missing:1");
    let mut req = cluster.request("kube-pull-1", "true", 600);
    req["image"] = json!(image);
    sys.submit(&req).await?;

    let pod = kubectl_pod_waiting(&cluster, "kube-pull-1", "ImagePullBackOff").await?;
    assert_eq!(pod.pointer("/status/phase"), Some(&json!("Pending")));
    let message = waiting_message(&pod);
    assert!(
        message.starts_with(&format!("Back-off pulling image {image:?}")),
        "{message}"
    );
    let events = kubectl_json(&cluster, &["get", "events"])
        .await?
        .expect("kubectl get events");
    let items = events["items"].as_array().cloned().unwrap_or_default();
    let seen = |reason: &str, text: &str| {
        items.iter().any(|e| {
            e["reason"] == reason && e["message"].as_str().is_some_and(|m| m.contains(text))
        })
    };
    assert!(seen("Failed", "Error: ErrImagePull"), "{items:#?}");
    assert!(seen("BackOff", "Back-off pulling image"), "{items:#?}");

    let (events, rec) = sys.wait_terminal("kube-pull-1").await?;
    assert_eq!(rec.status, Some(RunStatus::Failed), "{rec:?}");
    let reason = rec.reason.clone().unwrap_or_default();
    assert!(
        (reason.starts_with("ImagePullBackOff: ") || reason.starts_with("ErrImagePull: "))
            && reason.contains("not found"),
        "{reason}"
    );
    let statuses: Vec<_> = events.iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        [RunStatus::Pending, RunStatus::Failed],
        "it never ran"
    );
    cluster.wait_objects_gone("kube-pull-1").await?;
    sys.stop().await?;
    cluster.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn on_kubernetes_an_image_running_as_root_under_run_as_non_root_shows_create_container_config_error_and_the_run_fails()
-> anyhow::Result<()> {
    let mut cluster = Cluster::new("rootimage").await?;
    let plain = &cluster.pusher;
    let root_image = ImageSpec::new(vec![oci::busybox_layer("root")?, oci::users_layer()])
        .with_run(json!({"Env": ["PATH=/bin"]}));
    plain.push("root:1", &root_image).await?;
    let image = plain.reference("root:1");
    // Pods leave the uid to the image, keeping runAsNonRoot.
    let sys = start(&mut cluster, &["--pod-run-as-image-user", "true"]).await?;
    let mut req = cluster.request("kube-root-1", "true", 600);
    req["image"] = json!(image);
    sys.submit(&req).await?;

    let pod = kubectl_pod_waiting(&cluster, "kube-root-1", "CreateContainerConfigError").await?;
    let message = waiting_message(&pod);
    assert!(
        message.starts_with("container has runAsNonRoot and image will run as root"),
        "{message}"
    );

    let (_, rec) = sys.wait_terminal("kube-root-1").await?;
    assert_eq!(rec.status, Some(RunStatus::Failed), "{rec:?}");
    let reason = rec.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with(
            "CreateContainerConfigError: container has runAsNonRoot and image will run as root"
        ),
        "{reason}"
    );
    cluster.wait_objects_gone("kube-root-1").await?;
    sys.stop().await?;
    cluster.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn on_kubernetes_never_with_an_absent_image_fails_with_err_image_never_pull_within_the_grace()
-> anyhow::Result<()> {
    let mut cluster = Cluster::new("never").await?;
    let sys = start(&mut cluster, &[]).await?;
    let plain = &cluster.pusher;
    let mut req = cluster.request("kube-never-1", "true", 600);
    // A name of this test's own: the cluster's registry serves every test of the run.
    let absent = format!("never-absent-{}", std::process::id());
    req["image"] = json!(plain.reference(&format!("{absent}:1")));
    req["image_pull_policy"] = json!("Never");
    sys.submit(&req).await?;
    let (_, rec) = sys.wait_terminal("kube-never-1").await?;
    assert_eq!(rec.status, Some(RunStatus::Failed), "{rec:?}");
    let reason = rec.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with("ErrImageNeverPull: Container image "),
        "{reason}"
    );
    assert!(
        reason.ends_with("is not present with pull policy of Never"),
        "{reason}"
    );
    assert!(
        cluster
            .test
            .registry_requests()?
            .iter()
            .all(|r| !r.path.contains(&absent)),
        "Never never asks the registry"
    );
    cluster.wait_objects_gone("kube-never-1").await?;
    sys.stop().await?;
    cluster.cleanup().await;
    Ok(())
}
