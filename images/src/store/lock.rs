//! `flock` locks on files under `<dir>/locks/`, shared by every process using the store.
//!
//! A lock belongs to an open file description: two opens of one file conflict even within one process,
//! and the kernel drops the lock when its holder dies, so no lock is ever stale.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;
use rustix::io::Errno;

/// A held lock; released on drop.
#[derive(Debug)]
pub(crate) struct FileLock {
    _file: File,
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

impl FileLock {
    /// Waits for the lock (on a blocking thread, so the runtime keeps running).
    pub(crate) async fn acquire(path: PathBuf, exclusive: bool) -> io::Result<Self> {
        let op = if exclusive {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::LockShared
        };
        tokio::task::spawn_blocking(move || {
            let file = open(&path)?;
            rustix::fs::flock(&file, op)?;
            Ok(Self { _file: file })
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Waits for the lock on this thread (for code already on a blocking thread).
    pub(crate) fn acquire_blocking(path: &Path) -> io::Result<Self> {
        let file = open(path)?;
        rustix::fs::flock(&file, FlockOperation::LockExclusive)?;
        Ok(Self { _file: file })
    }

    /// Takes the exclusive lock if nobody holds it; `None` if somebody does. Creates the file if missing
    /// only when `create` is set (otherwise a missing file is a `NotFound` error).
    pub(crate) fn try_exclusive(path: &Path, create: bool) -> io::Result<Option<Self>> {
        let file = if create {
            open(path)?
        } else {
            OpenOptions::new().write(true).open(path)?
        };
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
