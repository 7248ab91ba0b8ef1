//! Delivery state and a run's work tables. Per export, the store keeps only what "send only
//! what changed" needs: the normalised email, a keyed hash of the mapped values, a status and
//! the run that wrote it, never the raw row.
//!
//! A run plans on a connection of its own ([`WorkTables`]) whose temporary tables hold the
//! chunk being staged, the members seen, the leavers and the outbox. They vanish with the
//! connection (and with the process on a crash), so the profile values they hold live no
//! longer than the run. Every statement works on a whole chunk inside SQLite, so no set of
//! emails or hashes is held in memory, whatever the segment size.

use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::words::stored_words;
use super::{Doing, RunCounts, RunIssue, Store, StoreError};

/// Members staged per statement: a whole chunk of the pipeline (2,048 rows, 3 values each)
/// in one statement, far below SQLite's 32,766 variables.
const STAGE_ROWS_PER_STATEMENT: usize = 4096;
/// Delivery-state rows written per statement (5 values each).
const STATE_ROWS_PER_STATEMENT: usize = 500;

stored_words! {
    /// What the delivery state says of a member.
    pub enum DeliveryStatus ("delivery status") {
        /// Confirmed by ActiveCampaign with these values.
        Delivered = "delivered",
        /// Sent but not imported: sent again by the next run.
        Failed = "failed",
    }
}

stored_words! {
    /// Why a member is in the outbox.
    pub enum OutboxKind ("outbox kind") {
        New = "new",
        Changed = "changed",
        /// Left every segment; unsubscribed from the list (on-leave `unsubscribe`).
        Leave = "leave",
    }
}

/// A mapped member to stage, borrowed from the matching's output.
#[derive(Clone, Copy)]
pub struct Staged<'a> {
    /// Lower-cased email: the identity key.
    pub email: &'a str,
    pub hash: &'a [u8],
    /// The contact as bulk-import JSON.
    pub payload: &'a str,
}

/// One outbox entry. Its `Debug` shows neither the address nor the payload: both are profile
/// data.
pub struct OutboxItem {
    pub email: String,
    pub hash: Vec<u8>,
    pub kind: OutboxKind,
    pub payload: String,
}

impl std::fmt::Debug for OutboxItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxItem")
            .field("kind", &self.kind)
            .field("payload_bytes", &self.payload.len())
            .finish_non_exhaustive()
    }
}

/// What staging one chunk found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StagedChunk {
    /// Members already seen in earlier chunks or segments.
    pub seen_before: u64,
    /// Members seen for the first time in this run.
    pub fresh: u64,
    /// Of the fresh ones, those that went to the outbox (new or changed).
    pub planned: u64,
}

/// Confirmed imports to record in one transaction (the group commit).
#[derive(Default)]
pub struct Confirmed<'a> {
    pub delivered: &'a [OutboxItem],
    pub failed: &'a [OutboxItem],
    /// Members unsubscribed on leave: their state is removed.
    pub left: &'a [OutboxItem],
    pub issues: &'a [RunIssue],
    /// Imports ActiveCampaign accepted since the last commit whose outcome is not known yet.
    pub accepted: &'a [AcceptedImport],
    /// Batch ids of recorded accepted imports whose outcome is known now: their records go.
    pub resolved: &'a [String],
}

/// An import ActiveCampaign accepted (queued), with what the delivery state needs of its
/// members (their payloads are emptied: ActiveCampaign has them).
pub struct AcceptedImport {
    pub batch_id: String,
    /// The account (the client's host) and list it went to.
    pub host: String,
    pub list_id: i64,
    pub items: Vec<OutboxItem>,
}

impl std::fmt::Debug for AcceptedImport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcceptedImport")
            .field("batch_id", &self.batch_id)
            .field("members", &self.items.len())
            .finish_non_exhaustive()
    }
}

/// A run's private work tables, on a connection of its own.
pub struct WorkTables {
    conn: SqliteConnection,
}

