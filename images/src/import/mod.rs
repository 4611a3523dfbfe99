//! Importing images for air-gapped machines: an OCI image layout directory, or a tar archive of one
//! (what `ctr images import`, `skopeo copy … oci-archive:` and `docker save` produce).
//!
//! # Layout
//! - [`archive`]: extracting a layout's files from a tar archive.
//! - this file: reading `index.json`, verifying every blob, building each image like a pull does.
//!
//! Names come from `--name` (one image only), else the annotation `io.containerd.image.name`, else
//! `org.opencontainers.image.ref.name` when it is a full reference (contains a `/`). An image with no
//! usable name is refused: the store keeps images by reference.

mod archive;

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, ImageIndexEntry, OCI_IMAGE_INDEX_MEDIA_TYPE, OciDescriptor,
    OciImageIndex, OciManifest,
};

use crate::digest::{Digest, Hasher};
use crate::error::ImageError;
use crate::registry::{parse_manifest, select_platform};
use crate::store::{ImageStore, Layout, normalize_reference, remove_tree};

/// One image an import brought in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    /// Its normalized reference.
    pub reference: String,
    /// Its manifest digest.
    pub digest: Digest,
}

const MAX_JSON_BYTES: u64 = 4 << 20;

impl ImageStore {
    /// Imports every image of the OCI layout at `path` (a directory, or a tar archive of one, possibly
    /// gzip-compressed). `name` names the image when the layout holds exactly one. Blobs are verified
    /// and layers unpacked exactly as for a pull; an image the store already has is not unpacked again.
    pub async fn import(
        &self,
        path: &Path,
        name: Option<&str>,
    ) -> Result<Vec<ImportedImage>, ImageError> {
        let bad = |what: String| ImageError::Import {
            path: path.to_path_buf(),
            what,
        };
        let layout = self.inner().layout.clone();
        let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
        let (dir, staging) = if meta.is_dir() {
            (path.to_path_buf(), None)
        } else {
            let staging = layout.root().join("tmp").join(format!(
                "import-{}-{}",
                std::process::id(),
                nanos()
            ));
            let (archive, dest) = (path.to_path_buf(), staging.clone());
            tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dest).map_err(|e| format!("staging: {e}"))?;
                archive::extract(&archive, &dest)
            })
            .await
            .map_err(|e| bad(e.to_string()))?
            .map_err(bad)?;
            (staging.clone(), Some(staging))
        };
        let result = self.import_dir(path, &dir, name).await;
        if let Some(s) = staging {
            let _ = tokio::task::spawn_blocking(move || remove_tree(&s)).await;
        }
        let imported = result?;
        if let Err(e) = self.gc().await {
            tracing::warn!(error = %e, "image cache eviction failed");
        }
        Ok(imported)
    }

    async fn import_dir(
        &self,
        shown: &Path,
        dir: &Path,
        name: Option<&str>,
    ) -> Result<Vec<ImportedImage>, ImageError> {
        let bad = |what: String| ImageError::Import {
            path: shown.to_path_buf(),
            what,
        };
        let index_bytes = read_limited(&dir.join("index.json"), MAX_JSON_BYTES)
            .map_err(|e| bad(format!("no readable index.json: {e}")))?;
        let index: OciImageIndex = serde_json::from_slice(&index_bytes)
            .map_err(|e| bad(format!("index.json is not valid: {e}")))?;
        if index.manifests.is_empty() {
            return Err(bad("index.json lists no image".into()));
        }
        if name.is_some() && index.manifests.len() != 1 {
            return Err(bad(format!(
                "--name names one image, but the layout has {}",
                index.manifests.len()
            )));
        }
        let platform = &self.inner().config.registry.platform;
        let mut out = Vec::new();
        for top in &index.manifests {
            let reference = match name {
                Some(n) => normalize_reference(n)?,
                None => entry_name(top).ok_or_else(|| {
                    bad(format!(
                        "image {} has no full reference name; pass --name",
                        top.digest
                    ))
                })?,
            };
            let mut entry = top.clone();
            if is_index(&entry.media_type) {
                let d = blob_digest(shown, &entry.digest)?;
                let body = read_blob(dir, &d, MAX_JSON_BYTES).map_err(bad)?;
                let nested: OciImageIndex = serde_json::from_slice(&body)
                    .map_err(|e| bad(format!("index {d} is not valid: {e}")))?;
                entry = select_platform(&nested.manifests, platform)
                    .cloned()
                    .ok_or_else(|| ImageError::NoMatchingPlatform {
                        reference: reference.clone(),
                        platform: platform.to_string(),
                    })?;
            }
            let digest = blob_digest(shown, &entry.digest)?;
            self.import_image(shown, dir, &reference, &digest).await?;
            let (l, k, d) = (
                self.inner().layout.clone(),
                reference.clone(),
                digest.clone(),
            );
            tokio::task::spawn_blocking(move || {
                l.update_refs(|m| {
                    m.insert(k, d);
                })
            })
            .await
            .map_err(|e| ImageError::io("recording the reference", io::Error::other(e)))??;
            out.push(ImportedImage { reference, digest });
        }
        Ok(out)
    }

    /// Builds image `digest` from the layout's blobs unless the store has it.
    async fn import_image(
        &self,
        shown: &Path,
        dir: &Path,
        key: &str,
        digest: &Digest,
    ) -> Result<(), ImageError> {
        let bad = |what: String| ImageError::Import {
            path: shown.to_path_buf(),
            what,
        };
        let layout: &Layout = &self.inner().layout;
        if layout.meta(digest)?.is_some() {
            return Ok(());
        }
        let _lock = crate::store::lock_image(layout, digest).await?;
        if layout.meta(digest)?.is_some() {
            return Ok(());
        }
        let manifest_raw = read_blob(dir, digest, MAX_JSON_BYTES).map_err(bad)?;
        let manifest = match parse_manifest(&manifest_raw).map_err(&bad)? {
            OciManifest::Image(m) => m,
            OciManifest::ImageIndex(_) => return Err(bad(format!("{digest} is not an image"))),
        };
        let config_digest = crate::store::check_manifest(key, &manifest)?;
        let result = async {
            crate::store::ImageBuild::prepare_tmp(layout, digest)?;
            let config_raw = read_blob(dir, &config_digest, MAX_JSON_BYTES).map_err(bad)?;
            let mut b = crate::store::ImageBuild::start(
                layout,
                digest,
                key,
                &manifest,
                &config_raw,
                self.inner().config.max_image_bytes,
            )?;
            for l in &manifest.layers {
                let d = blob_digest(shown, &l.digest)?;
                let dest = b.blob_path(&d);
                copy_verified(dir, l, &d, dest.clone()).await.map_err(bad)?;
                b.add_layer(l, dest).await?;
            }
            let origin = format!("imported from {}", shown.display());
            tokio::task::spawn_blocking(move || b.commit(&manifest_raw, &config_raw, origin))
                .await
                .map_err(|e| ImageError::io("committing", io::Error::other(e)))?
        }
        .await;
        if result.is_err() {
            let tmp = layout.tmp(digest);
            let _ = tokio::task::spawn_blocking(move || remove_tree(&tmp)).await;
        }
        result.map(|_| ())
    }
}

