//! Read and plan: every segment is streamed through the data matching; members are
//! de-duplicated and compared with the export's delivery state in SQLite temporary tables on
//! the run's own connection, so memory stays flat whatever the segment size. The result is an
//! outbox of new, changed and leaving members, and exact counts.
//!
//! Temporary tables vanish with the connection (and with the process on a crash), so the
//! profile values they hold live no longer than the run. A resumed run plans again from the
//! sources; what was confirmed before the crash is then unchanged and is not sent twice.

use std::borrow::Cow;
use std::collections::HashSet;

use sqlx::{AssertSqlSafe, SqliteConnection};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::matching::{Matching, Member};
use super::{PipelineError, Sink, Stopper};
use crate::secrets::ProfileHasher;
use crate::source::{self, RowStream, SourceDef, SourceError};
use crate::store::exports::OnLeave;
use crate::store::{Doing, RunCounts};

/// Rows read from a source per chunk; also the number of members looked up per statement.
pub const CHUNK: usize = 2048;

/// Mapped chunks the matching task may run ahead of planning.
const MAPPED_AHEAD: usize = 2;

/// One chunk of source rows after matching.
struct MappedChunk {
    /// Source rows it came from.
    rows: u64,
    members: Vec<Member>,
    rejects: Vec<Reject>,
}

/// A row the matching refused, with what its record needs.
struct Reject {
    row: u64,
    /// The raw email value, masked when recorded.
    email: Option<String>,
    reason: Cow<'static, str>,
}

/// The matching task: maps chunks of rows until the source ends, fails, or planning stops
/// listening.
async fn map_rows(
    mut rows: RowStream,
    matching: Matching,
    hasher: ProfileHasher,
    tx: mpsc::Sender<Result<MappedChunk, SourceError>>,
) {
    loop {
        let chunk = match rows.next_chunk(CHUNK).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let mut mapped = MappedChunk {
            rows: chunk.len() as u64,
            members: Vec::with_capacity(chunk.len()),
            rejects: Vec::new(),
        };
        for item in chunk {
            match item {
                Ok(row) => match matching.map(&row.values, &hasher) {
                    Ok(member) => mapped.members.push(member),
                    Err(reason) => mapped.rejects.push(Reject {
                        row: row.number,
                        email: row
                            .values
                            .into_iter()
                            .nth(matching.email_column())
                            .flatten(),
                        reason: Cow::Borrowed(reason),
                    }),
                },
                Err(e) => mapped.rejects.push(Reject {
                    row: e.number,
                    email: None,
                    reason: Cow::Owned(e.reason),
                }),
            }
        }
        if tx.send(Ok(mapped)).await.is_err() {
            return;
        }
    }
}

/// Aborts the task when dropped (planning stopped early), so it stops reading the source.
struct AbortOnDrop(JoinHandle<()>);

impl AbortOnDrop {
    /// Waits for the task's end; an error if it panicked.
    async fn finish(mut self) -> Result<(), tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the plan found besides the counts.
#[derive(Debug, Default, Clone)]
pub struct PlanTotals {
    pub new: u64,
    pub changed: u64,
    pub leaving: u64,
    /// Unique valid members across all segments.
    pub members: u64,
}

/// A segment to read, with its name for rejection records.
pub struct SegmentSource {
    pub name: String,
    pub def: SourceDef,
}

pub struct Planner<'a> {
    pub conn: &'a mut SqliteConnection,
    pub export_id: i64,
    /// With `--full`: state written by runs before this id counts as not yet sent.
    pub full_floor: Option<i64>,
    pub matching: &'a Matching,
    pub hasher: &'a ProfileHasher,
    pub counts: &'a mut RunCounts,
    pub totals: PlanTotals,
    /// Checked after every chunk, so a cancel or shutdown does not wait for a whole segment.
    pub stopper: Option<&'a Stopper>,
}

pub async fn create_temp_tables(conn: &mut SqliteConnection) -> Result<(), PipelineError> {
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
            .execute(&mut *conn)
            .await
            .doing("preparing a run's work tables")?;
    }
    Ok(())
}

/// `(?,?,?),(?,?,?)` for `groups` rows of `per_group` values.
pub(super) fn placeholders(groups: usize, per_group: usize) -> String {
    let group = format!("({})", vec!["?"; per_group].join(","));
    vec![group; groups].join(",")
}

