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
//! [`write_trigger`] implements the writer's side; `acexport` commands use it. Noticing that a
//! file arrived is the watcher's job (`watcher.rs`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use chrono::Utc;
use serde::{Deserialize, Serialize};

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

/// Whether `name` is a trigger ready to claim (not a writer's temporary or hidden name).
pub(super) fn is_final_name(name: &str) -> bool {
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
pub(super) fn ensure_dir(dir: &Path) -> Result<(), TriggerError> {
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

#[cfg(test)]
mod tests;
