//! Connections to ActiveCampaign accounts.

use sqlx::Row;

use super::words::stored_words;
use super::{Doing, Store, StoreError, now_text};

stored_words! {
    /// The outcome of the last check of a connection's key against ActiveCampaign.
    pub enum ConnectionStatus ("connection status") {
        /// ActiveCampaign accepted the key.
        Verified = "verified",
        /// ActiveCampaign refused the key (revoked, or the user lost access): runs cannot
        /// succeed until it is replaced.
        Rejected = "rejected",
        /// ActiveCampaign could not be reached or answered with an error: the key may still
        /// work.
        Unreachable = "unreachable",
    }
}

/// A sealed secret as stored. Its `Debug` never shows the bytes.
#[derive(Clone, sqlx::Type)]
#[sqlx(transparent)]
pub struct Sealed(pub Vec<u8>);

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealed(..)")
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConnectionDef {
    pub id: i64,
    pub name: String,
    /// `https://HOST` (or `http://` for loopback hosts), without `/api/3`.
    pub base_url: String,
    pub api_key_sealed: Sealed,
    /// Last characters of the key, the only part ever shown.
    pub api_key_hint: String,
    pub allow_contributors: bool,
    pub consent_at: String,
    pub consent_by: String,
    pub ac_user: Option<String>,
    pub status: ConnectionStatus,
    pub status_detail: Option<String>,
    pub checked_at: String,
    pub created_at: String,
    pub updated_at: String,
}

/// What `connection add` stores once the key was verified.
#[derive(Debug)]
pub struct NewConnection<'a> {
    pub name: &'a str,
    pub base_url: &'a str,
    pub api_key_sealed: Sealed,
    pub api_key_hint: &'a str,
    pub allow_contributors: bool,
    pub consent_by: &'a str,
    pub ac_user: &'a str,
}

impl Store {
    pub async fn connection(&self, name: &str) -> Result<Option<ConnectionDef>, StoreError> {
        let name = self.stored_name("connections", name).await?;
        sqlx::query_as("SELECT * FROM connections WHERE name = ?")
            .bind(&name)
            .fetch_optional(self.pool())
            .await
            .doing("reading a connection")
    }

    pub async fn connection_by_id(&self, id: i64) -> Result<Option<ConnectionDef>, StoreError> {
        sqlx::query_as("SELECT * FROM connections WHERE id = ?")
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .doing("reading a connection")
    }

    pub async fn connections(&self) -> Result<Vec<ConnectionDef>, StoreError> {
        sqlx::query_as("SELECT * FROM connections ORDER BY name")
            .fetch_all(self.pool())
            .await
            .doing("listing connections")
    }

    /// Inserts a verified connection; `None` if the name is taken.
    pub async fn insert_connection(&self, c: NewConnection<'_>) -> Result<Option<i64>, StoreError> {
        let mut tx = self.write().await?;
        if super::name_taken_in(&mut tx, "connections", c.name).await? {
            return Ok(None);
        }
        let now = now_text();
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO connections (name, base_url, api_key_sealed, api_key_hint, \
             allow_contributors, consent_at, consent_by, ac_user, status, checked_at, created_at, \
             updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT(name) DO NOTHING RETURNING id",
        )
        .bind(c.name)
        .bind(c.base_url)
        .bind(c.api_key_sealed)
        .bind(c.api_key_hint)
        .bind(c.allow_contributors)
        .bind(&now)
        .bind(c.consent_by)
        .bind(c.ac_user)
        .bind(ConnectionStatus::Verified)
        .bind(&now)
        .bind(&now)
        .bind(&now)
        .fetch_optional(&mut *tx)
        .await
        .doing("saving a connection")?;
        if id.is_some() {
            super::audit(
                &mut tx,
                &self.actor,
                "connection.add",
                c.name,
                Some(c.base_url),
            )
            .await?;
            super::audit(
                &mut tx,
                &self.actor,
                "connection.consent",
                c.name,
                Some("accepted that exports send personal data to ActiveCampaign"),
            )
            .await?;
            super::audit(
                &mut tx,
                &self.actor,
                "connection.share",
                c.name,
                Some(sharing(c.allow_contributors)),
            )
            .await?;
        }
        tx.commit().await.doing("saving a connection")?;
        Ok(id)
    }

