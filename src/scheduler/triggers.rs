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
//! - A file that cannot be used (malformed, too big, not a regular file, a name with control,
//!   invisible or non-UTF-8 characters, an unknown export...) is deleted; `rejected/<key>`
//!   keeps a copy of its first 4096 bytes, next to `rejected/<key>.reason`, a one-line text
//!   saying what is wrong (names and reasons escaped). The last 100 rejections are kept.
//!
//! [`write_trigger`] implements the writer's side; `acexport` commands use it. Every access to
//! the folder goes through `triggers/folder.rs`, which never follows a link planted there.
//! Noticing that a file arrived is the watcher's job (`watcher.rs`).

mod folder;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::escape::{is_plain, untrusted};
pub(super) use folder::ensure_dir;
use folder::{Area, Folder, Head, REASON_SUFFIX};

/// Largest accepted trigger file; a request is a few dozen bytes, so more means a wrong file.
const MAX_TRIGGER_BYTES: u64 = 4096; // protocol limit, see the module doc
/// Suffix of a final (ready to claim) trigger file name.
const TRIGGER_SUFFIX: &str = ".trigger";
/// Longest file name Linux accepts (NAME_MAX); a key must leave room for `.reason`.
const MAX_FILE_NAME_BYTES: usize = 255;
/// Why a file with a name that cannot be shown as it is was rejected.
const UNSAFE_NAME: &str =
    "has control, invisible or non-UTF-8 characters in its name (shown escaped here)";
/// The original-name part of a rejected entry's key when the name cannot be shown.
const UNSAFE_NAME_LABEL: &str = "unsafe-name";

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
    /// Free text from the writer saying who asked: a note only, never an identity.
    pub requested_by: Option<String>,
    /// The file's owner (uid): the request is authorized as this user.
    pub owner: u32,
    /// What was read and parsed, kept in `rejected/` if the caller refuses the request.
    content: Vec<u8>,
    /// The trigger folder, to delete the claimed file or reach `rejected/`.
    folder: Arc<Folder>,
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
    /// The file's name as the writer dropped it, escaped ([`crate::escape::untrusted`]) or,
    /// when not UTF-8, shown byte by byte (`\xff`).
    pub name: String,
    /// What is wrong with it, escaped (also written to `rejected/<key>.reason`).
    pub reason: String,
}

/// Failures of the trigger directory itself; problems with one file's content are
/// [`Rejection`]s instead.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// The path is shown escaped: file names in the trigger folder come from its writers.
    #[error("cannot {action} {}: {source}", shown_path(path))]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} is a symbolic link or not a folder; links in the trigger folder are never \
         followed: remove it, and the daemon creates the folder again",
        shown_path(path)
    )]
    NotAFolder { path: PathBuf },
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

/// A path for a message, escaped: its last part may be a name a writer chose.
fn shown_path(path: &Path) -> String {
    untrusted(&path.to_string_lossy()).into_owned()
}

impl TriggerError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TriggerError {
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
            && !is_plain(by)
        {
            // It ends up in log lines and the run's record, where these would change the text.
            return Err("\"requested_by\" contains control or invisible characters".into());
        }
        Ok((request, self.requested_by))
    }
}

