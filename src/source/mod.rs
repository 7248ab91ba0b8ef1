//! Segment sources: where profiles come from. A segment is a CSV file, a JSONL file or an SQL
//! query against the user's SQLite or PostgreSQL database (opened read-only). Every source is
//! read by a background task that hands rows over in chunks through a bounded channel, so an
//! export of millions of profiles keeps memory flat and parsing overlaps delivery.
//!
//! Two kinds of problem, by whether the rest of the source can still be trusted:
//! - A [`RowError`] concerns one row whose neighbours read fine (a ragged CSV row, invalid
//!   UTF-8 in a value, a line that is not a JSON object, a value over `source.max_field_bytes`,
//!   an SQL value that cannot be read as text): the export records the row as rejected and goes
//!   on.
//! - A [`SourceError`] means the source cannot be read, or cannot be read as what it claims
//!   from some point on (a CSV quote never closed, a line over `source.max_line_bytes`, too
//!   many columns, a UTF-16 file, a lost connection): the run fails before sending anything.
//!
//! Files are read within the caps of [`SourceSettings`] while reading, never after: a reader
//! holds at most one line of `max_line_bytes` besides its read buffer, and chunks are cut by
//! bytes as well as rows, so memory does not follow the input's size.
//!
//! Each column's type and how its values become text is a [`ColumnType`] (see `column.rs`).

pub mod access;
mod column;
mod csv;
mod jsonl;
mod sql;
#[cfg(test)]
mod testing;

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use self::access::{FileReader, SourceFile};
pub use self::column::{ColumnType, Conversion};
use crate::escape::untrusted_capped;
pub use crate::settings::SourceSettings;
pub use sql::{PostgresTls, SslMode, TlsOrigin};

/// Rows per chunk handed from a reader task to the consumer: large enough to amortise the
/// channel hand-off, small enough that the chunks in flight stay a few megabytes.
const CHUNK_ROWS: usize = 2048;
/// Value bytes after which a chunk is handed over even when it has fewer than [`CHUNK_ROWS`]
/// rows: with long values, a chunk of 2048 rows could otherwise hold gigabytes. Together with
/// [`CHANNEL_CHUNKS`] this bounds what a reader runs ahead by to a few megabytes.
const CHUNK_BYTES: usize = 1024 * 1024;
/// Chunks buffered between a reader task and its consumer, so parsing can run a little ahead.
const CHANNEL_CHUNKS: usize = 4;
/// Characters of a column name shown in a message: enough to recognise it, never megabytes.
const SHOWN_NAME_CHARS: usize = 64;
/// Column names listed in a message before "and N more".
const SHOWN_NAMES: usize = 20;

