//! Alert state: per export and per connection, the state its last run left and the alert that
//! state called for, with whether a channel took it. Read and written in one transaction, so
//! that two runs ending at once (two exports of one rejected key) cannot both alert one change,
//! and kept in the database, so that a restart does not alert again. Which change calls for
//! which alert is decided by the caller (`crate::alerts::decide`); this file only keeps it.

use sqlx::Row;

use super::words::stored_words;
use super::{Doing, Store, StoreError, now_text};

stored_words! {
    /// What ended a failed run, coarsely: a failure of the same kind as the last one is the
    /// same state, and is not alerted again.
    pub enum FailureKind ("failure kind") {
        /// ActiveCampaign refused the connection's API key (HTTP 403).
        KeyRejected = "key-rejected",
        /// ActiveCampaign could not be reached, kept failing or refused the work.
        ActiveCampaign = "activecampaign",
        /// A segment could not be read (a missing file, a broken line, a database error).
        Source = "source",
        /// More valid profiles than `export.max_profiles`.
        TooManyProfiles = "too-many-profiles",
        /// The run could not be prepared (a secret that does not unseal, a definition gone).
        Setup = "setup",
        /// The database could not be used.
        Store = "store",
        /// A bug: a task of the run failed.
        Internal = "internal",
    }
}

stored_words! {
    /// What an alert tells.
    pub enum AlertEvent ("alert event") {
        /// An export's run failed.
        Failed = "failed",
        /// An export's run ended partial: some contacts were not delivered.
        Partial = "partial",
        /// An export's run succeeded after an alerted failure or partial run.
        Recovered = "recovered",
        /// ActiveCampaign refused a connection's API key (one alert per connection).
        KeyRejected = "key-rejected",
        /// ActiveCampaign took a connection's key again after an alerted refusal.
        KeyAccepted = "key-accepted",
        /// A sample sent by `acexport alerts test`.
        Test = "test",
    }
}

stored_words! {
    /// How an export's last finished run ended, as alert state.
    enum Health ("export alert state") {
        Ok = "ok",
        Partial = "partial",
        Failed = "failed",
    }
}

stored_words! {
    /// Whether ActiveCampaign took a connection's key at the last run that tells.
    pub enum KeyState ("connection alert state") {
        Accepted = "accepted",
        Rejected = "rejected",
    }
}

/// An export's alert state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportState {
    /// The last run succeeded.
    Ok,
    /// The last run ended partial.
    Partial,
    /// The last run failed, for this kind of reason.
    Failed(FailureKind),
}

/// A state as the store remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remembered<S> {
    pub state: S,
    /// The alert the state called for, if any.
    pub alert: Option<AlertEvent>,
    /// Whether a channel took that alert.
    pub delivered: bool,
}

/// A state to remember and the alert it calls for (none: remembered silently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change<S> {
    pub state: S,
    pub alert: Option<AlertEvent>,
}

/// Whose alert state a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertSubject {
    Export(i64),
    Connection(i64),
}

/// An alert the store recorded as called for, under a new id, to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertDue {
    pub subject: AlertSubject,
    pub event: AlertEvent,
    /// Random; sent with the alert, and what [`Store::mark_alert_delivered`] is given back.
    pub alert_id: String,
}

/// The changes a finished run calls for, given what the store remembers (export, connection).
pub type Changes = (Option<Change<ExportState>>, Option<Change<KeyState>>);

