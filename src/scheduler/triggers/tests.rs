//! The trigger-file protocol: writing, claiming exactly once, rejecting with a reason.

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
