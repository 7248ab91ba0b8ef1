//! The signal-file protocol: any tool may ask the daemon to run or cancel exports by dropping a
//! file into the trigger directory (`daemon.trigger_dir`).
//!
//! # Protocol
//!
//! - Final names end in `.trigger`. Anything else, notably names starting with `.` or ending in
//!   `.tmp`, is ignored, so a writer writes a temporary name and `rename()`s it into place (in
//!   the same directory, so the rename is atomic). Subdirectories are not scanned.
//! - Content: one JSON object, at most 4096 bytes, one of
//!   - `{"export":"NAME"}`: run one export;
//!   - `{"all":true}`: run every enabled export;
//!   - `{"cancel":"NAME"}`: cancel the export's queued or running run.
//!
//!   Run requests may add `"full":true` (resend everything rather than only changes). Any
//!   request may add `"requested_by":"text"` (who asked, for the run's record). Unknown fields
//!   are an error, so a typo is reported rather than silently ignored.
//! - The daemon claims a file by renaming it to `processing/<key>`, where the key is unique
//!   (claim time + random + original name). After the request is committed to the daemon's
//!   queue the file is deleted. A file left in `processing/` by a crash is picked up again under
//!   the same key, so the queue can deduplicate it: each file is acted on exactly once.
//! - A file that cannot be used (malformed, too big, unknown export...) is moved to
//!   `rejected/<key>`, next to `rejected/<key>.reason`, a one-line text saying what is wrong.
//!
//! [`write_trigger`] implements the writer's side; `acexport` commands use it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use notify::{EventKind, RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Largest accepted trigger file; a request is a few dozen bytes, so more means a wrong file.
const MAX_TRIGGER_BYTES: u64 = 4096; // protocol limit, see the module doc
/// Suffix of a final (ready to claim) trigger file name.
const TRIGGER_SUFFIX: &str = ".trigger";
/// Claimed files, named by their key, until the caller finishes or rejects them.
const PROCESSING_DIR: &str = "processing";
/// Files that could not be used, each with a `<key>.reason` sibling.
const REJECTED_DIR: &str = "rejected";
/// Suffix of the text file explaining a rejection.
const REASON_SUFFIX: &str = ".reason";
/// Longest file name Linux accepts (NAME_MAX); a key must leave room for `.reason`.
const MAX_FILE_NAME_BYTES: usize = 255;
/// The trigger directory and its subdirectories: the service user and its group (the tools
/// that drop triggers) may write, others may not look.
#[cfg(unix)]
const DIR_MODE: u32 = 0o770;
/// `tokio::time::interval` panics on a zero period; also keeps a typo from busy-looping.
const MIN_RESCAN: Duration = Duration::from_secs(1);

/// What a trigger file asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerRequest {
    /// Run one export; `full` resends everything instead of only the changes.
    Run { export: String, full: bool },
    /// Run every enabled export.
    RunAll { full: bool },
    /// Cancel the export's queued or running run.
    Cancel { export: String },
}

/// A claimed trigger file: parsed, and held in `processing/` until [`TriggerFile::finish`] or
/// [`TriggerFile::reject`].
#[derive(Debug)]
pub struct TriggerFile {
    /// Unique and stable across crashes: deduplicate on it when queueing the request.
    pub key: String,
    /// The file's name as the writer dropped it, for messages.
    pub name: String,
    pub request: TriggerRequest,
    /// Free text from the writer saying who asked.
    pub requested_by: Option<String>,
    /// Where the claimed file is now (`processing/<key>`).
    path: PathBuf,
    /// The trigger directory, to reach `rejected/`.
    dir: PathBuf,
}

/// The outcome of one [`claim_all`].
#[derive(Debug, Default)]
pub struct Claimed {
    /// Parsed requests in claim order, files left by a crash first.
    pub requests: Vec<TriggerFile>,
    /// Files moved to `rejected/` during this claim.
    pub rejected: Vec<Rejection>,
}

/// A trigger file that was moved to `rejected/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The file's name as the writer dropped it.
    pub name: String,
    /// What is wrong with it (also written to `rejected/<key>.reason`).
    pub reason: String,
}

/// Failures of the trigger directory itself; problems with one file's content are
/// [`Rejection`]s instead.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("trigger request is invalid: {reason}")]
    InvalidRequest { reason: String },
    #[error("cannot watch trigger directory {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
    #[error("cannot watch trigger directory {path}: not called from within a tokio runtime")]
    NoRuntime { path: PathBuf },
}

