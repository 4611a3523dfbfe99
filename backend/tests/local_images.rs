//! Images in the local runtime: runs in their image's rootfs, Kubernetes' command/env/workdir rules, pulls from
//! real registries on loopback (plain, and TLS with htpasswd auth), one pull for many runs, the cache without
//! a registry, pull failures and malicious images as `ErrImagePull`.
//!
//! Needs root, bubblewrap, util-linux, busybox-static, docker-registry and nats-server.
#![allow(clippy::unwrap_used)]

mod local_common;

use std::time::Duration;

use airlock_backend::{Observed, Phase, Reason};
use airlock_images::RegistryConfig;
use airlock_test_support::oci::{
    ImageSpec, PASSWORD, Pusher, Tar, USER, auth_file, busybox_layer, tls_registry,
};
use airlock_test_support::registry::Registry;
use futures::StreamExt;
use local_common::{BUSYBOX, Harness, MARKER, assert_outcome};
use serde_json::json;

/// Registry settings for a plain-HTTP test registry.
fn plain(r: &Registry) -> RegistryConfig {
    RegistryConfig {
        insecure_registries: vec![r.host()],
        system_roots: false,
        ..RegistryConfig::default()
    }
}

/// The busybox image with Entrypoint, Cmd, Env and a WorkingDir that the image lacks.
fn configured_image() -> ImageSpec {
    let mut spec = ImageSpec::new(vec![busybox_layer("configured").unwrap()]);
    spec.run = json!({
        "Entrypoint": ["/bin/sh", "-c", "echo \"ran:$0:$*:FOO=$FOO:BAR=$BAR:pwd=$(pwd)\"; echo x > f && echo workdir-writable", "ep0"],
        "Cmd": ["c1", "c2"],
        "Env": ["FOO=image", "BAR=image", "PATH=/bin"],
        "WorkingDir": "/app",
        "User": "0:0",
    });
    spec
}

