//! Unpacking untrusted layers into a rootfs: the security heart of the crate.
//!
//! # Layout
//! - [`path`]: lexical checks of entry paths (no absolute paths, no `..` above the root).
//! - [`fsops`]: descriptor-relative operations that never follow a symlink.
//! - `error`: [`LayerError`], the reasons a layer is refused.
//! - `zstd`: multi-frame zstd decoding.
//! - this file: decompression (gzip, zstd, plain tar), the entry loop, whiteouts, the diff_id check.
//!
//! The rules, for every entry of every layer:
//! - its path must stay beneath the rootfs lexically, and its parent directories are walked component by
//!   component without following symlinks: an entry going through a symlink (planted earlier in the same
//!   layer or by a lower layer) or through a file fails the layer;
//! - a hard link's target is checked the same way and must be a file or symlink already in the rootfs;
//! - the entry itself replaces whatever is at its name (the link, never what a symlink points to);
//! - device nodes and fifos are dropped, setuid/setgid bits cleared; ownership is not applied (files
//!   belong to the unpacking user);
//! - whiteouts (`.wh.<name>`, opaque `.wh..wh..opq`) delete what lower layers put there, not what this
//!   layer adds, whatever the order of entries in the tar.
//!
//! The caller unpacks into a fresh directory and renames it into place only when every layer succeeded,
//! so a refused layer leaves nothing behind.

mod error;
pub(crate) mod fsops;
pub(crate) mod path;
mod zstd;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{FileType, Mode};

use crate::digest::{Digest, HashingReader, LimitExceeded};
pub use error::LayerError;
use fsops::WalkError;
use path::{PathProblem, RelPath, show};

/// Counts across the layers of one image.
#[derive(Debug, Default, Clone)]
pub(crate) struct UnpackBudget {
    /// Uncompressed bytes still allowed (tar headers and padding included).
    pub(crate) remaining: u64,
    /// The limit the budget started from, for messages.
    pub(crate) limit: u64,
    /// Approximate disk usage of what was written (files rounded to 4 KiB, 4 KiB per other entry).
    pub(crate) disk_bytes: u64,
    /// Device nodes and fifos dropped.
    pub(crate) dropped_special: u64,
    /// setuid/setgid bits cleared.
    pub(crate) cleared_setid: u64,
}

impl UnpackBudget {
    pub(crate) fn new(limit: u64) -> Self {
        Self {
            remaining: limit,
            limit,
            ..Self::default()
        }
    }
}

/// The compression of a layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    Gzip,
    Zstd,
    None,
}

impl Compression {
    fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
            Self::None => "uncompressed",
        }
    }

    /// By magic bytes: a gzip or zstd stream cannot start otherwise, and some tools label uncompressed
    /// layers `.tar.gzip`; the media type (`+gzip`, `+zstd`, `.tar`) only names what was expected.
    fn detect(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }
}

