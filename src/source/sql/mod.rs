//! SQL segments: a query run against the user's SQLite or PostgreSQL database, never able to
//! write to it. The query must be a single SELECT (`statement.rs`: no `VACUUM INTO`, `ATTACH`,
//! `COPY ... TO` or second statement); SQLite files are opened read-only (`mode=ro`) with
//! `query_only` on; PostgreSQL sessions default to read-only transactions and the query runs
//! inside `BEGIN READ ONLY`. Off loopback a PostgreSQL server's certificate is verified unless
//! the URL says otherwise (`tls.rs`). Rows are streamed by a task that owns the connection, so a
//! big result never sits in memory: PostgreSQL's with sqlx's `fetch`, SQLite's in chunks on a
//! blocking thread (`sqlite_rows.rs`).
//!
//! Every result column gets its text rule from its type when the query is prepared, before
//! any row is read. A requested column whose type has no rule (BYTEA, a BLOB column...) stops
//! the source with a [`SourceError::NotExportable`]; a single value its rule cannot read is a
//! row error naming the column.
//!
//! Files: this one opens the database and streams the rows; `statement.rs` checks that the query
//! is one read statement; `tls.rs` picks PostgreSQL's sslmode; `types.rs` decides each column's
//! rule, `text.rs` applies it to each value (`pg_binary.rs` for PostgreSQL's binary forms,
//! `sqlite_rows.rs` for SQLite's);
//! `message.rs` words database errors; the redaction of URLs and driver messages is
//! `crate::redact`'s.

mod message;
mod pg_binary;
mod sqlite_rows;
mod statement;
#[cfg(test)]
mod tests;
mod text;
mod tls;
mod types;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AssertSqlSafe, Column, Connection, Either, Executor, SqlSafeStr, Statement};
use tokio::sync::{mpsc, oneshot};

use self::message::database_message;
use self::sqlite_rows::SqliteFile;
use self::statement::{Dialect, Refusal, check_read_query};
use self::text::{TextRow, to_row};
pub use self::tls::{PostgresTls, SslMode, TlsOrigin};
use self::types::ColumnTypeOf;
use super::{
    CHANNEL_CHUNKS, ChunkSender, ColumnType, Conversion, Opened, RowStream, SourceError,
    duplicate_names, project,
};
use crate::redact::{PasswordScrubber, redact_url};

/// How long a read waits for a writer holding the SQLite database lock before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// The PostgreSQL `application_name`, so a DBA can tell acexport's sessions apart.
const PG_APPLICATION_NAME: &str = "acexport";

/// How errors name the query's result set.
pub(super) fn source_name(url: &SecretString) -> String {
    format!("the query result on {}", redact_url(url.expose_secret()))
}

/// The TLS mode a PostgreSQL URL is read with; `None` for SQLite or a URL that cannot be read
/// (reading the source says why).
pub(super) fn postgres_tls(url: &SecretString) -> Option<PostgresTls> {
    let url = url.expose_secret();
    match target(url, &Database::new(url)) {
        Ok(Target::Postgres(_, tls)) => Some(tls),
        _ => None,
    }
}

/// The database as messages show it, plus what must be scrubbed from driver messages.
struct Database {
    /// The URL with its password redacted.
    label: String,
    /// Removes the URL's passwords from driver messages.
    passwords: PasswordScrubber,
    /// PostgreSQL's TLS mode, to explain a failed certificate check.
    tls: Option<PostgresTls>,
}

impl Database {
    fn new(url: &str) -> Self {
        Database {
            label: redact_url(url),
            passwords: PasswordScrubber::for_url(url),
            tls: None,
        }
    }