impl TriggerError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TriggerError {
        let path = path.to_owned();
        move |source| TriggerError::Io {
            action,
            path,
            source,
        }
    }
}

/// The file format. Kept apart from [`TriggerRequest`] so the JSON stays flat and readable.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    export: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    all: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cancel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    full: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    requested_by: Option<String>,
}

impl WireRequest {
    fn new(request: &TriggerRequest, requested_by: Option<&str>) -> WireRequest {
        let flag = |full: bool| full.then_some(true);
        let mut wire = match request {
            TriggerRequest::Run { export, full } => WireRequest {
                export: Some(export.clone()),
                full: flag(*full),
                ..WireRequest::default()
            },
            TriggerRequest::RunAll { full } => WireRequest {
                all: Some(true),
                full: flag(*full),
                ..WireRequest::default()
            },
            TriggerRequest::Cancel { export } => WireRequest {
                cancel: Some(export.clone()),
                ..WireRequest::default()
            },
        };
        wire.requested_by = requested_by.map(str::to_owned);
        wire
    }

    /// Checks the combination of fields; the error says what is wrong, for a reason file.
    fn into_request(self) -> Result<(TriggerRequest, Option<String>), String> {
        let full = self.full.unwrap_or(false);
        let request = match (self.export, self.all, self.cancel) {
            (Some(export), None, None) => TriggerRequest::Run {
                export: check_export_name("export", export)?,
                full,
            },
            (None, Some(true), None) => TriggerRequest::RunAll { full },
            (None, Some(false), None) => {
                return Err("\"all\" must be true (name one export with \"export\")".into());
            }
            (None, None, Some(export)) => {
                if self.full.is_some() {
                    return Err("\"full\" applies to run requests, not to \"cancel\"".into());
                }
                TriggerRequest::Cancel {
                    export: check_export_name("cancel", export)?,
                }
            }
            _ => {
                return Err("must contain exactly one of \"export\", \"all\" or \"cancel\"".into());
            }
        };
        if let Some(by) = &self.requested_by
            && by.chars().any(char::is_control)
        {
            // It ends up in log lines; control characters could forge them.
            return Err("\"requested_by\" contains control characters".into());
        }
        Ok((request, self.requested_by))
    }
}

fn check_export_name(field: &str, name: String) -> Result<String, String> {
    if name.trim().is_empty() {
        return Err(format!("\"{field}\" is empty: name an export"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("\"{field}\" contains control characters"));
    }
    Ok(name)
}

/// Parses a trigger file's bytes; the error is a reason for `rejected/`.
fn parse_trigger(bytes: &[u8]) -> Result<(TriggerRequest, Option<String>), String> {
    let trimmed = bytes.trim_ascii_start();
    if trimmed.is_empty() {
        return Err(
            "is empty (writers must write a temporary name and rename it into place)".into(),
        );
    }
    // serde also reads a struct from a JSON array; the protocol promises an object.
    if trimmed[0] != b'{' {
        return Err("must be one JSON object, e.g. {\"export\":\"NAME\"}".into());
    }
    let wire: WireRequest =
        serde_json::from_slice(bytes).map_err(|e| format!("is not a valid request: {e}"))?;
    wire.into_request()
}

fn is_final_name(name: &str) -> bool {
    !name.starts_with('.') && name.len() > TRIGGER_SUFFIX.len() && name.ends_with(TRIGGER_SUFFIX)
}

/// A UTC timestamp that sorts as text and is safe in file names.
fn file_timestamp() -> String {
    Utc::now().format("%Y%m%dT%H%M%S%.9fZ").to_string()
}

/// `<timestamp>-<16 hex digits>`: unique without coordination between writers or claimers.
fn unique_stem() -> String {
    format!("{}-{:016x}", file_timestamp(), rand::random::<u64>())
}

/// A new claim key for a file named `name`: unique, sortable by claim time, and still showing
/// the original name (cut if needed so `<key>.reason` fits in a file name).
fn new_key(name: &str) -> String {
    let stem = unique_stem();
    let room = MAX_FILE_NAME_BYTES - REASON_SUFFIX.len() - stem.len() - 1;
    let mut cut = name.len().min(room);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{stem}-{}", &name[..cut])
}

/// The original name inside a key made by [`new_key`]; the whole key for anything else
/// (a file someone put into `processing/` by hand).
fn name_from_key(key: &str) -> &str {
    let mut parts = key.splitn(3, '-');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(stamp), Some(random), Some(name))
            if stamp.ends_with('Z')
                && random.len() == 16
                && random.bytes().all(|b| b.is_ascii_hexdigit())
                && !name.is_empty() =>
        {
            name
        }
        _ => key,
    }
}

