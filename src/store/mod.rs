//! The SQLite store: definitions (connections, segments, exports), per-export delivery state,
//! run history and the daemon's queue. One file per table family.
//!
//! Durability choices (see `../shared/reference/reliability.md` §3): WAL, `synchronous=FULL`
//! (a saved definition or confirmed batch must survive power loss), a busy timeout, foreign
//! keys, and `BEGIN IMMEDIATE` for every write transaction so concurrent writers (CLI and
//! daemon) wait for each other instead of failing with SQLITE_BUSY_SNAPSHOT.
//!
//! Privacy choices: `secure_delete` overwrites deleted rows (a removed export's emails in its
//! delivery state) with zeros instead of leaving them in free pages, and a removal empties the
//! write-ahead log, which still holds older copies of those pages. The folder is guarded by
//! [`folder`].
//!
//! Faults (a full disk, a read-only file, a lock held too long, a vanished file, an I/O
//! error) are told apart from bugs and said once, naming the file (see [`faults`]). A pooled
//! connection a failed commit left inside a transaction is closed rather than reused, so one
//! fault is not followed by "non-zero transaction depth" on every later write.

pub mod alerts;
pub mod connections;
pub mod delivery;
pub mod exports;
pub mod faults;
mod folder;
pub mod locks;
pub mod queue;
pub mod runs;
pub mod segments;
pub mod words;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Sqlite, Transaction};

pub use connections::ConnectionDef;
pub use exports::ExportDef;
pub use faults::Fault;
pub use runs::{IssueKind, RunCounts, RunIssue, RunRecord, RunStatus, TriggerKind};
pub use segments::SegmentDef;

/// Migrations embedded at build time (build.rs re-runs on change).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Page cache of each pooled connection: 512 KiB (SQLite's default is 2 MiB).
const POOL_CACHE_SIZE: &str = "-512";
/// How long a writer waits for another writer before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long emptying the write-ahead log after a removal waits for readers of an older
/// snapshot (a run in progress) to move on: short, since the command that removed waits for it
/// and the daemon's writers wait behind it.
const WAL_EMPTY_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the database {path}: {source}")]
    Connect { path: PathBuf, source: sqlx::Error },
    /// The database was there before (its `-wal`, `-shm` or `locks` remain) and is gone:
    /// creating an empty one in its place would lose every definition and delivery state.
    #[error(
        "the database {path} is missing, but acexport has used it before ({trace} is still \
         there): it was moved or deleted. Put it back, then run again; to start afresh with an \
         empty database on purpose, create an empty file in its place first (`touch {path}`)",
        trace = .trace.display(), path = .path.display()
    )]
    Vanished { path: PathBuf, trace: PathBuf },
    #[error("cannot create or check the mode of {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the state folder {path} has mode {mode:04o}: others can enter it or its group can write \
         it. It belongs to uid {owner}, not to the user running acexport, so it was left as it \
         is; fix it with `chmod {fix:04o} {path}`"
    )]
    LooseFolder {
        path: PathBuf,
        mode: u32,
        owner: u32,
        fix: u32,
    },
    #[error(
        "the database {path} was written by a newer acexport (schema version {found}; this \
         build knows up to {known}). Upgrade acexport, or restore a backup made by this version. \
         The database was not modified."
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("cannot migrate the database {path}: {source}")]
    Migrate {
        path: PathBuf,
        source: sqlx::migrate::MigrateError,
    },
    #[error("database error while {doing}: {source}")]
    Query {
        doing: &'static str,
        source: sqlx::Error,
    },
    /// A fault of the disk, file or another process, said with its fix. The sqlx error is kept
    /// for `Debug` only: its text ("(code: 13) database or disk is full") adds nothing a user
    /// can act on. `path` is filled in where the store's path is known ([`StoreError::at`]).
    #[error("{}", fault.describe(path.as_deref(), doing))]
    Fault {
        path: Option<PathBuf>,
        fault: Fault,
        doing: &'static str,
        cause: sqlx::Error,
    },
}