    fn connect_error(&self, error: &sqlx::Error) -> SourceError {
        // No query yet, so no position to point at.
        let mut message = self.passwords.scrub(&database_message(error, ""));
        // rustls reports a refused certificate as invalid data on the socket.
        let tls_failed = match error {
            sqlx::Error::Tls(_) => true,
            sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::InvalidData,
            _ => false,
        };
        if let Some(tls) = self.tls.filter(|tls| tls_failed && tls.mode.verifies()) {
            message.push_str(&format!(
                " (TLS: {tls}. The server's certificate must chain to a Mozilla root \
                 certificate built into acexport: for a private CA add sslrootcert=PATH to the \
                 URL"
            ));
            if tls.origin == TlsOrigin::RemoteDefault {
                message.push_str("; sslmode=require in the URL encrypts without this check");
            }
            message.push(')');
        }
        SourceError::Connect {
            database: self.label.clone(),
            message,
        }
    }

    /// The query could not be prepared; the message points into `query`.
    fn query_error(&self, error: &sqlx::Error, query: &str) -> SourceError {
        SourceError::Query {
            database: self.label.clone(),
            message: self.passwords.scrub(&database_message(error, query)),
        }
    }

    /// A failure after `rows` rows were read.
    fn fetch_error(&self, rows: u64, error: &sqlx::Error, query: &str) -> SourceError {
        self.fetch_failed(rows, &database_message(error, query))
    }

    /// A failure after `rows` rows were read, worded as `message` (already escaped).
    fn fetch_failed(&self, rows: u64, message: &str) -> SourceError {
        SourceError::Fetch {
            database: self.label.clone(),
            rows,
            message: self.passwords.scrub(message),
        }
    }

    fn not_a_select(&self, refusal: &Refusal) -> SourceError {
        SourceError::NotASelect {
            database: self.label.clone(),
            reason: refusal.to_string(),
        }
    }

    fn source_name(&self) -> String {
        format!("the query result on {}", self.label)
    }
}

/// Where the query runs, with the read-only settings applied.
enum Target {
    /// The options prepare the query; the rows are read from the file (`sqlite_rows.rs`).
    Sqlite(SqliteConnectOptions, SqliteFile),
    /// The options carry the TLS mode in force, which is also kept to be shown.
    Postgres(PgConnectOptions, PostgresTls),
}

impl Target {
    fn dialect(&self) -> Dialect {
        match self {
            Target::Sqlite(..) => Dialect::Sqlite,
            Target::Postgres(..) => Dialect::Postgres,
        }
    }

    fn tls(&self) -> Option<PostgresTls> {
        match self {
            Target::Sqlite(..) => None,
            Target::Postgres(_, tls) => Some(*tls),
        }
    }
}

fn target(url: &str, database: &Database) -> Result<Target, SourceError> {
    if url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| database.connect_error(&e))?
            // Set after parsing so that a `mode=rwc` in the URL cannot undo it.
            .read_only(true)
            .create_if_missing(false)
            // Belt and braces with `mode=ro`, which alone lets `VACUUM INTO` write its copy.
            .pragma("query_only", "ON")
            .busy_timeout(SQLITE_BUSY_TIMEOUT);
        let file = SqliteFile::from_url(url, options.get_filename());
        Ok(Target::Sqlite(options, file))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let options = PgConnectOptions::from_str(url).map_err(|e| database.connect_error(&e))?;
        let in_url = tls::sslmode_in_url(url).map_err(|message| SourceError::Connect {
            database: database.label.clone(),
            message,
        })?;
        // The host and socket sqlx will connect to, defaults and PGHOST included.
        let tls = tls::postgres_tls(
            options.get_host(),
            options.get_socket().map(PathBuf::as_path),
            in_url,
        );
        let options = options
            .ssl_mode(tls.mode.into())
            .application_name(PG_APPLICATION_NAME)
            // Belt and braces with `BEGIN READ ONLY`: every transaction of the session.
            .options([("default_transaction_read_only", "on")]);
        Ok(Target::Postgres(options, tls))
    } else {
        Err(SourceError::UnsupportedDatabase {
            database: database.label.clone(),
        })
    }
}

/// The result columns (names and types) once the query is prepared, or why it could not be.
type Ready = Result<(Vec<String>, Vec<ColumnType>), SourceError>;

