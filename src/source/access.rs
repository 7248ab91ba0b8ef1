//! Opening a segment file, for whom. The daemon reads files for its users; a file a user named
//! is read only while that user could read it themselves (mode bits of every folder on the way
//! and of the file, for their uid and groups), checked at every open, not once when the segment
//! was added: a link swapped in later must not lend the daemon's own access.
//!
//! Every open is non-blocking and takes regular files only (a FIFO would hang a worker).
//! For a user's file, the path is resolved first, judged, then opened with no link followed
//! (`RESOLVE_NO_SYMLINKS`), so what was judged is what is read; `/proc`, `/sys` and `/dev` are
//! refused (they would show the daemon's own process and devices).

use std::fs::File;
use std::io;
use std::ops::Deref;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

/// Folders whose files describe the reading process or the machine, not data.
const REFUSED_ROOTS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Whom a file is read for: the user who named it (never root, never the daemon itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReader {
    pub uid: u32,
    /// Their groups, as the group database says at the time of the read.
    pub gids: Vec<u32>,
}

/// A segment file and whom it is read for (`None`: the process itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: PathBuf,
    pub reader: Option<FileReader>,
}

impl SourceFile {
    pub fn new(path: PathBuf, reader: Option<FileReader>) -> SourceFile {
        SourceFile { path, reader }
    }
}

impl From<PathBuf> for SourceFile {
    fn from(path: PathBuf) -> SourceFile {
        SourceFile { path, reader: None }
    }
}

impl Deref for SourceFile {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

/// Opens `file` for reading as described in the module docs.
pub fn open(file: &SourceFile) -> io::Result<File> {
    let (path, resolve) = match &file.reader {
        None => (file.path.clone(), ResolveFlags::empty()),
        Some(reader) => {
            let resolved = std::fs::canonicalize(&file.path)?;
            if REFUSED_ROOTS.iter().any(|root| resolved.starts_with(root)) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "it is under {}, which holds no segment data",
                        resolved.iter().take(2).collect::<PathBuf>().display()
                    ),
                ));
            }
            readable_by(&resolved, reader.uid, &reader.gids)
                .map_err(|why| denied(reader.uid, &why))?;
            (
                resolved,
                ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            )
        }
    };
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = if resolve.is_empty() {
        rustix::fs::openat(rustix::fs::CWD, &path, flags, Mode::empty())?
    } else {
        rustix::fs::openat2(rustix::fs::CWD, &path, flags, Mode::empty(), resolve)?
    };
    let stat = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is not a regular file (a FIFO, device or folder cannot be a segment)",
        ));
    }
    // Reads block again, as the readers expect (a regular file never waits anyway).
    rustix::fs::fcntl_setfl(&fd, OFlags::empty())?;
    let file_handle = File::from(fd);
    if let Some(reader) = &file.reader {
        // The file opened is the one judged; its own mode is checked once more on it.
        let meta = file_handle.metadata()?;
        if !permits(
            meta.uid(),
            meta.gid(),
            meta.mode(),
            reader.uid,
            &reader.gids,
            0o4,
        ) {
            return Err(denied(reader.uid, "no read permission"));
        }
    }
    Ok(file_handle)
}

fn denied(uid: u32, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("the user who named this file (uid {uid}) cannot read it: {why}"),
    )
}

/// Whether `uid` with groups `gids` may read `path`: search permission on every folder of its
/// resolved path and read permission on the file, from the mode bits (as the kernel checks
/// them without ACLs). Resolving links first is enough: whoever can reach the target can read
/// it by its own path. POSIX ACL entries are not read: a named-user or named-group entry that
/// grants less than the group bits show is not seen.
pub fn readable_by(path: &Path, uid: u32, gids: &[u32]) -> Result<(), String> {
    if !path.is_absolute() {
        return Err("the path is not absolute".to_owned());
    }
    if uid == 0 {
        return Ok(());
    }
    let resolved = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
    let mut folder = PathBuf::from("/");
    let mut parts = resolved.components().skip(1).peekable();
    while let Some(part) = parts.next() {
        let meta = std::fs::metadata(&folder).map_err(|e| e.to_string())?;
        if !permits(meta.uid(), meta.gid(), meta.mode(), uid, gids, 0o1) {
            return Err(format!("no search permission on {}", folder.display()));
        }
        folder.push(part);
        if parts.peek().is_none() {
            let meta = std::fs::metadata(&folder).map_err(|e| e.to_string())?;
            if !permits(meta.uid(), meta.gid(), meta.mode(), uid, gids, 0o4) {
                return Err("no read permission".to_owned());
            }
        }
    }
    Ok(())
}

/// The owner, group or other bits that apply to `uid`, tested for `bit` (4 read, 1 search).
fn permits(owner: u32, group: u32, mode: u32, uid: u32, gids: &[u32], bit: u32) -> bool {
    let shift = if owner == uid {
        6
    } else if gids.contains(&group) {
        3
    } else {
        0
    };
    (mode >> shift) & bit != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Someone who owns nothing here and is in none of its groups.
    const STRANGER: u32 = 4_000_000_001;

    fn mode(p: &Path, m: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
    }

    fn for_stranger(path: &Path) -> SourceFile {
        SourceFile::new(
            path.to_path_buf(),
            Some(FileReader {
                uid: STRANGER,
                gids: vec![STRANGER],
            }),
        )
    }

    #[test]
    fn a_file_is_readable_by_someone_else_only_through_folders_they_may_search() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open_dir = dir.path().join("open");
        std::fs::create_dir(&open_dir).expect("mkdir");
        let file = open_dir.join("members.csv");
        std::fs::write(&file, "email\n").expect("write");
        let gids = [STRANGER];
        mode(dir.path(), 0o755);
        mode(&open_dir, 0o755);
        mode(&file, 0o644);
        assert_eq!(readable_by(&file, STRANGER, &gids), Ok(()));
        assert!(open(&for_stranger(&file)).is_ok());
        mode(&file, 0o640);
        assert_eq!(
            readable_by(&file, STRANGER, &gids),
            Err("no read permission".to_owned())
        );
        assert!(open(&for_stranger(&file)).is_err());
        mode(&file, 0o644);
        mode(&open_dir, 0o750);
        let err = readable_by(&file, STRANGER, &gids).expect_err("folder closed");
        assert!(err.starts_with("no search permission on "), "{err}");
        assert!(readable_by(Path::new("relative.csv"), STRANGER, &gids).is_err());
    }

    #[test]
    fn a_link_swapped_in_after_the_segment_was_added_is_judged_by_its_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        mode(dir.path(), 0o755);
        let private = dir.path().join("private.csv");
        std::fs::write(&private, "ssn\n1\n").expect("write");
        mode(&private, 0o600);
        let mine = dir.path().join("mine.csv");
        std::os::unix::fs::symlink(&private, &mine).expect("symlink");
        let err = open(&for_stranger(&mine)).expect_err("target not readable");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        // The process itself still reads what it may.
        assert!(open(&SourceFile::from(mine)).is_ok());
    }

    #[test]
    fn a_fifo_is_refused_without_blocking_and_proc_is_refused_for_users() {
        let dir = tempfile::tempdir().expect("tempdir");
        mode(dir.path(), 0o755);
        let fifo = dir.path().join("fifo.csv");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, FileType::Fifo, Mode::from(0o644), 0)
            .expect("mkfifo");
        let err = open(&SourceFile::from(fifo)).expect_err("a FIFO");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = open(&for_stranger(Path::new("/proc/self/maps"))).expect_err("proc");
        assert!(err.to_string().contains("under /proc"), "{err}");
    }
}
