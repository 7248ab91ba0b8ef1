//! The SQL source against SQLite files, and PostgreSQL where a server is given.

use std::path::Path;

use sqlx::Connection;

use super::*;
use crate::source::testing::{names, read_all, values};
use crate::source::{Description, Row, SourceDef, describe, open, preview};

fn sql_def(query: &str, url: &str) -> SourceDef {
    SourceDef::Sql {
        query: query.to_owned(),
        database_url: SecretString::from(url.to_owned()),
    }
}

/// A SQLite file with a `people` table of three rows; returns its `sqlite:` URL.
async fn sqlite_db(dir: &Path) -> String {
    let path = dir.join("crm.db");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .expect("create sqlite db");
    sqlx::raw_sql(
        "CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT, name TEXT, score REAL, photo BLOB);
         INSERT INTO people VALUES (1, 'a@example.com', 'Ann', 1.5, NULL);
         INSERT INTO people VALUES (2, 'b@example.com', '', 2, x'00ff');
         INSERT INTO people VALUES (3, 'c@example.com', NULL, NULL, NULL);",
    )
    .execute(&mut conn)
    .await
    .expect("fill sqlite db");
    conn.close().await.expect("close sqlite db");
    format!("sqlite:{}", path.display())
}

#[tokio::test]
async fn sqlite_query_rows_are_projected_in_the_requested_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_db(dir.path()).await;
    let def = sql_def("SELECT id, email, name FROM people ORDER BY id", &url);

    let items = read_all(&def, &["name", "email"]).await;

    let rows: Vec<&Row> = items.iter().map(|i| i.as_ref().expect("row")).collect();
    assert_eq!(values(rows[0]), [Some("Ann"), Some("a@example.com")]);
    assert_eq!(values(rows[1]), [Some(""), Some("b@example.com")]);
    assert_eq!(values(rows[2]), [None, Some("c@example.com")]);
    assert_eq!(rows.iter().map(|r| r.number).collect::<Vec<_>>(), [1, 2, 3]);
}

#[tokio::test]
async fn sqlite_integer_and_real_values_are_read_as_text() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_db(dir.path()).await;
    let def = sql_def(
        "SELECT id, score, id * 10 AS tens FROM people ORDER BY id",
        &url,
    );

    let items = read_all(&def, &["id", "score", "tens"]).await;

    assert_eq!(
        values(items[0].as_ref().expect("row")),
        [Some("1"), Some("1.5"), Some("10")]
    );
    assert_eq!(
        values(items[1].as_ref().expect("row")),
        [Some("2"), Some("2"), Some("20")]
    );
}

#[tokio::test]
async fn a_mapped_blob_column_stops_the_source_before_any_row_saying_what_to_do() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_db(dir.path()).await;
    let def = sql_def("SELECT id, photo FROM people ORDER BY id", &url);

    let error = open(&def, &names(&["id", "photo"]))
        .await
        .err()
        .expect("not exportable");

    assert!(
        matches!(&error, SourceError::NotExportable { column, column_type, .. }
            if column == "photo" && column_type.name == "BLOB"),
        "{error}"
    );
    assert!(error.to_string().contains("hex(col)"), "{error}");
    assert!(!error.is_retriable());
}

#[tokio::test]
async fn a_blob_value_in_a_text_column_is_a_row_error_naming_the_column_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_db(dir.path()).await;
    let def = sql_def(
        "SELECT id, CASE WHEN id = 2 THEN photo ELSE name END AS name FROM people ORDER BY id",
        &url,
    );

    let items = read_all(&def, &["id", "name"]).await;

    assert_eq!(items.len(), 3);
    let error = items[1].as_ref().expect_err("blob");
    assert_eq!(error.number, 2);
    assert!(error.reason.contains("`name`"), "{}", error.reason);
    assert!(error.reason.contains("BLOB"), "{}", error.reason);
    assert!(items[2].is_ok());
}

