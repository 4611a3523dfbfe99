//! Building one image in `<dir>/tmp/<hex>/` from verified blobs, then renaming it into place.
//!
//! Shared by pulls and imports. The caller holds the image's lock for the whole build, so a leftover
//! `tmp/<hex>` is from a process that died and is removed first.

use std::path::PathBuf;

use oci_client::manifest::{
    IMAGE_CONFIG_MEDIA_TYPE, IMAGE_DOCKER_CONFIG_MEDIA_TYPE, OciDescriptor, OciImageManifest,
};

use super::layout::{Layout, Meta, now_unix, write_atomic};
use crate::digest::Digest;
use crate::error::ImageError;
use crate::image_config::{self, ImageConfig};
use crate::registry::checked_digest;
use crate::unpack::{self, UnpackBudget};

/// An image being built.
#[derive(Debug)]
pub(crate) struct ImageBuild {
    layout: Layout,
    digest: Digest,
    key: String,
    tmp: PathBuf,
    budget: UnpackBudget,
    diff_ids: Vec<Digest>,
    config: ImageConfig,
    config_digest: Digest,
    layers_done: usize,
}

/// The checks a manifest passes before anything is downloaded: an image (not another artifact), sha256
/// digests only, tar layers only. Returns the config's digest.
pub(crate) fn check_manifest(key: &str, m: &OciImageManifest) -> Result<Digest, ImageError> {
    let mt = m.config.media_type.as_str();
    if mt != IMAGE_CONFIG_MEDIA_TYPE && mt != IMAGE_DOCKER_CONFIG_MEDIA_TYPE {
        return Err(ImageError::Unsupported {
            reference: key.into(),
            what: format!("not a container image (config media type {mt:?})"),
        });
    }
    for l in &m.layers {
        checked_digest(key, &l.digest)?;
        let t = l.media_type.as_str();
        let is_tar = t.starts_with("application/vnd.oci.image.layer.")
            || t.starts_with("application/vnd.docker.image.rootfs.");
        if !is_tar {
            return Err(ImageError::Unsupported {
                reference: key.into(),
                what: format!("layer media type {t:?}"),
            });
        }
    }
    checked_digest(key, &m.config.digest)
}

impl ImageBuild {
    /// Starts a build of `digest` in the directory [`ImageBuild::prepare_tmp`] made (call holding the
    /// image's lock); `config_bytes` is the config blob, already verified against `m.config.digest`.
    pub(crate) fn start(
        layout: &Layout,
        digest: &Digest,
        key: &str,
        m: &OciImageManifest,
        config_bytes: &[u8],
        max_image_bytes: u64,
    ) -> Result<Self, ImageError> {
        let config_digest = check_manifest(key, m)?;
        let parsed =
            image_config::parse(config_bytes).map_err(|what| ImageError::InvalidImage {
                reference: key.into(),
                what,
            })?;
        if !parsed.diff_ids.is_empty() && parsed.diff_ids.len() != m.layers.len() {
            return Err(ImageError::InvalidImage {
                reference: key.into(),
                what: format!(
                    "the config lists {} diff_ids for {} layers",
                    parsed.diff_ids.len(),
                    m.layers.len()
                ),
            });
        }
        let tmp = layout.tmp(digest);
        let rootfs = tmp.join("image").join("rootfs");
        std::fs::create_dir_all(&rootfs)
            .map_err(|e| ImageError::io(format!("creating {}", rootfs.display()), e))?;
        Ok(Self {
            layout: layout.clone(),
            digest: digest.clone(),
            key: key.into(),
            tmp,
            budget: UnpackBudget::new(max_image_bytes),
            diff_ids: parsed.diff_ids,
            config: parsed.config,
            config_digest,
            layers_done: 0,
        })
    }

    /// `tmp/<hex>/`, emptied: mode 0700 so nobody reads a half-built image; the image inside is 0755.
    pub(crate) fn prepare_tmp(layout: &Layout, digest: &Digest) -> Result<PathBuf, ImageError> {
        let tmp = layout.tmp(digest);
        super::remove_tree(&tmp)?;
        std::fs::create_dir(&tmp)
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
                std::fs::create_dir(tmp.join("image"))
            })
            .map_err(|e| ImageError::io(format!("creating {}", tmp.display()), e))?;
        Ok(tmp)
    }

    /// Where to put a blob being fetched.
    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.tmp.join(format!("blob-{}", digest.hex()))
    }

    /// Unpacks the next layer from its verified blob (then deletes the blob).
    pub(crate) async fn add_layer(
        &mut self,
        desc: &OciDescriptor,
        blob: PathBuf,
    ) -> Result<(), ImageError> {
        let digest = checked_digest(&self.key, &desc.digest)?;
        let diff_id = self.diff_ids.get(self.layers_done).cloned();
        let rootfs = self.tmp.join("image").join("rootfs");
        let media_type = desc.media_type.clone();
        let mut budget = std::mem::take(&mut self.budget);
        let (budget, result) = tokio::task::spawn_blocking(move || {
            let r =
                unpack::unpack_layer(&blob, &media_type, &rootfs, diff_id.as_ref(), &mut budget);
            let _ = std::fs::remove_file(&blob);
            (budget, r)
        })
        .await
        .map_err(|e| ImageError::io("unpacking a layer", std::io::Error::other(e)))?;
        self.budget = budget;
        result.map_err(|source| ImageError::Layer {
            reference: self.key.clone(),
            digest: digest.to_string(),
            source,
        })?;
        self.layers_done += 1;
        Ok(())
    }

    /// Writes the metadata and renames the image into `images/<hex>`.
    pub(crate) fn commit(
        self,
        manifest_raw: &[u8],
        config_raw: &[u8],
        origin: String,
    ) -> Result<Meta, ImageError> {
        let image = self.tmp.join("image");
        if self.budget.dropped_special > 0 || self.budget.cleared_setid > 0 {
            tracing::info!(
                image = %self.key,
                dropped_device_nodes_and_fifos = self.budget.dropped_special,
                cleared_setuid_setgid = self.budget.cleared_setid,
                "unpacked with special files dropped"
            );
        }
        let meta = Meta {
            digest: self.digest.to_string(),
            config_digest: self.config_digest.to_string(),
            size_bytes: self.budget.disk_bytes,
            config: self.config,
            origin,
            created_unix: now_unix(),
        };
        let meta_json = serde_json::to_vec_pretty(&meta)
            .map_err(|e| ImageError::io("encoding meta.json", std::io::Error::other(e)))?;
        write_atomic(&image.join("manifest.json"), manifest_raw)?;
        write_atomic(&image.join("config.json"), config_raw)?;
        write_atomic(&image.join("meta.json"), &meta_json)?;
        let dest = self.layout.image(&self.digest);
        std::fs::rename(&image, &dest)
            .map_err(|e| ImageError::io(format!("renaming into {}", dest.display()), e))?;
        self.layout.touch(&self.digest)?;
        super::remove_tree(&self.tmp)?;
        Ok(meta)
    }
}
