//! The daemon's run queue, its schedule marks and its heartbeat. The queue lives in the
//! database so nothing queued is lost by a restart; one entry per export coalesces triggers.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Doing, Store, StoreError, TriggerKind, from_text, now_text, to_text};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct QueuedRun {
    pub id: i64,
    pub export_id: i64,
    pub trigger: TriggerKind,
    pub full: bool,
    pub requested_at: String,
    pub requested_by: Option<String>,
}

/// An enabled export as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct ScheduleCandidate {
    pub export_id: i64,
    pub name: String,
    /// The export's own schedule; `None` follows the system refresh.
    pub schedule: Option<String>,
    /// The export's own time zone; `None` follows `schedule.timezone`.
    pub timezone: Option<String>,
    /// The schedule (with its time zone) the last slot counted for, and that slot.
    pub mark: Option<(String, DateTime<Utc>)>,
}

/// The daemon's row: who runs, since when, last heartbeat and what it is doing.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DaemonState {
    pub pid: i64,
    pub started_at: String,
    pub heartbeat: String,
    pub status: String,
}

/// A heartbeat older than this means the daemon is gone (it beats every few seconds).
pub const HEARTBEAT_STALE_SECS: i64 = 30;

impl DaemonState {
    /// The daemon is beating. (A heartbeat, not a process id: other users may not see the
    /// daemon's process under `ProtectProc=invisible`.)
    pub fn is_live(&self) -> bool {
        from_text(&self.heartbeat)
            .is_some_and(|t| (Utc::now() - t).num_seconds() < HEARTBEAT_STALE_SECS)
    }
}

impl Store {
    /// Queues a run of an export. An export already queued keeps one entry (a `full` request
    /// upgrades it). With `key` (a signal file's claim key) the request is taken at most once.
    /// Returns false when the key was already consumed.
    pub async fn enqueue_run(
        &self,
        export_id: i64,
        trigger: TriggerKind,
        full: bool,
        key: Option<&str>,
        requested_by: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        if let Some(key) = key
            && !consume_key(&mut tx, key).await?
        {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO run_queue (export_id, trigger, full, requested_at, requested_by) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT(export_id) DO UPDATE SET full = full OR excluded.full",
        )
        .bind(export_id)
        .bind(trigger)
        .bind(full)
        .bind(now_text())
        .bind(requested_by)
        .execute(&mut *tx)
        .await
        .doing("queueing a run")?;
        tx.commit().await.doing("queueing a run")?;
        Ok(true)
    }

    /// Queues the export again behind `blocking_run`, a run of it in another process, unless
    /// that run was asked to cancel: the cancel was meant for the queued run too. Checked in
    /// the same transaction as the insert, so a cancel recorded meanwhile is never missed.
    /// Returns whether it was queued.
    pub async fn requeue_behind(
        &self,
        export_id: i64,
        trigger: TriggerKind,
        full: bool,
        blocking_run: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let queued = sqlx::query(
            "INSERT INTO run_queue (export_id, trigger, full, requested_at) \
             SELECT ?, ?, ?, ? WHERE NOT EXISTS \
             (SELECT 1 FROM runs WHERE id = ? AND cancel_requested = 1) \
             ON CONFLICT(export_id) DO UPDATE SET full = full OR excluded.full",
        )
        .bind(export_id)
        .bind(trigger)
        .bind(full)
        .bind(now_text())
        .bind(blocking_run)
        .execute(&mut *tx)
        .await
        .doing("queueing a run again")?
        .rows_affected()
            > 0;
        tx.commit().await.doing("queueing a run again")?;
        Ok(queued)
    }