/// Where a segment's profiles come from.
#[derive(Clone, Debug)]
pub enum SourceDef {
    /// A CSV file whose first line is a header naming the columns, read within `limits`.
    Csv {
        path: SourceFile,
        delimiter: u8,
        limits: SourceSettings,
    },
    /// A file holding one JSON object per line, read within `limits`.
    Jsonl {
        path: SourceFile,
        limits: SourceSettings,
    },
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
            SourceDef::Csv { path, .. } | SourceDef::Jsonl { path, .. } => {
                path.display().to_string()
            }
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
        "{path} is encoded as UTF-16 (it starts with a UTF-16 byte order mark): save it as UTF-8"
    )]
    Utf16 { path: PathBuf },
    #[error(
        "{path} holds no JSON object with keys: a JSONL segment needs at least one line holding \
         an object, whose keys name the columns"
    )]
    NoColumns { path: PathBuf },
    #[error(
        "{path} line {line} is longer than {max} bytes (setting source.max_line_bytes): check that \
         this is the intended file, or raise source.max_line_bytes"
    )]
    LineTooLong {
        path: PathBuf,
        line: u64,
        max: usize,
    },
    #[error(
        "{path} line {line}: a quoted field opened in the record starting on this line runs on to \
         line {end_line}, past {max} bytes (setting source.max_line_bytes); its closing quote is \
         probably missing (a quote inside a quoted field is written twice: \"\")"
    )]
    RecordTooLong {
        path: PathBuf,
        line: u64,
        end_line: u64,
        max: usize,
    },
    #[error(
        "{path} line {line}: a quoted field in the record starting on this line is never closed, \
         so the rest of the file would be read as one value; add the closing quote (a quote \
         inside a quoted field is written twice: \"\")"
    )]
    UnterminatedQuote { path: PathBuf, line: u64 },
    #[error(
        "{source_name} line {line}: the column names take more than {max} bytes (setting \
         source.max_header_bytes)"
    )]
    HeaderTooLong {
        source_name: String,
        line: u64,
        max: usize,
    },
    #[error(
        "{source_name} line {line}: more than {max} columns (setting source.max_columns); check \
         the delimiter, or raise source.max_columns"
    )]
    TooManyColumns {
        source_name: String,
        line: u64,
        max: usize,
    },
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
        "column {} is not in {source_name}; available columns: {}",
        shown_name(column),
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
    #[error(
        "column {} of {source_name} has type {}, which cannot be exported: {}",
        shown_name(column),
        .column_type.name,
        .column_type.refusal().unwrap_or_default()
    )]
    NotExportable {
        source_name: String,
        column: String,
        /// Boxed: the type is rarely needed and would make every error bigger.
        column_type: Box<ColumnType>,
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

/// A column name as messages show it: quoted, escaped and cut to [`SHOWN_NAME_CHARS`], since
/// it comes from the file.
pub fn shown_name(name: &str) -> String {
    format!("`{}`", shown_column(name))
}

/// A column name as a table cell shows it: [`shown_name`] without the quotes.
pub fn shown_column(name: &str) -> String {
    untrusted_capped(name, SHOWN_NAME_CHARS).into_owned()
}

/// Up to [`SHOWN_NAMES`] names, each as [`shown_name`], then how many more there are.
fn quoted_list(names: &[String]) -> String {
    if names.is_empty() {
        return "(none)".to_owned();
    }
    let mut list = names
        .iter()
        .take(SHOWN_NAMES)
        .map(|n| shown_name(n))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN_NAMES {
        list.push_str(&format!(" and {} more", names.len() - SHOWN_NAMES));
    }
    list
}

/// The TLS mode a PostgreSQL source is read with and why (`segment show` prints it); `None` for
/// files and SQLite.
pub fn postgres_tls(def: &SourceDef) -> Option<PostgresTls> {
    match def {
        SourceDef::Sql { database_url, .. } => sql::postgres_tls(database_url),
        SourceDef::Csv { .. } | SourceDef::Jsonl { .. } => None,
    }
}

/// What `segment add` shows: the source's columns, their types, and how many rows it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Description {
    pub columns: Vec<String>,
    /// Per column (same order), its type and how its values become text.
    pub types: Vec<ColumnType>,
    pub rows: u64,
}

/// Reads the whole source once and counts its rows. For CSV and JSONL it fails on the first
/// invalid row (invalid UTF-8, ragged row, invalid JSON line), naming the line, so that a
/// segment is never added over a file the export would partly reject. JSONL columns are the
/// union of the top-level keys, in first-seen order.
pub async fn describe(def: &SourceDef) -> Result<Description, SourceError> {
    if let SourceDef::Jsonl { path, limits } = def {
        return jsonl::describe(path, *limits).await;
    }
    let Opened {
        columns,
        types,
        mut stream,
    } = open_projected(def, Some(&[])).await?;
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
    Ok(Description {
        columns,
        types,
        rows,
    })
}

/// The first rows of a source as the export would read them: each row read, sent or rejected
/// with its reason, and why reading stopped early if it did.
#[derive(Debug)]
pub struct Preview {
    /// The columns shown: every column that can be exported.
    pub columns: Vec<String>,
    /// The columns left out, with their type (whose rule says why).
    pub hidden: Vec<(String, ColumnType)>,
    /// Every row read, in order: projected onto `columns`, or the reason it would be rejected.
    pub rows: Vec<Result<Row, RowError>>,
    /// The error that ended the reading before `limit` rows or the end, if any.
    pub stopped: Option<SourceError>,
}

/// The source's first `limit` rows, each shown or rejected with its reason. An error before
/// the first row is an `Err`; one after is [`Preview::stopped`], with the rows read before it.
pub async fn preview(def: &SourceDef, limit: usize) -> Result<Preview, SourceError> {
    let Opened {
        columns,
        types,
        mut stream,
    } = open_projected(def, None).await?;
    let (shown, hidden): (Vec<_>, Vec<_>) = columns
        .into_iter()
        .zip(types)
        .partition(|(_, ty)| ty.refusal().is_none());
    let mut preview = Preview {
        columns: shown.into_iter().map(|(name, _)| name).collect(),
        hidden,
        rows: Vec::with_capacity(limit.min(CHUNK_ROWS)),
        stopped: None,
    };
    while preview.rows.len() < limit {
        match stream.next_chunk(limit - preview.rows.len()).await {
            Ok(Some(chunk)) => preview.rows.extend(chunk),
            Ok(None) => break,
            Err(e) => {
                preview.stopped = Some(e);
                break;
            }
        }
    }
    Ok(preview)
}

