//! Delivery state and a run's work tables. Per export, the store keeps only what "send only
//! what changed" needs: the normalised email, a keyed hash of the mapped values, a status and
//! the run that wrote it, never the raw row.
//!
//! A run plans on a connection of its own ([`WorkTables`]) whose temporary tables hold the
//! chunk being staged, the members seen, the leavers and the outbox. They vanish with the
//! connection (and with the process on a crash), so the profile values they hold live no
//! longer than the run. Every statement works on a whole chunk inside SQLite, so no set of
//! emails or hashes is held in memory, whatever the segment size.
//!
//! Beside the hash, each member keeps one bit per mapped field (`sent_fields`), set when the
//! value was last sent non-empty: a value emptied in the source since is sent empty, clearing
//! it in ActiveCampaign, while a value never sent is left out, so nothing ActiveCampaign holds
//! from elsewhere is blanked. Bits are given to fields per export (`delivery_field_slots`).

use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::words::stored_words;
use super::{Doing, RunCounts, RunIssue, Store, StoreError};

/// Members staged per statement: a whole chunk of the pipeline (2,048 rows, 3 values each)
/// in one statement, far below SQLite's 32,766 variables.
const STAGE_ROWS_PER_STATEMENT: usize = 4096;
/// Delivery-state rows written per statement (6 values each).
const STATE_ROWS_PER_STATEMENT: usize = 500;
/// Bits in `sent_fields` (an SQLite INTEGER): fields mapped beyond this many have none, and
/// are never sent empty.
pub const MAX_FIELD_SLOTS: usize = 64;

stored_words! {
    /// What the delivery state says of a member.
    pub enum DeliveryStatus ("delivery status") {
        /// Confirmed by ActiveCampaign with these values.
        Delivered = "delivered",
        /// Sent but not imported: sent again by the next run.
        Failed = "failed",
        /// ActiveCampaign will not subscribe it (see [`SuppressReason`]): not sent again until
        /// its values change or the recheck days pass.
        Suppressed = "suppressed",
        /// Unsubscribed by acexport on leave (on-leave `unsubscribe`): re-subscribed if it
        /// returns, since the person never asked to leave.
        Left = "left",
    }
}

stored_words! {
    /// Why ActiveCampaign will not subscribe a contact, as far as its answers tell.
    pub enum SuppressReason ("suppression reason") {
        /// The person unsubscribed from the list (status 2 there).
        Unsubscribed = "unsubscribed",
        /// Mail to the address bounced (status 3 on the list).
        Bounced = "bounced",
        /// Not imported with no status on the list that says why: the exclusion list, the
        /// account's bounce list, or (for an address ActiveCampaign does not hold) its contact
        /// limit; its answers do not tell these apart.
        Excluded = "excluded",
    }
}

impl SuppressReason {
    /// The reason as a run's issue records it.
    pub fn explain(self) -> &'static str {
        match self {
            SuppressReason::Unsubscribed => {
                "unsubscribed from the list; ActiveCampaign does not subscribe them again"
            }
            SuppressReason::Bounced => "mail to the address bounced; ActiveCampaign refuses it",
            SuppressReason::Excluded => {
                "not imported: on ActiveCampaign's exclusion or bounce list (or, for a new \
                 address, the account's contact limit is reached)"
            }
        }
    }
}

stored_words! {
    /// Why a member is in the outbox.
    pub enum OutboxKind ("outbox kind") {
        New = "new",
        Changed = "changed",
        /// Left every segment; unsubscribed from the list (on-leave `unsubscribe`).
        Leave = "leave",
        /// Unsubscribed by acexport when it left, and back in a segment: re-subscribed with
        /// `contactLists` before it is imported.
        Return = "return",
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
    /// The bits of the mapped fields whose value is non-empty (and so in the payload).
    pub sent_fields: i64,
}

/// One outbox entry. Its `Debug` shows neither the address nor the payload: both are profile
/// data.
pub struct OutboxItem {
    pub email: String,
    pub hash: Vec<u8>,
    pub kind: OutboxKind,
    pub payload: String,
    /// The bits of the mapped fields sent non-empty, recorded once the import is confirmed.
    pub sent_fields: i64,
}

impl std::fmt::Debug for OutboxItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxItem")
            .field("kind", &self.kind)
            .field("payload_bytes", &self.payload.len())
            .finish_non_exhaustive()
    }
}

