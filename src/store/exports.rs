//! Export definitions: which segments go to which list of which connection, with the data
//! matching (segment column for each ActiveCampaign field).

use serde::Serialize;
use sqlx::{Row, Sqlite, SqliteConnection, Transaction};

use super::words::stored_words;
use super::{Doing, Store, StoreError, now_text};

stored_words! {
    /// What happens to list members who left every segment of the export.
    pub enum OnLeave ("on-leave choice") {
        /// Leave them on the list and forget them (Customer Insights' behaviour).
        Keep = "keep",
        /// Unsubscribe them from the list.
        Unsubscribe = "unsubscribe",
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentRef {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FieldMapping {
    pub field_id: i64,
    pub column: String,
}

/// An export with everything it refers to.
#[derive(Debug, Clone, Serialize)]
pub struct ExportDef {
    pub id: i64,
    pub name: String,
    pub connection_id: i64,
    pub connection: String,
    pub list_id: i64,
    pub list_name: String,
    pub email_column: String,
    pub first_name_column: Option<String>,
    pub last_name_column: Option<String>,
    pub phone_column: Option<String>,
    pub fields: Vec<FieldMapping>,
    pub tags: Vec<String>,
    pub segments: Vec<SegmentRef>,
    pub on_leave: OnLeave,
    pub schedule: Option<String>,
    /// The IANA time zone the schedule is read in; `None` follows `schedule.timezone`.
    pub timezone: Option<String>,
    pub enabled: bool,
    pub created_at: String,
    pub updated_at: String,
}

/// A definition to save (add or update); ids are already resolved and checked.
#[derive(Debug, Clone)]
pub struct ExportSpec {
    pub name: String,
    pub connection_id: i64,
    pub list_id: i64,
    pub list_name: String,
    pub email_column: String,
    pub first_name_column: Option<String>,
    pub last_name_column: Option<String>,
    pub phone_column: Option<String>,
    pub fields: Vec<FieldMapping>,
    pub tags: Vec<String>,
    pub segment_ids: Vec<i64>,
    pub on_leave: OnLeave,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub enabled: bool,
}

/// What an export fills from a segment column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnRole {
    Email,
    FirstName,
    LastName,
    Phone,
    /// An ActiveCampaign custom field, by id.
    Field(i64),
}

/// A segment column an export maps, and what it fills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedColumn {
    pub export: String,
    pub role: ColumnRole,
    pub column: String,
}

/// Every column mapped by the exports that read a segment, by export name, then in the order
/// email, first name, last name, phone, custom fields by id. The rank column (0 to 4) gives
/// that order and says which role the row is.
const SELECT_COLUMNS_MAPPED_FROM_SEGMENT: &str = "\
    WITH users AS (SELECT DISTINCT export_id AS id FROM export_segments WHERE segment_id = ?1) \
    SELECT e.name, 0 AS rank, NULL AS field_id, e.email_column AS column \
      FROM exports e JOIN users USING (id) \
    UNION ALL SELECT e.name, 1, NULL, e.first_name_column FROM exports e JOIN users USING (id) \
      WHERE e.first_name_column IS NOT NULL \
    UNION ALL SELECT e.name, 2, NULL, e.last_name_column FROM exports e JOIN users USING (id) \
      WHERE e.last_name_column IS NOT NULL \
    UNION ALL SELECT e.name, 3, NULL, e.phone_column FROM exports e JOIN users USING (id) \
      WHERE e.phone_column IS NOT NULL \
    UNION ALL SELECT e.name, 4, f.field_id, f.column FROM exports e JOIN users USING (id) \
      JOIN export_fields f ON f.export_id = e.id \
    ORDER BY 1, 2, 3";

/// The columns the exports reading segment `segment_id` map, read on `conn` so a writer can
/// check them in the transaction that changes the segment.
pub(super) async fn columns_mapped_from_segment(
    conn: &mut SqliteConnection,
    segment_id: i64,
) -> Result<Vec<MappedColumn>, StoreError> {
    let rows = sqlx::query(SELECT_COLUMNS_MAPPED_FROM_SEGMENT)
        .bind(segment_id)
        .fetch_all(conn)
        .await
        .doing("reading the columns exports map from a segment")?;
    Ok(rows
        .iter()
        .map(|row| {
            let role = match row.get::<i64, _>(1) {
                0 => ColumnRole::Email,
                1 => ColumnRole::FirstName,
                2 => ColumnRole::LastName,
                3 => ColumnRole::Phone,
                _ => ColumnRole::Field(row.get(2)),
            };
            MappedColumn {
                export: row.get(0),
                role,
                column: row.get(3),
            }
        })
        .collect())
}

const SELECT_EXPORT: &str = "SELECT e.*, c.name AS connection FROM exports e \
     JOIN connections c ON c.id = e.connection_id";

impl Store {
    pub async fn export(&self, name: &str) -> Result<Option<ExportDef>, StoreError> {
        let name = self.stored_name("exports", name).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_EXPORT} WHERE e.name = ?"
        )))
        .bind(&name)
        .fetch_optional(self.pool())
        .await
        .doing("reading an export")?;
        match row {
            Some(row) => Ok(Some(self.complete_export(row).await?)),
            None => Ok(None),
        }
    }

    pub async fn export_by_id(&self, id: i64) -> Result<Option<ExportDef>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_EXPORT} WHERE e.id = ?"
        )))
        .bind(id)
        .fetch_optional(self.pool())
        .await
        .doing("reading an export")?;
        match row {
            Some(row) => Ok(Some(self.complete_export(row).await?)),
            None => Ok(None),
        }
    }

    pub async fn exports(&self) -> Result<Vec<ExportDef>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_EXPORT} ORDER BY e.name"
        )))
        .fetch_all(self.pool())
        .await
        .doing("listing exports")?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.complete_export(row).await?);
        }
        Ok(out)
    }

    async fn complete_export(&self, row: sqlx::sqlite::SqliteRow) -> Result<ExportDef, StoreError> {
        let id: i64 = row.get("id");
        let segments = sqlx::query(
            "SELECT s.id, s.name FROM export_segments es JOIN segments s ON s.id = es.segment_id \
             WHERE es.export_id = ? ORDER BY es.position",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await
        .doing("reading an export's segments")?
        .iter()
        .map(|r| SegmentRef {
            id: r.get(0),
            name: r.get(1),
        })
        .collect();
        let fields = sqlx::query(
            "SELECT field_id, column FROM export_fields WHERE export_id = ? ORDER BY field_id",
        )
        .bind(id)
        .fetch_all(self.pool())
        .await
        .doing("reading an export's fields")?
        .iter()
        .map(|r| FieldMapping {
            field_id: r.get(0),
            column: r.get(1),
        })
        .collect();
        let tags =
            sqlx::query_scalar("SELECT tag FROM export_tags WHERE export_id = ? ORDER BY tag")
                .bind(id)
                .fetch_all(self.pool())
                .await
                .doing("reading an export's tags")?;
        // An unknown value is an error naming the column, not a guess: `keep` would silently
        // stop unsubscribing leavers.
        let on_leave: OnLeave = row.try_get("on_leave").doing("reading an export")?;
        Ok(ExportDef {
            id,
            name: row.get("name"),
            connection_id: row.get("connection_id"),
            connection: row.get("connection"),
            list_id: row.get("list_id"),
            list_name: row.get("list_name"),
            email_column: row.get("email_column"),
            first_name_column: row.get("first_name_column"),
            last_name_column: row.get("last_name_column"),
            phone_column: row.get("phone_column"),
            fields,
            tags,
            segments,
            on_leave,
            schedule: row.get("schedule"),
            timezone: row.get("timezone"),
            enabled: row.get("enabled"),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
        })
    }

    /// Saves a new export with all its parts in one transaction; `None` if the name is taken.
    pub async fn insert_export(&self, spec: &ExportSpec) -> Result<Option<i64>, StoreError> {
        let mut tx = self.write().await?;
        if super::name_taken_in(&mut tx, "exports", &spec.name).await? {
            return Ok(None);
        }
        let now = now_text();
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO exports (name, connection_id, list_id, list_name, email_column, \
             first_name_column, last_name_column, phone_column, on_leave, schedule, timezone, \
             enabled, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT(name) DO NOTHING RETURNING id",
        )
        .bind(&spec.name)
        .bind(spec.connection_id)
        .bind(spec.list_id)
        .bind(&spec.list_name)
        .bind(&spec.email_column)
        .bind(&spec.first_name_column)
        .bind(&spec.last_name_column)
        .bind(&spec.phone_column)
        .bind(spec.on_leave)
        .bind(&spec.schedule)
        .bind(&spec.timezone)
        .bind(spec.enabled)
        .bind(&now)
        .bind(&now)
        .fetch_optional(&mut *tx)
        .await
        .doing("saving an export")?;
        let Some(id) = id else {
            return Ok(None);
        };
        write_export_parts(&mut tx, id, spec).await?;
        super::audit(&mut tx, &self.actor, "export.add", &spec.name, None).await?;
        tx.commit().await.doing("saving an export")?;
        Ok(Some(id))
    }

    /// Replaces an export's definition. The delivery state is kept, unless the destination
    /// changed (another connection or list): what was delivered there says nothing about the
    /// new one, so the state is purged and the next run sends every member. Returns whether it
    /// was purged.
    pub async fn update_export(&self, id: i64, spec: &ExportSpec) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let (connection_id, list_id): (i64, i64) =
            sqlx::query_as("SELECT connection_id, list_id FROM exports WHERE id = ?")
                .bind(id)
                .fetch_one(&mut *tx)
                .await
                .doing("updating an export")?;
        let moved = connection_id != spec.connection_id || list_id != spec.list_id;
        if moved {
            sqlx::query("DELETE FROM delivery_state WHERE export_id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await
                .doing("resetting an export's delivery state")?;
        }
        sqlx::query(
            "UPDATE exports SET connection_id = ?, list_id = ?, list_name = ?, email_column = ?, \
             first_name_column = ?, last_name_column = ?, phone_column = ?, on_leave = ?, \
             schedule = ?, timezone = ?, enabled = ?, updated_at = ? WHERE id = ?",
        )
        .bind(spec.connection_id)
        .bind(spec.list_id)
        .bind(&spec.list_name)
        .bind(&spec.email_column)
        .bind(&spec.first_name_column)
        .bind(&spec.last_name_column)
        .bind(&spec.phone_column)
        .bind(spec.on_leave)
        .bind(&spec.schedule)
        .bind(&spec.timezone)
        .bind(spec.enabled)
        .bind(now_text())
        .bind(id)
        .execute(&mut *tx)
        .await
        .doing("updating an export")?;
        for table in ["export_segments", "export_fields", "export_tags"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE export_id = ?"
            )))
            .bind(id)
            .execute(&mut *tx)
            .await
            .doing("updating an export")?;
        }
        write_export_parts(&mut tx, id, spec).await?;
        let detail = moved.then_some("destination changed; delivery state reset");
        super::audit(&mut tx, &self.actor, "export.update", &spec.name, detail).await?;
        tx.commit().await.doing("updating an export")?;
        if moved {
            self.empty_wal().await;
        }
        Ok(moved)
    }

    pub async fn set_export_enabled(
        &self,
        id: i64,
        name: &str,
        enabled: bool,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE exports SET enabled = ?, updated_at = ? WHERE id = ?")
            .bind(enabled)
            .bind(now_text())
            .bind(id)
            .execute(&mut *tx)
            .await
            .doing("enabling or disabling an export")?;
        let action = if enabled {
            "export.enable"
        } else {
            "export.disable"
        };
        super::audit(&mut tx, &self.actor, action, name, None).await?;
        tx.commit().await.doing("enabling or disabling an export")?;
        Ok(())
    }

    /// Removes an export with its delivery state, history and queue entries (cascades), leaving
    /// no copy of them in the database's files (`secure_delete`, then the log emptied).
    pub async fn remove_export(&self, id: i64, name: &str) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM exports WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .doing("removing an export")?;
        super::audit(
            &mut tx,
            &self.actor,
            "export.remove",
            name,
            Some("delivery state purged"),
        )
        .await?;
        tx.commit().await.doing("removing an export")?;
        self.empty_wal().await;
        Ok(())
    }
}

