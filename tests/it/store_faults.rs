//! Store faults, made for real: a full disk (a small tmpfs filled up), a read-only database
//! (as a service user, so that file modes bite), a database locked by another process and a
//! database moved away. Each must give one message naming the file, the cause and what to do;
//! `export run --json` prints its one object on every path; no run is left `running` by a fault
//! the process survived; recovery needs nothing beyond removing the cause.
//!
//! Mounting a tmpfs and switching to another user need root: these tests say so when run
//! without it, rather than passing without testing anything.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use acexport::sandbox::world::World;
use sqlx::Connection;
use tokio::io::AsyncWriteExt;

use crate::support::{API_KEY, OutputExt, contains};

/// A disk this small fills in a moment; the store and a few runs of three batches fit in it.
const TMPFS_SIZE: &str = "size=2m";
/// The service user a read-only database is tried as (root ignores file modes).
const SERVICE_UID: u32 = 65534;
/// How long a command may take: a locked database is waited for 30 s before it is reported.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);
/// Members in the segment: three bulk imports of 250.
const MEMBERS: usize = 600;

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount() -> Tmpfs {
        assert!(
            rustix::process::geteuid().is_root(),
            "these tests need root: they mount a tmpfs to fill a disk"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", TMPFS_SIZE, "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount a tmpfs on {}",
            dir.path().display()
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk to the last byte with `filler`.
    fn fill(&self) {
        let mut file = std::fs::File::create(self.filler()).expect("create the filler");
        let chunk = vec![0x5a_u8; 64 * 1024];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc_enospc()) => break,
                Err(e) => panic!("fill the tmpfs: {e}"),
            }
        }
        // The last partial pages too.
        while file.write(&[0x5a]).is_ok_and(|n| n == 1) {}
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).expect("remove the filler");
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn libc_enospc() -> i32 {
    rustix::io::Errno::NOSPC.raw_os_error()
}

/// A world whose store lives at `store` (else in its own folder), with a sandbox that keeps
/// each import queued for `import_delay` (time to cause a fault while a run is sending).
async fn new_world(store: Option<&Path>, import_delay: Duration) -> World {
    let mut builder = World::builder()
        .token(API_KEY)
        .sandbox(|o| o.import_delay = import_delay)
        .setting("activecampaign.retry_base_ms", 10)
        .setting("activecampaign.max_attempts", 2)
        .setting("activecampaign.timeout_secs", 10);
    if let Some(store) = store {
        builder = builder.setting("store.path", store.display().to_string());
    }
    builder.build().await.expect("build the test world")
}

/// The acexport binary in `world`, as `uid` when given.
fn command(world: &World, args: &[&str], uid: Option<u32>) -> tokio::process::Command {
    let mut command = world.command(env!("CARGO_BIN_EXE_acexport"));
    if let Some(uid) = uid {
        std::os::unix::process::CommandExt::uid(&mut command, uid);
        std::os::unix::process::CommandExt::gid(&mut command, uid);
    }
    let mut command = tokio::process::Command::from(command);
    command
        .args(args)
        .kill_on_drop(true)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

async fn finish(child: tokio::process::Child, args: &[&str]) -> Output {
    let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("acexport {args:?} did not finish"))
        .expect("wait for acexport");
    for bytes in [&output.stdout, &output.stderr] {
        assert!(!contains(bytes, API_KEY.as_bytes()), "the API key printed");
    }
    output
}

async fn run(world: &World, args: &[&str], uid: Option<u32>) -> Output {
    let mut child = command(world, args, uid).spawn().expect("start acexport");
    drop(child.stdin.take());
    finish(child, args).await
}

/// Connection `crm`, segment `members` of [`MEMBERS`] people, export `weekly` to list 1.
async fn add_export(world: &World, uid: Option<u32>) {
    let mut csv = String::from("email,first_name\n");
    for i in 0..MEMBERS {
        csv.push_str(&format!("member{i}@example.com,Member{i}\n"));
    }
    let csv_path = world.path("members.csv");
    std::fs::write(&csv_path, csv).expect("write the segment");
    if let Some(uid) = uid {
        chown(world.dir.path(), uid);
    }
    let host = world.host();
    let add = [
        "connection",
        "add",
        "crm",
        "--host",
        &host,
        "--api-key-stdin",
        "--accept-data-transfer",
    ];
    let mut child = command(world, &add, uid).spawn().expect("start acexport");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(API_KEY.as_bytes()).await.expect("key");
    drop(stdin);
    finish(child, &add).await.assert_ok();
    let csv_arg = csv_path.display().to_string();
    run(
        world,
        &["segment", "add", "members", "--csv", &csv_arg],
        uid,
    )
    .await
    .assert_ok();
    let export = [
        "export",
        "add",
        "weekly",
        "--connection",
        "crm",
        "--list",
        "1",
        "--segment",
        "members",
        "--email",
        "email",
    ];
    run(world, &export, uid).await.assert_ok();
}

