//! Host-wide claims on sandbox uids: `<uid_lock_dir>/<uid>.lock`, held with an exclusive, non-blocking `flock`.
//!
//! Every local runtime on the host, whatever its state directory, claims a uid by locking its file before
//! anything runs as that uid, and keeps the lock until no process of the uid is left. So two runtimes whose
//! uid ranges overlap never run as the same uid at once, and "kill every process of the uid" is only done while
//! holding its lock ([`UidLock`] is required by the functions that do it): then the uid is nobody else's.
//!
//! The kernel drops a lock when its holder dies (the file is closed), so a crashed dispatcher leaves no stale
//! claim. `flock` locks belong to the open file description: two opens in one process exclude each other too.
//! The file is opened close-on-exec, so a sandbox never inherits the lock. Lock files are never deleted:
//! unlinking a file another process is about to lock would let two holders lock two files of one name.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rustix::fs::FlockOperation;
use rustix::io::Errno;

use crate::BackendError;

/// An exclusive host-wide claim on one sandbox uid; released when dropped.
#[derive(Debug)]
pub(crate) struct UidLock {
    uid: u32,
    file: std::fs::File,
}

impl UidLock {
    /// Locks `uid` if no one holds it; `Ok(None)` if someone (this process included) does.
    pub fn try_acquire(dir: &Path, uid: u32) -> std::io::Result<Option<Self>> {
        let path = dir.join(format!("{uid}.lock"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)?;
        Ok(try_flock(&file, FlockOperation::NonBlockingLockExclusive)?
            .then_some(Self { uid, file }))
    }

    /// The uid this lock holds.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// A second descriptor of the same lock (held while any is open): for a supervisor process.
    pub fn share(&self) -> std::io::Result<std::fs::File> {
        self.file.try_clone()
    }

    /// The lock on `uid`, held through a descriptor inherited from the launching process.
    pub fn inherited(uid: u32, file: std::fs::File) -> Self {
        Self { uid, file }
    }

    /// Records who holds the uid in the lock file, for operators (`cat <uid_lock_dir>/<uid>.lock`).
    pub fn note(&mut self, holder: &str) {
        let _ = self.file.set_len(0);
        let _ = std::os::unix::fs::FileExt::write_all_at(&self.file, holder.as_bytes(), 0);
        let _ = self.file.flush();
    }
}

/// Applies the non-blocking `flock` operation `op` to `file`: `Ok(false)` if another open file description
/// holds a conflicting lock (one of this process included).
pub(crate) fn try_flock(file: &std::fs::File, op: FlockOperation) -> std::io::Result<bool> {
    loop {
        match rustix::fs::flock(file, op) {
            Ok(()) => return Ok(true),
            Err(Errno::WOULDBLOCK) => return Ok(false),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Creates the lock directory (0700) and checks it is a root-owned directory, not a symlink.
pub(crate) fn prepare_dir(dir: &Path) -> Result<(), BackendError> {
    std::fs::create_dir_all(dir).map_err(BackendError::io("creating", dir))?;
    let meta = std::fs::symlink_metadata(dir).map_err(BackendError::io("inspecting", dir))?;
    if !meta.is_dir() || meta.uid() != 0 {
        return Err(BackendError::Permanent(format!(
            "the sandbox uid lock directory {} must be a directory owned by root",
            dir.display()
        )));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(BackendError::io("chmod", dir))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::UidLock;

    #[test]
    fn a_uid_lock_excludes_every_other_holder_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = UidLock::try_acquire(dir.path(), 7).unwrap().expect("free");
        first.note("holder\n");
        // Another open of the same file, even in this process, is refused; other uids are independent.
        assert!(UidLock::try_acquire(dir.path(), 7).unwrap().is_none());
        let other = UidLock::try_acquire(dir.path(), 8).unwrap().expect("free");
        assert_eq!((first.uid(), other.uid()), (7, 8));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("7.lock")).unwrap(),
            "holder\n"
        );
        drop(first);
        assert!(UidLock::try_acquire(dir.path(), 7).unwrap().is_some());
    }
}