impl Store {
    /// Reads the alert state of an export and of its connection, lets `decide` choose the
    /// changes, writes them and returns the alerts they call for, all in one write transaction.
    pub async fn change_alert_state(
        &self,
        export_id: i64,
        connection_id: i64,
        run_id: Option<i64>,
        decide: impl FnOnce(Option<Remembered<ExportState>>, Option<Remembered<KeyState>>) -> Changes
        + Send,
    ) -> Result<Vec<AlertDue>, StoreError> {
        const DOING: &str = "recording alert state";
        let mut tx = self.write().await?;
        let export = read_export_state(&mut tx, export_id).await.doing(DOING)?;
        let connection = read_key_state(&mut tx, connection_id).await.doing(DOING)?;
        let (export_change, connection_change) = decide(export, connection);
        let mut due = Vec::new();
        if let Some(change) = export_change {
            let (health, failure) = match change.state {
                ExportState::Ok => (Health::Ok, None),
                ExportState::Partial => (Health::Partial, None),
                ExportState::Failed(kind) => (Health::Failed, Some(kind)),
            };
            let alert_id = change.alert.map(|_| new_alert_id());
            sqlx::query(
                "INSERT INTO export_alert_state (export_id, state, failure, alert, alert_id, \
                 delivered, run_id, changed_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?) \
                 ON CONFLICT(export_id) DO UPDATE SET state = excluded.state, \
                 failure = excluded.failure, alert = excluded.alert, alert_id = excluded.alert_id, \
                 delivered = 0, run_id = excluded.run_id, changed_at = excluded.changed_at",
            )
            .bind(export_id)
            .bind(health)
            .bind(failure)
            .bind(change.alert)
            .bind(&alert_id)
            .bind(run_id)
            .bind(now_text())
            .execute(&mut *tx)
            .await
            .doing(DOING)?;
            if let (Some(event), Some(alert_id)) = (change.alert, alert_id) {
                due.push(AlertDue {
                    subject: AlertSubject::Export(export_id),
                    event,
                    alert_id,
                });
            }
        }
        if let Some(change) = connection_change {
            let alert_id = change.alert.map(|_| new_alert_id());
            sqlx::query(
                "INSERT INTO connection_alert_state (connection_id, state, alert, alert_id, \
                 delivered, run_id, changed_at) VALUES (?, ?, ?, ?, 0, ?, ?) \
                 ON CONFLICT(connection_id) DO UPDATE SET state = excluded.state, \
                 alert = excluded.alert, alert_id = excluded.alert_id, delivered = 0, \
                 run_id = excluded.run_id, changed_at = excluded.changed_at",
            )
            .bind(connection_id)
            .bind(change.state)
            .bind(change.alert)
            .bind(&alert_id)
            .bind(run_id)
            .bind(now_text())
            .execute(&mut *tx)
            .await
            .doing(DOING)?;
            if let (Some(event), Some(alert_id)) = (change.alert, alert_id) {
                due.push(AlertDue {
                    subject: AlertSubject::Connection(connection_id),
                    event,
                    alert_id,
                });
            }
        }
        tx.commit().await.doing(DOING)?;
        Ok(due)
    }

    /// Records that a channel took alert `alert_id`, unless a later state replaced it.
    pub async fn mark_alert_delivered(
        &self,
        subject: AlertSubject,
        alert_id: &str,
    ) -> Result<(), StoreError> {
        const DOING: &str = "recording an alert as delivered";
        let (sql, id) = match subject {
            AlertSubject::Export(id) => (
                "UPDATE export_alert_state SET delivered = 1 WHERE export_id = ? AND alert_id = ?",
                id,
            ),
            AlertSubject::Connection(id) => (
                "UPDATE connection_alert_state SET delivered = 1 \
                 WHERE connection_id = ? AND alert_id = ?",
                id,
            ),
        };
        let mut tx = self.write().await?;
        sqlx::query(sql)
            .bind(id)
            .bind(alert_id)
            .execute(&mut *tx)
            .await
            .doing(DOING)?;
        tx.commit().await.doing(DOING)?;
        Ok(())
    }

    /// An export's alert state, if it has one.
    pub async fn export_alert_state(
        &self,
        export_id: i64,
    ) -> Result<Option<Remembered<ExportState>>, StoreError> {
        let mut conn = self.pool().acquire().await.doing("reading alert state")?;
        read_export_state(&mut conn, export_id)
            .await
            .doing("reading alert state")
    }
}

async fn read_export_state(
    conn: &mut sqlx::SqliteConnection,
    export_id: i64,
) -> Result<Option<Remembered<ExportState>>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT state, failure, alert, delivered FROM export_alert_state WHERE export_id = ?",
    )
    .bind(export_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let failure: Option<FailureKind> = row.try_get("failure")?;
    let state = match (row.try_get::<Health, _>("state")?, failure) {
        (Health::Ok, _) => ExportState::Ok,
        (Health::Partial, _) => ExportState::Partial,
        (Health::Failed, Some(kind)) => ExportState::Failed(kind),
        // Written by this file always with a kind; an edited row reads as an internal failure,
        // so the next real failure is a change and is alerted.
        (Health::Failed, None) => ExportState::Failed(FailureKind::Internal),
    };
    Ok(Some(Remembered {
        state,
        alert: row.try_get("alert")?,
        delivered: row.try_get("delivered")?,
    }))
}

