//! Segments: where an export's profiles come from.

use sqlx::Sqlite;
use sqlx::error::BoxDynError;
use sqlx::sqlite::{SqliteTypeInfo, SqliteValueRef};

use super::connections::Sealed;
use super::exports::{MappedColumn, columns_mapped_from_segment};
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
    /// Whom its file is read for (`source::FileReader`); `None`: the daemon itself.
    pub reader_uid: Option<i64>,
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
    /// Columns of the new source whose type cannot be exported: an update is refused while an
    /// export maps one, as it is for a column the source lacks.
    pub unexportable: &'a [String],
    pub row_count: u64,
    /// Whom its file is read for; `None`: the daemon itself.
    pub reader_uid: Option<u32>,
}

/// What became of a segment update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentUpdate {
    Saved,
    /// Columns that exports reading the segment map and the new source lacks or cannot
    /// export; nothing was saved.
    ColumnsInUse(Vec<MappedColumn>),
    /// The segment was removed meanwhile; nothing was saved.
    Gone,
}

impl Store {
    pub async fn segment(&self, name: &str) -> Result<Option<SegmentDef>, StoreError> {
        let name = self.stored_name("segments", name).await?;
        sqlx::query_as("SELECT * FROM segments WHERE name = ?")
            .bind(&name)
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
        if super::name_taken_in(&mut tx, "segments", s.name).await? {
            return Ok(None);
        }
        let now = now_text();
        let columns = serde_json::to_string(s.columns).unwrap_or_else(|_| "[]".to_owned());
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO segments (name, kind, path, delimiter, query, database_sealed, \
             database_env, database_shown, columns_json, column_types_json, row_count, \
             created_at, updated_at, reader_uid) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO NOTHING \
             RETURNING id",
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
        .bind(s.reader_uid)
        .fetch_optional(&mut *tx)
        .await
        .doing("saving a segment")?;
        if id.is_some() {
            super::audit(
                &mut tx,
                &self.actor,
                "segment.add",
                s.name,
                Some(s.kind.as_str()),
            )
            .await?;
        }
        tx.commit().await.doing("saving a segment")?;
        Ok(id)
    }

