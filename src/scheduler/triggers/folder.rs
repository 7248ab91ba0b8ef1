//! The trigger folder on disk. Every file the daemon creates, moves, reads, lists or deletes in
//! `daemon.trigger_dir` goes through this module, and so does the writer's side.
//!
//! Members of the trigger group may write to the folder and to its subfolders, so any name
//! there may be a symbolic link, a hard link to a file of the daemon, a FIFO or a device, and
//! may be swapped between two calls. Hence:
//! - names are resolved relative to directory descriptors opened once; `processing/` and
//!   `rejected/` are opened with `O_NOFOLLOW`, so one replaced by a link is refused, not
//!   followed;
//! - reads open with `O_NOFOLLOW | O_NONBLOCK` and check what was opened with `fstat`, after
//!   the open (a check before it would look at what may no longer be there);
//! - every new file is created with `O_EXCL`, never an existing one opened for writing;
//! - a writer's file is never written, truncated or chmod-ed (it may be a hard link): it is
//!   read, boundedly, and unlinked; `rejected/` keeps a bounded copy and a bounded number of
//!   entries.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::{MAX_TRIGGER_BYTES, TriggerError, is_key, new_key};

/// Claimed files, named by their key, until the caller finishes or rejects them.
pub(super) const PROCESSING_DIR: &str = "processing";
/// Files that could not be used: a bounded copy beside a `<name>.reason` text.
pub(super) const REJECTED_DIR: &str = "rejected";
/// Suffix of the text file explaining a rejection.
pub(super) const REASON_SUFFIX: &str = ".reason";
/// Most of a rejected file kept in `rejected/`: all of any request the protocol allows, and
/// not the rest of a file of a gigabyte.
pub(super) const MAX_KEPT_BYTES: u64 = MAX_TRIGGER_BYTES;
/// Rejections kept in `rejected/` (a copy and a reason each); the oldest go first, so a writer
/// who keeps dropping bad files cannot fill the disk.
pub(super) const MAX_REJECTED_KEPT: usize = 100;
/// Names tried in `rejected/` before giving up; a taken name means someone planted it there.
const NAME_ATTEMPTS: usize = 8;
/// The trigger folder and its subfolders: the service user and its group (the tools that drop
/// triggers) may write, others may not look. Sticky: a request is authorized as its file's
/// owner, so no one may rename or remove a file they do not own (a copy the daemon kept in
/// `rejected/`, moved back into the folder, would otherwise ask as the daemon's own user).
const DIR_MODE: u32 = 0o1770;
/// A kept copy: its content may come from any file a hard link reached, so owner only.
const COPY_MODE: u32 = 0o600;
/// A reason file: the group that drops triggers may read why one was refused.
const REASON_MODE: u32 = 0o640;
/// A writer's new trigger file: the daemon reads it (through the folder's default ACL, or as
/// its owner), nobody else may change it (the request is authorized as its owner).
const TRIGGER_FILE_MODE: u32 = 0o640;

/// Where in the trigger folder a name lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Area {
    /// The trigger folder itself, where writers drop files.
    Top,
    /// `processing/`: claimed files.
    Processing,
    /// `rejected/`: copies and reasons.
    Rejected,
}

/// The start of a file read from the folder.
#[derive(Debug)]
pub(super) struct Head {
    /// The first bytes, at most the limit asked for.
    pub bytes: Vec<u8>,
    /// The size `fstat` reported when the file was opened.
    pub size: u64,
    /// The file's owner, as `fstat` reported it: whom the request is authorized as.
    pub owner: u32,
}

/// The trigger folder, opened: descriptors for it and its two subfolders.
#[derive(Debug)]
pub(super) struct Folder {
    /// The folder's path, for messages only: every access goes through the descriptors.
    path: PathBuf,
    top: OwnedFd,
    processing: OwnedFd,
    rejected: OwnedFd,
}

impl Folder {
    /// Opens `dir` (creating it if missing) and its `processing/` and `rejected/` subfolders
    /// (creating them if missing). A subfolder that is a link or not a folder is refused
    /// with an error naming it.
    pub(super) fn open(dir: &Path) -> Result<Folder, TriggerError> {
        ensure_dir(dir)?;
        let top = open_dir(dir).map_err(TriggerError::io("open", dir))?;
        let processing = open_subdir(&top, dir, PROCESSING_DIR)?;
        let rejected = open_subdir(&top, dir, REJECTED_DIR)?;
        Ok(Folder {
            path: dir.to_owned(),
            top,
            processing,
            rejected,
        })
    }

    fn fd(&self, area: Area) -> &OwnedFd {
        match area {
            Area::Top => &self.top,
            Area::Processing => &self.processing,
            Area::Rejected => &self.rejected,
        }
    }

    /// The path of `name` in `area`, for messages.
    fn path(&self, area: Area, name: &OsStr) -> PathBuf {
        match area {
            Area::Top => self.path.join(name),
            Area::Processing => self.path.join(PROCESSING_DIR).join(name),
            Area::Rejected => self.path.join(REJECTED_DIR).join(name),
        }
    }

