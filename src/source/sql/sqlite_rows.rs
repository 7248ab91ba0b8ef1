//! Reading a SQLite query's rows on a blocking thread with rusqlite, straight into chunks.
//! sqlx hands each row from its worker thread to the async side through a channel (about 2 µs
//! and several allocations per row), which made a SQLite segment 1–1.6 s slower per million
//! profiles than the same rows in a CSV file. The query is still prepared through sqlx first,
//! so the column types and rules (`types.rs`) are sqlx's, as for PostgreSQL.
//!
//! The database is opened read-only with `query_only` on, as the sqlx connection is; the
//! URL's `immutable` and `vfs` parameters are honoured the same way.

use std::borrow::Cow;
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::Streaming;
use super::text::float_text;
use crate::escape::untrusted;
use crate::source::{Conversion, Row, RowError};

/// A SQLite database file as the source reads it.
#[derive(Debug, Clone)]
pub(super) struct SqliteFile {
    /// A `file:` URI: the path, read-only, with the URL's `immutable` if it was set.
    uri: String,
    /// The URL's `vfs`, if any.
    vfs: Option<String>,
}

impl SqliteFile {
    /// From the segment's URL (`sqlite:PATH?...`), once sqlx has accepted it.
    pub(super) fn from_url(url: &str, path: &std::path::Path) -> SqliteFile {
        let params = url.split_once('?').map_or("", |(_, query)| query);
        let mut immutable = false;
        let mut vfs = None;
        for (key, value) in url::form_urlencoded::parse(params.as_bytes()) {
            match &*key {
                "immutable" => immutable = matches!(&*value, "true" | "1"),
                "vfs" => vfs = Some(value.into_owned()),
                _ => {}
            }
        }
        let mut uri = String::from("file:");
        // In a URI path, `%`, `?` and `#` must be escaped; everything else is taken as is.
        for byte in path.as_os_str().as_encoded_bytes() {
            match byte {
                b'%' | b'?' | b'#' => uri.push_str(&format!("%{byte:02X}")),
                _ => uri.push(char::from(*byte)),
            }
        }
        uri.push_str("?mode=ro");
        if immutable {
            uri.push_str("&immutable=1");
        }
        SqliteFile { uri, vfs }
    }

    pub(super) fn open(&self, busy_timeout: Duration) -> rusqlite::Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = match &self.vfs {
            Some(vfs) => Connection::open_with_flags_and_vfs(&self.uri, flags, vfs.as_str())?,
            None => Connection::open_with_flags(&self.uri, flags)?,
        };
        // Belt and braces with read-only, which alone lets `VACUUM INTO` write its copy.
        conn.pragma_update(None, "query_only", "ON")?;
        conn.busy_timeout(busy_timeout)?;
        Ok(conn)
    }
}

/// Runs the query and sends its rows, projected and as text, until the end, an error or a gone
/// consumer. Runs on a blocking thread.
pub(super) fn read_rows(
    file: &SqliteFile,
    busy_timeout: Duration,
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
    let result = (|| -> rusqlite::Result<()> {
        let conn = file.open(busy_timeout)?;
        let mut statement = conn.prepare(&query)?;
        let mut rows = statement.raw_query();
        while let Some(row) = rows.next()? {
            number += 1;
            let item = to_row(row, number, projection, &names, &conversions);
            if sender.push_blocking(item).is_err() {
                // The consumer is gone: nothing more to do.
                return Ok(());
            }
        }
        Ok(())
    })();
    let error = result.err().map(|e| {
        let message = match &e {
            rusqlite::Error::SqliteFailure(_, Some(message)) => Cow::Borrowed(message.as_str()),
            other => Cow::Owned(other.to_string()),
        };
        database.fetch_failed(number, &untrusted(&message))
    });
    sender.finish_blocking(error);
}

/// One row projected onto the requested columns, as text.
fn to_row(
    row: &rusqlite::Row<'_>,
    number: u64,
    projection: &[usize],
    names: &[String],
    conversions: &[Conversion],
) -> Result<Row, RowError> {
    let mut values = Vec::with_capacity(projection.len());
    for ((&i, name), conversion) in projection.iter().zip(names).zip(conversions) {
        let value = row
            .get_ref(i)
            .map_err(|e| e.to_string())
            .and_then(|value| text(value, conversion));
        match value {
            Ok(value) => values.push(value),
            Err(reason) => {
                return Err(RowError {
                    number,
                    reason: format!("column {}: {reason}", crate::source::shown_name(name)),
                });
            }
        }
    }
    Ok(Row { number, values })
}

/// A value as text by its own storage class (SQLite types values, not columns), as
/// `text.rs` reads sqlx's SQLite rows.
fn text(value: ValueRef<'_>, conversion: &Conversion) -> Result<Option<String>, String> {
    match value {
        ValueRef::Null => Ok(None),
        ValueRef::Integer(value) => Ok(Some(match conversion {
            Conversion::SqliteBoolean => (value != 0).to_string(),
            _ => value.to_string(),
        })),
        ValueRef::Real(value) => Ok(Some(float_text(value))),
        ValueRef::Text(bytes) => std::str::from_utf8(bytes)
            .map(|text| Some(text.to_owned()))
            .map_err(|_| "the text is not valid UTF-8".to_owned()),
        ValueRef::Blob(_) => Err(
            "holds a BLOB value (binary data), which has no text form for ActiveCampaign; \
             convert it in the query, e.g. hex(col), or leave the row out"
                .to_owned(),
        ),
    }
}