async fn write_export_parts(
    tx: &mut Transaction<'static, Sqlite>,
    id: i64,
    spec: &ExportSpec,
) -> Result<(), StoreError> {
    for (position, segment_id) in spec.segment_ids.iter().enumerate() {
        sqlx::query(
            "INSERT INTO export_segments (export_id, position, segment_id) VALUES (?, ?, ?)",
        )
        .bind(id)
        .bind(position as i64)
        .bind(segment_id)
        .execute(&mut **tx)
        .await
        .doing("saving an export's segments")?;
    }
    for field in &spec.fields {
        sqlx::query("INSERT INTO export_fields (export_id, field_id, column) VALUES (?, ?, ?)")
            .bind(id)
            .bind(field.field_id)
            .bind(&field.column)
            .execute(&mut **tx)
            .await
            .doing("saving an export's fields")?;
    }
    for tag in &spec.tags {
        sqlx::query("INSERT OR IGNORE INTO export_tags (export_id, tag) VALUES (?, ?)")
            .bind(id)
            .bind(tag)
            .execute(&mut **tx)
            .await
            .doing("saving an export's tags")?;
    }
    Ok(())
}

#[cfg(test)]
pub(in crate::store) mod tests {
    use super::*;
    use crate::store::connections::tests::store_with_connection;
    use crate::store::segments::SegmentKind;

