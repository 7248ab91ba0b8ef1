//! `acexport connection ...` against the sandbox: keys from a file, a variable or stdin;
//! nothing saved unless ActiveCampaign accepted the key and the data transfer was accepted.

use crate::support::{
    API_KEY, OutputExt, TestEnv, WRONG_KEY, closed_port, contains, database_bytes,
};

/// `connection add crm --host ... --accept-data-transfer` plus the key options given.
fn add_args<'a>(host: &'a str, key_options: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["connection", "add", "crm", "--host", host];
    args.extend_from_slice(key_options);
    args.push("--accept-data-transfer");
    args
}

/// The last four characters of the key, as connections show it.
fn key_hint() -> String {
    format!("…{}", &API_KEY[API_KEY.len() - 4..])
}

#[tokio::test(flavor = "multi_thread")]
async fn adding_a_connection_reads_the_key_from_a_file() {
    let env = TestEnv::new().await;
    let host = env.host();
    let key_file = env.write("ac.key", &format!("{API_KEY}\n"));

    let out = env
        .run(&add_args(&host, &["--api-key-file", &key_file]))
        .await;

    out.assert_ok();
    let stdout = out.stdout_text();
    assert!(
        stdout.contains("Connection \"crm\" verified and saved."),
        "{stdout}"
    );
    assert!(stdout.contains(&env.host_port()), "{stdout}");
    assert!(stdout.contains(&key_hint()), "{stdout}");
    assert!(stdout.contains("export user:   sandbox"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("status:") && l.contains("verified, checked")),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn adding_a_connection_reads_the_key_from_an_environment_variable() {
    let env = TestEnv::new().await;
    let host = env.host();

    let out = env
        .run_env(
            &add_args(&host, &["--api-key-env", "CRM_AC_KEY"]),
            &[("CRM_AC_KEY", API_KEY)],
        )
        .await;

    out.assert_ok();
    assert_eq!(env.list_json("connection").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn adding_a_connection_reads_the_key_from_stdin() {
    let env = TestEnv::new().await;
    let host = env.host();

    let out = env
        .run_stdin(
            &add_args(&host, &["--api-key-stdin"]),
            &format!("{API_KEY}\n"),
        )
        .await;

    out.assert_ok();
    let saved = env.show_json("connection", "crm").await;
    assert_eq!(saved["api_key"], key_hint());
    assert_eq!(saved["status"], "verified");
    assert_eq!(saved["export_user"], "sandbox");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unset_key_variable_is_named_and_nothing_is_sent() {
    let env = TestEnv::new().await;
    let host = env.host();

    let out = env
        .run(&add_args(&host, &["--api-key-env", "CRM_AC_KEY"]))
        .await;

    out.assert_fails_with(1, "CRM_AC_KEY");
    assert_eq!(env.requests_to("users/me"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_key_is_reported_and_nothing_is_saved() {
    let env = TestEnv::new().await;
    let host = env.host();

    let out = env
        .run_stdin(&add_args(&host, &["--api-key-stdin"]), WRONG_KEY)
        .await;

    out.assert_fails_with(
        1,
        &format!(
            "ActiveCampaign rejected the API key for {}",
            env.host_port()
        ),
    );
    assert!(env.list_json("connection").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_host_is_reported_and_nothing_is_saved() {
    let env = TestEnv::new().await;
    let host = format!("http://127.0.0.1:{}", closed_port());

    let out = env
        .run_stdin(&add_args(&host, &["--api-key-stdin"]), API_KEY)
        .await;

    out.assert_fails_with(1, &format!("cannot reach ActiveCampaign at {}", &host[7..]));
    assert!(env.list_json("connection").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_to_a_network_host_is_refused_before_connecting() {
    let env = TestEnv::new().await;

    // 192.0.2.1 is a documentation address: a connection attempt would hang or fail with
    // "cannot reach", so the message proves the refusal came first.
    let out = env
        .run_stdin(&add_args("http://192.0.2.1", &["--api-key-stdin"]), API_KEY)
        .await;

    out.assert_fails_with(1, "plain http:// is refused for 192.0.2.1");
    assert!(
        !out.stderr_text().contains("cannot reach"),
        "{}",
        out.stderr_text()
    );
    assert!(env.list_json("connection").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_consent_the_privacy_notice_is_shown_and_nothing_is_saved() {
    let env = TestEnv::new().await;
    let host = env.host();

    let out = env
        .run_stdin(
            &[
                "connection",
                "add",
                "crm",
                "--host",
                &host,
                "--api-key-stdin",
            ],
            API_KEY,
        )
        .await;

    out.assert_fails_with(1, "Data privacy notice");
    assert!(
        out.stderr_text().contains("--accept-data-transfer"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(
        env.requests_to("users/me"),
        0,
        "the key is not even checked"
    );
    assert!(env.list_json("connection").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_connection_with_the_same_name_is_refused() {
    let env = TestEnv::new().await;
    env.add_connection("crm").await;
    let host = env.host();

    let out = env
        .run_stdin(&add_args(&host, &["--api-key-stdin"]), API_KEY)
        .await;

    out.assert_fails_with(1, "connection \"crm\" already exists");
    assert_eq!(env.list_json("connection").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_shows_every_connection_in_a_table() {
    let env = TestEnv::new().await;
    env.add_connection("crm").await;
    env.add_connection("shop").await;

    let out = env.run(&["connection", "list"]).await;

    out.assert_ok();
    let stdout = out.stdout_text();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].starts_with("NAME"), "{stdout}");
    assert!(
        lines[1].starts_with("crm ") && lines[1].contains(&key_hint()),
        "{stdout}"
    );
    assert!(lines[2].starts_with("shop "), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn show_of_an_unknown_connection_names_it() {
    let env = TestEnv::new().await;

    let out = env.run(&["connection", "show", "nope"]).await;

    out.assert_fails_with(1, "connection \"nope\" does not exist");
}

#[tokio::test(flavor = "multi_thread")]
async fn test_verifies_a_saved_connection_again() {
    let env = TestEnv::new().await;
    env.add_connection("crm").await;
    let before = env.requests_to("users/me");

    let out = env.run(&["connection", "test", "crm"]).await;

    out.assert_ok();
    assert!(
        out.stdout_text().contains("verified"),
        "{}",
        out.stdout_text()
    );
    assert_eq!(env.requests_to("users/me"), before + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn update_with_a_rejected_key_keeps_the_old_key() {
    let env = TestEnv::new().await;
    env.add_connection("crm").await;

    let out = env
        .run_stdin(
            &["connection", "update", "crm", "--api-key-stdin"],
            WRONG_KEY,
        )
        .await;

    out.assert_fails_with(1, "rejected the API key");
    env.run(&["connection", "test", "crm"]).await.assert_ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn update_shares_a_connection_with_contributors() {
    let env = TestEnv::new().await;
    env.add_connection("crm").await;

    let out = env
        .run(&[
            "connection",
            "update",
            "crm",
            "--allow-contributors",
            "true",
        ])
        .await;

    out.assert_ok();
    let saved = env.show_json("connection", "crm").await;
    assert_eq!(saved["allowed_users"], "admins and contributors");
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_is_refused_while_exports_use_the_connection() {
    let env = TestEnv::new().await;
    env.add_export().await;

    let out = env.run(&["connection", "remove", "crm"]).await;

    out.assert_fails_with(1, "used by export(s) weekly");
    assert!(
        out.stderr_text().contains("--force"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(env.list_json("connection").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn remove_with_force_removes_the_exports_and_says_which() {
    let env = TestEnv::new().await;
    env.add_export().await;

    let out = env.run(&["connection", "remove", "crm", "--force"]).await;

    out.assert_ok();
    assert!(
        out.stdout_text()
            .contains("Exports removed with it: weekly."),
        "{}",
        out.stdout_text()
    );
    assert!(env.list_json("connection").await.is_empty());
    assert!(env.list_json("export").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_key_is_never_stored_in_clear() {
    let env = TestEnv::new().await;
    let host = env.host();
    let key_file = env.write("ac.key", API_KEY);
    env.run(&add_args(&host, &["--api-key-file", &key_file]))
        .await
        .assert_ok();
    env.run_stdin(&["connection", "update", "crm", "--api-key-stdin"], API_KEY)
        .await
        .assert_ok();
    env.run(&["connection", "test", "crm"]).await.assert_ok();

    let bytes = database_bytes(&env.store_path());

    assert!(!bytes.is_empty());
    assert!(
        !contains(&bytes, API_KEY.as_bytes()),
        "the API key is in the database in clear"
    );
}
