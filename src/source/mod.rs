//! Segment sources: where profiles come from. A segment is a CSV file, a JSONL file or an SQL
//! query against the user's SQLite or PostgreSQL database (opened read-only). Every source is
//! read by a background task that hands rows over in chunks through a bounded channel, so an
//! export of millions of profiles keeps memory flat and parsing overlaps delivery.
//!
//! Row-level problems (a ragged CSV row, invalid UTF-8, a line that is not a JSON object, an SQL
//! value that cannot be read as text) are [`RowError`]s: the export records them as rejected and
//! goes on. Anything that stops the whole source is a [`SourceError`].

mod csv;
mod jsonl;
mod sql;
#[cfg(test)]
mod testing;

use std::fmt;
use std::path::PathBuf;

use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use sql::{PostgresTls, SslMode, TlsOrigin};

/// Rows per chunk handed from a reader task to the consumer: large enough to amortise the
/// channel hand-off, small enough that the chunks in flight stay a few megabytes.
const CHUNK_ROWS: usize = 2048;
/// Chunks buffered between a reader task and its consumer, so parsing can run a little ahead.
const CHANNEL_CHUNKS: usize = 4;

/// Where a segment's profiles come from.
#[derive(Clone, Debug)]
pub enum SourceDef {
    /// A CSV file whose first line is a header naming the columns.
    Csv { path: PathBuf, delimiter: u8 },
    /// A file holding one JSON object per line.
    Jsonl { path: PathBuf },
    /// A query run read-only against `sqlite:...` or `postgres://...`; the URL may hold a
    /// password, hence secret.
    Sql {
        query: String,
        database_url: SecretString,
    },
}

impl SourceDef {
    /// How errors name this source: the file path, or the database with its password redacted.
    fn name(&self) -> String {
        match self {
            SourceDef::Csv { path, .. } | SourceDef::Jsonl { path } => path.display().to_string(),
            SourceDef::Sql { database_url, .. } => sql::source_name(database_url),
        }
    }
}

/// One row, projected onto the requested columns (same order). `number` is 1-based: the line
/// number in the file for CSV/JSONL (the CSV header is line 1, so the first data row is 2), the
/// row position for SQL. Empty strings stay `Some("")`; SQL NULL, JSON null and a missing JSON
/// key are `None`.
#[derive(Clone, PartialEq, Eq)]
pub struct Row {
    pub number: u64,
    pub values: Vec<Option<String>>,
}

/// Shows the row number and how many values it holds, never the values: they are profile data.
impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Row")
            .field("number", &self.number)
            .field("values", &format_args!("<{} hidden>", self.values.len()))
            .finish()
    }
}

/// A problem with one row: the run goes on and records the row as rejected. `reason` names
/// columns and types, never a cell value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowError {
    pub number: u64,
    pub reason: String,
}

/// A problem that stops the whole source. Messages name the file, line, column or database
/// (with any password redacted) so the user can fix it; they never quote cell values.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path} (near line {line}): {source}")]
    Read {
        path: PathBuf,
        line: u64,
        source: std::io::Error,
    },
    #[error("{path} has no header row: the first line of a CSV file must name its columns")]
    MissingHeader { path: PathBuf },
    #[error("the header (line {line}) of {path} is not valid UTF-8: save the file as UTF-8")]
    HeaderNotUtf8 { path: PathBuf, line: u64 },
    #[error(
        "{source_name} has more than one column named {}: give each column a unique name",
        quoted_list(columns)
    )]
    DuplicateColumns {
        source_name: String,
        columns: Vec<String>,
    },
    #[error("{source_name} line {line}: {reason}; fix or remove that row")]
    InvalidRow {
        source_name: String,
        line: u64,
        reason: String,
    },
    #[error(
        "column `{column}` is not in {source_name}; available columns: {}",
        quoted_list(available)
    )]
    UnknownColumn {
        column: String,
        available: Vec<String>,
        source_name: String,
    },
    #[error(
        "`{database}` is not a supported database URL: use sqlite:PATH or \
         postgres://USER:PASSWORD@HOST/DATABASE"
    )]
    UnsupportedDatabase { database: String },
    #[error(
        "the segment query on {database} {reason}: a segment query is a single SELECT (or WITH \
         ... SELECT, or VALUES), so that it can neither write nor create files"
    )]
    NotASelect { database: String, reason: String },
    #[error("cannot connect to {database}: {message}")]
    Connect { database: String, message: String },
    #[error("the segment query failed on {database}: {message}")]
    Query { database: String, message: String },
    #[error("the segment query on {database} failed after {rows} rows: {message}")]
    Fetch {
        database: String,
        rows: u64,
        message: String,
    },
    #[error("the reader for {source_name} stopped unexpectedly: {message}")]
    ReaderFailed {
        source_name: String,
        message: String,
    },
}