    /// Marks a signal-file key consumed without queueing (cancel requests, refusals); false
    /// when it was consumed already.
    pub async fn consume_trigger_key(&self, key: &str) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let fresh = consume_key(&mut tx, key).await?;
        tx.commit().await.doing("recording a signal file")?;
        Ok(fresh)
    }

    /// Takes the oldest queued run whose export is not in `busy`. The row is removed before it
    /// is read, so one that cannot be read (written by another version) is dropped with an
    /// error rather than blocking the queue behind it.
    pub async fn take_queued(&self, busy: &[i64]) -> Result<Option<QueuedRun>, StoreError> {
        use sqlx::FromRow;
        let mut tx = self.write().await?;
        let busy_json = serde_json::to_string(busy).unwrap_or_else(|_| "[]".to_owned());
        let next = sqlx::query(
            "DELETE FROM run_queue WHERE id = (SELECT id FROM run_queue WHERE export_id NOT IN \
             (SELECT value FROM json_each(?)) ORDER BY id LIMIT 1) RETURNING *",
        )
        .bind(busy_json)
        .fetch_optional(&mut *tx)
        .await
        .doing("reading the run queue")?;
        tx.commit().await.doing("reading the run queue")?;
        next.map(|row| QueuedRun::from_row(&row))
            .transpose()
            .doing("reading a queued run (it was dropped)")
    }

    /// Queued runs with their export's name, oldest first.
    pub async fn queued_runs(&self) -> Result<Vec<(QueuedRun, String)>, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            queued: QueuedRun,
            name: String,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT q.*, e.name FROM run_queue q JOIN exports e ON e.id = q.export_id \
             ORDER BY q.id",
        )
        .fetch_all(self.pool())
        .await
        .doing("reading the run queue")?;
        Ok(rows.into_iter().map(|r| (r.queued, r.name)).collect())
    }

    /// Whether a run of the export waits in the queue.
    pub async fn is_queued(&self, export_id: i64) -> Result<bool, StoreError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM run_queue WHERE export_id = ?)")
            .bind(export_id)
            .fetch_one(self.pool())
            .await
            .doing("reading the run queue")
    }

    /// Every enabled export with its own schedule and its schedule mark, in one query: the
    /// daemon asks twice a second and needs nothing else of the definitions.
    pub async fn schedule_candidates(&self) -> Result<Vec<ScheduleCandidate>, StoreError> {
        type CandidateRow = (
            i64,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<CandidateRow> = sqlx::query_as(
            "SELECT e.id, e.name, e.schedule, e.timezone, m.schedule, m.last_slot FROM exports e \
             LEFT JOIN schedule_marks m ON m.export_id = e.id WHERE e.enabled ORDER BY e.name",
        )
        .fetch_all(self.pool())
        .await
        .doing("reading the export schedules")?;
        Ok(rows
            .into_iter()
            .map(
                |(export_id, name, schedule, timezone, marked, slot)| ScheduleCandidate {
                    export_id,
                    name,
                    schedule,
                    timezone,
                    mark: marked.zip(slot.as_deref().and_then(from_text)),
                },
            )
            .collect())
    }

    /// Records that `slot` of `schedule` fired (or, for a new schedule, the time from which
    /// slots count) and, when `queue` is given, queues the run in the same transaction so a
    /// crash can neither lose nor repeat the slot.
    pub async fn mark_schedule(
        &self,
        export_id: i64,
        schedule: &str,
        slot: DateTime<Utc>,
        queue: Option<TriggerKind>,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO schedule_marks (export_id, schedule, last_slot) VALUES (?, ?, ?) \
             ON CONFLICT(export_id) DO UPDATE SET schedule = excluded.schedule, \
             last_slot = excluded.last_slot",
        )
        .bind(export_id)
        .bind(schedule)
        .bind(to_text(slot))
        .execute(&mut *tx)
        .await
        .doing("recording a schedule slot")?;
        if let Some(trigger) = queue {
            sqlx::query(
                "INSERT INTO run_queue (export_id, trigger, full, requested_at) VALUES (?, ?, 0, ?) \
                 ON CONFLICT(export_id) DO NOTHING",
            )
            .bind(export_id)
            .bind(trigger)
            .bind(now_text())
            .execute(&mut *tx)
            .await
            .doing("queueing a scheduled run")?;
        }
        tx.commit().await.doing("recording a schedule slot")?;
        Ok(())
    }

    pub async fn daemon_state(&self) -> Result<Option<DaemonState>, StoreError> {
        sqlx::query_as("SELECT pid, started_at, heartbeat, status FROM daemon_state WHERE id = 1")
            .fetch_optional(self.pool())
            .await
            .doing("reading the daemon state")
    }

    /// Claims the daemon role: takes the daemon lock (held until the returned guard drops)
    /// and records this process. `Err` carries the pid of the daemon already running.
    pub async fn claim_daemon(&self) -> Result<Result<super::locks::Lock, i64>, StoreError> {
        let Some(lock) = self.lock_daemon()? else {
            let pid = self.daemon_state().await?.map_or(0, |d| d.pid);
            return Ok(Err(pid));
        };
        let mut tx = self.write().await?;
        let now = now_text();
        sqlx::query(
            "INSERT INTO daemon_state (id, pid, started_at, heartbeat, status) \
             VALUES (1, ?, ?, ?, 'starting') ON CONFLICT(id) DO UPDATE SET pid = excluded.pid, \
             started_at = excluded.started_at, heartbeat = excluded.heartbeat, status = 'starting'",
        )
        .bind(i64::from(std::process::id()))
        .bind(&now)
        .bind(&now)
        .execute(&mut *tx)
        .await
        .doing("claiming the daemon role")?;
        tx.commit().await.doing("claiming the daemon role")?;
        Ok(Ok(lock))
    }

    pub async fn beat(&self, status: &str) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE daemon_state SET heartbeat = ?, status = ? WHERE id = 1 AND pid = ?")
            .bind(now_text())
            .bind(status)
            .bind(i64::from(std::process::id()))
            .execute(&mut *tx)
            .await
            .doing("recording the daemon heartbeat")?;
        tx.commit().await.doing("recording the daemon heartbeat")?;
        Ok(())
    }

    pub async fn release_daemon(&self) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM daemon_state WHERE id = 1 AND pid = ?")
            .bind(i64::from(std::process::id()))
            .execute(&mut *tx)
            .await
            .doing("releasing the daemon role")?;
        tx.commit().await.doing("releasing the daemon role")?;
        Ok(())
    }
}

