//! The image cache seen through the emulator's kubelet: many pods of a new image pull it once, a cached image
//! runs with its registry stopped, and malicious images leave their pods in `ErrImagePull` with the host
//! untouched (what `backend/tests/local_images.rs` shows for the local runtime).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use airlock_images::{RegistryConfig, StoreConfig};
use airlock_kube_emulator::{Emulator, EmulatorConfig, EmulatorHandle, Kind};
use airlock_test_support::oci::{self, ImageSpec, Pusher, Tar};
use airlock_test_support::registry::Registry;
use common::{WAIT, client};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

const NS: &str = "airlock-sandbox";

/// An emulator in image mode over a fresh store, trusting the plain registry `r`.
async fn emulator(dir: &std::path::Path, r: &Registry) -> EmulatorHandle {
    let registry = RegistryConfig {
        insecure_registries: vec![r.host()],
        system_roots: false,
        ..RegistryConfig::default()
    };
    let mut cfg = EmulatorConfig::default().namespace(NS).images(StoreConfig {
        registry,
        ..StoreConfig::new(dir.join("store"))
    });
    cfg.image_pull_backoff = Duration::from_millis(300);
    Emulator::start(cfg).await.unwrap()
}

fn pod(name: &str, image: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [
            {"name": "main", "image": image, "command": ["cat", "/etc/airlock-marker"]}
        ]},
    }))
    .unwrap()
}

fn name_is(o: &Value, name: &str) -> bool {
    o.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
}

fn phase(o: &Value) -> Option<&str> {
    o.pointer("/status/phase").and_then(Value::as_str)
}

/// Waits until every pod in `names` has finished; returns their phases by name.
async fn finished(
    emu: &EmulatorHandle,
    names: &[String],
    within: Duration,
) -> Vec<(String, String)> {
    let done = |o: &Value| matches!(phase(o), Some("Succeeded" | "Failed"));
    emu.wait_for("the pods to finish", within, |h| {
        let pods = h.objects(Kind::Pod);
        names
            .iter()
            .all(|n| pods.iter().any(|o| name_is(o, n) && done(o)))
    })
    .await
    .unwrap();
    let pods = emu.objects(Kind::Pod);
    names
        .iter()
        .map(|n| {
            let o = pods.iter().find(|o| name_is(o, n)).unwrap();
            (n.clone(), phase(o).unwrap().to_string())
        })
        .collect()
}

/// Waits until the pod's container waits with `reason`; returns its message.
async fn waiting(emu: &EmulatorHandle, name: &str, reason: &str) -> String {
    let reason_of = |o: &Value| {
        o.pointer("/status/containerStatuses/0/state/waiting/reason")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    emu.wait_for(&format!("pod {name} waiting with {reason}"), WAIT, |h| {
        h.objects(Kind::Pod)
            .iter()
            .any(|o| name_is(o, name) && reason_of(o).as_deref() == Some(reason))
    })
    .await
    .unwrap();
    let p = emu.object(Kind::Pod, NS, name).unwrap();
    assert_eq!(phase(&p), Some("Pending"), "{p:#}");
    p.pointer("/status/containerStatuses/0/state/waiting/message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_pods_of_a_new_image_pull_it_once_and_a_cached_image_runs_with_the_registry_stopped()
{
    let dir = oci::shared_tempdir("emu-cache-").unwrap();
    let mut reg = Registry::start_plain().await.unwrap();
    let pusher = Pusher::plain(&reg);
    pusher
        .push(
            "popular:1",
            &ImageSpec::new(vec![oci::busybox_layer("popular").unwrap()]),
        )
        .await
        .unwrap();
    let emu = emulator(dir.path(), &reg).await;
    let pods: Api<Pod> = Api::namespaced(client(&emu).await, NS);
    let image = pusher.reference("popular:1");
    let names: Vec<String> = (0..20).map(|i| format!("crowd-{i}")).collect();
    let pp = PostParams::default();
    let specs: Vec<Pod> = names.iter().map(|n| pod(n, &image)).collect();
    futures::future::try_join_all(specs.iter().map(|p| pods.create(&pp, p)))
        .await
        .unwrap();
    for (name, phase) in finished(&emu, &names, Duration::from_secs(120)).await {
        assert_eq!(phase, "Succeeded", "{name}");
    }
    assert_eq!(reg.manifest_gets("popular").unwrap(), 1);

    reg.stop().await.unwrap();
    pods.create(&PostParams::default(), &pod("offline", &image))
        .await
        .unwrap();
    let offline = ["offline".to_string()];
    assert_eq!(
        finished(&emu, &offline, WAIT).await,
        [("offline".to_string(), "Succeeded".to_string())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_of_a_malicious_image_waits_in_err_image_pull_with_a_clear_reason_and_the_host_is_untouched()
 {
    let dir = oci::shared_tempdir("emu-evil-").unwrap();
    let reg = Registry::start_plain().await.unwrap();
    let pusher = Pusher::plain(&reg);
    let outside = tempfile::tempdir().unwrap();
    let canary = outside.path().join("canary");
    std::fs::write(&canary, "untouched").unwrap();
    let out = outside.path().display().to_string();
    let canary_path = canary.display().to_string();
    // Each attack with the refusal its pull error must name.
    let attacks: Vec<(&str, &str, Vec<Tar>)> = vec![
        (
            "dotdot",
            "escapes the rootfs",
            vec![Tar::default().file("../../../../../../../canary", b"pwned")],
        ),
        (
            "absolute",
            "is an absolute path",
            vec![Tar::default().file(&canary_path, b"pwned")],
        ),
        (
            "symlink-then-write",
            "goes through the symlink",
            vec![
                Tar::default()
                    .symlink("escape", &out)
                    .file("escape/canary", b"pwned"),
            ],
        ),
        (
            "lower-symlink",
            "goes through the symlink",
            vec![
                Tar::default().symlink("escape", &out),
                Tar::default().file("escape/canary", b"pwned"),
            ],
        ),
        (
            "hardlink-to-host",
            "points outside the rootfs",
            vec![
                Tar::default()
                    .hardlink("shadow", &canary_path)
                    .file("shadow", b"pwned"),
            ],
        ),
    ];
    for (name, _, layers) in &attacks {
        let mut all = vec![oci::busybox_layer(name).unwrap()];
        all.extend(layers.iter().cloned());
        pusher
            .push(&format!("{name}:1"), &ImageSpec::new(all))
            .await
            .unwrap();
    }
    let emu = emulator(dir.path(), &reg).await;
    let pods: Api<Pod> = Api::namespaced(client(&emu).await, NS);
    for (name, _, _) in &attacks {
        let image = pusher.reference(&format!("{name}:1"));
        pods.create(&PostParams::default(), &pod(name, &image))
            .await
            .unwrap();
    }
    for (name, why, _) in &attacks {
        let m = waiting(&emu, name, "ErrImagePull").await;
        assert!(
            m.contains("layer sha256:") && m.contains(why),
            "{name}: {m}"
        );
        let m = waiting(&emu, name, "ImagePullBackOff").await;
        assert!(
            m.starts_with("Back-off pulling image") && m.contains(why),
            "{name}: {m}"
        );
    }
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "untouched");
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        1,
        "nothing else appeared beside the canary"
    );
}
