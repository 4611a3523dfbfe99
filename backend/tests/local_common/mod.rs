//! Shared harness of the local sandbox tests: a backend on a throwaway state directory with a uid range of
//! its own, a real nats-server, a busybox-static image imported into its image store ([`BUSYBOX`], the
//! default image of [`spec`]), and helpers to launch a job and await its end on the watch stream.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use airlock_backend::local::{LocalBackend, LocalConfig};
use airlock_backend::{LaunchSpec, Launched, Observed, Phase, Reason};
use airlock_images::{ImageStore, StoreConfig};
use airlock_schemas::{Policy, RunRequest, Subjects, env, token};
use airlock_test_support::NatsServer;
use airlock_test_support::oci::{ImageSpec, build, busybox_layer, write_layout};
use futures::StreamExt;
use futures::stream::BoxStream;

/// The busybox image every harness imports (no registry needed).
pub const BUSYBOX: &str = "airlock.test/busybox:1";
/// The content of `/etc/airlock-marker` in [`BUSYBOX`].
pub const MARKER: &str = "only-in-the-busybox-image";

/// Secret the tests sign run tokens with.
pub const SECRET: &[u8] = b"test-secret";

/// A backend, its NATS server and its state directory.
pub struct Harness {
    pub backend: LocalBackend,
    pub nats: NatsServer,
    pub client: async_nats::Client,
    pub dir: tempfile::TempDir,
    pub uid_base: u32,
    pub slots: u32,
    pub watch: BoxStream<'static, Observed>,
}

impl Harness {
    /// A backend with test-sized defaults, adjusted by `tweak`.
    pub async fn start(tweak: impl FnOnce(&mut LocalConfig)) -> Harness {
        let nats = NatsServer::start().await.expect("nats-server starts");
        let client = nats.client().await.expect("nats client");
        let dir = tempfile::tempdir().expect("tempdir");
        // Each test runs in its own process (nextest). Runtimes sharing a uid range is safe (uids are claimed
        // host-wide, see `two_runtimes_with_different_state_dirs_never_share_a_uid_or_kill_each_others_jobs`),
        // but each test gets a range of its own anyway: `sandbox_processes` finds a test's leftovers by uid, and
        // the fork bomb's process count is per uid; with a shared range they would see other tests' jobs.
        // Backends of one process (one test) share this range.
        let slots = 8;
        let uid_base = 1_500_000_000 + (std::process::id() % 1_000_000) * slots;
        let mut config = LocalConfig::new(dir.path());
        config.sandbox_uid_base = uid_base;
        config.sandbox_slots = slots;
        config.default_memory_bytes = 256 * 1024 * 1024;
        config.max_processes = 64;
        config.max_file_bytes = 8 * 1024 * 1024;
        config.tmp_bytes = 16 * 1024 * 1024;
        config.max_result_bytes = 64 * 1024;
        config.cgroup_name = format!("airlock-test-{}", std::process::id());
        // These tests also run on machines without cgroup delegation (the OOM ones then cannot pass).
        config.allow_no_memory_cgroup = true;
        tweak(&mut config);
        import_busybox(dir.path(), &config.image_dir()).await;
        let backend =
            LocalBackend::new(config, client.clone(), Subjects::default()).expect("backend");
        let watch = backend.watch();
        Harness {
            backend,
            nats,
            client,
            dir,
            uid_base,
            slots,
            watch,
        }
    }

    /// Launches `command` as run `id` with `deadline` seconds and extra request fields.
    pub async fn launch(
        &self,
        id: &str,
        command: &[&str],
        deadline: u64,
        extra: serde_json::Value,
    ) -> LaunchSpec {
        let spec = spec(id, command, deadline, extra);
        assert_eq!(
            self.backend.launch(&spec).await.expect("launch"),
            Launched::Created
        );
        spec
    }

