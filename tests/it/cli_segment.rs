//! `acexport segment ...`: CSV, JSONL and SQLite sources are read through before saving; a
//! broken file is refused naming the line; a database password never goes on a command line.

use crate::support::{OutputExt, TestEnv};

const MEMBERS_CSV: &str = "email,first_name,tier\nada@example.com,Ada,gold\n\
                           alan@example.com,Alan,silver\ngrace@example.com,Grace,gold\n";

/// Creates a SQLite database with a `members` table of two rows; returns its `sqlite:` URL.
async fn sqlite_database(env: &TestEnv) -> String {
    let path = env.path("crm.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options)
        .await
        .expect("create the test database");
    for statement in [
        "CREATE TABLE members (email TEXT NOT NULL, first_name TEXT, active INTEGER)",
        "INSERT INTO members VALUES ('ada@example.com', 'Ada', 1), \
         ('alan@example.com', 'Alan', 1), ('gone@example.com', 'Gone', 0)",
    ] {
        sqlx::query(statement)
            .execute(&pool)
            .await
            .expect("fill the test database");
    }
    pool.close().await;
    format!("sqlite:{}", path.display())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_csv_segment_is_saved_with_its_columns_and_row_count() {
    let env = TestEnv::new().await;
    let csv = env.write("members.csv", MEMBERS_CSV);

    let out = env.run(&["segment", "add", "members", "--csv", &csv]).await;

    out.assert_ok();
    let saved = env.show_json("segment", "members").await;
    assert_eq!(saved["kind"], "csv");
    assert_eq!(saved["rows"], 3);
    assert_eq!(
        saved["columns"],
        serde_json::json!(["email", "first_name", "tier"])
    );
    assert_eq!(saved["source"], csv);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_semicolon_delimited_csv_is_read_with_the_given_delimiter() {
    let env = TestEnv::new().await;
    let csv = env.write("members.csv", "email;tier\nada@example.com;gold\n");

    let out = env
        .run(&[
            "segment",
            "add",
            "members",
            "--csv",
            &csv,
            "--delimiter",
            ";",
        ])
        .await;

    out.assert_ok();
    let saved = env.show_json("segment", "members").await;
    assert_eq!(saved["columns"], serde_json::json!(["email", "tier"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delimiter_of_two_characters_is_a_usage_error() {
    let env = TestEnv::new().await;
    let csv = env.write("members.csv", MEMBERS_CSV);

    let out = env
        .run(&[
            "segment",
            "add",
            "members",
            "--csv",
            &csv,
            "--delimiter",
            ";;",
        ])
        .await;

    assert_eq!(out.code(), Some(2), "{}", out.stderr_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jsonl_segment_is_saved_with_its_columns() {
    let env = TestEnv::new().await;
    let jsonl = env.write(
        "members.jsonl",
        "{\"email\":\"ada@example.com\",\"tier\":\"gold\"}\n{\"email\":\"alan@example.com\"}\n",
    );

    let out = env
        .run(&["segment", "add", "members", "--jsonl", &jsonl])
        .await;

    out.assert_ok();
    let saved = env.show_json("segment", "members").await;
    assert_eq!(saved["kind"], "jsonl");
    assert_eq!(saved["rows"], 2);
    let columns = saved["columns"].as_array().expect("columns");
    assert!(
        columns.contains(&"email".into()) && columns.contains(&"tier".into()),
        "{saved}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sqlite_query_segment_is_saved_with_the_query_rows() {
    let env = TestEnv::new().await;
    let url = sqlite_database(&env).await;

    let out = env
        .run(&[
            "segment",
            "add",
            "active",
            "--sql",
            "SELECT email, first_name FROM members WHERE active = 1",
            "--database",
            &url,
        ])
        .await;

    out.assert_ok();
    let saved = env.show_json("segment", "active").await;
    assert_eq!(saved["kind"], "sql");
    assert_eq!(saved["rows"], 2);
    assert_eq!(saved["columns"], serde_json::json!(["email", "first_name"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_url_can_be_given_on_stdin() {
    let env = TestEnv::new().await;
    let url = sqlite_database(&env).await;

    let out = env
        .run_stdin(
            &[
                "segment",
                "add",
                "all",
                "--sql",
                "SELECT email FROM members",
                "--database-stdin",
            ],
            &format!("{url}\n"),
        )
        .await;

    out.assert_ok();
    assert_eq!(env.show_json("segment", "all").await["rows"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_url_from_an_unset_variable_is_refused_naming_it() {
    let env = TestEnv::new().await;

    let out = env
        .run(&[
            "segment",
            "add",
            "active",
            "--sql",
            "SELECT 1",
            "--database-env",
            "CRM_DB_URL",
        ])
        .await;

    out.assert_fails_with(1, "CRM_DB_URL");
    assert!(env.list_json("segment").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_url_with_a_password_is_refused_without_repeating_it() {
    let env = TestEnv::new().await;

    let out = env
        .run(&[
            "segment",
            "add",
            "crm",
            "--sql",
            "SELECT email FROM members",
            "--database",
            "postgres://app:Hunter2Secret@127.0.0.1:5432/crm",
        ])
        .await;

    out.assert_fails_with(1, "--database-stdin");
    assert!(
        out.stderr_text().contains("--database-env"),
        "{}",
        out.stderr_text()
    );
    assert!(
        !out.stderr_text().contains("Hunter2Secret"),
        "{}",
        out.stderr_text()
    );
    assert!(env.list_json("segment").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ragged_csv_row_is_refused_naming_its_line_and_nothing_is_saved() {
    let env = TestEnv::new().await;
    let csv = env.write(
        "members.csv",
        "email,first_name,tier\nada@example.com,Ada,gold\nalan@example.com,Alan\n",
    );

    let out = env.run(&["segment", "add", "members", "--csv", &csv]).await;

    out.assert_fails_with(1, &format!("{csv} line 3"));
    assert!(env.list_json("segment").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_csv_file_is_refused_naming_it() {
    let env = TestEnv::new().await;
    let missing = env.path("nowhere.csv").display().to_string();

    let out = env
        .run(&["segment", "add", "members", "--csv", &missing])
        .await;

    out.assert_fails_with(1, &missing);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_segment_with_the_same_name_is_refused() {
    let env = TestEnv::new().await;
    env.add_csv_segment("members").await;
    let csv = env.write("other.csv", MEMBERS_CSV);

    let out = env.run(&["segment", "add", "members", "--csv", &csv]).await;

    out.assert_fails_with(1, "segment \"members\" already exists");
}

#[tokio::test(flavor = "multi_thread")]
async fn show_reads_the_source_again_for_the_current_row_count() {
    let env = TestEnv::new().await;
    let csv = env.write("members.csv", MEMBERS_CSV);
    env.run(&["segment", "add", "members", "--csv", &csv])
        .await
        .assert_ok();
    env.write(
        "members.csv",
        &format!("{MEMBERS_CSV}linus@example.com,Linus,bronze\n"),
    );

    let out = env.run(&["segment", "show", "members"]).await;

    out.assert_ok();
    let stdout = out.stdout_text();
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("rows:") && l.ends_with(" 4")),
        "{stdout}"
    );
    assert!(stdout.contains("email, first_name, tier"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn preview_prints_the_first_rows_as_an_aligned_table() {
    let env = TestEnv::new().await;
    let csv = env.write("members.csv", MEMBERS_CSV);
    env.run(&["segment", "add", "members", "--csv", &csv])
        .await
        .assert_ok();

    let out = env
        .run(&["segment", "preview", "members", "--limit", "2"])
        .await;

    out.assert_ok();
    let stdout = out.stdout_text();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "email             first_name  tier",
            "ada@example.com   Ada         gold",
            "alan@example.com  Alan        silver",
        ],
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn list_shows_every_segment_with_its_row_count() {
    let env = TestEnv::new().await;
    env.add_csv_segment("members").await;

    let out = env.run(&["segment", "list"]).await;

    out.assert_ok();
    let stdout = out.stdout_text();
    let row = stdout.lines().nth(1).unwrap_or_default();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[..4], ["members", "csv", "2", "4"], "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_segment_is_not_removed_while_an_export_uses_it() {
    let env = TestEnv::new().await;
    env.add_export().await;

    let out = env.run(&["segment", "remove", "members"]).await;

    out.assert_fails_with(1, "segment \"members\" is used by export(s) weekly");
    assert_eq!(env.list_json("segment").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unused_segment_is_removed() {
    let env = TestEnv::new().await;
    env.add_export().await;
    env.run(&["export", "remove", "weekly"]).await.assert_ok();

    let out = env.run(&["segment", "remove", "members"]).await;

    out.assert_ok();
    assert!(env.list_json("segment").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sql_segment_without_a_database_names_the_three_ways_to_give_one() {
    let env = TestEnv::new().await;

    let out = env
        .run(&["segment", "add", "active", "--sql", "SELECT 1"])
        .await;

    out.assert_fails_with(1, "--database URL, --database-env VAR or --database-stdin");
}

// `segment update`: the new source is read through once (as `segment add` reads it), then
// saved in one transaction; exports keep their delivery state while their columns remain.

/// `segment list --json`'s entry for `name`: what the store holds, without reading the source
/// again (as `show` would), so a refused update can be seen to have saved nothing.
async fn stored_segment(env: &TestEnv, name: &str) -> serde_json::Value {
    env.list_json("segment")
        .await
        .into_iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("segment {name} is stored"))
}

#[tokio::test(flavor = "multi_thread")]
async fn update_points_a_csv_segment_at_another_file_and_reads_its_rows() {
    let env = TestEnv::new().await;
    let csv = env.write("members.csv", MEMBERS_CSV);
    env.run(&["segment", "add", "members", "--csv", &csv])
        .await
        .assert_ok();
    let moved = env.write(
        "members-2024.csv",
        &format!("{MEMBERS_CSV}linus@example.com,Linus,bronze\n"),
    );

    let out = env
        .run(&["segment", "update", "members", "--csv", &moved, "--json"])
        .await;

    out.assert_ok();
    let printed: serde_json::Value =
        serde_json::from_str(&out.stdout_text()).expect("update --json prints JSON");
    assert_eq!(printed["source"], moved);
    assert_eq!(printed["rows"], 4);
    let stored = stored_segment(&env, "members").await;
    assert_eq!(stored["source"], moved);
    assert_eq!(stored["rows"], 4);
    assert_eq!(
        stored["columns"],
        serde_json::json!(["email", "first_name", "tier"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_an_update_to_a_file_with_the_same_content_the_next_run_sends_nothing() {
    let env = TestEnv::new().await;
    env.add_export().await;
    env.run(&["export", "run", "weekly"]).await.assert_ok();
    let imports = env.requests_to("bulk_import");
    assert!(imports > 0, "the first run sends the members");
    let same = std::fs::read_to_string(env.path("members.csv")).expect("the segment's file");
    let moved = env.write("moved.csv", &same);

    env.run(&["segment", "update", "members", "--csv", &moved])
        .await
        .assert_ok();
    let out = env.run(&["export", "run", "weekly", "--json"]).await;

    out.assert_ok();
    let run: serde_json::Value = serde_json::from_str(&out.stdout_text()).expect("run JSON");
    assert_eq!(run["counts"]["unchanged"], 2, "{run}");
    assert_eq!(run["counts"]["upserted"], 0, "{run}");
    assert_eq!(env.requests_to("bulk_import"), imports, "nothing sent");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_update_that_drops_mapped_columns_is_refused_naming_export_and_columns_and_saves_nothing()
 {
    let env = TestEnv::new().await;
    env.add_connection("crm").await;
    env.add_csv_segment("members").await;
    env.run(&crate::support::export_add_args(&[
        "--first-name",
        "first_name",
        "--field",
        "3=tier",
    ]))
    .await
    .assert_ok();
    let before = stored_segment(&env, "members").await;
    let narrower = env.write(
        "narrower.csv",
        "email,last_name\nada@example.com,Lovelace\n",
    );

    let out = env
        .run(&["segment", "update", "members", "--csv", &narrower])
        .await;

    out.assert_fails_with(1, "export \"weekly\"");
    let stderr = out.stderr_text();
    assert!(stderr.contains("\"first_name\""), "{stderr}");
    assert!(stderr.contains("\"tier\""), "{stderr}");
    assert_eq!(stored_segment(&env, "members").await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn update_of_an_unknown_segment_is_refused_naming_it() {
    let env = TestEnv::new().await;
    let csv = env.write("members.csv", MEMBERS_CSV);

    let out = env
        .run(&["segment", "update", "ghost", "--csv", &csv])
        .await;

    out.assert_fails_with(1, "segment \"ghost\" does not exist");
    assert!(env.list_json("segment").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn update_to_a_file_that_cannot_be_read_is_refused_naming_it_and_keeps_the_segment() {
    let env = TestEnv::new().await;
    env.add_csv_segment("members").await;
    let before = stored_segment(&env, "members").await;
    let missing = env.path("nowhere.csv").display().to_string();

    let out = env
        .run(&["segment", "update", "members", "--csv", &missing])
        .await;

    out.assert_fails_with(1, &missing);
    assert_eq!(stored_segment(&env, "members").await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn update_to_a_broken_file_is_refused_naming_its_line_and_keeps_the_segment() {
    let env = TestEnv::new().await;
    env.add_csv_segment("members").await;
    let before = stored_segment(&env, "members").await;
    let ragged = env.write(
        "ragged.csv",
        "email,first_name,last_name,tier\nada@example.com,Ada\n",
    );

    let out = env
        .run(&["segment", "update", "members", "--csv", &ragged])
        .await;

    out.assert_fails_with(1, &format!("{ragged} line 2"));
    assert_eq!(stored_segment(&env, "members").await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn update_changes_an_sql_segments_query_and_keeps_its_database() {
    let env = TestEnv::new().await;
    let url = sqlite_database(&env).await;
    env.run(&[
        "segment",
        "add",
        "active",
        "--sql",
        "SELECT email, first_name FROM members WHERE active = 1",
        "--database",
        &url,
    ])
    .await
    .assert_ok();

    let out = env
        .run(&[
            "segment",
            "update",
            "active",
            "--sql",
            "SELECT email FROM members",
        ])
        .await;

    out.assert_ok();
    let stored = stored_segment(&env, "active").await;
    assert_eq!(stored["rows"], 3);
    assert_eq!(stored["columns"], serde_json::json!(["email"]));
    assert_eq!(
        stored["source"],
        format!("{url} :: SELECT email FROM members")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn update_turns_a_csv_segment_into_an_sql_one_with_the_database_on_stdin() {
    let env = TestEnv::new().await;
    env.add_csv_segment("members").await;
    let url = sqlite_database(&env).await;

    let out = env
        .run_stdin(
            &[
                "segment",
                "update",
                "members",
                "--sql",
                "SELECT email, first_name FROM members",
                "--database-stdin",
            ],
            &format!("{url}\n"),
        )
        .await;

    out.assert_ok();
    let stored = stored_segment(&env, "members").await;
    assert_eq!(stored["kind"], "sql");
    assert_eq!(stored["rows"], 3);
    assert_eq!(
        stored["columns"],
        serde_json::json!(["email", "first_name"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn update_refuses_a_database_url_with_a_password_without_repeating_it() {
    let env = TestEnv::new().await;
    let url = sqlite_database(&env).await;
    env.run(&[
        "segment",
        "add",
        "active",
        "--sql",
        "SELECT email FROM members",
        "--database",
        &url,
    ])
    .await
    .assert_ok();
    let before = stored_segment(&env, "active").await;

    let out = env
        .run(&[
            "segment",
            "update",
            "active",
            "--database",
            "postgres://app:Hunter2Secret@127.0.0.1:5432/crm",
        ])
        .await;

    out.assert_fails_with(1, "--database-stdin");
    assert!(
        !out.stderr_text().contains("Hunter2Secret"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(stored_segment(&env, "active").await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn update_without_anything_to_change_is_a_usage_error_naming_what_can_change() {
    let env = TestEnv::new().await;
    env.add_csv_segment("members").await;

    let out = env.run(&["segment", "update", "members"]).await;

    assert_eq!(out.code(), Some(2), "{}", out.stderr_text());
    let stderr = out.stderr_text();
    assert!(
        stderr.contains("--csv") && stderr.contains("--delimiter"),
        "names what can change: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_query_on_a_database_from_an_unset_variable_is_refused_naming_the_segments_variable()
{
    let env = TestEnv::new().await;
    let url = sqlite_database(&env).await;
    env.run_env(
        &[
            "segment",
            "add",
            "active",
            "--sql",
            "SELECT email FROM members",
            "--database-env",
            "CRM_DB_URL",
        ],
        &[("CRM_DB_URL", &url)],
    )
    .await
    .assert_ok();
    let before = stored_segment(&env, "active").await;

    let out = env
        .run(&[
            "segment",
            "update",
            "active",
            "--sql",
            "SELECT email, first_name FROM members",
        ])
        .await;

    out.assert_fails_with(
        1,
        "segment \"active\" reads its database URL from the environment variable CRM_DB_URL",
    );
    assert_eq!(stored_segment(&env, "active").await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_query_keeps_reading_the_database_url_from_the_segments_variable() {
    let env = TestEnv::new().await;
    let url = sqlite_database(&env).await;
    let vars = [("CRM_DB_URL", url.as_str())];
    env.run_env(
        &[
            "segment",
            "add",
            "active",
            "--sql",
            "SELECT email FROM members",
            "--database-env",
            "CRM_DB_URL",
        ],
        &vars,
    )
    .await
    .assert_ok();

    let out = env
        .run_env(
            &[
                "segment",
                "update",
                "active",
                "--sql",
                "SELECT email, first_name FROM members",
            ],
            &vars,
        )
        .await;

    out.assert_ok();
    let stored = stored_segment(&env, "active").await;
    assert_eq!(
        stored["columns"],
        serde_json::json!(["email", "first_name"])
    );
    assert_eq!(
        stored["source"],
        format!("{url} :: SELECT email, first_name FROM members")
    );
    let without_the_variable = env.run(&["segment", "show", "active"]).await;
    without_the_variable.assert_fails_with(
        1,
        "segment \"active\" reads its database URL from the environment variable CRM_DB_URL",
    );
}