impl SourceError {
    /// Whether running the export again later may succeed without the user changing anything
    /// (the database was down, a disk hiccup), as opposed to a file or query that needs fixing.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            SourceError::Read { .. }
                | SourceError::Connect { .. }
                | SourceError::Fetch { .. }
                | SourceError::ReaderFailed { .. }
        )
    }
}

fn quoted_list(names: &[String]) -> String {
    if names.is_empty() {
        return "(none)".to_owned();
    }
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The TLS mode a PostgreSQL source is read with and why (`segment show` prints it); `None` for
/// files and SQLite.
pub fn postgres_tls(def: &SourceDef) -> Option<PostgresTls> {
    match def {
        SourceDef::Sql { database_url, .. } => sql::postgres_tls(database_url),
        SourceDef::Csv { .. } | SourceDef::Jsonl { .. } => None,
    }
}

/// What `segment add` shows: the source's columns and how many rows it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Description {
    pub columns: Vec<String>,
    pub rows: u64,
}

/// Reads the whole source once and counts its rows. For CSV and JSONL it fails on the first
/// invalid row (invalid UTF-8, ragged row, invalid JSON line), naming the line, so that a
/// segment is never added over a file the export would partly reject. JSONL columns are the
/// union of the top-level keys, in first-seen order.
pub async fn describe(def: &SourceDef) -> Result<Description, SourceError> {
    if let SourceDef::Jsonl { path } = def {
        return jsonl::describe(path).await;
    }
    let (columns, mut stream) = open_projected(def, Some(&[])).await?;
    let mut rows = 0;
    while let Some(chunk) = stream.next_chunk(CHUNK_ROWS).await? {
        for item in chunk {
            match item {
                Ok(_) => rows += 1,
                Err(e) => {
                    return Err(SourceError::InvalidRow {
                        source_name: def.name(),
                        line: e.number,
                        reason: e.reason,
                    });
                }
            }
        }
    }
    Ok(Description { columns, rows })
}

/// The source's columns and its first `limit` readable rows with every column. Rows that the
/// export would reject are skipped: a preview shows what would be sent.
pub async fn preview(
    def: &SourceDef,
    limit: usize,
) -> Result<(Vec<String>, Vec<Row>), SourceError> {
    let (columns, mut stream) = open_projected(def, None).await?;
    let mut rows = Vec::with_capacity(limit.min(CHUNK_ROWS));
    while rows.len() < limit {
        let Some(chunk) = stream.next_chunk(limit - rows.len()).await? else {
            break;
        };
        rows.extend(chunk.into_iter().filter_map(Result::ok));
    }
    Ok((columns, rows))
}

/// Starts streaming the source's rows projected onto `columns`, in that order. A column the
/// source does not have is an [`SourceError::UnknownColumn`] listing those it has (for JSONL a
/// column is known when it appears in the first lines, see the `jsonl` module).
pub async fn open(def: &SourceDef, columns: &[String]) -> Result<RowStream, SourceError> {
    open_projected(def, Some(columns))
        .await
        .map(|(_, stream)| stream)
}