impl StoreError {
    /// A sqlx error while `doing`: a fault when it is one.
    pub fn from_sqlx(doing: &'static str, error: sqlx::Error) -> StoreError {
        match faults::fault_of(&error) {
            Some(fault) => StoreError::Fault {
                path: None,
                fault,
                doing,
                cause: error,
            },
            None => StoreError::Query {
                doing,
                source: error,
            },
        }
    }

    /// Names the database in a fault that does not yet, and tells a full disk from another I/O
    /// error by looking at it.
    pub fn at(self, database: &Path) -> StoreError {
        match self {
            StoreError::Fault {
                path: None,
                fault,
                doing,
                cause,
            } => StoreError::Fault {
                fault: fault.on_disk_of(database),
                path: Some(database.to_path_buf()),
                doing,
                cause,
            },
            other => other,
        }
    }

    /// The fault behind this error, if it is one.
    pub fn fault(&self) -> Option<Fault> {
        match self {
            StoreError::Fault { fault, .. } => Some(*fault),
            StoreError::Vanished { .. } => Some(Fault::Missing),
            StoreError::Open { source, .. } | StoreError::Folder { source, .. } => {
                faults::fault_of_io(source)
            }
            _ => None,
        }
    }
}

/// Adds what was being done to a sqlx error.
pub trait Doing<T> {
    fn doing(self, doing: &'static str) -> Result<T, StoreError>;
}

impl<T> Doing<T> for Result<T, sqlx::Error> {
    fn doing(self, doing: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::from_sqlx(doing, source))
    }
}

/// The open store. Cheap to clone (the pool is shared).
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
    /// Who the audit log names for changes made through this handle: the process's user, or a
    /// control-socket peer (`as_actor`). Never `$USER`, which anyone can set.
    actor: Arc<str>,
}