    /// The names in `area`, in no order, raw (any bytes). Folders are left out: the protocol
    /// has none below its subfolders, and nothing in one is ever read.
    pub(super) fn names(&self, area: Area) -> Result<Vec<OsString>, TriggerError> {
        let list_error = |e: Errno| TriggerError::Io {
            action: "list",
            path: self.path(area, OsStr::new("")),
            source: e.into(),
        };
        let entries = rustix::fs::Dir::read_from(self.fd(area)).map_err(list_error)?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(list_error)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." || entry.file_type() == FileType::Directory {
                continue;
            }
            names.push(OsStr::from_bytes(name).to_owned());
        }
        Ok(names)
    }

    /// Moves `name` from the trigger folder to `processing/<key>`. `false` when it is gone:
    /// someone else took it between listing and renaming.
    pub(super) fn claim(&self, name: &OsStr, key: &str) -> Result<bool, TriggerError> {
        match rustix::fs::renameat(&self.top, name, &self.processing, key) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(TriggerError::Io {
                action: "claim trigger file",
                path: self.path(Area::Top, name),
                source: e.into(),
            }),
        }
    }

    /// The first `limit` bytes of the regular file `name` in `area`, without following a link
    /// or blocking on a FIFO. The error says why it cannot be used, for a reason file.
    pub(super) fn read(&self, area: Area, name: &OsStr, limit: u64) -> Result<Head, String> {
        const NOT_REGULAR: &str = "is not a regular file";
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(self.fd(area), name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => return Err(format!("{NOT_REGULAR} (a symbolic link)")),
            // What opening a socket says.
            Err(Errno::NXIO) => return Err(NOT_REGULAR.into()),
            Err(e) => return Err(format!("cannot be opened: {}", io::Error::from(e))),
        };
        let stat = rustix::fs::fstat(&fd).map_err(|e| format!("cannot be inspected: {e}"))?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(NOT_REGULAR.into());
        }
        // A request is authorized as its file's owner: the file must be theirs alone. Another
        // name for it (a hard link) or write access for others would let someone else speak
        // with the owner's authority.
        if stat.st_nlink != 1 {
            return Err("has other hard links; write a new file instead".into());
        }
        if stat.st_mode & 0o022 != 0 {
            return Err(format!(
                "can be written by others than its owner (mode {:o}); write it with umask 022",
                stat.st_mode & 0o777
            ));
        }
        let mut bytes = Vec::new();
        File::from(fd)
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot be read: {e}"))?;
        Ok(Head {
            bytes,
            size: u64::try_from(stat.st_size).unwrap_or(0),
            owner: stat.st_uid,
        })
    }

    /// Deletes `name` from `area`; one already gone is not an error.
    pub(super) fn remove(&self, area: Area, name: &OsStr) -> Result<(), TriggerError> {
        match rustix::fs::unlinkat(self.fd(area), name, AtFlags::empty()) {
            // A folder swapped in under the name: left there, ignored like every folder.
            Ok(()) | Err(Errno::NOENT | Errno::ISDIR) => Ok(()),
            Err(e) => Err(TriggerError::Io {
                action: "delete trigger file",
                path: self.path(area, name),
                source: e.into(),
            }),
        }
    }

    /// Makes renames and creations in `area` durable: a claim lost to a power cut would bring
    /// the file back under its old name and a new key, and run it twice.
    pub(super) fn sync(&self, area: Area) -> Result<(), TriggerError> {
        rustix::fs::fsync(self.fd(area)).map_err(|e| TriggerError::Io {
            action: "sync directory",
            path: self.path(area, OsStr::new("")),
            source: e.into(),
        })
    }

    /// Rejects `name` in `area`: writes `rejected/<entry>.reason` holding `reason` and, when
    /// given, `rejected/<entry>` holding at most [`MAX_KEPT_BYTES`] of `kept`; then deletes
    /// `name` and removes the oldest rejections past [`MAX_REJECTED_KEPT`]. When `entry` or its
    /// reason name is taken, a new key made from `label` is used instead. Returns the name used.
    pub(super) fn reject(
        &self,
        area: Area,
        name: &OsStr,
        entry: String,
        label: &str,
        kept: Option<&[u8]>,
        reason: &str,
    ) -> Result<String, TriggerError> {
        let mut entry = entry;
        let mut attempts = 0;
        loop {
            match self.write_rejection(&entry, kept, reason) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < NAME_ATTEMPTS => {
                    attempts += 1;
                    entry = new_key(label);
                }
                Err(source) => {
                    return Err(TriggerError::Io {
                        action: "write rejection",
                        path: self.path(Area::Rejected, OsStr::new(&entry)),
                        source,
                    });
                }
            }
        }
        // The copy and reason first: a crash before the delete leaves the file to be rejected
        // again, rather than a file gone without a word.
        self.sync(Area::Rejected)?;
        self.remove(area, name)?;
        self.trim_rejected();
        Ok(entry)
    }

    /// Creates the reason file and the copy, each with `O_EXCL`; on failure removes what it
    /// created, so the name can be tried again or given up.
    fn write_rejection(&self, entry: &str, kept: Option<&[u8]>, reason: &str) -> io::Result<()> {
        let reason_name = format!("{entry}{REASON_SUFFIX}");
        let mut reason_file = create_new(&self.rejected, &reason_name, REASON_MODE)?;
        let written = reason_file.write_all(reason.as_bytes()).and_then(|()| {
            let Some(kept) = kept else { return Ok(()) };
            let end = kept
                .len()
                .min(usize::try_from(MAX_KEPT_BYTES).unwrap_or(usize::MAX));
            create_new(&self.rejected, entry, COPY_MODE)?.write_all(&kept[..end])
        });
        if written.is_err() {
            // Only a file this call created: a name taken by someone else was not opened.
            let _ = rustix::fs::unlinkat(&self.rejected, reason_name.as_str(), AtFlags::empty());
        }
        written
    }

    /// Removes the oldest rejections past [`MAX_REJECTED_KEPT`]. Only names this module makes
    /// (claim keys, which sort by time) are counted and removed; anything else someone put in
    /// `rejected/` is theirs. Failures are logged: the rejection itself is already done.
    fn trim_rejected(&self) {
        let names = match self.names(Area::Rejected) {
            Ok(names) => names,
            Err(error) => {
                tracing::warn!(%error, "Cannot trim the rejected trigger files");
                return;
            }
        };
        let stem = |name: &OsString| {
            let name = name.to_str()?;
            let stem = name.strip_suffix(REASON_SUFFIX).unwrap_or(name);
            is_key(stem).then(|| stem.to_owned())
        };
        let mut stems: Vec<String> = names.iter().filter_map(stem).collect();
        stems.sort();
        stems.dedup();
        let Some(excess) = stems.len().checked_sub(MAX_REJECTED_KEPT) else {
            return;
        };
        let oldest: HashSet<&String> = stems[..excess].iter().collect();
        for name in &names {
            if stem(name).is_some_and(|s| oldest.contains(&s))
                && let Err(error) = self.remove(Area::Rejected, name)
            {
                tracing::warn!(%error, "Cannot trim the rejected trigger files");
            }
        }
    }
}

