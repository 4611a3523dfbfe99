//! Host-wide claims on sandbox uids: `<uid_lock_dir>/<uid>.lock`, held with an exclusive, non-blocking `flock`.
//!
//! Every local runtime on the host, whatever its state directory, claims a uid by locking its file before
//! anything runs as that uid, and keeps the lock until no process of the uid is left. So two runtimes whose
//! uid ranges overlap never run as the same uid at once, and "kill every process of the uid" is only done while
//! holding its lock ([`UidLock`] is required by the functions that do it): then the uid is nobody else's.
//!
//! The kernel drops a lock when its holder dies (the file is closed), so a crashed dispatcher leaves no stale
//! claim. `flock` locks belong to the open file description: two opens in one process exclude each other too.
//! The file is opened close-on-exec, so a sandbox never inherits the lock.
//!
//! # No lock file is left behind
//! A holder unlinks its file while still holding the lock, then closes it (the classic pattern). A claimant
//! that opened the file just before the unlink and locks it just after holds a lock on a file that no longer
//! has that name: after locking, it checks that the path still names the inode it locked (and that the inode
//! is still linked), and starts over otherwise. So at any time at most one holder has a lock on the file the
//! name points to, and a released uid leaves no file. A lock file found *with content* when claiming it was
//! left by a holder that died without releasing it (a crash: the kernel dropped its lock, nobody unlinked):
//! [`UidLock::previous`] returns what it noted, and the claimant kills the uid's leftovers.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;
use rustix::io::Errno;

use crate::BackendError;

/// An exclusive host-wide claim on one sandbox uid; released when dropped.
#[derive(Debug)]
pub(crate) struct UidLock {
    uid: u32,
    file: std::fs::File,
    /// The file's path: unlinked on release. `None` once handed over to another process (which unlinks it).
    path: Option<PathBuf>,
    /// What a previous holder that died without releasing the uid noted in the file.
    previous: Option<String>,
}

/// How many times a claim starts over when the file it locked was unlinked by its releasing holder meanwhile.
const CLAIM_ATTEMPTS: usize = 64;

impl UidLock {
    /// Locks `uid` if no one holds it; `Ok(None)` if someone (this process included) does.
    pub fn try_acquire(dir: &Path, uid: u32) -> std::io::Result<Option<Self>> {
        let path = dir.join(format!("{uid}.lock"));
        for _ in 0..CLAIM_ATTEMPTS {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&path)?;
            if !try_flock(&file, FlockOperation::NonBlockingLockExclusive)? {
                return Ok(None);
            }
            // Locked; but the holder we waited for may have unlinked this inode meanwhile (see the module docs).
            let locked = file.metadata()?;
            let named = match std::fs::symlink_metadata(&path) {
                Ok(m) => Some(m),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            let current = named.is_some_and(|m| {
                m.ino() == locked.ino() && m.dev() == locked.dev() && locked.nlink() > 0
            });
            if !current {
                continue;
            }
            let mut noted = String::new();
            let _ = file.read_to_string(&mut noted);
            let previous = (!noted.trim().is_empty()).then_some(noted);
            return Ok(Some(Self {
                uid,
                file,
                path: Some(path),
                previous,
            }));
        }
        Err(std::io::Error::other(format!(
            "{}: its holders kept releasing it while it was being claimed",
            path.display()
        )))
    }

    /// What a holder that died without releasing the uid noted in its file (`None` for a clean claim): its
    /// processes may still run as the uid.
    pub fn previous(&self) -> Option<&str> {
        self.previous.as_deref()
    }

    /// Closes this descriptor without releasing the claim: another process holds the lock through a shared
    /// descriptor ([`Self::share`]) and unlinks the file when it releases it.
    pub fn hand_over(mut self) {
        self.path = None;
    }

    /// The uid this lock holds.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// A second descriptor of the same lock (held while any is open): for a supervisor process.
    pub fn share(&self) -> std::io::Result<std::fs::File> {
        self.file.try_clone()
    }

    /// The lock on `uid` in `dir`, held through a descriptor inherited from the launching process.
    pub fn inherited(dir: &Path, uid: u32, file: std::fs::File) -> Self {
        Self {
            uid,
            file,
            path: Some(dir.join(format!("{uid}.lock"))),
            previous: None,
        }
    }

    /// Records who holds the uid in the lock file, for operators (`cat <uid_lock_dir>/<uid>.lock`).
    pub fn note(&mut self, holder: &str) {
        let _ = self.file.set_len(0);
        let _ = std::os::unix::fs::FileExt::write_all_at(&self.file, holder.as_bytes(), 0);
        let _ = self.file.flush();
    }
}

impl Drop for UidLock {
    /// Releases the claim: unlinks the file while still holding the lock, then the lock goes with the file.
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            // Empty first: if the unlink fails, the file left says "released cleanly", not "crashed".
            let _ = self.file.set_len(0);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "Could not remove a uid lock file");
            }
        }
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
        assert!(
            !dir.path().join("7.lock").exists(),
            "a released uid leaves no lock file"
        );
        let again = UidLock::try_acquire(dir.path(), 7).unwrap().expect("free");
        assert_eq!(again.previous(), None, "a clean release is no crash");
    }

    #[test]
    fn a_lock_file_left_by_a_holder_that_died_is_reported_as_its_previous_holder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("9.lock"), "123 /state run-a\n").unwrap();
        let lock = UidLock::try_acquire(dir.path(), 9).unwrap().expect("free");
        assert_eq!(lock.previous(), Some("123 /state run-a\n"));
        drop(lock);
        assert!(!dir.path().join("9.lock").exists());
    }

    #[test]
    fn a_claim_on_a_file_unlinked_by_its_releasing_holder_starts_over_on_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let holder = UidLock::try_acquire(dir.path(), 5).unwrap().expect("free");
        // A claimant opened the file before the holder released it...
        let stale = std::fs::File::open(dir.path().join("5.lock")).unwrap();
        drop(holder);
        // ...and another claimant took the uid on a new file.
        let winner = UidLock::try_acquire(dir.path(), 5).unwrap().expect("free");
        // The stale descriptor can be locked (its inode is unlinked), but it is no claim on the uid.
        assert!(
            super::try_flock(&stale, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap()
        );
        assert!(UidLock::try_acquire(dir.path(), 5).unwrap().is_none());
        let handed = UidLock::try_acquire(dir.path(), 6).unwrap().expect("free");
        let shared = handed.share().unwrap();
        handed.hand_over();
        assert!(
            dir.path().join("6.lock").exists(),
            "handing over keeps the file"
        );
        assert!(
            UidLock::try_acquire(dir.path(), 6).unwrap().is_none(),
            "still held through the shared descriptor"
        );
        drop((shared, winner));
    }
}