impl Store {
    /// Opens (creating it 0600 if missing) and migrates the database at `path`. Its folder is
    /// created owner-only, or tightened or refused when others can enter it (see [`folder`]).
    /// A database written by a newer acexport is refused before anything is written to it.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            folder::ensure_private(dir)?;
        }
        if !path.exists() {
            if let Some(trace) = faults::trace_of_vanished(path) {
                return Err(StoreError::Vanished {
                    path: path.to_path_buf(),
                    trace,
                });
            }
            // Create the file ourselves so it is owner-only from the first byte; SQLite gives
            // the -wal and -shm files the same mode.
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|source| StoreError::Open {
                    path: path.to_path_buf(),
                    source,
                })?;
        } else {
            for sidecar in faults::repair_sidecars(path) {
                tracing::warn!(
                    file = %sidecar.display(),
                    "The database's write-ahead file had lost its write permission (left by a \
                     read-only episode); gave it back"
                );
            }
            folder::ensure_private_files(path)?;
            refuse_newer_schema(path).await?;
        }
        // Two pooled connections with small page caches: SQLite writes one at a time anyway,
        // the pool only writes scattered rows (confirmed batches, progress) and reads
        // definitions, and each connection's cache fills with a large database and grows the
        // process with it. Runs plan on dedicated connections, with SQLite's default cache.
        let options = Self::options(path).pragma("cache_size", POOL_CACHE_SIZE);
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .min_connections(0)
            .after_release(|conn, _| Box::pin(async move { Ok(!left_in_transaction(conn).await) }))
            .connect_with(options)
            .await
            .map_err(|source| match faults::fault_of(&source) {
                Some(_) => StoreError::from_sqlx("opening it", source).at(path),
                None => StoreError::Connect {
                    path: path.to_path_buf(),
                    source,
                },
            })?;
        MIGRATOR.run(&pool).await.map_err(|source| {
            let source = sqlx::Error::Migrate(Box::new(source));
            match faults::fault_of(&source) {
                Some(_) => StoreError::from_sqlx("updating its schema", source).at(path),
                None => match source {
                    sqlx::Error::Migrate(source) => StoreError::Migrate {
                        path: path.to_path_buf(),
                        source: *source,
                    },
                    source => StoreError::Connect {
                        path: path.to_path_buf(),
                        source,
                    },
                },
            }
        })?;
        Ok(Store {
            pool,
            path: path.to_path_buf(),
            actor: crate::identity::current().display().into(),
        })
    }

    /// The same store, recording `actor` in the audit log.
    pub fn as_actor(&self, actor: &str) -> Store {
        Store {
            actor: actor.into(),
            ..self.clone()
        }
    }

    /// Whether a definition in `table` ("connections", "segments" or "exports") has `name`,
    /// ignoring case: "Marketing AC" and "marketing ac" would be one name to the people using
    /// them.
    pub async fn name_taken(&self, table: &'static str, name: &str) -> Result<bool, StoreError> {
        let names: Vec<String> = sqlx::query_scalar(names_query(table))
            .fetch_all(self.pool())
            .await
            .doing("checking a name")?;
        Ok(same_name(&names, name).is_some())
    }

    /// The stored spelling of `name` in `table`: the name itself when stored so, else the one
    /// name equal to it ignoring case (names are unique that way), else `name` as given.
    pub(crate) async fn stored_name(
        &self,
        table: &'static str,
        name: &str,
    ) -> Result<String, StoreError> {
        let names: Vec<String> = sqlx::query_scalar(names_query(table))
            .fetch_all(self.pool())
            .await
            .doing("looking a name up")?;
        Ok(same_name(&names, name).unwrap_or(name).to_owned())
    }

    /// Who changes made through this handle are recorded for.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// Records an action that changes no definition (a run asked for, a cancel) in the audit
    /// log.
    pub async fn record_audit(
        &self,
        action: &str,
        subject: &str,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        audit(&mut tx, &self.actor, action, subject, detail)
            .await
            .map_err(|e| e.at(&self.path))?;
        tx.commit()
            .await
            .doing("writing the audit log")
            .map_err(|e| e.at(&self.path))
    }

    /// The latest audit entries, newest first.
    pub async fn audit_entries(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        sqlx::query_as(
            "SELECT id, at, actor, action, subject, detail FROM audit_log ORDER BY id DESC \
             LIMIT ?",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .doing("reading the audit log")
    }

    fn options(path: &Path) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .pragma("temp_store", "file")
            // Deleted rows are overwritten with zeros, not left in free pages: a removed
            // export's emails must not stay in the file. Its cost is measured by the benchmark.
            .pragma("secure_delete", "ON")
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the lock files live: a `locks` folder beside the database (also the home of the
    /// account budgets that processes share).
    pub fn locks_dir(&self) -> PathBuf {
        let dir = self.path.parent().unwrap_or_else(|| Path::new("."));
        dir.join("locks")
    }

    fn lock_path(&self, name: &str) -> PathBuf {
        self.locks_dir().join(name)
    }

    /// The lock an export holds while it runs.
    pub fn lock_export(&self, export_id: i64) -> Result<Option<locks::Lock>, StoreError> {
        locks::try_lock(&self.lock_path(&runs::export_lock_name(export_id)))
    }

    /// The lock the daemon holds while it runs.
    pub fn lock_daemon(&self) -> Result<Option<locks::Lock>, StoreError> {
        locks::try_lock(&self.lock_path("daemon.lock"))
    }

    /// A write transaction that takes the write lock up front (`BEGIN IMMEDIATE`).
    pub async fn write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .doing("starting a write transaction")
            .map_err(|e| e.at(&self.path))
    }

    /// A connection of its own, outside the pool, for a run's private temporary tables.
    pub async fn dedicated_connection(&self) -> Result<SqliteConnection, StoreError> {
        Self::options(&self.path)
            .connect()
            .await
            .doing("opening a connection for a run")
            .map_err(|e| e.at(&self.path))
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Whether anything in the store depends on the secrets key: a sealed API key or database
    /// URL, or delivery state fingerprinted with it.
    pub async fn holds_sealed_values(&self) -> Result<bool, StoreError> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM connections) \
             OR EXISTS (SELECT 1 FROM segments WHERE database_sealed IS NOT NULL) \
             OR EXISTS (SELECT 1 FROM delivery_state)",
        )
        .fetch_one(self.pool())
        .await
        .doing("looking for values sealed with the secrets key")
    }

    /// Empties the write-ahead log after rows were removed: its frames still hold the pages as
    /// they were before (a removed export's emails), while `secure_delete` only zeroes the new
    /// copies. A TRUNCATE checkpoint copies every frame into the database and cuts the log to
    /// zero bytes. A reader of an older snapshot (a run in progress) can hold it off; the log
    /// is then emptied when the last process closes the database, and a warning says so. The
    /// removal itself is committed either way, so failures are reported, not returned.
    async fn empty_wal(&self) {
        let emptied = async {
            let mut conn = Self::options(&self.path)
                .busy_timeout(WAL_EMPTY_WAIT)
                .connect()
                .await?;
            let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&mut conn)
                .await?;
            conn.close().await?;
            Ok::<bool, sqlx::Error>(busy == 0)
        }
        .await;
        match emptied {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                database = %self.path.display(),
                "Another process is reading the database: the removed rows stay in its \
                 write-ahead log until every process has closed it"
            ),
            Err(error) => tracing::warn!(
                database = %self.path.display(),
                %error,
                "Cannot empty the write-ahead log: the removed rows stay in it until every \
                 process has closed the database"
            ),
        }
    }
}