/// Unpacks the layer blob at `blob` on top of the rootfs at `rootfs`, checking the uncompressed stream
/// against `diff_id` when given. Blocking: run it on a blocking thread.
pub(crate) fn unpack_layer(
    blob: &Path,
    media_type: &str,
    rootfs: &Path,
    diff_id: Option<&Digest>,
    budget: &mut UnpackBudget,
) -> Result<(), LayerError> {
    let host = |source| LayerError::Io {
        entry: String::new(),
        source,
    };
    let mut input = BufReader::with_capacity(256 * 1024, File::open(blob).map_err(host)?);
    let head = input.fill_buf().map_err(host)?.to_vec();
    let compression = Compression::detect(&head);
    tracing::debug!(
        media_type,
        compression = compression.name(),
        "unpacking a layer"
    );
    let decoded: Box<dyn Read> = match compression {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(zstd::ZstdFrames::new(input)),
        Compression::None => Box::new(input),
    };
    let root = fsops::open_root(rootfs).map_err(host)?;
    let hashing = HashingReader::new(decoded, budget.remaining);
    let mut layer = Layer {
        root: root.as_fd(),
        touched: HashSet::new(),
        dir_modes: Vec::new(),
        budget,
        compression,
    };
    let mut archive = tar::Archive::new(hashing);
    let entries = archive.entries().map_err(|e| layer.read_error(e))?;
    for entry in entries {
        let entry = entry.map_err(|e| layer.read_error(e))?;
        layer.entry(entry)?;
    }
    // Hash the rest of the stream (end-of-archive blocks, padding) so the diff_id covers all of it.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| layer.read_error(e))?;
    let (_, hasher) = rest.into_parts();
    layer.budget.remaining = layer.budget.remaining.saturating_sub(hasher.len());
    for (path, mode) in std::mem::take(&mut layer.dir_modes) {
        fsops::chmod_dir(layer.root, &path, mode).map_err(|source| LayerError::Io {
            entry: path.display(),
            source,
        })?;
    }
    if let Some(expected) = diff_id {
        let actual = hasher.finish();
        if &actual != expected {
            return Err(LayerError::DiffIdMismatch {
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
    }
    Ok(())
}

/// State of one layer being unpacked.
struct Layer<'a> {
    root: BorrowedFd<'a>,
    /// Paths this layer created or wrote (whiteouts in this layer do not delete them).
    touched: HashSet<RelPath>,
    /// Directory modes, applied once the layer is written (so a read-only directory can still be filled).
    dir_modes: Vec<(RelPath, u32)>,
    budget: &'a mut UnpackBudget,
    compression: Compression,
}

/// Permission bits kept: rwx for all and the sticky bit; setuid/setgid are dropped.
const KEPT_MODE_BITS: u32 = 0o1777;

impl Layer<'_> {
    fn read_error(&self, e: io::Error) -> LayerError {
        if e.get_ref().is_some_and(|inner| inner.is::<LimitExceeded>()) {
            LayerError::TooLarge {
                limit: self.budget.limit,
            }
        } else {
            LayerError::Corrupt {
                format: self.compression.name(),
                source: e,
            }
        }
    }

    // Long on purpose: one tar entry type per arm, each with its own escape checks side by side.
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), LayerError> {
        let raw = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let path = parse_path(&raw)?;
        let mode = entry.header().mode().map_err(|e| self.read_error(e))?;
        let Some((parent, name)) = path.split_last() else {
            // The root itself ("./"): only a directory entry makes sense, and only its mode applies.
            if kind.is_dir() {
                self.dir_modes
                    .push((RelPath::root(), mode & KEPT_MODE_BITS));
                return Ok(());
            }
            return Err(LayerError::InvalidName { entry: show(&raw) });
        };
        let parent_path = path.prefix(parent.len());
        if let Some(whiteout) = name.as_encoded_bytes().strip_prefix(b".wh.") {
            return self.whiteout(&raw, &parent_path, whiteout);
        }
        let dir = self.open_parent(&raw, &parent_path, true)?;
        let Some(dir) = dir else {
            return Err(LayerError::InvalidName { entry: show(&raw) });
        };
        // The parents are part of this layer too (an opaque whiteout keeps them, minus lower content).
        for n in 1..=parent.len() {
            self.touched.insert(path.prefix(n));
        }
        let io_err = |source| LayerError::Io {
            entry: show(&raw),
            source,
        };
        match kind {
            tar::EntryType::Directory => {
                fsops::ensure_dir(dir.as_fd(), name).map_err(io_err)?;
                self.dir_modes.push((path.clone(), mode & KEPT_MODE_BITS));
                self.budget.disk_bytes += 4096;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut file = fsops::create_file(dir.as_fd(), name).map_err(io_err)?;
                let size = self.copy(&mut entry, &mut file, &raw)?;
                if mode & 0o6000 != 0 {
                    self.budget.cleared_setid += 1;
                }
                rustix::fs::fchmod(&file, Mode::from_raw_mode(mode & KEPT_MODE_BITS))
                    .map_err(|e| io_err(e.into()))?;
                self.budget.disk_bytes += size.div_ceil(4096).max(1) * 4096;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| LayerError::InvalidName { entry: show(&raw) })?;
                fsops::create_symlink(dir.as_fd(), name, &target).map_err(io_err)?;
                self.budget.disk_bytes += 4096;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| LayerError::InvalidName { entry: show(&raw) })?
                    .into_owned();
                self.hard_link(&raw, &path, dir.as_fd(), name, &target)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                // Dropped: a job has no business with device nodes from an image.
                self.budget.dropped_special += 1;
                return Ok(());
            }
            other => {
                return Err(LayerError::UnsupportedType {
                    entry: show(&raw),
                    kind: format!("{other:?}"),
                });
            }
        }
        self.touched.insert(path);
        Ok(())
    }

    /// Opens the parent directory of an entry (creating missing directories when `create`).
    fn open_parent(
        &mut self,
        raw: &[u8],
        parent: &RelPath,
        create: bool,
    ) -> Result<Option<std::os::fd::OwnedFd>, LayerError> {
        let mut created = Vec::new();
        let r = fsops::open_dir(self.root, parent.components(), create, &mut |n| {
            created.push(n)
        });
        for n in created {
            self.touched.insert(parent.prefix(n));
        }
        r.map_err(|e| walk_error(raw, parent, e))
    }

    /// Copies a file's content, within the budget (reads are the layer's errors, writes the host's).
    fn copy(&mut self, from: &mut impl Read, to: &mut File, raw: &[u8]) -> Result<u64, LayerError> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = from.read(&mut buf).map_err(|e| self.read_error(e))?;
            if n == 0 {
                return Ok(total);
            }
            to.write_all(&buf[..n]).map_err(|source| LayerError::Io {
                entry: show(raw),
                source,
            })?;
            total += n as u64;
        }
    }

    fn hard_link(
        &mut self,
        raw: &[u8],
        path: &RelPath,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        target_raw: &[u8],
    ) -> Result<(), LayerError> {
        let outside = || LayerError::HardLinkOutside {
            entry: show(raw),
            target: show(target_raw),
        };
        let missing = || LayerError::HardLinkTarget {
            entry: show(raw),
            target: show(target_raw),
        };
        let target = RelPath::parse(target_raw).map_err(|_| outside())?;
        let Some((tparent, tname)) = target.split_last() else {
            return Err(missing());
        };
        if &target == path {
            return Ok(());
        }
        let tdir = match fsops::open_dir(self.root, tparent, false, &mut |_| {}) {
            Ok(Some(d)) => d,
            Ok(None) | Err(WalkError::NotADirectory(_)) => return Err(missing()),
            Err(WalkError::Symlink(_)) => return Err(outside()),
            Err(WalkError::Io(source)) => {
                return Err(LayerError::Io {
                    entry: show(raw),
                    source,
                });
            }
        };
        let io_err = |source| LayerError::Io {
            entry: show(raw),
            source,
        };
        match fsops::kind_at(tdir.as_fd(), tname).map_err(io_err)? {
            Some(FileType::RegularFile | FileType::Symlink) => {}
            _ => return Err(missing()),
        }
        fsops::create_hard_link(tdir.as_fd(), tname, dir, name).map_err(io_err)
    }

    /// `.wh.<name>` deletes `<name>` from lower layers; `.wh..wh..opq` empties the directory of what lower
    /// layers put there.
    fn whiteout(&mut self, raw: &[u8], parent: &RelPath, target: &[u8]) -> Result<(), LayerError> {
        let io_err = |source| LayerError::Io {
            entry: show(raw),
            source,
        };
        let opaque = target == b".wh..opq";
        if !opaque && (target.is_empty() || target == b"." || target == b"..") {
            return Err(LayerError::InvalidName { entry: show(raw) });
        }
        if !opaque && target.starts_with(b".wh.") {
            return Ok(()); // other AUFS metadata (`.wh..wh.plnk`…): nothing to apply
        }
        let Some(dir) = self.open_parent(raw, parent, false)? else {
            return Ok(()); // nothing below to delete
        };
        if opaque {
            return self.remove_lower(dir.as_fd(), parent).map_err(io_err);
        }
        let name = OsStr::from_bytes(target);
        let path = parent.join(name);
        if !self.touched.contains(&path) {
            return fsops::remove_at(dir.as_fd(), name).map_err(io_err);
        }
        // Written by this layer: only lower content inside it (if it is a directory) goes.
        if fsops::kind_at(dir.as_fd(), name).map_err(io_err)? == Some(FileType::Directory) {
            let child = fsops::open_child_dir(dir.as_fd(), name).map_err(io_err)?;
            self.remove_lower(child.as_fd(), &path).map_err(io_err)?;
        }
        Ok(())
    }

    /// Removes everything under `dir` (at `path`) that this layer did not write.
    fn remove_lower(&self, dir: BorrowedFd<'_>, path: &RelPath) -> io::Result<()> {
        for name in fsops::list(dir)? {
            let child = path.join(&name);
            if !self.touched.contains(&child) {
                fsops::remove_at(dir, &name)?;
            } else if fsops::kind_at(dir, &name)? == Some(FileType::Directory) {
                let fd = fsops::open_child_dir(dir, &name)?;
                self.remove_lower(fd.as_fd(), &child)?;
            }
        }
        Ok(())
    }
}

fn parse_path(raw: &[u8]) -> Result<RelPath, LayerError> {
    RelPath::parse(raw).map_err(|p| match p {
        PathProblem::Absolute => LayerError::Absolute { entry: show(raw) },
        PathProblem::Escapes => LayerError::Escapes { entry: show(raw) },
        PathProblem::Invalid => LayerError::InvalidName { entry: show(raw) },
        PathProblem::TooDeep => LayerError::TooDeep {
            entry: show(raw),
            max: path::MAX_DEPTH,
        },
    })
}

fn walk_error(raw: &[u8], parent: &RelPath, e: WalkError) -> LayerError {
    match e {
        WalkError::Symlink(n) => LayerError::ThroughSymlink {
            entry: show(raw),
            symlink: parent.prefix(n).display(),
        },
        WalkError::NotADirectory(n) => LayerError::NotADirectory {
            entry: show(raw),
            component: parent.prefix(n).display(),
        },
        WalkError::Io(source) => LayerError::Io {
            entry: show(raw),
            source,
        },
    }
}

#[cfg(test)]
mod tests;