    pub(in crate::store) async fn insert(
        store: &Store,
        connection_id: i64,
        name: &str,
        on_leave: OnLeave,
    ) -> i64 {
        let segment_id = crate::store::segments::tests::insert(store, name, SegmentKind::Csv).await;
        store
            .insert_export(&ExportSpec {
                name: name.to_owned(),
                connection_id,
                list_id: 1,
                list_name: "Newsletter".to_owned(),
                email_column: "email".to_owned(),
                first_name_column: None,
                last_name_column: None,
                phone_column: None,
                fields: Vec::new(),
                tags: Vec::new(),
                segment_ids: vec![segment_id],
                on_leave,
                schedule: None,
                timezone: None,
                enabled: true,
            })
            .await
            .expect("export")
            .expect("new export")
    }

    #[tokio::test]
    async fn both_on_leave_choices_round_trip_through_the_store_as_their_lowercase_names() {
        let (_dir, store, connection_id) = store_with_connection().await;
        for on_leave in [OnLeave::Keep, OnLeave::Unsubscribe] {
            let id = insert(&store, connection_id, on_leave.as_str(), on_leave).await;

            let saved = store.export_by_id(id).await.expect("read").expect("exists");

            assert_eq!(saved.on_leave, on_leave);
            let text: String = sqlx::query_scalar("SELECT on_leave FROM exports WHERE id = ?")
                .bind(id)
                .fetch_one(store.pool())
                .await
                .expect("on_leave");
            assert_eq!(text, on_leave.to_string());
            assert_eq!(
                serde_json::to_value(on_leave).expect("json"),
                on_leave.as_str()
            );
        }
    }

