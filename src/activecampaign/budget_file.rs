//! Where an account's budget lives so that every process on the host shares it: one small file
//! per account in the state folder's `locks/`, read and rewritten under an advisory lock
//! (`flock`) for the few microseconds a permit takes. The kernel drops the lock when its holder
//! dies, by any means, so a crash never leaves the budget locked; what the file says stays, so
//! a process started right after a crash carries on from the spacing of the one that died.
//!
//! Times are nanoseconds of the system's monotonic clock (`CLOCK_MONOTONIC`): the same for every
//! process until a reboot, and never stepped by NTP. The file names the boot it was written in,
//! so times from an earlier boot are dropped, and any time further ahead than a budget can
//! legitimately look ([`HORIZON`]) is dropped too, so a damaged file never stalls sending.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use super::budget::Slots;

/// The furthest ahead a stored time can be: a `Retry-After` pause is capped at an hour
/// (`retry::parse_retry_after`), and the longest spacing (one bulk import a minute at 98%)
/// is 62 s. Anything later is from a damaged file, or another boot whose id could not be read.
pub(super) const HORIZON: Duration = Duration::from_secs(3600 + 62);
/// Where Linux gives the id of the current boot.
const BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";
/// Stands for the boot id where it cannot be read: only [`HORIZON`] then guards against times
/// of an earlier boot.
const UNKNOWN_BOOT: &str = "unknown-boot";
/// Longest boot id kept (Linux's are 36-character UUIDs).
const MAX_BOOT_ID_CHARS: usize = 36;
/// Most bytes read from a budget file: a valid one is under 130.
const MAX_FILE_BYTES: u64 = 512;

/// Now, in nanoseconds of the system's monotonic clock.
pub(super) fn now() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// The id of the current boot, read once.
fn boot_id() -> &'static str {
    static BOOT: OnceLock<String> = OnceLock::new();
    BOOT.get_or_init(|| {
        std::fs::read_to_string(BOOT_ID_FILE)
            .ok()
            .map(|id| id.trim().to_owned())
            .filter(|id| {
                !id.is_empty()
                    && id.len() <= MAX_BOOT_ID_CHARS
                    && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
            })
            .unwrap_or_else(|| UNKNOWN_BOOT.to_owned())
    })
}

/// One account's shared budget file.
#[derive(Debug)]
pub(super) struct BudgetFile {
    path: PathBuf,
}

impl BudgetFile {
    /// The file for `host` in `dir` (the state folder's `locks/`, created owner-only if
    /// missing). Nothing is opened yet.
    pub(super) fn new(dir: &Path, host: &str) -> BudgetFile {
        BudgetFile {
            path: dir.join(format!("budget-{}", file_name_part(host))),
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the slots under the lock, lets `change` update them at `now` (read under the lock,
    /// so every process sees time go forward), and writes them back if they changed. `None`
    /// when another process holds the lock this instant.
    pub(super) fn update<R>(
        &self,
        change: impl FnOnce(&mut Slots, u64) -> R,
    ) -> io::Result<Option<R>> {
        let file = match self.open() {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.make_folder()?;
                self.open()?
            }
            Err(e) => return Err(e),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => return Err(e),
        }
        let now = now();
        let read = read_text(&file)?;
        let stored = parse(&read, boot_id(), now);
        let mut slots = stored;
        let result = change(&mut slots, now);
        if slots != stored {
            let text = format(&slots, boot_id());
            file.write_all_at(text.as_bytes(), 0)?;
            if read.len() != text.len() {
                file.set_len(text.len() as u64)?;
            }
        }
        // Closing the file releases the lock.
        Ok(Some(result))
    }

    fn open(&self) -> io::Result<File> {
        // O_NOFOLLOW: a link planted in place of the file is refused, not followed.
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&self.path)
    }

    /// Creates `locks/` owner-only; the state folder around it exists (the store is in it).
    fn make_folder(&self) -> io::Result<()> {
        let Some(dir) = self.path.parent() else {
            return Ok(());
        };
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    }
}

/// `host` as part of a file name, one to one: letters, digits, dots and dashes as they are,
/// any other byte as `_` and two hex digits (`127.0.0.1:8080` → `127.0.0.1_3a8080`).
fn file_name_part(host: &str) -> String {
    let mut out = String::with_capacity(host.len());
    for byte in host.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'-' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("_{byte:02x}"));
        }
    }
    out
}

