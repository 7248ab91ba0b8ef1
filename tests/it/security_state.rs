//! The secrets key file and the state folder under attack (issue 10, findings 6 and 7): a
//! missing key is never silently replaced, a key file others can read or write is refused as
//! ssh refuses a loose private key, and a state folder open to others is closed.
//!
//! Some tests change a file's owner or group: they need to run as root, as this project's
//! test runs do.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::support::{OutputExt, TestEnv};

/// An owner and a group nobody on a test machine has: a file given them belongs to "another
/// user" or "another group".
const FOREIGN_ID: u32 = 54_321;

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
        out.assert_fails_with(1, &shown);
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
async fn a_state_folder_its_group_can_write_is_closed_to_group_writes() {
    let env = TestEnv::new().await;
    let dir = state_dir(&env);
    std::fs::create_dir(&dir).expect("create the state folder");
    set_mode(&dir, 0o770);

    env.run(&["connection", "list"]).await.assert_ok();

    assert_eq!(mode_of(&dir), 0o750);
}

#[tokio::test(flavor = "multi_thread")]
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