    /// Replaces host, key and sharing of a connection after re-verification. A new host may be
    /// another account: the delivery state of its exports is purged so the next runs send
    /// every member there. Returns whether it was purged.
    pub async fn update_connection(&self, c: &ConnectionDef) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let (old_base, old_shared): (String, bool) =
            sqlx::query_as("SELECT base_url, allow_contributors FROM connections WHERE id = ?")
                .bind(c.id)
                .fetch_one(&mut *tx)
                .await
                .doing("updating a connection")?;
        let moved = old_base != c.base_url;
        if moved {
            sqlx::query(
                "DELETE FROM delivery_state WHERE export_id IN \
                 (SELECT id FROM exports WHERE connection_id = ?)",
            )
            .bind(c.id)
            .execute(&mut *tx)
            .await
            .doing("resetting delivery state")?;
        }
        sqlx::query(
            "UPDATE connections SET base_url = ?, api_key_sealed = ?, api_key_hint = ?, \
             allow_contributors = ?, ac_user = ?, status = ?, status_detail = ?, checked_at = ?, \
             updated_at = ? WHERE id = ?",
        )
        .bind(&c.base_url)
        .bind(&c.api_key_sealed)
        .bind(&c.api_key_hint)
        .bind(c.allow_contributors)
        .bind(&c.ac_user)
        .bind(c.status)
        .bind(&c.status_detail)
        .bind(&c.checked_at)
        .bind(now_text())
        .bind(c.id)
        .execute(&mut *tx)
        .await
        .doing("updating a connection")?;
        super::audit(
            &mut tx,
            &self.actor,
            "connection.update",
            &c.name,
            Some(&c.base_url),
        )
        .await?;
        if old_shared != c.allow_contributors {
            super::audit(
                &mut tx,
                &self.actor,
                "connection.share",
                &c.name,
                Some(sharing(c.allow_contributors)),
            )
            .await?;
        }
        tx.commit().await.doing("updating a connection")?;
        if moved {
            self.empty_wal().await;
        }
        Ok(moved)
    }

    /// Records the outcome of a check (`connection test`, a run's preflight).
    pub async fn record_connection_check(
        &self,
        id: i64,
        status: ConnectionStatus,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE connections SET status = ?, status_detail = ?, checked_at = ? WHERE id = ?",
        )
        .bind(status)
        .bind(detail)
        .bind(now_text())
        .bind(id)
        .execute(&mut *tx)
        .await
        .doing("recording a connection check")?;
        tx.commit().await.doing("recording a connection check")?;
        Ok(())
    }

    /// Names of the exports that use a connection.
    pub async fn exports_using_connection(&self, id: i64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT name FROM exports WHERE connection_id = ? ORDER BY name")
            .bind(id)
            .fetch_all(self.pool())
            .await
            .doing("listing exports of a connection")?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }

    /// Removes a connection, its sealed key and, with them, the given exports and every
    /// delivery state and history row they own (cascades), in one transaction, leaving no copy
    /// of them in the database's files (`secure_delete`, then the log emptied).
    pub async fn remove_connection(&self, id: i64, name: &str) -> Result<u64, StoreError> {
        let mut tx = self.write().await?;
        let removed_exports = sqlx::query("DELETE FROM exports WHERE connection_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .doing("removing the exports of a connection")?
            .rows_affected();
        sqlx::query("DELETE FROM connections WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .doing("removing a connection")?;
        let detail = format!("{removed_exports} export(s) removed with it");
        super::audit(
            &mut tx,
            &self.actor,
            "connection.remove",
            name,
            Some(&detail),
        )
        .await?;
        tx.commit().await.doing("removing a connection")?;
        self.empty_wal().await;
        Ok(removed_exports)
    }
}

/// A connection's sharing as the audit log words it.
fn sharing(allow_contributors: bool) -> &'static str {
    if allow_contributors {
        "admins and contributors"
    } else {
        "admins only"
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A fresh store in a temp folder (kept alive by the returned guard) with one connection.
    pub(in crate::store) async fn store_with_connection() -> (tempfile::TempDir, Store, i64) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("acexport.db"))
            .await
            .expect("open");
        let id = store
            .insert_connection(NewConnection {
                name: "crm",
                base_url: "https://example.api-us1.com",
                api_key_sealed: Sealed(vec![1, 2, 3]),
                api_key_hint: "…abcd",
                allow_contributors: false,
                consent_by: "admin",
                ac_user: "Admin",
            })
            .await
            .expect("insert")
            .expect("new name");
        (dir, store, id)
    }

    async fn stored_status(store: &Store, id: i64) -> String {
        sqlx::query_scalar("SELECT status FROM connections WHERE id = ?")
            .bind(id)
            .fetch_one(store.pool())
            .await
            .expect("status")
    }

    #[tokio::test]
    async fn a_new_connection_is_stored_as_verified() {
        let (_dir, store, id) = store_with_connection().await;

        let saved = store
            .connection("crm")
            .await
            .expect("read")
            .expect("exists");

        assert_eq!(saved.status, ConnectionStatus::Verified);
        assert_eq!(stored_status(&store, id).await, "verified");
    }

    #[tokio::test]
    async fn every_connection_status_round_trips_through_the_store_as_its_lowercase_name() {
        let (_dir, store, id) = store_with_connection().await;
        for status in [
            ConnectionStatus::Rejected,
            ConnectionStatus::Unreachable,
            ConnectionStatus::Verified,
        ] {
            store
                .record_connection_check(id, status, Some("detail"))
                .await
                .expect("record");

            let saved = store
                .connection("crm")
                .await
                .expect("read")
                .expect("exists");

            assert_eq!(saved.status, status);
            assert_eq!(stored_status(&store, id).await, status.to_string());
            assert_eq!(serde_json::to_value(status).expect("json"), status.as_str());
        }
    }

    #[tokio::test]
    async fn an_unknown_stored_status_is_an_error_naming_the_column() {
        let (_dir, store, id) = store_with_connection().await;
        sqlx::query("UPDATE connections SET status = 'bogus' WHERE id = ?")
            .bind(id)
            .execute(store.pool())
            .await
            .expect("update");

        let err = store.connection("crm").await.expect_err("unknown status");

        let text = err.to_string();
        assert!(text.contains("\"status\""), "{text}");
        assert!(text.contains("bogus"), "{text}");
    }
}
