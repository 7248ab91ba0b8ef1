//! `acexport export ...` and `acexport runs`: definitions are checked against ActiveCampaign
//! and the segments before saving, and saving sends no profiles.

use crate::support::{OutputExt, TestEnv, export_add_args};

/// A sandbox with connection `crm` and segment `members` (email, first_name, last_name, tier).
async fn env_with_sources() -> TestEnv {
    let env = TestEnv::new().await;
    env.add_connection("crm").await;
    env.add_csv_segment("members").await;
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_is_saved_with_the_list_name_from_activecampaign_and_nothing_sent() {
    let env = env_with_sources().await;

    let out = env
        .run(&export_add_args(&[
            "--first-name",
            "first_name",
            "--field",
            "3=tier",
            "--tag",
            "vip",
        ]))
        .await;

    out.assert_ok();
    let stdout = out.stdout_text();
    assert!(stdout.contains("Newsletter (1)"), "{stdout}");
    assert!(
        stdout.contains("Saved; nothing was sent yet. It runs on demand"),
        "{stdout}"
    );
    assert!(stdout.contains("acexport export run weekly"), "{stdout}");
    assert_eq!(env.requests_to("bulk_import"), 0);
    let saved = env.show_json("export", "weekly").await;
    assert_eq!(saved["list_name"], "Newsletter");
    assert_eq!(saved["first_name_column"], "first_name");
    assert_eq!(
        saved["fields"],
        serde_json::json!([{"field_id": 3, "column": "tier"}])
    );
    assert_eq!(saved["tags"], serde_json::json!(["vip"]));
    assert_eq!(saved["enabled"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_refresh_schedule_the_saved_note_says_it_runs_with_it() {
    let env = TestEnv::with_settings("[schedule]\nrefresh = \"0 3 * * *\"\n").await;
    env.add_connection("crm").await;
    env.add_csv_segment("members").await;

    let out = env.run(&export_add_args(&[])).await;

    out.assert_ok();
    assert!(
        out.stdout_text()
            .contains("It runs with the refresh schedule (0 3 * * *, UTC)"),
        "{}",
        out.stdout_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_with_its_own_schedule_says_it_runs_on_it() {
    let env = env_with_sources().await;

    let out = env
        .run(&export_add_args(&["--schedule", "30 6 * * 1"]))
        .await;

    out.assert_ok();
    assert!(
        out.stdout_text()
            .contains("It runs on its schedule (30 6 * * 1, UTC)"),
        "{}",
        out.stdout_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_list_is_refused_naming_it_and_the_host() {
    let env = env_with_sources().await;
    let args: Vec<&str> = export_add_args(&[])
        .into_iter()
        .map(|arg| if arg == "1" { "99" } else { arg })
        .collect();

    let out = env.run(&args).await;

    out.assert_fails_with(
        1,
        &format!("list 99 not found in ActiveCampaign at {}", env.host_port()),
    );
    assert!(env.list_json("export").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_custom_field_is_refused_naming_it() {
    let env = env_with_sources().await;

    let out = env.run(&export_add_args(&["--field", "99=tier"])).await;

    out.assert_fails_with(1, "custom field 99 not found in ActiveCampaign");
    assert!(env.list_json("export").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_field_mapping_is_refused_with_the_expected_form() {
    let env = env_with_sources().await;

    let out = env.run(&export_add_args(&["--field", "tier"])).await;

    out.assert_fails_with(1, "AC_FIELD_ID=COLUMN");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mapped_column_missing_from_a_segment_names_the_segment_and_column() {
    let env = env_with_sources().await;

    let out = env.run(&export_add_args(&["--phone", "mobile"])).await;

    out.assert_fails_with(
        1,
        "segment \"members\" has no column \"mobile\" (mapped by --phone)",
    );
    assert!(env.list_json("export").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_segment_is_refused_naming_it() {
    let env = env_with_sources().await;

    let out = env.run(&export_add_args(&["--segment", "vips"])).await;

    out.assert_fails_with(1, "segment \"vips\" does not exist");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_export_with_the_same_name_is_refused() {
    let env = env_with_sources().await;
    env.run(&export_add_args(&[])).await.assert_ok();

    let out = env.run(&export_add_args(&[])).await;

    out.assert_fails_with(1, "export \"weekly\" already exists");
    assert_eq!(env.list_json("export").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn update_changes_only_the_options_given() {
    let env = TestEnv::new().await;
    env.add_export().await;

    let out = env
        .run(&[
            "export",
            "update",
            "weekly",
            "--tag",
            "vip",
            "--no-first-name",
            "--list",
            "2",
        ])
        .await;

    out.assert_ok();
    let saved = env.show_json("export", "weekly").await;
    assert_eq!(saved["tags"], serde_json::json!(["vip"]));
    assert_eq!(saved["first_name_column"], serde_json::Value::Null);
    assert_eq!(saved["list_name"], "Customers");
    assert_eq!(saved["email_column"], "email", "unchanged");
}

#[tokio::test(flavor = "multi_thread")]
async fn update_to_an_unknown_list_is_refused_and_keeps_the_export() {
    let env = TestEnv::new().await;
    env.add_export().await;

    let out = env
        .run(&["export", "update", "weekly", "--list", "99"])
        .await;

    out.assert_fails_with(1, "list 99 not found");
    assert_eq!(env.show_json("export", "weekly").await["list_id"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_and_no_schedule_together_are_a_usage_error() {
    let env = TestEnv::new().await;
    env.add_export().await;

    let out = env
        .run(&[
            "export",
            "update",
            "weekly",
            "--schedule",
            "0 3 * * *",
            "--no-schedule",
        ])
        .await;

    assert_eq!(out.code(), Some(2), "{}", out.stderr_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn disable_and_enable_switch_the_export() {
    let env = TestEnv::new().await;
    env.add_export().await;

    env.run(&["export", "disable", "weekly"]).await.assert_ok();
    assert_eq!(env.show_json("export", "weekly").await["enabled"], false);

    env.run(&["export", "enable", "weekly"]).await.assert_ok();
    assert_eq!(env.show_json("export", "weekly").await["enabled"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_shows_each_export_with_its_list_and_segments() {
    let env = TestEnv::new().await;
    env.add_export().await;

    let out = env.run(&["export", "list"]).await;

    out.assert_ok();
    let stdout = out.stdout_text();
    let row = stdout.lines().nth(1).unwrap_or_default();
    assert!(row.starts_with("weekly  crm"), "{stdout}");
    assert!(
        row.contains("Newsletter (1)") && row.contains("members"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_deletes_the_export() {
    let env = TestEnv::new().await;
    env.add_export().await;

    let out = env.run(&["export", "remove", "weekly"]).await;

    out.assert_ok();
    assert!(env.list_json("export").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_on_an_empty_history_says_there_are_none() {
    let env = TestEnv::new().await;

    let out = env.run(&["runs"]).await;

    out.assert_ok();
    assert_eq!(out.stdout_text(), "No runs yet.\n");
    let json = env.run(&["runs", "--json"]).await;
    json.assert_ok();
    assert_eq!(json.stdout_text().trim(), "[]");
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_of_an_unknown_export_names_it() {
    let env = TestEnv::new().await;

    let out = env.run(&["runs", "--export", "weekly"]).await;

    out.assert_fails_with(1, "export \"weekly\" does not exist");
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_show_of_an_unknown_run_names_it() {
    let env = TestEnv::new().await;

    let out = env.run(&["runs", "show", "42"]).await;

    out.assert_fails_with(1, "run 42 does not exist");
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_lists_a_finished_run_with_its_counts() {
    let env = TestEnv::new().await;
    env.add_export().await;
    let outcome = env.run_export_in_process("weekly").await;

    let out = env.run(&["runs"]).await;

    out.assert_ok();
    let stdout = out.stdout_text();
    let cells: Vec<&str> = stdout
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let id = outcome.run_id.expect("a run id").to_string();
    assert_eq!(
        cells[..4],
        [id.as_str(), "weekly", "manual", "succeeded"],
        "{stdout}"
    );
    let json = env.run(&["runs", "--export", "weekly", "--json"]).await;
    json.assert_ok();
    let runs: serde_json::Value = serde_json::from_str(&json.stdout_text()).expect("JSON");
    assert_eq!(runs[0]["counts"]["upserted"], 2, "{runs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_show_lists_rejected_and_suppressed_profiles_with_masked_emails() {
    let env = TestEnv::new().await;
    env.add_connection("crm").await;
    let csv = env.write(
        "members.csv",
        "email,first_name\nada@example.com,Ada\nnot-an-email,Bad\nalan@example.com,Alan\n",
    );
    env.run(&["segment", "add", "members", "--csv", &csv])
        .await
        .assert_ok();
    env.run(&export_add_args(&[])).await.assert_ok();
    env.sandbox.exclude("alan@example.com");
    let run_id = env
        .run_export_in_process("weekly")
        .await
        .run_id
        .expect("a run id");

    let out = env.run(&["runs", "show", &run_id.to_string()]).await;

    out.assert_ok();
    let stdout = out.stdout_text();
    let rejected = stdout
        .lines()
        .find(|l| l.starts_with("rejected "))
        .unwrap_or_default();
    assert!(
        rejected.contains("members") && rejected.contains(" 3 "),
        "{stdout}"
    );
    assert!(rejected.contains("n***"), "{stdout}");
    // An excluded address is suppressed, not failed.
    let suppressed = stdout
        .lines()
        .find(|l| l.starts_with("suppressed "))
        .unwrap_or_default();
    assert!(suppressed.contains("a***@example.com"), "{stdout}");
    assert!(!stdout.contains("alan@example.com"), "{stdout}");
    assert!(!stdout.contains("not-an-email"), "{stdout}");
}
