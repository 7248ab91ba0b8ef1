//! One request budget per ActiveCampaign account across processes: runs and commands started
//! at once, each a process of its own, together stay within the account's limits, as the
//! sandbox (with those limits on) counts what arrives.

use std::process::Stdio;
use std::time::{Duration, Instant};

use acexport::sandbox::world::World;
use futures::future::join_all;

use crate::daemon::DaemonProcess;
use crate::support::{API_KEY, OutputExt, TestEnv};

/// ActiveCampaign's per-second limit, in the settings and enforced by the sandbox.
const REQUESTS_PER_SECOND: u32 = 5;
/// The per-minute bulk limit, scaled up from ActiveCampaign's 100 so that a few seconds hold
/// many imports; in the settings and enforced by the sandbox.
const BULK_IMPORTS_PER_MINUTE: u32 = 60;
/// A stretch shorter than the test in which bulk imports must keep the per-minute pace: a
/// minute-long window would never fill in a test this short.
const PACE_WINDOW: Duration = Duration::from_secs(4);
/// Profiles per export: four bulk imports each.
const PROFILES: usize = 1000;
/// `connection test` commands started beside the runs, each sending one request.
const COMMANDS: usize = 8;

/// A world whose sandbox enforces the limits the settings give, with connection `crm` and
/// exports `first` (list 1) and `second` (list 2) of [`PROFILES`] profiles each.
async fn two_exports_on_one_account() -> TestEnv {
    let world = World::builder()
        .token(API_KEY)
        .limits(Some(REQUESTS_PER_SECOND), Some(BULK_IMPORTS_PER_MINUTE))
        .setting("activecampaign.requests_per_second", REQUESTS_PER_SECOND)
        .setting(
            "activecampaign.bulk_imports_per_minute",
            BULK_IMPORTS_PER_MINUTE,
        )
        .setting("activecampaign.retry_base_ms", 10)
        .build()
        .await
        .expect("build the test world");
    let env = TestEnv::on(world);
    env.add_connection("crm").await;
    for (index, (name, list)) in [("first", "1"), ("second", "2")].into_iter().enumerate() {
        let rows: String = (0..PROFILES)
            .map(|i| format!("user{index}-{i}@example.com\n"))
            .collect();
        let csv = env.write(&format!("{name}.csv"), &format!("email\n{rows}"));
        env.run(&["segment", "add", name, "--csv", &csv])
            .await
            .assert_ok();
        env.run(&[
            "export",
            "add",
            name,
            "--connection",
            "crm",
            "--list",
            list,
            "--segment",
            name,
            "--email",
            "email",
        ])
        .await
        .assert_ok();
    }
    env
}

/// What the sandbox counted must be within the limits: no 429, no bulk "Rate limit exceeded.",
/// never more attempts in a second or bulk imports in a minute than allowed, and bulk imports
/// at the per-minute pace in every [`PACE_WINDOW`].
fn assert_within_limits(env: &TestEnv) {
    let stats = env.sandbox.stats();
    assert_eq!(stats.contacts_imported, 2 * PROFILES as u64, "{stats:?}");
    assert_eq!(stats.too_many_requests, 0, "{stats:?}");
    assert_eq!(stats.bulk_rate_limited, 0, "{stats:?}");
    assert!(
        stats.peak_requests_per_second <= u64::from(REQUESTS_PER_SECOND),
        "{stats:?}"
    );
    assert!(
        stats.peak_bulk_imports_per_minute <= u64::from(BULK_IMPORTS_PER_MINUTE),
        "{stats:?}"
    );
    // Evenly spaced imports: at most the window's share of the per-minute limit, plus the one
    // at its start.
    let pace = (PACE_WINDOW.as_secs() * u64::from(BULK_IMPORTS_PER_MINUTE) / 60 + 1) as usize;
    let densest = env
        .sandbox
        .max_requests_in_window(PACE_WINDOW, Some("/import/bulk_import"));
    assert!(
        densest <= pace,
        "{densest} bulk imports within {PACE_WINDOW:?}"
    );
}

/// Runs `export run` of both exports and [`COMMANDS`] `connection test` at once, each its own
/// process; every one must succeed.
async fn run_both_exports_and_a_burst_of_commands(env: &TestEnv) {
    let run_args = [["export", "run", "first"], ["export", "run", "second"]];
    let runs = run_args.iter().map(|args| env.run(args));
    let commands = (0..COMMANDS).map(|_| env.run(&["connection", "test", "crm"]));
    let (runs, commands) = tokio::join!(join_all(runs), join_all(commands));
    for out in runs.iter().chain(&commands) {
        out.assert_ok();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_runs_and_a_burst_of_commands_on_one_account_stay_within_its_limits_together() {
    let env = two_exports_on_one_account().await;

    run_both_exports_and_a_burst_of_commands(&env).await;

    assert_within_limits(&env);
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_beside_a_daemon_running_two_exports_stay_within_the_limits_together() {
    let env = two_exports_on_one_account().await;
    let log = env.path("daemon.log");
    let mut daemon = env.command(env!("CARGO_BIN_EXE_acexport"));
    daemon
        .arg("daemon")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let _daemon = DaemonProcess::new(daemon.spawn().expect("start the daemon"));
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("Daemon ready")
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "daemon not ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Both runs are handed to the daemon; the commands send their own requests.
    run_both_exports_and_a_burst_of_commands(&env).await;

    assert_within_limits(&env);
}