async fn read_key_state(
    conn: &mut sqlx::SqliteConnection,
    connection_id: i64,
) -> Result<Option<Remembered<KeyState>>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT state, alert, delivered FROM connection_alert_state WHERE connection_id = ?",
    )
    .bind(connection_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|row| {
        Ok(Remembered {
            state: row.try_get("state")?,
            alert: row.try_get("alert")?,
            delivered: row.try_get("delivered")?,
        })
    })
    .transpose()
}

/// A random alert id: 16 hex digits, enough to tell alerts apart and retries of one alert
/// from another.
pub fn new_alert_id() -> String {
    let bytes: [u8; 8] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::connections::tests::store_with_connection;

    /// A store with connection `crm` and an export on it.
    async fn store_with_export() -> (tempfile::TempDir, Store, i64, i64) {
        let (dir, store, connection_id) = store_with_connection().await;
        let export_id: i64 = sqlx::query_scalar(
            "INSERT INTO exports (name, connection_id, list_id, list_name, email_column, \
             created_at, updated_at) VALUES ('weekly', ?, 1, 'List', 'email', 'x', 'x') \
             RETURNING id",
        )
        .bind(connection_id)
        .fetch_one(store.pool())
        .await
        .expect("insert export");
        (dir, store, export_id, connection_id)
    }

    fn failed_alerted(
        _: Option<Remembered<ExportState>>,
        _: Option<Remembered<KeyState>>,
    ) -> Changes {
        (
            Some(Change {
                state: ExportState::Failed(FailureKind::Source),
                alert: Some(AlertEvent::Failed),
            }),
            Some(Change {
                state: KeyState::Rejected,
                alert: Some(AlertEvent::KeyRejected),
            }),
        )
    }

    #[tokio::test]
    async fn a_recorded_state_reads_back_with_its_alert_undelivered_until_marked() {
        let (_dir, store, export_id, connection_id) = store_with_export().await;

        let due = store
            .change_alert_state(export_id, connection_id, Some(7), failed_alerted)
            .await
            .expect("record");

        assert_eq!(due.len(), 2);
        assert_eq!(due[0].subject, AlertSubject::Export(export_id));
        assert_eq!(due[0].event, AlertEvent::Failed);
        assert_eq!(due[1].subject, AlertSubject::Connection(connection_id));
        assert_ne!(due[0].alert_id, due[1].alert_id);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen_in = std::sync::Arc::clone(&seen);
        store
            .change_alert_state(
                export_id,
                connection_id,
                Some(8),
                move |export, connection| {
                    *seen_in.lock().expect("lock") = Some((export, connection));
                    (None, None)
                },
            )
            .await
            .expect("read");
        let (export, connection) = seen.lock().expect("lock").take().expect("decided");
        assert_eq!(
            export,
            Some(Remembered {
                state: ExportState::Failed(FailureKind::Source),
                alert: Some(AlertEvent::Failed),
                delivered: false,
            })
        );
        assert_eq!(connection.map(|c| c.state), Some(KeyState::Rejected));

        store
            .mark_alert_delivered(due[0].subject, &due[0].alert_id)
            .await
            .expect("mark");

        let after = store
            .export_alert_state(export_id)
            .await
            .expect("read")
            .expect("row");
        assert!(after.delivered);
    }

    #[tokio::test]
    async fn a_delivery_of_an_older_alert_does_not_mark_the_newer_one() {
        let (_dir, store, export_id, connection_id) = store_with_export().await;
        let first = store
            .change_alert_state(export_id, connection_id, Some(1), failed_alerted)
            .await
            .expect("record");
        store
            .change_alert_state(export_id, connection_id, Some(2), failed_alerted)
            .await
            .expect("record again");

        store
            .mark_alert_delivered(first[0].subject, &first[0].alert_id)
            .await
            .expect("mark");

        let after = store
            .export_alert_state(export_id)
            .await
            .expect("read")
            .expect("row");
        assert!(!after.delivered);
    }

    #[tokio::test]
    async fn removing_the_export_removes_its_alert_state() {
        let (_dir, store, export_id, connection_id) = store_with_export().await;
        store
            .change_alert_state(export_id, connection_id, None, failed_alerted)
            .await
            .expect("record");

        sqlx::query("DELETE FROM exports WHERE id = ?")
            .bind(export_id)
            .execute(store.pool())
            .await
            .expect("delete");

        assert_eq!(
            store.export_alert_state(export_id).await.expect("read"),
            None
        );
    }
}
