//! Pulling from a plain-HTTP registry: tags, digests, formats, indexes, policies, single flight.

use std::time::{Duration, Instant};

use airlock_images::{ImageError, Platform, PullPolicy};
use airlock_test_support::registry::Registry;
use anyhow::Result;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn an_image_pulled_by_tag_is_unpacked_with_its_config() -> Result<()> {
    let (dir, _) = world()?;
    let registry = Registry::start_plain().await?;
    let pusher = Pusher::plain(&registry);
    let mut spec = ImageSpec::new(vec![busybox_layer("pulled by tag")?]);
    spec.run = json!({"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hello"],
        "Env": ["PATH=/bin", "GREETING=hi there"], "WorkingDir": "/work", "User": "1000:1000"});
    let digest = pusher.push("tools/busybox:1", &spec).await?;
    let store = store(dir.path(), plain_config(&registry))?;

    let image = store
        .ensure(
            &pusher.reference("tools/busybox:1"),
            PullPolicy::IfNotPresent,
        )
        .await?;

    assert_eq!(image.digest().as_str(), digest);
    assert_eq!(image.reference(), pusher.reference("tools/busybox:1"));
    let marker = std::fs::read_to_string(image.rootfs().join("etc/airlock-marker"))?;
    assert_eq!(marker, "pulled by tag");
    let out = std::process::Command::new(image.rootfs().join("bin/busybox"))
        .args(["echo", "from the image"])
        .output()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from the image\n");
    let c = image.config();
    assert_eq!(c.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(c.cmd, ["echo hello"]);
    assert_eq!(c.env_var("GREETING"), Some("hi there"));
    assert_eq!(c.working_dir.as_deref(), Some("/work"));
    assert_eq!(c.user.as_deref(), Some("1000:1000"));
    assert_eq!(c.architecture, "amd64");
    Ok(())
}

#[tokio::test]
async fn an_image_pulled_by_digest_is_verified_against_it() -> Result<()> {
    let (dir, _) = world()?;
    let registry = Registry::start_plain().await?;
    let pusher = Pusher::plain(&registry);
    let digest = pusher
        .push(
            "app:v1",
            &ImageSpec::new(vec![Tar::default().file("a", b"by digest")]),
        )
        .await?;
    let store = store(dir.path(), plain_config(&registry))?;

    let image = store
        .ensure(
            &pusher.reference(&format!("app@{digest}")),
            PullPolicy::IfNotPresent,
        )
        .await?;

    assert_eq!(image.digest().as_str(), digest);
    assert_eq!(
        std::fs::read_to_string(image.rootfs().join("a"))?,
        "by digest"
    );
    Ok(())
}

#[tokio::test]
async fn docker_v2_manifests_and_zstd_and_plain_layers_are_pulled() -> Result<()> {
    let (dir, _) = world()?;
    let registry = Registry::start_plain().await?;
    let pusher = Pusher::plain(&registry);
    let mut docker = ImageSpec::new(vec![
        Tar::default().file("lower", b"gzip"),
        Tar::default().file("upper", b"plain"),
    ]);
    docker.format = Format::Docker;
    docker.layers[1].1 = Compression::None;
    pusher.push("docker:1", &docker).await?;
    let mut oci = ImageSpec::new(vec![Tar::default().file("z", b"zstd")]);
    oci.layers[0].1 = Compression::Zstd;
    pusher.push("zstd:1", &oci).await?;
    let store = store(dir.path(), plain_config(&registry))?;

    let d = store
        .ensure(&pusher.reference("docker:1"), PullPolicy::IfNotPresent)
        .await?;
    let z = store
        .ensure(&pusher.reference("zstd:1"), PullPolicy::IfNotPresent)
        .await?;

    assert_eq!(std::fs::read_to_string(d.rootfs().join("lower"))?, "gzip");
    assert_eq!(std::fs::read_to_string(d.rootfs().join("upper"))?, "plain");
    assert_eq!(std::fs::read_to_string(z.rootfs().join("z"))?, "zstd");
    Ok(())
}

#[tokio::test]
async fn an_image_index_resolves_to_the_configured_platform() -> Result<()> {
    let (dir, _) = world()?;
    let registry = Registry::start_plain().await?;
    let pusher = Pusher::plain(&registry);
    let mut arm = ImageSpec::new(vec![Tar::default().file("arch", b"arm64")]);
    arm.architecture = "arm64".into();
    let amd = ImageSpec::new(vec![Tar::default().file("arch", b"amd64")]);
    pusher
        .push_index(
            "multi:1",
            &[("arm64", build(&arm)?), ("amd64", build(&amd)?)],
        )
        .await?;
    let mut config = plain_config(&registry);
    config.platform = Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
    };
    let store = store(dir.path(), config.clone())?;
    let image = store
        .ensure(&pusher.reference("multi:1"), PullPolicy::IfNotPresent)
        .await?;
    assert_eq!(
        std::fs::read_to_string(image.rootfs().join("arch"))?,
        "amd64"
    );

    config.platform.architecture = "s390x".into();
    let other = crate::common::store(&dir.path().join("other"), config)?;
    let err = other
        .ensure(&pusher.reference("multi:1"), PullPolicy::IfNotPresent)
        .await
        .expect_err("no s390x image");
    assert!(
        matches!(err, ImageError::NoMatchingPlatform { .. }),
        "{err}"
    );
    assert!(err.is_permanent());
    Ok(())
}

