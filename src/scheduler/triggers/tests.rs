//! The trigger-file protocol: writing, claiming exactly once, rejecting with a reason.

use super::folder::{MAX_KEPT_BYTES, MAX_REJECTED_KEPT, PROCESSING_DIR, REJECTED_DIR};
use super::*;
use std::collections::HashSet;
use std::fs::{self, File};

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

/// Names in `dir`, as text.
fn names_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .expect("list")
        .map(|entry| {
            let name = entry.expect("entry").file_name();
            name.into_string().expect("a UTF-8 name")
        })
        .collect()
}

/// Claims `dir`, expecting one rejection and nothing else; returns it with its reason file
/// (one the daemon named: names someone planted in `rejected/` are not counted).
fn only_rejection(dir: &Path) -> (Rejection, String) {
    let claimed = claim_all(dir).expect("claim");
    assert!(claimed.requests.is_empty(), "{:?}", claimed.requests);
    assert_eq!(claimed.rejected.len(), 1, "{:?}", claimed.rejected);
    let reasons: Vec<_> = names_in(&dir.join(REJECTED_DIR))
        .into_iter()
        .filter(|name| {
            name.ends_with(REASON_SUFFIX) && is_key(name) && !name.starts_with(PLANTED_KEY)
        })
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
    assert!(!dir.exists() || names_in(&dir).is_empty());
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

// Attacks by a member of the trigger group: everything in the trigger folder is theirs to
// plant, swap and fill.

/// A file outside the trigger folder that the daemon could write to, as its database.
fn victim(root: &Path) -> PathBuf {
    let path = root.join("victim.db");
    fs::write(&path, b"precious database pages").expect("write victim");
    path
}

/// Creates the subfolders the way a first claim does, so that the attack can plant in them.
fn prepared_trigger_dir() -> (tempfile::TempDir, PathBuf) {
    let (root, dir) = trigger_dir();
    claim_all(&dir).expect("first claim creates the subfolders");
    (root, dir)
}

/// A claim key as the daemon makes them, so that a rejection tries `<KEY>.reason` first: a file
/// dropped under another name gets a fresh key, and a planted `<name>.reason` is never tried.
const PLANTED_KEY: &str = "20260101T000000.000000000Z-0123456789abcdef-kill";

#[test]
fn a_reason_file_planted_as_a_symlink_to_a_victim_leaves_the_victim_unchanged() {
    let (root, dir) = prepared_trigger_dir();
    let victim = victim(root.path());
    let planted = dir.join(REJECTED_DIR).join(format!("{PLANTED_KEY}.reason"));
    std::os::unix::fs::symlink(&victim, &planted).expect("plant the link");
    fs::write(dir.join(PROCESSING_DIR).join(PLANTED_KEY), b"x").expect("drop the bad file");

    let claimed = claim_all(&dir).expect("claim");

    assert_eq!(claimed.rejected.len(), 1, "{claimed:?}");
    assert_eq!(claimed.rejected[0].name, "kill", "{claimed:?}");
    assert!(fs::symlink_metadata(&planted).expect("link").is_symlink());
    assert_eq!(
        fs::read(&victim).expect("victim still there"),
        b"precious database pages"
    );
}

#[test]
fn processing_replaced_by_a_symlink_is_refused_naming_it_and_nothing_lands_elsewhere() {
    let (root, dir) = prepared_trigger_dir();
    let elsewhere = root.path().join("elsewhere");
    fs::create_dir(&elsewhere).expect("create elsewhere");
    fs::remove_dir(dir.join(PROCESSING_DIR)).expect("remove processing/");
    std::os::unix::fs::symlink(&elsewhere, dir.join(PROCESSING_DIR)).expect("plant the link");
    write_trigger(&dir, &run("a"), None).expect("write");

    let err = claim_all(&dir).expect_err("a linked processing/ is refused");

    assert!(err.to_string().contains("processing"), "{err}");
    assert_eq!(fs::read_dir(&elsewhere).expect("list").count(), 0);
}

#[test]
fn rejected_replaced_by_a_symlink_is_refused_naming_it_and_nothing_lands_elsewhere() {
    let (root, dir) = prepared_trigger_dir();
    let elsewhere = root.path().join("elsewhere");
    fs::create_dir(&elsewhere).expect("create elsewhere");
    fs::remove_dir(dir.join(REJECTED_DIR)).expect("remove rejected/");
    std::os::unix::fs::symlink(&elsewhere, dir.join(REJECTED_DIR)).expect("plant the link");
    drop_raw(&dir, "bad.trigger", b"not json");

    let err = claim_all(&dir).expect_err("a linked rejected/ is refused");

    assert!(err.to_string().contains("rejected"), "{err}");
    assert_eq!(fs::read_dir(&elsewhere).expect("list").count(), 0);
}

/// Runs a claim on another thread; `None` when it did not return within `limit`.
fn claim_within(dir: &Path, limit: std::time::Duration) -> Option<Claimed> {
    let (done, result) = std::sync::mpsc::channel();
    let dir = dir.to_owned();
    // A claim stuck in open() cannot be stopped; the thread is left behind in that case.
    std::thread::spawn(move || {
        let _ = done.send(claim_all(&dir).expect("claim"));
    });
    result.recv_timeout(limit).ok()
}

#[test]
fn a_fifo_named_like_a_trigger_is_rejected_without_blocking_the_claim() {
    let (_root, dir) = prepared_trigger_dir();
    mkfifo(&dir.join("x.trigger")).expect("mkfifo");

    let claimed = claim_within(&dir, std::time::Duration::from_secs(5)).expect("claim returns");

    assert_eq!(claimed.rejected.len(), 1, "{claimed:?}");
    assert!(
        claimed.rejected[0].reason.contains("is not a regular file"),
        "{claimed:?}"
    );
}

/// Makes `path` a FIFO, as an attacker can in any folder they may write to.
fn mkfifo(path: &Path) -> rustix::io::Result<()> {
    rustix::fs::mkfifoat(rustix::fs::CWD, path, rustix::fs::Mode::from(0o660))
}

/// Keeps a regular file and a FIFO trading places as `claimed` (putting back whatever a claim
/// took away) until `stop` is set: the attack on a check made before the file is opened.
fn swap_fifo_in_and_out(
    claimed: PathBuf,
    staged: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if fs::symlink_metadata(&staged).is_err() {
                let _ = mkfifo(&staged);
            }
            if fs::symlink_metadata(&claimed).is_err() {
                let _ = fs::write(&claimed, b"x");
            }
            let _ = rustix::fs::renameat_with(
                rustix::fs::CWD,
                &claimed,
                rustix::fs::CWD,
                &staged,
                rustix::fs::RenameFlags::EXCHANGE,
            );
        }
    })
}

