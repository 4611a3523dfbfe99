//! The sandbox's mounts and start-up under attack: every writable place is size-capped, everything else is
//! read-only, a runtime without a memory cgroup needs the operator's consent, and huge argv/env never reach a
//! command line.
#![allow(clippy::unwrap_used)]

mod local_common;

use airlock_backend::local::{LocalBackend, LocalConfig};
use airlock_backend::{BackendError, Phase};
use airlock_schemas::Subjects;
use local_common::{Harness, assert_outcome, spec};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_40_mib_into_any_writable_place_fails_at_its_16_mib_cap_and_the_rest_is_read_only()
{
    let mut h = Harness::start(|c| {
        c.tmp_bytes = 16 * 1024 * 1024;
        c.max_file_bytes = 256 * 1024 * 1024;
    })
    .await;
    let script = r#"
for d in /tmp /run/airlock/work /dev/shm /dev / /etc /bin /run /run/airlock /sys /root /var/lib; do
  if head -c 41943040 /dev/zero > "$d/fill" 2>/dev/null; then echo "WROTE 40MiB into $d"
  else echo "refused $d at $(stat -c %s "$d/fill" 2>/dev/null || echo 0)"; fi
  rm -f "$d/fill"
done
"#;
    let limits = json!({"resources": {"limits": {"memory": "512Mi"}}});
    let (o, log) = h.run("fill", &["sh", "-c", script], 60, limits).await;
    assert_outcome(&o, &log, Phase::Succeeded, "Completed", Some(0));
    assert!(!log.contains("WROTE"), "{log}");
    for capped in ["/tmp", "/run/airlock/work", "/dev/shm"] {
        assert!(
            log.contains(&format!("refused {capped} at 16777216")),
            "{capped}: {log}"
        );
    }
    for read_only in ["/dev", "/", "/etc", "/bin", "/run", "/run/airlock"] {
        assert!(
            log.contains(&format!("refused {read_only} at 0")),
            "{read_only}: {log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_cgroups_off_100_mib_into_dev_shm_fails_under_a_64_mib_memory_limit() {
    let mut h = Harness::start(|c| {
        c.cgroups = false;
        c.allow_no_memory_cgroup = true;
        c.tmp_bytes = 256 * 1024 * 1024;
        c.max_file_bytes = 256 * 1024 * 1024;
    })
    .await;
    let script = "if head -c 104857600 /dev/zero > /dev/shm/fill; then echo WROTE; exit 1; fi; \
                  echo refused at $(stat -c %s /dev/shm/fill)";
    let limits =
        json!({"resources": {"limits": {"memory": "64Mi"}, "requests": {"memory": "64Mi"}}});
    let (o, log) = h.run("shm", &["sh", "-c", script], 30, limits).await;
    assert_outcome(&o, &log, Phase::Succeeded, "Completed", Some(0));
    assert!(log.contains("refused at 67108864"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_without_a_memory_cgroup_is_refused_unless_the_operator_accepts_weaker_bounds() {
    let nats = airlock_test_support::NatsServer::start().await.unwrap();
    let client = nats.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = LocalConfig::new(dir.path());
    config.cgroups = false;
    let err = LocalBackend::new(config.clone(), client.clone(), Subjects::default()).unwrap_err();
    assert!(matches!(err, BackendError::Permanent(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("AIRLOCK_LOCAL_ALLOW_NO_MEMORY_CGROUP"),
        "{err}"
    );
    config.allow_no_memory_cgroup = true;
    LocalBackend::new(config, client, Subjects::default()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_env_entries_and_args_reach_the_job_intact() {
    let mut h = Harness::start(|_| {}).await;
    let mut s = spec(
        "many",
        &[
            "sh",
            "-c",
            "echo args=$# env=$(env | grep -c '^MANY_') last=$MANY_4999 quote=\"$MANY_Q\"",
        ],
        30,
        json!({}),
    );
    // Past the contract's limits on purpose (argv[1] of `sh -c` is its $0, hence 9,999 below): the runtime must not depend on them.
    for i in 0..5000 {
        s.env.insert(format!("MANY_{i}"), format!("value {i}"));
    }
    s.env
        .insert("MANY_Q".into(), "it's \"quoted\"\n$(not run)".into());
    s.run.request.args = (0..10_000).map(|i| format!("a{i}")).collect();
    h.backend.launch(&s).await.unwrap();
    let o = h.finished("many", std::time::Duration::from_secs(30)).await;
    let log = h.backend.logs_tail("many", 4096).await.unwrap();
    assert_outcome(&o, &log, Phase::Succeeded, "Completed", Some(0));
    assert!(
        log.contains("args=9999 env=5001 last=value 4999 quote=it's \"quoted\"\n$(not run)"),
        "{log}"
    );
}