/// Starts streaming the source's rows projected onto `columns`, in that order. A column the
/// source does not have is an [`SourceError::UnknownColumn`] listing those it has (for JSONL a
/// column is known when it appears in the first lines, see the `jsonl` module); one whose
/// type has no text rule is a [`SourceError::NotExportable`].
pub async fn open(def: &SourceDef, columns: &[String]) -> Result<RowStream, SourceError> {
    open_projected(def, Some(columns)).await.map(|o| o.stream)
}

/// A source opened for reading: all of its columns and their types, and the stream of rows
/// projected onto the requested columns.
struct Opened {
    columns: Vec<String>,
    types: Vec<ColumnType>,
    stream: RowStream,
}

/// Opens `def` projected onto `columns` (`None`: every column that can be exported, which for
/// a file is every column).
async fn open_projected(
    def: &SourceDef,
    columns: Option<&[String]>,
) -> Result<Opened, SourceError> {
    let file =
        |(columns, stream): (Vec<String>, RowStream), column_type: fn() -> ColumnType| Opened {
            types: columns.iter().map(|_| column_type()).collect(),
            columns,
            stream,
        };
    match def {
        SourceDef::Csv {
            path,
            delimiter,
            limits,
        } => csv::open(path, *delimiter, *limits, columns)
            .await
            .map(|opened| file(opened, ColumnType::csv)),
        SourceDef::Jsonl { path, limits } => jsonl::open(path, *limits, columns)
            .await
            .map(|opened| file(opened, ColumnType::jsonl)),
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
/// Linear: a wide header must not cost a comparison per pair of columns.
fn duplicate_names(columns: &[String]) -> Vec<String> {
    let mut seen: HashSet<&str> = HashSet::with_capacity(columns.len());
    let mut reported: HashSet<&str> = HashSet::new();
    let mut duplicates = Vec::new();
    for name in columns {
        if !seen.insert(name) && reported.insert(name) {
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
    /// Value bytes in `buf`, to hand it over at [`CHUNK_BYTES`].
    bytes: usize,
}

/// The consumer dropped the stream; the reader should stop.
struct Closed;

impl ChunkSender {
    fn new(tx: mpsc::Sender<Chunk>) -> Self {
        ChunkSender {
            tx,
            buf: Vec::with_capacity(CHUNK_ROWS),
            bytes: 0,
        }
    }

    fn take_chunk(&mut self) -> Vec<Item> {
        self.bytes = 0;
        std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_ROWS))
    }

    /// Adds `item`; whether the chunk is now full, by rows or by bytes.
    fn add(&mut self, item: Item) -> bool {
        self.bytes += match &item {
            Ok(row) => row.values.iter().flatten().map(String::len).sum(),
            Err(e) => e.reason.len(),
        };
        self.buf.push(item);
        self.buf.len() >= CHUNK_ROWS || self.bytes >= CHUNK_BYTES
    }

    /// For readers on a blocking thread.
    fn push_blocking(&mut self, item: Item) -> Result<(), Closed> {
        if self.add(item) {
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
        if self.add(item) {
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

/// Byte order marks of UTF-16 (and UTF-32, which starts like UTF-16 LE).
const UTF16_BOMS: [&[u8]; 2] = [b"\xFF\xFE", b"\xFE\xFF"];

/// Opens a segment file for buffered reading. A UTF-16 file is refused here, naming the fix: its
/// bytes would otherwise parse into rows of garbage, every other byte a NUL.
fn open_file(path: &SourceFile, buffer_bytes: usize) -> Result<BufReader<File>, SourceError> {
    let file = access::open(path).map_err(|source| SourceError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = BufReader::with_capacity(buffer_bytes, file);
    let start = reader.fill_buf().map_err(|source| SourceError::Read {
        path: path.to_path_buf(),
        line: 1,
        source,
    })?;
    if UTF16_BOMS.iter().any(|bom| start.starts_with(bom)) {
        return Err(SourceError::Utf16 {
            path: path.to_path_buf(),
        });
    }
    Ok(reader)
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
