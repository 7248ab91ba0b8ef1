//! `acexport check-config` and how every command treats the settings file and usage errors.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use crate::support::{OutputExt, TestEnv};

#[tokio::test(flavor = "multi_thread")]
async fn check_config_names_the_settings_file_and_prints_every_key() {
    let env = TestEnv::new().await;

    let out = env.run(&["check-config"]).await;

    out.assert_ok();
    let stdout = out.stdout_text();
    let first = stdout.lines().next().unwrap_or_default();
    assert_eq!(first, format!("settings file: {}", env.config.display()));
    assert!(
        stdout.contains("activecampaign.retry_base_ms = 10"),
        "{stdout}"
    );
    assert!(
        stdout.contains("activecampaign.max_attempts = 2"),
        "{stdout}"
    );
    assert!(stdout.contains("store.path = "), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_with_an_explicit_file_reads_that_file() {
    let env = TestEnv::new().await;
    let other = env.write("other.toml", "[schedule]\ntimezone = \"Europe/Paris\"\n");

    let out = env.run(&["--config", &other, "check-config"]).await;

    out.assert_ok();
    let stdout = out.stdout_text();
    assert!(
        stdout.starts_with(&format!("settings file: {other}\n")),
        "{stdout}"
    );
    assert!(
        stdout.contains("schedule.timezone = \"Europe/Paris\""),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_exits_78_naming_the_key_of_an_invalid_value() {
    let env = TestEnv::new().await;
    let bad = env.write("bad.toml", "[activecampaign]\nrequests_per_second = 0\n");

    let out = env.run(&["--config", &bad, "check-config"]).await;

    out.assert_fails_with(78, "activecampaign.requests_per_second");
    assert!(out.stdout_text().is_empty(), "{}", out.stdout_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_refuses_a_misspelt_key_with_78() {
    let env = TestEnv::new().await;
    let bad = env.write("bad.toml", "[activecampaign]\nrequests_per_secnd = 4\n");

    let out = env.run(&["--config", &bad, "connection", "list"]).await;

    out.assert_fails_with(78, "requests_per_secnd");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_settings_file_exits_78_naming_it() {
    let env = TestEnv::new().await;
    let missing = env.path("nowhere.toml").display().to_string();

    let out = env.run(&["--config", &missing, "segment", "list"]).await;

    out.assert_fails_with(78, &missing);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_key_is_not_accepted_as_an_option_value() {
    let env = TestEnv::new().await;
    let host = env.host();

    let out = env
        .run(&[
            "connection",
            "add",
            "crm",
            "--host",
            &host,
            "--api-key",
            "abc",
            "--accept-data-transfer",
        ])
        .await;

    assert_eq!(out.code(), Some(2), "{}", out.stderr_text());
    assert_eq!(env.requests_to("users/me"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_api_key_sources_at_once_are_a_usage_error() {
    let env = TestEnv::new().await;
    let host = env.host();
    let file = env.write("key", "abc");

    let out = env
        .run(&[
            "connection",
            "add",
            "crm",
            "--host",
            &host,
            "--api-key-file",
            &file,
            "--api-key-stdin",
            "--accept-data-transfer",
        ])
        .await;

    assert_eq!(out.code(), Some(2), "{}", out.stderr_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn json_log_format_writes_one_object_per_line_to_stderr_only() {
    let env = TestEnv::with_settings("[log]\nformat = \"json\"\n").await;
    let csv = env.write("members.csv", "email\nada@example.com\n");

    let out = env.run(&["segment", "add", "members", "--csv", &csv]).await;

    out.assert_ok();
    let stderr = out.stderr_text();
    let line = stderr
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no log line:\n{stderr}"));
    let event: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!(event["fields"]["message"], "Segment saved", "{line}");
    assert_eq!(event["level"], "INFO", "{line}");
    assert!(
        out.stdout_text().starts_with("Segment \"members\" saved."),
        "{}",
        out.stdout_text()
    );
}

/// A uid without any right to the test's folders (root reads every file whatever its mode).
const OTHER_UID: u32 = 65534;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: runs acexport as another user"]
async fn a_settings_file_the_user_cannot_read_is_an_error_naming_it_not_a_fallback_to_defaults() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root: it runs acexport as another user so that modes bite"
    );
    // As the README's install once made it: a folder others cannot enter.
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = dir.path().join("etc-acexport");
    std::fs::create_dir(&folder).expect("mkdir");
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o750)).expect("chmod");
    let file = folder.join("acexport.toml");
    std::fs::write(&file, "[daemon]\nworkers = 2\n").expect("write settings");

    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_acexport"));
    command
        .args(["export", "list"])
        .env_clear()
        .env("ACEXPORT_CONFIG", &file)
        .env("HOME", dir.path())
        .current_dir("/")
        .uid(OTHER_UID)
        .gid(OTHER_UID);
    let out = command.output().expect("run acexport");

    out.assert_fails_with(
        78,
        &format!("cannot read settings file {}: ", file.display()),
    );
    assert!(
        out.stderr_text().contains("mode 0644"),
        "{}",
        out.stderr_text()
    );
    assert!(out.stdout_text().is_empty(), "{}", out.stdout_text());
}

/// One journald entry as the native protocol carries it (systemd.io/JOURNAL_NATIVE_PROTOCOL).
fn journal_fields(datagram: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut rest = datagram;
    while let Some(end) = rest.iter().position(|b| *b == b'\n' || *b == b'=') {
        let name = String::from_utf8_lossy(&rest[..end]).into_owned();
        if rest[end] == b'=' {
            let line_end = rest[end..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(rest.len(), |p| end + p);
            fields.insert(
                name,
                String::from_utf8_lossy(&rest[end + 1..line_end]).into(),
            );
            rest = &rest[(line_end + 1).min(rest.len())..];
        } else {
            let len_bytes: [u8; 8] = rest[end + 1..end + 9].try_into().expect("length");
            let len = u64::from_le_bytes(len_bytes) as usize;
            let value = &rest[end + 9..end + 9 + len];
            fields.insert(name, String::from_utf8_lossy(value).into());
            rest = &rest[(end + 10 + len).min(rest.len())..];
        }
    }
    fields
}

/// Runs `acexport segment add` in `env` in a mount namespace whose /run is `run`, with stderr
/// a file that `JOURNAL_STREAM` names, as systemd starts a service. Returns what it wrote
/// on stderr.
fn segment_add_on_a_journal_stream(env: &TestEnv, run: &Path, csv: &str) -> String {
    let stderr_path = env.path("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).expect("create stderr file");
    let stat = rustix::fs::fstat(&stderr).expect("fstat");
    let mut command = env.command("unshare");
    command
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" /run && exec "$@""#)
        .arg(run)
        .arg(env!("CARGO_BIN_EXE_acexport"))
        .args(["segment", "add", "members", "--csv", csv])
        .env("JOURNAL_STREAM", format!("{}:{}", stat.st_dev, stat.st_ino))
        .stdout(std::process::Stdio::null())
        .stderr(stderr);
    let status = command.status().expect("run unshare");
    assert!(
        status.success(),
        "{status}: {}",
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    std::fs::read_to_string(&stderr_path).expect("read stderr")
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: a mount namespace puts a fake journald socket at /run/systemd/journal"]
async fn on_a_journal_stream_logs_go_to_journald_natively_with_priority_and_fields() {
    let env = TestEnv::new().await;
    let csv = env.write("members.csv", "email\nada@example.com\n");
    let run = env.path("run");
    std::fs::create_dir_all(run.join("systemd/journal")).expect("mkdir");
    let journal = std::os::unix::net::UnixDatagram::bind(run.join("systemd/journal/socket"))
        .expect("bind the fake journal socket");
    journal.set_nonblocking(true).expect("nonblocking");

    let stderr = segment_add_on_a_journal_stream(&env, &run, &csv);

    let mut entries = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = journal.recv(&mut buf) {
        if n > 0 {
            entries.push(journal_fields(&buf[..n]));
        }
    }
    let saved = entries
        .iter()
        .find(|e| {
            e.get("MESSAGE")
                .is_some_and(|m| m.starts_with("Segment saved"))
        })
        .unwrap_or_else(|| panic!("no \"Segment saved\" entry in {entries:#?}"));
    assert_eq!(saved["PRIORITY"], "6", "{saved:#?}");
    assert_eq!(saved["SYSLOG_IDENTIFIER"], "acexport", "{saved:#?}");
    assert_eq!(saved["SEGMENT"], "members", "{saved:#?}");
    assert_eq!(saved["ROWS"], "1", "{saved:#?}");
    // journalctl shows only MESSAGE by default: it carries the fields too.
    assert_eq!(
        saved["MESSAGE"], "Segment saved segment=members kind=csv rows=1",
        "{saved:#?}"
    );
    assert!(stderr.is_empty(), "logged on stderr too: {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: a mount namespace hides /run/systemd/journal"]
async fn on_a_journal_stream_without_a_journal_socket_logs_are_text_lines_with_their_priority() {
    let env = TestEnv::new().await;
    let csv = env.write("members.csv", "email\nada@example.com\n");
    let run = env.path("run");
    std::fs::create_dir_all(&run).expect("mkdir");

    let stderr = segment_add_on_a_journal_stream(&env, &run, &csv);

    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>") && l.contains("Cannot reach the journal's socket")),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>") && l.contains("Segment saved")),
        "{stderr}"
    );
}