/// Gives `path` and everything under it to `uid`.
fn chown(path: &Path, uid: u32) {
    let status = std::process::Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{uid}"))
        .arg(path)
        .status()
        .expect("run chown");
    assert!(status.success(), "chown {}", path.display());
}

/// The one `acexport: ` line of a failed command, checked to be the only one and free of the
/// raw SQLite and sqlx texts a user cannot act on.
fn the_message(out: &Output) -> String {
    let stderr = out.stderr_text();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("acexport: "))
        .collect();
    assert_eq!(lines.len(), 1, "one message, got:\n{stderr}");
    for raw in ["begin_with", "transaction depth", "(code: "] {
        assert!(!stderr.contains(raw), "{raw:?} in:\n{stderr}");
    }
    lines[0].to_owned()
}

/// `export run --json`'s one object on stdout.
fn the_object(out: &Output) -> serde_json::Value {
    let stdout = out.stdout_text();
    let value: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("one JSON object on stdout ({e}):\n{stdout}"));
    assert!(value.is_object(), "{stdout}");
    value
}

fn run_json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&out.stdout_text()).expect("JSON")
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: mounts a small tmpfs and fills it"]
async fn a_full_disk_at_start_is_named_with_its_file_and_the_run_works_once_space_is_freed() {
    let disk = Tmpfs::mount();
    let db = disk.path().join("acexport.db");
    let world = new_world(Some(&db), Duration::ZERO).await;
    add_export(&world, None).await;
    disk.fill();

    let out = run(&world, &["export", "run", "weekly", "--json"], None).await;

    assert_eq!(out.code(), Some(1), "{}", out.stderr_text());
    let message = the_message(&out);
    assert!(message.contains(&db.display().to_string()), "{message}");
    assert!(message.contains("full"), "{message}");
    assert!(!message.contains("disk I/O error"), "{message}");
    let object = the_object(&out);
    assert_eq!(object["status"], "failed", "{object}");
    assert!(
        object["error"].as_str().is_some_and(|e| e.contains("full")),
        "{object}"
    );

    disk.free();
    let again = run(&world, &["export", "run", "weekly", "--json"], None).await;
    again.assert_ok();
    assert_eq!(run_json(&again)["status"], "succeeded");
}

