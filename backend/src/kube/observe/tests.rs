use super::*;
use crate::ImagePull;

fn meta(run_id: Option<&str>, created: i64, deleting: bool) -> ObjectMeta {
    let time = |secs: i64| {
        k8s_openapi::jiff::Timestamp::from_second(secs)
            .ok()
            .map(Time)
    };
    ObjectMeta {
        name: run_id.map(labels::object_name),
        labels: run_id.map(|id| BTreeMap::from([(labels::RUN_ID.to_string(), id.to_string())])),
        creation_timestamp: time(created),
        deletion_timestamp: if deleting { time(created + 5) } else { None },
        ..Default::default()
    }
}

#[test]
fn objects_are_grouped_by_run_with_the_oldest_creation_time_and_terminating_only_when_all_are() {
    let mut runs = BTreeMap::new();
    // A run with a pod (being deleted) and its policy (not): something still needs a delete.
    assert!(add_object(&mut runs, &meta(Some("a"), 200, true)).is_some());
    add_object(&mut runs, &meta(Some("a"), 100, false));
    // A policy alone, being deleted.
    add_object(&mut runs, &meta(Some("b"), 300, true));
    // Not a run's object.
    assert!(add_object(&mut runs, &meta(None, 400, false)).is_none());
    let a = &runs["a"];
    assert_eq!(a.created_at, DateTime::from_timestamp(100, 0));
    assert!(!a.terminating && a.observed.is_none());
    let b = &runs["b"];
    assert_eq!(b.created_at, DateTime::from_timestamp(300, 0));
    assert!(b.terminating);
    assert_eq!(runs.len(), 2);
}

/// A pod of run `r` as the API server returns it: `status` as given.
fn pod(status: serde_json::Value) -> Observed {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "airlock-run-r",
            "creationTimestamp": "2026-01-02T03:04:00Z",
            "labels": { "airlock.dev/run-id": "r", "airlock.dev/queue": "q", "airlock.dev/attempt": "2" },
        },
        "status": status,
    }))
    .unwrap_or_else(|e| panic!("a pod: {e}"));
    observe_pod(&pod).unwrap_or_else(|| panic!("observed"))
}

/// A pending pod on its node whose job container waits with `reason` and `message`.
fn waiting(reason: &str, message: Option<&str>) -> Observed {
    pod(serde_json::json!({
        "phase": "Pending",
        "startTime": "2026-01-02T03:04:05Z",
        "conditions": [{ "type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-02T03:04:01Z" }],
        "containerStatuses": [{
            "name": "job", "image": "reg/absent:1", "imageID": "", "ready": false, "restartCount": 0,
            "state": { "waiting": { "reason": reason, "message": message } },
        }],
    }))
}

fn at(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[test]
fn a_pod_the_scheduler_cannot_place_is_unschedulable_with_its_message_since_the_condition_turned() {
    let o = pod(serde_json::json!({
        "phase": "Pending",
        "qosClass": "Burstable",
        "conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "lastProbeTime": null,
            "lastTransitionTime": "2026-01-02T03:04:02Z",
            "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.",
        }],
    }));
    assert_eq!(
        (o.phase, o.reason.clone(), o.attempt),
        (Phase::Pending, Some(Reason::Unschedulable), 2)
    );
    assert_eq!(o.stuck(), Some(Stuck::Unschedulable));
    assert_eq!(o.waiting_since, at("2026-01-02T03:04:02Z"));
    assert_eq!(
        o.reason_text().as_deref(),
        Some(
            "Unschedulable: 0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
        )
    );
    // Without a transition time: since the pod's creation.
    let o = pod(serde_json::json!({
        "phase": "Pending",
        "conditions": [{ "type": "PodScheduled", "status": "False", "reason": "Unschedulable" }],
    }));
    assert_eq!(o.waiting_since, at("2026-01-02T03:04:00Z"));
    // Gated pods wait for whoever gated them: shown, not stuck.
    let o = pod(serde_json::json!({
        "phase": "Pending",
        "conditions": [{ "type": "PodScheduled", "status": "False", "reason": "SchedulingGated",
                         "message": "Scheduling is blocked due to non-empty scheduling gates" }],
    }));
    assert_eq!(o.reason, Some(Reason::Other("SchedulingGated".into())));
    assert!(!o.is_stuck());
}

#[test]
fn a_failing_image_pull_is_an_image_pull_reason_with_the_kubelets_message_since_the_pods_start() {
    let message = "failed to pull and unpack image \"127.0.0.1:5000/absent:1\": not found";
    for (word, pull) in [
        ("ErrImagePull", ImagePull::ErrImagePull),
        ("ImagePullBackOff", ImagePull::ImagePullBackOff),
        ("InvalidImageName", ImagePull::InvalidImageName),
        ("ErrImageNeverPull", ImagePull::ErrImageNeverPull),
    ] {
        let o = waiting(word, Some(message));
        assert_eq!(o.reason, Some(Reason::ImagePull(pull)), "{word}");
        assert_eq!(o.stuck(), Some(Stuck::Start), "{word}");
        assert_eq!(o.waiting_since, at("2026-01-02T03:04:05Z"));
        assert_eq!(
            o.reason_text(),
            Some(format!("{word}: {message}")),
            "rendered as before"
        );
    }
    let o = waiting(
        "CreateContainerConfigError",
        Some("container has runAsNonRoot and image will run as root"),
    );
    assert_eq!(
        (o.reason.clone(), o.stuck()),
        (Some(Reason::CreateContainerConfigError), Some(Stuck::Start))
    );
}

