//! `acexport check-config` and how every command treats the settings file and usage errors.

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
