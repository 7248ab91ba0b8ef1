//! Run history: the run row exists before any work, progress is written per batch and the
//! finish is recorded on every path. A run left `running` by a dead process is recovered as
//! `interrupted` and resumed by the next run of its export.

use serde::Serialize;
use sqlx::Row;

use super::locks::Lock;
use super::{Doing, Store, StoreError, now_text};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Succeeded,
    Partial,
    Failed,
    Cancelled,
    Interrupted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Partial => "partial",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Interrupted => "interrupted",
        }
    }
    pub fn parse(s: &str) -> RunStatus {
        match s {
            "running" => RunStatus::Running,
            "succeeded" => RunStatus::Succeeded,
            "partial" => RunStatus::Partial,
            "cancelled" => RunStatus::Cancelled,
            "interrupted" => RunStatus::Interrupted,
            _ => RunStatus::Failed,
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts of a run, as printed by `export run --json` and stored per batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RunCounts {
    pub rows_read: u64,
    pub rejected: u64,
    pub duplicates: u64,
    pub unchanged: u64,
    /// New and changed members planned for delivery.
    pub planned: u64,
    /// Contacts sent in accepted bulk imports (before confirmation).
    pub sent: u64,
    pub upserted: u64,
    pub unsubscribed: u64,
    pub failed: u64,
    /// HTTP requests made to ActiveCampaign, retries included.
    pub requests: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub export_id: i64,
    pub export: String,
    pub trigger: String,
    pub full: bool,
    pub status: RunStatus,
    pub phase: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub counts: RunCounts,
    pub resumes_run_id: Option<i64>,
    pub error: Option<String>,
}

/// A profile that did not arrive: `rejected` before sending, `failed` at ActiveCampaign.
#[derive(Debug, Clone, Serialize)]
pub struct RunIssue {
    pub kind: String,
    pub source: String,
    pub row: Option<i64>,
    pub email: Option<String>,
    pub reason: String,
}

/// Why a run could not start.
#[derive(Debug)]
pub enum StartRefused {
    /// Another run of this export is in progress (id given).
    AlreadyRunning(i64),
}

fn record_from(row: &sqlx::sqlite::SqliteRow) -> RunRecord {
    let n = |c: &str| row.get::<i64, _>(c) as u64;
    RunRecord {
        id: row.get("id"),
        export_id: row.get("export_id"),
        export: row.get("export"),
        trigger: row.get("trigger"),
        full: row.get("full"),
        status: RunStatus::parse(&row.get::<String, _>("status")),
        phase: row.get("phase"),
        started_at: row.get("started_at"),
        finished_at: row.get("finished_at"),
        counts: RunCounts {
            rows_read: n("rows_read"),
            rejected: n("rejected"),
            duplicates: n("duplicates"),
            unchanged: n("unchanged"),
            planned: n("planned"),
            sent: n("sent"),
            upserted: n("upserted"),
            unsubscribed: n("unsubscribed"),
            failed: n("failed"),
            requests: n("requests"),
        },
        resumes_run_id: row.get("resumes_run_id"),
        error: row.get("error"),
    }
}

const SELECT_RUN: &str =
    "SELECT r.*, e.name AS export FROM runs r JOIN exports e ON e.id = r.export_id";

/// Why a run left `running` without finishing is recorded as `interrupted`.
const INTERRUPTED: &str = "the process running it stopped (crash, kill or power loss)";

/// Marks a run `interrupted` inside the caller's transaction.
async fn mark_interrupted(tx: &mut sqlx::SqliteConnection, id: i64) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE runs SET status = 'interrupted', finished_at = ?, error = ? \
         WHERE id = ? AND status = 'running'",
    )
    .bind(now_text())
    .bind(INTERRUPTED)
    .bind(id)
    .execute(tx)
    .await
    .doing("recovering an interrupted run")?;
    Ok(())
}

