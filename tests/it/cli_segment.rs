//! `acexport segment ...`: CSV, JSONL and SQLite sources are read through before saving; a
//! broken file is refused naming the line; a database password never goes on a command line.

use crate::support::{OutputExt, TestEnv};

const MEMBERS_CSV: &str = "email,first_name,tier\nada@example.com,Ada,gold\n\
                           alan@example.com,Alan,silver\ngrace@example.com,Grace,gold\n";

/// Creates a SQLite database with a `members` table of two rows; returns its `sqlite:` URL.
pub(crate) async fn sqlite_database(env: &TestEnv) -> String {
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
