//! Listing, removal and LRU eviction. Blocking: called on blocking threads.
//!
//! An image is deleted only while holding its lock exclusively (taken without waiting by eviction, so a
//! build or lease in progress makes eviction skip that image) and with no live lease: it is renamed into
//! `trash/` first, so a reader never sees half an image, then deleted.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::layout::Layout;
use super::lock::FileLock;
use super::{ImageInfo, lease, remove_tree, trash_path};
use crate::digest::Digest;
use crate::error::ImageError;

/// What `remove` was asked to remove.
#[derive(Debug)]
pub(crate) enum Target {
    /// A normalized reference.
    Reference(String),
    /// An image by manifest digest, with all its references.
    Digest(Digest),
}

/// Every image, most recently used first.
pub(crate) fn list(layout: &Layout) -> Result<Vec<ImageInfo>, ImageError> {
    let refs = layout.refs()?;
    let mut by_digest: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
    for (k, d) in refs {
        by_digest.entry(d).or_default().push(k);
    }
    let mut out = Vec::new();
    for d in layout.image_digests()? {
        let Some(meta) = layout.meta(&d)? else {
            continue;
        };
        let leases = lease::count_live(&layout.leases(&d), false)
            .map_err(|e| ImageError::io("counting leases", e))?;
        out.push(ImageInfo {
            references: by_digest.remove(&d).unwrap_or_default(),
            size_bytes: meta.size_bytes,
            last_used: layout.last_used(&d),
            leases,
            config: meta.config,
            origin: meta.origin,
            digest: d,
        });
    }
    out.sort_by_key(|i| std::cmp::Reverse(i.last_used));
    Ok(out)
}

/// Deletes image `d` if nobody holds its lock or a lease on it. `Ok(false)`: in use, left alone.
fn delete_image(layout: &Layout, d: &Digest) -> Result<bool, ImageError> {
    let Some(_lock) = FileLock::try_exclusive(&layout.image_lock(d), true)
        .map_err(|e| ImageError::io("locking the image", e))?
    else {
        return Ok(false);
    };
    let live = lease::count_live(&layout.leases(d), true)
        .map_err(|e| ImageError::io("counting leases", e))?;
    if live > 0 {
        return Ok(false);
    }
    let trash = trash_path(layout, d);
    match std::fs::rename(layout.image(d), &trash) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(ImageError::io("moving an image to the trash", e)),
    }
    layout.update_refs(|m| m.retain(|_, v| v != d))?;
    drop(_lock);
    remove_tree(&trash)?;
    let _ = std::fs::remove_dir(layout.leases(d));
    Ok(true)
}

/// Removes a reference or an image (see [`super::ImageStore::remove`]).
pub(crate) fn remove(layout: &Layout, target: Target, shown: &str) -> Result<(), ImageError> {
    let refs = layout.refs()?;
    let (digest, key) = match target {
        Target::Digest(d) => {
            if layout.meta(&d)?.is_none() && !refs.values().any(|v| v == &d) {
                return Err(ImageError::NotInStore {
                    reference: shown.into(),
                });
            }
            (d, None)
        }
        Target::Reference(k) => match refs.get(&k) {
            Some(d) => (d.clone(), Some(k)),
            None => {
                return Err(ImageError::NotInStore {
                    reference: shown.into(),
                });
            }
        },
    };
    let others = refs
        .iter()
        .filter(|(k, v)| *v == &digest && Some(*k) != key.as_ref())
        .count();
    if let (Some(k), true) = (&key, others > 0) {
        // Other references keep the image: only this name goes.
        return layout.update_refs(|m| {
            m.remove(k);
        });
    }
    if layout.meta(&digest)?.is_none() {
        return layout.update_refs(|m| m.retain(|_, v| v != &digest));
    }
    if delete_image(layout, &digest)? {
        return Ok(());
    }
    let leases = lease::count_live(&layout.leases(&digest), false)
        .map_err(|e| ImageError::io("counting leases", e))?;
    Err(ImageError::InUse {
        reference: shown.into(),
        leases: leases.max(1),
    })
}

/// Evicts least recently used unleased images until the total size is at most `max_bytes`.
pub(crate) fn evict_to(layout: &Layout, max_bytes: u64) -> Result<Vec<Digest>, ImageError> {
    let mut images: Vec<(SystemTime, Digest, u64)> = Vec::new();
    for d in layout.image_digests()? {
        if let Some(meta) = layout.meta(&d)? {
            images.push((layout.last_used(&d), d, meta.size_bytes));
        }
    }
    let mut total: u64 = images.iter().map(|(_, _, s)| s).sum();
    let mut evicted = Vec::new();
    if total <= max_bytes {
        return Ok(evicted);
    }
    images.sort();
    for (_, d, size) in images {
        if total <= max_bytes {
            break;
        }
        if delete_image(layout, &d)? {
            tracing::info!(digest = %d, size, "evicted image from the cache");
            total = total.saturating_sub(size);
            evicted.push(d);
        }
    }
    if total > max_bytes {
        tracing::warn!(
            total,
            max_bytes,
            "image cache over its bound: the remaining images are in use"
        );
    }
    Ok(evicted)
}