/// An outbox entry whose payload must send some values empty. Its `Debug` shows no payload.
pub struct ToClear {
    pub seq: i64,
    pub payload: String,
    /// The bits of the fields to send empty.
    pub fields: i64,
}

impl std::fmt::Debug for ToClear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToClear")
            .field("seq", &self.seq)
            .field("fields", &format_args!("{:#x}", self.fields))
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
    /// Of the fresh ones, suppressed members held back: values unchanged, checked recently.
    pub held: u64,
}

/// Confirmed imports to record in one transaction (the group commit).
#[derive(Default)]
pub struct Confirmed<'a> {
    pub delivered: &'a [OutboxItem],
    pub failed: &'a [OutboxItem],
    /// Contacts ActiveCampaign will not subscribe, with why.
    pub suppressed: &'a [(OutboxItem, SuppressReason)],
    /// Members unsubscribed on leave: kept as `left`, so a return re-subscribes them.
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
    /// Suppressed members checked at or after this time (RFC 3339) are not sent again while
    /// their values are unchanged; older ones are checked again. Empty: never checked again.
    recheck_before: String,
    /// Whether some of the export's delivery state does not record its fields yet.
    learn_fields: bool,
}

impl WorkTables {
    /// Opens the run's connection and creates empty work tables.
    pub async fn create(store: &Store) -> Result<WorkTables, StoreError> {
        let mut conn = store.dedicated_connection().await?;
        for sql in [
            // The work tables churn (a stage filled and emptied per chunk); zeroing their freed
            // pages would cost CPU and protect nothing: the temp file is unlinked at close
            // without being overwritten either way. The database file keeps secure_delete.
            "PRAGMA temp.secure_delete = OFF",
            "DROP TABLE IF EXISTS temp.seen",
            "DROP TABLE IF EXISTS temp.outbox",
            "DROP TABLE IF EXISTS temp.stage",
            "DROP TABLE IF EXISTS temp.leavers",
            "DROP TABLE IF EXISTS temp.learned_fields",
            "CREATE TEMP TABLE seen (email TEXT PRIMARY KEY) WITHOUT ROWID",
            // Members delivered earlier who are in no segment now, found once per run.
            "CREATE TEMP TABLE leavers (email TEXT PRIMARY KEY, hash BLOB NOT NULL, \
             delivered INTEGER NOT NULL) WITHOUT ROWID",
            // One chunk of mapped members at a time, in source order.
            "CREATE TEMP TABLE stage (email TEXT NOT NULL, hash BLOB NOT NULL, \
             payload TEXT NOT NULL, sent_fields INTEGER NOT NULL)",
            // `clear`: fields sent before and empty now, still to be added to the payload.
            "CREATE TEMP TABLE outbox (seq INTEGER PRIMARY KEY, email TEXT NOT NULL, \
             hash BLOB NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL, \
             sent_fields INTEGER NOT NULL DEFAULT 0, clear INTEGER NOT NULL DEFAULT 0)",
            "CREATE INDEX temp.outbox_to_clear ON outbox(seq) WHERE clear != 0",
            // Fields of members delivered before they were recorded, learned from an
            // unchanged fingerprint (see `learn_fields`).
            "CREATE TEMP TABLE learned_fields (email TEXT PRIMARY KEY, \
             sent_fields INTEGER NOT NULL) WITHOUT ROWID",
        ] {
            sqlx::query(sql)
                .execute(&mut conn)
                .await
                .doing("preparing a run's work tables")?;
        }
        Ok(WorkTables {
            conn,
            recheck_before: String::new(),
            learn_fields: false,
        })
    }

