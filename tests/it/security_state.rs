//! The secrets key file and the state folder under attack (issue 10, findings 6 and 7): a
//! missing key is never silently replaced, a key file others can read or write is refused as
//! ssh refuses a loose private key, a state folder open to others is closed, and a removed
//! export leaves none of its emails in the database file, its write-ahead log or its index.
//!
//! Some tests change a file's owner or group: they need to run as root, as this project's
//! test runs do.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::{OutputExt, TestEnv, contains, export_add_args};

/// An owner and a group nobody on a test machine has: a file given them belongs to "another
/// user" or "another group".
const FOREIGN_ID: u32 = 54_321;

/// Emails nothing else in a database holds: finding one (or its local part) in a file means a
/// delivered profile was left behind.
const EMAILS: [&str; 2] = [
    "quilla.vantresca.7731@example.org",
    "orrin.blackwood.5529@example.net",
];

fn key_path(env: &TestEnv) -> PathBuf {
    env.settings().expect("settings").secrets.key_file
}

fn state_dir(env: &TestEnv) -> PathBuf {
    env.store_path()
        .parent()
        .expect("the store is in a folder")
        .to_path_buf()
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").mode() & 0o7777
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>) {
    std::os::unix::fs::chown(path, uid, gid).expect("chown (the tests run as root)");
}

/// A world with connection `crm` stored, so a sealed API key is in its database.
async fn env_with_connection() -> TestEnv {
    let env = TestEnv::new().await;
    env.add_connection("crm").await;
    env
}

