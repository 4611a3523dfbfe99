//! Image mode: the kubelet pulls pods' images from a real registry (Debian's docker-registry on
//! loopback) and runs them in their rootfs, failing as a node does (seen through the API and `kubectl`).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use airlock_images::{RegistryConfig, StoreConfig};
use airlock_kube_emulator::{Emulator, EmulatorConfig, EmulatorHandle, Kind};
use airlock_test_support::oci::{self, ImageSpec, Pusher};
use airlock_test_support::registry::Registry;
use common::{WAIT, client};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams, PostParams};
use serde_json::{Value, json};

const NS: &str = "airlock-sandbox";

/// An emulator in image mode over a fresh store, trusting `registry` settings.
async fn emulator(dir: &std::path::Path, registry: RegistryConfig) -> EmulatorHandle {
    let mut cfg = EmulatorConfig::default().namespace(NS).images(StoreConfig {
        registry,
        ..StoreConfig::new(dir.join("store"))
    });
    cfg.image_pull_backoff = Duration::from_millis(300);
    Emulator::start(cfg).await.unwrap()
}

/// Waits until an object of `kind` matches `pred`; returns it.
async fn wait_obj(
    emu: &EmulatorHandle,
    kind: Kind,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    emu.wait_for(what, WAIT, |h| h.objects(kind).iter().any(&pred))
        .await
        .unwrap();
    emu.objects(kind).into_iter().find(|o| pred(o)).unwrap()
}

fn plain(r: &Registry) -> RegistryConfig {
    RegistryConfig {
        insecure_registries: vec![r.host()],
        system_roots: false,
        ..RegistryConfig::default()
    }
}

fn pod(name: &str, container: Value, security: Value) -> Pod {
    let mut c = container;
    c["name"] = json!("main");
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "securityContext": security, "containers": [c]},
    }))
    .unwrap()
}

/// An image whose config sets Entrypoint, Cmd, Env and WorkingDir (a directory of its own).
fn configured_image(marker: &str) -> ImageSpec {
    let layer = oci::busybox_layer(marker)
        .unwrap()
        .dir("app/")
        .file("app/data", b"in the workdir\n");
    ImageSpec::new(vec![layer, oci::users_layer()]).with_run(json!({
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo default cmd; cat data; echo \"$FROM_IMAGE $OVERRIDDEN\""],
            "Env": ["PATH=/bin", "FROM_IMAGE=image-env", "OVERRIDDEN=from-image"],
            "WorkingDir": "/app",
            "User": "1000",
    }))
}

async fn finished_log(emu: &EmulatorHandle, pods: &Api<Pod>, name: &str) -> String {
    let p = wait_obj(emu, Kind::Pod, &format!("pod {name} finished"), |o| {
        o.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
            && matches!(
                o.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            )
    })
    .await;
    let log = pods.logs(name, &LogParams::default()).await.unwrap();
    assert_eq!(
        p.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded"),
        "{p:#}\nlog: {log}"
    );
    log
}

#[tokio::test]
async fn a_pod_runs_in_its_image_and_cannot_see_the_hosts_usr_or_etc() {
    let dir = oci::shared_tempdir("emu-img-").unwrap();
    let reg = Registry::start_plain().await.unwrap();
    let pusher = Pusher::plain(&reg);
    pusher
        .push(
            "tools:1",
            &ImageSpec::new(vec![
                oci::busybox_layer("only in the image").unwrap(),
                oci::users_layer(),
            ])
            .with_run(json!({"Env": ["PATH=/bin"]})),
        )
        .await
        .unwrap();
    let emu = emulator(dir.path(), plain(&reg)).await;
    let pods: Api<Pod> = Api::namespaced(client(&emu).await, NS);
    let script = "cat /etc/airlock-marker; echo; \
        if test -e /usr/bin/env || test -e /etc/debian_version; then echo HOST-VISIBLE; fi; \
        id -u; hostname; touch /etc/x 2>/dev/null || echo read-only; echo ok > /tmp/t && cat /tmp/t";
    let p = pod(
        "marker",
        json!({"image": pusher.reference("tools:1"), "command": ["sh", "-c", script],
               "securityContext": {"runAsUser": 4321, "runAsGroup": 4321}}),
        json!({"runAsNonRoot": true}),
    );
    pods.create(&PostParams::default(), &p).await.unwrap();
    let log = finished_log(&emu, &pods, "marker").await;
    assert_eq!(log, "only in the image\n4321\nmarker\nread-only\nok\n");
    let pod = emu.object(Kind::Pod, NS, "marker").unwrap();
    let image_id = pod
        .pointer("/status/containerStatuses/0/imageID")
        .and_then(Value::as_str)
        .unwrap();
    assert!(image_id.contains("@sha256:"), "{image_id}");
}

