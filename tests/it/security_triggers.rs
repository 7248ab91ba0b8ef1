//! Attacks on the trigger folder by a member of the trigger group, against the real daemon:
//! links planted where the daemon writes, a FIFO where it reads, names made to forge log lines.
//! Each test drops its files by hand, as such a member would, and checks that the daemon's
//! database is intact and that it still runs a valid trigger afterwards.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use acexport::store::RunStatus;

use crate::daemon::{Env, finished, sandbox_options, signal, wait_exit, wait_for_log};

/// Waits until the daemon's first claim created `rejected/`, so that the attack can plant in it.
async fn wait_for_dir(dir: &Path) {
    let start = Instant::now();
    while !dir.is_dir() {
        assert!(start.elapsed() < Duration::from_secs(20), "no {dir:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Drops a trigger for the test export and waits for its run to succeed.
async fn assert_a_valid_trigger_still_runs(env: &Env) {
    env.trigger_run();
    let runs = env
        .wait_for("a signal-file run", Duration::from_secs(20), |r| {
            r.iter().any(|r| r.trigger == "signal-file" && finished(r))
        })
        .await;
    assert_eq!(runs[0].status, RunStatus::Succeeded, "log:\n{}", env.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reason_file_linked_to_the_database_does_not_let_a_trigger_overwrite_it() {
    let env = Env::new(sandbox_options(0), 5, None).await;
    let mut daemon = env.start(None);
    env.wait_ready().await;
    let triggers = env.trigger_dir();
    wait_for_dir(&triggers.join("rejected")).await;
    let database = env.store_path();
    let before = std::fs::metadata(&database).expect("database").len();

    std::os::unix::fs::symlink(&database, triggers.join("rejected/kill.reason")).expect("link");
    std::fs::write(triggers.join("processing/kill"), b"x").expect("drop the bad file");
    wait_for_log(&env, "Signal file rejected").await;

    let header = std::fs::read(&database).expect("read the database");
    assert!(
        header.starts_with(b"SQLite format 3\0") && header.len() as u64 >= before,
        "the database was overwritten: {} bytes",
        header.len()
    );
    assert_a_valid_trigger_still_runs(&env).await;
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fifo_dropped_as_a_trigger_is_rejected_and_the_daemon_still_runs_a_valid_one() {
    let env = Env::new(sandbox_options(0), 5, None).await;
    let mut daemon = env.start(None);
    env.wait_ready().await;

    let fifo = env.trigger_dir().join("x.trigger");
    rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from(0o660)).expect("mkfifo");

    assert_a_valid_trigger_still_runs(&env).await;
    wait_for_log(&env, "is not a regular file").await;
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_names_that_would_forge_a_log_line_are_rejected_and_shown_escaped() {
    let env = Env::new(sandbox_options(0), 5, None).await;
    let mut daemon = env.start(None);
    env.wait_ready().await;
    let forged = "2026-01-01T00:00:00.000000Z  INFO acexport: Forged line";
    let names = [
        format!("evil\n{forged}\u{1b}[2K.trigger").into_bytes(),
        b"bad\xff.trigger".to_vec(),
    ];

    for name in &names {
        let path = env.trigger_dir().join(OsStr::from_bytes(name));
        std::fs::write(path, br#"{"all":true}"#).expect("drop");
    }

    let rejected = "Signal file rejected; its reason is in rejected/ file=";
    // One quoted word (the forged line holds spaces), its line break and escape shown escaped.
    wait_for_log(
        &env,
        &format!(r#"{rejected}"evil\\n{forged}\\u{{1b}}[2K.trigger""#),
    )
    .await;
    wait_for_log(&env, &format!(r"{rejected}bad\xff.trigger")).await;
    let log = env.log();
    assert!(
        !log.lines().any(|line| line.starts_with("2026-01-01")),
        "a forged line:\n{log}"
    );
    assert!(!log.contains('\u{1b}'), "a raw ESC in the log:\n{log}");
    assert!(env.runs().await.is_empty(), "a rejected name ran exports");
    assert_a_valid_trigger_still_runs(&env).await;
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());
}
