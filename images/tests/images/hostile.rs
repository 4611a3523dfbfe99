//! Hostile layers pushed to a real registry: each is refused with a clear reason, nothing is written
//! outside the store, and nothing of the image is kept.

use std::path::Path;

use airlock_images::{Digest, ImageError, ImageStore, PullPolicy};
use airlock_test_support::registry::Registry;
use anyhow::Result;
use tar::EntryType;

use crate::common::*;

/// Pushes `layers` as `name:1`, pulls it, and returns the error and the digest of the last layer.
async fn refused(
    dir: &Path,
    registry: &Registry,
    name: &str,
    layers: Vec<Tar>,
) -> Result<(ImageError, String, ImageStore)> {
    let pusher = Pusher::plain(registry);
    let spec = ImageSpec::new(layers);
    let built = build(&spec)?;
    pusher.push_built(&format!("{name}:1"), &built).await?;
    let store = store(dir, plain_config(registry))?;
    let err = store
        .ensure(
            &pusher.reference(&format!("{name}:1")),
            PullPolicy::IfNotPresent,
        )
        .await
        .expect_err("a hostile layer must be refused");
    // blobs are the layers (in order) then the config
    let last_layer = built.blobs[built.blobs.len() - 2].0.clone();
    Ok((err, last_layer, store))
}

async fn assert_refused(
    name: &str,
    layers: impl FnOnce(&Path) -> Vec<Tar>,
    reason: impl FnOnce(&Path) -> String,
) -> Result<()> {
    let (dir, canary) = world()?;
    let registry = Registry::start_plain().await?;
    let layers = layers(dir.path());
    let (err, layer, store) = refused(dir.path(), &registry, name, layers).await?;
    let reference = format!("{}/{name}:1", registry.host());
    assert_eq!(
        err.to_string(),
        format!(
            "failed to pull image \"{reference}\": layer {layer}: {}",
            reason(dir.path())
        )
    );
    assert!(err.is_permanent() && err.is_malicious_layer(), "{err:?}");
    // The host is untouched: the canary, and nothing new next to the store.
    assert_eq!(std::fs::read_to_string(&canary)?, "untouched");
    let mut top: Vec<_> = std::fs::read_dir(dir.path())?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    top.sort();
    assert_eq!(top, ["canary", "store"]);
    // Nothing of the image is kept, not even in the store's scratch space.
    assert!(store.list().await?.is_empty());
    assert_eq!(std::fs::read_dir(dir.path().join("store/tmp"))?.count(), 0);
    Ok(())
}

#[tokio::test]
async fn a_layer_with_a_dotdot_path_is_refused() -> Result<()> {
    let evil = "../../../../../../canary";
    assert_refused(
        "dotdot",
        |_| vec![Tar::default().file(evil, b"pwned")],
        |_| format!("entry {evil:?} escapes the rootfs"),
    )
    .await
}

#[tokio::test]
async fn a_layer_with_an_absolute_path_is_refused() -> Result<()> {
    assert_refused(
        "absolute",
        |d| vec![Tar::default().file(d.join("canary").to_str().unwrap_or("/x"), b"pwned")],
        |d| {
            format!(
                "entry {:?} is an absolute path",
                d.join("canary").display().to_string()
            )
        },
    )
    .await
}

#[tokio::test]
async fn a_layer_writing_through_its_own_symlink_is_refused() -> Result<()> {
    assert_refused(
        "symlink-same-layer",
        |d| {
            vec![
                Tar::default()
                    .symlink("escape", d.to_str().unwrap_or("/"))
                    .file("escape/canary", b"pwned"),
            ]
        },
        |_| r#"entry "escape/canary" goes through the symlink "escape""#.to_string(),
    )
    .await
}

#[tokio::test]
async fn a_layer_writing_through_a_lower_layers_symlink_is_refused() -> Result<()> {
    assert_refused(
        "symlink-lower-layer",
        |d| {
            vec![
                Tar::default().symlink("var/escape", d.to_str().unwrap_or("/")),
                Tar::default().file("var/escape/canary", b"pwned"),
            ]
        },
        |_| r#"entry "var/escape/canary" goes through the symlink "var/escape""#.to_string(),
    )
    .await
}

#[tokio::test]
async fn a_hard_link_to_a_host_file_is_refused() -> Result<()> {
    assert_refused(
        "hardlink",
        |_| vec![Tar::default().hardlink("etc/shadow", "/etc/shadow")],
        |_| r#"hard link "etc/shadow" points outside the rootfs (to "/etc/shadow")"#.to_string(),
    )
    .await
}

#[tokio::test]
async fn device_nodes_are_dropped_and_setuid_bits_cleared() -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let (dir, _) = world()?;
    let registry = Registry::start_plain().await?;
    let pusher = Pusher::plain(&registry);
    let layer = Tar::default()
        .entry("dev/sda", EntryType::Block, "", 0o660, b"")
        .entry("dev/mem", EntryType::Char, "", 0o640, b"")
        .entry("bin/su", EntryType::Regular, "", 0o4755, b"suid")
        .entry("bin/wall", EntryType::Regular, "", 0o2755, b"sgid");
    pusher
        .push("special:1", &ImageSpec::new(vec![layer]))
        .await?;
    let store = store(dir.path(), plain_config(&registry))?;

    let image = store
        .ensure(&pusher.reference("special:1"), PullPolicy::IfNotPresent)
        .await?;

    assert!(!image.rootfs().join("dev/sda").exists());
    assert!(!image.rootfs().join("dev/mem").exists());
    for f in ["bin/su", "bin/wall"] {
        let mode = std::fs::metadata(image.rootfs().join(f))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755, "{f}");
    }
    Ok(())
}

#[tokio::test]
async fn a_blob_longer_than_its_descriptor_says_is_refused() -> Result<()> {
    let (dir, _) = world()?;
    let registry = Registry::start_plain().await?;
    let pusher = Pusher::plain(&registry);
    let good = build(&ImageSpec::new(vec![Tar::default().file("a", b"good")]))?;
    // The registry checks uploads against their digests, so forge the size: the manifest declares
    // fewer bytes than the layer has.
    let mut manifest: serde_json::Value = serde_json::from_slice(&good.manifest)?;
    manifest["layers"][0]["size"] = serde_json::json!(10);
    let manifest = serde_json::to_vec(&manifest)?;
    let forged = Built {
        blobs: good.blobs.clone(),
        digest: Digest::of(&manifest).to_string(),
        manifest,
        manifest_type: good.manifest_type,
    };
    pusher.push_built("forged:1", &forged).await?;
    let store = store(dir.path(), plain_config(&registry))?;

    let err = store
        .ensure(&pusher.reference("forged:1"), PullPolicy::IfNotPresent)
        .await
        .expect_err("size mismatch");

    assert!(matches!(err, ImageError::BlobMismatch { .. }), "{err}");
    assert!(store.list().await?.is_empty());
    Ok(())
}