#[tokio::test]
async fn entrypoint_cmd_env_and_working_dir_follow_kubernetes_semantics_by_tag_and_by_digest() {
    let dir = oci::shared_tempdir("emu-img-").unwrap();
    let reg = Registry::start_plain().await.unwrap();
    let pusher = Pusher::plain(&reg);
    let digest = pusher
        .push("configured:1", &configured_image("m"))
        .await
        .unwrap();
    let emu = emulator(dir.path(), plain(&reg)).await;
    let pods: Api<Pod> = Api::namespaced(client(&emu).await, NS);
    let by_tag = pusher.reference("configured:1");
    let by_digest = pusher.reference(&format!("configured@{digest}"));
    let cases = [
        // Nothing set: Entrypoint + Cmd, image Env, WorkingDir, the image's user.
        (
            "defaults",
            json!({"image": by_tag}),
            "default cmd\nin the workdir\nimage-env from-image\n",
        ),
        // args replace Cmd only; the container's env overrides the image's.
        (
            "args",
            json!({"image": by_digest, "args": ["pwd; id -u; echo \"$FROM_IMAGE $OVERRIDDEN\""],
            "env": [{"name": "OVERRIDDEN", "value": "from-pod"}]}),
            "/app\n1000\nimage-env from-pod\n",
        ),
        // command replaces Entrypoint and drops Cmd; workingDir overrides WorkingDir.
        (
            "command",
            json!({"image": by_digest, "command": ["echo", "only", "command"], "workingDir": "/bin"}),
            "only command\n",
        ),
        (
            "both",
            json!({"image": by_tag, "command": ["sh", "-c"], "args": ["pwd"], "workingDir": "/etc"}),
            "/etc\n",
        ),
    ];
    for (name, c, _) in &cases {
        pods.create(&PostParams::default(), &pod(name, c.clone(), json!({})))
            .await
            .unwrap();
    }
    for (name, _, want) in &cases {
        assert_eq!(&finished_log(&emu, &pods, name).await, want, "case {name}");
    }
}

#[tokio::test]
async fn a_private_image_is_pulled_over_tls_with_credentials() {
    let dir = oci::shared_tempdir("emu-img-").unwrap();
    let tls = oci::tls_registry(dir.path()).await.unwrap();
    let pusher = Pusher::tls(&tls.registry, &tls.ca_pem);
    pusher
        .push("private/app:1", &configured_image("private"))
        .await
        .unwrap();
    let auth = oci::auth_file(dir.path(), &tls.registry.host(), oci::USER, oci::PASSWORD).unwrap();
    let emu = emulator(
        dir.path(),
        RegistryConfig {
            system_roots: false,
            extra_ca_files: vec![tls.ca_file.clone()],
            auth_file: Some(auth),
            ..RegistryConfig::default()
        },
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client(&emu).await, NS);
    let c = json!({"image": pusher.reference("private/app:1"), "command": ["cat", "/etc/airlock-marker"]});
    pods.create(&PostParams::default(), &pod("private", c, json!({})))
        .await
        .unwrap();
    assert_eq!(finished_log(&emu, &pods, "private").await, "private");
}