    #[tokio::test]
    async fn an_unknown_stored_on_leave_is_an_error_naming_the_column_not_keep() {
        let (_dir, store, connection_id) = store_with_connection().await;
        let id = insert(&store, connection_id, "weekly", OnLeave::Unsubscribe).await;
        sqlx::query("UPDATE exports SET on_leave = 'delete' WHERE id = ?")
            .bind(id)
            .execute(store.pool())
            .await
            .expect("update");

        let err = store.export("weekly").await.expect_err("unknown on_leave");

        let text = err.to_string();
        assert!(text.contains("\"on_leave\""), "{text}");
        assert!(text.contains("delete"), "{text}");
    }

    #[tokio::test]
    async fn the_columns_mapped_from_a_segment_are_every_role_of_every_export_reading_it() {
        let (_dir, store, connection_id) = store_with_connection().await;
        let members =
            crate::store::segments::tests::insert(&store, "members", SegmentKind::Csv).await;
        let other = crate::store::segments::tests::insert(&store, "other", SegmentKind::Csv).await;
        let spec = |name: &str, segment_ids: Vec<i64>| ExportSpec {
            name: name.to_owned(),
            connection_id,
            list_id: 1,
            list_name: "Newsletter".to_owned(),
            email_column: "email".to_owned(),
            first_name_column: Some("first".to_owned()),
            last_name_column: None,
            phone_column: Some("mobile".to_owned()),
            fields: vec![
                FieldMapping {
                    field_id: 12,
                    column: "tier".to_owned(),
                },
                FieldMapping {
                    field_id: 3,
                    column: "city".to_owned(),
                },
            ],
            tags: Vec::new(),
            segment_ids,
            on_leave: OnLeave::Keep,
            schedule: None,
            timezone: None,
            enabled: true,
        };
        for export in [
            spec("weekly", vec![other, members]),
            spec("daily", vec![members]),
            spec("unrelated", vec![other]),
        ] {
            store.insert_export(&export).await.expect("export");
        }
        let mut conn = store.pool().acquire().await.expect("connection");

        let mapped = columns_mapped_from_segment(&mut conn, members)
            .await
            .expect("read");

        let seen: Vec<(&str, ColumnRole, &str)> = mapped
            .iter()
            .map(|m| (m.export.as_str(), m.role, m.column.as_str()))
            .collect();
        let one_export = |name| {
            [
                (name, ColumnRole::Email, "email"),
                (name, ColumnRole::FirstName, "first"),
                (name, ColumnRole::Phone, "mobile"),
                (name, ColumnRole::Field(3), "city"),
                (name, ColumnRole::Field(12), "tier"),
            ]
        };
        assert_eq!(seen, [one_export("daily"), one_export("weekly")].concat());
    }