    /// Awaits the finished state of `id` on the watch stream.
    pub async fn finished(&mut self, id: &str, timeout: Duration) -> Observed {
        let fut = async {
            while let Some(o) = self.watch.next().await {
                if o.run_id == id && o.phase.is_finished() {
                    return o;
                }
            }
            panic!("watch ended");
        };
        tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or_else(|_| panic!("{id} did not finish within {timeout:?}"))
    }

    /// Awaits the running state of `id` on the watch stream.
    pub async fn running(&mut self, id: &str) -> Observed {
        let fut = async {
            while let Some(o) = self.watch.next().await {
                if o.run_id == id && o.phase == Phase::Running {
                    return o;
                }
            }
            panic!("watch ended");
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .expect("run started")
    }

    /// Launches, awaits the end, returns what was observed and the log.
    pub async fn run(
        &mut self,
        id: &str,
        command: &[&str],
        deadline: u64,
        extra: serde_json::Value,
    ) -> (Observed, String) {
        self.launch(id, command, deadline, extra).await;
        let o = self.finished(id, Duration::from_secs(deadline + 20)).await;
        let log = self.backend.logs_tail(id, 64 * 1024).await.expect("logs");
        (o, log)
    }

    /// Live (not zombie) processes on the host running as any uid of this harness's range.
    pub fn sandbox_processes(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                continue;
            };
            if status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
            {
                continue; // zombies run nothing; the host's init reaps them
            }
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok());
            if uid.is_some_and(|u| (self.uid_base..self.uid_base + self.slots).contains(&u)) {
                out.push(pid);
            }
        }
        out
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // The per-run groups are gone with their runs; remove this test's (empty) parent groups too.
        for ctl in ["memory", "pids", "cpu"] {
            let _ = std::fs::remove_dir(format!(
                "/sys/fs/cgroup/{ctl}/airlock-test-{}",
                std::process::id()
            ));
        }
        let _ = std::fs::remove_dir(format!(
            "/sys/fs/cgroup/airlock-test-{}",
            std::process::id()
        ));
    }
}

/// Imports [`BUSYBOX`] into the store at `store_dir`, from an OCI layout written under `scratch`.
pub async fn import_busybox(scratch: &std::path::Path, store_dir: &std::path::Path) {
    let built = build(&ImageSpec::new(vec![busybox_layer(MARKER).unwrap()])).unwrap();
    let layout = write_layout(&scratch.join("busybox-layout"), &built, BUSYBOX).unwrap();
    let store = ImageStore::open(StoreConfig::new(store_dir)).unwrap();
    store.import(&layout, Some(BUSYBOX)).await.unwrap();
}

/// A launch spec for `command`, with the contract's environment and a valid token.
pub fn spec(id: &str, command: &[&str], deadline: u64, extra: serde_json::Value) -> LaunchSpec {
    let mut req = serde_json::json!({
        "id": id,
        "image": BUSYBOX,
        "command": command,
        "deadline_seconds": deadline,
    });
    if let (Some(r), Some(e)) = (req.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            r.insert(k.clone(), v.clone());
        }
    }
    let req: RunRequest = serde_json::from_value(req).expect("request");
    let run = req
        .validate("default", &Policy::default())
        .expect("valid request");
    let mut envs: BTreeMap<String, String> = run.request.env.clone();
    envs.insert(env::RUN_ID.into(), id.into());
    envs.insert(env::RUN_TOKEN.into(), token::sign(SECRET, id));
    envs.insert(env::NATS_URL.into(), "nats://127.0.0.1:4222".into());
    envs.insert(env::RESULT_SUBJECT.into(), Subjects::default().results(id));
    LaunchSpec {
        run,
        attempt: 1,
        env: envs,
    }
}

/// Asserts phase, reason (as the record shows it: `OOMKilled`...) and exit code, showing the log on failure.
pub fn assert_outcome(o: &Observed, log: &str, phase: Phase, reason: &str, exit_code: Option<i32>) {
    assert_eq!(
        (o.phase, o.reason.clone(), o.exit_code),
        (phase, Some(Reason::parse(reason)), exit_code),
        "observed {o:?}\n--- log ---\n{log}"
    );
    assert!(!o.lost, "{o:?}");
}