/// Waits until the pod's container waits with `reason`; returns the pod.
async fn waiting(emu: &EmulatorHandle, name: &str, reason: &str) -> Value {
    wait_obj(
        emu,
        Kind::Pod,
        &format!("pod {name} waiting with {reason}"),
        |o| {
            o.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
                && o.pointer("/status/containerStatuses/0/state/waiting/reason")
                    .and_then(Value::as_str)
                    == Some(reason)
        },
    )
    .await
}

#[tokio::test]
async fn a_missing_image_waits_in_err_image_pull_then_image_pull_back_off_with_events() {
    let dir = oci::shared_tempdir("emu-img-").unwrap();
    let reg = Registry::start_plain().await.unwrap();
    let emu = emulator(dir.path(), plain(&reg)).await;
    let pods: Api<Pod> = Api::namespaced(client(&emu).await, NS);
    let image = format!("{}/nope:1", reg.host());
    let c = json!({"image": image, "command": ["true"]});
    pods.create(&PostParams::default(), &pod("missing", c, json!({})))
        .await
        .unwrap();
    let p = waiting(&emu, "missing", "ErrImagePull").await;
    assert_eq!(p.pointer("/status/phase"), Some(&json!("Pending")));
    let msg = p
        .pointer("/status/containerStatuses/0/state/waiting/message")
        .and_then(Value::as_str)
        .unwrap();
    assert!(msg.contains("not found"), "{msg}");
    let p = waiting(&emu, "missing", "ImagePullBackOff").await;
    let msg = p
        .pointer("/status/containerStatuses/0/state/waiting/message")
        .and_then(Value::as_str)
        .unwrap();
    assert!(
        msg.starts_with(&format!("Back-off pulling image {image:?}")),
        "{msg}"
    );
    // It pulls again after the back-off.
    wait_obj(&emu, Kind::Event, "a repeated pull", |e| {
        e.get("reason") == Some(&json!("Pulling"))
            && e.get("count").and_then(Value::as_i64) >= Some(2)
    })
    .await;
    let events = emu.objects(Kind::Event);
    let has = |reason: &str, msg: &str| {
        events.iter().any(|e| {
            e["reason"] == reason && e["message"].as_str().is_some_and(|m| m.contains(msg))
        })
    };
    assert!(has("Failed", "Error: ErrImagePull"), "{events:#?}");
    assert!(
        has("Failed", &format!("Failed to pull image {image:?}")),
        "{events:#?}"
    );
    assert!(has("BackOff", "Back-off pulling image"), "{events:#?}");
}

#[tokio::test]
async fn run_as_non_root_with_an_image_running_as_root_is_create_container_config_error() {
    let dir = oci::shared_tempdir("emu-img-").unwrap();
    let reg = Registry::start_plain().await.unwrap();
    let pusher = Pusher::plain(&reg);
    pusher
        .push(
            "root:1",
            &ImageSpec::new(vec![oci::busybox_layer("r").unwrap(), oci::users_layer()]),
        )
        .await
        .unwrap();
    pusher
        .push(
            "named:1",
            &ImageSpec::new(vec![oci::busybox_layer("r").unwrap(), oci::users_layer()])
                .with_run(json!({"User": "nobody"})),
        )
        .await
        .unwrap();
    let emu = emulator(dir.path(), plain(&reg)).await;
    let pods: Api<Pod> = Api::namespaced(client(&emu).await, NS);
    let c = json!({"image": pusher.reference("root:1"), "command": ["true"]});
    pods.create(
        &PostParams::default(),
        &pod("rooty", c, json!({"runAsNonRoot": true})),
    )
    .await
    .unwrap();
    let c = json!({"image": pusher.reference("named:1"), "command": ["true"]});
    pods.create(
        &PostParams::default(),
        &pod("named", c, json!({"runAsNonRoot": true})),
    )
    .await
    .unwrap();
    let p = waiting(&emu, "rooty", "CreateContainerConfigError").await;
    let msg = p
        .pointer("/status/containerStatuses/0/state/waiting/message")
        .and_then(Value::as_str)
        .unwrap();
    assert!(
        msg.starts_with(
            "container has runAsNonRoot and image will run as root (pod: \"rooty_airlock-sandbox("
        ),
        "{msg}"
    );
    let p = waiting(&emu, "named", "CreateContainerConfigError").await;
    let msg = p
        .pointer("/status/containerStatuses/0/state/waiting/message")
        .and_then(Value::as_str)
        .unwrap();
    assert!(
        msg.contains("image has non-numeric user (nobody), cannot verify user is non-root"),
        "{msg}"
    );
    assert_eq!(p.pointer("/status/phase"), Some(&json!("Pending")));
}