impl Store {
    /// Creates the run row and returns it with the export's run lock, which the caller holds
    /// until the run is finished. A run of this export still `running` while the lock is free
    /// was left by a process that died: it is marked `interrupted`, and the new run resumes the
    /// latest interrupted run that no later run finished (its `full` flag carries over).
    pub async fn start_run(
        &self,
        export_id: i64,
        trigger: &str,
        full: bool,
    ) -> Result<Result<(RunRecord, Lock), StartRefused>, StoreError> {
        let Some(lock) = self.lock_export(export_id)? else {
            let running = self.running_run(export_id).await?.map_or(0, |r| r.id);
            return Ok(Err(StartRefused::AlreadyRunning(running)));
        };
        let mut tx = self.write().await?;
        let stale: Option<i64> =
            sqlx::query_scalar("SELECT id FROM runs WHERE export_id = ? AND status = 'running'")
                .bind(export_id)
                .fetch_optional(&mut *tx)
                .await
                .doing("checking for a running run")?;
        if let Some(id) = stale {
            mark_interrupted(&mut tx, id).await?;
        }
        let last: Option<(i64, String, bool)> = sqlx::query_as(
            "SELECT id, status, full FROM runs WHERE export_id = ? ORDER BY id DESC LIMIT 1",
        )
        .bind(export_id)
        .fetch_optional(&mut *tx)
        .await
        .doing("reading the last run")?;
        let (resumes, full) = match last {
            Some((id, status, was_full)) if status == "interrupted" => (Some(id), full || was_full),
            _ => (None, full),
        };
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO runs (export_id, trigger, full, status, started_at, resumes_run_id, \
             owner_pid) VALUES (?, ?, ?, 'running', ?, ?, ?) RETURNING id",
        )
        .bind(export_id)
        .bind(trigger)
        .bind(full)
        .bind(now_text())
        .bind(resumes)
        .bind(i64::from(std::process::id()))
        .fetch_one(&mut *tx)
        .await
        .doing("creating a run")?;
        tx.commit().await.doing("creating a run")?;
        let run = self.run(id).await?.ok_or(StoreError::Query {
            doing: "reading a new run",
            source: sqlx::Error::RowNotFound,
        })?;
        Ok(Ok((run, lock)))
    }

    pub async fn run(&self, id: i64) -> Result<Option<RunRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT_RUN} WHERE r.id = ?")))
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .doing("reading a run")?;
        Ok(row.as_ref().map(record_from))
    }

    /// Latest runs first, optionally of one export.
    pub async fn runs(
        &self,
        export_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_RUN} WHERE (?1 IS NULL OR r.export_id = ?1) ORDER BY r.id DESC LIMIT ?2"
        )))
        .bind(export_id)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
        .doing("listing runs")?;
        Ok(rows.iter().map(record_from).collect())
    }

    /// The running run of an export, if any.
    pub async fn running_run(&self, export_id: i64) -> Result<Option<RunRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_RUN} WHERE r.export_id = ? AND r.status = 'running'"
        )))
        .bind(export_id)
        .fetch_optional(self.pool())
        .await
        .doing("reading the running run")?;
        Ok(row.as_ref().map(record_from))
    }

    pub async fn set_run_phase(&self, id: i64, phase: &str) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE runs SET phase = ? WHERE id = ?")
            .bind(phase)
            .bind(id)
            .execute(&mut *tx)
            .await
            .doing("recording a run's phase")?;
        tx.commit().await.doing("recording a run's phase")?;
        Ok(())
    }

    /// Writes a run's counts inside the caller's transaction (with the batch they describe).
    pub async fn write_run_counts(
        tx: &mut sqlx::SqliteConnection,
        id: i64,
        c: &RunCounts,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE runs SET rows_read = ?, rejected = ?, duplicates = ?, unchanged = ?, \
             planned = ?, sent = ?, upserted = ?, unsubscribed = ?, failed = ?, requests = ? \
             WHERE id = ?",
        )
        .bind(c.rows_read as i64)
        .bind(c.rejected as i64)
        .bind(c.duplicates as i64)
        .bind(c.unchanged as i64)
        .bind(c.planned as i64)
        .bind(c.sent as i64)
        .bind(c.upserted as i64)
        .bind(c.unsubscribed as i64)
        .bind(c.failed as i64)
        .bind(c.requests as i64)
        .bind(id)
        .execute(tx)
        .await
        .doing("recording a run's progress")?;
        Ok(())
    }

    /// Records the end of a run with its final counts.
    pub async fn finish_run(
        &self,
        id: i64,
        status: RunStatus,
        counts: &RunCounts,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        Self::write_run_counts(&mut tx, id, counts).await?;
        sqlx::query(
            "UPDATE runs SET status = ?, phase = 'finished', finished_at = ?, error = ?, \
             owner_pid = NULL WHERE id = ?",
        )
        .bind(status.as_str())
        .bind(now_text())
        .bind(error)
        .bind(id)
        .execute(&mut *tx)
        .await
        .doing("finishing a run")?;
        tx.commit().await.doing("finishing a run")?;
        Ok(())
    }

    /// Appends issues (rejected or failed profiles) of a run.
    pub async fn record_issues(
        tx: &mut sqlx::SqliteConnection,
        run_id: i64,
        issues: &[RunIssue],
    ) -> Result<(), StoreError> {
        for issue in issues {
            sqlx::query(
                "INSERT INTO run_issues (run_id, kind, source, row_number, masked_email, reason) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(run_id)
            .bind(&issue.kind)
            .bind(&issue.source)
            .bind(issue.row)
            .bind(&issue.email)
            .bind(&issue.reason)
            .execute(&mut *tx)
            .await
            .doing("recording rejected and failed profiles")?;
        }
        Ok(())
    }

    pub async fn run_issues(&self, run_id: i64, limit: u32) -> Result<Vec<RunIssue>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, source, row_number, masked_email, reason FROM run_issues \
             WHERE run_id = ? ORDER BY rowid LIMIT ?",
        )
        .bind(run_id)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await
        .doing("reading a run's rejected and failed profiles")?;
        Ok(rows
            .iter()
            .map(|r| RunIssue {
                kind: r.get(0),
                source: r.get(1),
                row: r.get(2),
                email: r.get(3),
                reason: r.get(4),
            })
            .collect())
    }

    /// Cancels an export's queued run (removed from the queue) and asks its running run to
    /// stop at its next batch boundary. Returns (a queued run was removed, the running run).
    pub async fn cancel_export(&self, export_id: i64) -> Result<(bool, Option<i64>), StoreError> {
        let mut tx = self.write().await?;
        let dequeued = sqlx::query("DELETE FROM run_queue WHERE export_id = ?")
            .bind(export_id)
            .execute(&mut *tx)
            .await
            .doing("removing a queued run")?
            .rows_affected()
            > 0;
        let running: Option<i64> = sqlx::query_scalar(
            "UPDATE runs SET cancel_requested = 1 WHERE export_id = ? AND status = 'running' \
             RETURNING id",
        )
        .bind(export_id)
        .fetch_optional(&mut *tx)
        .await
        .doing("requesting a cancel")?;
        tx.commit().await.doing("requesting a cancel")?;
        Ok((dequeued, running))
    }

    pub async fn cancel_requested(&self, run_id: i64) -> Result<bool, StoreError> {
        sqlx::query_scalar("SELECT cancel_requested FROM runs WHERE id = ?")
            .bind(run_id)
            .fetch_one(self.pool())
            .await
            .doing("checking for a cancel request")
    }

    /// At daemon start: every run still `running` whose export lock is free (its process is
    /// gone) becomes `interrupted`.
    pub async fn recover_stale_runs(&self) -> Result<Vec<i64>, StoreError> {
        let running: Vec<(i64, i64)> =
            sqlx::query_as("SELECT id, export_id FROM runs WHERE status = 'running'")
                .fetch_all(self.pool())
                .await
                .doing("looking for interrupted runs")?;
        let mut recovered = Vec::new();
        for (id, export_id) in running {
            let Some(_lock) = self.lock_export(export_id)? else {
                continue; // a live process runs it
            };
            let mut tx = self.write().await?;
            mark_interrupted(&mut tx, id).await?;
            tx.commit().await.doing("recovering an interrupted run")?;
            recovered.push(id);
        }
        Ok(recovered)
    }

    /// Exports whose latest run is `interrupted`: the daemon resumes them at start.
    pub async fn interrupted_exports(&self) -> Result<Vec<i64>, StoreError> {
        sqlx::query_scalar(
            "SELECT r.export_id FROM runs r WHERE r.id = (SELECT MAX(id) FROM runs x \
             WHERE x.export_id = r.export_id) AND r.status = 'interrupted'",
        )
        .fetch_all(self.pool())
        .await
        .doing("looking for interrupted runs")
    }

    /// The most recent finished run per export, for `status`.
    pub async fn last_run(&self, export_id: i64) -> Result<Option<RunRecord>, StoreError> {
        Ok(self.runs(Some(export_id), 1).await?.into_iter().next())
    }
}