fn is_index(media_type: &str) -> bool {
    media_type == OCI_IMAGE_INDEX_MEDIA_TYPE || media_type == IMAGE_MANIFEST_LIST_MEDIA_TYPE
}

fn entry_name(e: &ImageIndexEntry) -> Option<String> {
    let a = e.annotations.as_ref()?;
    if let Some(n) = a.get("io.containerd.image.name") {
        return normalize_reference(n).ok();
    }
    a.get("org.opencontainers.image.ref.name")
        .filter(|n| n.contains('/'))
        .and_then(|n| normalize_reference(n).ok())
}

fn blob_digest(shown: &Path, d: &str) -> Result<Digest, ImageError> {
    Digest::parse(d).ok_or_else(|| ImageError::Import {
        path: shown.to_path_buf(),
        what: format!("digest {d:?} (only sha256 is supported)"),
    })
}

fn blob_path(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs").join("sha256").join(d.hex())
}

fn read_limited(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)?.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(io::Error::other(format!("larger than {max} bytes")));
    }
    Ok(buf)
}

/// A small blob, verified against its digest.
fn read_blob(dir: &Path, d: &Digest, max: u64) -> Result<Vec<u8>, String> {
    let bytes = read_limited(&blob_path(dir, d), max).map_err(|e| format!("blob {d}: {e}"))?;
    let actual = Digest::of(&bytes);
    if &actual != d {
        return Err(format!("blob {d} does not match its digest (got {actual})"));
    }
    Ok(bytes)
}

/// Copies a layer blob into the build, hashing it on the way, and checks digest and size.
async fn copy_verified(
    dir: &Path,
    desc: &OciDescriptor,
    d: &Digest,
    dest: PathBuf,
) -> Result<(), String> {
    let src = blob_path(dir, d);
    let (d, size) = (d.clone(), u64::try_from(desc.size).unwrap_or(0));
    tokio::task::spawn_blocking(move || {
        let mut from = File::open(&src).map_err(|e| format!("blob {d}: {e}"))?;
        let mut to = File::create(&dest).map_err(|e| format!("staging blob {d}: {e}"))?;
        let mut h = Hasher::default();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = from.read(&mut buf).map_err(|e| format!("blob {d}: {e}"))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            if h.len() > size {
                return Err(format!("blob {d} is larger than its declared {size} bytes"));
            }
            std::io::Write::write_all(&mut to, &buf[..n])
                .map_err(|e| format!("staging blob {d}: {e}"))?;
        }
        let len = h.len();
        let actual = h.finish();
        if actual != d || len != size {
            return Err(format!(
                "blob {d} does not match its descriptor (got {actual}, {len} of {size} bytes)"
            ));
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