/// Creates `dir` (and missing parents) with [`DIR_MODE`] if it does not exist.
fn ensure_dir(dir: &Path) -> Result<(), TriggerError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(DIR_MODE);
        builder
            .create(dir)
            .map_err(TriggerError::io("create directory", dir))?;
        // The umask (often 022) would drop group write, which trigger writers need.
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
            .map_err(TriggerError::io("set permissions on", dir))?;
    }
    #[cfg(not(unix))]
    builder
        .create(dir)
        .map_err(TriggerError::io("create directory", dir))?;
    Ok(())
}

/// Makes renames and creations in `dir` durable: a claim lost to a power cut would bring the
/// file back under its old name and a new key, and run it twice.
fn sync_dir(dir: &Path) -> Result<(), TriggerError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(TriggerError::io("sync directory", dir))
}

/// Write a request atomically (unique name `<utc-timestamp>-<random>.trigger`, temp file +
/// fsync + rename). Creates `dir` if missing. Returns the final path.
pub fn write_trigger(
    dir: &Path,
    request: &TriggerRequest,
    requested_by: Option<&str>,
) -> Result<PathBuf, TriggerError> {
    let wire = WireRequest::new(request, requested_by);
    let body = serde_json::to_vec(&wire).map_err(|e| TriggerError::InvalidRequest {
        reason: e.to_string(),
    })?;
    // Refuse here what the daemon would reject, so the writer hears about it.
    parse_trigger(&body).map_err(|reason| TriggerError::InvalidRequest { reason })?;
    if body.len() as u64 > MAX_TRIGGER_BYTES {
        return Err(TriggerError::InvalidRequest {
            reason: format!(
                "is {} bytes, more than the {MAX_TRIGGER_BYTES} a trigger file may hold",
                body.len()
            ),
        });
    }
    ensure_dir(dir)?;
    let name = format!("{}{TRIGGER_SUFFIX}", unique_stem());
    let temp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(&name);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(&body)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&temp, &target));
    if let Err(source) = written {
        // Best effort: a leftover temp name is ignored by claimers anyway.
        let _ = fs::remove_file(&temp);
        return Err(TriggerError::Io {
            action: "write trigger file",
            path: target,
            source,
        });
    }
    sync_dir(dir)?;
    Ok(target)
}

/// Exactly-once consumption: claim every final-named file in `dir` by renaming it into
/// `dir/processing/<unique-key>` (the key embeds a timestamp + random so it never repeats),
/// then parse it. Files already in `processing/` (left by a crash) are returned too, with their
/// existing key, so the caller can deduplicate by key in its database. Malformed files are
/// moved to `dir/rejected/` with a sibling `<key>.reason` text file and returned as rejections.
///
/// Meant for one claimer per directory (the daemon): a second concurrent claimer would also
/// see the first one's files in `processing/`.
pub fn claim_all(dir: &Path) -> Result<Claimed, TriggerError> {
    let processing = dir.join(PROCESSING_DIR);
    ensure_dir(&processing)?;
    ensure_dir(&dir.join(REJECTED_DIR))?;

    // Claim in name order: writers' names start with a timestamp, so this is arrival order.
    let mut names = list_names(dir)?;
    names.retain(|name| is_final_name(name));
    names.sort();
    let mut claimed_any = false;
    for name in &names {
        let from = dir.join(name);
        match fs::rename(&from, processing.join(new_key(name))) {
            Ok(()) => claimed_any = true,
            // Gone between listing and renaming: someone else took it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(TriggerError::Io {
                    action: "claim trigger file",
                    path: from,
                    source,
                });
            }
        }
    }
    if claimed_any {
        sync_dir(&processing)?;
        sync_dir(dir)?;
    }

    // Keys sort by claim time, so crash leftovers come first.
    let mut keys = list_names(&processing)?;
    keys.sort();
    let mut claimed = Claimed::default();
    for key in keys {
        let path = processing.join(&key);
        let name = name_from_key(&key).to_owned();
        match read_trigger(&path) {
            Ok((request, requested_by)) => claimed.requests.push(TriggerFile {
                key,
                name,
                request,
                requested_by,
                path,
                dir: dir.to_owned(),
            }),
            Err(reason) => {
                let rejection = move_to_rejected(dir, &key, name, reason)?;
                claimed.rejected.push(rejection);
            }
        }
    }
    Ok(claimed)
}

