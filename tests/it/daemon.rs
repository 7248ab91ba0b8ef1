//! The daemon as systemd runs it: the real binary as a child process, real signals, a real
//! SQLite file and the sandbox over loopback. Definitions are written through the library
//! into the same database before the daemon starts.

use std::ops::Deref;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use acexport::sandbox::world::{World, export_input, test_sandbox_options};
use acexport::sandbox::{ListStatus, SandboxOptions};
use acexport::scheduler::{TriggerRequest, write_trigger};
use acexport::service::Context;
use acexport::service::exports::ExportInput;
use acexport::store::{RunCounts, RunRecord, RunStatus, TriggerKind};

const TOKEN: &str = "daemon-test-token-0042";

/// One test's world (folder, settings file, sandbox) with export `people-list` of segment
/// `people` defined, and a context on its store to read what the daemon wrote. It derefs to the
/// world, so tests reach `env.config`, `env.sandbox` and `env.dir` directly.
pub(super) struct Env {
    world: World,
    ctx: Context,
}

impl Deref for Env {
    type Target = World;

    fn deref(&self) -> &World {
        &self.world
    }
}

pub(super) fn sandbox_options(latency_ms: u64) -> SandboxOptions {
    SandboxOptions {
        latency: Duration::from_millis(latency_ms),
        ..test_sandbox_options(TOKEN)
    }
}

fn csv(n: usize) -> String {
    let mut out = String::from("email,first,last,phone\n");
    for i in 0..n {
        out.push_str(&format!(
            "person{i}@example.com,Given{i},Family{i},555-{i:05}\n"
        ));
    }
    out
}

impl Env {
    pub(super) async fn new(
        sandbox: SandboxOptions,
        profiles: usize,
        schedule: Option<&str>,
    ) -> Env {
        Env::with_settings(sandbox, profiles, schedule, 1000).await
    }

    async fn with_settings(
        sandbox: SandboxOptions,
        profiles: usize,
        schedule: Option<&str>,
        requests_per_second: u32,
    ) -> Env {
        let world = World::builder()
            .sandbox_options(sandbox)
            .workers(2)
            .setting("activecampaign.requests_per_second", requests_per_second)
            .setting("activecampaign.bulk_imports_per_minute", 60_000)
            .setting("activecampaign.retry_base_ms", 10)
            .setting("activecampaign.max_attempts", 3)
            .setting("activecampaign.timeout_secs", 5)
            .build()
            .await
            .expect("world");
        let ctx = world.open_context().await.expect("ctx");
        world.add_connection(&ctx, "ac").await.expect("connection");
        world
            .add_csv_segment(&ctx, "people", &csv(profiles))
            .await
            .expect("segment");
        let export = ExportInput {
            first_name: Some("first".into()),
            last_name: Some("last".into()),
            phone: Some("phone".into()),
            schedule: schedule.map(str::to_owned),
            ..export_input("people-list", "ac", &["people"])
        };
        world.add_export(&ctx, export).await.expect("export");
        Env { world, ctx }
    }