    /// Replaces segment `id`'s source, columns and row count (its name stays; `s.name` is for
    /// the audit entry). Refused, saving nothing, if an export reading the segment maps a
    /// column missing from `s.columns`: checked inside the write transaction, so an export
    /// saved meanwhile cannot slip a mapping past the check. Delivery state is not touched: it
    /// belongs to the exports, and a member whose mapped values are unchanged in the new
    /// source is still up to date in ActiveCampaign.
    pub async fn update_segment(
        &self,
        id: i64,
        s: NewSegment<'_>,
    ) -> Result<SegmentUpdate, StoreError> {
        let mut tx = self.write().await?;
        let old_kind: Option<SegmentKind> =
            sqlx::query_scalar("SELECT kind FROM segments WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .doing("updating a segment")?;
        let Some(old_kind) = old_kind else {
            return Ok(SegmentUpdate::Gone);
        };
        let missing: Vec<MappedColumn> = columns_mapped_from_segment(&mut tx, id)
            .await?
            .into_iter()
            .filter(|mapped| {
                !s.columns.contains(&mapped.column) || s.unexportable.contains(&mapped.column)
            })
            .collect();
        if !missing.is_empty() {
            // Dropping the transaction rolls it back; nothing was written yet anyway.
            return Ok(SegmentUpdate::ColumnsInUse(missing));
        }
        let columns = serde_json::to_string(s.columns).unwrap_or_else(|_| "[]".to_owned());
        sqlx::query(
            "UPDATE segments SET kind = ?, path = ?, delimiter = ?, query = ?, \
             database_sealed = ?, database_env = ?, database_shown = ?, columns_json = ?, \
             column_types_json = ?, row_count = ?, updated_at = ?, reader_uid = ? WHERE id = ?",
        )
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
        .bind(now_text())
        .bind(s.reader_uid)
        .bind(id)
        .execute(&mut *tx)
        .await
        .doing("updating a segment")?;
        // The kinds only, as for `segment.add`: the log is kept free of paths and queries.
        let detail = if old_kind == s.kind {
            s.kind.as_str().to_owned()
        } else {
            format!("{old_kind} -> {}", s.kind)
        };
        super::audit(
            &mut tx,
            &self.actor,
            "segment.update",
            s.name,
            Some(&detail),
        )
        .await?;
        tx.commit().await.doing("updating a segment")?;
        Ok(SegmentUpdate::Saved)
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
        super::audit(&mut tx, &self.actor, "segment.remove", name, None).await?;
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
                unexportable: &[],
                row_count: 2,
                reader_uid: None,
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

    /// The new source of segment `name`: a query with the given columns.
    fn new_source<'a>(name: &'a str, columns: &'a [String]) -> NewSegment<'a> {
        NewSegment {
            name,
            kind: SegmentKind::Sql,
            path: None,
            delimiter: None,
            query: Some("SELECT email, tier FROM members"),
            database_sealed: None,
            database_env: Some("CRM_DB"),
            database_shown: None,
            columns,
            column_types_json: None,
            unexportable: &[],
            row_count: 7,
            reader_uid: None,
        }
    }

    async fn audit_details(store: &Store, action: &str) -> Vec<Option<String>> {
        sqlx::query_scalar("SELECT detail FROM audit_log WHERE action = ? ORDER BY id")
            .bind(action)
            .fetch_all(store.pool())
            .await
            .expect("audit log")
    }

    #[tokio::test]
    async fn an_update_replaces_the_source_and_keeps_the_exports_delivery_state() {
        let (_dir, store, export_id) =
            crate::store::exports::tests::test_store_with_export("weekly").await;
        let segment = store
            .segment("weekly")
            .await
            .expect("read")
            .expect("exists");
        sqlx::query(
            "INSERT INTO delivery_state (export_id, email, hash, status, run_id) \
             VALUES (?, 'ada@example.com', x'00', 'delivered', 1)",
        )
        .bind(export_id)
        .execute(store.pool())
        .await
        .expect("delivery state");
        let columns = ["email".to_owned(), "tier".to_owned(), "city".to_owned()];

        let outcome = store
            .update_segment(segment.id, new_source("weekly", &columns))
            .await
            .expect("update");

        assert_eq!(outcome, SegmentUpdate::Saved);
        let saved = store
            .segment("weekly")
            .await
            .expect("read")
            .expect("exists");
        assert_eq!(saved.kind, SegmentKind::Sql);
        assert_eq!(saved.path, None);
        assert_eq!(
            saved.query.as_deref(),
            Some("SELECT email, tier FROM members")
        );
        assert_eq!(saved.columns, Columns(columns.to_vec()));
        assert_eq!(saved.row_count, 7);
        assert_eq!(saved.created_at, segment.created_at);
        let delivered: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM delivery_state WHERE export_id = ?")
                .bind(export_id)
                .fetch_one(store.pool())
                .await
                .expect("count");
        assert_eq!(delivered, 1);
        assert_eq!(
            audit_details(&store, "segment.update").await,
            [Some("csv -> sql".to_owned())]
        );
    }

    #[tokio::test]
    async fn an_update_losing_a_mapped_column_names_it_and_saves_nothing() {
        let (_dir, store, _export_id) =
            crate::store::exports::tests::test_store_with_export("weekly").await;
        let before = store
            .segment("weekly")
            .await
            .expect("read")
            .expect("exists");
        let columns = ["mail".to_owned(), "tier".to_owned()];

        let outcome = store
            .update_segment(before.id, new_source("weekly", &columns))
            .await
            .expect("update");

        assert_eq!(
            outcome,
            SegmentUpdate::ColumnsInUse(vec![MappedColumn {
                export: "weekly".to_owned(),
                role: crate::store::exports::ColumnRole::Email,
                column: "email".to_owned(),
            }])
        );
        let after = store
            .segment("weekly")
            .await
            .expect("read")
            .expect("exists");
        assert_eq!(format!("{after:?}"), format!("{before:?}"));
        assert!(audit_details(&store, "segment.update").await.is_empty());
    }

    #[tokio::test]
    async fn an_update_of_a_removed_segment_is_gone_and_saves_nothing() {
        let (_dir, store) = store().await;
        let id = insert(&store, "vips", SegmentKind::Csv).await;
        store.remove_segment(id, "vips").await.expect("remove");
        let columns = ["email".to_owned()];

        let outcome = store
            .update_segment(id, new_source("vips", &columns))
            .await
            .expect("update");

        assert_eq!(outcome, SegmentUpdate::Gone);
        assert!(store.segments().await.expect("list").is_empty());
        assert!(audit_details(&store, "segment.update").await.is_empty());
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
                unexportable: &[],
                row_count: 1,
                reader_uid: None,
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