/// UTF-8 entry names in `dir`. Other names cannot end in `.trigger` as text and are ignored.
fn list_names(dir: &Path) -> Result<Vec<String>, TriggerError> {
    let entries = fs::read_dir(dir).map_err(TriggerError::io("list", dir))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(TriggerError::io("list", dir))?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

/// Reads and parses a claimed file; the error is a reason for `rejected/`.
fn read_trigger(path: &Path) -> Result<(TriggerRequest, Option<String>), String> {
    // Not following links: a link could make the daemon read any file it can.
    let meta = fs::symlink_metadata(path).map_err(|e| format!("cannot be inspected: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.len() > MAX_TRIGGER_BYTES {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|file| file.take(MAX_TRIGGER_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot be read: {e}"))?;
    if bytes.len() as u64 > MAX_TRIGGER_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    parse_trigger(&bytes)
}

fn too_big(len: u64) -> String {
    format!("is {len} bytes, more than the {MAX_TRIGGER_BYTES} a trigger file may hold")
}

/// Moves `processing/<key>` to `rejected/<key>` and writes `rejected/<key>.reason`.
fn move_to_rejected(
    dir: &Path,
    key: &str,
    name: String,
    reason: String,
) -> Result<Rejection, TriggerError> {
    let rejected = dir.join(REJECTED_DIR);
    ensure_dir(&rejected)?;
    // The reason first: a crash in between leaves the file in processing/, to be rejected
    // again, rather than a rejected file without a reason.
    let reason_path = rejected.join(format!("{key}{REASON_SUFFIX}"));
    fs::write(&reason_path, format!("{name}: {reason}\n"))
        .map_err(TriggerError::io("write rejection reason", &reason_path))?;
    let from = dir.join(PROCESSING_DIR).join(key);
    match fs::rename(&from, rejected.join(key)) {
        Ok(()) => {}
        // Already gone (finished or rejected elsewhere): the reason file still explains it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(TriggerError::Io {
                action: "move rejected trigger file",
                path: from,
                source,
            });
        }
    }
    Ok(Rejection { name, reason })
}

impl TriggerFile {
    /// After the caller committed the request (keyed by `key`) to its queue: delete the
    /// claimed file. Deleting a file that is already gone is not an error.
    pub fn finish(self) -> Result<(), TriggerError> {
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(TriggerError::Io {
                action: "delete claimed trigger file",
                path: self.path,
                source,
            }),
        }
    }

    /// The caller refused it (unknown or disabled export): move to rejected/ with the reason.
    pub fn reject(self, reason: &str) -> Result<Rejection, TriggerError> {
        move_to_rejected(&self.dir, &self.key, self.name, reason.to_owned())
    }
}

/// Watches the trigger directory and wakes its receiver when a trigger may have arrived: on
/// every relevant inotify event and on a periodic rescan tick (a fallback for lost events,
/// e.g. on network filesystems). Wake-ups coalesce: a pending one is not repeated. Drop the
/// watcher to stop; the receiver then yields `None`.
pub struct TriggerWatcher {
    /// Kept alive for its inotify watch; dropping it stops the events.
    _watcher: notify::RecommendedWatcher,
    /// The rescan ticker, aborted on drop.
    ticker: tokio::task::JoinHandle<()>,
}