    /// Suppressed members last checked before `time` (RFC 3339) are sent again, to learn
    /// whether ActiveCampaign still refuses them.
    pub fn recheck_suppressed_before(&mut self, time: String) {
        self.recheck_before = time;
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
                QueryBuilder::new("INSERT INTO temp.stage (email, hash, payload, sent_fields) ");
            insert.push_values(chunk, |mut row, m| {
                row.push_bind(m.email)
                    .push_bind(m.hash)
                    .push_bind(m.payload)
                    .push_bind(m.sent_fields);
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
        // Without `--full` no run id is below the floor.
        let floor = full_floor.unwrap_or(i64::MIN);
        // INDEXED BY: accepted members are probed by email; without statistics SQLite would
        // walk every accepted member of the export for each staged one.
        let planned = sqlx::query(
            "INSERT INTO temp.outbox (email, hash, kind, payload, sent_fields, clear) \
             SELECT s.email, s.hash, CASE WHEN d.email IS NULL THEN ?3 \
             WHEN d.status = ?7 THEN ?8 ELSE ?4 END, \
             s.payload, s.sent_fields, COALESCE(d.sent_fields, 0) & ~s.sent_fields \
             FROM temp.stage s LEFT JOIN delivery_state d \
             ON d.export_id = ?1 AND d.email = s.email \
             WHERE (d.email IS NULL OR d.hash != s.hash OR d.run_id < ?2 \
             OR (d.status != ?5 AND NOT (d.status = ?6 AND d.since >= ?9))) \
             AND NOT EXISTS (SELECT 1 FROM accepted_members a \
             INDEXED BY accepted_members_by_email \
             WHERE a.export_id = ?1 AND a.email = s.email AND a.hash = s.hash) \
             ORDER BY s.rowid",
        )
        .bind(export_id)
        .bind(floor)
        .bind(OutboxKind::New)
        .bind(OutboxKind::Changed)
        .bind(DeliveryStatus::Delivered)
        .bind(DeliveryStatus::Suppressed)
        .bind(DeliveryStatus::Left)
        .bind(OutboxKind::Return)
        .bind(&self.recheck_before)
        .execute(&mut *conn)
        .await
        .doing("planning deliveries")?
        .rows_affected();
        let held = held_suppressed(conn, export_id, floor, &self.recheck_before).await?;
        if self.learn_fields {
            learn_fields(conn, export_id).await?;
        }
        sqlx::query("DELETE FROM temp.stage")
            .execute(&mut *conn)
            .await
            .doing("planning deliveries")?;
        Ok(StagedChunk {
            seen_before,
            fresh,
            planned,
            held,
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
             WHERE d.export_id = ? AND d.status != ? AND NOT EXISTS \
             (SELECT 1 FROM temp.seen s WHERE s.email = d.email)",
        )
        .bind(DeliveryStatus::Delivered)
        .bind(export_id)
        // Unsubscribed by acexport already: nothing more to do until they return.
        .bind(DeliveryStatus::Left)
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
             AND NOT EXISTS (SELECT 1 FROM accepted_members a \
             INDEXED BY accepted_members_by_email WHERE a.export_id = ?4 \
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
            "SELECT seq, email, hash, kind, payload, sent_fields FROM temp.outbox WHERE seq > ? \
             ORDER BY seq LIMIT ?",
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
                        sent_fields: r.try_get(5)?,
                    },
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .doing("reading the outbox")
    }

    /// Notes whether some of the export's delivered members do not record their fields yet
    /// (delivered before acexport kept them): staging then learns them where it can.
    pub async fn note_unrecorded_fields(&mut self, export_id: i64) -> Result<bool, StoreError> {
        self.learn_fields = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM delivery_state WHERE export_id = ? \
             AND sent_fields IS NULL AND status = ?)",
        )
        .bind(export_id)
        .bind(DeliveryStatus::Delivered)
        .fetch_one(&mut self.conn)
        .await
        .doing("reading delivery state")?;
        Ok(self.learn_fields)
    }

    /// Up to `limit` outbox entries with values to clear: mapped fields sent non-empty before
    /// and empty now, whose payload still leaves them out.
    pub async fn values_to_clear(&mut self, limit: i64) -> Result<Vec<ToClear>, StoreError> {
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT seq, payload, clear FROM temp.outbox WHERE clear != 0 ORDER BY seq LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&mut self.conn)
        .await
        .doing("planning values to clear")?;
        Ok(rows
            .into_iter()
            .map(|(seq, payload, fields)| ToClear {
                seq,
                payload,
                fields,
            })
            .collect())
    }