    /// Drops a signal file asking for a run of the test export.
    pub(super) fn trigger_run(&self) {
        let request = TriggerRequest::Run {
            export: "people-list".into(),
            full: false,
        };
        write_trigger(&self.world.trigger_dir(), &request, None).expect("trigger");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    pub(super) fn start(&self, notify: Option<&Path>) -> DaemonProcess {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log");
        let mut cmd = self.command(env!("CARGO_BIN_EXE_acexport"));
        cmd.arg("--config").arg(&self.config).arg("daemon");
        cmd.env(
            "RUST_LOG",
            "debug,sqlx=warn,hyper=warn,reqwest=warn,notify=warn,hyper_util=warn",
        );
        cmd.env_remove("NOTIFY_SOCKET");
        if let Some(socket) = notify {
            cmd.env("NOTIFY_SOCKET", socket);
        }
        cmd.stdout(Stdio::null()).stderr(log);
        DaemonProcess(cmd.spawn().expect("daemon starts"))
    }

    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub(super) async fn runs(&self) -> Vec<RunRecord> {
        let mut runs = self.ctx.store.runs(None, 100).await.expect("runs");
        runs.reverse();
        runs
    }

    /// Polls the database until `check` holds (the daemon writes it from another process).
    pub(super) async fn wait_for<F>(
        &self,
        what: &str,
        timeout: Duration,
        check: F,
    ) -> Vec<RunRecord>
    where
        F: Fn(&[RunRecord]) -> bool,
    {
        let start = Instant::now();
        loop {
            let runs = self.runs().await;
            if check(&runs) {
                return runs;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}; runs: {runs:#?}\nlog:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(super) async fn wait_ready(&self) {
        let start = Instant::now();
        while !self.log().contains("Daemon ready") {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "daemon not ready; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A daemon started by a test, killed when the test ends without stopping it (a failed
/// assertion), so that no daemon outlives its test.
pub(super) struct DaemonProcess(Child);

impl DaemonProcess {
    /// Takes charge of a daemon a test started itself.
    pub(super) fn new(child: Child) -> DaemonProcess {
        DaemonProcess(child)
    }
}

impl std::ops::Deref for DaemonProcess {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for DaemonProcess {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub(super) fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

pub(super) fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            start.elapsed() < timeout,
            "daemon did not exit within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the test export's run has delivered its first contacts.
async fn wait_for_progress(env: &Env) {
    env.wait_for("progress", Duration::from_secs(20), |r| {
        r.first().is_some_and(|r| r.counts.upserted > 0)
    })
    .await;
}

/// Waits for the test export's run to end, and checks that it was cancelled before it had
/// delivered all 12,000 profiles.
async fn assert_cancelled_midway(env: &Env) {
    let runs = env
        .wait_for("the cancelled run", Duration::from_secs(20), |r| {
            r.first().is_some_and(finished)
        })
        .await;
    assert_eq!(runs[0].status, RunStatus::Cancelled);
    assert!(runs[0].counts.upserted < 12_000);
}

pub(super) fn finished(r: &RunRecord) -> bool {
    r.status != RunStatus::Running
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signal_file_runs_an_export() {
    let env = Env::new(sandbox_options(0), 40, None).await;
    let mut daemon = env.start(None);
    env.wait_ready().await;

    env.trigger_run();

    let runs = env
        .wait_for("a signal-file run", Duration::from_secs(20), |r| {
            r.iter().any(|r| r.trigger == "signal-file" && finished(r))
        })
        .await;
    assert_eq!(runs[0].status, RunStatus::Succeeded);
    assert_eq!(env.sandbox.members(1, ListStatus::Active), 40);
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());
    assert_eq!(
        std::fs::read_dir(env.trigger_dir())
            .expect("dir")
            .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_file()))
            .count(),
        0,
        "consumed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_dropped_while_the_daemon_was_down_runs_at_start() {
    let env = Env::new(sandbox_options(0), 10, None).await;
    env.trigger_run();

    let mut daemon = env.start(None);

    let runs = env
        .wait_for("the run", Duration::from_secs(20), |r| {
            r.iter().any(finished)
        })
        .await;
    assert_eq!((runs.len(), runs[0].trigger.as_str()), (1, "signal-file"));
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_unknown_signal_files_are_moved_aside_with_a_warning() {
    let env = Env::new(sandbox_options(0), 5, None).await;
    let mut daemon = env.start(None);
    env.wait_ready().await;

    std::fs::write(env.trigger_dir().join("broken.trigger"), b"{not json").expect("write");
    write_trigger(
        &env.trigger_dir(),
        &TriggerRequest::Run {
            export: "no-such-export".into(),
            full: false,
        },
        None,
    )
    .expect("trigger");

    let start = Instant::now();
    let rejected = env.trigger_dir().join("rejected");
    loop {
        let reasons: Vec<String> = std::fs::read_dir(&rejected)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "reason"))
                    .map(|p| std::fs::read_to_string(p).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
        if reasons.len() == 2 {
            assert!(
                reasons.iter().any(|r| r.contains("no-such-export")),
                "{reasons:?}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not moved aside; log:\n{}",
            env.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = env.log();
    assert!(
        log.contains("broken.trigger") && log.contains("unknown export"),
        "{log}"
    );
    assert!(daemon.try_wait().expect("wait").is_none(), "still running");
    assert!(env.runs().await.is_empty());
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_six_field_cron_fires_repeatedly_without_overlapping_runs() {
    // Every second, while a run takes longer than that: slots coalesce, runs never overlap.
    let env = Env::new(sandbox_options(150), 30, Some("* * * * * *")).await;
    let mut daemon = env.start(None);

    let runs = env
        .wait_for("three scheduled runs", Duration::from_secs(30), |r| {
            r.iter()
                .filter(|r| r.trigger == "schedule" && finished(r))
                .count()
                >= 3
        })
        .await;

    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(15)).success());
    let done: Vec<&RunRecord> = runs.iter().filter(|r| finished(r)).collect();
    for pair in done.windows(2) {
        let end = pair[0].finished_at.as_deref().expect("finished");
        assert!(
            end <= pair[1].started_at.as_str(),
            "runs {} and {} overlap",
            pair[0].id,
            pair[1].id
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_run_exits_zero_quickly_and_the_next_start_resumes() {
    // A paced client (40 requests/s) so the run is still sending when SIGTERM arrives.
    let env = Env::with_settings(sandbox_options(20), 12_000, None, 40).await;
    let mut daemon = env.start(None);
    env.wait_ready().await;
    env.trigger_run();
    env.wait_for("progress", Duration::from_secs(20), |r| {
        r.first().is_some_and(|r| r.counts.upserted >= 500)
    })
    .await;

    let asked = Instant::now();
    signal(&daemon, "TERM");
    let status = wait_exit(&mut daemon, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    assert!(asked.elapsed() < Duration::from_secs(10));
    let runs = env.runs().await;
    assert_eq!(runs[0].status, RunStatus::Interrupted);
    assert!(runs[0].counts.upserted < 12_000);

    let mut daemon = env.start(None);
    let runs = env
        .wait_for("the resumed run", Duration::from_secs(60), |r| {
            r.len() == 2 && finished(&r[1])
        })
        .await;
    assert_eq!(
        (runs[1].trigger.as_str(), runs[1].status),
        ("resume", RunStatus::Succeeded),
        "{:?}",
        runs[1].error
    );
    assert_eq!(
        runs[1].counts.unchanged, runs[0].counts.upserted,
        "confirmed batches are not sent again"
    );
    assert_eq!(env.sandbox.members(1, ListStatus::Active), 12_000);
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_run_and_restart_delivers_everyone_resending_only_unconfirmed_batches() {
    // A paced client (40 requests/s) so the run is still sending when it is killed.
    let env = Env::with_settings(sandbox_options(20), 12_000, None, 40).await;
    let mut daemon = env.start(None);
    env.wait_ready().await;
    env.trigger_run();
    env.wait_for("progress", Duration::from_secs(30), |r| {
        r.first().is_some_and(|r| r.counts.upserted >= 1000)
    })
    .await;

    signal(&daemon, "KILL");
    wait_exit(&mut daemon, Duration::from_secs(5));
    let sent_before_kill = env.sandbox.stats().contacts_queued;
    let mut daemon = env.start(None);

    let runs = env
        .wait_for("the resumed run", Duration::from_secs(90), |r| {
            r.len() == 2 && finished(&r[1])
        })
        .await;
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());
    assert_eq!(runs[0].status, RunStatus::Interrupted);
    assert_eq!(runs[1].status, RunStatus::Succeeded, "{:?}", runs[1].error);
    assert_eq!(
        env.sandbox.members(1, ListStatus::Active),
        12_000,
        "every member arrived"
    );
    let skipped = runs[1].counts.unchanged;
    assert!(
        skipped >= 1000,
        "the resumed run skipped what was confirmed"
    );
    assert!(
        sent_before_kill < 12_000,
        "killed mid-run ({sent_before_kill} sent)"
    );
    let resent = env.sandbox.stats().contacts_queued - 12_000;
    // Imports accepted before the kill are confirmed on resume: only the one whose request was
    // in flight can go out twice.
    assert!(resent <= 250, "{resent} contacts sent twice");
    assert_eq!(resent, sent_before_kill - skipped);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_with_an_invalid_settings_file_keeps_the_old_settings() {
    let env = Env::new(sandbox_options(0), 10, None).await;
    let mut daemon = env.start(None);
    env.wait_ready().await;

    std::fs::write(&env.config, "[activecampaign]\nrequests_per_second = 0\n")
        .expect("break settings");
    signal(&daemon, "HUP");
    let start = Instant::now();
    while !env.log().contains("Settings reload refused") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no refusal logged:\n{}",
            env.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(env.log().contains("activecampaign.requests_per_second"));

    // Still working with the settings it had.
    env.trigger_run();
    let runs = env
        .wait_for(
            "a run after the refused reload",
            Duration::from_secs(20),
            |r| r.iter().any(finished),
        )
        .await;
    assert_eq!(runs[0].status, RunStatus::Succeeded);
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_and_status_reach_the_notify_socket() {
    let env = Env::new(sandbox_options(0), 5, None).await;
    let socket_path = env.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut daemon = env.start(Some(&socket_path));

    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !(seen.contains("READY=1") && seen.contains("STATUS=idle")) {
        let n = socket.recv(&mut buf).expect("a notification");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.push('\n');
    }
    signal(&daemon, "TERM");
    while !seen.contains("STOPPING=1") {
        let n = socket.recv(&mut buf).expect("a notification");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_on_the_same_database_is_refused() {
    let env = Env::new(sandbox_options(0), 5, None).await;
    let mut first = env.start(None);
    env.wait_ready().await;

    let output = env
        .command(env!("CARGO_BIN_EXE_acexport"))
        .arg("--config")
        .arg(&env.config)
        .arg("daemon")
        .output()
        .expect("run");

    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("another acexport daemon"));
    signal(&first, "TERM");
    assert!(wait_exit(&mut first, Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn export_run_hands_over_to_a_running_daemon_and_follows_it() {
    let env = Env::new(sandbox_options(0), 300, None).await;
    let mut daemon = env.start(None);
    env.wait_ready().await;

    let output = tokio::process::Command::from(env.command(env!("CARGO_BIN_EXE_acexport")))
        .arg("--config")
        .arg(&env.config)
        .args(["export", "run", "people-list", "--json"])
        .output()
        .await
        .expect("run");

    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(json["status"], "succeeded");
    assert_eq!(json["counts"]["upserted"], 300);
    let runs = env.runs().await;
    assert_eq!(runs[0].trigger, "manual");
    let me = acexport::identity::current().display();
    assert_eq!(runs[0].requested_by.as_deref(), Some(me.as_str()));
    let log = env.log();
    assert!(
        log.contains("Control request") && log.contains("export.run"),
        "the daemon ran it, not the CLI: {log}"
    );
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_carry_run_ids_but_never_profile_data_or_the_key() {
    let env = Env::new(sandbox_options(0), 50, None).await;
    env.sandbox.exclude("person3@example.com");
    env.sandbox.inject(acexport::sandbox::Fault {
        path_prefix: "/api/3/import/bulk_import".into(),
        times: 1,
        action: acexport::sandbox::FaultAction::Status {
            status: 503,
            retry_after: None,
            body: String::new(),
        },
    });
    let mut daemon = env.start(None);
    env.wait_ready().await;
    env.trigger_run();
    env.wait_for("the run", Duration::from_secs(20), |r| {
        r.iter().any(finished)
    })
    .await;
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());

    let log = env.log();
    assert!(
        log.contains("Run finished") && log.contains("run_id"),
        "{log}"
    );
    // The retried import runs in a task of its own: its warning still names the run.
    let retry = log
        .lines()
        .find(|l| l.contains("retrying"))
        .unwrap_or_else(|| panic!("no retry line:\n{log}"));
    assert!(
        retry.contains("WARN") && retry.contains("run_id") && retry.contains("people-list"),
        "{retry}"
    );
    for secret in ["person3", "example.com", "Given", "Family", "555-", TOKEN] {
        assert!(!log.contains(secret), "log contains {secret:?}:\n{log}");
    }
}

fn cli(env: &Env, args: &[&str]) -> std::process::Output {
    env.command(env!("CARGO_BIN_EXE_acexport"))
        .arg("--config")
        .arg(&env.config)
        .args(args)
        .output()
        .expect("acexport runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_missed_while_the_daemon_was_down_runs_once_at_start() {
    let env = Env::new(sandbox_options(0), 10, Some("0 0 0 1 1 *")).await;
    let export_id = env.ctx.find_export("people-list").await.expect("export").id;
    // The daemon last fired this yearly schedule (1 January) three years ago, then was down.
    let three_years_ago = chrono::Utc::now() - chrono::Duration::days(3 * 366);
    env.ctx
        .store
        .mark_schedule(export_id, "0 0 0 1 1 * @ UTC", three_years_ago, None)
        .await
        .expect("mark");

    let mut daemon = env.start(None);
    let runs = env
        .wait_for("the catch-up run", Duration::from_secs(20), |r| {
            r.iter().any(finished)
        })
        .await;
    env.wait_ready().await;
    // Give the loop a few more ticks: the missed slots must not produce more runs.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());
    assert_eq!(runs[0].trigger, "schedule");
    assert_eq!(env.runs().await.len(), 1, "three missed slots, one run");
}

#[tokio::test(flavor = "multi_thread")]
async fn trigger_all_status_and_cancel_work_through_the_command_line() {
    let env = Env::with_settings(sandbox_options(20), 12_000, None, 40).await;
    let mut daemon = env.start(None);
    env.wait_ready().await;

    let out = cli(&env, &["trigger", "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_progress(&env).await;

    let out = cli(&env, &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(status["daemon"]["up"], true);
    assert_eq!(status["running"][0]["export"], "people-list");

    let out = cli(&env, &["cancel", "people-list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_cancelled_midway(&env).await;
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_signal_file_stops_the_running_export_at_a_batch_boundary() {
    let env = Env::with_settings(sandbox_options(20), 12_000, None, 40).await;
    let mut daemon = env.start(None);
    env.wait_ready().await;
    env.trigger_run();
    wait_for_progress(&env).await;

    let cancel = TriggerRequest::Cancel {
        export: "people-list".into(),
    };
    write_trigger(&env.world.trigger_dir(), &cancel, None).expect("cancel trigger");

    assert_cancelled_midway(&env).await;
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());
    assert_eq!(
        env.runs().await.len(),
        1,
        "a cancelled run is not run again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_reaches_a_run_waiting_behind_the_same_export_in_another_process() {
    let env = Env::new(sandbox_options(0), 5, None).await;
    let export_id = env.ctx.find_export("people-list").await.expect("export").id;
    // This test process plays a foreground `export run`: it holds the export's run.
    let (foreground, lock) = env
        .ctx
        .store
        .start_run(export_id, TriggerKind::Manual, false, None)
        .await
        .expect("start");
    let mut daemon = env.start(None);
    env.wait_ready().await;
    env.trigger_run();
    wait_for_log(&env, "Signal file: run queued").await;
    let start = Instant::now();
    while env.ctx.store.is_queued(export_id).await.expect("queue") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the daemon took no run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let out = cli(&env, &["cancel", "people-list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for_log(&env, "which was asked to cancel; not queued again").await;
    env.ctx
        .store
        .finish_run(
            foreground.id,
            RunStatus::Cancelled,
            &RunCounts::default(),
            None,
        )
        .await
        .expect("finish");
    drop(lock);
    tokio::time::sleep(Duration::from_secs(3)).await;

    assert!(!env.ctx.store.is_queued(export_id).await.expect("queue"));
    assert_eq!(env.runs().await.len(), 1, "the cancelled request never ran");
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());
}

pub(super) async fn wait_for_log(env: &Env, text: &str) {
    let start = Instant::now();
    while !env.log().contains(text) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no {text:?} in the log:\n{}",
            env.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_watchdog_is_fed_when_systemd_asks_for_it() {
    let env = Env::new(sandbox_options(0), 5, None).await;
    let socket_path = env.dir.path().join("watchdog.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let log = std::fs::File::create(env.log_path()).expect("log");
    let mut daemon = env
        .command(env!("CARGO_BIN_EXE_acexport"))
        .arg("--config")
        .arg(&env.config)
        .arg("daemon")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("daemon");

    let mut pings = 0;
    let mut buf = [0u8; 4096];
    while pings < 2 {
        let n = socket.recv(&mut buf).expect("a notification");
        if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreground_run_killed_with_sigkill_is_resumed_by_the_next_export_run() {
    let env = Env::with_settings(sandbox_options(20), 12_000, None, 40).await;
    let mut run = env
        .command(env!("CARGO_BIN_EXE_acexport"))
        .arg("--config")
        .arg(&env.config)
        .args(["export", "run", "people-list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("export run");
    env.wait_for("progress", Duration::from_secs(20), |r| {
        r.first().is_some_and(|r| r.counts.upserted >= 500)
    })
    .await;

    signal(&run, "KILL");
    wait_exit(&mut run, Duration::from_secs(5));
    let out = cli(&env, &["export", "run", "people-list", "--json"]);

    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["status"], "succeeded");
    let runs = env.runs().await;
    assert_eq!(
        runs[0].status,
        RunStatus::Interrupted,
        "the killed run is recorded as interrupted"
    );
    assert_eq!(runs[1].resumes_run_id, Some(runs[0].id));
    let unchanged = json["counts"]["unchanged"].as_u64().expect("unchanged");
    // Imports accepted before the kill are confirmed on resume and found unchanged too.
    assert!(unchanged >= runs[0].counts.upserted, "{unchanged}");
    assert_eq!(
        json["counts"]["upserted"].as_u64(),
        Some(12_000 - unchanged)
    );
    assert!(
        env.sandbox.stats().contacts_queued <= 12_000 + 250,
        "at most the import in flight at the kill was sent twice"
    );
    assert_eq!(env.sandbox.members(1, ListStatus::Active), 12_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn export_run_refuses_a_disabled_export_but_plans_it_with_dry_run() {
    let env = Env::new(sandbox_options(0), 5, None).await;
    env.ctx
        .set_export_enabled("people-list", false)
        .await
        .expect("disable");

    let refused = cli(&env, &["export", "run", "people-list"]);
    let planned = cli(
        &env,
        &["export", "run", "people-list", "--dry-run", "--json"],
    );

    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is disabled"));
    assert!(
        planned.status.success(),
        "{}",
        String::from_utf8_lossy(&planned.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&planned.stdout).expect("json");
    assert_eq!(json["plan"]["adds"], 5);
    assert!(env.runs().await.is_empty(), "a dry run records no run");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_with_a_valid_settings_file_applies_the_new_refresh_schedule() {
    let env = Env::new(sandbox_options(0), 5, None).await;
    let mut daemon = env.start(None);
    env.wait_ready().await;

    env.rewrite_settings(|s| s.schedule.refresh = Some("* * * * * *".to_owned()))
        .expect("new settings");
    signal(&daemon, "HUP");

    let runs = env
        .wait_for(
            "a run on the new refresh schedule",
            Duration::from_secs(20),
            |r| r.iter().any(|r| r.trigger == "schedule" && finished(r)),
        )
        .await;
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());
    assert!(env.log().contains("Settings reloaded"));
    assert_eq!(runs[0].status, RunStatus::Succeeded);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_set_through_the_command_line_fires_without_waiting_for_the_fallback_reread() {
    // The idle loop sleeps until its next event. A definition changed through the control
    // socket is one; otherwise the schedules are re-read only every 30 s, and the first slot of
    // the new schedule would come after this test's wait.
    let env = Env::new(sandbox_options(0), 10, None).await;
    let mut daemon = env.start(None);
    env.wait_ready().await;

    let out = cli(
        &env,
        &[
            "export",
            "update",
            "people-list",
            "--schedule",
            "* * * * * *",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs = env
        .wait_for("a run on the new schedule", Duration::from_secs(15), |r| {
            r.iter().any(|r| r.trigger == "schedule" && finished(r))
        })
        .await;

    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());
    assert_eq!(runs[0].status, RunStatus::Succeeded);
}