fn read_text(file: &File) -> io::Result<String> {
    let len = file.metadata()?.len().min(MAX_FILE_BYTES);
    let mut buf = vec![0; usize::try_from(len).unwrap_or(0)];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    buf.truncate(filled);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The file's text: the boot id, then the four times, fixed width so a rewrite is the same
/// length.
fn format(slots: &Slots, boot: &str) -> String {
    format!(
        "{boot} {:020} {:020} {:020} {:020}\n",
        slots.requests, slots.bulk, slots.polls, slots.paused_until
    )
}

/// The slots a file's text holds: none from another boot or from text that is not ours, and
/// no time beyond [`HORIZON`] from `now`.
fn parse(text: &str, boot: &str, now: u64) -> Slots {
    let fields: Vec<&str> = text.split_ascii_whitespace().collect();
    let [stored_boot, requests, bulk, polls, paused_until] = fields[..] else {
        return Slots::default();
    };
    if stored_boot != boot {
        return Slots::default();
    }
    let latest = now.saturating_add(HORIZON.as_nanos() as u64);
    let time = |text: &str| text.parse::<u64>().ok().filter(|t| *t <= latest);
    match (time(requests), time(bulk), time(polls), time(paused_until)) {
        (Some(requests), Some(bulk), Some(polls), Some(paused_until)) => Slots {
            requests,
            bulk,
            polls,
            paused_until,
        },
        _ => Slots::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: &str = "3c3668ca-7f22-4af5-b3dd-4c3e2ba28e15";

    fn slots(requests: u64, bulk: u64, polls: u64, paused_until: u64) -> Slots {
        Slots {
            requests,
            bulk,
            polls,
            paused_until,
        }
    }

    #[test]
    fn host_names_become_distinct_file_names() {
        let cases = [
            ("acme.api-us1.com", "acme.api-us1.com"),
            ("127.0.0.1:8080", "127.0.0.1_3a8080"),
            ("[::1]:8080", "_5b_3a_3a1_5d_3a8080"),
            ("a_3a1", "a_5f3a1"),
            ("../x", ".._2fx"),
        ];
        for (host, part) in cases {
            assert_eq!(file_name_part(host), part, "{host}");
        }
    }

    #[test]
    fn what_is_written_reads_back_at_the_same_length() {
        let written = slots(5, 6_000_000_000, 7, 0);
        let later = slots(u64::MAX / 4, 1, 2, 3);

        let text = format(&written, BOOT);

        assert_eq!(parse(&text, BOOT, 10), written);
        assert_eq!(text.len(), format(&later, BOOT).len());
    }

    #[test]
    fn a_file_that_cannot_be_trusted_holds_no_slots() {
        let now = 1_000_000_000;
        let beyond = now + HORIZON.as_nanos() as u64 + 1;
        let good = format(&slots(now, now, now, now), BOOT);
        let cases = [
            ("another boot", format(&slots(now, 0, 0, 0), "other-boot")),
            ("empty", String::new()),
            ("cut short", good[..good.len() / 2].to_owned()),
            ("not numbers", format!("{BOOT} a b c d\n")),
            ("too far ahead", format(&slots(0, 0, 0, beyond), BOOT)),
        ];
        for (what, text) in cases {
            assert_eq!(parse(&text, BOOT, now), Slots::default(), "{what}");
        }
    }

    #[test]
    fn a_planted_link_is_refused_and_its_target_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("acexport.db");
        let file = BudgetFile::new(dir.path(), "acme.api-us1.com");
        std::os::unix::fs::symlink(&target, file.path()).expect("symlink");

        let result = file.update(|_, _| ());

        assert!(result.is_err(), "{result:?}");
        assert!(!target.exists(), "nothing created at the link's target");
    }

    #[test]
    fn the_budget_stays_locked_only_while_its_holder_lives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = BudgetFile::new(&dir.path().join("locks"), "acme.api-us1.com");
        file.update(|_, _| ()).expect("create");
        // Another process takes the lock (`flock` on a descriptor the shell then hands to
        // `sleep`) and is killed while holding it.
        let mut holder = std::process::Command::new("sh")
            .args(["-c", "exec 9<>\"$0\" && flock 9 && exec sleep 30"])
            .arg(file.path())
            .spawn()
            .expect("start sh");
        let held = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            matches!(file.update(|_, _| ()), Ok(None))
        });
        holder.kill().expect("kill -9");
        holder.wait().expect("reap");

        let after = file.update(|_, _| ());

        assert!(held, "the other process held the lock");
        assert!(matches!(after, Ok(Some(()))), "{after:?}");
    }
}