/// Opens `def` projected onto `columns` (`None`: every column) and returns all of the source's
/// columns along with the stream.
async fn open_projected(
    def: &SourceDef,
    columns: Option<&[String]>,
) -> Result<(Vec<String>, RowStream), SourceError> {
    match def {
        SourceDef::Csv { path, delimiter } => csv::open(path, *delimiter, columns).await,
        SourceDef::Jsonl { path } => jsonl::open(path, columns).await,
        SourceDef::Sql {
            query,
            database_url,
        } => sql::open(query, database_url, columns).await,
    }
}

/// Maps the requested column names to positions among `available`, in request order.
fn project(
    available: &[String],
    wanted: Option<&[String]>,
    source_name: impl FnOnce() -> String,
) -> Result<Vec<usize>, SourceError> {
    let Some(wanted) = wanted else {
        return Ok((0..available.len()).collect());
    };
    let mut positions = Vec::with_capacity(wanted.len());
    for column in wanted {
        match available.iter().position(|a| a == column) {
            Some(i) => positions.push(i),
            None => {
                return Err(SourceError::UnknownColumn {
                    column: column.clone(),
                    available: available.to_vec(),
                    source_name: source_name(),
                });
            }
        }
    }
    Ok(positions)
}

/// Names that appear more than once in `columns`, each listed once, in order of appearance.
fn duplicate_names(columns: &[String]) -> Vec<String> {
    let mut duplicates: Vec<String> = Vec::new();
    for (i, name) in columns.iter().enumerate() {
        if columns[..i].contains(name) && !duplicates.contains(name) {
            duplicates.push(name.clone());
        }
    }
    duplicates
}

type Item = Result<Row, RowError>;
type Chunk = Result<Vec<Item>, SourceError>;

/// The rows of an opened source, read ahead by a background task. Dropping it stops the task.
pub struct RowStream {
    /// Chunks from the reader task; closed when the task finishes.
    rx: mpsc::Receiver<Chunk>,
    /// The rest of a received chunk that was larger than the caller's `max`.
    pending: Vec<Item>,
    /// The reader task: awaited when the channel closes to tell a finished reader from a
    /// panicked one (which must not look like the end of the data), aborted on drop.
    task: Option<JoinHandle<()>>,
    /// Names the source in the error raised when the reader task dies.
    source_name: String,
    /// Set after the end or a fatal error, so later calls return `Ok(None)`.
    done: bool,
}

impl RowStream {
    fn new(rx: mpsc::Receiver<Chunk>, task: JoinHandle<()>, source_name: String) -> Self {
        RowStream {
            rx,
            pending: Vec::new(),
            task: Some(task),
            source_name,
            done: false,
        }
    }