/// Waits until the sandbox has received the run's first bulk import: the run is sending.
async fn until_sending(world: &World) {
    while world
        .sandbox
        .requests()
        .iter()
        .all(|r| !r.path.ends_with("bulk_import"))
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: mounts a small tmpfs and fills it"]
async fn a_disk_that_fills_during_a_run_fails_it_with_one_message_and_records_it_failed() {
    let disk = Tmpfs::mount();
    let db = disk.path().join("acexport.db");
    let world = new_world(Some(&db), Duration::from_millis(700)).await;
    add_export(&world, None).await;
    let args = ["export", "run", "weekly", "--json"];
    let mut child = command(&world, &args, None).spawn().expect("start");
    drop(child.stdin.take());
    until_sending(&world).await;

    disk.fill();
    let out = finish(child, &args).await;

    let object = the_object(&out);
    assert_eq!(out.code(), Some(1), "{}", out.stderr_text());
    assert_eq!(object["status"], "failed", "{object}");
    let error = object["error"].as_str().expect("an error");
    assert!(error.contains(&db.display().to_string()), "{error}");
    assert!(error.contains("is full"), "{error}");
    for raw in ["begin_with", "transaction depth", "(code: "] {
        assert!(
            !out.stderr_text().contains(raw),
            "{raw:?} in {}",
            out.stderr_text()
        );
    }
    disk.free();
    // Whether the finish fits depends on how full the log's last page was when the disk
    // filled: it is recorded at once, or (its note) by the export's next start. Either way
    // the run ends `failed`, never `running` or `interrupted`.
    run(&world, &["export", "run", "weekly", "--json"], None)
        .await
        .assert_ok();
    let shown = run(&world, &["runs", "--json"], None).await;
    let runs: Vec<serde_json::Value> =
        serde_json::from_str(&shown.stdout_text()).expect("runs --json");
    let first = runs
        .iter()
        .find(|r| r["id"] == 1)
        .unwrap_or_else(|| panic!("run 1 in {runs:?}"));
    assert_eq!(first["status"], "failed", "{first}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: mounts a small tmpfs and fills it"]
async fn a_run_whose_finish_cannot_be_written_on_a_full_disk_is_recorded_by_the_next_start() {
    let disk = Tmpfs::mount();
    let db = disk.path().join("acexport.db");
    let world = new_world(Some(&db), Duration::from_millis(700)).await;
    add_export(&world, None).await;
    let args = ["export", "run", "weekly", "--json"];
    let mut child = command(&world, &args, None).spawn().expect("start");
    drop(child.stdin.take());
    until_sending(&world).await;
    // A reader of an older snapshot keeps SQLite from reusing the start of its write-ahead log,
    // so that on the full disk even the finish finds no room.
    let mut reader = sqlx::sqlite::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("open the database in the test");
    sqlx::query("BEGIN")
        .execute(&mut reader)
        .await
        .expect("begin");
    sqlx::query("SELECT COUNT(*) FROM runs")
        .execute(&mut reader)
        .await
        .expect("read");

    disk.fill();
    let out = finish(child, &args).await;

    assert_eq!(out.code(), Some(1), "{}", out.stderr_text());
    let message = the_message(&out);
    assert!(message.contains(&db.display().to_string()), "{message}");
    assert!(message.contains("is full"), "{message}");
    assert!(
        message.contains("the next run of the export records it"),
        "{message}"
    );
    let object = the_object(&out);
    assert_eq!(object["status"], "failed", "{object}");
    let run_id = object["run_id"].as_i64().expect("the run's id");

    sqlx::query("ROLLBACK")
        .execute(&mut reader)
        .await
        .expect("end");
    reader.close().await.expect("close");
    disk.free();
    let again = run(&world, &args, None).await;
    again.assert_ok();
    let shown = run(
        &world,
        &["runs", "show", &run_id.to_string(), "--json"],
        None,
    )
    .await;
    shown.assert_ok();
    let first = &run_json(&shown)["run"];
    assert_eq!(first["status"], "failed", "{first}");
    let error = first["error"].as_str().expect("its error");
    assert!(error.contains("is full"), "{error}");
    assert!(
        error.contains("recorded when the export next ran"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root: runs acexport as another user"]
async fn a_read_only_database_is_named_with_the_fix_and_runs_again_once_writable() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root: it runs acexport as a service user so that file modes bite"
    );
    let world = new_world(None, Duration::ZERO).await;
    let db = world.store_path();
    let uid = Some(SERVICE_UID);
    add_export(&world, uid).await;
    run(&world, &["export", "run", "weekly"], uid)
        .await
        .assert_ok();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o400)).expect("chmod");

    let out = run(&world, &["export", "run", "weekly", "--json"], uid).await;

    assert_eq!(out.code(), Some(1), "{}", out.stderr_text());
    let message = the_message(&out);
    assert!(message.contains(&db.display().to_string()), "{message}");
    assert!(message.contains("read-only"), "{message}");
    assert!(message.contains("chmod"), "{message}");
    assert_eq!(the_object(&out)["status"], "failed");

    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let again = run(&world, &["export", "run", "weekly", "--json"], uid).await;
    again.assert_ok();
    assert_eq!(run_json(&again)["status"], "succeeded");
    let listed = run(&world, &["runs", "--json"], uid).await;
    listed.assert_ok();
    let statuses: Vec<serde_json::Value> = run_json(&listed)
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert!(!statuses.contains(&"running".into()), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_locked_by_another_process_is_named_after_the_wait_and_nothing_is_left_running()
{
    let world = new_world(None, Duration::ZERO).await;
    let db = world.store_path();
    add_export(&world, None).await;
    let mut holder = sqlx::sqlite::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("open the database in the test");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .expect("take the write lock");

    let out = run(&world, &["export", "run", "weekly", "--json"], None).await;

    assert_eq!(out.code(), Some(1), "{}", out.stderr_text());
    let message = the_message(&out);
    assert!(message.contains(&db.display().to_string()), "{message}");
    assert!(message.contains("locked"), "{message}");
    assert!(message.contains("another process"), "{message}");
    assert_eq!(the_object(&out)["status"], "failed");

    sqlx::query("ROLLBACK")
        .execute(&mut holder)
        .await
        .expect("release");
    holder.close().await.expect("close");
    let again = run(&world, &["export", "run", "weekly", "--json"], None).await;
    again.assert_ok();
    let listed = run(&world, &["runs", "--json"], None).await;
    let statuses: Vec<serde_json::Value> = run_json(&listed)
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(statuses, ["succeeded"], "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_moved_away_is_named_and_not_replaced_by_an_empty_one() {
    let world = new_world(None, Duration::from_millis(700)).await;
    let db = world.store_path();
    add_export(&world, None).await;
    let args = ["export", "run", "weekly", "--json"];
    let mut child = command(&world, &args, None).spawn().expect("start");
    drop(child.stdin.take());
    until_sending(&world).await;
    let moved = world.path("moved.db");
    std::fs::rename(&db, &moved).expect("move the database away");

    let out = finish(child, &args).await;
    let next = run(&world, &args, None).await;

    // Its open handles still reach the moved file: the run itself may finish there.
    drop(out);
    assert_eq!(next.code(), Some(1), "{}", next.stderr_text());
    let message = the_message(&next);
    assert!(message.contains(&db.display().to_string()), "{message}");
    assert!(message.contains("missing"), "{message}");
    assert_eq!(the_object(&next)["status"], "failed");
    assert!(!db.exists(), "no empty database in its place");

    std::fs::rename(&moved, &db).expect("put it back");
    let back = run(&world, &args, None).await;
    back.assert_ok();
    let listed = run(&world, &["runs", "--json"], None).await;
    let statuses: Vec<serde_json::Value> = run_json(&listed)
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert!(!statuses.contains(&"running".into()), "{statuses:?}");
}
