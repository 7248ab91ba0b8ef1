//! Issue 10, finding 8, as the attack: a segment query that would write next to the user's
//! database (`VACUUM INTO` a copy of it, `ATTACH` a new file and create a table in it) is
//! refused when the segment is added, previewed or run, and the file is never created. And the
//! TLS mode a PostgreSQL source is read with is shown with where it comes from (the rule
//! itself, verify-full off loopback, is a table test in `src/source/sql/tls.rs`: a test never
//! connects off loopback).

use std::path::Path;

use crate::cli_segment::sqlite_database;
use crate::support::{OutputExt, TestEnv, export_add_args};

/// Adds segment `members` over `query` on `url`.
async fn add_sql_segment(env: &TestEnv, query: &str, url: &str) -> std::process::Output {
    env.run(&[
        "segment",
        "add",
        "members",
        "--sql",
        query,
        "--database",
        url,
    ])
    .await
}

/// Rewrites segment `members`'s stored query, as a store written before the check holds it.
async fn store_query(env: &TestEnv, query: &str) {
    let pool = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new().filename(env.store_path()),
    )
    .await
    .expect("open the store");
    sqlx::query("UPDATE segments SET query = ? WHERE name = 'members'")
        .bind(query)
        .execute(&pool)
        .await
        .expect("rewrite the stored query");
    pool.close().await;
}

fn assert_absent(path: &Path) {
    assert!(!path.exists(), "{} was created", path.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn segment_add_refuses_vacuum_into_and_creates_no_copy_of_the_database() {
    let env = TestEnv::new().await;
    let url = sqlite_database(&env).await;
    let copy = env.path("stolen.db");

    let out = add_sql_segment(&env, &format!("VACUUM INTO '{}'", copy.display()), &url).await;

    out.assert_fails_with(1, "the segment query on sqlite:");
    out.assert_fails_with(
        1,
        "starts with `VACUUM`: a segment query is a single SELECT",
    );
    assert_absent(&copy);
    assert_eq!(env.list_json("segment").await.len(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn segment_add_refuses_attach_and_a_table_created_in_the_attached_file() {
    let env = TestEnv::new().await;
    let url = sqlite_database(&env).await;
    let attached = env.path("attached.db");
    let query = format!(
        "ATTACH DATABASE '{}' AS y; CREATE TABLE y.stolen AS SELECT * FROM members",
        attached.display()
    );

    let out = add_sql_segment(&env, &query, &url).await;

    out.assert_fails_with(1, "starts with `ATTACH`");
    assert_absent(&attached);
}

#[tokio::test(flavor = "multi_thread")]
async fn segment_add_refuses_a_select_followed_by_vacuum_into() {
    let env = TestEnv::new().await;
    let url = sqlite_database(&env).await;
    let copy = env.path("stolen.db");
    let query = format!(
        "SELECT email FROM members; VACUUM INTO '{}'",
        copy.display()
    );

    let out = add_sql_segment(&env, &query, &url).await;

    out.assert_fails_with(1, "holds a second statement (line 1)");
    assert_absent(&copy);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_vacuum_into_query_is_refused_at_preview_and_at_run_time() {
    let env = TestEnv::new().await;
    let url = sqlite_database(&env).await;
    env.add_connection("crm").await;
    add_sql_segment(&env, "SELECT email, first_name FROM members", &url)
        .await
        .assert_ok();
    env.run(&export_add_args(&[])).await.assert_ok();
    let copy = env.path("stolen.db");
    store_query(&env, &format!("VACUUM INTO '{}'", copy.display())).await;

    let preview = env.run(&["segment", "preview", "members"]).await;
    let run = env.run(&["export", "run", "weekly"]).await;

    preview.assert_fails_with(1, "starts with `VACUUM`");
    assert_eq!(run.code(), Some(1), "{}", run.stderr_text());
    let said = format!("{}{}", run.stdout_text(), run.stderr_text());
    assert!(said.contains("starts with `VACUUM`"), "{said}");
    assert_absent(&copy);
    assert_eq!(env.requests_to("bulk_import"), 0);
}

/// The PostgreSQL URL for tests; panics when unset, so an ignored test run by hand cannot pass
/// by doing nothing.
fn postgres_url() -> String {
    std::env::var("ACEXPORT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| panic!("needs PostgreSQL: set ACEXPORT_TEST_POSTGRES_URL"))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs PostgreSQL: set ACEXPORT_TEST_POSTGRES_URL"]
async fn segment_add_and_show_name_the_tls_mode_of_a_postgres_source_and_where_it_comes_from() {
    let env = TestEnv::new().await;
    let url = postgres_url();
    let opted_out = format!(
        "{url}{}sslmode=require",
        if url.contains('?') { '&' } else { '?' }
    );
    let query = "SELECT 'ada@example.com' AS email";

    let default = env
        .run(&[
            "segment",
            "add",
            "local",
            "--sql",
            query,
            "--database",
            &url,
        ])
        .await;
    let explicit = env
        .run(&[
            "segment",
            "add",
            "required",
            "--sql",
            query,
            "--database",
            &opted_out,
        ])
        .await;

    default.assert_ok();
    explicit.assert_ok();
    assert!(
        default
            .stdout_text()
            .contains("TLS:     prefer (default on loopback)"),
        "{}",
        default.stdout_text()
    );
    let shown = env.show_json("segment", "required").await;
    assert_eq!(
        shown["tls"],
        "require (set in the URL: the server certificate is not verified)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sqlite_segment_shows_no_tls_line() {
    let env = TestEnv::new().await;
    let url = sqlite_database(&env).await;
    add_sql_segment(&env, "SELECT email FROM members", &url)
        .await
        .assert_ok();

    let out = env.run(&["segment", "show", "members"]).await;

    out.assert_ok();
    assert!(!out.stdout_text().contains("TLS"), "{}", out.stdout_text());
    assert!(
        env.show_json("segment", "members")
            .await
            .get("tls")
            .is_none()
    );
}
