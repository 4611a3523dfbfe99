//! The image store: ensure an image under a pull policy, hand out leased rootfs paths, list, remove, evict.
//!
//! # Layout
//! - [`layout`]: the directory layout, `meta.json`, `refs.json`.
//! - [`lock`]: `flock` locks shared across processes.
//! - [`lease`]: [`LeasedImage`] and the lease files behind it.
//! - [`build`]: building an image in `tmp/` and renaming it into place.
//! - [`evict`]: LRU eviction of unleased images, removal.
//! - this file: [`ImageStore`], pulls.
//!
//! Concurrency: one pull per reference at a time in a process (an async mutex) and across processes
//! (`locks/ref-….lock`); one build per manifest digest (`locks/<hex>.lock`, exclusive), which leasing
//! takes shared and eviction takes exclusive without waiting; `refs.json` is rewritten under
//! `locks/store.lock`. Lock order: reference, image, store.

mod build;
mod evict;
mod layout;
pub(crate) mod lease;
mod lock;

use std::collections::HashMap;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use oci_client::Reference;

use crate::config::{PullPolicy, StoreConfig};
use crate::digest::Digest;
use crate::error::ImageError;
use crate::image_config::ImageConfig;
use crate::reference::ImageRef;
use crate::registry::Registry;
pub(crate) use build::{ImageBuild, check_manifest};
pub(crate) use layout::Layout;
pub use lease::LeasedImage;
use lock::FileLock;

/// Takes image `d`'s lock exclusively (to build it), waiting for it.
pub(crate) async fn lock_image(layout: &Layout, d: &Digest) -> Result<FileLock, ImageError> {
    FileLock::acquire(layout.image_lock(d), true)
        .await
        .map_err(|e| ImageError::io("locking the image", e))
}

/// The image cache. Cheap to clone; share one per process.
#[derive(Debug, Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: StoreConfig,
    pub(crate) layout: Layout,
    /// Built on the first pull: loading the system's CA roots costs milliseconds, and most runs hit the cache.
    registry: tokio::sync::OnceCell<Registry>,
    /// In-process single flight per reference.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// An image in the store, as [`ImageStore::list`] shows it.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// Manifest digest.
    pub digest: Digest,
    /// References that point to it (normalized), sorted.
    pub references: Vec<String>,
    /// Approximate disk usage.
    pub size_bytes: u64,
    /// Last ensured (the LRU clock).
    pub last_used: SystemTime,
    /// Live leases (runs using it) in any process.
    pub leases: usize,
    /// Its config.
    pub config: ImageConfig,
    /// `pulled from <ref>` or `imported from <path>`.
    pub origin: String,
}

/// Normalizes a reference (`busybox` → `docker.io/library/busybox:latest`).
pub fn normalize_reference(reference: &str) -> Result<String, ImageError> {
    ImageRef::parse(reference).map(|r| r.whole())
}

