//! Importing OCI layouts (directories and archives) for air-gapped machines.

use std::path::{Path, PathBuf};

use airlock_images::{ImageError, PullPolicy, RegistryConfig};
use anyhow::Result;
use serde_json::json;

use crate::common::*;

/// Writes `built` as an OCI layout at `dir`, its index entry annotated with `annotations`.
fn write_layout(dir: &Path, built: &Built, annotations: serde_json::Value) -> Result<PathBuf> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    for (d, b) in &built.blobs {
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), b)?;
    }
    std::fs::write(
        blobs.join(built.digest.trim_start_matches("sha256:")),
        &built.manifest,
    )?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": built.manifest_type, "digest": built.digest, "size": built.manifest.len(),
        "annotations": annotations}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(dir.to_path_buf())
}

fn offline() -> RegistryConfig {
    RegistryConfig {
        system_roots: false,
        ..RegistryConfig::default()
    }
}

#[tokio::test]
async fn an_oci_layout_directory_is_imported_under_its_annotated_name() -> Result<()> {
    let (dir, _) = world()?;
    let built = build(&ImageSpec::new(vec![busybox_layer("imported")?]))?;
    let layout = write_layout(
        &dir.path().join("layout"),
        &built,
        json!({"org.opencontainers.image.ref.name": "registry.example/tools/busybox:1"}),
    )?;
    let store = store(dir.path(), offline())?;

    let imported = store.import(&layout, None).await?;

    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].reference, "registry.example/tools/busybox:1");
    assert_eq!(imported[0].digest.as_str(), built.digest);
    let image = store
        .ensure("registry.example/tools/busybox:1", PullPolicy::Never)
        .await?;
    assert_eq!(
        std::fs::read_to_string(image.rootfs().join("etc/airlock-marker"))?,
        "imported"
    );
    Ok(())
}

#[tokio::test]
async fn a_tar_archive_of_a_layout_is_imported_under_the_given_name() -> Result<()> {
    let (dir, _) = world()?;
    let built = build(&ImageSpec::new(vec![
        Tar::default().file("hello", b"archive"),
    ]))?;
    let layout = write_layout(
        &dir.path().join("layout"),
        &built,
        json!({"org.opencontainers.image.ref.name": "1"}),
    )?;
    let archive = dir.path().join("image.tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&archive)?);
    tar.append_dir_all(".", &layout)?;
    tar.into_inner()?;
    let store = store(dir.path(), offline())?;

    let err = store
        .import(&archive, None)
        .await
        .expect_err("no full name");
    assert!(matches!(err, ImageError::Import { .. }), "{err}");
    assert!(err.to_string().contains("pass --name"), "{err}");

    let imported = store.import(&archive, Some("airgap/hello:1")).await?;

    assert_eq!(imported[0].reference, "docker.io/airgap/hello:1");
    let image = store
        .ensure("airgap/hello:1", PullPolicy::IfNotPresent)
        .await?;
    assert_eq!(
        std::fs::read_to_string(image.rootfs().join("hello"))?,
        "archive"
    );
    let staging: Vec<_> = std::fs::read_dir(dir.path().join("store/tmp"))?.collect();
    assert!(
        staging.is_empty(),
        "the archive's staging directory is removed"
    );
    Ok(())
}

#[tokio::test]
async fn a_layout_with_a_corrupted_blob_is_refused() -> Result<()> {
    let (dir, _) = world()?;
    let built = build(&ImageSpec::new(vec![Tar::default().file("a", b"b")]))?;
    let layout = write_layout(
        &dir.path().join("layout"),
        &built,
        json!({"io.containerd.image.name": "docker.io/library/corrupt:1"}),
    )?;
    let layer = &built.blobs[0].0;
    let path = layout
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&path)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes)?;
    let store = store(dir.path(), offline())?;

    let err = store.import(&layout, None).await.expect_err("corrupt");

    assert!(err.to_string().contains("does not match"), "{err}");
    assert!(store.list().await?.is_empty());
    Ok(())
}
