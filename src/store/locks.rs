//! Advisory file locks next to the database: one per export while it runs, one for the daemon.
//! The kernel releases them when the holder dies, by any means (kill -9, power loss), so "is its
//! owner still alive?" never depends on process ids, which are reused after a reboot and hidden
//! from other users under `ProtectProc=invisible`.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::StoreError;

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct Lock {
    _file: File,
    path: PathBuf,
}

impl Lock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Tries to take the lock at `path`; `None` when another process holds it.
pub fn try_lock(path: &Path) -> Result<Option<Lock>, StoreError> {
    let io = |source: std::io::Error| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        super::folder::ensure_private(dir)?;
    }
    // O_NOFOLLOW: a link planted in place of a lock file is refused, not opened (and created
    // at its target).
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(Lock {
            _file: file,
            path: path.to_path_buf(),
        })),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("locks/x.lock");
        let first = try_lock(&path).expect("io").expect("free");
        assert!(try_lock(&path).expect("io").is_none(), "held");
        drop(first);
        assert!(try_lock(&path).expect("io").is_some(), "released");
    }

    #[test]
    fn a_link_planted_in_place_of_a_lock_file_is_refused_and_its_target_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let locks = dir.path().join("locks");
        std::fs::create_dir(&locks).expect("mkdir");
        let target = dir.path().join("acexport.db");
        std::os::unix::fs::symlink(&target, locks.join("x.lock")).expect("symlink");

        let err = try_lock(&locks.join("x.lock")).expect_err("refused");

        assert!(err.to_string().contains("x.lock"), "{err}");
        assert!(!target.exists(), "nothing created at the link's target");
    }
}
