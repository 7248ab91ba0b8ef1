//! Store faults: what the operating system or another process did to the database (a full disk,
//! a read-only file or mount, a write lock held too long, the file moved away, an I/O error),
//! told apart from bugs so that each is said once, naming the file, the cause and the fix.
//!
//! Also what keeps recovery free of manual steps: the `-wal` and `-shm` files a read-only
//! episode left without write permission are repaired at open, a database that vanished is
//! refused rather than silently replaced by an empty one, and a run whose finish could not be
//! written leaves a note in its export's lock file for the next start to record it by.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::runs::{RunCounts, RunStatus};

/// SQLite primary result codes (sqlite3.h); an extended code keeps its primary one in the low
/// byte.
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;
const SQLITE_READONLY: i64 = 8;
const SQLITE_IOERR: i64 = 10;
const SQLITE_FULL: i64 = 13;
const SQLITE_CANTOPEN: i64 = 14;
/// Below this much free space, an I/O error on the database's disk is taken for a full disk:
/// SQLite reports one as `SQLITE_IOERR_SHMSIZE` when the `-shm` file cannot grow, and a page
/// (4 KiB) plus a WAL frame header is the least a write needs.
const NEARLY_FULL_BYTES: u64 = 64 * 1024;
/// Size of the note a run whose finish failed leaves in its export's lock file. The lock file is
/// padded to it when the run starts, so that the note is written into space the file already
/// has: on a full disk, a new file or a longer one cannot be written.
pub(super) const NOTE_BYTES: usize = 4096;

/// What went wrong with the database, as far as its user can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No space left on the disk holding it.
    Full,
    /// The file, its folder or its mount cannot be written by this user.
    ReadOnly,
    /// Another process held the write lock past the busy timeout.
    Locked,
    /// The file is gone (moved or deleted while open).
    Missing,
    /// The disk reported an error; the SQLite result code is kept for the message.
    Io(i64),
}

/// The fault an extended SQLite result code reports, if it is one.
pub fn fault_of_code(code: i64) -> Option<Fault> {
    match code & 0xff {
        SQLITE_FULL => Some(Fault::Full),
        SQLITE_READONLY => Some(Fault::ReadOnly),
        SQLITE_BUSY | SQLITE_LOCKED => Some(Fault::Locked),
        SQLITE_CANTOPEN => Some(Fault::Missing),
        SQLITE_IOERR => Some(Fault::Io(code)),
        _ => None,
    }
}

/// The fault an operating-system error reports, if it is one.
pub fn fault_of_io(error: &std::io::Error) -> Option<Fault> {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::StorageFull => Some(Fault::Full),
        ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied => Some(Fault::ReadOnly),
        ErrorKind::NotFound => Some(Fault::Missing),
        _ => None,
    }
}

/// The fault behind a sqlx error, if any (a bug or a constraint is not a fault).
pub fn fault_of(error: &sqlx::Error) -> Option<Fault> {
    match error {
        sqlx::Error::Database(e) => e
            .code()
            .and_then(|c| c.parse::<i64>().ok())
            .and_then(fault_of_code),
        sqlx::Error::Io(e) => fault_of_io(e),
        sqlx::Error::Migrate(e) => match &**e {
            sqlx::migrate::MigrateError::Execute(e)
            | sqlx::migrate::MigrateError::ExecuteMigration(e, _) => fault_of(e),
            _ => None,
        },
        _ => None,
    }
}

impl FinishNote {
    /// The status the run would have finished with; `failed` if the word is unknown.
    pub fn status(&self) -> RunStatus {
        self.status.parse().unwrap_or(RunStatus::Failed)
    }
}

impl Fault {
    /// An I/O error on a disk with (nearly) no space left is a full disk.
    pub fn on_disk_of(self, database: &Path) -> Fault {
        match self {
            Fault::Io(_) if free_bytes(database).is_some_and(|b| b < NEARLY_FULL_BYTES) => {
                Fault::Full
            }
            other => other,
        }
    }