    /// Next chunk of up to `max` items (at least one), `None` at the end. Row-level problems
    /// come as `Err` items and the stream goes on; a fatal problem (I/O error mid-file, lost
    /// database connection) is the outer `Err`, after which the stream is over.
    pub async fn next_chunk(&mut self, max: usize) -> Result<Option<Vec<Item>>, SourceError> {
        let max = max.max(1);
        if self.pending.is_empty() {
            if self.done {
                return Ok(None);
            }
            match self.rx.recv().await {
                Some(Ok(chunk)) => self.pending = chunk,
                Some(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                None => {
                    self.done = true;
                    return self.check_task_ended().await.map(|()| None);
                }
            }
        }
        if self.pending.len() <= max {
            return Ok(Some(std::mem::take(&mut self.pending)));
        }
        let rest = self.pending.split_off(max);
        Ok(Some(std::mem::replace(&mut self.pending, rest)))
    }

    async fn check_task_ended(&mut self) -> Result<(), SourceError> {
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        task.await.map_err(|e| SourceError::ReaderFailed {
            source_name: self.source_name.clone(),
            message: if e.is_panic() {
                "the reader task panicked".to_owned()
            } else {
                "the reader task was cancelled".to_owned()
            },
        })
    }
}

impl Drop for RowStream {
    fn drop(&mut self) {
        // Async readers (SQL) stop here; blocking readers stop at their next send.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The reader task's end of the channel: collects items into chunks of [`CHUNK_ROWS`].
/// Every send reports whether the consumer is still there, so a reader stops once the
/// [`RowStream`] is dropped.
struct ChunkSender {
    /// Bounded, so a reader ahead of its consumer waits instead of filling memory.
    tx: mpsc::Sender<Chunk>,
    /// The chunk being filled.
    buf: Vec<Item>,
}

/// The consumer dropped the stream; the reader should stop.
struct Closed;

impl ChunkSender {
    fn new(tx: mpsc::Sender<Chunk>) -> Self {
        ChunkSender {
            tx,
            buf: Vec::with_capacity(CHUNK_ROWS),
        }
    }

    fn take_chunk(&mut self) -> Vec<Item> {
        std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_ROWS))
    }

    /// For readers on a blocking thread.
    fn push_blocking(&mut self, item: Item) -> Result<(), Closed> {
        self.buf.push(item);
        if self.buf.len() >= CHUNK_ROWS {
            let chunk = self.take_chunk();
            self.tx.blocking_send(Ok(chunk)).map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// Sends the rows collected so far, then `error` if any. Ignores a gone consumer: the
    /// reader is finishing either way.
    fn finish_blocking(mut self, error: Option<SourceError>) {
        if !self.buf.is_empty() {
            let chunk = self.take_chunk();
            if self.tx.blocking_send(Ok(chunk)).is_err() {
                return;
            }
        }
        if let Some(e) = error {
            let _ = self.tx.blocking_send(Err(e));
        }
    }

    /// For readers on the async runtime.
    async fn push(&mut self, item: Item) -> Result<(), Closed> {
        self.buf.push(item);
        if self.buf.len() >= CHUNK_ROWS {
            let chunk = self.take_chunk();
            self.tx.send(Ok(chunk)).await.map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// Async counterpart of [`ChunkSender::finish_blocking`].
    async fn finish(mut self, error: Option<SourceError>) {
        if !self.buf.is_empty() {
            let chunk = self.take_chunk();
            if self.tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
        if let Some(e) = error {
            let _ = self.tx.send(Err(e)).await;
        }
    }
}

/// Runs a blocking reader on the blocking pool and returns the stream it feeds.
fn spawn_blocking_reader(
    source_name: String,
    read: impl FnOnce(ChunkSender) + Send + 'static,
) -> RowStream {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let task = tokio::task::spawn_blocking(move || read(ChunkSender::new(tx)));
    RowStream::new(rx, task, source_name)
}

/// Runs blocking setup work (opening a file, reading its header) off the async runtime.
async fn run_blocking<T: Send + 'static>(
    source_name: impl FnOnce() -> String,
    work: impl FnOnce() -> Result<T, SourceError> + Send + 'static,
) -> Result<T, SourceError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| SourceError::ReaderFailed {
            source_name: source_name(),
            message: e.to_string(),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_debug_output_hides_the_values() {
        let row = Row {
            number: 2,
            values: vec![Some("jane@example.com".to_owned()), None],
        };

        let shown = format!("{row:?}");

        assert!(!shown.contains("jane"), "{shown}");
        assert!(shown.contains("2 hidden"), "{shown}");
    }

    #[test]
    fn duplicate_names_lists_each_repeated_name_once() {
        let columns: Vec<String> = ["a", "b", "a", "c", "a", "b"]
            .iter()
            .map(|s| s.to_string())
            .collect();

        assert_eq!(duplicate_names(&columns), vec!["a", "b"]);
    }
}