/// Creates `name` in `dir` for writing: `O_EXCL`, so an existing file or a planted link
/// fails with `AlreadyExists` instead of being opened.
fn create_new(dir: &OwnedFd, name: &str, mode: u32) -> io::Result<File> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from(mode))?;
    Ok(File::from(fd))
}

/// Opens the configured trigger folder. It may be a link: the administrator set the path, and
/// only what is inside the folder is the trigger group's to change.
fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(rustix::fs::open(dir, flags, Mode::empty())?)
}

/// Opens (creating it if missing) the subfolder `name` of the trigger folder, refusing a link.
fn open_subdir(top: &OwnedFd, dir: &Path, name: &str) -> Result<OwnedFd, TriggerError> {
    let path = dir.join(name);
    let created = match rustix::fs::mkdirat(top, name, Mode::from(DIR_MODE)) {
        Ok(()) => true,
        Err(Errno::EXIST) => false,
        Err(e) => return Err(TriggerError::io("create directory", &path)(e.into())),
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(top, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::LOOP | Errno::NOTDIR) => return Err(TriggerError::NotAFolder { path }),
        Err(e) => return Err(TriggerError::io("open", &path)(e.into())),
    };
    if created {
        // The umask (often 022, 077 under systemd) would drop group write, which trigger
        // writers need. Only a folder made just now: someone else's is not ours to change.
        rustix::fs::fchmod(&fd, Mode::from(DIR_MODE))
            .map_err(|e| TriggerError::io("set permissions on", &path)(e.into()))?;
    }
    Ok(fd)
}

/// Creates the trigger folder `dir` (and missing parents) with [`DIR_MODE`] if it does not
/// exist. Path-based: the folder's own path is the administrator's setting, not the group's.
pub(in crate::scheduler) fn ensure_dir(dir: &Path) -> Result<(), TriggerError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(TriggerError::io("create directory", dir))?;
    // The umask would drop group write, which trigger writers need.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
        .map_err(TriggerError::io("set permissions on", dir))
}

/// The writer's side: creates `temp` in `dir` with `O_EXCL | O_NOFOLLOW`, writes and syncs
/// `body`, renames it to `name` and syncs the folder. A failure removes the temporary file.
pub(super) fn write_new(dir: &Path, temp: &str, name: &str, body: &[u8]) -> io::Result<()> {
    let top = open_dir(dir)?;
    let mut file = create_new(&top, temp, TRIGGER_FILE_MODE)?;
    let written = file
        .write_all(body)
        .and_then(|()| file.sync_all())
        .and_then(|()| Ok(rustix::fs::renameat(&top, temp, &top, name)?))
        .and_then(|()| Ok(rustix::fs::fsync(&top)?));
    if written.is_err() {
        // Best effort: a leftover temporary name is ignored by claimers anyway.
        let _ = rustix::fs::unlinkat(&top, temp, AtFlags::empty());
    }
    written
}