fn check_export_name(field: &str, name: String) -> Result<String, String> {
    if name.trim().is_empty() {
        return Err(format!("\"{field}\" is empty: name an export"));
    }
    if !is_plain(&name) {
        return Err(format!(
            "\"{field}\" contains control or invisible characters"
        ));
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

/// `name` as text when it can be shown as it is; otherwise `Err` with how to show it:
/// escaped, or byte by byte when it is not UTF-8. Never the raw name.
fn plain_name(name: &OsStr) -> Result<&str, String> {
    match name.to_str() {
        Some(text) if is_plain(text) => Ok(text),
        Some(text) => Err(untrusted(text).into_owned()),
        None => Err(name.as_bytes().escape_ascii().to_string()),
    }
}

/// Whether `name` (raw bytes: any name in the folder) is a trigger ready to claim, not a
/// writer's temporary or hidden name.
pub(super) fn is_final_name(name: &[u8]) -> bool {
    let suffix = TRIGGER_SUFFIX.as_bytes();
    !name.starts_with(b".") && name.len() > suffix.len() && name.ends_with(suffix)
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

/// Whether `name` is a key made by [`new_key`] (and so sorts by claim time).
fn is_key(name: &str) -> bool {
    name_from_key(name).len() != name.len()
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
    let target = dir.join(&name);
    folder::write_new(dir, &format!(".{name}.tmp"), &name, &body)
        .map_err(TriggerError::io("write trigger file", &target))?;
    Ok(target)
}

/// Exactly-once consumption: claim every final-named file in `dir` by renaming it into
/// `dir/processing/<unique-key>` (the key embeds a timestamp + random so it never repeats),
/// then parse it. Files already in `processing/` (left by a crash) are returned too, with their
/// existing key, so the caller can deduplicate by key in its database. Files that cannot be
/// used are deleted, with a bounded copy and a `<key>.reason` text file left in `rejected/`,
/// and returned as rejections; so are names that cannot be shown as they are, from where they
/// lie.
///
/// Meant for one claimer per directory (the daemon): a second concurrent claimer would also
/// see the first one's files in `processing/`.
pub fn claim_all(dir: &Path) -> Result<Claimed, TriggerError> {
    let folder = Arc::new(Folder::open(dir)?);
    let mut claimed = Claimed::default();

    // Claim in name order: writers' names start with a timestamp, so this is arrival order.
    let mut names = folder.names(Area::Top)?;
    names.retain(|name| is_final_name(name.as_bytes()));
    names.sort();
    let mut claimed_any = false;
    for name in &names {
        match plain_name(name) {
            Ok(plain) => claimed_any |= folder.claim(name, &new_key(plain))?,
            // Rejected where it lies: such a name is not carried into a key.
            Err(_) => {
                if let Examined::Rejected(rejection) = examine(&folder, Area::Top, name)? {
                    claimed.rejected.push(rejection);
                }
            }
        }
    }
    if claimed_any {
        folder.sync(Area::Processing)?;
        folder.sync(Area::Top)?;
    }

    // Keys sort by claim time, so crash leftovers come first.
    let mut keys = folder.names(Area::Processing)?;
    keys.sort();
    for key in keys {
        match examine(&folder, Area::Processing, &key)? {
            Examined::Request(request) => claimed.requests.push(request),
            Examined::Rejected(rejection) => claimed.rejected.push(rejection),
        }
    }
    Ok(claimed)
}

/// What became of one file.
enum Examined {
    Request(TriggerFile),
    Rejected(Rejection),
}

/// Reads and parses `name` in `area` (a key in `processing/`, or a name that cannot be shown
/// in the trigger folder itself), rejecting it when it cannot be used.
fn examine(folder: &Arc<Folder>, area: Area, name: &OsStr) -> Result<Examined, TriggerError> {
    // One byte over the limit tells a file that is too big.
    let head = folder.read(area, name, MAX_TRIGGER_BYTES + 1);
    let key = match plain_name(name) {
        Ok(key) => key,
        Err(shown) => {
            let kept = head.as_ref().ok().map(|head| head.bytes.as_slice());
            return reject(folder, area, name, shown, UNSAFE_NAME, kept).map(Examined::Rejected);
        }
    };
    let shown = name_from_key(key).to_owned();
    let head = match head {
        Ok(head) => head,
        Err(reason) => {
            return reject(folder, area, name, shown, &reason, None).map(Examined::Rejected);
        }
    };
    match parse_head(&head) {
        Ok((request, requested_by)) => Ok(Examined::Request(TriggerFile {
            key: key.to_owned(),
            name: shown,
            request,
            requested_by,
            owner: head.owner,
            content: head.bytes,
            folder: Arc::clone(folder),
        })),
        Err(reason) => {
            reject(folder, area, name, shown, &reason, Some(&head.bytes)).map(Examined::Rejected)
        }
    }
}

/// Checks a file's size and parses its bytes; the error is a reason for `rejected/`.
fn parse_head(head: &Head) -> Result<(TriggerRequest, Option<String>), String> {
    // The file may have grown since `fstat`: what was read counts too.
    let len = head.size.max(head.bytes.len() as u64);
    if len > MAX_TRIGGER_BYTES {
        return Err(too_big(len));
    }
    parse_trigger(&head.bytes)
}

fn too_big(len: u64) -> String {
    format!("is {len} bytes, more than the {MAX_TRIGGER_BYTES} a trigger file may hold")
}

/// Rejects `name` in `area`, shown as `shown` (already escaped), for `reason` (escaped here).
/// It keeps its key in `rejected/` when the key is one of ours; any other name gets a new key.
fn reject(
    folder: &Folder,
    area: Area,
    name: &OsStr,
    shown: String,
    reason: &str,
    kept: Option<&[u8]>,
) -> Result<Rejection, TriggerError> {
    let plain = plain_name(name).ok();
    let label = plain.map_or(UNSAFE_NAME_LABEL, name_from_key);
    let entry = match plain {
        Some(key) if area == Area::Processing && is_key(key) => key.to_owned(),
        _ => new_key(label),
    };
    let reason = untrusted(reason).into_owned();
    folder.reject(
        area,
        name,
        entry,
        label,
        kept,
        &format!("{shown}: {reason}\n"),
    )?;
    Ok(Rejection {
        name: shown,
        reason,
    })
}

impl TriggerFile {
    /// After the caller committed the request (keyed by `key`) to its queue: delete the
    /// claimed file. Deleting a file that is already gone is not an error.
    pub fn finish(self) -> Result<(), TriggerError> {
        self.folder.remove(Area::Processing, OsStr::new(&self.key))
    }

    /// The caller refused it (unknown or disabled export): delete it, keeping a copy and the
    /// reason in `rejected/`.
    pub fn reject(self, reason: &str) -> Result<Rejection, TriggerError> {
        reject(
            &self.folder,
            Area::Processing,
            OsStr::new(&self.key),
            self.name,
            reason,
            Some(&self.content),
        )
    }
}

#[cfg(test)]
mod tests;