    /// The message: the file, the cause, what to do. `doing` says what failed.
    pub fn describe(self, database: Option<&Path>, doing: &str) -> String {
        let db = match database {
            Some(path) => format!("the database {}", path.display()),
            None => "the database".to_owned(),
        };
        let shown = database.map_or_else(|| "DATABASE".to_owned(), |p| p.display().to_string());
        match self {
            Fault::Full => format!(
                "the disk holding {db} is full ({doing} failed): free space on it, then run \
                 again"
            ),
            Fault::ReadOnly => format!(
                "{db} cannot be written by the user running acexport ({doing} failed): it, its \
                 -wal or -shm file or its folder is read-only. Make them writable for that user \
                 (`chmod u+w {shown}*`; `chown` them if another user owns them; remount the \
                 disk read-write if it is mounted read-only), then run again"
            ),
            Fault::Locked => format!(
                "{db} is locked by another process, which held its write lock for longer than \
                 acexport waits ({doing} failed): find it with `fuser {shown}`, let it finish \
                 or stop it, then run again"
            ),
            Fault::Missing => format!(
                "{db} is missing ({doing} failed): it was moved or deleted while acexport had \
                 it open. Put it back, then run again"
            ),
            Fault::Io(code) => format!(
                "the disk holding {db} reported an I/O error ({doing} failed, SQLite code \
                 {code}): check the disk and the system log (`dmesg`), then run again"
            ),
        }
    }
}

/// Free bytes for this user on the disk holding `database` (its folder, when the file is gone).
fn free_bytes(database: &Path) -> Option<u64> {
    let probe = if database.exists() {
        database
    } else {
        database.parent()?
    };
    let stats = rustix::fs::statvfs(probe).ok()?;
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// The `-wal` and `-shm` files of `database`.
pub(super) fn sidecars(database: &Path) -> [PathBuf; 2] {
    ["-wal", "-shm"].map(|suffix| {
        let mut name = database.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    })
}

/// Gives the `-wal` and `-shm` files the owner's read and write bits of the database when this
/// user owns them and they lack write permission (SQLite creates them with the database's mode,
/// so a read-only episode leaves them 0400 after the database is made writable again, and
/// every open then fails). Files of another user are left for the error to name.
pub(super) fn repair_sidecars(database: &Path) -> Vec<PathBuf> {
    let Ok(db) = std::fs::metadata(database) else {
        return Vec::new();
    };
    let me = rustix::process::geteuid().as_raw();
    let wanted = db.mode() & 0o600;
    if db.uid() != me || wanted != 0o600 {
        return Vec::new(); // the database itself is not writable: nothing to repair yet
    }
    let mut repaired = Vec::new();
    for sidecar in sidecars(database) {
        let Ok(meta) = std::fs::symlink_metadata(&sidecar) else {
            continue;
        };
        let mode = meta.mode() & 0o7777;
        if meta.is_file() && meta.uid() == me && mode & 0o600 != 0o600 {
            let fixed = (mode | 0o600) & 0o7777;
            if std::fs::set_permissions(&sidecar, std::fs::Permissions::from_mode(fixed)).is_ok() {
                repaired.push(sidecar);
            }
        }
    }
    repaired
}

/// What shows that a database was here before and has vanished (rather than never existing):
/// its `-wal` or `-shm` file, or the `locks` folder acexport keeps beside it.
pub(super) fn trace_of_vanished(database: &Path) -> Option<PathBuf> {
    let locks = database.parent().map(|d| d.join("locks"));
    sidecars(database)
        .into_iter()
        .chain(locks)
        .find(|p| p.exists())
}

/// A finish that could not be written: what the run would have recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FinishNote {
    pub run_id: i64,
    /// The status word (`failed`, ...) the run would have finished with.
    pub status: String,
    pub error: Option<String>,
    pub counts: RunCounts,
    /// Why the finish could not be written.
    pub fault: String,
}

/// Pads an export's lock file to [`NOTE_BYTES`], so that a note fits in space it has. Best
/// effort: on a disk already full the run fails at its first write anyway.
pub(super) fn reserve_note(lock_file: &Path) {
    let Ok(mut file) = OpenOptions::new().write(true).open(lock_file) else {
        return;
    };
    let short = file.metadata().is_ok_and(|m| m.len() < NOTE_BYTES as u64);
    if short {
        let _ = file.write_all(&[b' '; NOTE_BYTES]);
        let _ = file.sync_data();
    }
}

/// Writes `note` over the start of the lock file, within its reserved size.
pub(super) fn leave_note(lock_file: &Path, note: &FinishNote) -> std::io::Result<()> {
    let mut note = note.clone();
    let mut text = serde_json::to_vec(&note).map_err(std::io::Error::other)?;
    // Cut the texts (never the ids and counts) until the note fits.
    while text.len() > NOTE_BYTES {
        let cut = |s: &mut String| {
            let keep = s.floor_char_boundary(s.len() / 2);
            s.truncate(keep);
        };
        cut(&mut note.fault);
        if let Some(e) = note.error.as_mut() {
            cut(e);
        }
        text = serde_json::to_vec(&note).map_err(std::io::Error::other)?;
    }
    text.resize(NOTE_BYTES, b' ');
    let mut file = OpenOptions::new().write(true).open(lock_file)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&text)?;
    file.sync_data()
}

