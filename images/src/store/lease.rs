//! Leases: a run's claim on an image, so that eviction and removal leave it alone.
//!
//! A lease is a file `<dir>/leases/<hex>/<id>` holding an exclusive `flock` for as long as the
//! [`LeasedImage`] lives. It is created under a temporary name, locked, then renamed into place, so it is
//! never visible unlocked. Any process can tell a live lease (the lock is held) from the leftover of a
//! process that died (the kernel dropped its lock); leftovers are deleted by whoever finds them.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::FlockOperation;

use super::lock::FileLock;
use crate::digest::Digest;
use crate::image_config::ImageConfig;

/// An image present in the store, held for a run: its rootfs is not evicted or removed until this is
/// dropped (or the process exits).
#[derive(Debug)]
pub struct LeasedImage {
    pub(crate) reference: String,
    pub(crate) digest: Digest,
    pub(crate) rootfs: PathBuf,
    pub(crate) config: ImageConfig,
    pub(crate) size_bytes: u64,
    /// `Some(bytes downloaded)` when this call fetched it from its registry; `None` from the cache.
    pub(crate) pulled_bytes: Option<u64>,
    pub(crate) _lease: Lease,
}

impl LeasedImage {
    /// The reference as normalized by the store (`docker.io/library/busybox:latest`).
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// The image's manifest digest (`sha256:…`): what a run should record as the image it ran.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The unpacked root filesystem. Treat it as read-only (mount it read-only): it is shared by every
    /// run of the image.
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    /// Entrypoint, Cmd, Env, WorkingDir, User.
    pub fn config(&self) -> &ImageConfig {
        &self.config
    }

    /// Approximate disk usage of the rootfs.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// `Some(bytes of blobs downloaded)` when [`crate::ImageStore::ensure`] went to the registry for it
    /// (`Some(0)`: the manifest was fetched and the store already had its image); `None` for a cache hit.
    pub fn pulled_bytes(&self) -> Option<u64> {
        self.pulled_bytes
    }
}

/// The lease file; deleted and unlocked on drop.
#[derive(Debug)]
pub(crate) struct Lease {
    path: PathBuf,
    _file: File,
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Unlink first, then the lock goes with the descriptor.
        let _ = fs::remove_file(&self.path);
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates a lease in `dir` (the image's lease directory).
pub(crate) fn create(dir: &Path) -> io::Result<Lease> {
    fs::create_dir_all(dir)?;
    let id = format!(
        "{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        super::layout::now_unix()
    );
    let tmp = dir.join(format!(".{id}.new"));
    let file = OpenOptions::new().create_new(true).write(true).open(&tmp)?;
    rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive)?;
    let path = dir.join(&id);
    fs::rename(&tmp, &path)?;
    Ok(Lease { path, _file: file })
}

/// Counts live leases in `dir`; when `clean` is set, deletes leftovers of dead holders (call it holding
/// the image's lock, so no lease is being created meanwhile).
pub(crate) fn count_live(dir: &Path, clean: bool) -> io::Result<usize> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut live = 0;
    for e in rd {
        let path = e?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            // Being created: locked before it is renamed, so count it as live only once it is.
            if clean && let Some(_l) = FileLock::try_exclusive(&path, false).unwrap_or(None) {
                let _ = fs::remove_file(&path);
            }
            continue;
        }
        match FileLock::try_exclusive(&path, false) {
            Ok(None) => live += 1,
            Ok(Some(_stale)) => {
                if clean {
                    let _ = fs::remove_file(&path);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(live)
}
