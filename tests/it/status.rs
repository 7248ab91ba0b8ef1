//! `acexport status`, per-export time zones and `check-config --json`: the real binary, a real
//! daemon where the behaviour is the daemon's, the sandbox over loopback.

use std::time::Duration;

use chrono::{TimeDelta, Utc};

use super::daemon::{Env, finished, sandbox_options, signal, wait_exit};
use crate::support::{OutputExt, TestEnv, export_add_args};

/// `acexport ARGS` in the daemon test's world.
fn cli(env: &Env, args: &[&str]) -> std::process::Output {
    let out = env
        .command(env!("CARGO_BIN_EXE_acexport"))
        .args(args)
        .output()
        .expect("acexport runs");
    out.assert_ok();
    out
}

fn status_json(env: &Env) -> serde_json::Value {
    let out = cli(env, &["status", "--json"]);
    serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn status_never_shows_the_run_of_a_killed_daemon_as_running() {
    let env = Env::new(sandbox_options(100), 30_000, None).await;
    let mut daemon = env.start(None);
    env.wait_ready().await;
    env.trigger_run();
    env.wait_for("progress", Duration::from_secs(20), |r| {
        r.first().is_some_and(|r| r.counts.upserted > 0)
    })
    .await;
    let before = status_json(&env);

    signal(&daemon, "KILL");
    wait_exit(&mut daemon, Duration::from_secs(10));
    let after = status_json(&env);

    assert_eq!(before["daemon"]["up"], true, "{before}");
    assert_eq!(before["running"][0]["export"], "people-list", "{before}");
    assert_eq!(after["daemon"]["up"], false, "{after}");
    assert_eq!(after["daemon"]["status"], "not running", "{after}");
    assert_eq!(after["running"], serde_json::json!([]), "{after}");
    let last = &after["exports"][0]["last_run"];
    assert_eq!(last["status"], "interrupted", "{after}");
    assert_eq!(last["id"], before["running"][0]["id"], "{after}");
    let stored = env.runs().await;
    assert_eq!(
        stored[0].status.as_str(),
        "running",
        "the row waits for the next start"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_a_finished_daemon_run_as_the_last_run_and_nothing_running() {
    let env = Env::new(sandbox_options(0), 40, None).await;
    let mut daemon = env.start(None);
    env.wait_ready().await;
    env.trigger_run();
    env.wait_for("the run", Duration::from_secs(20), |r| {
        r.first().is_some_and(finished)
    })
    .await;

    // At once: the heartbeat's line may still be the one written while the run went on.
    let status = status_json(&env);
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());

    assert_eq!(status["daemon"]["up"], true, "{status}");
    assert_eq!(status["running"], serde_json::json!([]), "{status}");
    assert_eq!(status["daemon"]["status"], "idle; 0 queued", "{status}");
    assert_eq!(
        status["exports"][0]["last_run"]["status"], "succeeded",
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_reads_an_export_schedule_in_the_export_time_zone() {
    let env = Env::new(sandbox_options(0), 5, None).await;
    let mut daemon = env.start(None);
    env.wait_ready().await;
    // A daily slot a few seconds from now on Tokyo's clock (UTC+9, no daylight saving): read
    // in the settings' UTC it would be nine hours away. The margin covers the update below on
    // a loaded machine; a slot passed before the daemon sees the schedule would never run.
    let tokyo: chrono_tz::Tz = "Asia/Tokyo".parse().expect("zone");
    let slot = (Utc::now() + TimeDelta::seconds(10)).with_timezone(&tokyo);
    let cron = slot.format("%S %M %H * * *").to_string();

    cli(
        &env,
        &[
            "export",
            "update",
            "people-list",
            "--schedule",
            &cron,
            "--timezone",
            "Asia/Tokyo",
        ],
    );
    let runs = env
        .wait_for("the scheduled run", Duration::from_secs(40), |r| {
            r.iter().any(|r| r.trigger == "schedule" && finished(r))
        })
        .await;
    signal(&daemon, "TERM");
    assert!(wait_exit(&mut daemon, Duration::from_secs(10)).success());

    assert_eq!(runs[0].trigger, "schedule");
}

/// Connection `crm`, segment `members`, and exports `winter` (1 January) and `summer` (1 July)
/// at 06:30 in `zone`.
async fn env_with_yearly_exports(zone: &str) -> TestEnv {
    let env = TestEnv::new().await;
    env.add_connection("crm").await;
    env.add_csv_segment("members").await;
    for (name, cron) in [("winter", "30 6 1 1 *"), ("summer", "30 6 1 7 *")] {
        let mut args = export_add_args(&["--schedule", cron, "--timezone", zone]);
        args[2] = name;
        env.run(&args).await.assert_ok();
    }
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn next_runs_show_the_export_zone_with_the_offset_in_force_at_each_slot() {
    // Berlin is at +01:00 in January and +02:00 in July; Sydney at +11:00 and +10:00.
    for (zone, january, july) in [
        ("Europe/Berlin", "+01:00", "+02:00"),
        ("Australia/Sydney", "+11:00", "+10:00"),
    ] {
        let env = env_with_yearly_exports(zone).await;

        let text = env.run(&["status"]).await;
        let json = env.run(&["status", "--json"]).await;

        text.assert_ok();
        let table = text.stdout_text();
        for expected in [
            format!("-01-01 06:30 {january} {zone}"),
            format!("-07-01 06:30 {july} {zone}"),
        ] {
            assert!(table.contains(&expected), "{expected} missing:\n{table}");
        }
        json.assert_ok();
        let report: serde_json::Value = serde_json::from_str(&json.stdout_text()).expect("json");
        let exports = report["exports"].as_array().expect("exports");
        let summer = exports
            .iter()
            .find(|e| e["name"] == "summer")
            .expect("summer");
        assert_eq!(summer["timezone"], zone);
        let next = summer["next_run"].as_str().expect("next_run");
        assert!(next.ends_with(&format!("-07-01T06:30:00{july}")), "{next}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_time_zone_is_refused_naming_the_option_and_nothing_is_saved() {
    let env = TestEnv::new().await;
    env.add_connection("crm").await;
    env.add_csv_segment("members").await;

    let out = env
        .run(&export_add_args(&["--timezone", "Europe/Atlantis"]))
        .await;

    out.assert_fails_with(
        1,
        "--timezone: time zone \"Europe/Atlantis\" is not an IANA time zone name",
    );
    assert!(env.list_json("export").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn export_show_names_the_time_zone_and_update_can_drop_it() {
    let env = TestEnv::new().await;
    env.add_connection("crm").await;
    env.add_csv_segment("members").await;
    env.run(&export_add_args(&[
        "--schedule",
        "30 6 * * *",
        "--timezone",
        "Europe/Berlin",
    ]))
    .await
    .assert_ok();

    let with_zone = env.show_json("export", "weekly").await;
    let shown = env.run(&["export", "show", "weekly"]).await;
    env.run(&["export", "update", "weekly", "--no-timezone"])
        .await
        .assert_ok();
    let dropped = env.show_json("export", "weekly").await;
    let shown_after = env.run(&["export", "show", "weekly"]).await;

    assert_eq!(with_zone["timezone"], "Europe/Berlin");
    assert!(
        shown.stdout_text().contains("30 6 * * * (Europe/Berlin)"),
        "{}",
        shown.stdout_text()
    );
    assert_eq!(dropped["timezone"], serde_json::Value::Null);
    assert!(
        shown_after
            .stdout_text()
            .contains("UTC (schedule.timezone)"),
        "{}",
        shown_after.stdout_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_json_prints_the_settings_in_force_without_the_proxy_password() {
    let env = TestEnv::with_settings(
        "[activecampaign]\nproxy = \"https://me:s3cret-pw@proxy.example\"\n\
         [metrics]\nlisten = \"127.0.0.1:9464\"\n",
    )
    .await;

    let out = env.run(&["check-config", "--json"]).await;

    out.assert_ok();
    let stdout = out.stdout_text();
    assert!(!stdout.contains("s3cret-pw"), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(json["settings_file"], env.config.display().to_string());
    let settings = &json["settings"];
    assert_eq!(
        settings["activecampaign"]["proxy"],
        "https://me:***@proxy.example"
    );
    assert_eq!(settings["activecampaign"]["retry_base_ms"], 10);
    assert_eq!(settings["metrics"]["listen"], "127.0.0.1:9464");
    assert_eq!(settings["schedule"]["timezone"], "UTC");
}
