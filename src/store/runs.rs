//! Run history: the run row exists before any work, progress is written per batch and the
//! finish is recorded on every path. A run left `running` by a dead process is recovered as
//! `interrupted` and resumed by the next run of its export.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::faults::{self, FinishNote};
use super::locks::Lock;
use super::words::stored_words;
use super::{Doing, Store, StoreError, now_text};

stored_words! {
    /// How a run ended, or that it is still running.
    pub enum RunStatus ("run status") {
        Running = "running",
        Succeeded = "succeeded",
        Partial = "partial",
        Failed = "failed",
        Cancelled = "cancelled",
        Interrupted = "interrupted",
    }
}

stored_words! {
    /// Who or what asked for a run.
    pub enum TriggerKind ("run trigger") {
        /// `acexport export run` in the foreground.
        Manual = "manual",
        /// The export's own schedule or the system refresh schedule.
        Schedule = "schedule",
        /// A signal file (`acexport trigger`, or any tool dropping one).
        SignalFile = "signal-file",
        /// The daemon resuming an interrupted run at start (the first migration's comment calls
        /// it `daemon-resume`; the stored word has always been `resume`).
        Resume = "resume",
    }
}

/// Tests and tools compare a trigger with its word.
impl PartialEq<&str> for TriggerKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

stored_words! {
    /// Why a profile did not arrive.
    pub enum IssueKind ("issue kind") {
        /// Refused by the data matching before sending (bad email, ...).
        Rejected = "rejected",
        /// Sent, and not imported by ActiveCampaign.
        Failed = "failed",
        /// Sent, and refused by ActiveCampaign for good (unsubscribed, bounced, excluded):
        /// not sent again until its values change or the recheck days pass.
        Suppressed = "suppressed",
    }
}

/// Counts of a run, as printed by `export run --json` and stored per batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Contacts ActiveCampaign will not subscribe: found so in this run, or held back since an
    /// earlier one (values unchanged). Not failures: they do not make a run `partial`.
    pub suppressed: u64,
    pub failed: u64,
    /// HTTP requests made to ActiveCampaign, retries included.
    pub requests: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub export_id: i64,
    pub export: String,
    pub trigger: TriggerKind,
    pub full: bool,
    pub status: RunStatus,
    pub phase: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub counts: RunCounts,
    pub resumes_run_id: Option<i64>,
    pub error: Option<String>,
    /// Who asked for it (`None` for a scheduled run).
    pub requested_by: Option<String>,
    /// The process running it, while it runs (`status` checks that it is still there).
    #[serde(skip)]
    pub owner_pid: Option<i64>,
}