#[test]
fn a_fifo_swapped_in_between_listing_and_reading_never_blocks_the_claim() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    // A race: several short rounds, since a claim that starts with the swapping hits the
    // window most often.
    const ROUNDS: usize = 12;
    const ROUND: Duration = Duration::from_millis(400);
    let (root, dir) = prepared_trigger_dir();
    let staging = root.path().join("staging");
    fs::create_dir(&staging).expect("staging");
    let mut blocked = false;
    for round in 0..ROUNDS {
        let name = format!("swap{round}");
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let swapper = swap_fifo_in_and_out(
            dir.join(PROCESSING_DIR).join(&name),
            staging.join(&name),
            std::sync::Arc::clone(&stop),
        );
        let start = Instant::now();
        while !blocked && start.elapsed() < ROUND {
            blocked = claim_within(&dir, Duration::from_secs(2)).is_none();
        }
        stop.store(true, Ordering::Relaxed);
        swapper.join().expect("swapper");
        if blocked {
            break;
        }
    }

    assert!(!blocked, "a claim blocked on a FIFO swapped in");
}

#[test]
fn a_sparse_gigabyte_trigger_leaves_at_most_a_bounded_copy_in_rejected() {
    let (_root, dir) = prepared_trigger_dir();
    let file = File::create(dir.join("huge.trigger")).expect("create");
    file.set_len(1 << 30).expect("make it sparse and huge");
    drop(file);

    let claimed = claim_all(&dir).expect("claim");

    assert_eq!(claimed.rejected.len(), 1, "{claimed:?}");
    for entry in fs::read_dir(dir.join(REJECTED_DIR)).expect("list rejected") {
        let len = entry.expect("entry").metadata().expect("stat").len();
        assert!(len <= MAX_KEPT_BYTES, "a rejected entry holds {len} bytes");
    }
}

#[test]
fn more_rejections_than_the_bound_leave_the_bound_in_rejected() {
    let (_root, dir) = prepared_trigger_dir();
    let bound = MAX_REJECTED_KEPT;
    for i in 0..bound + 5 {
        drop_raw(&dir, &format!("bad-{i:03}.trigger"), b"not json");
    }

    let claimed = claim_all(&dir).expect("claim");

    assert_eq!(claimed.rejected.len(), bound + 5);
    let kept = fs::read_dir(dir.join(REJECTED_DIR)).expect("list").count();
    assert_eq!(
        kept,
        2 * bound,
        "a copy and a reason per rejection, up to the bound"
    );
    let newest = fs::read_dir(dir.join(REJECTED_DIR))
        .expect("list")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .any(|name| name.ends_with(&format!("bad-{:03}.trigger", bound + 4)));
    assert!(newest, "the newest rejection is kept");
}