#[tokio::test]
async fn preview_leaves_out_the_columns_that_cannot_be_exported_and_says_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_db(dir.path()).await;
    let def = sql_def("SELECT id, photo, email FROM people ORDER BY id", &url);

    let preview = preview(&def, 10).await.expect("preview");

    assert_eq!(preview.columns, names(&["id", "email"]));
    assert_eq!(preview.hidden.len(), 1);
    assert_eq!(preview.hidden[0].0, "photo");
    assert!(preview.hidden[0].1.refusal().is_some());
    assert_eq!(preview.rows.len(), 3);
    assert!(preview.stopped.is_none());
}

#[tokio::test]
async fn sqlite_describe_lists_the_query_columns_and_counts_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_db(dir.path()).await;
    let def = sql_def("SELECT email, name AS first_name FROM people", &url);

    let description = describe(&def).await.expect("describe");

    assert_eq!(
        description,
        Description {
            columns: names(&["email", "first_name"]),
            types: vec![
                ColumnType {
                    name: "TEXT".to_owned(),
                    conversion: Conversion::SqliteValue
                };
                2
            ],
            rows: 3
        }
    );
}

#[tokio::test]
async fn sqlite_query_without_rows_still_has_columns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_db(dir.path()).await;
    let def = sql_def("SELECT email FROM people WHERE id > 100", &url);

    let preview = preview(&def, 10).await.expect("preview");

    assert_eq!(
        (preview.columns, preview.rows.len()),
        (names(&["email"]), 0)
    );
}

#[tokio::test]
async fn sqlite_update_query_is_refused_and_leaves_the_database_unchanged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_db(dir.path()).await;
    let def = sql_def("UPDATE people SET email = 'x@example.com'", &url);

    let result = describe(&def).await;

    let error = result.expect_err("read-only");
    assert!(
        error.to_string().contains("starts with `UPDATE`"),
        "{error}"
    );
    let check = sql_def(
        "SELECT email FROM people WHERE email = 'x@example.com'",
        &url,
    );
    assert_eq!(describe(&check).await.expect("describe").rows, 0);
}