impl WorkTables {
    /// Opens the run's connection and creates empty work tables.
    pub async fn create(store: &Store) -> Result<WorkTables, StoreError> {
        let mut conn = store.dedicated_connection().await?;
        for sql in [
            "DROP TABLE IF EXISTS temp.seen",
            "DROP TABLE IF EXISTS temp.outbox",
            "DROP TABLE IF EXISTS temp.stage",
            "DROP TABLE IF EXISTS temp.leavers",
            "CREATE TEMP TABLE seen (email TEXT PRIMARY KEY) WITHOUT ROWID",
            // Members delivered earlier who are in no segment now, found once per run.
            "CREATE TEMP TABLE leavers (email TEXT PRIMARY KEY, hash BLOB NOT NULL, \
             delivered INTEGER NOT NULL) WITHOUT ROWID",
            // One chunk of mapped members at a time, in source order.
            "CREATE TEMP TABLE stage (email TEXT NOT NULL, hash BLOB NOT NULL, payload TEXT NOT NULL)",
            "CREATE TEMP TABLE outbox (seq INTEGER PRIMARY KEY, email TEXT NOT NULL, \
             hash BLOB NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL)",
        ] {
            sqlx::query(sql)
                .execute(&mut conn)
                .await
                .doing("preparing a run's work tables")?;
        }
        Ok(WorkTables { conn })
    }

    /// Starts the planning transaction: the work tables are written without a commit per
    /// statement, and the delivery state is read from one snapshot.
    pub async fn begin(&mut self) -> Result<(), StoreError> {
        self.exec("BEGIN", "planning deliveries").await
    }

    pub async fn commit(&mut self) -> Result<(), StoreError> {
        self.exec("COMMIT", "planning deliveries").await
    }

    pub async fn rollback(&mut self) {
        let _ = self.exec("ROLLBACK", "planning deliveries").await;
    }

    async fn exec(&mut self, sql: &'static str, doing: &'static str) -> Result<(), StoreError> {
        sqlx::query(sql)
            .execute(&mut self.conn)
            .await
            .doing(doing)?;
        Ok(())
    }