impl Planner<'_> {
    /// Reads every segment and plans the leavers, in one transaction on the run's connection:
    /// the work tables are written without a commit per statement, and the delivery state is
    /// read from one snapshot.
    pub async fn plan(
        &mut self,
        segments: &[SegmentSource],
        on_leave: OnLeave,
        sink: &mut Sink,
    ) -> Result<(), PipelineError> {
        sqlx::query("BEGIN")
            .execute(&mut *self.conn)
            .await
            .doing("planning deliveries")?;
        let mut planned = async {
            for segment in segments {
                self.read_segment(segment, sink).await?;
            }
            self.plan_leavers(on_leave).await
        }
        .await;
        if planned.is_ok() {
            planned = sqlx::query("COMMIT")
                .execute(&mut *self.conn)
                .await
                .map(|_| ())
                .doing("planning deliveries")
                .map_err(PipelineError::from);
        }
        if planned.is_err() {
            let _ = sqlx::query("ROLLBACK").execute(&mut *self.conn).await;
        }
        planned
    }

    /// Streams one segment through matching and planning. Matching runs in a task of its own,
    /// a chunk or two ahead, so that mapping the next chunk overlaps SQLite planning this one.
    async fn read_segment(
        &mut self,
        segment: &SegmentSource,
        sink: &mut Sink,
    ) -> Result<(), PipelineError> {
        let rows = source::open(&segment.def, self.matching.columns())
            .await
            .map_err(|e| PipelineError::Source {
                segment: segment.name.clone(),
                source: e,
            })?;
        let (tx, mut mapped) = mpsc::channel(MAPPED_AHEAD);
        let mapper = AbortOnDrop(tokio::spawn(map_rows(
            rows,
            self.matching.clone(),
            self.hasher.clone(),
            tx,
        )));
        while let Some(chunk) = mapped.recv().await {
            let chunk = chunk.map_err(|e| PipelineError::Source {
                segment: segment.name.clone(),
                source: e,
            })?;
            self.counts.rows_read += chunk.rows;
            for reject in chunk.rejects {
                self.counts.rejected += 1;
                sink.rejected(
                    &segment.name,
                    reject.row,
                    reject.email.as_deref(),
                    &reject.reason,
                )
                .await?;
            }
            self.plan_members(chunk.members).await?;
            sink.progress(self.counts).await;
            if let Some(reason) = self.stopper.and_then(Stopper::reason) {
                return Err(PipelineError::Stopped(reason));
            }
        }
        // The channel closes when the mapper ends: at the end of the rows, or on a panic,
        // which must not look like the end of the data.
        mapper.finish().await.map_err(|e| PipelineError::Source {
            segment: segment.name.clone(),
            source: SourceError::ReaderFailed {
                source_name: segment.name.clone(),
                message: format!("the matching task failed: {e}"),
            },
        })
    }

    /// De-duplicates a chunk (first occurrence wins) and sorts it into new, changed and
    /// unchanged. The set work happens in SQLite, statement by statement over the whole chunk,
    /// so that no row travels back from the database: the chunk is staged, members seen in
    /// earlier chunks or segments are dropped from the stage, the rest are marked seen, and
    /// those whose delivery state differs go to the outbox.
    async fn plan_members(&mut self, members: Vec<Member>) -> Result<(), PipelineError> {
        if members.is_empty() {
            return Ok(());
        }
        let mut in_chunk = HashSet::with_capacity(members.len());
        let mut candidates = Vec::with_capacity(members.len());
        for member in &members {
            if in_chunk.insert(member.key.as_str()) {
                candidates.push(member);
            } else {
                self.counts.duplicates += 1;
            }
        }
        let conn = &mut *self.conn;
        let sql = format!(
            "INSERT INTO temp.stage (email, hash, payload) VALUES {}",
            placeholders(candidates.len(), 3)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for m in &candidates {
            query = query
                .bind(m.key.as_str())
                .bind(&m.fingerprint[..])
                .bind(m.payload.as_str());
        }
        query.execute(&mut *conn).await.doing("staging members")?;
        // Members seen in earlier chunks or segments are duplicates too.
        let earlier = sqlx::query(
            "DELETE FROM temp.stage WHERE EXISTS \
             (SELECT 1 FROM temp.seen s WHERE s.email = stage.email)",
        )
        .execute(&mut *conn)
        .await
        .doing("de-duplicating members")?
        .rows_affected();
        self.counts.duplicates += earlier;
        let fresh = sqlx::query("INSERT INTO temp.seen (email) SELECT email FROM temp.stage")
            .execute(&mut *conn)
            .await
            .doing("de-duplicating members")?
            .rows_affected();
        self.totals.members += fresh;
        let planned = sqlx::query(
            "INSERT INTO temp.outbox (email, hash, kind, payload) \
             SELECT s.email, s.hash, CASE WHEN d.email IS NULL THEN 'new' ELSE 'changed' END, \
             s.payload FROM temp.stage s LEFT JOIN delivery_state d \
             ON d.export_id = ?1 AND d.email = s.email \
             WHERE d.email IS NULL OR d.status != 'delivered' OR d.hash != s.hash \
             OR d.run_id < ?2 ORDER BY s.rowid",
        )
        .bind(self.export_id)
        // Without `--full` no run id is below the floor.
        .bind(self.full_floor.unwrap_or(i64::MIN))
        .execute(&mut *conn)
        .await
        .doing("planning deliveries")?
        .rows_affected();
        sqlx::query("DELETE FROM temp.stage")
            .execute(&mut *conn)
            .await
            .doing("planning deliveries")?;
        self.counts.planned += planned;
        self.counts.unchanged += fresh - planned;
        Ok(())
    }

    /// Splits what the outbox holds into new and changed members, once every segment is read.
    async fn count_planned(&mut self) -> Result<(), PipelineError> {
        let (new, changed): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*) FILTER (WHERE kind = 'new'), COUNT(*) FILTER (WHERE kind = 'changed') \
             FROM temp.outbox",
        )
        .fetch_one(&mut *self.conn)
        .await
        .doing("counting planned deliveries")?;
        self.totals.new = new as u64;
        self.totals.changed = changed as u64;
        Ok(())
    }

    /// Members delivered earlier who are in no segment now. With `unsubscribe` they join the
    /// outbox; with `keep` they are only counted (and forgotten when the run finishes).
    async fn plan_leavers(&mut self, on_leave: OnLeave) -> Result<(), PipelineError> {
        self.count_planned().await?;
        // One pass over the delivery state finds them all; what follows reads this short list.
        let leaving = sqlx::query(
            "INSERT INTO temp.leavers (email, hash, delivered) \
             SELECT d.email, d.hash, d.status = 'delivered' FROM delivery_state d \
             WHERE d.export_id = ? AND NOT EXISTS \
             (SELECT 1 FROM temp.seen s WHERE s.email = d.email)",
        )
        .bind(self.export_id)
        .execute(&mut *self.conn)
        .await
        .doing("finding members who left")?
        .rows_affected();
        self.totals.leaving = leaving;
        if on_leave == OnLeave::Unsubscribe && leaving > 0 {
            // The payload needs only the email and the list; build it in SQL to stay streaming.
            const SLOT: &str = "acexport-email-slot";
            let template = self.matching.unsubscribe_payload(SLOT);
            let (before, after) = template
                .split_once(&format!("\"{SLOT}\""))
                .ok_or_else(|| PipelineError::Internal("unsubscribe template".to_owned()))?;
            sqlx::query(
                "INSERT INTO temp.outbox (email, hash, kind, payload) SELECT email, hash, \
                 'leave', ? || json_quote(email) || ? FROM temp.leavers WHERE delivered \
                 ORDER BY email",
            )
            .bind(before.to_owned())
            .bind(after.to_owned())
            .execute(&mut *self.conn)
            .await
            .doing("planning unsubscribes")?;
        }
        Ok(())
    }
}

/// Forgets members who left (on-leave `keep`, and failed leavers under `unsubscribe`). The
/// leavers' status is the one they had when the run planned: delivery changes no leaver's
/// status (a confirmed unsubscribe deletes the row, a failed one leaves it as it was).
pub async fn forget_leavers(
    conn: &mut SqliteConnection,
    export_id: i64,
    only_undelivered: bool,
) -> Result<u64, PipelineError> {
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .doing("forgetting members who left")?;
    let result = sqlx::query(
        "DELETE FROM delivery_state WHERE export_id = ? AND email IN \
         (SELECT email FROM temp.leavers WHERE ? = 0 OR NOT delivered)",
    )
    .bind(export_id)
    .bind(only_undelivered)
    .execute(&mut *conn)
    .await
    .doing("forgetting members who left");
    match result {
        Ok(done) => {
            sqlx::query("COMMIT")
                .execute(&mut *conn)
                .await
                .doing("forgetting members who left")?;
            Ok(done.rows_affected())
        }
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(e.into())
        }
    }
}