impl TriggerWatcher {
    /// Starts watching `dir`, creating it (mode 0770) if missing. The first wake-up comes at
    /// once, so the caller claims files that arrived while it was down. `rescan` is clamped
    /// to at least one second. Must be called within a tokio runtime.
    pub fn start(
        dir: &Path,
        rescan: Duration,
    ) -> Result<(TriggerWatcher, mpsc::Receiver<()>), TriggerError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| TriggerError::NoRuntime {
                path: dir.to_owned(),
            })?;
        ensure_dir(dir)?;
        // Capacity 1: one pending wake-up says "scan", more would say nothing new.
        let (wake, receiver) = mpsc::channel(1);

        let event_wake = wake.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match &event {
                    Ok(event) => is_relevant(event),
                    Err(error) => {
                        tracing::warn!(%error, "Trigger directory watch failed; rescanning");
                        true
                    }
                };
                if relevant {
                    // Full means a wake-up is already pending; closed means nobody listens.
                    let _ = event_wake.try_send(());
                }
            })
            .map_err(|source| TriggerError::Watch {
                path: dir.to_owned(),
                source,
            })?;
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|source| TriggerError::Watch {
                path: dir.to_owned(),
                source,
            })?;

        let period = rescan.max(MIN_RESCAN);
        let ticker = runtime.spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                interval.tick().await;
                if wake.is_closed() {
                    break;
                }
                let _ = wake.try_send(());
            }
        });
        Ok((
            TriggerWatcher {
                _watcher: watcher,
                ticker,
            },
            receiver,
        ))
    }
}