    /// Stages a chunk of members unique within it (first occurrence kept by the caller), drops
    /// those seen in earlier chunks or segments, marks the rest seen, and puts those whose
    /// delivery state differs in the outbox. With `full_floor`, state written by runs before
    /// that run id counts as not yet sent (`--full`).
    pub async fn stage_chunk(
        &mut self,
        export_id: i64,
        full_floor: Option<i64>,
        members: &[Staged<'_>],
    ) -> Result<StagedChunk, StoreError> {
        if members.is_empty() {
            return Ok(StagedChunk::default());
        }
        let conn = &mut self.conn;
        for chunk in members.chunks(STAGE_ROWS_PER_STATEMENT) {
            let mut insert: QueryBuilder<Sqlite> =
                QueryBuilder::new("INSERT INTO temp.stage (email, hash, payload) ");
            insert.push_values(chunk, |mut row, m| {
                row.push_bind(m.email)
                    .push_bind(m.hash)
                    .push_bind(m.payload);
            });
            insert
                .build()
                .execute(&mut *conn)
                .await
                .doing("staging members")?;
        }
        let seen_before = sqlx::query(
            "DELETE FROM temp.stage WHERE EXISTS \
             (SELECT 1 FROM temp.seen s WHERE s.email = stage.email)",
        )
        .execute(&mut *conn)
        .await
        .doing("de-duplicating members")?
        .rows_affected();
        let fresh = sqlx::query("INSERT INTO temp.seen (email) SELECT email FROM temp.stage")
            .execute(&mut *conn)
            .await
            .doing("de-duplicating members")?
            .rows_affected();
        let planned = sqlx::query(
            "INSERT INTO temp.outbox (email, hash, kind, payload) \
             SELECT s.email, s.hash, CASE WHEN d.email IS NULL THEN ?3 ELSE ?4 END, \
             s.payload FROM temp.stage s LEFT JOIN delivery_state d \
             ON d.export_id = ?1 AND d.email = s.email \
             WHERE (d.email IS NULL OR d.status != ?5 OR d.hash != s.hash \
             OR d.run_id < ?2) AND NOT EXISTS (SELECT 1 FROM accepted_members a \
             WHERE a.export_id = ?1 AND a.email = s.email AND a.hash = s.hash) \
             ORDER BY s.rowid",
        )
        .bind(export_id)
        // Without `--full` no run id is below the floor.
        .bind(full_floor.unwrap_or(i64::MIN))
        .bind(OutboxKind::New)
        .bind(OutboxKind::Changed)
        .bind(DeliveryStatus::Delivered)
        .execute(&mut *conn)
        .await
        .doing("planning deliveries")?
        .rows_affected();
        sqlx::query("DELETE FROM temp.stage")
            .execute(&mut *conn)
            .await
            .doing("planning deliveries")?;
        Ok(StagedChunk {
            seen_before,
            fresh,
            planned,
        })
    }

    /// New and changed members in the outbox.
    pub async fn count_outbox(&mut self) -> Result<(u64, u64), StoreError> {
        let (new, changed): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*) FILTER (WHERE kind = ?1), COUNT(*) FILTER (WHERE kind = ?2) \
             FROM temp.outbox",
        )
        .bind(OutboxKind::New)
        .bind(OutboxKind::Changed)
        .fetch_one(&mut self.conn)
        .await
        .doing("counting planned deliveries")?;
        Ok((new as u64, changed as u64))
    }

    /// Finds the members delivered earlier who are in no segment now (one pass over the
    /// delivery state; what follows reads this short list). Returns how many.
    pub async fn find_leavers(&mut self, export_id: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "INSERT INTO temp.leavers (email, hash, delivered) \
             SELECT d.email, d.hash, d.status = ? FROM delivery_state d \
             WHERE d.export_id = ? AND NOT EXISTS \
             (SELECT 1 FROM temp.seen s WHERE s.email = d.email)",
        )
        .bind(DeliveryStatus::Delivered)
        .bind(export_id)
        .execute(&mut self.conn)
        .await
        .doing("finding members who left")?
        .rows_affected())
    }

    /// Puts the delivered leavers in the outbox to be unsubscribed. Their payload is built in
    /// SQL, `before` + the quoted email + `after`, so it stays streaming. Leavers whose unsubscribe is in an accepted import are not planned again.
    pub async fn plan_unsubscribes(
        &mut self,
        export_id: i64,
        before: &str,
        after: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO temp.outbox (email, hash, kind, payload) SELECT l.email, l.hash, ?1, \
             ?2 || json_quote(l.email) || ?3 FROM temp.leavers l WHERE l.delivered \
             AND NOT EXISTS (SELECT 1 FROM accepted_members a WHERE a.export_id = ?4 \
             AND a.email = l.email AND a.kind = ?1) ORDER BY l.email",
        )
        .bind(OutboxKind::Leave)
        .bind(before)
        .bind(after)
        .bind(export_id)
        .execute(&mut self.conn)
        .await
        .doing("planning unsubscribes")?;
        Ok(())
    }

    /// Up to `limit` outbox entries after sequence number `after`, in order.
    pub async fn read_outbox(
        &mut self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, OutboxItem)>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, email, hash, kind, payload FROM temp.outbox WHERE seq > ? ORDER BY seq \
             LIMIT ?",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&mut self.conn)
        .await
        .doing("reading the outbox")?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    OutboxItem {
                        email: r.try_get(1)?,
                        hash: r.try_get(2)?,
                        kind: r.try_get(3)?,
                        payload: r.try_get(4)?,
                    },
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .doing("reading the outbox")
    }

    /// Forgets members who left (on-leave `keep`, and failed leavers under `unsubscribe`). The
    /// leavers' status is the one they had when the run planned: delivery changes no leaver's
    /// status (a confirmed unsubscribe deletes the row, a failed one leaves it as it was).
    pub async fn forget_leavers(
        &mut self,
        export_id: i64,
        only_undelivered: bool,
    ) -> Result<u64, StoreError> {
        const DOING: &str = "forgetting members who left";
        self.exec("BEGIN IMMEDIATE", DOING).await?;
        let result = sqlx::query(
            "DELETE FROM delivery_state WHERE export_id = ? AND email IN \
             (SELECT email FROM temp.leavers WHERE ? = 0 OR NOT delivered)",
        )
        .bind(export_id)
        .bind(only_undelivered)
        .execute(&mut self.conn)
        .await
        .doing(DOING);
        match result {
            Ok(done) => {
                self.exec("COMMIT", DOING).await?;
                Ok(done.rows_affected())
            }
            Err(e) => {
                self.rollback().await;
                Err(e)
            }
        }
    }
}

