//! The real `kube` client against the emulator.
#![allow(clippy::unwrap_used)]

mod common;

use airlock_kube_emulator::Kind;
use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{
    Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};

#[tokio::test]
async fn the_kube_client_creates_gets_lists_and_deletes_pods() {
    let emu = start().await;
    let pods: Api<Pod> = Api::namespaced(client(&emu).await, "airlock-sandbox");
    let created = pods
        .create(&PostParams::default(), &shell_pod("p1", "echo hi"))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.resource_version.is_some());
    let got = pods.get("p1").await.unwrap();
    assert_eq!(got.metadata.uid, created.metadata.uid);
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=airlock"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    let none = pods
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=other"))
        .await
        .unwrap();
    assert!(none.items.is_empty());
    emu.wait_for_pod_phase("airlock-sandbox", "p1", "Succeeded", WAIT)
        .await
        .unwrap();
    pods.delete("p1", &DeleteParams::default()).await.unwrap();
    assert!(pods.get_opt("p1").await.unwrap().is_none());
    assert_eq!(emu.delete_count(Kind::Pod), 1);
}

#[tokio::test]
async fn a_pods_command_really_runs_with_its_env_and_its_log_is_served() {
    let emu = start().await;
    let pods: Api<Pod> = Api::namespaced(client(&emu).await, "airlock-sandbox");
    pods.create(
        &PostParams::default(),
        &shell_pod("logger", "echo $GREETING out; echo err 1>&2; echo last"),
    )
    .await
    .unwrap();
    let pod = emu
        .wait_for_pod_phase("airlock-sandbox", "logger", "Succeeded", WAIT)
        .await
        .unwrap();
    assert_eq!(
        pod.pointer("/status/containerStatuses/0/state/terminated/exitCode"),
        Some(&serde_json::json!(0))
    );
    assert_eq!(
        pod.pointer("/status/containerStatuses/0/state/terminated/reason"),
        Some(&serde_json::json!("Completed"))
    );
    let log = pods.logs("logger", &LogParams::default()).await.unwrap();
    assert_eq!(log, "hello out\nerr\nlast\n");
    let tail = pods
        .logs(
            "logger",
            &LogParams {
                tail_lines: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(tail, "last\n");
}

#[tokio::test]
async fn a_failing_command_moves_the_pod_to_failed_with_its_exit_code() {
    let emu = start().await;
    let pods: Api<Pod> = Api::namespaced(client(&emu).await, "airlock-sandbox");
    pods.create(&PostParams::default(), &shell_pod("bad", "exit 3"))
        .await
        .unwrap();
    let pod = emu
        .wait_for_pod_phase("airlock-sandbox", "bad", "Failed", WAIT)
        .await
        .unwrap();
    assert_eq!(
        pod.pointer("/status/containerStatuses/0/state/terminated/exitCode"),
        Some(&serde_json::json!(3))
    );
    assert_eq!(
        pod.pointer("/status/containerStatuses/0/state/terminated/reason"),
        Some(&serde_json::json!("Error"))
    );
}

#[tokio::test]
async fn active_deadline_seconds_kills_the_process_and_fails_the_pod_with_deadline_exceeded() {
    let emu = start().await;
    let pods: Api<Pod> = Api::namespaced(client(&emu).await, "airlock-sandbox");
    let mut pod = shell_pod("slow", "echo started; sleep 600");
    pod.spec.as_mut().unwrap().active_deadline_seconds = Some(1);
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let pod = emu
        .wait_for_pod_phase("airlock-sandbox", "slow", "Failed", WAIT)
        .await
        .unwrap();
    assert_eq!(
        pod.pointer("/status/reason"),
        Some(&serde_json::json!("DeadlineExceeded"))
    );
    assert_eq!(
        pod.pointer("/status/containerStatuses/0/state/terminated/exitCode"),
        Some(&serde_json::json!(137))
    );
    assert_eq!(emu.pod_log("airlock-sandbox", "slow").unwrap(), "started\n");
}

#[tokio::test]
async fn a_watch_resumes_from_a_resource_version_and_a_too_old_one_gets_410_gone() {
    let emu = start().await;
    let pods: Api<Pod> = Api::namespaced(client(&emu).await, "airlock-sandbox");
    let list = pods.list(&ListParams::default()).await.unwrap();
    let rv0 = list.metadata.resource_version.clone().unwrap();
    pods.create(&PostParams::default(), &shell_pod("w1", "true"))
        .await
        .unwrap();
    let mut np = shell_pod("other", "true");
    np.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("app.kubernetes.io/managed-by".into(), "someone-else".into());
    pods.create(&PostParams::default(), &np).await.unwrap();
    // Resume from rv0: the earlier creation is replayed, filtered by the label selector.
    let wp = WatchParams::default()
        .labels("app.kubernetes.io/managed-by=airlock")
        .timeout(10);
    let mut stream = pods.watch(&wp, &rv0).await.unwrap().boxed();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Added(p) => assert_eq!(p.metadata.name.as_deref(), Some("w1")),
        other => panic!("expected ADDED w1, got {other:?}"),
    }
    // Modifications by the kubelet follow.
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Modified(p) => assert_eq!(p.metadata.name.as_deref(), Some("w1")),
        other => panic!("expected MODIFIED w1, got {other:?}"),
    }
    drop(stream);
    emu.compact_history();
    let mut stream = pods.watch(&wp, &rv0).await.unwrap().boxed();
    match stream.try_next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected ERROR 410, got {other:?}"),
    }
}

