//! The local backend's bookkeeping: idempotent launch, observe/list/logs/remove, lost supervisors.
#![allow(clippy::unwrap_used)]

mod local_common;

use std::time::Duration;

use airlock_backend::local::{LocalBackend, LocalConfig};
use airlock_backend::{BackendError, Launched, Phase, Reason, Removed};
use airlock_schemas::Subjects;
use local_common::{Harness, assert_outcome, spec};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_launch_of_the_same_run_is_already_existed_and_changes_nothing() {
    let mut h = Harness::start(|_| {}).await;
    let s = h
        .launch("twice", &["/bin/sh", "-c", "echo once"], 20, json!({}))
        .await;
    assert_eq!(
        h.backend.launch(&s).await.unwrap(),
        Launched::AlreadyExisted
    );
    let o = h.finished("twice", Duration::from_secs(20)).await;
    let log = h.backend.logs_tail("twice", 1024).await.unwrap();
    assert_outcome(&o, &log, Phase::Succeeded, "Completed", Some(0));
    assert_eq!(log.matches("once").count(), 1, "{log}");
    assert_eq!(
        h.backend.launch(&s).await.unwrap(),
        Launched::AlreadyExisted
    );
    let listed = h.backend.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].run_id.as_str(), listed[0].phase),
        ("twice", Phase::Succeeded)
    );
    // A run directory whose status cannot be read is no job, but it is a leftover.
    std::fs::create_dir(h.dir.path().join("runs").join("leftover")).unwrap();
    assert_eq!(h.backend.list().await.unwrap().len(), 1);
    let objects = h.backend.list_objects().await.unwrap();
    let summary: Vec<_> = objects
        .iter()
        .map(|r| {
            (
                r.run_id.as_str(),
                r.observed.as_ref().map(|o| o.phase),
                r.terminating,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("leftover", None, false),
            ("twice", Some(Phase::Succeeded), false)
        ]
    );
    let now = chrono::Utc::now();
    assert!(
        objects.iter().all(|r| r
            .created_at
            .is_some_and(|t| t <= now && now - t < chrono::TimeDelta::seconds(60))),
        "{objects:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_exit_code_is_reported_and_remove_is_idempotent() {
    let mut h = Harness::start(|_| {}).await;
    let (o, log) = h
        .run(
            "exit7",
            &["/bin/sh", "-c", "echo to-stderr >&2; exit 7"],
            20,
            json!({}),
        )
        .await;
    assert_outcome(&o, &log, Phase::Failed, "Error", Some(7));
    assert!(log.contains("to-stderr"), "{log}");
    assert!(o.started_at.is_some() && o.finished_at.is_some());
    assert_eq!(h.backend.remove("exit7").await.unwrap(), Removed::Deleted);
    assert_eq!(h.backend.remove("exit7").await.unwrap(), Removed::Absent);
    assert!(h.backend.observe("exit7").await.unwrap().is_none());
    assert!(h.backend.observe("../etc").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_command_in_an_image_without_entrypoint_or_cmd_fails_with_a_clear_reason()
{
    let mut h = Harness::start(|_| {}).await;
    let mut s = spec("nocmd", &["true"], 20, json!({}));
    s.run.request.command.clear();
    assert_eq!(h.backend.launch(&s).await.unwrap(), Launched::Created);
    let o = h.finished("nocmd", Duration::from_secs(20)).await;
    assert_eq!(
        (o.phase, o.reason.clone(), o.exit_code),
        (Phase::Failed, Some(Reason::CreateContainerError), None),
        "{o:?}"
    );
    assert!(
        o.message
            .as_deref()
            .unwrap_or_default()
            .contains("no command specified"),
        "{o:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_supervisor_is_gone_is_observed_as_lost() {
    let mut h = Harness::start(|_| {}).await;
    h.launch("orphan", &["/bin/sh", "-c", "exec sleep 60"], 60, json!({}))
        .await;
    h.running("orphan").await;
    // Another process (the janitor) sees it running while this supervisor lives.
    let mut config = LocalConfig::new(h.dir.path());
    config.sandbox_uid_base = h.uid_base;
    config.sandbox_slots = h.slots;
    config.cgroup_name = format!("airlock-test-{}", std::process::id());
    let other = LocalBackend::new(config, h.client.clone(), Subjects::default()).unwrap();
    let seen = other.observe("orphan").await.unwrap().unwrap();
    assert_eq!((seen.phase, seen.lost), (Phase::Running, false));
    // Forge a status whose supervisor pid is not alive: as after a dispatcher crash.
    let path = h.dir.path().join("runs/orphan/status.json");
    let mut status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    status["supervisor_pid"] = json!(u32::MAX - 1);
    std::fs::write(&path, serde_json::to_vec(&status).unwrap()).unwrap();
    let lost = other.observe("orphan").await.unwrap().unwrap();
    assert_eq!(
        (lost.phase, lost.lost, lost.reason),
        (Phase::Failed, true, Some(Reason::SupervisorLost))
    );
    // The janitor's remove kills the sandbox (pid checked against the run) and deletes everything of it.
    assert_eq!(other.remove("orphan").await.unwrap(), Removed::Deleted);
    assert!(
        h.sandbox_processes().is_empty(),
        "the sandbox survived remove"
    );
    assert!(h.backend.observe("orphan").await.unwrap().is_none());
    assert!(h.backend.list().await.unwrap().is_empty());
}

/// The uid a run of `h` runs as, from its `status.json`.
fn uid_of(h: &Harness, id: &str) -> u32 {
    let path = h.dir.path().join("runs").join(id).join("status.json");
    let status: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    u32::try_from(status["uid"].as_u64().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runtimes_with_different_state_dirs_never_share_a_uid_or_kill_each_others_jobs() {
    // Same uid base, one slot each, different state directories: both want the same single uid.
    let mut a = Harness::start(|c| c.sandbox_slots = 1).await;
    let mut b = Harness::start(|c| c.sandbox_slots = 1).await;
    assert_eq!((a.uid_base, a.slots), (b.uid_base, b.slots));
    let t0 = std::time::Instant::now();
    a.launch(
        "long",
        &["/bin/sh", "-c", "sleep 3; echo long-done"],
        30,
        json!({}),
    )
    .await;
    a.running("long").await;
    assert_eq!(uid_of(&a, "long"), a.uid_base);
    // B's only uid is A's: B refuses the launch with a transient error (the dispatcher retries it later) and
    // leaves nothing behind. Before uids were claimed host-wide, B ran as A's uid and, when its job ended,
    // killed every process of that uid: A's job died "killed by signal 9".
    let short = spec(
        "short",
        &["/bin/sh", "-c", "echo short-done"],
        20,
        json!({}),
    );
    for _ in 0..3 {
        let err = b.backend.launch(&short).await.unwrap_err();
        assert!(
            matches!(&err, BackendError::Transient(m) if m.contains("no free sandbox uid")),
            "{err:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(b.backend.observe("short").await.unwrap().is_none());
    assert!(b.backend.list().await.unwrap().is_empty());
    // A's job is untouched and completes normally.
    let seen = a.backend.observe("long").await.unwrap().unwrap();
    assert_eq!((seen.phase, seen.lost), (Phase::Running, false));
    let o = a.finished("long", Duration::from_secs(20)).await;
    let log = a.backend.logs_tail("long", 1024).await.unwrap();
    assert_outcome(&o, &log, Phase::Succeeded, "Completed", Some(0));
    assert!(log.contains("long-done"), "{log}");
    assert!(t0.elapsed() >= Duration::from_secs(3));
    // Once A's run is over the uid is free: B's retry runs on it, and its end leaves A's finished run alone.
    assert_eq!(b.backend.launch(&short).await.unwrap(), Launched::Created);
    let o = b.finished("short", Duration::from_secs(20)).await;
    let log = b.backend.logs_tail("short", 1024).await.unwrap();
    assert_outcome(&o, &log, Phase::Succeeded, "Completed", Some(0));
    assert!(log.contains("short-done"), "{log}");
    assert_eq!(uid_of(&b, "short"), a.uid_base);
    let still = a.backend.observe("long").await.unwrap().unwrap();
    assert_eq!(still.phase, Phase::Succeeded);
    assert!(a.sandbox_processes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_whose_uid_range_overlaps_another_skips_the_uids_in_use() {
    let mut a = Harness::start(|c| c.sandbox_slots = 1).await;
    // Same base, two slots: its slot 0 is A's only uid.
    let mut c = Harness::start(|c| c.sandbox_slots = 2).await;
    a.launch(
        "long",
        &["/bin/sh", "-c", "sleep 3; echo long-done"],
        30,
        json!({}),
    )
    .await;
    a.running("long").await;
    // C's job takes the next uid, runs and ends (its supervisor kills every process of *its* uid) while A's
    // job goes on.
    let (o, log) = c
        .run(
            "short",
            &["/bin/sh", "-c", "echo short-done as $(id -u)"],
            20,
            json!({}),
        )
        .await;
    assert_outcome(&o, &log, Phase::Succeeded, "Completed", Some(0));
    assert_eq!(
        (uid_of(&a, "long"), uid_of(&c, "short")),
        (a.uid_base, a.uid_base + 1)
    );
    let seen = a.backend.observe("long").await.unwrap().unwrap();
    assert_eq!((seen.phase, seen.lost), (Phase::Running, false));
    // C's janitor-style remove of its finished run touches nothing of A either.
    assert_eq!(c.backend.remove("short").await.unwrap(), Removed::Deleted);
    let o = a.finished("long", Duration::from_secs(20)).await;
    let log = a.backend.logs_tail("long", 1024).await.unwrap();
    assert_outcome(&o, &log, Phase::Succeeded, "Completed", Some(0));
    assert!(log.contains("long-done"), "{log}");
    assert!(c.sandbox_processes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_supervised_by_its_own_process_ends_on_the_watch_with_its_result_published() {
    let mut h = Harness::start(|c| {
        c.supervisor = airlock_backend::local::Supervisor::Process {
            program: env!("CARGO_BIN_EXE_airlock-supervisor").into(),
            args: Vec::new(),
        };
    })
    .await;
    let subject = Subjects::default().results("own");
    let mut sub = h.client.subscribe(subject).await.unwrap();
    h.client.flush().await.unwrap();
    let script = "echo supervised; printf '{\"answer\":42}' > \"$AIRLOCK_RESULT_FILE\"";
    let (o, log) = h.run("own", &["sh", "-c", script], 20, json!({})).await;
    assert_outcome(&o, &log, Phase::Succeeded, "Completed", Some(0));
    assert!(log.contains("supervised"), "{log}");
    let msg = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut sub))
        .await
        .expect("result published")
        .unwrap();
    assert_eq!(&msg.payload[..], br#"{"answer":42}"#);
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(h.dir.path().join("runs/own/status.json")).unwrap())
            .unwrap();
    assert_ne!(
        status["supervisor_pid"].as_u64(),
        Some(u64::from(std::process::id())),
        "{status}"
    );
}
