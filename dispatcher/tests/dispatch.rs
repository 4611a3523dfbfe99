//! The dispatcher against real NATS, real Redis and the Kubernetes emulator: the thin path, idempotency,
//! faults, rejections and caps.

mod common;

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;

use airlock_kube_emulator::{FaultAction, Kind};
use airlock_schemas::{LifecycleEvent, RunStatus, TimerEvent, TimerKind};
use common::{Env, NS, policy_file, request};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

fn s<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str)
}

#[tokio::test]
async fn a_valid_request_yields_one_network_policy_then_one_locked_down_pod_whose_command_runs()
-> anyhow::Result<()> {
    let env = Env::start().await?;
    let dir = tempfile::tempdir()?;
    let policy = policy_file(&dir);
    let (task, stop) =
        env.spawn(env.config(&["--policy-file", &policy, "--runtime-class", "gvisor"]));
    let mut events = env
        .messages("AIRLOCK_EVENTS", "airlock.events.run-1")
        .await?;
    let mut finished = env
        .messages("AIRLOCK_TIMERS", "airlock.timers.finished.run-1")
        .await?;

    let mut req = request(
        "run-1",
        &["sh", "-c", "echo hello from $AIRLOCK_RUN_ID; sleep 1"],
    );
    req["egress"] = json!(["pypi", "cache"]);
    req["deadline_seconds"] = json!(120);
    req["env"] = json!({ "GREETING": "hi" });
    req["resources"] = json!({ "limits": { "cpu": "500m", "memory": "256Mi" } });
    req["labels"] = json!({ "team": "ml" });
    req["metadata"] = json!({ "ticket": 7 });
    env.publish("default", &req, Some("run-1")).await?;

    let pod = env
        .emu
        .wait_for_pod_phase(NS, "airlock-run-run-1", "Succeeded", T)
        .await?;
    let np = env
        .emu
        .object(Kind::NetworkPolicy, NS, "airlock-run-run-1")
        .expect("the NetworkPolicy exists");

    // Exactly one of each, the policy created before the pod.
    assert_eq!(env.emu.create_count(Kind::Pod), 1);
    assert_eq!(env.emu.create_count(Kind::NetworkPolicy), 1);
    let posts: Vec<String> = env
        .emu
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.uri)
        .collect();
    let np_at = posts.iter().position(|u| u.contains("/networkpolicies"));
    let pod_at = posts.iter().position(|u| u.contains("/pods"));
    assert!(np_at.is_some() && np_at < pod_at, "policy first: {posts:?}");

    // The pod.
    let spec = &pod["spec"];
    assert_eq!(s(spec, "/restartPolicy"), Some("Never"));
    assert_eq!(spec["activeDeadlineSeconds"], json!(120));
    assert_eq!(spec["automountServiceAccountToken"], json!(false));
    assert_eq!(spec["enableServiceLinks"], json!(false));
    assert_eq!(s(spec, "/runtimeClassName"), Some("gvisor"));
    assert_eq!(spec["securityContext"]["runAsNonRoot"], json!(true));
    assert_eq!(
        s(spec, "/securityContext/seccompProfile/type"),
        Some("RuntimeDefault")
    );
    let c = &spec["containers"][0];
    assert_eq!(s(c, "/image"), Some("docker.io/library/busybox:1.36"));
    assert_eq!(
        s(c, "/terminationMessagePolicy"),
        Some("FallbackToLogsOnError")
    );
    assert_eq!(
        c["securityContext"]["allowPrivilegeEscalation"],
        json!(false)
    );
    assert_eq!(c["securityContext"]["runAsNonRoot"], json!(true));
    assert_eq!(c["securityContext"]["runAsUser"], json!(65532));
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        s(c, "/securityContext/seccompProfile/type"),
        Some("RuntimeDefault")
    );
    assert_eq!(s(c, "/resources/limits/cpu"), Some("500m"));
    assert_eq!(s(c, "/resources/limits/memory"), Some("256Mi"));
    assert_eq!(
        s(c, "/resources/requests/cpu"),
        Some("100m"),
        "policy default"
    );
    let env_vars: std::collections::BTreeMap<String, String> = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            (
                s(e, "/name").unwrap_or("").to_string(),
                s(e, "/value").unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(env_vars["AIRLOCK_RUN_ID"], "run-1");
    assert_eq!(env_vars["AIRLOCK_RESULT_SUBJECT"], "airlock.results.run-1");
    assert_eq!(env_vars["AIRLOCK_NATS_URL"], "nats://nats.airlock:4222");
    assert!(airlock_schemas::token::verify(
        common::SECRET.as_bytes(),
        "run-1",
        &env_vars["AIRLOCK_RUN_TOKEN"]
    ));
    assert_eq!(env_vars["GREETING"], "hi");
    let labels = &pod["metadata"]["labels"];
    assert_eq!(s(labels, "/airlock.dev~1run-id"), Some("run-1"));
    assert_eq!(s(labels, "/airlock.dev~1queue"), Some("default"));
    assert_eq!(s(labels, "/airlock.dev~1attempt"), Some("1"));
    assert_eq!(s(labels, "/app.kubernetes.io~1managed-by"), Some("airlock"));
    assert_eq!(s(labels, "/team"), Some("ml"));

    // The command actually ran, with the job environment.
    let log = env.emu.pod_log(NS, "airlock-run-run-1").unwrap_or_default();
    assert!(log.contains("hello from run-1"), "log: {log:?}");

    // The NetworkPolicy: only this pod, no ingress, egress to NATS, DNS and the named destinations.
    let np_spec = &np["spec"];
    assert_eq!(
        np_spec["podSelector"]["matchLabels"],
        json!({ "airlock.dev/run-id": "run-1" })
    );
    assert_eq!(np_spec["policyTypes"], json!(["Ingress", "Egress"]));
    assert!(
        np_spec
            .get("ingress")
            .is_none_or(|i| i.as_array().is_some_and(Vec::is_empty))
    );
    let egress = np_spec["egress"].as_array().expect("egress rules");
    assert_eq!(egress.len(), 4, "nats, dns, pypi, cache: {egress:?}");
    assert_eq!(s(&egress[0], "/to/0/ipBlock/cidr"), Some("10.0.0.10/32"));
    assert_eq!(
        egress[0]["ports"],
        json!([{ "port": 4222, "protocol": "TCP" }])
    );
    assert_eq!(
        s(&egress[1], "/to/0/podSelector/matchLabels/k8s-app"),
        Some("kube-dns")
    );
    assert_eq!(s(&egress[2], "/to/0/ipBlock/cidr"), Some("151.101.0.0/16"));
    assert_eq!(
        s(&egress[3], "/to/0/namespaceSelector/matchLabels/team"),
        Some("data")
    );
    for rule in egress {
        assert!(
            rule["to"].as_array().is_some_and(|t| !t.is_empty()),
            "a rule without peers allows everything"
        );
    }
    let owner = &np["metadata"]["ownerReferences"][0];
    assert_eq!(s(owner, "/kind"), Some("Pod"));
    assert_eq!(s(owner, "/uid"), s(&pod, "/metadata/uid"));

    // That the API server accepts these objects (named egress destinations, resources, env, labels) is
    // shown on the real cluster: `cluster.rs`, `on_the_cluster_a_request_becomes_a_policy_and_a_pod_...`.

    // Redis: pending then running; the record holds the request.
    let rec = env.wait_status("run-1", "running", T).await?;
    assert_eq!(rec["queue"], "default");
    assert_eq!(rec["attempt"], "1");
    assert!(rec.contains_key("started_at") && rec.contains_key("submitted_at"));
    let stored: Value = serde_json::from_str(&rec["request"])?;
    assert_eq!(stored["deadline_seconds"], json!(120));

    // Lifecycle events, and the finished pod handed to the janitor.
    let e1: LifecycleEvent = Env::next_json(&mut events, T).await?;
    let e2: LifecycleEvent = Env::next_json(&mut events, T).await?;
    assert_eq!(
        (e1.status, e2.status),
        (RunStatus::Pending, RunStatus::Running)
    );
    assert_eq!(e2.metadata, Some(json!({ "ticket": 7 })));
    let msg = tokio::time::timeout(T, finished.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("stream closed"))??;
    let timer: TimerEvent = serde_json::from_slice(&msg.payload)?;
    assert_eq!(timer.kind, TimerKind::Finished);
    assert_eq!(timer.attempt, Some(1));
    // Stamped in milliseconds when the watcher saw the pod finished: no earlier than Kubernetes' finishedAt
    // (whole seconds), no later than now.
    let seen = airlock_runtime::consume::observed_at(&msg).context("Airlock-Observed-At")?;
    let finished_at = s(
        &pod,
        "/status/containerStatuses/0/state/terminated/finishedAt",
    )
    .context("finishedAt")?;
    let finished_at = chrono::DateTime::parse_from_rfc3339(finished_at)?;
    assert!(
        finished_at <= seen && seen <= chrono::Utc::now(),
        "seen {seen}, finished {finished_at}"
    );

    // The deadline schedule: submit time + deadline + grace, on the timers stream.
    let sched = env
        .js
        .get_stream("AIRLOCK_TIMERS")
        .await?
        .get_last_raw_message_by_subject("airlock.schedules.deadline.run-1")
        .await?;
    let header = sched
        .headers
        .get("Nats-Schedule")
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    let at = chrono::DateTime::parse_from_rfc3339(header.trim_start_matches("@at "))?;
    let submitted = chrono::DateTime::parse_from_rfc3339(&rec["submitted_at"])?;
    let delta = (at - submitted).num_seconds();
    assert!(
        (130..=131).contains(&delta),
        "deadline at submit + 120 s + 10 s grace, got +{delta} s"
    );

    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn the_same_request_published_three_times_yields_one_pod() -> anyhow::Result<()> {
    let env = Env::start().await?;
    env.emu.hold_pending("airlock.dev/run-id=dup-1")?;
    // No Nats-Msg-Id: the stream keeps all three copies, so the dispatcher sees three deliveries.
    for _ in 0..3 {
        env.publish("default", &request("dup-1", &["true"]), None)
            .await?;
    }
    let (task, stop) = env.spawn(env.config(&[]));
    env.wait_status("dup-1", "pending", T).await?;
    airlock_test_support::wait_until(T, "all three copies acknowledged", || async {
        let i = env.consumer_info("default").await.ok()?;
        (i.num_pending == 0 && i.num_ack_pending == 0 && i.delivered.stream_sequence == 3)
            .then_some(())
    })
    .await?;
    assert_eq!(env.emu.create_count(Kind::Pod), 1);
    assert_eq!(env.emu.create_count(Kind::NetworkPolicy), 1);
    assert_eq!(env.object_names(Kind::Pod), ["airlock-run-dup-1"]);
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn invalid_requests_are_rejected_with_every_reason_and_nothing_is_created()
-> anyhow::Result<()> {
    let env = Env::start().await?;
    let (task, stop) = env.spawn(env.config(&[]));
    let mut events = env
        .messages("AIRLOCK_EVENTS", "airlock.events.bad-1")
        .await?;
    let bad = json!({
        "id": "bad-1",
        "image": "",
        "env": { "AIRLOCK_RUN_TOKEN": "forged" },
        "egress": ["internet"],
        "deadline_seconds": 0,
        "resources": { "limits": { "memory": "1Ti" } }
    });
    env.publish("default", &bad, Some("bad-1")).await?;
    // Poison: not JSON at all, with and without a usable Nats-Msg-Id.
    env.publish_raw("default", b"\x00\xffnot json".to_vec(), Some("bad-2"))
        .await?;
    env.publish_raw("default", b"{".to_vec(), None).await?;
    // The queue keeps flowing after them.
    env.emu.hold_pending("airlock.dev/run-id=good-1")?;
    env.publish("default", &request("good-1", &["true"]), Some("good-1"))
        .await?;

    let rec = env.wait_status("bad-1", "rejected", T).await?;
    let reason = &rec["reason"];
    for path in [
        "image:",
        "env.AIRLOCK_RUN_TOKEN:",
        "egress.0:",
        "deadline_seconds:",
        "resources.limits.memory:",
    ] {
        assert!(reason.contains(path), "{path} missing from {reason:?}");
    }
    assert_eq!(
        reason.matches("; ").count(),
        4,
        "joined as `path: message; ...`: {reason}"
    );
    assert_eq!(rec["queue"], "default");
    assert!(rec.contains_key("submitted_at") && rec.contains_key("request"));
    let ev: LifecycleEvent = Env::next_json(&mut events, T).await?;
    assert_eq!(ev.status, RunStatus::Rejected);
    assert_eq!(ev.reason.as_deref(), Some(reason.as_str()));

    let rec2 = env.wait_status("bad-2", "rejected", T).await?;
    assert!(
        rec2["reason"].starts_with(".:") || rec2["reason"].contains("expected"),
        "{rec2:?}"
    );
    env.wait_status("good-1", "pending", T).await?;
    airlock_test_support::wait_until(T, "everything acknowledged", || async {
        let i = env.consumer_info("default").await.ok()?;
        (i.num_pending == 0 && i.num_ack_pending == 0).then_some(())
    })
    .await?;

    // Nothing but the good run reached Kubernetes.
    assert_eq!(env.object_names(Kind::Pod), ["airlock-run-good-1"]);
    assert_eq!(
        env.object_names(Kind::NetworkPolicy),
        ["airlock-run-good-1"]
    );
    assert!(env.emu.requests().iter().all(|r| r.method == "GET"
        || r.uri.contains("good-1")
        || r.method == "POST" && r.status == 201));
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn transient_429_500_and_connection_faults_are_retried_and_then_succeed() -> anyhow::Result<()>
{
    let env = Env::start().await?;
    env.emu.hold_pending("airlock.dev/run-id=flaky-1")?;
    env.emu.fail_next(
        Some("POST"),
        "/networkpolicies",
        FaultAction::TooManyRequests {
            retry_after_seconds: 1,
        },
        1,
    );
    env.emu
        .fail_next(Some("POST"), "/pods", FaultAction::InternalError, 2);
    env.emu
        .fail_next(Some("POST"), "/pods", FaultAction::DropConnection, 1);
    env.emu.fail_next(
        Some("PATCH"),
        "/networkpolicies",
        FaultAction::InternalError,
        1,
    );
    let (task, stop) = env.spawn(env.config(&["--retry-times", "8", "--retry-max-delay", "200ms"]));
    env.publish("default", &request("flaky-1", &["true"]), Some("flaky-1"))
        .await?;
    let rec = env.wait_status("flaky-1", "pending", T).await?;
    assert_eq!(rec["attempt"], "1");
    let injected: Vec<(String, u16)> = env
        .emu
        .requests()
        .into_iter()
        .filter(|r| r.injected)
        .map(|r| (r.method, r.status))
        .collect();
    assert_eq!(injected.len(), 5, "every fault was hit: {injected:?}");
    assert_eq!(env.emu.create_count(Kind::Pod), 1);
    let np = env
        .emu
        .object(Kind::NetworkPolicy, NS, "airlock-run-flaky-1")
        .expect("policy");
    assert_eq!(s(&np, "/metadata/ownerReferences/0/kind"), Some("Pod"));
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn a_pending_run_says_why_it_waits_gets_a_stuck_timer_at_the_unschedulable_grace_and_loses_the_reason_once_running()
-> anyhow::Result<()> {
    let env = Env::start().await?;
    env.emu.hold_pending("airlock.dev/run-id=wait-1")?;
    let (task, stop) = env.spawn(env.config(&["--unschedulable-grace", "1s"]));
    let mut stuck = env
        .messages("AIRLOCK_TIMERS", "airlock.timers.stuck.wait-1")
        .await?;
    env.publish(
        "default",
        &request("wait-1", &["sleep", "2"]),
        Some("wait-1"),
    )
    .await?;
    let rec = airlock_test_support::wait_until(T, "wait-1 pending, saying why", || async {
        let r = env.record("wait-1").await;
        (r.get("status").map(String::as_str) == Some("pending") && r.contains_key("reason"))
            .then_some(r)
    })
    .await?;
    let reason = &rec["reason"];
    assert!(
        reason.starts_with("Unschedulable: 0/1 nodes are available: 1 Insufficient cpu."),
        "{reason}"
    );
    // The schedule fires at the scheduler's verdict plus the grace, naming the reason it was set for.
    let timer: TimerEvent = Env::next_json(&mut stuck, T).await?;
    assert_eq!(
        (timer.kind, timer.attempt, timer.reason.as_deref()),
        (TimerKind::Stuck, Some(1), Some("Unschedulable"))
    );
    // Placed after all: the pod starts and the run no longer waits.
    env.emu.release_pending();
    let rec = env.wait_status("wait-1", "running", T).await?;
    assert_eq!(rec.get("reason"), None, "{rec:?}");
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn a_permanent_fault_ends_failed_with_the_reason_and_is_dead_lettered() -> anyhow::Result<()>
{
    let env = Env::start().await?;
    env.emu
        .fail_next(Some("POST"), "/pods", FaultAction::InternalError, 10_000);
    let client = env.nats.client().await?;
    let mut advisories = client
        .subscribe(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.AIRLOCK_RUNS.airlock-dispatcher-default",
        )
        .await?;
    let (task, stop) = env.spawn(env.config(&[
        "--max-deliver",
        "3",
        "--retry-times",
        "1",
        "--retry-max-delay",
        "50ms",
        "--redelivery-cap",
        "200ms",
    ]));
    let started = Instant::now();
    env.publish("default", &request("doomed-1", &["true"]), Some("doomed-1"))
        .await?;
    let rec = env.wait_status("doomed-1", "failed", T).await?;
    assert!(
        rec["reason"].contains("gave up after 3 deliveries"),
        "{rec:?}"
    );
    assert!(rec["reason"].contains("500"), "{rec:?}");
    let advisory = tokio::time::timeout(T, futures::StreamExt::next(&mut advisories))
        .await?
        .expect("advisory");
    let advisory: Value = serde_json::from_slice(&advisory.payload)?;
    assert_eq!(advisory["deliveries"], json!(3));
    // Nothing is left behind: the policy created before the failing pod was removed.
    env.emu
        .wait_for("no NetworkPolicy", T, |h| {
            h.objects(Kind::NetworkPolicy).is_empty()
        })
        .await?;
    assert!(env.emu.objects(Kind::Pod).is_empty());
    eprintln!("failed after {:?}", started.elapsed());
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn a_queue_at_its_cap_is_not_pulled_while_another_queue_keeps_flowing() -> anyhow::Result<()>
{
    let env = Env::start().await?;
    env.emu.hold_pending("airlock.dev/queue=slow")?;
    let (task, stop) = env.spawn(env.config(&["--queues", "slow=1,fast=50"]));
    for i in 0..3 {
        env.publish("slow", &request(&format!("slow-{i}"), &["true"]), None)
            .await?;
    }
    env.wait_status("slow-0", "pending", T).await?;
    for i in 0..5 {
        env.publish("fast", &request(&format!("fast-{i}"), &["true"]), None)
            .await?;
    }
    for i in 0..5 {
        env.wait_status(&format!("fast-{i}"), "pending", T).await?;
    }
    // The slow queue is at its cap: its other two requests were never delivered (not pulled, not nak'd).
    let slow = env.consumer_info("slow").await?;
    assert_eq!(slow.num_pending, 2, "{slow:?}");
    assert_eq!(slow.num_ack_pending, 0, "{slow:?}");
    assert_eq!(slow.num_redelivered, 0, "{slow:?}");
    assert_eq!(slow.delivered.stream_sequence, 1, "{slow:?}");
    let slow_pods = env
        .object_names(Kind::Pod)
        .into_iter()
        .filter(|n| n.contains("slow"))
        .count();
    assert_eq!(slow_pods, 1);

    // When the running one finishes, the next one is pulled.
    env.emu.release_pending();
    env.wait_status("slow-1", "pending", T).await?;
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn a_request_for_an_unconfigured_queue_is_rejected_with_that_reason() -> anyhow::Result<()> {
    let env = Env::start().await?;
    env.emu
        .hold_pending("app.kubernetes.io/managed-by=airlock")?;
    // Published before any dispatcher runs: the scan at start finds it.
    env.publish("nope", &request("stray-1", &["true"]), Some("stray-1"))
        .await?;
    let mut events = env
        .messages("AIRLOCK_EVENTS", "airlock.events.stray-1")
        .await?;
    // Two replicas scanning (and racing to drain) concurrently.
    let args = [
        "--queues",
        "a=50,b=50",
        "--unknown-queue-scan-every",
        "200ms",
    ];
    let (task1, stop1) = env.spawn(env.config(&args));
    let (task2, stop2) = env.spawn(env.config(&args));
    // Strays interleaved with requests for configured queues, which keep flowing.
    for i in 0..20 {
        env.publish("nope", &request(&format!("stray-n{i}"), &["true"]), None)
            .await?;
        env.publish("a", &request(&format!("good-a{i}"), &["true"]), None)
            .await?;
    }
    env.publish("x.y", &request("stray-2", &["true"]), None)
        .await?;
    env.publish("Bad", &request("stray-3", &["true"]), None)
        .await?;
    // No usable run id: cannot be recorded, so it is terminated (and logged, counted).
    env.publish_raw("nope", b"{".to_vec(), None).await?;
    env.publish("b", &request("good-b", &["true"]), None)
        .await?;

    let rec = env.wait_status("stray-1", "rejected", T).await?;
    assert_eq!(
        rec["reason"],
        r#"queue: unknown queue "nope" (configured: a, b)"#
    );
    assert_eq!(rec["queue"], "nope");
    assert!(rec.contains_key("submitted_at") && rec.contains_key("request"));
    let ev: LifecycleEvent = Env::next_json(&mut events, T).await?;
    assert_eq!(ev.status, RunStatus::Rejected);
    assert_eq!(ev.reason.as_deref(), Some(rec["reason"].as_str()));
    for (id, queue) in [("stray-2", "x.y"), ("stray-3", "Bad")] {
        let rec = env.wait_status(id, "rejected", T).await?;
        assert_eq!(
            rec["reason"],
            format!("queue: unknown queue \"{queue}\" (configured: a, b)")
        );
    }
    for i in 0..20 {
        env.wait_status(&format!("stray-n{i}"), "rejected", T)
            .await?;
        env.wait_status(&format!("good-a{i}"), "pending", T).await?;
    }
    env.wait_status("good-b", "pending", T).await?;

    // Everything settled, nothing left in the stream, no consumer left behind on a stray subject.
    let runs = env.js.get_stream("AIRLOCK_RUNS").await?;
    airlock_test_support::wait_until(T, "the runs stream to be empty", || async {
        let info = runs.get_info().await.ok()?;
        (info.state.messages == 0).then_some(())
    })
    .await?;
    airlock_test_support::wait_until(T, "only the configured queues' consumers", || async {
        let mut names: Vec<String> = futures::StreamExt::collect::<Vec<_>>(runs.consumer_names())
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .ok()?;
        names.sort();
        (names == ["airlock-dispatcher-a", "airlock-dispatcher-b"]).then_some(())
    })
    .await?;
    assert!(
        env.object_names(Kind::Pod)
            .iter()
            .all(|n| n.starts_with("airlock-run-good-")),
        "{:?}",
        env.object_names(Kind::Pod)
    );
    stop2.cancel();
    task2.await?;

    // The operator adds the queue later: its durable is creatable, and it flows while replica 1 keeps scanning.
    let (task3, stop3) =
        env.spawn(env.config(&["--queues", "nope=5", "--unknown-queue-scan-every", "200ms"]));
    airlock_test_support::wait_until(T, "the new queue's durable", || async {
        env.consumer_info("nope").await.ok()
    })
    .await?;
    env.publish("nope", &request("late-1", &["true"]), None)
        .await?;
    env.wait_status("late-1", "pending", T).await?;
    stop3.cancel();
    stop1.cancel();
    task3.await?;
    task1.await?;
    Ok(())
}

#[tokio::test]
async fn a_stray_subject_drained_elsewhere_is_left_alone_and_a_newly_configured_queue_waits_for_it()
-> anyhow::Result<()> {
    let env = Env::start().await?;
    env.emu
        .hold_pending("app.kubernetes.io/managed-by=airlock")?;
    // Another replica's drain consumer holds `airlock.runs.later` (ephemeral, exactly that subject).
    let runs = env.js.get_stream("AIRLOCK_RUNS").await?;
    let foreign = runs
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subject: "airlock.runs.later".into(),
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await?;
    let foreign_name = foreign.cached_info().name.clone();
    env.publish("later", &request("late-1", &["true"]), None)
        .await?;

    let (task1, stop1) = env.spawn(env.config(&["--unknown-queue-scan-every", "100ms"]));
    env.publish("default", &request("d-1", &["true"]), None)
        .await?;
    env.wait_status("d-1", "pending", T).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        env.record("late-1").await.is_empty(),
        "not ours to reject while held elsewhere"
    );
    stop1.cancel();
    task1.await?;

    // A dispatcher now configured with that queue cannot create its durable yet: it waits, then consumes.
    let (task2, stop2) = env.spawn(env.config(&["--queues", "later=1"]));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(env.record("late-1").await.is_empty());
    runs.delete_consumer(&foreign_name).await?;
    env.wait_status("late-1", "pending", T).await?;
    stop2.cancel();
    task2.await?;
    Ok(())
}