/// Connects, prepares the query and starts streaming its rows projected onto `columns`
/// (`None`: every column that can be exported). Returns the query's result columns too.
pub(super) async fn open(
    query: &str,
    url: &SecretString,
    columns: Option<&[String]>,
) -> Result<Opened, SourceError> {
    let url = url.expose_secret();
    let mut database = Database::new(url);
    let target = target(url, &database)?;
    database.tls = target.tls();
    // Before connecting: a refused query never reaches the database.
    check_read_query(query, target.dialect()).map_err(|refusal| database.not_a_select(&refusal))?;
    let source_name = database.source_name();
    let (ready_tx, ready_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let job = Job {
        query: query.to_owned(),
        wanted: columns.map(<[String]>::to_vec),
        database,
        ready: ready_tx,
        sender: ChunkSender::new(tx),
    };
    // The task owns the connection (and PostgreSQL's transaction, which borrows it) for as
    // long as rows are read; the stream aborts it when dropped.
    let task = tokio::spawn(async move {
        match target {
            Target::Sqlite(options, file) => run_sqlite(options, file, job).await,
            Target::Postgres(options, _) => run_postgres(options, job).await,
        }
    });
    let stream = RowStream::new(rx, task, source_name.clone());
    match ready_rx.await {
        Ok(Ok((columns, types))) => Ok(Opened {
            columns,
            types,
            stream,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(SourceError::ReaderFailed {
            source_name,
            message: "the query task ended before the query was prepared".to_owned(),
        }),
    }
}

/// What the query task needs besides its connection.
struct Job {
    /// The segment's query, run as written.
    query: String,
    /// Requested columns; `None` for all.
    wanted: Option<Vec<String>>,
    /// Names the database in errors and scrubs driver messages.
    database: Database,
    /// Tells `open` the result columns (or the setup error) before any row is read.
    ready: oneshot::Sender<Ready>,
    /// Where rows go once the query is prepared.
    sender: ChunkSender,
}

impl Job {
    /// Checks the result columns against the request and reports to `open`. Returns the
    /// projection if the task should go on to read rows.
    fn plan(
        self,
        columns: Result<(Vec<String>, Vec<ColumnType>), SourceError>,
    ) -> Option<(Vec<usize>, Streaming)> {
        let Job {
            query,
            wanted,
            database,
            ready,
            sender,
        } = self;
        let checked = columns.and_then(|(columns, types)| {
            let duplicates = duplicate_names(&columns);
            if !duplicates.is_empty() {
                return Err(SourceError::DuplicateColumns {
                    source_name: database.source_name(),
                    columns: duplicates,
                });
            }
            let projection = match wanted.as_deref() {
                Some(wanted) => {
                    let projection = project(&columns, Some(wanted), || database.source_name())?;
                    refuse_not_exportable(&projection, &columns, &types, &database)?;
                    projection
                }
                None => (0..columns.len())
                    .filter(|&i| types[i].refusal().is_none())
                    .collect(),
            };
            Ok((columns, types, projection))
        });
        match checked {
            Ok((columns, types, projection)) => {
                let names = projection.iter().map(|&i| columns[i].clone()).collect();
                let conversions = projection
                    .iter()
                    .map(|&i| types[i].conversion.clone())
                    .collect();
                let _ = ready.send(Ok((columns, types)));
                Some((
                    projection,
                    Streaming {
                        query,
                        names,
                        conversions,
                        database,
                        sender,
                    },
                ))
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                None
            }
        }
    }

    fn fail_to_connect(self, error: &sqlx::Error) {
        let _ = self.ready.send(Err(self.database.connect_error(error)));
    }
}

/// A requested column whose type has no text rule stops the source before any row is read:
/// every row would be rejected for it, which is the column's problem, not the rows'.
fn refuse_not_exportable(
    projection: &[usize],
    columns: &[String],
    types: &[ColumnType],
    database: &Database,
) -> Result<(), SourceError> {
    for &i in projection {
        if types[i].refusal().is_some() {
            return Err(SourceError::NotExportable {
                source_name: database.source_name(),
                column: columns[i].clone(),
                column_type: Box::new(types[i].clone()),
            });
        }
    }
    Ok(())
}

/// The task's state once the query is prepared and rows are about to flow.
struct Streaming {
    /// The segment's query, run as written; also where error positions point.
    query: String,
    /// The projected columns' names, to name the column of a value that cannot be read.
    names: Vec<String>,
    /// The projected columns' text rules.
    conversions: Vec<Conversion>,
    /// Names the database in errors and scrubs driver messages.
    database: Database,
    /// Where rows go.
    sender: ChunkSender,
}

/// The user's query as sqlx takes it. It is the segment's definition, run as written on a
/// read-only connection: there is nothing to bind.
fn sql_text(query: &str) -> sqlx::SqlStr {
    AssertSqlSafe(query.to_owned()).into_sql_str()
}

async fn run_sqlite(options: SqliteConnectOptions, file: SqliteFile, job: Job) {
    let mut conn = match SqliteConnection::connect_with(&options).await {
        Ok(conn) => conn,
        Err(e) => return job.fail_to_connect(&e),
    };
    let prepared = conn.prepare(sql_text(&job.query)).await;
    let columns = statement_columns(prepared, &job.database, &job.query);
    let _ = conn.close().await;
    let Some((projection, streaming)) = job.plan(columns) else {
        return;
    };
    // Awaited, so that the stream's end waits for the reader; a dropped stream stops the
    // reader at its next chunk.
    let _ = tokio::task::spawn_blocking(move || {
        sqlite_rows::read_rows(&file, SQLITE_BUSY_TIMEOUT, &projection, streaming);
    })
    .await;
}

async fn run_postgres(options: PgConnectOptions, job: Job) {
    let mut conn = match PgConnection::connect_with(&options).await {
        Ok(conn) => conn,
        Err(e) => return job.fail_to_connect(&e),
    };
    let mut tx = match conn.begin_with("BEGIN READ ONLY").await {
        Ok(tx) => tx,
        Err(e) => return job.fail_to_connect(&e),
    };
    let prepared = tx.prepare(sql_text(&job.query)).await;
    let columns = statement_columns(prepared, &job.database, &job.query);
    let Some((projection, streaming)) = job.plan(columns) else {
        return;
    };
    let rows = sqlx::query(sql_text(&streaming.query)).fetch(&mut *tx);
    pump(rows, &projection, streaming).await;
    // Nothing was written; ending the transaction either way is the same.
    let _ = tx.rollback().await;
    let _ = conn.close().await;
}

/// The query's result column names and types, from preparing it (so a query with no rows has
/// columns, and every column's rule is known before the first row).
fn statement_columns<S: Statement>(
    prepared: Result<S, sqlx::Error>,
    database: &Database,
    query: &str,
) -> Ready
where
    <S::Database as sqlx::Database>::TypeInfo: ColumnTypeOf,
{
    let statement = prepared.map_err(|e| database.query_error(&e, query))?;
    // Preparing runs nothing. A parameter could only be bound to nothing, and would be
    // the sign of SQL this module's split into statements read differently from SQLite.
    let parameters = match statement.parameters() {
        Some(Either::Left(types)) => types.len(),
        Some(Either::Right(count)) => count,
        None => 0,
    };
    if parameters > 0 {
        return Err(database.not_a_select(&Refusal::Parameters));
    }
    Ok(statement
        .columns()
        .iter()
        .map(|c| (c.name().to_owned(), c.type_info().column_type()))
        .unzip())
}

/// Reads rows until the end, a database error or a gone consumer.
async fn pump<R: TextRow>(
    mut rows: BoxStream<'_, Result<R, sqlx::Error>>,
    projection: &[usize],
    streaming: Streaming,
) {
    let Streaming {
        query,
        names,
        conversions,
        database,
        mut sender,
    } = streaming;
    let mut number = 0u64;
    while let Some(next) = rows.next().await {
        let row = match next {
            Ok(row) => row,
            Err(e) => {
                let error = database.fetch_error(number, &e, &query);
                return sender.finish(Some(error)).await;
            }
        };
        number += 1;
        let item = to_row(&row, number, projection, &names, &conversions);
        if sender.push(item).await.is_err() {
            return;
        }
    }
    sender.finish(None).await;
}