impl Store {
    /// Records confirmed imports: delivery state, failures, issues and the run's counts in one
    /// transaction, so a crash never separates what was delivered from what the run says.
    pub async fn record_confirmed(
        &self,
        export_id: i64,
        run_id: i64,
        confirmed: Confirmed<'_>,
        counts: &RunCounts,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        upsert_state(
            &mut tx,
            export_id,
            run_id,
            confirmed.delivered,
            DeliveryStatus::Delivered,
        )
        .await?;
        upsert_state(
            &mut tx,
            export_id,
            run_id,
            confirmed.failed,
            DeliveryStatus::Failed,
        )
        .await?;
        for chunk in confirmed.left.chunks(STATE_ROWS_PER_STATEMENT) {
            let mut delete: QueryBuilder<Sqlite> =
                QueryBuilder::new("DELETE FROM delivery_state WHERE export_id = ");
            delete.push_bind(export_id).push(" AND email IN (");
            let mut emails = delete.separated(", ");
            for item in chunk {
                emails.push_bind(item.email.as_str());
            }
            emails.push_unseparated(")");
            delete
                .build()
                .execute(&mut *tx)
                .await
                .doing("recording unsubscribes")?;
        }
        record_accepted(&mut tx, export_id, run_id, confirmed.accepted).await?;
        forget_accepted(&mut tx, export_id, confirmed.resolved).await?;
        Store::record_issues(&mut tx, run_id, confirmed.issues).await?;
        Store::write_run_counts(&mut tx, run_id, counts).await?;
        tx.commit().await.doing("recording a confirmed import")?;
        Ok(())
    }

    /// The export's accepted imports whose outcome is not recorded, oldest first, with their
    /// members (payloads empty).
    pub async fn accepted_imports(
        &self,
        export_id: i64,
    ) -> Result<Vec<AcceptedImport>, StoreError> {
        const DOING: &str = "reading accepted imports";
        let mut conn = self.pool().acquire().await.doing(DOING)?;
        let imports: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT batch_id, host, list_id FROM accepted_imports WHERE export_id = ? \
             ORDER BY accepted_at, batch_id",
        )
        .bind(export_id)
        .fetch_all(&mut *conn)
        .await
        .doing(DOING)?;
        let mut out = Vec::with_capacity(imports.len());
        for (batch_id, host, list_id) in imports {
            let rows = sqlx::query(
                "SELECT email, hash, kind FROM accepted_members WHERE export_id = ? \
                 AND batch_id = ? ORDER BY email",
            )
            .bind(export_id)
            .bind(&batch_id)
            .fetch_all(&mut *conn)
            .await
            .doing(DOING)?;
            let items = rows
                .iter()
                .map(|r| {
                    Ok(OutboxItem {
                        email: r.try_get(0)?,
                        hash: r.try_get(1)?,
                        kind: r.try_get(2)?,
                        payload: String::new(),
                    })
                })
                .collect::<Result<_, sqlx::Error>>()
                .doing(DOING)?;
            out.push(AcceptedImport {
                batch_id,
                host,
                list_id,
                items,
            });
        }
        Ok(out)
    }
}