/// The note in an export's lock file, if one names `run_id`.
pub(super) fn read_note(lock_file: &Path, run_id: i64) -> Option<FinishNote> {
    let mut text = Vec::new();
    std::fs::File::open(lock_file)
        .ok()?
        .take(NOTE_BYTES as u64)
        .read_to_end(&mut text)
        .ok()?;
    let note: FinishNote = serde_json::from_slice(text.trim_ascii()).ok()?;
    (note.run_id == run_id).then_some(note)
}

/// Blanks the lock file's note once it has been recorded.
pub(super) fn clear_note(lock_file: &Path) {
    if let Ok(mut file) = OpenOptions::new().write(true).open(lock_file) {
        let _ = file.write_all(&[b' '; NOTE_BYTES]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_result_codes_are_told_apart_by_their_primary_code() {
        let cases = [
            (13, Some(Fault::Full)),
            (8, Some(Fault::ReadOnly)),
            (8 | (1 << 8), Some(Fault::ReadOnly)), // SQLITE_READONLY_RECOVERY
            (5, Some(Fault::Locked)),
            (5 | (3 << 8), Some(Fault::Locked)), // SQLITE_BUSY_TIMEOUT
            (6, Some(Fault::Locked)),
            (14, Some(Fault::Missing)),
            (10, Some(Fault::Io(10))),
            (4874, Some(Fault::Io(4874))), // SQLITE_IOERR_SHMSIZE
            (19, None),                    // a constraint: a bug or bad data, not a fault
            (1, None),
            (11, None), // corrupt: not something removing a cause fixes
        ];
        for (code, want) in cases {
            assert_eq!(fault_of_code(code), want, "code {code}");
        }
    }

    #[test]
    fn operating_system_errors_are_told_apart_by_their_kind() {
        let cases = [
            (rustix::io::Errno::NOSPC, Some(Fault::Full)),
            (rustix::io::Errno::ROFS, Some(Fault::ReadOnly)),
            (rustix::io::Errno::ACCESS, Some(Fault::ReadOnly)),
            (rustix::io::Errno::NOENT, Some(Fault::Missing)),
            (rustix::io::Errno::INVAL, None),
        ];
        for (errno, want) in cases {
            let error = std::io::Error::from_raw_os_error(errno.raw_os_error());
            assert_eq!(fault_of_io(&error), want, "{error}");
        }
    }

    #[test]
    fn each_message_names_the_file_and_what_to_do() {
        let db = Path::new("/var/lib/acexport/acexport.db");
        let cases = [
            (Fault::Full, "free space"),
            (Fault::ReadOnly, "chmod u+w /var/lib/acexport/acexport.db*"),
            (Fault::Locked, "fuser /var/lib/acexport/acexport.db"),
            (Fault::Missing, "Put it back"),
            (Fault::Io(10), "dmesg"),
        ];
        for (fault, fix) in cases {
            let text = fault.describe(Some(db), "creating a run");
            assert!(text.contains(&db.display().to_string()), "{text}");
            assert!(text.contains("(creating a run failed"), "{text}");
            assert!(text.contains(fix), "{text}");
        }
    }

    #[test]
    fn a_note_fits_its_reserved_space_and_is_read_back_only_for_its_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = dir.path().join("export-1.lock");
        std::fs::write(&lock, b"").expect("create");
        reserve_note(&lock);
        let note = FinishNote {
            run_id: 7,
            status: RunStatus::Failed.as_str().to_owned(),
            error: Some("é".repeat(5000)),
            counts: RunCounts {
                rows_read: 600,
                ..RunCounts::default()
            },
            fault: "the disk is full".repeat(500),
        };

        leave_note(&lock, &note).expect("write");

        assert_eq!(
            std::fs::metadata(&lock).expect("meta").len(),
            NOTE_BYTES as u64
        );
        let read = read_note(&lock, 7).expect("its note");
        assert_eq!((read.run_id, read.counts.rows_read), (7, 600));
        assert!(read.fault.starts_with("the disk is full"));
        assert!(read_note(&lock, 8).is_none(), "another run's");
        clear_note(&lock);
        assert!(read_note(&lock, 7).is_none(), "cleared");
    }

    #[test]
    fn write_permission_is_given_back_to_sidecars_left_read_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("acexport.db");
        std::fs::write(&db, b"").expect("db");
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let [wal, shm] = sidecars(&db);
        for file in [&wal, &shm] {
            std::fs::write(file, b"").expect("sidecar");
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        }

        let repaired = repair_sidecars(&db);

        assert_eq!(repaired, [wal.clone(), shm.clone()]);
        for file in [&wal, &shm] {
            let mode = std::fs::metadata(file).expect("meta").mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", file.display());
        }
    }
}