/// Whether a connection handed back to the pool is still inside a transaction: a commit that
/// failed (a full disk) can leave SQLite's transaction rolled back while sqlx still counts it
/// open, and every later `BEGIN` on that connection would fail. Such a connection is closed
/// (closing rolls back whatever SQLite still holds); the pool opens a fresh one.
async fn left_in_transaction(conn: &mut SqliteConnection) -> bool {
    // The ping runs after the rollback sqlx queued when the transaction was dropped.
    conn.ping().await.is_err() || conn.is_in_transaction()
}

/// Reads the applied schema version without writing anything and refuses a newer one.
async fn refuse_newer_schema(path: &Path) -> Result<(), StoreError> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(BUSY_TIMEOUT);
    let mut conn = options
        .connect()
        .await
        .map_err(|source| match faults::fault_of(&source) {
            Some(_) => StoreError::from_sqlx("opening it", source).at(path),
            None => StoreError::Connect {
                path: path.to_path_buf(),
                source,
            },
        })?;
    let has_table: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_optional(&mut conn)
    .await
    .doing("reading the schema version")
    .map_err(|e| e.at(path))?;
    if has_table.is_some() {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&mut conn)
                .await
                .doing("reading the schema version")
                .map_err(|e| e.at(path))?;
        let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        if let Some(found) = found.filter(|f| *f > known) {
            let _ = conn.close().await;
            return Err(StoreError::NewerSchema {
                path: path.to_path_buf(),
                found,
                known,
            });
        }
    }
    let _ = conn.close().await;
    Ok(())
}

/// Current time as stored: RFC 3339, UTC, millisecond precision.
pub fn now_text() -> String {
    to_text(Utc::now())
}

pub fn to_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn from_text(s: &str) -> Option<DateTime<Utc>> {
    DateTime::<chrono::FixedOffset>::from_str(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// All names of a definition table.
fn names_query(table: &'static str) -> &'static str {
    match table {
        "connections" => "SELECT name FROM connections",
        "segments" => "SELECT name FROM segments",
        "exports" => "SELECT name FROM exports",
        other => unreachable!("no definition table {other}"),
    }
}

/// The stored name equal to `name`, exactly or else ignoring case. Compared in Rust: SQLite's
/// NOCASE folds ASCII only ("Käufer", "KÄUFER").
fn same_name<'a>(names: &'a [String], name: &str) -> Option<&'a str> {
    if let Some(exact) = names.iter().find(|n| *n == name) {
        return Some(exact);
    }
    let wanted = name.to_lowercase();
    names
        .iter()
        .find(|n| n.to_lowercase() == wanted)
        .map(String::as_str)
}

/// Whether a definition in `table` has `name`, ignoring case, inside a write transaction: two
/// concurrent adds of "Big" and "big" cannot both pass it.
pub(crate) async fn name_taken_in(
    tx: &mut Transaction<'static, Sqlite>,
    table: &'static str,
    name: &str,
) -> Result<bool, StoreError> {
    let names: Vec<String> = sqlx::query_scalar(names_query(table))
        .fetch_all(&mut **tx)
        .await
        .doing("checking a name")?;
    Ok(same_name(&names, name).is_some())
}

/// One entry of the audit log: who changed what, never a profile value or a secret.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: Option<String>,
}

