//! Hostile jobs against the local sandbox runtime: each limit is proven by its own test, each asserting the
//! specific outcome (phase, reason, exit code, and what the job itself saw).
//!
//! Jobs run in a busybox-static image. Needs root, bubblewrap, util-linux (`setpriv`, `prlimit`), busybox-static,
//! and nats-server (`AIRLOCK_NATS_SERVER`).
//! Nothing here sends traffic to any non-loopback address.
#![allow(clippy::unwrap_used)]

mod local_common;

use std::time::{Duration, Instant};

use airlock_backend::Phase;
use airlock_schemas::{Subjects, env, token};
use airlock_test_support::{RedisServer, wait_until};
use futures::StreamExt;
use local_common::{Harness, SECRET, assert_outcome};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cannot_connect_to_the_hosts_loopback_services() {
    let redis = RedisServer::start().await.unwrap();
    let mut h = Harness::start(|_| {}).await;
    // The ports really are open on the host's loopback.
    for port in [h.nats.port(), redis.port()] {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("host reaches its own services");
    }
    let script = r#"
ok=0
for name in NATS_PORT REDIS_PORT; do
  eval port=\$$name
  if nc -w 2 127.0.0.1 "$port" </dev/null >/tmp/out 2>/tmp/err; then echo "$name CONNECTED"; ok=1
  else echo "$name failed: $(cat /tmp/err)"; fi
done
exit $ok
"#;
    let env = json!({"env": {"NATS_PORT": h.nats.port().to_string(), "REDIS_PORT": redis.port().to_string()}});
    let (o, log) = h.run("loopback", &["sh", "-c", script], 20, env).await;
    assert_outcome(&o, &log, Phase::Succeeded, "Completed", Some(0));
    for name in ["NATS_PORT", "REDIS_PORT"] {
        assert!(
            log.lines()
                .any(|l| l.starts_with(&format!("{name} failed")) && l.contains("refused")),
            "{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_has_only_a_loopback_interface_and_no_route() {
    let mut h = Harness::start(|_| {}).await;
    let script = "echo DEV; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; \
                  echo LINK; ip -o link | cut -d: -f2 | tr -d ' '; \
                  echo ROUTE4; tail -n +2 /proc/net/route; ip -4 route show table all | grep -v ' dev lo ' || true; \
                  echo ROUTE6; ip -6 route show table all | grep -v ' dev lo ' || true; echo END";
    let (o, log) = h
        .run("netns", &["/bin/sh", "-c", script], 20, json!({}))
        .await;
    assert_outcome(&o, &log, Phase::Succeeded, "Completed", Some(0));
    let section = |name: &str| -> Vec<String> {
        log.split_once(&format!("{name}\n"))
            .map(|(_, rest)| {
                rest.lines()
                    .take_while(|l| !["DEV", "LINK", "ROUTE4", "ROUTE6", "END"].contains(l))
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_else(|| panic!("no {name} section in {log}"))
    };
    assert_eq!(section("DEV"), vec!["lo"], "{log}");
    assert_eq!(section("LINK"), vec!["lo"], "{log}");
    assert!(
        section("ROUTE4").is_empty(),
        "IPv4 routes other than loopback: {log}"
    );
    assert!(
        section("ROUTE6").is_empty(),
        "IPv6 routes other than loopback: {log}"
    );
    assert!(!log.contains("default"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_contained_and_the_host_stays_healthy() {
    let mut h = Harness::start(|c| c.max_processes = 64).await;
    // Every process forks for ever (one that fails to fork dies, and another takes its place), so the bomb
    // stays at its ceiling until the deadline; the job's own process sleeps.
    let bomb = "f() { while :; do f & done; }; f 2>/dev/null & exec sleep 600";
    let limits = json!({"resources": {"limits": {"memory": "2Gi", "cpu": "1"}, "requests": {"memory": "64Mi", "cpu": "100m"}}});
    h.launch("forkbomb", &["sh", "-c", bomb], 6, limits).await;
    h.running("forkbomb").await;
    // While the bomb runs, it hits its ceiling and the host can still start processes.
    let peak = wait_until(Duration::from_secs(6), "bomb to grow", || async {
        let n = h.sandbox_processes().len();
        (n >= 32).then_some(n)
    })
    .await
    .unwrap();
    let ok = tokio::process::Command::new("/bin/true")
        .status()
        .await
        .expect("host can fork");
    assert!(ok.success());
    for _ in 0..20 {
        let n = h.sandbox_processes().len();
        assert!(n <= 64 + 2, "sandbox has {n} processes, limit is 64");
    }
    let o = h.finished("forkbomb", Duration::from_secs(20)).await;
    let log = h.backend.logs_tail("forkbomb", 4096).await.unwrap();
    assert_outcome(&o, &log, Phase::Failed, "DeadlineExceeded", Some(137));
    assert!(peak >= 32);
    assert!(
        h.sandbox_processes().is_empty(),
        "processes of the sandbox survived it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_killed_and_recorded_as_oom_killed() {
    let mut h = Harness::start(|_| {}).await;
    // dd's buffer: 256 MiB, touched on the first read.
    let script = "exec dd if=/dev/zero of=/dev/null bs=256M count=4";
    let limits = json!({"resources": {"limits": {"memory": "64Mi", "cpu": "1"}, "requests": {"memory": "64Mi", "cpu": "100m"}}});
    let (o, log) = h.run("memhog", &["sh", "-c", script], 30, limits).await;
    assert_outcome(&o, &log, Phase::Failed, "OOMKilled", Some(137));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_killed_at_its_deadline() {
    let mut h = Harness::start(|_| {}).await;
    let t0 = Instant::now();
    let (o, log) = h
        .run(
            "spin",
            &["/bin/sh", "-c", "while :; do :; done"],
            1,
            json!({}),
        )
        .await;
    let took = t0.elapsed();
    assert_outcome(&o, &log, Phase::Failed, "DeadlineExceeded", Some(137));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(h.sandbox_processes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_hog_is_killed_at_its_cpu_time_limit() {
    let mut h = Harness::start(|c| c.max_cpu_seconds = 1).await;
    let (o, log) = h
        .run(
            "cpuhog",
            &["sh", "-c", "while :; do :; done"],
            30,
            json!({}),
        )
        .await;
    assert_outcome(&o, &log, Phase::Failed, "CpuLimit", Some(128 + 24));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_a_huge_file_fails_at_the_cap() {
    let mut h = Harness::start(|c| c.max_file_bytes = 1024 * 1024).await;
    // SIGXFSZ ignored: the write fails with EFBIG at the cap.
    let script = "trap '' XFSZ; if dd if=/dev/zero of=big bs=65536 count=64 2>/tmp/err; then echo WROTE 4MiB; exit 0; \
                  else echo \"write failed: $(head -n 1 /tmp/err) size $(stat -c %s big)\"; exit 3; fi";
    let (o, log) = h.run("bigfile", &["sh", "-c", script], 20, json!({})).await;
    assert_outcome(&o, &log, Phase::Failed, "Error", Some(3));
    assert!(
        log.contains("write failed: ") && log.contains("File too large size 1048576"),
        "{log}"
    );
    // A shell writer is killed by SIGXFSZ, and that is recorded.
    let (o, log) = h
        .run(
            "bigfile-sh",
            &["/bin/sh", "-c", "exec head -c 4194304 /dev/zero > /tmp/big"],
            20,
            json!({}),
        )
        .await;
    assert_outcome(&o, &log, Phase::Failed, "FileSizeLimit", Some(128 + 25));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cannot_read_the_token_secret_or_another_runs_files() {
    let mut h = Harness::start(|_| {}).await;
    // The services' secret: a root-only file in a world-readable directory of the host.
    let secret_dir = tempfile::Builder::new()
        .prefix("airlock-secret-")
        .tempdir_in("/var/tmp")
        .unwrap();
    std::fs::set_permissions(
        secret_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let secret = secret_dir.path().join("token-secret");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // Another run, still going, with a result file of its own.
    h.launch(
        "victim",
        &[
            "/bin/sh",
            "-c",
            "echo precious > \"$AIRLOCK_RESULT_FILE\"; exec sleep 60",
        ],
        60,
        json!({}),
    )
    .await;
    h.running("victim").await;
    let state = h.dir.path().canonicalize().unwrap();
    let script = r#"
status=0
for f in "$SECRET" "$STATE/runs/victim/spec.json" "$STATE/runs/victim/status.json" "$STATE/runs/victim/sandbox/result.json" "$STATE/runs/victim/log"; do
  if cat "$f" > /dev/null 2>&1; then echo "READ $f"; status=1; else echo "denied $f"; fi
done
if ls "$STATE/runs" 2>/dev/null | grep -q victim; then echo "LISTED runs"; status=1; fi
if grep -qs precious /proc/*/root/run/airlock/result.json; then echo "READ via /proc"; status=1; fi
if env | grep -q test-secret; then echo "SECRET in env"; status=1; fi
echo "processes visible: $(ls -d /proc/[0-9]* | wc -l)"
exit $status
"#;
    let env = json!({"env": {"SECRET": secret.display().to_string(), "STATE": state.display().to_string()}});
    let (o, log) = h.run("attacker", &["/bin/sh", "-c", script], 20, env).await;
    assert_outcome(&o, &log, Phase::Succeeded, "Completed", Some(0));
    assert_eq!(log.matches("denied ").count(), 5, "{log}");
    // The victim is untouched and can be removed.
    let v = h.backend.observe("victim").await.unwrap().unwrap();
    assert_eq!(v.phase, Phase::Running);
    assert_eq!(
        h.backend.remove("victim").await.unwrap(),
        airlock_backend::Removed::Deleted
    );
    assert!(h.backend.observe("victim").await.unwrap().is_none());
    wait_until(
        Duration::from_secs(5),
        "victim's processes to die",
        || async { h.sandbox_processes().is_empty().then_some(()) },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_run_works_after_a_hostile_one() {
    let mut h = Harness::start(|c| c.sandbox_slots = 1).await;
    // One slot: the second run reuses the uid of the first.
    let limits = json!({"resources": {"limits": {"memory": "64Mi", "cpu": "1"}, "requests": {"memory": "64Mi", "cpu": "100m"}}});
    // Leaves a daemon behind, then eats memory.
    let hostile = "setsid sleep 600 & exec dd if=/dev/zero of=/dev/null bs=256M count=4";
    let (o, log) = h
        .run("hostile", &["/bin/sh", "-c", hostile], 20, limits)
        .await;
    assert_outcome(&o, &log, Phase::Failed, "OOMKilled", Some(137));
    assert!(
        h.sandbox_processes().is_empty(),
        "the daemon survived its sandbox"
    );
    let (o, log) = h
        .run(
            "friendly",
            &["/bin/sh", "-c", "echo hello from $AIRLOCK_RUN_ID"],
            20,
            json!({}),
        )
        .await;
    assert_outcome(&o, &log, Phase::Succeeded, "Completed", Some(0));
    assert!(log.contains("hello from friendly"), "{log}");
    assert!(h.sandbox_processes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_result_file_is_published_with_its_token() {
    let mut h = Harness::start(|_| {}).await;
    let subject = Subjects::default().results("answer");
    let mut sub = h.client.subscribe(subject.clone()).await.unwrap();
    h.client.flush().await.unwrap();
    let script = "test -z \"$AIRLOCK_NATS_URL\" || exit 9; printf '{\"answer\":42}' > \"$AIRLOCK_RESULT_FILE\"";
    let (o, log) = h
        .run("answer", &["/bin/sh", "-c", script], 20, json!({}))
        .await;
    assert_outcome(&o, &log, Phase::Succeeded, "Completed", Some(0));
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("result published")
        .unwrap();
    assert_eq!(msg.subject.as_str(), subject);
    assert_eq!(&msg.payload[..], br#"{"answer":42}"#);
    let tok = msg
        .headers
        .as_ref()
        .and_then(|hs| hs.get(env::RUN_TOKEN_HEADER))
        .expect("token header");
    assert!(token::verify(SECRET, "answer", tok.as_str()));
}