    /// Replaces the payloads of outbox entries by ones that send their emptied values empty.
    pub async fn write_clearing_payloads(
        &mut self,
        payloads: &[(i64, String)],
    ) -> Result<(), StoreError> {
        for (seq, payload) in payloads {
            sqlx::query("UPDATE temp.outbox SET payload = ?, clear = 0 WHERE seq = ?")
                .bind(payload)
                .bind(seq)
                .execute(&mut self.conn)
                .await
                .doing("planning values to clear")?;
        }
        Ok(())
    }

    /// Records the fields learned while planning for members delivered before acexport kept
    /// them. Returns how many members now record them.
    pub async fn record_learned_fields(&mut self, export_id: i64) -> Result<u64, StoreError> {
        const DOING: &str = "recording which fields were sent";
        if !self.learn_fields {
            return Ok(0);
        }
        self.exec("BEGIN IMMEDIATE", DOING).await?;
        let result = sqlx::query(
            "UPDATE delivery_state SET sent_fields = \
             (SELECT l.sent_fields FROM temp.learned_fields l WHERE l.email = delivery_state.email) \
             WHERE export_id = ? AND sent_fields IS NULL \
             AND email IN (SELECT email FROM temp.learned_fields)",
        )
        .bind(export_id)
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

    /// Forgets members who left (on-leave `keep`, and failed leavers under `unsubscribe`). The
    /// leavers' status is the one they had when the run planned: delivery changes no leaver's
    /// status to anything but `left` (a confirmed unsubscribe; such rows are not deleted here,
    /// being delivered leavers), and a failed one leaves it as it was.
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

/// How the bits of an export's fields change for a mapping (see [`Store::field_slots`]).
#[derive(Debug, Default, PartialEq, Eq)]
struct SlotPlan {
    /// Each target's bit, in the mapping's order; `None` once all 64 are taken.
    slots: Vec<Option<u8>>,
    /// Bits given to targets that had none.
    added: Vec<(String, u8)>,
    /// Bits of targets no longer mapped, as a mask.
    released: i64,
}

/// Keeps the bits of targets still mapped, releases the others', and gives targets without
/// one the lowest free bit, released ones included (they are cleared before reuse).
fn plan_slots(existing: &[(String, u8)], targets: &[String]) -> SlotPlan {
    let mut plan = SlotPlan::default();
    let mut taken: u64 = 0;
    for (target, slot) in existing {
        if targets.contains(target) {
            taken |= 1 << slot;
        } else {
            plan.released |= 1 << slot;
        }
    }
    for target in targets {
        let slot = match existing.iter().find(|(t, _)| t == target) {
            Some((_, slot)) => Some(*slot),
            None => {
                let free = (!taken).trailing_zeros();
                (free < MAX_FIELD_SLOTS as u32).then(|| {
                    taken |= 1 << free;
                    plan.added.push((target.clone(), free as u8));
                    free as u8
                })
            }
        };
        plan.slots.push(slot);
    }
    plan
}

impl Store {
    /// The bit of each mapped field of the export (`targets`: `first_name`, `last_name`,
    /// `phone`, `field:ID`), in order; `None` for fields beyond the 64 bits. With `assign` (a
    /// run), fields without a bit get one, and fields no longer mapped give theirs up after it
    /// is cleared in every member: an unmapped field is not acexport's to clear. Without (a
    /// dry run) nothing changes and fields without a bit get `None`.
    pub async fn field_slots(
        &self,
        export_id: i64,
        targets: &[String],
        assign: bool,
    ) -> Result<Vec<Option<u8>>, StoreError> {
        const DOING: &str = "giving mapped fields their bits";
        let existing = read_slots(self.pool(), export_id).await?;
        if !assign {
            let slot = |target: &String| existing.iter().find(|(t, _)| t == target).map(|e| e.1);
            return Ok(targets.iter().map(slot).collect());
        }
        let plan = plan_slots(&existing, targets);
        if plan.added.is_empty() && plan.released == 0 {
            return Ok(plan.slots);
        }
        let mut tx = self.write().await?;
        // Read again under the write lock, so that the plan is the one applied.
        let plan = plan_slots(&read_slots(&mut *tx, export_id).await?, targets);
        if plan.released != 0 {
            sqlx::query(
                "UPDATE delivery_state SET sent_fields = sent_fields & ~?1 \
                 WHERE export_id = ?2 AND sent_fields & ?1 != 0",
            )
            .bind(plan.released)
            .bind(export_id)
            .execute(&mut *tx)
            .await
            .doing(DOING)?;
            sqlx::query(
                "DELETE FROM delivery_field_slots WHERE export_id = ? AND (1 << slot) & ? != 0",
            )
            .bind(export_id)
            .bind(plan.released)
            .execute(&mut *tx)
            .await
            .doing(DOING)?;
        }
        for (target, slot) in &plan.added {
            sqlx::query(
                "INSERT INTO delivery_field_slots (export_id, target, slot) VALUES (?, ?, ?)",
            )
            .bind(export_id)
            .bind(target)
            .bind(i64::from(*slot))
            .execute(&mut *tx)
            .await
            .doing(DOING)?;
        }
        tx.commit().await.doing(DOING)?;
        Ok(plan.slots)
    }

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
        upsert_suppressed(&mut tx, export_id, run_id, confirmed.suppressed).await?;
        record_left(&mut tx, export_id, run_id, confirmed.left).await?;
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
                "SELECT email, hash, kind, sent_fields FROM accepted_members WHERE export_id = ? \
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
                        sent_fields: r.try_get(3)?,
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
                "INSERT OR IGNORE INTO accepted_members (export_id, batch_id, email, hash, kind, \
                 sent_fields) ",
            );
            insert.push_values(chunk, |mut row, item| {
                row.push_bind(export_id)
                    .push_bind(import.batch_id.as_str())
                    .push_bind(item.email.as_str())
                    .push_bind(&item.hash[..])
                    .push_bind(item.kind)
                    .push_bind(item.sent_fields);
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

/// The bits an export's fields have, as `(target, slot)`.
async fn read_slots<'c>(
    conn: impl sqlx::SqliteExecutor<'c>,
    export_id: i64,
) -> Result<Vec<(String, u8)>, StoreError> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT target, slot FROM delivery_field_slots WHERE export_id = ?")
            .bind(export_id)
            .fetch_all(conn)
            .await
            .doing("reading the bits of mapped fields")?;
    // The table's CHECK keeps slots within 0..=63.
    Ok(rows
        .into_iter()
        .filter_map(|(target, slot)| Some((target, u8::try_from(slot).ok()?)))
        .collect())
}

/// Learns the fields of staged members whose state does not record them yet: when the
/// fingerprint is unchanged, the same fields are non-empty as when they were delivered, so
/// those are the fields ActiveCampaign holds from acexport.
async fn learn_fields(conn: &mut SqliteConnection, export_id: i64) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT OR IGNORE INTO temp.learned_fields (email, sent_fields) \
         SELECT s.email, s.sent_fields FROM temp.stage s JOIN delivery_state d \
         ON d.export_id = ? AND d.email = s.email \
         WHERE d.sent_fields IS NULL AND d.status = ? AND d.hash = s.hash",
    )
    .bind(export_id)
    .bind(DeliveryStatus::Delivered)
    .execute(conn)
    .await
    .doing("planning deliveries")?;
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
             status = excluded.status, run_id = excluded.run_id, reason = NULL, since = NULL, \
             sent_fields = excluded.sent_fields"
        }
        // Suppressed and left rows are written by their own functions.
        _ => " ON CONFLICT(export_id, email) DO NOTHING",
    };
    for chunk in items.chunks(STATE_ROWS_PER_STATEMENT) {
        let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO delivery_state (export_id, email, hash, status, run_id, sent_fields) ",
        );
        insert.push_values(chunk, |mut row, item| {
            // Only a confirmed import put values in ActiveCampaign (suppressed and left rows are
            // written by their own functions and keep the bits they had).
            let sent_fields = match status {
                DeliveryStatus::Delivered => item.sent_fields,
                DeliveryStatus::Failed | DeliveryStatus::Suppressed | DeliveryStatus::Left => 0,
            };
            row.push_bind(export_id)
                .push_bind(item.email.as_str())
                .push_bind(&item.hash[..])
                .push_bind(status)
                .push_bind(run_id)
                .push_bind(sent_fields);
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

/// Suppressed contacts among the staged chunk held back: values unchanged since
/// ActiveCampaign refused them, and refused at or after `recheck_before`.
async fn held_suppressed(
    conn: &mut SqliteConnection,
    export_id: i64,
    floor: i64,
    recheck_before: &str,
) -> Result<u64, StoreError> {
    // CROSS JOIN keeps the chunk outside: without statistics SQLite otherwise walks the
    // export's whole delivery state for every chunk (quadratic in the segment's size).
    let held: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM temp.stage s CROSS JOIN delivery_state d \
         ON d.export_id = ?1 AND d.email = s.email \
         WHERE d.status = ?2 AND d.hash = s.hash AND d.run_id >= ?3 AND d.since >= ?4",
    )
    .bind(export_id)
    .bind(DeliveryStatus::Suppressed)
    .bind(floor)
    .bind(recheck_before)
    .fetch_one(conn)
    .await
    .doing("planning deliveries")?;
    Ok(held as u64)
}

/// Records contacts ActiveCampaign will not subscribe, with the values it refused (so that a
/// change sends them again), why, and when (so that the recheck days count from it). This
/// overwrites any earlier state: what ActiveCampaign says now is what holds.
async fn upsert_suppressed(
    tx: &mut SqliteConnection,
    export_id: i64,
    run_id: i64,
    items: &[(OutboxItem, SuppressReason)],
) -> Result<(), StoreError> {
    let now = super::now_text();
    for chunk in items.chunks(STATE_ROWS_PER_STATEMENT) {
        let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO delivery_state (export_id, email, hash, status, run_id, reason, since) ",
        );
        insert.push_values(chunk, |mut row, (item, reason)| {
            row.push_bind(export_id)
                .push_bind(item.email.as_str())
                .push_bind(&item.hash[..])
                .push_bind(DeliveryStatus::Suppressed)
                .push_bind(run_id)
                .push_bind(*reason)
                .push_bind(now.as_str());
        });
        insert.push(
            " ON CONFLICT(export_id, email) DO UPDATE SET hash = excluded.hash, \
             status = excluded.status, run_id = excluded.run_id, reason = excluded.reason, \
             since = excluded.since",
        );
        insert
            .build()
            .execute(&mut *tx)
            .await
            .doing("recording suppressed contacts")?;
    }
    Ok(())
}