impl ImageStore {
    /// Opens (creating) the store at `config.dir`. Leftovers of deletions interrupted by a crash are
    /// cleaned up here; builds interrupted by a crash are cleaned up by the next build of that image.
    pub fn open(config: StoreConfig) -> Result<Self, ImageError> {
        let layout = Layout::create(&config.dir)?;
        if let Ok(rd) = std::fs::read_dir(layout.trash()) {
            for e in rd.flatten() {
                let _ = remove_tree(&e.path());
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                layout,
                registry: tokio::sync::OnceCell::new(),
                inflight: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        self.inner.layout.root()
    }

    /// Makes `reference` present according to `policy` and leases it: the returned image's rootfs is
    /// not evicted or removed while the [`LeasedImage`] lives. Concurrent calls for one new image (in this
    /// process or in others sharing the directory) pull it once. After a pull, the cache is trimmed to
    /// its bound.
    pub async fn ensure(
        &self,
        reference: &str,
        policy: PullPolicy,
    ) -> Result<LeasedImage, ImageError> {
        self.ensure_ref(&ImageRef::parse(reference)?, policy).await
    }

    /// [`Self::ensure`] for a reference parsed already.
    pub async fn ensure_ref(
        &self,
        reference: &ImageRef,
        policy: PullPolicy,
    ) -> Result<LeasedImage, ImageError> {
        let r = reference.to_oci();
        let key = r.whole();
        if policy != PullPolicy::Always {
            if let Some(img) = self.cached(&r, &key).await? {
                return Ok(img);
            }
            if policy == PullPolicy::Never {
                return Err(ImageError::NotPresent { reference: key });
            }
        }
        let slot = {
            let mut map = self
                .inner
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let result = async {
            let _in_process = slot.lock().await;
            let _across_processes = FileLock::acquire(self.inner.layout.ref_lock(&key), true)
                .await
                .map_err(|e| ImageError::io("locking the reference", e))?;
            if policy != PullPolicy::Always {
                // Somebody else may have pulled it while we waited.
                if let Some(img) = self.cached(&r, &key).await? {
                    return Ok((img, false));
                }
            }
            let (digest, downloaded) = self.pull(&r, &key).await?;
            let mut img = self.lease(&digest, &key).await?.ok_or_else(|| {
                ImageError::io(
                    "leasing a pulled image",
                    std::io::ErrorKind::NotFound.into(),
                )
            })?;
            img.pulled_bytes = Some(downloaded);
            Ok((img, true))
        }
        .await;
        {
            let mut map = self
                .inner
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if Arc::strong_count(&slot) <= 2 {
                map.remove(&key);
            }
        }
        let (img, pulled) = result?;
        if pulled {
            // The new image is leased, so eviction cannot take it.
            if let Err(e) = self.gc().await {
                tracing::warn!(error = %e, "image cache eviction failed");
            }
        }
        Ok(img)
    }

    /// The image for `key` if the store has it (by reference, or by the digest in the reference).
    async fn cached(&self, r: &Reference, key: &str) -> Result<Option<LeasedImage>, ImageError> {
        let layout = self.inner.layout.clone();
        let k = key.to_string();
        let from_refs =
            tokio::task::spawn_blocking(move || layout.refs().map(|m| m.get(&k).cloned()))
                .await
                .map_err(|e| ImageError::io("reading refs", std::io::Error::other(e)))??;
        let by_digest = r.digest().and_then(Digest::parse);
        for d in from_refs.into_iter().chain(by_digest) {
            if let Some(img) = self.lease(&d, key).await? {
                return Ok(Some(img));
            }
        }
        Ok(None)
    }

    /// Leases the image `digest` if it is in the store.
    async fn lease(&self, digest: &Digest, key: &str) -> Result<Option<LeasedImage>, ImageError> {
        let layout = self.inner.layout.clone();
        let _shared = FileLock::acquire(layout.image_lock(digest), false)
            .await
            .map_err(|e| ImageError::io("locking the image", e))?;
        let digest = digest.clone();
        let key = key.to_string();
        tokio::task::spawn_blocking(move || {
            let Some(meta) = layout.meta(&digest)? else {
                return Ok(None);
            };
            let lease = lease::create(&layout.leases(&digest))
                .map_err(|e| ImageError::io("creating a lease", e))?;
            layout.touch(&digest)?;
            Ok(Some(LeasedImage {
                reference: key,
                rootfs: layout.rootfs(&digest),
                digest,
                config: meta.config,
                size_bytes: meta.size_bytes,
                pulled_bytes: None,
                _lease: lease,
            }))
        })
        .await
        .map_err(|e| ImageError::io("leasing", std::io::Error::other(e)))?
    }

    /// Resolves `r` at its registry, builds the image unless the store has it, records the reference.
    /// Returns the digest and the bytes of the blobs downloaded (0 when the store had the image).
    async fn pull(&self, r: &Reference, key: &str) -> Result<(Digest, u64), ImageError> {
        let inner = &self.inner;
        let registry = inner
            .registry
            .get_or_try_init(|| async { Registry::new(&inner.config.registry) })
            .await?;
        let resolved = registry.resolve(r).await?;
        let digest = resolved.digest.clone();
        let layout = &inner.layout;
        let mut downloaded = 0;
        if layout.meta(&digest)?.is_none() {
            let _lock = lock_image(layout, &digest).await?;
            if layout.meta(&digest)?.is_none() {
                let r2 = self.build_pulled(registry, r, key, &resolved).await;
                if r2.is_err() {
                    let tmp = layout.tmp(&digest);
                    let _ = tokio::task::spawn_blocking(move || remove_tree(&tmp)).await;
                }
                downloaded = r2?;
            }
        }
        let (layout, key, d) = (layout.clone(), key.to_string(), digest.clone());
        tokio::task::spawn_blocking(move || {
            layout.update_refs(|m| {
                m.insert(key, d);
            })
        })
        .await
        .map_err(|e| ImageError::io("recording the reference", std::io::Error::other(e)))??;
        Ok((digest, downloaded))
    }

    /// Downloads and builds the image; returns the bytes of the blobs downloaded.
    async fn build_pulled(
        &self,
        registry: &Registry,
        r: &Reference,
        key: &str,
        resolved: &crate::registry::Resolved,
    ) -> Result<u64, ImageError> {
        let inner = &self.inner;
        let m = &resolved.manifest;
        let config_digest = check_manifest(key, m)?;
        let tmp = ImageBuild::prepare_tmp(&inner.layout, &resolved.digest)?;
        let config_path = tmp.join("config-blob");
        registry
            .download_blob(r, &m.config, &config_path, 4 << 20)
            .await?;
        let config_raw = tokio::fs::read(&config_path)
            .await
            .map_err(|e| ImageError::io("reading the config blob", e))?;
        debug_assert_eq!(Digest::of(&config_raw), config_digest);
        let mut b = ImageBuild::start(
            &inner.layout,
            &resolved.digest,
            key,
            m,
            &config_raw,
            inner.config.max_image_bytes,
        )?;
        for layer in &m.layers {
            let d = crate::registry::checked_digest(key, &layer.digest)?;
            let path = b.blob_path(&d);
            registry
                .download_blob(r, layer, &path, inner.config.max_image_bytes)
                .await?;
            b.add_layer(layer, path).await?;
        }
        let raw = resolved.raw.clone();
        let origin = format!("pulled from {key}");
        tokio::task::spawn_blocking(move || b.commit(&raw, &config_raw, origin))
            .await
            .map_err(|e| ImageError::io("committing", std::io::Error::other(e)))??;
        let sizes = std::iter::once(&m.config).chain(&m.layers);
        Ok(sizes.map(|d| u64::try_from(d.size).unwrap_or(0)).sum())
    }

    /// Every image in the store, most recently used first.
    pub async fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let layout = self.inner.layout.clone();
        tokio::task::spawn_blocking(move || evict::list(&layout))
            .await
            .map_err(|e| ImageError::io("listing", std::io::Error::other(e)))?
    }

    /// Removes a reference (or, given `sha256:<hex>`, an image and all its references). The image's data
    /// goes when no reference is left; an image a run holds a lease on is not touched
    /// ([`ImageError::InUse`]).
    pub async fn remove(&self, reference: &str) -> Result<(), ImageError> {
        let layout = self.inner.layout.clone();
        let target = match Digest::parse(reference) {
            Some(d) => evict::Target::Digest(d),
            None => evict::Target::Reference(normalize_reference(reference)?),
        };
        let reference = reference.to_string();
        tokio::task::spawn_blocking(move || evict::remove(&layout, target, &reference))
            .await
            .map_err(|e| ImageError::io("removing", std::io::Error::other(e)))?
    }

    /// Evicts least recently used, unleased images until the cache fits `max_cache_bytes`. Returns the
    /// digests evicted. Runs after every pull and import.
    pub async fn gc(&self) -> Result<Vec<Digest>, ImageError> {
        let layout = self.inner.layout.clone();
        let max = self.inner.config.max_cache_bytes;
        tokio::task::spawn_blocking(move || evict::evict_to(&layout, max))
            .await
            .map_err(|e| ImageError::io("evicting", std::io::Error::other(e)))?
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }
}

/// Deletes a directory tree (or file) without following symlinks, even with read-only directories in
/// it; a missing path is fine.
pub(crate) fn remove_tree(path: &Path) -> Result<(), ImageError> {
    let err = |e| ImageError::io(format!("removing {}", path.display()), e);
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    let dir = match crate::unpack::fsops::open_root(parent) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(e)),
    };
    crate::unpack::fsops::remove_at(dir.as_fd(), name).map_err(err)
}

/// A path for the trash.
pub(crate) fn trash_path(layout: &Layout, digest: &Digest) -> PathBuf {
    layout.trash().join(format!(
        "{}-{}-{}",
        digest.hex(),
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ))
}