#[tokio::test]
async fn never_with_an_absent_image_is_err_image_never_pull_and_a_bad_name_is_invalid_image_name() {
    let dir = oci::shared_tempdir("emu-img-").unwrap();
    let reg = Registry::start_plain().await.unwrap();
    let emu = emulator(dir.path(), plain(&reg)).await;
    let pods: Api<Pod> = Api::namespaced(client(&emu).await, NS);
    let c = json!({"image": format!("{}/absent:1", reg.host()), "imagePullPolicy": "Never", "command": ["true"]});
    pods.create(&PostParams::default(), &pod("never", c, json!({})))
        .await
        .unwrap();
    let c = json!({"image": "Not A Valid/Name", "command": ["true"]});
    pods.create(&PostParams::default(), &pod("invalid", c, json!({})))
        .await
        .unwrap();
    let p = waiting(&emu, "never", "ErrImageNeverPull").await;
    let msg = p
        .pointer("/status/containerStatuses/0/state/waiting/message")
        .and_then(Value::as_str)
        .unwrap();
    assert!(
        msg.ends_with("is not present with pull policy of Never"),
        "{msg}"
    );
    waiting(&emu, "invalid", "InvalidImageName").await;
    assert!(
        reg.requests()
            .unwrap()
            .iter()
            .all(|r| !r.path.contains("absent")),
        "Never never asks the registry"
    );
}

/// The standalone binary in image mode: `--image-store`, `--registry-auth-file` and the system roots
/// as `SSL_CERT_FILE` names them, against a TLS registry with htpasswd auth.
#[tokio::test]
async fn the_emulator_binary_pulls_over_tls_trusting_ssl_cert_file_with_its_registry_auth_file() {
    use tokio::io::AsyncBufReadExt as _;
    let dir = oci::shared_tempdir("emu-bin-").unwrap();
    let tls = oci::tls_registry(dir.path()).await.unwrap();
    let pusher = Pusher::tls(&tls.registry, &tls.ca_pem);
    pusher
        .push("private/bin:1", &configured_image("via the binary"))
        .await
        .unwrap();
    let auth = oci::auth_file(dir.path(), &tls.registry.host(), oci::USER, oci::PASSWORD).unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_airlock-kube-emulator"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--namespace", NS, "--image-store"])
        .arg(dir.path().join("store"))
        .arg("--registry-auth-file")
        .arg(&auth)
        .env("SSL_CERT_FILE", &tls.ca_file)
        .env_remove("SSL_CERT_DIR")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let url = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(cfg).unwrap(), NS);
    let c = json!({"image": pusher.reference("private/bin:1"), "command": ["cat", "/etc/airlock-marker"]});
    pods.create(&PostParams::default(), &pod("via-binary", c, json!({})))
        .await
        .unwrap();
    let phase = airlock_test_support::wait_until(WAIT, "the pod to finish", || async {
        let p = pods.get("via-binary").await.ok()?;
        let phase = p.status?.phase?;
        (phase == "Succeeded" || phase == "Failed").then_some(phase)
    })
    .await
    .unwrap();
    let log = pods
        .logs("via-binary", &LogParams::default())
        .await
        .unwrap();
    assert_eq!(
        (phase.as_str(), log.as_str()),
        ("Succeeded", "via the binary")
    );
}