#[test]
fn a_name_with_a_newline_and_esc_is_rejected_and_shown_escaped_everywhere() {
    let (_root, dir) = prepared_trigger_dir();
    let name = "evil\n2026-01-01T00:00:00Z  INFO forged\u{1b}[2K.trigger";
    drop_raw(&dir, name, br#"{"all":true}"#);

    let (rejection, text) = only_rejection(&dir);

    let shown = "evil\\n2026-01-01T00:00:00Z  INFO forged\\u{1b}[2K.trigger";
    assert_eq!(rejection.name, shown);
    assert!(rejection.reason.contains("name"), "{rejection:?}");
    assert!(text.starts_with(shown), "{text:?}");
    assert_eq!(text.matches('\n').count(), 1, "one line: {text:?}");
    assert!(!text.contains('\u{1b}'), "{text:?}");
    assert_eq!(
        fs::read_dir(&dir).expect("list").count(),
        2,
        "only the subfolders left"
    );
}

#[test]
fn a_name_with_a_bidi_override_is_rejected() {
    let (_root, dir) = prepared_trigger_dir();
    drop_raw(&dir, "abc\u{202e}reggirt.trigger", br#"{"all":true}"#);

    let (rejection, _) = only_rejection(&dir);

    assert_eq!(rejection.name, "abc\\u{202e}reggirt.trigger");
}

#[test]
fn a_non_utf8_name_is_rejected_and_shown_escaped() {
    use std::os::unix::ffi::OsStrExt;
    let (_root, dir) = prepared_trigger_dir();
    let name = std::ffi::OsStr::from_bytes(b"bad\xff.trigger");
    fs::write(dir.join(name), br#"{"all":true}"#).expect("write");

    let (rejection, text) = only_rejection(&dir);

    assert_eq!(rejection.name, "bad\\xff.trigger");
    assert!(text.starts_with("bad\\xff.trigger: "), "{text:?}");
    assert!(!dir.join(name).exists(), "moved out of the trigger folder");
}

#[test]
fn a_hard_link_to_a_daemon_file_is_deleted_and_only_an_owner_only_copy_is_kept() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (root, dir) = prepared_trigger_dir();
    let victim = victim(root.path());
    fs::hard_link(&victim, dir.join(PROCESSING_DIR).join("kill")).expect("plant the link");

    let claimed = claim_all(&dir).expect("claim");

    assert_eq!(claimed.rejected.len(), 1, "{claimed:?}");
    let meta = fs::metadata(&victim).expect("victim still there");
    assert_eq!(
        meta.nlink(),
        1,
        "a name in the trigger folder still reaches the victim"
    );
    assert_eq!(
        fs::read(&victim).expect("read victim"),
        b"precious database pages"
    );
    for name in names_in(&dir.join(REJECTED_DIR)) {
        let mode = fs::metadata(dir.join(REJECTED_DIR).join(&name))
            .expect("stat")
            .permissions()
            .mode();
        let allowed = if name.ends_with(REASON_SUFFIX) {
            0o640
        } else {
            0o600
        };
        assert_eq!(mode & 0o777 & !allowed, 0, "{name} has mode {mode:o}");
    }
}

#[test]
fn a_reason_quoting_the_file_s_content_shows_it_escaped() {
    let (_root, dir) = prepared_trigger_dir();
    drop_raw(&dir, "odd.trigger", br#"{"\u001b[31mred":1}"#);

    let (rejection, text) = only_rejection(&dir);

    assert!(rejection.reason.contains(r"\u{1b}[31mred"), "{rejection:?}");
    assert!(!text.contains('\u{1b}'), "{text:?}");
}

#[test]
fn a_reason_name_taken_by_someone_else_is_left_alone_and_another_name_used() {
    let (_root, dir) = prepared_trigger_dir();
    let planted = dir.join(REJECTED_DIR).join(format!("{PLANTED_KEY}.reason"));
    fs::write(&planted, b"theirs").expect("plant");
    fs::write(dir.join(PROCESSING_DIR).join(PLANTED_KEY), b"x").expect("drop the bad file");

    let (rejection, text) = only_rejection(&dir);

    assert_eq!(fs::read(&planted).expect("read"), b"theirs");
    assert_eq!(rejection.name, "kill");
    assert!(text.starts_with("kill: "), "{text:?}");
}

#[test]
fn a_subfolder_replaced_by_a_link_is_named_in_an_error_that_says_what_to_do() {
    let (root, dir) = prepared_trigger_dir();
    fs::remove_dir(dir.join(REJECTED_DIR)).expect("remove rejected/");
    std::os::unix::fs::symlink(root.path(), dir.join(REJECTED_DIR)).expect("plant the link");

    let err = claim_all(&dir).expect_err("refused");

    let shown = dir.join(REJECTED_DIR).display().to_string();
    assert_eq!(
        err.to_string(),
        format!(
            "{shown} is a symbolic link or not a folder; links in the trigger folder are never \
             followed: remove it, and the daemon creates the folder again"
        )
    );
}