/// The files in `dir` other than the source database: what a query managed to create.
fn files_besides_the_database(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list the temp dir")
        .map(|entry| {
            entry
                .expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| !name.starts_with("crm.db"))
        .collect();
    names.sort();
    names
}

/// Runs `query` on a fresh copy of the test database as `describe` (segment add), `preview`
/// and `open` (a run) do; returns each error and the files left beside the database.
async fn attack(query_for: impl Fn(&Path) -> String) -> (Vec<SourceError>, Vec<String>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_db(dir.path()).await;
    let def = sql_def(&query_for(dir.path()), &url);
    let errors = vec![
        describe(&def).await.expect_err("describe refuses it"),
        preview(&def, 10).await.expect_err("preview refuses it"),
        open(&def, &names(&["email"]))
            .await
            .err()
            .expect("open refuses it"),
    ];
    (errors, files_besides_the_database(dir.path()))
}

#[tokio::test]
async fn sqlite_vacuum_into_is_refused_and_creates_no_file() {
    let (errors, created) =
        attack(|dir| format!("VACUUM INTO '{}'", dir.join("copy.db").display())).await;

    assert_eq!(created, Vec::<String>::new());
    for error in errors {
        assert!(matches!(error, SourceError::NotASelect { .. }), "{error}");
        assert!(
            error.to_string().contains("starts with `VACUUM`"),
            "{error}"
        );
        assert!(error.to_string().contains("a single SELECT"), "{error}");
    }
}

#[tokio::test]
async fn sqlite_attach_and_create_table_in_the_attached_database_are_refused() {
    let (errors, created) = attack(|dir| {
        format!(
            "ATTACH DATABASE '{}' AS y; CREATE TABLE y.stolen AS SELECT * FROM people",
            dir.join("y.db").display()
        )
    })
    .await;

    assert_eq!(created, Vec::<String>::new());
    for error in errors {
        assert!(
            error.to_string().contains("starts with `ATTACH`"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn sqlite_a_second_statement_after_a_select_is_refused_before_the_select_runs() {
    let (errors, created) = attack(|dir| {
        format!(
            "SELECT email FROM people;\nVACUUM INTO '{}'",
            dir.join("copy.db").display()
        )
    })
    .await;

    assert_eq!(created, Vec::<String>::new());
    for error in errors {
        assert!(
            error.to_string().contains("a second statement (line 2)"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn sqlite_a_query_cannot_turn_query_only_off_first() {
    let (errors, created) = attack(|dir| {
        format!(
            "PRAGMA query_only = OFF; VACUUM INTO '{}'",
            dir.join("copy.db").display()
        )
    })
    .await;

    assert_eq!(created, Vec::<String>::new());
    for error in errors {
        assert!(
            error.to_string().contains("starts with `PRAGMA`"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn sqlite_a_data_changing_query_behind_with_meets_the_read_only_connection() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_db(dir.path()).await;
    let def = sql_def(
        "WITH doomed AS (SELECT id FROM people) DELETE FROM people WHERE id IN doomed",
        &url,
    );

    let error = describe(&def).await.expect_err("read-only");

    assert!(error.to_string().contains("readonly database"), "{error}");
    let check = sql_def("SELECT email FROM people", &url);
    assert_eq!(describe(&check).await.expect("describe").rows, 3);
}

#[tokio::test]
async fn a_sqlite_source_connection_is_read_only_and_query_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_db(dir.path()).await;
    let Ok(Target::Sqlite(options, _)) = target(&url, &Database::new(&url)) else {
        panic!("a sqlite target");
    };
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .expect("connect");

    let query_only: i64 = sqlx::query_scalar("PRAGMA query_only")
        .fetch_one(&mut conn)
        .await
        .expect("read the pragma");
    // Even with query_only turned off, the file was opened read-only (mode=ro).
    let write = sqlx::raw_sql("PRAGMA query_only = OFF; CREATE TABLE t (a)")
        .execute(&mut conn)
        .await;

    assert_eq!(query_only, 1);
    let error = write.expect_err("mode=ro");
    assert!(error.to_string().contains("readonly database"), "{error}");
}

#[tokio::test]
async fn the_sqlite_row_reader_opens_the_file_read_only_and_query_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_db(dir.path()).await;
    let Ok(Target::Sqlite(_, file)) = target(&url, &Database::new(&url)) else {
        panic!("a sqlite target");
    };
    let conn = file.open(Duration::from_secs(1)).expect("open");

    let query_only: i64 = conn
        .query_row("PRAGMA query_only", [], |row| row.get(0))
        .expect("read the pragma");
    // Even with query_only turned off, the file was opened read-only.
    let write = conn.execute_batch("PRAGMA query_only = OFF; CREATE TABLE t (a)");

    assert_eq!(query_only, 1);
    let error = write.expect_err("read-only");
    assert!(error.to_string().contains("readonly database"), "{error}");
}

#[tokio::test]
async fn sqlite_a_query_with_parameters_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_db(dir.path()).await;
    let def = sql_def("SELECT email FROM people WHERE id = :id", &url);

    let error = describe(&def).await.expect_err("parameters");

    assert!(matches!(error, SourceError::NotASelect { .. }), "{error}");
    assert!(error.to_string().contains("parameters"), "{error}");
}

#[tokio::test]
async fn unknown_column_error_lists_the_query_columns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_db(dir.path()).await;
    let def = sql_def("SELECT id, email FROM people", &url);

    let error = open(&def, &names(&["phone"])).await.err().expect("unknown");

    match error {
        SourceError::UnknownColumn {
            column, available, ..
        } => {
            assert_eq!(column, "phone");
            assert_eq!(available, names(&["id", "email"]));
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[tokio::test]
async fn duplicate_result_column_names_are_refused_naming_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_db(dir.path()).await;
    let def = sql_def("SELECT id, email, id FROM people", &url);

    let error = describe(&def).await.expect_err("duplicate");

    assert!(
        matches!(&error, SourceError::DuplicateColumns { columns, .. } if columns == &names(&["id"])),
        "{error}"
    );
}

#[tokio::test]
async fn a_bad_query_is_an_error_naming_the_database() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_db(dir.path()).await;
    let def = sql_def("SELECT nope FROM nowhere", &url);

    let error = describe(&def).await.expect_err("bad query");

    assert!(matches!(error, SourceError::Query { .. }), "{error}");
    assert!(error.to_string().contains(&url), "{error}");
}

#[tokio::test]
async fn a_missing_sqlite_file_is_not_created() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("missing.db");
    let def = sql_def("SELECT 1 AS one", &format!("sqlite:{}", path.display()));

    let error = describe(&def).await.expect_err("missing file");

    assert!(matches!(error, SourceError::Connect { .. }), "{error}");
    assert!(!path.exists());
}

#[tokio::test]
async fn a_connection_failure_never_shows_the_password() {
    // Port 1 on loopback refuses connections: no server needed.
    let def = sql_def("SELECT 1", "postgres://app:hunter2secret@127.0.0.1:1/crm");

    let error = describe(&def).await.expect_err("refused");

    assert!(matches!(error, SourceError::Connect { .. }), "{error}");
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains("hunter2secret"), "{shown}");
    assert!(shown.contains("app:***@127.0.0.1:1/crm"), "{shown}");
}

#[tokio::test]
async fn an_unsupported_database_url_is_refused_with_the_password_hidden() {
    let def = sql_def("SELECT 1", "mysql://app:hunter2secret@127.0.0.1/crm");

    let error = describe(&def).await.expect_err("unsupported");

    assert!(
        matches!(error, SourceError::UnsupportedDatabase { .. }),
        "{error}"
    );
    assert!(!error.to_string().contains("hunter2secret"), "{error}");
}

/// Why the PostgreSQL tests are ignored by default, and what they say when run without a server.
const NEEDS_POSTGRES: &str = "needs PostgreSQL: set ACEXPORT_TEST_POSTGRES_URL";

/// The PostgreSQL URL for tests. Panics when the variable is unset: a test that cannot reach
/// its server must fail, never pass by doing nothing.
fn postgres_url() -> String {
    std::env::var("ACEXPORT_TEST_POSTGRES_URL").unwrap_or_else(|_| panic!("{NEEDS_POSTGRES}"))
}

/// Creates a uniquely named table through a writable connection; returns its name.
async fn postgres_table(conn: &mut PgConnection, setup: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let table = format!("acexport_source_test_{}_{nanos}", std::process::id());
    sqlx::raw_sql(AssertSqlSafe(setup.replace("{table}", &table)))
        .execute(&mut *conn)
        .await
        .expect("create test table");
    table
}

async fn drop_postgres_table(conn: &mut PgConnection, table: &str) {
    sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
        .execute(&mut *conn)
        .await
        .expect("drop test table");
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set ACEXPORT_TEST_POSTGRES_URL"]
async fn postgres_values_of_common_types_are_read_as_text() {
    let url = postgres_url();
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let table = postgres_table(
        &mut conn,
        "CREATE TABLE {table} (id int4, big int8, email text, code varchar(8), ok bool,
             ratio float8, born date, seen timestamptz, at timestamp, amount numeric);
         INSERT INTO {table} VALUES (7, 9000000000, 'a@example.com', '', true, 0.25,
             '2024-02-29', '2024-03-01 12:30:00+00', '2024-03-01 12:30:00', 1.50);
         INSERT INTO {table} (id) VALUES (8);",
    )
    .await;
    let def = sql_def(&format!("SELECT * FROM {table} ORDER BY id"), &url);

    let items = read_all(
        &def,
        &[
            "id", "big", "email", "code", "ok", "ratio", "born", "seen", "at", "amount",
        ],
    )
    .await;
    drop_postgres_table(&mut conn, &table).await;

    assert_eq!(
        values(items[0].as_ref().expect("row")),
        [
            Some("7"),
            Some("9000000000"),
            Some("a@example.com"),
            Some(""),
            Some("true"),
            Some("0.25"),
            Some("2024-02-29"),
            Some("2024-03-01T12:30:00Z"),
            Some("2024-03-01T12:30:00"),
            Some("1.50")
        ]
    );
    let second = values(items[1].as_ref().expect("row"));
    assert_eq!(second[0], Some("8"));
    assert!(second[1..].iter().all(Option::is_none), "{second:?}");
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set ACEXPORT_TEST_POSTGRES_URL"]
async fn postgres_query_runs_read_only() {
    let url = postgres_url();
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let table = postgres_table(
        &mut conn,
        "CREATE TABLE {table} (email text); INSERT INTO {table} VALUES ('a@example.com');",
    )
    .await;
    // Past the SELECT check (it starts with WITH), so the read-only transaction stops it.
    let def = sql_def(
        &format!("WITH gone AS (DELETE FROM {table} RETURNING email) SELECT email FROM gone"),
        &url,
    );

    let result = describe(&def).await;
    let remaining: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&mut conn)
        .await
        .expect("count");
    drop_postgres_table(&mut conn, &table).await;

    let error = result.expect_err("read-only");
    assert!(error.to_string().contains("read-only"), "{error}");
    assert_eq!(remaining, 1);
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set ACEXPORT_TEST_POSTGRES_URL"]
async fn postgres_everyday_types_convert_to_text_by_the_documented_rule() {
    let url = postgres_url();
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let table = postgres_table(
        &mut conn,
        r#"CREATE TABLE {table} (id int4, score numeric(10,2), big numeric, ref uuid,
             prefs jsonb, doc json, born date, seen timestamptz, active boolean, tags text[],
             lucky int4[], ratio float8, small float4);
         INSERT INTO {table} VALUES (1, 1.5, 12345678901234567890.000123,
             'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '{"b": [1,  2], "a": "x y"}',
             '{ "k" : [ 1 , "a b" ] }', '2024-02-29', '2024-03-01 14:30:00.25+02', true,
             ARRAY['gold', NULL, 'vip'], ARRAY[3, 7], 0.1, 0.1);
         INSERT INTO {table} (id, score, big, active, tags) VALUES (2, -0.5, 0, false, '{}');"#,
    )
    .await;
    let def = sql_def(&format!("SELECT * FROM {table} ORDER BY id"), &url);
    let columns = [
        "score", "big", "ref", "prefs", "doc", "born", "seen", "active", "tags", "lucky", "ratio",
        "small",
    ];

    let items = read_all(&def, &columns).await;
    drop_postgres_table(&mut conn, &table).await;

    assert_eq!(
        values(items[0].as_ref().expect("first row")),
        [
            Some("1.50"),
            Some("12345678901234567890.000123"),
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            Some(r#"{"a":"x y","b":[1,2]}"#),
            Some(r#"{"k":[1,"a b"]}"#),
            Some("2024-02-29"),
            Some("2024-03-01T12:30:00.250Z"),
            Some("true"),
            Some("||gold||vip||"),
            Some("||3||7||"),
            Some("0.1"),
            Some("0.1"),
        ]
    );
    assert_eq!(
        values(items[1].as_ref().expect("second row")),
        [
            Some("-0.50"),
            Some("0"),
            None,
            None,
            None,
            None,
            None,
            Some("false"),
            None,
            None,
            None,
            None
        ]
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set ACEXPORT_TEST_POSTGRES_URL"]
async fn a_postgres_syntax_error_on_line_2_is_reported_at_line_2_with_its_column() {
    let url = postgres_url();
    let def = sql_def("SELECT email\nFROM nowhere WHERE )", &url);

    let error = describe(&def).await.expect_err("syntax error");

    let text = error.to_string();
    assert!(text.contains("line 2, column 20"), "{text}");
    assert!(text.contains(r#"syntax error at or near ")""#), "{text}");
    assert!(
        !text.contains("at line 1"),
        "the server's own source line: {text}"
    );
}

#[tokio::test]
async fn sqlite_values_convert_by_storage_class_and_a_boolean_column_says_true_or_false() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("typed.db");
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let mut conn = SqliteConnection::connect_with(&options)
        .await
        .expect("create sqlite db");
    sqlx::raw_sql(
        "CREATE TABLE typed (id INTEGER, active BOOLEAN, price NUMERIC, ratio REAL, born DATE,
             ref TEXT, prefs TEXT);
         INSERT INTO typed VALUES (1, 1, '1.50', 0.1, '2024-02-29',
             'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\":1}');
         INSERT INTO typed VALUES (2, 0, 1234567890123456789, 1e20, NULL, NULL, NULL);",
    )
    .execute(&mut conn)
    .await
    .expect("fill sqlite db");
    conn.close().await.expect("close sqlite db");
    let url = format!("sqlite:{}", path.display());
    let def = sql_def("SELECT * FROM typed ORDER BY id", &url);

    let items = read_all(
        &def,
        &["id", "active", "price", "ratio", "born", "ref", "prefs"],
    )
    .await;

    assert_eq!(
        values(items[0].as_ref().expect("first row")),
        [
            Some("1"),
            Some("true"),
            Some("1.5"),
            Some("0.1"),
            Some("2024-02-29"),
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            Some(r#"{"a":1}"#),
        ]
    );
    assert_eq!(
        values(items[1].as_ref().expect("second row")),
        [
            Some("2"),
            Some("false"),
            Some("1234567890123456789"),
            Some("100000000000000000000"),
            None,
            None,
            None
        ]
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set ACEXPORT_TEST_POSTGRES_URL"]
async fn a_connection_the_server_refuses_gives_its_message_without_the_servers_source_line() {
    let url = postgres_url();
    let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
    let def = sql_def("SELECT 1", &format!("{base}/acexport_no_such_database"));

    let error = describe(&def).await.expect_err("no such database");

    let text = error.to_string();
    assert!(matches!(error, SourceError::Connect { .. }), "{text}");
    assert!(
        text.ends_with(r#": database "acexport_no_such_database" does not exist"#),
        "{text}"
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set ACEXPORT_TEST_POSTGRES_URL"]
async fn postgres_enums_domains_and_their_arrays_convert_by_the_type_beneath() {
    let url = postgres_url();
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let table = postgres_table(
        &mut conn,
        "CREATE TYPE {table}_tier AS ENUM ('gold', 'silver');
         CREATE DOMAIN {table}_price AS numeric(8,3);
         CREATE TABLE {table} (tier {table}_tier, tiers {table}_tier[], price {table}_price,
             code char(4), at time, atz timetz, grid int4[], docs jsonb[], raw bytea);
         INSERT INTO {table} VALUES ('gold', '{silver,gold}', 2.5, 'ab', '08:15:00.5',
             '08:15:00+02', '{{1,2},{3,4}}', ARRAY['{}'::jsonb], '\\x00');",
    )
    .await;
    let def = sql_def(&format!("SELECT * FROM {table}"), &url);

    let described = describe(&def).await;
    let items = read_all(&def, &["tier", "tiers", "price", "code", "at", "atz"]).await;
    let grid = read_all(&def, &["grid"]).await;
    let docs = open(&def, &names(&["docs"])).await.err();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP TABLE {table}; DROP TYPE {table}_tier; DROP DOMAIN {table}_price;"
    )))
    .execute(&mut conn)
    .await
    .expect("drop the test types");

    let types = described.expect("describe").types;
    let refused: Vec<bool> = types.iter().map(|t| t.refusal().is_some()).collect();
    assert_eq!(
        refused,
        [false, false, false, false, false, false, false, true, true]
    );
    assert_eq!(types[1].name, format!("{table}_tier[]"));
    assert_eq!(
        values(items[0].as_ref().expect("row")),
        [
            Some("gold"),
            Some("||silver||gold||"),
            Some("2.500"),
            Some("ab  "),
            Some("08:15:00.500"),
            Some("08:15:00+02:00")
        ]
    );
    let error = grid[0].as_ref().expect_err("a 2-dimensional array");
    assert!(error.reason.contains("`grid`"), "{}", error.reason);
    assert!(error.reason.contains("2-dimensional"), "{}", error.reason);
    let docs = docs.expect("jsonb[] refused").to_string();
    assert!(docs.contains("an array of JSON"), "{docs}");
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set ACEXPORT_TEST_POSTGRES_URL"]
async fn postgres_copy_to_a_server_file_is_refused() {
    let url = postgres_url();
    // Where a superuser's COPY would write on the server; a tests' server runs on loopback.
    let target = std::env::temp_dir().join(format!("acexport-copy-{}.txt", std::process::id()));
    let def = sql_def(
        &format!(
            "COPY (SELECT 'a@example.com' AS email) TO '{}'",
            target.display()
        ),
        &url,
    );

    let error = describe(&def).await.expect_err("COPY is no SELECT");

    assert!(matches!(error, SourceError::NotASelect { .. }), "{error}");
    assert!(error.to_string().contains("starts with `COPY`"), "{error}");
    assert!(!target.exists());
}

/// The sslmode a PostgreSQL URL is connected with, as sqlx names it. Parsing only: nothing
/// connects.
fn effective_ssl_mode(url: &str) -> String {
    match target(url, &Database::new(url)) {
        Ok(Target::Postgres(options, _)) => format!("{:?}", options.get_ssl_mode()),
        _ => panic!("{url} is a PostgreSQL target"),
    }
}

#[test]
fn a_postgres_source_off_loopback_verifies_the_server_certificate_unless_the_url_says_otherwise() {
    let cases = [
        ("postgres://app@db.example.com/crm", "VerifyFull"),
        ("postgres://app@10.0.0.5:6432/crm", "VerifyFull"),
        (
            "postgres://app@db.example.com/crm?sslmode=require",
            "Require",
        ),
        (
            "postgres://app@db.example.com/crm?sslmode=disable",
            "Disable",
        ),
        ("postgres://app@127.0.0.1/crm", "Prefer"),
        ("postgres://app@localhost/crm", "Prefer"),
        ("postgres://app@[::1]/crm", "Prefer"),
        ("postgres:///crm?host=/var/run/postgresql", "Prefer"),
    ];
    for (url, expected) in cases {
        assert_eq!(effective_ssl_mode(url), expected, "{url}");
    }
}

/// `url` with `param` added to its query string.
fn with_param(url: &str, param: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{param}")
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set ACEXPORT_TEST_POSTGRES_URL"]
async fn postgres_a_failed_certificate_check_says_how_to_trust_the_server() {
    // A test server's certificate is self-signed (or it has no TLS): verify-full fails.
    let url = with_param(&postgres_url(), "sslmode=verify-full");
    let def = sql_def("SELECT 1 AS one", &url);

    let error = describe(&def).await.expect_err("not verifiable");

    assert!(matches!(error, SourceError::Connect { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("TLS: verify-full (set in the URL: the server certificate and host name"),
        "{text}"
    );
    assert!(text.contains("add sslrootcert=PATH"), "{text}");
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set ACEXPORT_TEST_POSTGRES_URL"]
async fn postgres_an_sslmode_in_the_url_is_used_and_shown() {
    let url = with_param(&postgres_url(), "sslmode=require");
    let def = sql_def("SELECT 1 AS one", &url);

    let description = describe(&def).await.expect("require does not verify");

    assert_eq!(description.rows, 1);
    assert_eq!(
        crate::source::postgres_tls(&def).map(|tls| tls.to_string()),
        Some("require (set in the URL: the server certificate is not verified)".to_owned())
    );
}

/// Review (issue 13): acexport's text for generated values against PostgreSQL's own.
#[tokio::test]
#[ignore = "needs PostgreSQL: set ACEXPORT_TEST_POSTGRES_URL"]
async fn generated_postgres_values_convert_exactly_as_the_servers_own_text() {
    let url = postgres_url();
    let query = r#"
        WITH n AS (
            SELECT round(((random() - 0.5) * 10 ^ (random() * 30)::int)::numeric
                         * 10::numeric ^ ((random() * 60)::int - 30),
                         (random() * 40)::int - 5) AS v
            FROM generate_series(1, 5000)
            UNION ALL SELECT x::numeric FROM unnest(ARRAY['NaN', 'Infinity', '-Infinity', '0',
                '-0', '0.0001', '10000', '1e-20', '1e20', '0.00010000', '-0.000', '9999.9999',
                '99999999', '1e-1000', '1e1000', '-1e100000', '1e-16383',
                '123456789012345678901234567890.123456789012345678901234567890']) AS x
        )
        SELECT v, v::text AS t FROM n"#;
    let items = read_all(&sql_def(query, &url), &["v", "t"]).await;
    let mut bad = Vec::new();
    for item in &items {
        match item {
            Ok(row) => {
                let v = values(row);
                if v[0] != v[1] {
                    bad.push(format!("ours {:?} server {:?}", v[0], v[1]));
                }
            }
            Err(e) => bad.push(format!("row error {e:?}")),
        }
    }
    assert!(items.len() > 5000);
    assert!(
        bad.is_empty(),
        "{} of {}: {:?}",
        bad.len(),
        items.len(),
        &bad[..bad.len().min(10)]
    );

    // Timestamps, dates and times: ISO text from to_char, fraction as 3 or 6 digits.
    let query = r#"
        WITH g AS (
            SELECT timestamp '0001-01-01' + random() * (timestamp '9999-12-31' - timestamp '0001-01-01') AS ts
            FROM generate_series(1, 3000)
            UNION ALL SELECT x::timestamp FROM unnest(ARRAY['1999-12-31 23:59:59.999999',
                '2000-01-01 00:00:00', '1970-01-01 00:00:00.001', '1900-02-28 12:00:00.5',
                '0001-01-01 00:00:00', '9999-12-31 23:59:59.999999']) AS x
        )
        SELECT ts, ts AT TIME ZONE 'UTC' AS tz, ts::date AS d, ts::time AS t,
               to_char(ts, 'YYYY-MM-DD"T"HH24:MI:SS') AS s, to_char(ts, 'US') AS us,
               to_char(ts, 'YYYY-MM-DD') AS ds
        FROM g"#;
    let items = read_all(
        &sql_def(query, &url),
        &["ts", "tz", "d", "t", "s", "us", "ds"],
    )
    .await;
    let mut bad = Vec::new();
    for item in &items {
        let row = item.as_ref().expect("row");
        let v = values(row);
        let us: u32 = v[5].expect("us").parse().expect("micros");
        let fraction = if us == 0 {
            String::new()
        } else if us.is_multiple_of(1000) {
            format!(".{:03}", us / 1000)
        } else {
            format!(".{us:06}")
        };
        let s = v[4].expect("s");
        let want_ts = format!("{s}{fraction}");
        let want = [
            want_ts.clone(),
            format!("{want_ts}Z"),
            v[6].expect("ds").to_owned(),
            want_ts[11..].to_owned(),
        ];
        for (i, w) in want.iter().enumerate() {
            if v[i] != Some(w.as_str()) {
                bad.push(format!("col {i}: ours {:?} want {w}", v[i]));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} bad: {:?}",
        bad.len(),
        &bad[..bad.len().min(10)]
    );
}

/// Review (issue 13): arrays with NULLs, empty strings and more than one dimension.
#[tokio::test]
#[ignore = "needs PostgreSQL: set ACEXPORT_TEST_POSTGRES_URL"]
async fn postgres_arrays_drop_nulls_and_empties_and_refuse_two_dimensions() {
    let url = postgres_url();
    let query = r#"SELECT * FROM (VALUES
        (1, ARRAY[NULL, 'a', '', NULL]::text[], ARRAY[1.50, NULL, -0.001]::numeric[], NULL::date[]),
        (2, '{{a,b},{c,d}}'::text[], '{}'::numeric[], ARRAY['2024-01-01'::date, NULL]),
        (3, '[0:1]={x,y}'::text[], ARRAY[NULL]::numeric[], '{}'::date[])
        ) AS v(id, t, n, d) ORDER BY id"#;
    let items = read_all(&sql_def(query, &url), &["t", "n", "d"]).await;
    let shown: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    assert_eq!(items.len(), 3, "{shown:#?}");
    assert_eq!(
        values(items[0].as_ref().expect("row 1")),
        [Some("||a||"), Some("||1.50||-0.001||"), None],
        "{shown:#?}"
    );
    let two_dims = items[1].as_ref().expect_err("2-d");
    assert!(two_dims.reason.contains("2-dimensional"), "{shown:#?}");
    assert_eq!(
        values(items[2].as_ref().expect("row 3")),
        [Some("||x||y||"), None, None],
        "{shown:#?}"
    );
}