#[tokio::test]
async fn the_kube_runtime_watcher_sees_pods_through_to_completion() {
    use kube::runtime::{WatchStreamExt, watcher};
    let emu = start().await;
    let pods: Api<Pod> = Api::namespaced(client(&emu).await, "airlock-sandbox");
    pods.create(&PostParams::default(), &shell_pod("before", "true"))
        .await
        .unwrap();
    let cfg = watcher::Config::default().labels("app.kubernetes.io/managed-by=airlock");
    let mut stream = watcher(pods.clone(), cfg).applied_objects().boxed();
    pods.create(&PostParams::default(), &shell_pod("after", "true"))
        .await
        .unwrap();
    let mut done = std::collections::BTreeSet::new();
    let until = tokio::time::timeout(WAIT, async {
        while let Some(p) = stream.try_next().await.unwrap() {
            if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded") {
                done.insert(p.metadata.name.clone().unwrap());
            }
            if done.len() == 2 {
                break;
            }
        }
    });
    until.await.unwrap();
}

#[tokio::test]
async fn deleting_a_pod_deletes_the_network_policies_it_owns() {
    let emu = start().await;
    let c = client(&emu).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "airlock-sandbox");
    let nps: Api<NetworkPolicy> = Api::namespaced(c, "airlock-sandbox");
    let pod = pods
        .create(&PostParams::default(), &shell_pod("owner", "sleep 600"))
        .await
        .unwrap();
    nps.create(&PostParams::default(), &owned_policy("owner-egress", &pod))
        .await
        .unwrap();
    emu.wait_for_pod_phase("airlock-sandbox", "owner", "Running", WAIT)
        .await
        .unwrap();
    pods.delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    emu.wait_for_absent(Kind::Pod, "airlock-sandbox", "owner", WAIT)
        .await
        .unwrap();
    assert!(nps.get_opt("owner-egress").await.unwrap().is_none());
    assert_eq!(emu.delete_count(Kind::NetworkPolicy), 1);
}