/// `connection list` succeeded and shows `crm`.
async fn assert_lists_crm(env: &TestEnv) {
    let out = env.run(&["connection", "list"]).await;
    out.assert_ok();
    assert!(out.stdout_text().contains("crm"), "{}", out.stdout_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_key_file_with_a_connection_stored_stops_every_command_and_changes_nothing() {
    let env = env_with_connection().await;
    env.add_csv_segment("members").await;
    let key = key_path(&env);
    let aside = env.path("secrets.key.backup");
    std::fs::rename(&key, &aside).expect("move the key file away");
    let before = std::fs::read(env.store_path()).expect("read the database");
    let shown = key.display().to_string();

    for args in [
        &["connection", "list"][..],
        &["connection", "test", "crm"],
        &["segment", "list"],
        &["export", "list"],
        &["runs"],
        &["status"],
        &["daemon"],
    ] {
        let out = env.run(args).await;
        // The daemon says 78 (an operator must act), so that systemd does not restart it.
        let code = if args == ["daemon"] { 78 } else { 1 };
        out.assert_fails_with(code, &shown);
        let stderr = out.stderr_text();
        assert!(stderr.contains("is missing"), "{args:?}: {stderr}");
        assert!(stderr.contains("from a backup"), "{args:?}: {stderr}");
    }

    assert!(!key.exists(), "no new key was created in its place");
    assert_eq!(
        before,
        std::fs::read(env.store_path()).expect("read the database"),
        "the database is unchanged"
    );
    std::fs::rename(&aside, &key).expect("restore the key file");
    env.run(&["connection", "test", "crm"]).await.assert_ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_store_gets_a_new_owner_only_key_file() {
    let env = TestEnv::new().await;

    env.run(&["connection", "list"]).await.assert_ok();

    assert_eq!(mode_of(&key_path(&env)), 0o600);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_file_others_can_read_is_refused_naming_the_file_and_the_chmod() {
    let env = env_with_connection().await;
    let key = key_path(&env);
    set_mode(&key, 0o644);

    let out = env.run(&["connection", "list"]).await;

    out.assert_fails_with(1, &format!("chmod 0640 {}", key.display()));
    assert!(
        out.stderr_text().contains("others can read"),
        "{}",
        out.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_file_others_can_only_write_is_refused_with_an_owner_only_chmod() {
    let env = env_with_connection().await;
    let key = key_path(&env);
    set_mode(&key, 0o602);

    let out = env.run(&["connection", "list"]).await;

    out.assert_fails_with(1, &format!("chmod 0600 {}", key.display()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_file_its_group_can_write_is_refused() {
    let env = env_with_connection().await;
    let key = key_path(&env);
    set_mode(&key, 0o660);

    let out = env.run(&["connection", "list"]).await;

    out.assert_fails_with(1, &format!("chmod 0640 {}", key.display()));
    assert!(
        out.stderr_text().contains("its group can write"),
        "{}",
        out.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: gives the key file another group"]
async fn a_group_readable_key_file_of_another_group_is_accepted_as_the_install_makes_it() {
    let env = env_with_connection().await;
    let key = key_path(&env);
    chown(&key, None, Some(FOREIGN_ID));
    set_mode(&key, 0o640);

    assert_lists_crm(&env).await;
    env.run(&["connection", "test", "crm"]).await.assert_ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_owner_only_key_file_is_accepted() {
    let env = env_with_connection().await;
    set_mode(&key_path(&env), 0o600);

    assert_lists_crm(&env).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: gives the key file another owner"]
async fn a_key_file_owned_by_another_user_is_refused_naming_the_owner() {
    let env = env_with_connection().await;
    let key = key_path(&env);
    chown(&key, Some(FOREIGN_ID), None);

    let out = env.run(&["connection", "list"]).await;

    out.assert_fails_with(1, &key.display().to_string());
    assert!(
        out.stderr_text()
            .contains(&format!("owned by uid {FOREIGN_ID}")),
        "{}",
        out.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_symlinked_key_file_is_judged_by_the_file_it_points_to() {
    let env = env_with_connection().await;
    let key = key_path(&env);
    let real = env.path("real-secrets.key");
    std::fs::rename(&key, &real).expect("move the key");
    std::os::unix::fs::symlink(&real, &key).expect("symlink");

    assert_lists_crm(&env).await;

    set_mode(&real, 0o644);
    let out = env.run(&["connection", "list"]).await;
    out.assert_fails_with(1, &format!("chmod 0640 {}", key.display()));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_existing_state_folder_open_to_others_is_closed_to_them_and_a_warning_says_so() {
    let env = TestEnv::new().await;
    let dir = state_dir(&env);
    std::fs::create_dir(&dir).expect("create the state folder");
    set_mode(&dir, 0o755);

    let out = env.run(&["connection", "list"]).await;

    out.assert_ok();
    assert_eq!(mode_of(&dir), 0o750);
    let stderr = out.stderr_text();
    assert!(stderr.contains("WARN"), "{stderr}");
    assert!(stderr.contains(&dir.display().to_string()), "{stderr}");
    let again = env.run(&["connection", "list"]).await;
    again.assert_ok();
    assert!(!again.stderr_text().contains("WARN"), "warned once only");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_journal_stream_a_warning_carries_its_priority_and_no_timestamp() {
    use std::os::unix::fs::MetadataExt;
    let env = TestEnv::new().await;
    let dir = state_dir(&env);
    std::fs::create_dir(&dir).expect("create the state folder");
    set_mode(&dir, 0o755);
    // systemd names the stream it connected as stderr by device and inode.
    let log = env.path("journal-stream");
    let file = std::fs::File::create(&log).expect("stderr file");
    let meta = file.metadata().expect("meta");
    let stream = format!("{}:{}", meta.dev(), meta.ino());

    let status = env
        .command(env!("CARGO_BIN_EXE_acexport"))
        .args(["connection", "list"])
        .env("JOURNAL_STREAM", &stream)
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .status()
        .expect("run acexport");

    assert!(status.success());
    let text = std::fs::read_to_string(&log).expect("read stderr");
    let warning = text
        .lines()
        .find(|l| l.contains("State folder"))
        .unwrap_or_else(|| panic!("no warning in {text:?}"));
    assert!(warning.starts_with("<4>"), "{warning}");
    let year = chrono::Utc::now().format("%Y-").to_string();
    assert!(!warning.contains(&year), "{warning}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_state_folder_its_group_can_write_is_closed_to_group_writes() {
    let env = TestEnv::new().await;
    let dir = state_dir(&env);
    std::fs::create_dir(&dir).expect("create the state folder");
    set_mode(&dir, 0o770);

    env.run(&["connection", "list"]).await.assert_ok();

    assert_eq!(mode_of(&dir), 0o750);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: gives the folder another owner"]
async fn a_state_folder_open_to_others_and_owned_by_another_user_is_refused_with_the_chmod() {
    let env = TestEnv::new().await;
    let dir = state_dir(&env);
    std::fs::create_dir(&dir).expect("create the state folder");
    chown(&dir, Some(FOREIGN_ID), None);
    set_mode(&dir, 0o755);

    let out = env.run(&["connection", "list"]).await;

    out.assert_fails_with(1, &format!("chmod 0750 {}", dir.display()));
    assert_eq!(mode_of(&dir), 0o755, "left as it was");
    assert!(!env.store_path().exists(), "no database created in it");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_install_state_folder_mode_0750_is_kept() {
    let env = TestEnv::new().await;
    let dir = state_dir(&env);
    std::fs::create_dir(&dir).expect("create the state folder");
    set_mode(&dir, 0o750);

    let out = env.run(&["connection", "list"]).await;

    out.assert_ok();
    assert_eq!(mode_of(&dir), 0o750);
    assert!(!out.stderr_text().contains("WARN"), "{}", out.stderr_text());
}

/// The database file, its write-ahead log and its shared-memory index, as far as they exist.
fn database_files(db: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            let path = PathBuf::from(name);
            std::fs::read(&path).ok().map(|bytes| (path, bytes))
        })
        .collect()
}

/// Where any of [`EMAILS`] (whole or its local part) is found in the database's files.
fn emails_left(db: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for (path, bytes) in database_files(db) {
        for email in EMAILS {
            let local = email.split('@').next().unwrap_or(email);
            if contains(&bytes, local.as_bytes()) {
                found.push(format!("{email} in {}", path.display()));
            }
        }
    }
    found
}

/// A daemon on the test's world, killed if the test ends without stopping it.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the daemon and waits until it says it is ready: from then on it holds the database
/// open, so a command's exit no longer removes the write-ahead log.
async fn start_daemon(env: &TestEnv) -> Daemon {
    let log_path = env.path("daemon.log");
    let log = std::fs::File::create(&log_path).expect("daemon log");
    let mut command = env.command(env!("CARGO_BIN_EXE_acexport"));
    command
        .arg("daemon")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
    let daemon = Daemon(command.spawn().expect("start the daemon"));
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("Daemon ready") {
            return daemon;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "daemon not ready; log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_export_and_connection_leave_no_email_in_the_database_its_wal_or_shm() {
    let env = env_with_connection().await;
    let csv = env.write(
        "members.csv",
        &format!(
            "email,first_name\n{},Quilla\n{},Orrin\n",
            EMAILS[0], EMAILS[1]
        ),
    );
    env.run(&["segment", "add", "members", "--csv", &csv])
        .await
        .assert_ok();
    env.run(&export_add_args(&[])).await.assert_ok();
    // With the daemon holding the database open, the run's pages stay in the write-ahead log
    // after the command exits, as they do in production.
    let mut daemon = start_daemon(&env).await;
    env.run(&["export", "run", "weekly"]).await.assert_ok();
    let db = env.store_path();
    let stored = emails_left(&db);
    assert!(
        stored.iter().any(|f| f.ends_with("-wal")),
        "the run's delivery state is in the log (else the scan proves nothing): {stored:?}"
    );

    env.run(&["export", "remove", "weekly"]).await.assert_ok();
    env.run(&["connection", "remove", "crm", "--force"])
        .await
        .assert_ok();

    let left = emails_left(&db);
    assert!(
        left.is_empty(),
        "while the daemon holds the database: {left:?}"
    );
    daemon.0.kill().expect("stop the daemon");
    daemon.0.wait().expect("wait for the daemon");
    let left = emails_left(&db);
    assert!(left.is_empty(), "after the daemon stopped: {left:?}");
}
