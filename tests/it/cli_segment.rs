//! `acexport segment ...`: CSV, JSONL and SQLite sources are read through before saving; a
//! broken file is refused naming the line; a database password never goes on a command line.

use acexport::store::RunStatus;

use crate::support::{OutputExt, TestEnv, export_add_args};

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
async fn an_update_whose_mapped_column_cannot_be_exported_is_refused_and_saves_nothing() {
    let env = TestEnv::new().await;
    env.add_connection("crm").await;
    env.add_csv_segment("members").await;
    env.run(&crate::support::export_add_args(&["--field", "3=tier"]))
        .await
        .assert_ok();
    let before = stored_segment(&env, "members").await;
    let url = typed_sqlite_database(&env).await;

    let out = env
        .run_stdin(
            &[
                "segment",
                "update",
                "members",
                "--sql",
                "SELECT email, photo AS tier FROM typed",
                "--database-stdin",
            ],
            &url,
        )
        .await;

    out.assert_fails_with(1, "export \"weekly\"");
    let stderr = out.stderr_text();
    assert!(stderr.contains("cannot export"), "{stderr}");
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

/// Creates a SQLite database with a `typed` table of two members whose columns have the types
/// SQLite users declare; returns its `sqlite:` URL.
async fn typed_sqlite_database(env: &TestEnv) -> String {
    let path = env.path("typed.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options)
        .await
        .expect("create the test database");
    sqlx::raw_sql(
        "CREATE TABLE typed (email TEXT, price NUMERIC, ratio REAL, active BOOLEAN, born DATE,
             ref TEXT, photo BLOB);
         INSERT INTO typed VALUES ('ada@example.com', '1.50', 0.1, 1, '2024-02-29',
             'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', x'00ff');
         INSERT INTO typed VALUES ('alan@example.com', 1234567890123456789, 1e20, 0, NULL,
             NULL, NULL);",
    )
    .execute(&pool)
    .await
    .expect("fill the test database");
    pool.close().await;
    format!("sqlite:{}", path.display())
}

/// The `column_types` entry of `name` in a `segment show --json`.
fn column_type<'a>(shown: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    shown["column_types"]
        .as_array()
        .and_then(|types| types.iter().find(|t| t["name"] == name))
        .unwrap_or_else(|| panic!("no column type for {name} in {shown}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sqlite_segment_lists_each_column_type_and_how_it_converts() {
    let env = TestEnv::new().await;
    let url = typed_sqlite_database(&env).await;

    let out = env
        .run(&[
            "segment",
            "add",
            "members",
            "--sql",
            "SELECT * FROM typed",
            "--database",
            &url,
        ])
        .await;

    out.assert_ok();
    let stdout = out.stdout_text();
    let line = |column: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(column))
            .unwrap_or_else(|| panic!("no line for {column}:\n{stdout}"))
            .to_owned()
    };
    assert!(line("active").contains("BOOLEAN"), "{stdout}");
    assert!(line("active").contains("true"), "{stdout}");
    assert!(line("photo").contains("cannot be exported"), "{stdout}");
    let shown = env.show_json("segment", "members").await;
    assert_eq!(column_type(&shown, "active")["type"], "BOOLEAN");
    assert_eq!(column_type(&shown, "active")["exportable"], true);
    assert_eq!(column_type(&shown, "photo")["exportable"], false);
    let reason = column_type(&shown, "photo")["conversion"].to_string();
    assert!(reason.contains("cannot be exported"), "{reason}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_mapping_a_column_that_cannot_be_exported_is_refused_naming_it() {
    let env = TestEnv::new().await;
    env.add_connection("crm").await;
    let url = typed_sqlite_database(&env).await;
    env.run(&[
        "segment",
        "add",
        "members",
        "--sql",
        "SELECT * FROM typed",
        "--database",
        &url,
    ])
    .await
    .assert_ok();

    let out = env.run(&export_add_args(&["--field", "2=photo"])).await;

    out.assert_fails_with(1, "column \"photo\" of segment \"members\"");
    assert!(
        out.stderr_text().contains("--field"),
        "{}",
        out.stderr_text()
    );
    assert!(env.list_json("export").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sqlite_segment_of_typed_columns_is_exported_with_each_value_converted() {
    let env = TestEnv::new().await;
    env.add_connection("crm").await;
    let url = typed_sqlite_database(&env).await;
    env.run(&[
        "segment",
        "add",
        "members",
        "--sql",
        "SELECT * FROM typed",
        "--database",
        &url,
    ])
    .await
    .assert_ok();
    env.run(&export_add_args(&[
        "--field", "1=price", "--field", "2=ratio", "--field", "3=active", "--field", "4=born",
        "--field", "5=ref",
    ]))
    .await
    .assert_ok();

    let outcome = env.run_export_in_process("weekly").await;

    assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
    assert_eq!(outcome.counts.rejected, 0);
    let ada = env.sandbox.contact("ada@example.com").expect("ada sent");
    let fields: Vec<(u64, &str)> = ada.fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        fields,
        [
            (1, "1.5"),
            (2, "0.1"),
            (3, "true"),
            (4, "2024-02-29"),
            (5, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        ]
    );
    let alan = env.sandbox.contact("alan@example.com").expect("alan sent");
    let fields: Vec<(u64, &str)> = alan.fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        fields,
        [
            (1, "1234567890123456789"),
            (2, "100000000000000000000"),
            (3, "false")
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn preview_shows_a_rejected_row_with_its_reason_instead_of_dropping_it() {
    let env = TestEnv::new().await;
    let url = typed_sqlite_database(&env).await;
    // A BLOB value in a column declared TEXT: only that value is at fault, not the column.
    env.run(&[
        "segment",
        "add",
        "members",
        "--sql",
        "SELECT email, CASE WHEN ref IS NULL THEN x'00' ELSE ref END AS ref FROM typed",
        "--database",
        &url,
    ])
    .await
    .assert_ok();

    let out = env.run(&["segment", "preview", "members"]).await;

    out.assert_ok();
    let stdout = out.stdout_text();
    assert!(stdout.contains("ada@example.com"), "{stdout}");
    let rejected = stdout
        .lines()
        .find(|l| l.contains("row 2"))
        .unwrap_or_else(|| panic!("row 2 is not shown:\n{stdout}"));
    assert!(rejected.contains("`ref`"), "{stdout}");
    assert!(rejected.contains("BLOB"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mapped_column_that_cannot_be_exported_at_run_time_fails_the_run_before_sending() {
    let env = TestEnv::new().await;
    env.add_connection("crm").await;
    let url = typed_sqlite_database(&env).await;
    env.run(&[
        "segment",
        "add",
        "members",
        "--sql",
        "SELECT email, ref FROM typed",
        "--database",
        &url,
    ])
    .await
    .assert_ok();
    env.run(&export_add_args(&["--field", "5=ref"]))
        .await
        .assert_ok();
    // The table changes after the export was saved: `ref` now holds binary data.
    let pool = sqlx::SqlitePool::connect(&url).await.expect("open");
    sqlx::raw_sql(
        "ALTER TABLE typed RENAME TO old; CREATE TABLE typed (email TEXT, ref BLOB);
         INSERT INTO typed SELECT email, CAST(ref AS BLOB) FROM old;",
    )
    .execute(&pool)
    .await
    .expect("change the table");
    pool.close().await;

    let outcome = env.run_export_in_process("weekly").await;

    assert_eq!(outcome.status, RunStatus::Failed);
    let error = outcome.error.unwrap_or_default();
    assert!(error.contains("`ref`"), "{error}");
    assert!(error.contains("cannot be exported"), "{error}");
    assert_eq!(env.requests_to("bulk_import"), 0);
}

/// Why the PostgreSQL tests are ignored by default, and what they say when run without a server.
const NEEDS_POSTGRES: &str = "needs PostgreSQL: set ACEXPORT_TEST_POSTGRES_URL";

/// The PostgreSQL URL for tests. Panics when the variable is unset: a test that cannot reach
/// its server must fail, never pass by doing nothing.
fn postgres_url() -> String {
    std::env::var("ACEXPORT_TEST_POSTGRES_URL").unwrap_or_else(|_| panic!("{NEEDS_POSTGRES}"))
}

/// Runs `setup` (with `{table}` replaced by a name unique to this test) on a writable
/// connection; returns the connection and the table's name.
async fn postgres_table(setup: &str) -> (sqlx::PgConnection, String) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&postgres_url())
        .await
        .expect("connect to PostgreSQL");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let table = format!("acexport_it_{}_{nanos}", std::process::id());
    sqlx::raw_sql(sqlx::AssertSqlSafe(setup.replace("{table}", &table)))
        .execute(&mut conn)
        .await
        .expect("create the test table");
    (conn, table)
}

async fn drop_postgres_table(mut conn: sqlx::PgConnection, table: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
        .execute(&mut conn)
        .await
        .expect("drop the test table");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs PostgreSQL: set ACEXPORT_TEST_POSTGRES_URL"]
async fn a_postgres_segment_of_everyday_types_is_exported_with_each_value_converted() {
    let env = TestEnv::new().await;
    env.add_connection("crm").await;
    let (conn, table) = postgres_table(
        r#"CREATE TABLE {table} (email text, score numeric(10,2), ref uuid, prefs jsonb,
             born date, seen timestamptz, active boolean, tags text[]);
         INSERT INTO {table} VALUES ('ada@example.com', 1.5,
             'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '{"b": [1, 2], "a": "x"}', '2024-02-29',
             '2024-03-01 14:30:00+02', true, ARRAY['gold', 'vip']);"#,
    )
    .await;
    let query = format!("SELECT * FROM {table}");
    let url = postgres_url();
    let added = env
        .run(&[
            "segment",
            "add",
            "members",
            "--sql",
            &query,
            "--database",
            &url,
        ])
        .await;
    let shown = env.run(&["segment", "show", "members", "--json"]).await;
    let export = env
        .run(&export_add_args(&[
            "--field", "1=score", "--field", "2=ref", "--field", "3=prefs", "--field", "4=born",
            "--field", "5=seen", "--field", "6=active", "--field", "7=tags",
        ]))
        .await;
    let outcome = env.run_export_in_process("weekly").await;
    drop_postgres_table(conn, &table).await;

    added.assert_ok();
    assert!(
        added.stdout_text().contains("NUMERIC"),
        "{}",
        added.stdout_text()
    );
    shown.assert_ok();
    let shown: serde_json::Value = serde_json::from_str(&shown.stdout_text()).expect("JSON");
    assert_eq!(column_type(&shown, "score")["type"], "NUMERIC");
    assert_eq!(column_type(&shown, "tags")["type"], "TEXT[]");
    assert_eq!(column_type(&shown, "tags")["exportable"], true);
    export.assert_ok();
    assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
    assert_eq!(outcome.counts.rejected, 0);
    let ada = env.sandbox.contact("ada@example.com").expect("ada sent");
    let fields: Vec<(u64, &str)> = ada.fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        fields,
        [
            (1, "1.50"),
            (2, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            (3, r#"{"a":"x","b":[1,2]}"#),
            (4, "2024-02-29"),
            (5, "2024-03-01T12:30:00Z"),
            (6, "true"),
            (7, "||gold||vip||")
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs PostgreSQL: set ACEXPORT_TEST_POSTGRES_URL"]
async fn a_query_error_names_the_segment_and_the_line_and_column_in_the_query() {
    let env = TestEnv::new().await;
    let url = postgres_url();

    let out = env
        .run(&[
            "segment",
            "add",
            "members",
            "--sql",
            "SELECT email\nFROM nowhere WHERE )",
            "--database",
            &url,
        ])
        .await;

    out.assert_fails_with(1, "segment \"members\"");
    let stderr = out.stderr_text();
    assert!(stderr.contains("line 2, column 20"), "{stderr}");
    assert!(
        stderr.contains(r#"syntax error at or near ")""#),
        "{stderr}"
    );
    assert!(!stderr.contains("at line 1"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_update_mapping_a_column_that_cannot_be_exported_is_refused_and_keeps_the_export()
{
    let env = TestEnv::new().await;
    env.add_connection("crm").await;
    let url = typed_sqlite_database(&env).await;
    env.run(&[
        "segment",
        "add",
        "members",
        "--sql",
        "SELECT * FROM typed",
        "--database",
        &url,
    ])
    .await
    .assert_ok();
    env.run(&export_add_args(&["--field", "2=ref"]))
        .await
        .assert_ok();

    let out = env
        .run(&["export", "update", "weekly", "--field", "2=photo"])
        .await;

    out.assert_fails_with(1, "column \"photo\" of segment \"members\"");
    let saved = env.show_json("export", "weekly").await;
    assert_eq!(
        saved["fields"],
        serde_json::json!([{"field_id": 2, "column": "ref"}])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn preview_shows_the_rows_read_before_the_source_failed_and_then_why() {
    let env = TestEnv::new().await;
    let path = env.path("docs.db");
    let url = format!("sqlite:{}", path.display());
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options)
        .await
        .expect("create the test database");
    sqlx::raw_sql(
        "CREATE TABLE docs (id INTEGER, doc TEXT);
         INSERT INTO docs VALUES (1, '{\"email\":\"ada@example.com\"}'),
             (2, '{\"email\":\"alan@example.com\"}');",
    )
    .execute(&pool)
    .await
    .expect("fill the test database");
    env.run(&[
        "segment",
        "add",
        "members",
        "--sql",
        "SELECT json_extract(doc, '$.email') AS email FROM docs",
        "--database",
        &url,
    ])
    .await
    .assert_ok();
    // A row added later that SQLite cannot read: the query fails on it, mid-stream.
    sqlx::query("INSERT INTO docs VALUES (3, '{not json')")
        .execute(&pool)
        .await
        .expect("add a broken row");
    pool.close().await;

    let out = env.run(&["segment", "preview", "members"]).await;

    out.assert_fails_with(1, "segment \"members\"");
    assert!(
        out.stderr_text().contains("after 2 rows"),
        "{}",
        out.stderr_text()
    );
    assert!(
        out.stderr_text().contains("malformed JSON"),
        "{}",
        out.stderr_text()
    );
    let stdout = out.stdout_text();
    assert!(stdout.contains("ada@example.com"), "{stdout}");
    assert!(stdout.contains("alan@example.com"), "{stdout}");
}