#[tokio::test]
async fn patches_and_status_updates_apply_and_bump_the_resource_version() {
    let emu = start().await;
    let pods: Api<Pod> = Api::namespaced(client(&emu).await, "airlock-sandbox");
    emu.hold_pending("airlock/run=patched").unwrap();
    let created = pods
        .create(&PostParams::default(), &shell_pod("patched", "true"))
        .await
        .unwrap();
    let patch = serde_json::json!({"metadata": {"labels": {"extra": "yes"}}});
    let p = pods
        .patch("patched", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(
        p.metadata.labels.unwrap().get("extra").map(String::as_str),
        Some("yes")
    );
    assert_ne!(
        p.metadata.resource_version,
        created.metadata.resource_version
    );
    let strategic = serde_json::json!({"metadata": {"annotations": {"a": "b"}}});
    pods.patch(
        "patched",
        &PatchParams::default(),
        &Patch::Strategic(&strategic),
    )
    .await
    .unwrap();
    let json_patch: json_patch::Patch = serde_json::from_value(
        serde_json::json!([{"op": "add", "path": "/metadata/labels/jp", "value": "1"}]),
    )
    .unwrap();
    pods.patch(
        "patched",
        &PatchParams::default(),
        &Patch::<()>::Json(json_patch),
    )
    .await
    .unwrap();
    let got = pods.get("patched").await.unwrap();
    assert_eq!(
        got.metadata.labels.unwrap().get("jp").map(String::as_str),
        Some("1")
    );
    // A stale resourceVersion on replace is a 409 Conflict.
    let mut stale = created.clone();
    stale
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("x".into(), "y".into());
    let err = pods
        .replace("patched", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    let kube::Error::Api(s) = err else {
        panic!("expected API error")
    };
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
}

#[tokio::test]
async fn a_held_pod_stays_pending_unschedulable_until_released() {
    let emu = start().await;
    let pods: Api<Pod> = Api::namespaced(client(&emu).await, "airlock-sandbox");
    emu.hold_pending("airlock/run=stuck").unwrap();
    pods.create(&PostParams::default(), &shell_pod("stuck", "true"))
        .await
        .unwrap();
    let p = emu
        .wait_for_object(Kind::Pod, "airlock-sandbox", "stuck", WAIT, |p| {
            p.pointer("/status/conditions/0/reason")
                .and_then(|r| r.as_str())
                == Some("Unschedulable")
        })
        .await
        .unwrap();
    assert_eq!(
        p.pointer("/status/phase"),
        Some(&serde_json::json!("Pending"))
    );
    assert_eq!(
        p.pointer("/status/conditions/0/status"),
        Some(&serde_json::json!("False"))
    );
    emu.release_pending();
    emu.wait_for_pod_phase("airlock-sandbox", "stuck", "Succeeded", WAIT)
        .await
        .unwrap();
}

#[tokio::test]
async fn forced_states_evict_or_oom_kill_a_running_pod() {
    use airlock_kube_emulator::ForcedState;
    let emu = start().await;
    let pods: Api<Pod> = Api::namespaced(client(&emu).await, "airlock-sandbox");
    pods.create(&PostParams::default(), &shell_pod("ev", "sleep 600"))
        .await
        .unwrap();
    pods.create(&PostParams::default(), &shell_pod("oom", "sleep 600"))
        .await
        .unwrap();
    emu.wait_for_pod_phase("airlock-sandbox", "ev", "Running", WAIT)
        .await
        .unwrap();
    emu.wait_for_pod_phase("airlock-sandbox", "oom", "Running", WAIT)
        .await
        .unwrap();
    assert!(emu.force_pod_state("airlock-sandbox", "ev", ForcedState::Evicted));
    assert!(emu.force_pod_state("airlock-sandbox", "oom", ForcedState::OomKilled));
    let ev = emu
        .wait_for_pod_phase("airlock-sandbox", "ev", "Failed", WAIT)
        .await
        .unwrap();
    assert_eq!(
        ev.pointer("/status/reason"),
        Some(&serde_json::json!("Evicted"))
    );
    let oom = emu
        .wait_for_pod_phase("airlock-sandbox", "oom", "Failed", WAIT)
        .await
        .unwrap();
    assert_eq!(
        oom.pointer("/status/containerStatuses/0/state/terminated/reason"),
        Some(&serde_json::json!("OOMKilled"))
    );
    assert_eq!(
        oom.pointer("/status/containerStatuses/0/state/terminated/exitCode"),
        Some(&serde_json::json!(137))
    );
}

#[tokio::test]
async fn a_lease_update_with_a_stale_resource_version_is_refused_with_409() {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    let emu = start().await;
    let leases: Api<Lease> = Api::namespaced(client(&emu).await, "airlock-sandbox");
    let lease = |holder: &str| Lease {
        metadata: kube::api::ObjectMeta {
            name: Some("watch".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }),
    };
    leases
        .create(&PostParams::default(), &lease("a"))
        .await
        .unwrap();
    // A second create of the same name: 409 AlreadyExists.
    let again = leases.create(&PostParams::default(), &lease("b")).await;
    assert!(matches!(again, Err(kube::Error::Api(ref s)) if s.code == 409));
    // Two replicas read the same version; the first update wins, the second is refused.
    let read = leases.get("watch").await.unwrap();
    let mut mine = read.clone();
    mine.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let mut theirs = read;
    theirs.spec.as_mut().unwrap().holder_identity = Some("c".into());
    leases
        .replace("watch", &PostParams::default(), &mine)
        .await
        .unwrap();
    let lost = leases
        .replace("watch", &PostParams::default(), &theirs)
        .await;
    assert!(matches!(lost, Err(kube::Error::Api(ref s)) if s.code == 409));
    let now = leases.get("watch").await.unwrap();
    assert_eq!(now.spec.unwrap().holder_identity.as_deref(), Some("b"));
}

#[tokio::test]
async fn the_standalone_binary_writes_a_kubeconfig_that_the_kube_client_uses() {
    use k8s_openapi::api::core::v1::Namespace;
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    let mut emu = tokio::process::Command::new(env!("CARGO_BIN_EXE_airlock-kube-emulator"))
        .args(["--port", "0", "--kubeconfig"])
        .arg(&kc)
        .args(["--namespace", "airlock-sandbox"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(emu.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let text = std::fs::read_to_string(&kc).unwrap();
    assert!(text.contains(&format!("server: {url}")), "{text}");
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kc).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(config.default_namespace, "airlock-sandbox");
    let namespaces: Api<Namespace> = Api::all(kube::Client::try_from(config).unwrap());
    let names: Vec<_> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.iter().any(|n| n == "airlock-sandbox"), "{names:?}");
    emu.kill().await.unwrap();
}