/// Records accepted imports and their members.
async fn record_accepted(
    tx: &mut SqliteConnection,
    export_id: i64,
    run_id: i64,
    imports: &[AcceptedImport],
) -> Result<(), StoreError> {
    const DOING: &str = "recording accepted imports";
    for import in imports {
        sqlx::query(
            "INSERT OR IGNORE INTO accepted_imports (export_id, batch_id, run_id, host, list_id, \
             accepted_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(export_id)
        .bind(&import.batch_id)
        .bind(run_id)
        .bind(&import.host)
        .bind(import.list_id)
        .bind(super::now_text())
        .execute(&mut *tx)
        .await
        .doing(DOING)?;
        for chunk in import.items.chunks(STATE_ROWS_PER_STATEMENT) {
            let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT OR IGNORE INTO accepted_members (export_id, batch_id, email, hash, kind) ",
            );
            insert.push_values(chunk, |mut row, item| {
                row.push_bind(export_id)
                    .push_bind(import.batch_id.as_str())
                    .push_bind(item.email.as_str())
                    .push_bind(&item.hash[..])
                    .push_bind(item.kind);
            });
            insert.build().execute(&mut *tx).await.doing(DOING)?;
        }
    }
    Ok(())
}

/// Removes the records of accepted imports whose outcome is known (members cascade).
async fn forget_accepted(
    tx: &mut SqliteConnection,
    export_id: i64,
    batch_ids: &[String],
) -> Result<(), StoreError> {
    for batch_id in batch_ids {
        sqlx::query("DELETE FROM accepted_imports WHERE export_id = ? AND batch_id = ?")
            .bind(export_id)
            .bind(batch_id)
            .execute(&mut *tx)
            .await
            .doing("removing confirmed imports")?;
    }
    Ok(())
}