#[test]
fn a_container_being_created_is_shown_but_not_stuck() {
    let o = waiting("ContainerCreating", None);
    assert_eq!(o.reason, Some(Reason::ContainerCreating));
    assert_eq!(o.reason_text().as_deref(), Some("ContainerCreating"));
    assert!(!o.is_stuck());
    // A pod just created: no reason at all.
    let o = pod(serde_json::json!({ "phase": "Pending" }));
    assert_eq!(
        (o.reason, o.waiting_since),
        (None, at("2026-01-02T03:04:00Z"))
    );
}

#[test]
fn finished_pods_read_as_their_terminated_or_pod_reason_and_an_eviction_is_lost() {
    let terminated = |reason: &str, code: i32| {
        pod(serde_json::json!({
            "phase": if code == 0 { "Succeeded" } else { "Failed" },
            "containerStatuses": [{
                "name": "job", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "terminated": { "reason": reason, "exitCode": code,
                           "startedAt": "2026-01-02T03:04:06Z", "finishedAt": "2026-01-02T03:04:09Z" } },
            }],
        }))
    };
    let oom = terminated("OOMKilled", 137);
    assert_eq!(
        (
            oom.phase,
            oom.reason.clone(),
            oom.exit_code,
            oom.lost,
            oom.waiting_since
        ),
        (
            Phase::Failed,
            Some(Reason::OomKilled),
            Some(137),
            false,
            None
        )
    );
    assert_eq!(oom.reason_text().as_deref(), Some("OOMKilled"));
    assert_eq!(terminated("Error", 3).reason, Some(Reason::Error));
    assert_eq!(terminated("Completed", 0).reason, Some(Reason::Completed));
    let evicted = pod(serde_json::json!({
        "phase": "Failed", "reason": "Evicted",
        "message": "The node was low on resource: memory.",
    }));
    assert_eq!(
        (evicted.reason.clone(), evicted.lost),
        (Some(Reason::Evicted), true)
    );
    let deadline = pod(serde_json::json!({
        "phase": "Failed", "reason": "DeadlineExceeded",
        "message": "Pod was active on the node longer than the specified deadline",
    }));
    assert_eq!(
        (deadline.reason, deadline.lost),
        (Some(Reason::DeadlineExceeded), false)
    );
    let node_lost = pod(serde_json::json!({ "phase": "Failed", "reason": "NodeLost" }));
    assert_eq!(
        (node_lost.reason, node_lost.lost),
        (Some(Reason::Other("NodeLost".into())), true)
    );
    // Evicted through the API (`kubectl drain`): the job was killed (137), the pod was evicted.
    let drained = pod(serde_json::json!({
        "phase": "Failed",
        "conditions": [{"type": "DisruptionTarget", "status": "True",
                        "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"}],
        "containerStatuses": [{"name": "job", "state": {"terminated": {"exitCode": 137, "reason": "Error"}}}],
    }));
    assert_eq!(
        (drained.reason, drained.message.as_deref(), drained.lost),
        (
            Some(Reason::Evicted),
            Some("EvictionByEvictionAPI: Eviction API: evicting"),
            true
        )
    );
    // Deleted before it finished: lost, with the watch's own reason.
    let gone = deleted(waiting("ContainerCreating", None));
    assert_eq!(
        (gone.phase, gone.reason, gone.lost, gone.waiting_since),
        (Phase::Failed, Some(Reason::Deleted), true, None)
    );
}

#[test]
fn a_stuck_pod_fails_at_its_waiting_start_plus_the_grace_of_its_cause() {
    let mut config = KubeConfig::new("ns");
    config.image_pull_grace = std::time::Duration::from_secs(60);
    config.unschedulable_grace = std::time::Duration::from_secs(300);
    let pull = waiting("ImagePullBackOff", Some("Back-off pulling image"));
    assert_eq!(
        stuck_until(&pull, &config),
        Some(StuckUntil {
            cause: Stuck::Start,
            since: at("2026-01-02T03:04:05Z").unwrap_or_default(),
            fail_at: at("2026-01-02T03:05:05Z").unwrap_or_default(),
        })
    );
    let unschedulable = pod(serde_json::json!({
        "phase": "Pending",
        "conditions": [{ "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                         "lastTransitionTime": "2026-01-02T03:04:02Z" }],
    }));
    assert_eq!(
        stuck_until(&unschedulable, &config),
        Some(StuckUntil {
            cause: Stuck::Unschedulable,
            since: at("2026-01-02T03:04:02Z").unwrap_or_default(),
            fail_at: at("2026-01-02T03:09:02Z").unwrap_or_default(),
        })
    );
    assert_eq!(
        stuck_until(&waiting("ContainerCreating", None), &config),
        None
    );
}
