//! Descriptor-relative filesystem operations that never follow a symlink.
//!
//! Every operation starts from the rootfs's directory descriptor and walks one normal component at a time
//! with `openat(…, O_DIRECTORY | O_NOFOLLOW)`: a symlink or a non-directory in the middle of a path stops
//! the walk with an error naming it, so no path given by a layer is ever resolved by the kernel across a
//! symlink. The last component is created, replaced or removed with the `*at` calls on its parent's
//! descriptor, which act on the link itself, not on what it points to.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::path::RelPath;

/// Why a walk stopped.
#[derive(Debug)]
pub(crate) enum WalkError {
    /// The first `n` components name a symlink.
    Symlink(usize),
    /// The first `n` components name something that is not a directory.
    NotADirectory(usize),
    /// The host refused an operation.
    Io(io::Error),
}

impl From<Errno> for WalkError {
    fn from(e: Errno) -> Self {
        Self::Io(e.into())
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Opens a directory of the host (the rootfs itself), refusing a symlink.
pub(crate) fn open_root(path: &std::path::Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(path, DIR_FLAGS, Mode::empty())?)
}

/// What is at `name` in `dir`, without following a symlink; `None` if nothing.
pub(crate) fn kind_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Opens the directory `path` beneath `root` without following symlinks. Missing directories are created
/// (mode 0755, reported through `created`) when `create` is set; otherwise a missing one gives `Ok(None)`.
pub(crate) fn open_dir(
    root: BorrowedFd<'_>,
    path: &[OsString],
    create: bool,
    created: &mut dyn FnMut(usize),
) -> Result<Option<OwnedFd>, WalkError> {
    let mut cur: OwnedFd = rustix::fs::openat(root, c".", DIR_FLAGS, Mode::empty())?;
    for (i, comp) in path.iter().enumerate() {
        match kind_at(cur.as_fd(), comp).map_err(WalkError::Io)? {
            Some(FileType::Directory) => {}
            Some(FileType::Symlink) => return Err(WalkError::Symlink(i + 1)),
            Some(_) => return Err(WalkError::NotADirectory(i + 1)),
            None if create => {
                rustix::fs::mkdirat(cur.as_fd(), comp.as_os_str(), Mode::from_raw_mode(0o755))?;
                created(i + 1);
            }
            None => return Ok(None),
        }
        // O_NOFOLLOW makes this fail (ELOOP/ENOTDIR) even if the entry changed since the check above.
        cur = match rustix::fs::openat(cur.as_fd(), comp.as_os_str(), DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => return Err(WalkError::Symlink(i + 1)),
            Err(Errno::NOTDIR) => return Err(WalkError::NotADirectory(i + 1)),
            Err(e) => return Err(e.into()),
        };
    }
    Ok(Some(cur))
}

/// Removes whatever is at `name` in `dir` (a directory with everything in it), never following a symlink.
pub(crate) fn remove_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match kind_at(dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) => {
            let child = rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())?;
            // A read-only directory cannot be emptied without the capability root has; make it writable.
            let _ = rustix::fs::fchmod(&child, Mode::from_raw_mode(0o700));
            remove_children(child.as_fd(), &mut |_| false)?;
            drop(child);
            Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
        }
        Some(_) => Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?),
    }
}

/// Removes every child of `dir` for which `keep(name)` is false.
pub(crate) fn remove_children(
    dir: BorrowedFd<'_>,
    keep: &mut dyn FnMut(&OsStr) -> bool,
) -> io::Result<()> {
    for name in list(dir)? {
        if !keep(&name) {
            remove_at(dir, &name)?;
        }
    }
    Ok(())
}

/// Names in `dir` (without `.` and `..`).
pub(crate) fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut d = rustix::fs::Dir::read_from(dir)?;
    let mut names = Vec::new();
    while let Some(e) = d.read() {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

/// Opens the directory `name` in `dir` (no symlink).
pub(crate) fn open_child_dir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())?)
}

/// Makes `name` in `dir` a directory: keeps an existing directory, replaces anything else.
pub(crate) fn ensure_dir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
    match kind_at(dir, name)? {
        Some(FileType::Directory) => return Ok(false),
        Some(_) => remove_at(dir, name)?,
        None => {}
    }
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))?;
    Ok(true)
}

/// Creates a new regular file `name` in `dir` (replacing what was there), open for writing, mode 0600.
pub(crate) fn create_file(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<std::fs::File> {
    remove_at(dir, name)?;
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(std::fs::File::from(fd))
}

/// Creates the symlink `name` → `target` in `dir` (replacing what was there). The target is stored as
/// given and never resolved here.
pub(crate) fn create_symlink(dir: BorrowedFd<'_>, name: &OsStr, target: &[u8]) -> io::Result<()> {
    remove_at(dir, name)?;
    let target = CString::new(target).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rustix::fs::symlinkat(target.as_c_str(), dir, name)?)
}

/// Hard-links `from_name` in `from_dir` (the link itself if it is a symlink) as `name` in `dir`.
pub(crate) fn create_hard_link(
    from_dir: BorrowedFd<'_>,
    from_name: &OsStr,
    dir: BorrowedFd<'_>,
    name: &OsStr,
) -> io::Result<()> {
    remove_at(dir, name)?;
    Ok(rustix::fs::linkat(
        from_dir,
        from_name,
        dir,
        name,
        AtFlags::empty(),
    )?)
}

/// Sets the permission bits of a directory beneath `root`, if it still exists.
pub(crate) fn chmod_dir(root: BorrowedFd<'_>, path: &RelPath, mode: u32) -> io::Result<()> {
    match open_dir(root, path.components(), false, &mut |_| {}) {
        Ok(Some(fd)) => Ok(rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?),
        Ok(None) | Err(WalkError::Symlink(_)) | Err(WalkError::NotADirectory(_)) => Ok(()),
        Err(WalkError::Io(e)) => Err(e),
    }
}