async fn upsert_state(
    tx: &mut SqliteConnection,
    export_id: i64,
    run_id: i64,
    items: &[OutboxItem],
    status: DeliveryStatus,
) -> Result<(), StoreError> {
    // A failure never overwrites what is known to be delivered: a member whose update failed
    // keeps its delivered row (its new values still differ, so the next run sends them again)
    // and is still unsubscribed should it leave.
    let on_conflict = match status {
        DeliveryStatus::Delivered => {
            " ON CONFLICT(export_id, email) DO UPDATE SET hash = excluded.hash, \
             status = excluded.status, run_id = excluded.run_id"
        }
        DeliveryStatus::Failed => " ON CONFLICT(export_id, email) DO NOTHING",
    };
    for chunk in items.chunks(STATE_ROWS_PER_STATEMENT) {
        let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO delivery_state (export_id, email, hash, status, run_id) ",
        );
        insert.push_values(chunk, |mut row, item| {
            row.push_bind(export_id)
                .push_bind(item.email.as_str())
                .push_bind(&item.hash[..])
                .push_bind(status)
                .push_bind(run_id);
        });
        insert.push(on_conflict);
        insert
            .build()
            .execute(&mut *tx)
            .await
            .doing("recording delivery state")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::exports::tests::test_store_with_export;

    fn member(email: &str) -> (String, Vec<u8>, String) {
        (
            email.to_owned(),
            vec![1; 32],
            format!("{{\"email\":\"{email}\"}}"),
        )
    }

    #[tokio::test]
    async fn members_of_an_accepted_import_are_not_planned_again_unless_their_values_changed() {
        let (_dir, store, export_id) = test_store_with_export("weekly").await;
        let (run, _lock) = store
            .start_run(export_id, crate::store::TriggerKind::Manual, false)
            .await
            .expect("start");
        let accepted = |email: &str, hash: u8| OutboxItem {
            email: email.to_owned(),
            hash: vec![hash; 32],
            kind: OutboxKind::New,
            payload: String::new(),
        };
        let import = AcceptedImport {
            batch_id: "batch-1".to_owned(),
            host: "ac.example".to_owned(),
            list_id: 1,
            items: vec![accepted("a@example.com", 1), accepted("c@example.com", 9)],
        };
        let record = Confirmed {
            accepted: std::slice::from_ref(&import),
            ..Confirmed::default()
        };
        store
            .record_confirmed(export_id, run.id, record, &RunCounts::default())
            .await
            .expect("record");
        let members = [
            member("a@example.com"),
            member("b@example.com"),
            member("c@example.com"),
        ];
        let staged: Vec<Staged<'_>> = members
            .iter()
            .map(|(email, hash, payload)| Staged {
                email,
                hash,
                payload,
            })
            .collect();
        let mut tables = WorkTables::create(&store).await.expect("tables");

        let chunk = tables
            .stage_chunk(export_id, None, &staged)
            .await
            .expect("stage");
        let planned: Vec<String> = tables
            .read_outbox(0, 10)
            .await
            .expect("outbox")
            .into_iter()
            .map(|(_, item)| item.email)
            .collect();
        let recorded = store.accepted_imports(export_id).await.expect("accepted");
        let resolved = ["batch-1".to_owned()];
        let forget = Confirmed {
            resolved: &resolved,
            ..Confirmed::default()
        };
        store
            .record_confirmed(export_id, run.id, forget, &RunCounts::default())
            .await
            .expect("resolve");
        let left = store.accepted_imports(export_id).await.expect("accepted");
        let members_left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accepted_members")
            .fetch_one(store.pool())
            .await
            .expect("count");

        assert_eq!(chunk.planned, 2);
        assert_eq!(planned, ["b@example.com", "c@example.com"]);
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].items.len(), 2);
        assert!(recorded[0].items.iter().all(|i| i.payload.is_empty()));
        assert_eq!((left.len(), members_left), (0, 0));
    }

    #[tokio::test]
    async fn outbox_kinds_and_delivery_statuses_are_stored_as_their_words() {
        let (_dir, store, export_id) = test_store_with_export("weekly").await;
        let (run, _lock) = store
            .start_run(export_id, crate::store::TriggerKind::Manual, false)
            .await
            .expect("start");
        let members = [member("a@example.com"), member("b@example.com")];
        let staged: Vec<Staged<'_>> = members
            .iter()
            .map(|(email, hash, payload)| Staged {
                email,
                hash,
                payload,
            })
            .collect();
        let mut tables = WorkTables::create(&store).await.expect("tables");
        let chunk = tables
            .stage_chunk(export_id, None, &staged)
            .await
            .expect("stage");
        let words: Vec<String> = sqlx::query_scalar("SELECT kind FROM temp.outbox ORDER BY seq")
            .fetch_all(&mut tables.conn)
            .await
            .expect("kinds");
        let mut outbox: Vec<OutboxItem> = tables
            .read_outbox(0, 10)
            .await
            .expect("outbox")
            .into_iter()
            .map(|(_, item)| item)
            .collect();
        let failed = outbox.split_off(1);

        let confirmed = Confirmed {
            delivered: &outbox,
            failed: &failed,
            ..Confirmed::default()
        };
        store
            .record_confirmed(export_id, run.id, confirmed, &RunCounts::default())
            .await
            .expect("record");
        let statuses: Vec<(String, String)> =
            sqlx::query_as("SELECT email, status FROM delivery_state ORDER BY email")
                .fetch_all(store.pool())
                .await
                .expect("statuses");

        assert_eq!((chunk.fresh, chunk.planned), (2, 2));
        assert_eq!(words, ["new", "new"]);
        assert_eq!(outbox[0].kind, OutboxKind::New);
        assert_eq!(
            statuses,
            [
                ("a@example.com".to_owned(), "delivered".to_owned()),
                ("b@example.com".to_owned(), "failed".to_owned())
            ]
        );
    }
}