impl Drop for TriggerWatcher {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// Whether an event may mean a new trigger: reads are not, nor are writes to temporary names
/// (a writer's temp file changes many times before its one rename).
fn is_relevant(event: &notify::Event) -> bool {
    if matches!(event.kind, EventKind::Access(_)) {
        return false;
    }
    event.need_rescan()
        || event.paths.is_empty()
        || event.paths.iter().any(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(is_final_name)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn run(export: &str) -> TriggerRequest {
        TriggerRequest::Run {
            export: export.to_owned(),
            full: false,
        }
    }

    fn name_of(path: &Path) -> String {
        let name = path.file_name().expect("a file path");
        name.to_str().expect("a UTF-8 name").to_owned()
    }

    fn trigger_dir() -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("triggers");
        (root, dir)
    }

    /// Drops a final-named file with raw content, as a careless or hostile writer would.
    fn drop_raw(dir: &Path, name: &str, content: &[u8]) {
        fs::create_dir_all(dir).expect("create trigger dir");
        fs::write(dir.join(name), content).expect("write trigger");
    }

    fn only_rejection(dir: &Path) -> (Rejection, String) {
        let claimed = claim_all(dir).expect("claim");
        assert!(claimed.requests.is_empty(), "{:?}", claimed.requests);
        assert_eq!(claimed.rejected.len(), 1, "{:?}", claimed.rejected);
        let reasons: Vec<_> = list_names(&dir.join(REJECTED_DIR))
            .expect("list rejected")
            .into_iter()
            .filter(|name| name.ends_with(REASON_SUFFIX))
            .collect();
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        let text = fs::read_to_string(dir.join(REJECTED_DIR).join(&reasons[0])).expect("reason");
        let moved = reasons[0].trim_end_matches(REASON_SUFFIX);
        assert!(
            dir.join(REJECTED_DIR).join(moved).exists(),
            "file moved next to its reason"
        );
        (claimed.rejected[0].clone(), text)
    }

    #[test]
    fn every_request_kind_round_trips_through_write_and_claim() {
        let (_root, dir) = trigger_dir();
        let requests = [
            TriggerRequest::Run {
                export: "weekly-newsletter".into(),
                full: true,
            },
            TriggerRequest::RunAll { full: false },
            TriggerRequest::Cancel {
                export: "weekly-newsletter".into(),
            },
        ];
        let mut names = Vec::new();
        for request in &requests {
            let path = write_trigger(&dir, request, Some("cli:ops")).expect("write");
            names.push(name_of(&path));
        }

        let claimed = claim_all(&dir).expect("claim");

        assert!(claimed.rejected.is_empty(), "{:?}", claimed.rejected);
        let got: Vec<_> = claimed
            .requests
            .iter()
            .map(|t| (t.name.clone(), t.request.clone(), t.requested_by.clone()))
            .collect();
        let want: Vec<_> = names
            .into_iter()
            .zip(requests)
            .map(|(name, request)| (name, request, Some("cli:ops".to_owned())))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn claiming_moves_the_file_out_of_the_trigger_dir_into_processing() {
        let (_root, dir) = trigger_dir();
        let written = write_trigger(&dir, &run("a"), None).expect("write");

        let claimed = claim_all(&dir).expect("claim");

        assert!(!written.exists());
        assert!(
            dir.join(PROCESSING_DIR)
                .join(&claimed.requests[0].key)
                .is_file()
        );
    }

    #[test]
    fn temporary_and_hidden_names_are_ignored() {
        let (_root, dir) = trigger_dir();
        drop_raw(&dir, "half.trigger.tmp", b"{\"exp");
        drop_raw(&dir, ".half.trigger", b"{\"exp");
        drop_raw(&dir, "notes.txt", b"hello");

        let claimed = claim_all(&dir).expect("claim");

        assert!(claimed.requests.is_empty() && claimed.rejected.is_empty());
        for name in ["half.trigger.tmp", ".half.trigger", "notes.txt"] {
            assert!(dir.join(name).exists(), "{name} left alone");
        }
    }

    #[test]
    fn malformed_json_is_rejected_with_a_reason_file() {
        let (_root, dir) = trigger_dir();
        drop_raw(&dir, "bad.trigger", b"{\"export\": ");

        let (rejection, text) = only_rejection(&dir);

        assert_eq!(rejection.name, "bad.trigger");
        assert!(
            rejection.reason.contains("not a valid request"),
            "{rejection:?}"
        );
        assert!(text.starts_with("bad.trigger: "), "{text}");
    }

    #[test]
    fn a_file_over_4096_bytes_is_rejected_as_too_big() {
        let (_root, dir) = trigger_dir();
        let mut body = b"{\"export\":\"".to_vec();
        body.resize(5000, b'a');
        body.extend_from_slice(b"\"}");
        drop_raw(&dir, "big.trigger", &body);

        let (rejection, _) = only_rejection(&dir);

        assert!(
            rejection.reason.contains("more than the 4096"),
            "{rejection:?}"
        );
    }

    #[test]
    fn an_unknown_field_is_rejected_naming_the_field() {
        let (_root, dir) = trigger_dir();
        drop_raw(&dir, "typo.trigger", br#"{"export":"a","ful":true}"#);

        let (rejection, _) = only_rejection(&dir);

        assert!(rejection.reason.contains("`ful`"), "{rejection:?}");
    }

    #[test]
    fn an_empty_export_name_is_rejected() {
        let (_root, dir) = trigger_dir();
        drop_raw(&dir, "empty.trigger", br#"{"export":"  "}"#);

        let (rejection, _) = only_rejection(&dir);

        assert!(
            rejection.reason.contains("\"export\" is empty"),
            "{rejection:?}"
        );
    }

    #[test]
    fn a_request_naming_both_an_export_and_all_is_rejected() {
        let (_root, dir) = trigger_dir();
        drop_raw(&dir, "both.trigger", br#"{"export":"a","all":true}"#);

        let (rejection, _) = only_rejection(&dir);

        assert!(rejection.reason.contains("exactly one of"), "{rejection:?}");
    }

    #[test]
    fn a_json_array_is_rejected_as_not_an_object() {
        let (_root, dir) = trigger_dir();
        drop_raw(&dir, "array.trigger", br#"["a", null, null, null, null]"#);

        let (rejection, _) = only_rejection(&dir);

        assert!(
            rejection.reason.contains("one JSON object"),
            "{rejection:?}"
        );
    }

    #[test]
    fn a_file_left_in_processing_by_a_crash_is_returned_again_with_the_same_key() {
        let (_root, dir) = trigger_dir();
        write_trigger(&dir, &run("a"), None).expect("write");
        let first = claim_all(&dir).expect("claim");
        // The daemon dies here: neither finish nor reject.
        let key = first.requests[0].key.clone();
        drop(first);

        let again = claim_all(&dir).expect("claim after restart");

        let keys: Vec<_> = again.requests.iter().map(|t| t.key.as_str()).collect();
        assert_eq!(keys, [key.as_str()]);
        assert_eq!(again.requests[0].request, run("a"));
    }

    #[test]
    fn a_finished_request_is_not_returned_again() {
        let (_root, dir) = trigger_dir();
        write_trigger(&dir, &run("a"), None).expect("write");
        let claimed = claim_all(&dir).expect("claim");
        for request in claimed.requests {
            request.finish().expect("finish");
        }

        let again = claim_all(&dir).expect("claim");

        assert!(again.requests.is_empty() && again.rejected.is_empty());
    }

    #[test]
    fn a_request_the_caller_refuses_moves_to_rejected_with_its_reason() {
        let (_root, dir) = trigger_dir();
        write_trigger(&dir, &run("nope"), None).expect("write");
        let mut claimed = claim_all(&dir).expect("claim");
        let request = claimed.requests.remove(0);
        let key = request.key.clone();

        let rejection = request
            .reject("export \"nope\" does not exist")
            .expect("reject");

        assert_eq!(rejection.reason, "export \"nope\" does not exist");
        assert!(dir.join(REJECTED_DIR).join(&key).is_file());
        let text = fs::read_to_string(dir.join(REJECTED_DIR).join(format!("{key}.reason")))
            .expect("reason file");
        assert!(text.contains("does not exist"), "{text}");
        assert!(claim_all(&dir).expect("claim").requests.is_empty());
    }

    #[test]
    fn a_hundred_files_are_each_claimed_exactly_once() {
        let (_root, dir) = trigger_dir();
        for i in 0..100 {
            write_trigger(&dir, &run(&format!("export-{i}")), None).expect("write");
        }

        let claimed = claim_all(&dir).expect("claim");
        let keys: HashSet<_> = claimed.requests.iter().map(|t| t.key.clone()).collect();
        let exports: HashSet<_> = claimed
            .requests
            .iter()
            .map(|t| match &t.request {
                TriggerRequest::Run { export, .. } => export.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        for request in claimed.requests {
            request.finish().expect("finish");
        }

        assert_eq!((keys.len(), exports.len()), (100, 100));
        assert!(claim_all(&dir).expect("claim").requests.is_empty());
    }

    #[test]
    fn write_trigger_refuses_an_empty_export_name() {
        let (_root, dir) = trigger_dir();

        let err = write_trigger(&dir, &run(""), None).expect_err("must be refused");

        assert!(
            matches!(err, TriggerError::InvalidRequest { .. }),
            "{err:?}"
        );
        assert!(!dir.exists() || list_names(&dir).expect("list").is_empty());
    }

    #[test]
    fn a_long_file_name_still_gets_a_key_that_fits() {
        let (_root, dir) = trigger_dir();
        let name = format!("{}.trigger", "n".repeat(240));
        drop_raw(&dir, &name, br#"{"all":true}"#);

        let claimed = claim_all(&dir).expect("claim");

        let key = &claimed.requests[0].key;
        assert!(
            key.len() + REASON_SUFFIX.len() <= MAX_FILE_NAME_BYTES,
            "{}",
            key.len()
        );
        assert!(claimed.requests[0].name.starts_with("nnnn"));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_watcher_creates_a_missing_dir_with_mode_0770() {
        use std::os::unix::fs::PermissionsExt;
        let (_root, dir) = trigger_dir();

        let (_watcher, _wake) =
            TriggerWatcher::start(&dir, Duration::from_secs(3600)).expect("start watcher");

        let mode = fs::metadata(&dir).expect("dir exists").permissions().mode();
        assert_eq!(mode & 0o777, 0o770);
    }

    #[tokio::test]
    async fn the_watcher_wakes_within_a_second_after_a_trigger_is_renamed_in() {
        let (root, dir) = trigger_dir();
        // An hour's rescan: only the inotify event can wake it within the test.
        let (_watcher, mut wake) =
            TriggerWatcher::start(&dir, Duration::from_secs(3600)).expect("start watcher");
        let initial = tokio::time::timeout(Duration::from_secs(1), wake.recv()).await;
        assert_eq!(initial, Ok(Some(())), "first wake-up comes at once");
        // Written outside the watched dir, so only the rename itself is seen.
        let outside = root.path().join("staged");
        fs::write(&outside, br#"{"export":"a"}"#).expect("stage");

        fs::rename(&outside, dir.join("a.trigger")).expect("rename in");

        let woke = tokio::time::timeout(Duration::from_secs(1), wake.recv()).await;
        assert_eq!(woke, Ok(Some(())));
    }

    #[tokio::test]
    async fn the_receiver_ends_when_the_watcher_is_dropped() {
        let (_root, dir) = trigger_dir();
        let (watcher, mut wake) =
            TriggerWatcher::start(&dir, Duration::from_secs(3600)).expect("start watcher");
        let _ = tokio::time::timeout(Duration::from_secs(1), wake.recv()).await;

        drop(watcher);

        let ended = tokio::time::timeout(Duration::from_secs(5), wake.recv()).await;
        assert_eq!(ended, Ok(None));
    }
}