fn failed_with(o: &Observed, reason: &str) -> String {
    assert_eq!(
        (o.phase, o.reason.clone(), o.exit_code),
        (Phase::Failed, Some(Reason::parse(reason)), None),
        "{o:?}"
    );
    o.message.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reads_a_marker_that_exists_only_in_its_image_and_cannot_see_the_hosts_usr_or_etc() {
    let mut h = Harness::start(|_| {}).await;
    assert!(
        std::path::Path::new("/etc/passwd").exists() && std::path::Path::new("/usr/bin").exists()
    );
    let script = "cat /etc/airlock-marker; echo; echo ETC $(ls /etc); \
                  if ls /usr >/dev/null 2>&1; then echo SAW-USR; fi; \
                  if cat /etc/passwd >/dev/null 2>&1; then echo SAW-PASSWD; fi; id -u";
    let (o, log) = h.run("marker", &["sh", "-c", script], 20, json!({})).await;
    assert_outcome(&o, &log, Phase::Succeeded, "Completed", Some(0));
    assert!(log.contains(MARKER), "{log}");
    assert!(log.contains("ETC airlock-marker\n"), "{log}");
    assert!(!log.contains("SAW-"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entrypoint_cmd_env_and_workdir_follow_kubernetes_rules_by_tag_and_by_digest() {
    let registry = Registry::start_plain().await.unwrap();
    let pusher = Pusher::plain(&registry);
    let digest = pusher
        .push("configured", &configured_image())
        .await
        .unwrap();
    let cfg = plain(&registry);
    let mut h = Harness::start(move |c| c.registry = cfg).await;
    let by_tag = format!("{}:latest", pusher.reference("configured"));
    let by_digest = format!("{}@{digest}", pusher.reference("configured"));
    let env = json!({"BAR": "request"});
    let cases = [
        (
            "defaults",
            json!({"image": by_tag, "env": env}),
            &[][..],
            "ran:ep0:c1 c2:FOO=image:BAR=request:pwd=/app",
        ),
        (
            "args-only",
            json!({"image": by_tag, "args": ["a1", "a2"]}),
            &[][..],
            "ran:ep0:a1 a2:FOO=image:BAR=image:pwd=/app",
        ),
        (
            "by-digest",
            json!({"image": by_digest, "env": env}),
            &[][..],
            "ran:ep0:c1 c2:FOO=image:BAR=request:pwd=/app",
        ),
        (
            "command-only",
            json!({"image": by_tag}),
            &[
                "/bin/sh",
                "-c",
                "echo \"cmd:$0:$*:$(id -u):$(pwd)\"",
                "zero",
            ][..],
            "cmd:zero::",
        ),
    ];
    for (id, extra, command, want) in cases {
        let (o, log) = h.run(id, command, 30, extra).await;
        assert_outcome(&o, &log, Phase::Succeeded, "Completed", Some(0));
        assert!(log.contains(want), "{id}: want {want:?} in {log}");
        if command.is_empty() {
            assert!(log.contains("workdir-writable"), "{id}: {log}");
        } else {
            // The image's User (0:0) never makes the run root.
            assert!(!log.contains(":0:/app"), "{id}: {log}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_is_pulled_from_a_tls_registry_with_htpasswd_auth() {
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_registry(dir.path()).await.unwrap();
    let pusher = Pusher::tls(&tls.registry, &tls.ca_pem);
    pusher
        .push(
            "private",
            &ImageSpec::new(vec![busybox_layer("private-marker").unwrap()]),
        )
        .await
        .unwrap();
    let host = tls.registry.host();
    let good = RegistryConfig {
        system_roots: false,
        extra_ca_files: vec![tls.ca_file.clone()],
        auth_file: Some(auth_file(dir.path(), &host, USER, PASSWORD).unwrap()),
        ..RegistryConfig::default()
    };
    let mut h = Harness::start(move |c| c.registry = good).await;
    let image = pusher.reference("private:latest");
    let (o, log) = h
        .run(
            "tls",
            &["cat", "/etc/airlock-marker"],
            30,
            json!({"image": image}),
        )
        .await;
    assert_outcome(&o, &log, Phase::Succeeded, "Completed", Some(0));
    assert!(log.contains("private-marker"), "{log}");

    // Without credentials: refused at once, as a pull error.
    let anonymous = RegistryConfig {
        system_roots: false,
        extra_ca_files: vec![tls.ca_file.clone()],
        ..RegistryConfig::default()
    };
    let mut h = Harness::start(move |c| c.registry = anonymous).await;
    h.launch("noauth", &["true"], 600, json!({"image": image}))
        .await;
    let o = h.finished("noauth", Duration::from_secs(30)).await;
    let m = failed_with(&o, "ErrImagePull");
    assert!(m.contains("unauthorized"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_runs_of_a_new_image_pull_it_once_and_it_then_runs_with_the_registry_stopped()
 {
    let mut registry = Registry::start_plain().await.unwrap();
    let pusher = Pusher::plain(&registry);
    pusher
        .push(
            "popular:1",
            &ImageSpec::new(vec![busybox_layer("popular").unwrap()]),
        )
        .await
        .unwrap();
    let cfg = plain(&registry);
    let mut h = Harness::start(move |c| {
        c.registry = cfg;
        c.sandbox_slots = 20;
    })
    .await;
    let image = pusher.reference("popular:1");
    let ids: Vec<String> = (0..20).map(|i| format!("crowd-{i}")).collect();
    for id in &ids {
        h.launch(
            id,
            &["cat", "/etc/airlock-marker"],
            120,
            json!({"image": image}),
        )
        .await;
    }
    let mut done = std::collections::BTreeMap::new();
    let all = async {
        while done.len() < ids.len() {
            let o = h.watch.next().await.expect("watch");
            if o.phase.is_finished() {
                done.insert(o.run_id.clone(), o);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("all 20 runs finish");
    for (id, o) in &done {
        let log = h.backend.logs_tail(id, 4096).await.unwrap();
        assert_outcome(o, &log, Phase::Succeeded, "Completed", Some(0));
        assert!(log.contains("popular"), "{log}");
    }
    assert_eq!(registry.manifest_gets("popular").unwrap(), 1);

    registry.stop().await.unwrap();
    let (o, log) = h
        .run(
            "offline",
            &["cat", "/etc/airlock-marker"],
            30,
            json!({"image": image}),
        )
        .await;
    assert_outcome(&o, &log, Phase::Succeeded, "Completed", Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_with_an_absent_image_and_an_unknown_manifest_fail_at_once_with_err_image_pull() {
    let registry = Registry::start_plain().await.unwrap();
    let cfg = plain(&registry);
    let mut h = Harness::start(move |c| c.registry = cfg).await;
    let absent = format!("{}/absent:1", registry.host());
    // Deadlines of 10 minutes: only a failure at once ends these runs within the wait below.
    h.launch(
        "never",
        &["true"],
        600,
        json!({"image": absent, "image_pull_policy": "Never"}),
    )
    .await;
    let m = failed_with(
        &h.finished("never", Duration::from_secs(30)).await,
        "ErrImagePull",
    );
    assert!(m.contains("Never"), "{m}");
    h.launch("unknown", &["true"], 600, json!({"image": absent}))
        .await;
    let m = failed_with(
        &h.finished("unknown", Duration::from_secs(30)).await,
        "ErrImagePull",
    );
    assert!(m.contains("not found"), "{m}");
    // The imported image runs under Never.
    let (o, log) = h
        .run(
            "cached",
            &["true"],
            30,
            json!({"image": BUSYBOX, "image_pull_policy": "Never"}),
        )
        .await;
    assert_outcome(&o, &log, Phase::Succeeded, "Completed", Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malicious_images_fail_their_runs_with_err_image_pull_and_the_canary_is_untouched() {
    let registry = Registry::start_plain().await.unwrap();
    let pusher = Pusher::plain(&registry);
    let outside = tempfile::tempdir().unwrap();
    let canary = outside.path().join("canary");
    std::fs::write(&canary, "untouched").unwrap();
    let out = outside.path().display().to_string();
    let attacks: Vec<(&str, Vec<Tar>)> = vec![
        (
            "dotdot",
            vec![Tar::default().file("../../../../../../../canary", b"pwned")],
        ),
        (
            "absolute",
            vec![Tar::default().file(&format!("{out}/canary"), b"pwned")],
        ),
        (
            "symlink-then-write",
            vec![
                Tar::default()
                    .symlink("escape", &out)
                    .file("escape/canary", b"pwned"),
            ],
        ),
        (
            "lower-symlink",
            vec![
                Tar::default().symlink("escape", &out),
                Tar::default().file("escape/canary", b"pwned"),
            ],
        ),
        (
            "hardlink-to-host",
            vec![Tar::default().hardlink("shadow", "/etc/shadow")],
        ),
    ];
    for (name, layers) in &attacks {
        let mut all = vec![busybox_layer(name).unwrap()];
        all.extend(layers.iter().cloned());
        pusher.push(name, &ImageSpec::new(all)).await.unwrap();
    }
    let cfg = plain(&registry);
    let mut h = Harness::start(move |c| c.registry = cfg).await;
    for (name, _) in &attacks {
        let image = pusher.reference(&format!("{name}:latest"));
        h.launch(name, &["true"], 600, json!({"image": image}))
            .await;
        let m = failed_with(
            &h.finished(name, Duration::from_secs(60)).await,
            "ErrImagePull",
        );
        assert!(m.contains("layer"), "{name}: {m}");
    }
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_missing_from_the_image_is_a_start_error_not_the_jobs_exit_code() {
    let mut h = Harness::start(|_| {}).await;
    h.launch("nopython", &["python3", "-c", "print(1)"], 30, json!({}))
        .await;
    let m = failed_with(
        &h.finished("nopython", Duration::from_secs(30)).await,
        "StartError",
    );
    assert!(
        m.contains("\"python3\": executable file not found in $PATH"),
        "{m}"
    );
    h.launch("noabs", &["/usr/bin/python3"], 30, json!({}))
        .await;
    let m = failed_with(
        &h.finished("noabs", Duration::from_secs(30)).await,
        "StartError",
    );
    assert!(m.contains("no such executable file"), "{m}");
}
