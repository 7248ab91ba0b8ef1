//! Segments: where an export's profiles come from.

use sqlx::Sqlite;
use sqlx::error::BoxDynError;
use sqlx::sqlite::{SqliteTypeInfo, SqliteValueRef};

use super::connections::Sealed;
use super::words::stored_words;
use super::{Doing, Store, StoreError, now_text};

stored_words! {
    /// Where a segment's profiles come from.
    pub enum SegmentKind ("segment kind") {
        /// A CSV file (`path`, `delimiter`).
        Csv = "csv",
        /// A JSON Lines file (`path`).
        Jsonl = "jsonl",
        /// A read-only query (`query`) against a database (`database_sealed` or
        /// `database_env`).
        Sql = "sql",
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SegmentDef {
    pub id: i64,
    pub name: String,
    pub kind: SegmentKind,
    pub path: Option<String>,
    pub delimiter: Option<i64>,
    pub query: Option<String>,
    pub database_sealed: Option<Sealed>,
    pub database_env: Option<String>,
    /// The database URL with its password masked, for display.
    pub database_shown: Option<String>,
    #[sqlx(rename = "columns_json")]
    pub columns: Columns,
    /// Each column's type and text rule as JSON, kept as written by the service; `None` for a
    /// segment saved before they were recorded.
    pub column_types_json: Option<String>,
    pub row_count: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// A segment's column names as read when it was added, stored as a JSON array. A stored value
/// that is not one is an error naming the column, not an empty list: an export checked against
/// no columns would be refused with a misleading "has no column".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Columns(pub Vec<String>);

impl sqlx::Type<Sqlite> for Columns {
    fn type_info() -> SqliteTypeInfo {
        <str as sqlx::Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <str as sqlx::Type<Sqlite>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Sqlite> for Columns {
    fn decode(value: SqliteValueRef<'r>) -> Result<Columns, BoxDynError> {
        let text = <&str as sqlx::Decode<Sqlite>>::decode(value)?;
        Ok(Columns(serde_json::from_str(text)?))
    }
}

#[derive(Debug)]
pub struct NewSegment<'a> {
    pub name: &'a str,
    pub kind: SegmentKind,
    pub path: Option<&'a str>,
    pub delimiter: Option<u8>,
    pub query: Option<&'a str>,
    pub database_sealed: Option<Sealed>,
    pub database_env: Option<&'a str>,
    pub database_shown: Option<&'a str>,
    pub columns: &'a [String],
    /// See [`SegmentDef::column_types_json`].
    pub column_types_json: Option<&'a str>,
    pub row_count: u64,
}

impl Store {
    pub async fn segment(&self, name: &str) -> Result<Option<SegmentDef>, StoreError> {
        sqlx::query_as("SELECT * FROM segments WHERE name = ?")
            .bind(name)
            .fetch_optional(self.pool())
            .await
            .doing("reading a segment")
    }

    pub async fn segments(&self) -> Result<Vec<SegmentDef>, StoreError> {
        sqlx::query_as("SELECT * FROM segments ORDER BY name")
            .fetch_all(self.pool())
            .await
            .doing("listing segments")
    }

    /// Inserts a segment; `None` if the name is taken.
    pub async fn insert_segment(&self, s: NewSegment<'_>) -> Result<Option<i64>, StoreError> {
        let mut tx = self.write().await?;
        let now = now_text();
        let columns = serde_json::to_string(s.columns).unwrap_or_else(|_| "[]".to_owned());
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO segments (name, kind, path, delimiter, query, database_sealed, \
             database_env, database_shown, columns_json, column_types_json, row_count, \
             created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO NOTHING RETURNING id",
        )
        .bind(s.name)
        .bind(s.kind)
        .bind(s.path)
        .bind(s.delimiter.map(i64::from))
        .bind(s.query)
        .bind(s.database_sealed)
        .bind(s.database_env)
        .bind(s.database_shown)
        .bind(columns)
        .bind(s.column_types_json)
        .bind(s.row_count as i64)
        .bind(&now)
        .bind(&now)
        .fetch_optional(&mut *tx)
        .await
        .doing("saving a segment")?;
        if id.is_some() {
            super::audit(&mut tx, "segment.add", s.name, Some(s.kind.as_str())).await?;
        }
        tx.commit().await.doing("saving a segment")?;
        Ok(id)
    }

    /// Names of the exports that read a segment.
    pub async fn exports_using_segment(&self, id: i64) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT DISTINCT e.name FROM exports e JOIN export_segments s ON s.export_id = e.id \
             WHERE s.segment_id = ? ORDER BY e.name",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await
        .doing("listing exports of a segment")
    }

    pub async fn remove_segment(&self, id: i64, name: &str) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM segments WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .doing("removing a segment")?;
        super::audit(&mut tx, "segment.remove", name, None).await?;
        tx.commit().await.doing("removing a segment")?;
        Ok(())
    }
}

#[cfg(test)]
pub(in crate::store) mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("acexport.db"))
            .await
            .expect("open");
        (dir, store)
    }

    /// A segment with columns `email` and `tier`.
    pub(in crate::store) async fn insert(store: &Store, name: &str, kind: SegmentKind) -> i64 {
        let columns = ["email".to_owned(), "tier".to_owned()];
        store
            .insert_segment(NewSegment {
                name,
                kind,
                path: Some("/data/members.csv"),
                delimiter: None,
                query: None,
                database_sealed: None,
                database_env: None,
                database_shown: None,
                columns: &columns,
                column_types_json: None,
                row_count: 2,
            })
            .await
            .expect("insert")
            .expect("new name")
    }

    async fn set(store: &Store, id: i64, column: &str, value: &str) {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE segments SET {column} = ? WHERE id = ?"
        )))
        .bind(value)
        .bind(id)
        .execute(store.pool())
        .await
        .expect("update");
    }

    #[tokio::test]
    async fn every_segment_kind_round_trips_through_the_store_as_its_lowercase_name() {
        let (_dir, store) = store().await;
        for kind in [SegmentKind::Csv, SegmentKind::Jsonl, SegmentKind::Sql] {
            let id = insert(&store, kind.as_str(), kind).await;

            let saved = store.segment(kind.as_str()).await.expect("read");

            let saved = saved.expect("exists");
            assert_eq!(saved.kind, kind);
            assert_eq!(saved.columns, Columns(vec!["email".into(), "tier".into()]));
            let text: String = sqlx::query_scalar("SELECT kind FROM segments WHERE id = ?")
                .bind(id)
                .fetch_one(store.pool())
                .await
                .expect("kind");
            assert_eq!(text, kind.to_string());
            assert_eq!(serde_json::to_value(kind).expect("json"), kind.as_str());
        }
    }

    #[tokio::test]
    async fn column_types_are_kept_as_the_service_wrote_them() {
        let (_dir, store) = store().await;
        let columns = ["email".to_owned()];
        let types = r#"[{"name":"TEXT","conversion":{"rule":"text"}}]"#;
        store
            .insert_segment(NewSegment {
                name: "typed",
                kind: SegmentKind::Sql,
                path: None,
                delimiter: None,
                query: Some("SELECT email FROM people"),
                database_sealed: None,
                database_env: Some("CRM_DB"),
                database_shown: None,
                columns: &columns,
                column_types_json: Some(types),
                row_count: 1,
            })
            .await
            .expect("insert")
            .expect("new name");

        let saved = store.segment("typed").await.expect("read").expect("exists");

        assert_eq!(saved.column_types_json.as_deref(), Some(types));
    }

    #[tokio::test]
    async fn an_unknown_stored_kind_is_an_error_naming_the_column() {
        let (_dir, store) = store().await;
        let id = insert(&store, "vips", SegmentKind::Csv).await;
        set(&store, id, "kind", "xlsx").await;

        let err = store.segment("vips").await.expect_err("unknown kind");

        let text = err.to_string();
        assert!(text.contains("\"kind\""), "{text}");
        assert!(text.contains("xlsx"), "{text}");
    }

    #[tokio::test]
    async fn stored_columns_that_are_not_a_json_list_are_an_error_naming_the_column() {
        let (_dir, store) = store().await;
        let id = insert(&store, "vips", SegmentKind::Csv).await;
        set(&store, id, "columns_json", "email,tier").await;

        let err = store.segments().await.expect_err("not JSON");

        assert!(err.to_string().contains("\"columns_json\""), "{err}");
    }
}