/// Marks members acexport unsubscribed on leave as `left`: the record that the unsubscribe
/// was acexport's own, which lets a return re-subscribe them.
async fn record_left(
    tx: &mut SqliteConnection,
    export_id: i64,
    run_id: i64,
    items: &[OutboxItem],
) -> Result<(), StoreError> {
    let now = super::now_text();
    for chunk in items.chunks(STATE_ROWS_PER_STATEMENT) {
        let mut update: QueryBuilder<Sqlite> =
            QueryBuilder::new("UPDATE delivery_state SET status = ");
        update
            .push_bind(DeliveryStatus::Left)
            .push(", run_id = ")
            .push_bind(run_id)
            .push(", reason = NULL, since = ")
            .push_bind(now.as_str())
            .push(" WHERE export_id = ")
            .push_bind(export_id)
            .push(" AND email IN (");
        let mut emails = update.separated(", ");
        for item in chunk {
            emails.push_bind(item.email.as_str());
        }
        emails.push_unseparated(")");
        update
            .build()
            .execute(&mut *tx)
            .await
            .doing("recording unsubscribes")?;
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
            .start_run(export_id, crate::store::TriggerKind::Manual, false, None)
            .await
            .expect("start");
        let accepted = |email: &str, hash: u8| OutboxItem {
            email: email.to_owned(),
            hash: vec![hash; 32],
            kind: OutboxKind::New,
            payload: String::new(),
            sent_fields: 0,
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
                sent_fields: 0,
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
            .start_run(export_id, crate::store::TriggerKind::Manual, false, None)
            .await
            .expect("start");
        let members = [member("a@example.com"), member("b@example.com")];
        let staged: Vec<Staged<'_>> = members
            .iter()
            .map(|(email, hash, payload)| Staged {
                email,
                hash,
                payload,
                sent_fields: 0,
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

    fn targets(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn fields_keep_their_bits_new_ones_take_the_lowest_free_and_unmapped_ones_give_theirs_up() {
        let existing = |pairs: &[(&str, u8)]| -> Vec<(String, u8)> {
            pairs.iter().map(|(t, s)| ((*t).to_owned(), *s)).collect()
        };
        let cases = [
            (
                existing(&[]),
                targets(&["first_name", "phone"]),
                vec![Some(0), Some(1)],
                vec![("first_name", 0), ("phone", 1)],
                0,
            ),
            (
                existing(&[("first_name", 0), ("phone", 1)]),
                targets(&["phone", "field:3"]),
                vec![Some(1), Some(0)],
                vec![("field:3", 0)],
                0b01,
            ),
            (
                existing(&[("phone", 1), ("field:3", 0)]),
                targets(&["phone", "field:3"]),
                vec![Some(1), Some(0)],
                vec![],
                0,
            ),
        ];
        for (existing, targets, slots, added, released) in cases {
            let plan = plan_slots(&existing, &targets);
            let added: Vec<(String, u8)> =
                added.iter().map(|(t, s)| ((*t).to_owned(), *s)).collect();
            assert_eq!(
                plan,
                SlotPlan {
                    slots,
                    added,
                    released
                },
                "{targets:?}"
            );
        }
    }

    #[test]
    fn fields_beyond_the_64_bits_get_none() {
        let many: Vec<String> = (0..70).map(|i| format!("field:{i}")).collect();

        let plan = plan_slots(&[], &many);

        assert_eq!(plan.slots[63], Some(63));
        assert_eq!(plan.slots[64..], [None; 6]);
        assert_eq!(plan.added.len(), MAX_FIELD_SLOTS);
    }

    #[tokio::test]
    async fn a_field_no_longer_mapped_has_its_bit_cleared_in_every_member_before_reuse() {
        let (_dir, store, export_id) = test_store_with_export("weekly").await;
        let slots = store
            .field_slots(export_id, &targets(&["first_name", "phone"]), true)
            .await
            .expect("slots");
        sqlx::query(
            "INSERT INTO delivery_state (export_id, email, hash, status, run_id, sent_fields) \
             VALUES (?, 'a@example.com', x'01', 'delivered', 1, 3)",
        )
        .bind(export_id)
        .execute(store.pool())
        .await
        .expect("state");

        let dry = store
            .field_slots(export_id, &targets(&["first_name", "field:3"]), false)
            .await
            .expect("read only");
        let reused = store
            .field_slots(export_id, &targets(&["first_name", "field:3"]), true)
            .await
            .expect("slots");
        let sent: i64 = sqlx::query_scalar("SELECT sent_fields FROM delivery_state")
            .fetch_one(store.pool())
            .await
            .expect("state");

        assert_eq!(slots, [Some(0), Some(1)]);
        assert_eq!(dry, [Some(0), None], "a dry run gives no bits");
        assert_eq!(reused, [Some(0), Some(1)], "the phone's bit is reused");
        assert_eq!(
            sent, 1,
            "the phone's bit was cleared before field 3 took it"
        );
    }
}