    #[tokio::test]
    async fn an_exports_time_zone_is_saved_updated_and_dropped() {
        let (_dir, store, id) = test_store_with_export("weekly").await;
        let saved = store.export_by_id(id).await.expect("read").expect("exists");
        assert_eq!(saved.timezone, None, "follows the settings by default");
        let spec = |timezone: Option<&str>| ExportSpec {
            name: "weekly".to_owned(),
            connection_id: saved.connection_id,
            list_id: saved.list_id,
            list_name: saved.list_name.clone(),
            email_column: saved.email_column.clone(),
            first_name_column: None,
            last_name_column: None,
            phone_column: None,
            fields: Vec::new(),
            tags: Vec::new(),
            segment_ids: saved.segments.iter().map(|s| s.id).collect(),
            on_leave: OnLeave::Keep,
            schedule: Some("30 6 * * *".to_owned()),
            timezone: timezone.map(str::to_owned),
            enabled: true,
        };

        store
            .update_export(id, &spec(Some("Europe/Berlin")))
            .await
            .expect("update");
        let berlin = store.export_by_id(id).await.expect("read").expect("exists");
        let candidates = store.schedule_candidates().await.expect("candidates");
        store.update_export(id, &spec(None)).await.expect("update");
        let dropped = store.export_by_id(id).await.expect("read").expect("exists");

        assert_eq!(berlin.timezone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(candidates[0].timezone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(dropped.timezone, None);
    }

    /// A store with one connection and one export; returns the export's id.
    pub(in crate::store) async fn test_store_with_export(
        name: &str,
    ) -> (tempfile::TempDir, Store, i64) {
        let (dir, store, connection_id) = store_with_connection().await;
        let id = insert(&store, connection_id, name, OnLeave::Keep).await;
        (dir, store, id)
    }
}