/// Appends a PII-free entry to the audit log inside the caller's transaction.
pub async fn audit(
    tx: &mut Transaction<'static, Sqlite>,
    actor: &str,
    action: &str,
    subject: &str,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(now_text())
    .bind(actor)
    .bind(action)
    .bind(subject)
    .bind(detail)
    .execute(&mut **tx)
    .await
    .doing("writing the audit log")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_name_is_found_exactly_first_then_ignoring_case_in_any_script() {
        let names = vec![
            "Weekly".to_owned(),
            "weekly".to_owned(),
            "Käufer".to_owned(),
        ];
        assert_eq!(same_name(&names, "weekly"), Some("weekly"));
        assert_eq!(same_name(&names, "WEEKLY"), Some("Weekly"));
        assert_eq!(same_name(&names, "KÄUFER"), Some("Käufer"));
        assert_eq!(same_name(&names, "monthly"), None);
    }

    #[tokio::test]
    async fn a_new_database_is_owner_only_and_in_wal_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state/acexport.db");
        let store = Store::open(&path).await.expect("open");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(store.pool())
            .await
            .expect("q");
        assert_eq!(journal, "wal");
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(store.pool())
            .await
            .expect("q");
        assert_eq!(sync, 2, "synchronous=FULL");
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(store.pool())
            .await
            .expect("q");
        assert_eq!(fk, 1);
    }

    #[tokio::test]
    async fn a_database_from_a_newer_version_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("acexport.db");
        let store = Store::open(&path).await.expect("open");
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, installed_on, success, \
             checksum, execution_time) VALUES (999999, 'future', datetime('now'), 1, x'00', 0)",
        )
        .execute(store.pool())
        .await
        .expect("insert");
        store.close().await;
        let before = std::fs::read(&path).expect("read");
        let err = Store::open(&path).await.expect_err("refused");
        assert!(err.to_string().contains("newer acexport"), "{err}");
        assert_eq!(
            before,
            std::fs::read(&path).expect("read"),
            "file unchanged"
        );
    }

    #[tokio::test]
    async fn every_connection_overwrites_deleted_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("acexport.db"))
            .await
            .expect("open");
        let mut dedicated = store.dedicated_connection().await.expect("connection");

        let pooled: i64 = sqlx::query_scalar("PRAGMA secure_delete")
            .fetch_one(store.pool())
            .await
            .expect("q");
        let own: i64 = sqlx::query_scalar("PRAGMA secure_delete")
            .fetch_one(&mut dedicated)
            .await
            .expect("q");

        assert_eq!((pooled, own), (1, 1));
    }

    #[tokio::test]
    async fn a_store_holds_sealed_values_once_a_connection_or_sealed_database_url_is_saved() {
        let (_dir, store, connection_id) = connections::tests::store_with_connection().await;
        assert!(
            store.holds_sealed_values().await.expect("q"),
            "a connection"
        );

        sqlx::query("DELETE FROM connections WHERE id = ?")
            .bind(connection_id)
            .execute(store.pool())
            .await
            .expect("delete");
        assert!(!store.holds_sealed_values().await.expect("q"), "nothing");

        let segment = segments::tests::insert(&store, "db", segments::SegmentKind::Sql).await;
        assert!(
            !store.holds_sealed_values().await.expect("q"),
            "no sealed URL"
        );
        sqlx::query("UPDATE segments SET database_sealed = x'01' WHERE id = ?")
            .bind(segment)
            .execute(store.pool())
            .await
            .expect("update");
        assert!(
            store.holds_sealed_values().await.expect("q"),
            "a sealed URL"
        );
    }

    #[tokio::test]
    async fn reopening_an_existing_database_keeps_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("acexport.db");
        Store::open(&path).await.expect("open").close().await;
        assert!(Store::open(&path).await.is_ok());
    }
}