/// Records a signal-file key inside the caller's transaction; false when already recorded.
async fn consume_key(tx: &mut sqlx::SqliteConnection, key: &str) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO consumed_triggers (key, consumed_at) VALUES (?, ?) ON CONFLICT(key) DO NOTHING",
    )
    .bind(key)
    .bind(now_text())
    .execute(tx)
    .await
    .doing("recording a signal file")?
    .rows_affected();
    Ok(inserted > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::exports::OnLeave;
    use crate::store::exports::tests::test_store_with_export;

    #[tokio::test]
    async fn a_queued_run_that_cannot_be_read_is_dropped_without_blocking_the_queue() {
        let (_dir, store, first) = test_store_with_export("first").await;
        let connection = store
            .export_by_id(first)
            .await
            .expect("read")
            .expect("export");
        let second = crate::store::exports::tests::insert(
            &store,
            connection.connection_id,
            "second",
            OnLeave::Keep,
        )
        .await;
        for id in [first, second] {
            store
                .enqueue_run(id, TriggerKind::SignalFile, false, None, None)
                .await
                .expect("queue");
        }
        sqlx::query("UPDATE run_queue SET trigger = 'telepathy' WHERE export_id = ?")
            .bind(first)
            .execute(store.pool())
            .await
            .expect("update");

        let unreadable = store.take_queued(&[]).await;
        let next = store.take_queued(&[]).await.expect("next").expect("queued");

        assert!(unreadable.is_err_and(|e| e.to_string().contains("telepathy")));
        assert_eq!(next.export_id, second);
        assert!(store.take_queued(&[]).await.expect("empty").is_none());
    }

    #[tokio::test]
    async fn a_run_is_queued_again_behind_another_process_unless_that_run_was_cancelled() {
        let (_dir, store, export_id) = test_store_with_export("weekly").await;
        let (blocking, _lock) = store
            .start_run(export_id, TriggerKind::Manual, false, None)
            .await
            .expect("start");

        let behind_a_live_run = store
            .requeue_behind(export_id, TriggerKind::Schedule, false, blocking.id)
            .await
            .expect("requeue");
        store.cancel_export(export_id).await.expect("cancel");
        let behind_a_cancelled_run = store
            .requeue_behind(export_id, TriggerKind::Schedule, false, blocking.id)
            .await
            .expect("requeue");

        assert!(behind_a_live_run);
        assert!(!behind_a_cancelled_run);
        assert!(!store.is_queued(export_id).await.expect("queue"));
    }
}