/// A profile that did not arrive: `rejected` before sending, `failed` or `suppressed` at
/// ActiveCampaign.
#[derive(Debug, Clone, Serialize)]
pub struct RunIssue {
    pub kind: IssueKind,
    pub source: String,
    pub row: Option<i64>,
    pub email: Option<String>,
    pub reason: String,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("another run of this export is in progress (run {0})")]
    AlreadyRunning(i64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A run row; an unknown status or trigger word is an error, never a guess.
fn record_from(row: &sqlx::sqlite::SqliteRow) -> Result<RunRecord, sqlx::Error> {
    let n = |c: &str| row.try_get::<i64, _>(c).map(|v| v as u64);
    Ok(RunRecord {
        id: row.try_get("id")?,
        export_id: row.try_get("export_id")?,
        export: row.try_get("export")?,
        trigger: row.try_get("trigger")?,
        full: row.try_get("full")?,
        status: row.try_get("status")?,
        phase: row.try_get("phase")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        counts: RunCounts {
            rows_read: n("rows_read")?,
            rejected: n("rejected")?,
            duplicates: n("duplicates")?,
            unchanged: n("unchanged")?,
            planned: n("planned")?,
            sent: n("sent")?,
            upserted: n("upserted")?,
            unsubscribed: n("unsubscribed")?,
            suppressed: n("suppressed")?,
            failed: n("failed")?,
            requests: n("requests")?,
        },
        resumes_run_id: row.try_get("resumes_run_id")?,
        error: row.try_get("error")?,
        requested_by: row.try_get("requested_by")?,
        owner_pid: row.try_get("owner_pid")?,
    })
}

const SELECT_RUN: &str =
    "SELECT r.*, e.name AS export FROM runs r JOIN exports e ON e.id = r.export_id";

/// The name of an export's lock file, in the `locks` folder.
pub(super) fn export_lock_name(export_id: i64) -> String {
    format!("export-{export_id}.lock")
}

/// Why a run left `running` without finishing is recorded as `interrupted`.
const INTERRUPTED: &str = "the process running it stopped (crash, kill or power loss)";

/// Records a run left `running` inside the caller's transaction, whose caller holds the export's
/// lock (`lock_file`): as its process meant to finish it when that process left a note (its
/// finish could not be written: a full disk, say), else `interrupted`.
async fn mark_stale(
    tx: &mut sqlx::SqliteConnection,
    id: i64,
    lock_file: &std::path::Path,
) -> Result<(), StoreError> {
    let Some(note) = faults::read_note(lock_file, id) else {
        return mark_interrupted(tx, id).await;
    };
    let error = match &note.error {
        Some(error) => format!("{error}; {RECORDED_LATE}"),
        None => format!("{RECORDED_LATE} ({})", note.fault),
    };
    Store::write_run_counts(&mut *tx, id, &note.counts).await?;
    sqlx::query(
        "UPDATE runs SET status = ?, phase = 'finished', finished_at = ?, error = ?, \
         owner_pid = NULL WHERE id = ? AND status = 'running'",
    )
    .bind(note.status())
    .bind(now_text())
    .bind(error)
    .bind(id)
    .execute(tx)
    .await
    .doing("recording the finish of a run that could not record it")?;
    faults::clear_note(lock_file);
    Ok(())
}

/// Said of a run whose finish was recorded from its note.
const RECORDED_LATE: &str =
    "its finish could not be written at the time and was recorded when the export next ran";

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
        trigger: TriggerKind,
        full: bool,
        requested_by: Option<&str>,
    ) -> Result<(RunRecord, Lock), StartError> {
        let Some(lock) = self.lock_export(export_id)? else {
            let running = self.running_run(export_id).await?.map_or(0, |r| r.id);
            return Err(StartError::AlreadyRunning(running));
        };
        faults::reserve_note(lock.path());
        let mut tx = self.write().await?;
        let stale: Option<i64> =
            sqlx::query_scalar("SELECT id FROM runs WHERE export_id = ? AND status = 'running'")
                .bind(export_id)
                .fetch_optional(&mut *tx)
                .await
                .doing("checking for a running run")?;
        if let Some(id) = stale {
            mark_stale(&mut tx, id, lock.path()).await?;
        }
        let last: Option<(i64, RunStatus, bool)> = sqlx::query_as(
            "SELECT id, status, full FROM runs WHERE export_id = ? ORDER BY id DESC LIMIT 1",
        )
        .bind(export_id)
        .fetch_optional(&mut *tx)
        .await
        .doing("reading the last run")?;
        let (resumes, full) = match last {
            Some((id, RunStatus::Interrupted, was_full)) => (Some(id), full || was_full),
            _ => (None, full),
        };
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO runs (export_id, trigger, full, status, started_at, resumes_run_id, \
             owner_pid, requested_by) VALUES (?, ?, ?, 'running', ?, ?, ?, ?) RETURNING id",
        )
        .bind(export_id)
        .bind(trigger)
        .bind(full)
        .bind(now_text())
        .bind(resumes)
        .bind(i64::from(std::process::id()))
        .bind(requested_by)
        .fetch_one(&mut *tx)
        .await
        .doing("creating a run")?;
        tx.commit().await.doing("creating a run")?;
        let run = self.run(id).await?.ok_or(StoreError::Query {
            doing: "reading a new run",
            source: sqlx::Error::RowNotFound,
        })?;
        Ok((run, lock))
    }

    pub async fn run(&self, id: i64) -> Result<Option<RunRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("{SELECT_RUN} WHERE r.id = ?")))
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .doing("reading a run")?;
        row.as_ref()
            .map(record_from)
            .transpose()
            .doing("reading a run")
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
        rows.iter()
            .map(record_from)
            .collect::<Result<_, _>>()
            .doing("listing runs")
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
        row.as_ref()
            .map(record_from)
            .transpose()
            .doing("reading the running run")
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
             planned = ?, sent = ?, upserted = ?, unsubscribed = ?, failed = ?, requests = ?, \
             suppressed = ? WHERE id = ?",
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
        .bind(c.suppressed as i64)
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
        self.write_finish(id, status, counts, error)
            .await
            .map_err(|e| e.at(&self.path))
    }

    /// Leaves what a run would have recorded, when its finish cannot be written, in its
    /// export's lock file (which its process still holds) for the next start to record.
    pub fn leave_finish_note(&self, export_id: i64, note: &FinishNote) -> std::io::Result<()> {
        faults::leave_note(&self.lock_path(&export_lock_name(export_id)), note)
    }

    async fn write_finish(
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
        .bind(status)
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
            .bind(issue.kind)
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
        rows.iter()
            .map(|r| {
                Ok(RunIssue {
                    kind: r.try_get(0)?,
                    source: r.try_get(1)?,
                    row: r.try_get(2)?,
                    email: r.try_get(3)?,
                    reason: r.try_get(4)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .doing("reading a run's rejected and failed profiles")
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
            let Some(lock) = self.lock_export(export_id)? else {
                continue; // a live process runs it
            };
            let mut tx = self.write().await?;
            mark_stale(&mut tx, id, lock.path()).await?;
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

    /// When each export's latest succeeded run finished (RFC 3339), by export name.
    pub async fn last_successes(&self) -> Result<Vec<(String, String)>, StoreError> {
        sqlx::query_as(
            "SELECT e.name, MAX(r.finished_at) FROM runs r JOIN exports e ON e.id = r.export_id \
             WHERE r.status = 'succeeded' AND r.finished_at IS NOT NULL GROUP BY e.id",
        )
        .fetch_all(self.pool())
        .await
        .doing("reading the exports' last successes")
    }

    /// The most recent finished run per export, for `status`.
    pub async fn last_run(&self, export_id: i64) -> Result<Option<RunRecord>, StoreError> {
        Ok(self.runs(Some(export_id), 1).await?.into_iter().next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::exports::tests::test_store_with_export;

    async fn stored(store: &Store, column: &str, id: i64) -> String {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT {column} FROM runs WHERE id = ?"
        )))
        .bind(id)
        .fetch_one(store.pool())
        .await
        .expect("stored word")
    }

    #[tokio::test]
    async fn every_trigger_and_status_is_stored_as_its_word_and_read_back() {
        let (_dir, store, export_id) = test_store_with_export("weekly").await;
        let triggers = [
            TriggerKind::Manual,
            TriggerKind::Schedule,
            TriggerKind::SignalFile,
            TriggerKind::Resume,
        ];
        let statuses = [
            RunStatus::Succeeded,
            RunStatus::Partial,
            RunStatus::Failed,
            RunStatus::Cancelled,
            RunStatus::Interrupted,
        ];
        for (trigger, status) in triggers.into_iter().zip(statuses) {
            let (run, _lock) = store
                .start_run(export_id, trigger, false, None)
                .await
                .expect("start");
            assert_eq!(stored(&store, "status", run.id).await, "running");
            store
                .finish_run(run.id, status, &RunCounts::default(), None)
                .await
                .expect("finish");

            let read = store.run(run.id).await.expect("read").expect("exists");

            assert_eq!(stored(&store, "trigger", run.id).await, trigger.as_str());
            assert_eq!(stored(&store, "status", run.id).await, status.as_str());
            assert_eq!((read.trigger, read.status), (trigger, status));
            assert_eq!(
                serde_json::to_value(trigger).expect("json"),
                trigger.as_str()
            );
        }
    }

    #[tokio::test]
    async fn an_unknown_stored_status_is_an_error_not_a_failed_run() {
        let (_dir, store, export_id) = test_store_with_export("weekly").await;
        let (run, _lock) = store
            .start_run(export_id, TriggerKind::Manual, false, None)
            .await
            .expect("start");
        sqlx::query("UPDATE runs SET status = 'exploded' WHERE id = ?")
            .bind(run.id)
            .execute(store.pool())
            .await
            .expect("update");

        let err = store.run(run.id).await.expect_err("unknown status");

        assert!(err.to_string().contains("exploded"), "{err}");
    }

    #[tokio::test]
    async fn issue_kinds_are_stored_as_their_words() {
        let (_dir, store, export_id) = test_store_with_export("weekly").await;
        let (run, _lock) = store
            .start_run(export_id, TriggerKind::Manual, false, None)
            .await
            .expect("start");
        let issue = |kind| RunIssue {
            kind,
            source: "members".to_owned(),
            row: Some(2),
            email: Some("j***@example.com".to_owned()),
            reason: "email has no @".to_owned(),
        };
        let mut tx = store.write().await.expect("write");
        Store::record_issues(
            &mut tx,
            run.id,
            &[issue(IssueKind::Rejected), issue(IssueKind::Failed)],
        )
        .await
        .expect("record");
        tx.commit().await.expect("commit");

        let words: Vec<String> =
            sqlx::query_scalar("SELECT kind FROM run_issues WHERE run_id = ? ORDER BY rowid")
                .bind(run.id)
                .fetch_all(store.pool())
                .await
                .expect("kinds");
        let read = store.run_issues(run.id, 10).await.expect("issues");

        assert_eq!(words, ["rejected", "failed"]);
        assert_eq!(
            read.iter().map(|i| i.kind).collect::<Vec<_>>(),
            [IssueKind::Rejected, IssueKind::Failed]
        );
    }

    #[tokio::test]
    async fn a_cancel_removes_the_queued_run_and_flags_the_running_one() {
        let (_dir, store, export_id) = test_store_with_export("weekly").await;
        let (run, _lock) = store
            .start_run(export_id, TriggerKind::Manual, false, None)
            .await
            .expect("start");
        store
            .enqueue_run(export_id, TriggerKind::SignalFile, false, None, None)
            .await
            .expect("queue");

        let (dequeued, flagged) = store.cancel_export(export_id).await.expect("cancel");

        assert_eq!((dequeued, flagged), (true, Some(run.id)));
        assert!(store.cancel_requested(run.id).await.expect("flag"));
        assert!(!store.is_queued(export_id).await.expect("queue"));
    }
}