#[tokio::test]
async fn a_cached_image_is_available_with_the_registry_stopped() -> Result<()> {
    let (dir, _) = world()?;
    let mut registry = Registry::start_plain().await?;
    let pusher = Pusher::plain(&registry);
    pusher
        .push(
            "cached:1",
            &ImageSpec::new(vec![Tar::default().file("c", b"cached")]),
        )
        .await?;
    let store = store(dir.path(), plain_config(&registry))?;
    let reference = pusher.reference("cached:1");
    drop(store.ensure(&reference, PullPolicy::IfNotPresent).await?);
    registry.stop().await?;

    for policy in [PullPolicy::IfNotPresent, PullPolicy::Never] {
        let image = store.ensure(&reference, policy).await?;
        assert_eq!(std::fs::read_to_string(image.rootfs().join("c"))?, "cached");
    }
    let err = store
        .ensure(&reference, PullPolicy::Always)
        .await
        .expect_err("Always needs the registry");
    assert!(matches!(err, ImageError::Unavailable { .. }), "{err}");
    assert!(err.is_retryable(), "{err}");
    Ok(())
}

#[tokio::test]
async fn never_with_an_absent_image_fails_at_once_without_contacting_the_registry() -> Result<()> {
    let (dir, _) = world()?;
    let registry = Registry::start_plain().await?;
    let store = store(dir.path(), plain_config(&registry))?;
    let reference = format!("{}/absent:1", registry.host());

    let started = Instant::now();
    let err = store
        .ensure(&reference, PullPolicy::Never)
        .await
        .expect_err("absent");

    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        err.to_string(),
        format!("image \"{reference}\" is not present and the pull policy is Never")
    );
    assert!(err.is_permanent());
    assert!(
        registry
            .requests()?
            .iter()
            .all(|r| !r.path.contains("absent"))
    );
    Ok(())
}

#[tokio::test]
async fn an_unknown_manifest_is_a_permanent_not_found_error() -> Result<()> {
    let (dir, _) = world()?;
    let registry = Registry::start_plain().await?;
    let store = store(dir.path(), plain_config(&registry))?;
    let reference = format!("{}/nothing/here:1", registry.host());

    let err = store
        .ensure(&reference, PullPolicy::IfNotPresent)
        .await
        .expect_err("unknown");

    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
    assert!(err.is_permanent());
    assert_eq!(
        err.to_string(),
        format!("failed to pull image \"{reference}\": not found (manifest unknown)")
    );
    Ok(())
}

#[tokio::test]
async fn twenty_concurrent_ensures_of_a_new_image_pull_it_once() -> Result<()> {
    let (dir, _) = world()?;
    let registry = Registry::start_plain().await?;
    let pusher = Pusher::plain(&registry);
    let digest = pusher
        .push(
            "popular:1",
            &ImageSpec::new(vec![busybox_layer("popular")?]),
        )
        .await?;
    // Two stores on one directory behave like two processes: they share only the files and locks.
    let a = store(dir.path(), plain_config(&registry))?;
    let b = store(dir.path(), plain_config(&registry))?;
    let reference = pusher.reference("popular:1");

    let mut tasks = Vec::new();
    for i in 0..20 {
        let (s, r) = (
            if i % 2 == 0 { a.clone() } else { b.clone() },
            reference.clone(),
        );
        tasks.push(tokio::spawn(async move {
            s.ensure(&r, PullPolicy::IfNotPresent).await
        }));
    }
    let mut images = Vec::new();
    for t in tasks {
        images.push(t.await??);
    }

    assert!(images.iter().all(|i| i.digest().as_str() == digest));
    assert_eq!(registry.manifest_gets("popular")?, 1);
    // The access log line of the last download may land just after the client got the body.
    let blob_gets = || -> Result<usize> {
        Ok(registry
            .requests()?
            .iter()
            .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
            .count())
    };
    airlock_test_support::wait_until(Duration::from_secs(5), "blob downloads in the log", || {
        let n = blob_gets().unwrap_or(0);
        async move { (n >= 2).then_some(()) }
    })
    .await?;
    assert_eq!(blob_gets()?, 2, "one config and one layer download");
    let listed = a.list().await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].leases, 20);
    drop(images);
    assert_eq!(a.list().await?[0].leases, 0);
    Ok(())
}

#[tokio::test]
async fn always_resolves_again_but_downloads_only_what_changed() -> Result<()> {
    let (dir, _) = world()?;
    let registry = Registry::start_plain().await?;
    let pusher = Pusher::plain(&registry);
    pusher
        .push(
            "moving:latest",
            &ImageSpec::new(vec![Tar::default().file("v", b"1")]),
        )
        .await?;
    let store = store(dir.path(), plain_config(&registry))?;
    let reference = pusher.reference("moving:latest");
    let first = store.ensure(&reference, PullPolicy::Always).await?;
    let again = store.ensure(&reference, PullPolicy::Always).await?;
    assert_eq!(first.digest(), again.digest());
    assert_eq!(registry.manifest_gets("moving")?, 2);

    pusher
        .push(
            "moving:latest",
            &ImageSpec::new(vec![Tar::default().file("v", b"2")]),
        )
        .await?;
    let cached = store.ensure(&reference, PullPolicy::IfNotPresent).await?;
    assert_eq!(std::fs::read_to_string(cached.rootfs().join("v"))?, "1");
    let fresh = store.ensure(&reference, PullPolicy::Always).await?;
    assert_eq!(std::fs::read_to_string(fresh.rootfs().join("v"))?, "2");
    assert_ne!(first.digest(), fresh.digest());
    Ok(())
}
