//! JSONL segments: one JSON object per line, blank lines skipped. Top-level values become text
//! (numbers and booleans as written by `serde_json`, nested arrays and objects as their JSON
//! text); null and a missing key are `None`. Lines are parsed straight into the projected
//! columns: other keys are skipped without building values for them.
//!
//! Lines are framed by line feeds, so a broken line is a row error and the next line reads
//! fine. The caps hold while reading: a line over `source.max_line_bytes` is refused before more
//! of it is buffered, and the columns (the union of keys) are counted against
//! `source.max_columns` and `source.max_header_bytes` as they are found. A file with no object
//! at all has no columns and is refused.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use serde_json::error::Category;
use serde_json::value::RawValue;

use super::{
    ChunkSender, ColumnType, Description, Row, RowError, RowStream, SourceError, SourceFile,
    SourceSettings, open_file, project, run_blocking, shown_name, spawn_blocking_reader,
};

/// Lines read when opening to learn the columns: a column is known if one of the first this
/// many lines has it as a top-level key (the segment contract; a full scan is `describe`'s job).
const KNOWN_COLUMNS_SCAN_LINES: u64 = 1000;
/// Read buffer for the line reader; large so that big files take fewer read calls.
const READ_BUFFER_BYTES: usize = 256 * 1024;
/// Skipped at the start of the file.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Scans the whole file: the union of top-level keys in first-seen order and the number of
/// rows. Fails on the first line that is not a JSON object, naming it, and on a file with no
/// columns.
pub(super) async fn describe(
    path: &SourceFile,
    limits: SourceSettings,
) -> Result<Description, SourceError> {
    let source_name = path.display().to_string();
    let path = path.to_owned();
    run_blocking(|| source_name, move || describe_blocking(&path, limits)).await
}

fn describe_blocking(
    path: &SourceFile,
    limits: SourceSettings,
) -> Result<Description, SourceError> {
    let mut lines = Lines::open(path, limits.max_line_bytes)?;
    let mut keys = KeySet::new(limits);
    let mut rows = 0;
    while let Some((line, bytes)) = lines.next_line()? {
        collect_keys(bytes, &mut keys).map_err(|problem| problem.into_error(path, line))?;
        rows += 1;
    }
    if keys.names.is_empty() {
        return Err(SourceError::NoColumns {
            path: path.to_path_buf(),
        });
    }
    Ok(Description {
        types: keys.names.iter().map(|_| ColumnType::jsonl()).collect(),
        columns: keys.names,
        rows,
    })
}

/// Learns the columns from the first lines, then starts streaming rows projected onto
/// `columns` (`None`: every known column). Returns the known columns too.
pub(super) async fn open(
    path: &SourceFile,
    limits: SourceSettings,
    columns: Option<&[String]>,
) -> Result<(Vec<String>, RowStream), SourceError> {
    let source_name = path.display().to_string();
    let owned = path.to_owned();
    let (lines, known) = run_blocking(
        || source_name.clone(),
        move || {
            let known = scan_known_columns(&owned, limits)?;
            Ok((Lines::open(&owned, limits.max_line_bytes)?, known))
        },
    )
    .await?;
    let projection = project(&known, columns, || source_name.clone())?;
    let wanted: Vec<String> = projection.iter().map(|&i| known[i].clone()).collect();
    let stream = spawn_blocking_reader(source_name, move |sender| {
        read_rows(lines, &wanted, limits.max_field_bytes, sender);
    });
    Ok((known, stream))
}

/// Top-level keys of the first [`KNOWN_COLUMNS_SCAN_LINES`] lines; invalid lines are left to
/// the row stream to report, a cap is a source error here. An empty file has no columns.
fn scan_known_columns(
    path: &SourceFile,
    limits: SourceSettings,
) -> Result<Vec<String>, SourceError> {
    let mut lines = Lines::open(path, limits.max_line_bytes)?;
    let mut keys = KeySet::new(limits);
    let mut empty = true;
    while let Some((line, bytes)) = lines.next_line()? {
        if line > KNOWN_COLUMNS_SCAN_LINES {
            break;
        }
        empty = false;
        match collect_keys(bytes, &mut keys) {
            Ok(()) | Err(KeyProblem::Row(_)) => {}
            Err(problem @ KeyProblem::Cap(_)) => return Err(problem.into_error(path, line)),
        }
        // Stop here rather than read one line more: what lies after is the stream's to report.
        if line == KNOWN_COLUMNS_SCAN_LINES {
            break;
        }
    }
    if empty {
        return Err(SourceError::NoColumns {
            path: path.to_path_buf(),
        });
    }
    Ok(keys.names)
}

/// The reader task: one row (or row error) per non-blank line.
fn read_rows(
    mut lines: Lines,
    columns: &[String],
    max_field_bytes: usize,
    mut sender: ChunkSender,
) {
    loop {
        let item = match lines.next_line() {
            Ok(Some((line, bytes))) => to_row(line, bytes, columns, max_field_bytes),
            Ok(None) => return sender.finish_blocking(None),
            Err(e) => return sender.finish_blocking(Some(e)),
        };
        if sender.push_blocking(item).is_err() {
            return;
        }
    }
}

fn to_row(
    line: u64,
    bytes: &[u8],
    columns: &[String],
    max_field_bytes: usize,
) -> Result<Row, RowError> {
    let mut values = vec![None; columns.len()];
    let mut too_long = None;
    object_text(bytes)
        .and_then(|text| {
            parse(
                text,
                Projected {
                    columns,
                    values: &mut values,
                    max_field_bytes,
                    too_long: &mut too_long,
                },
            )
        })
        .map_err(|reason| RowError {
            number: line,
            reason,
        })?;
    if let Some(i) = too_long {
        return Err(RowError {
            number: line,
            reason: format!(
                "the value of {} is longer than {max_field_bytes} bytes (setting \
                 source.max_field_bytes)",
                shown_name(&columns[i])
            ),
        });
    }
    Ok(Row {
        number: line,
        values,
    })
}

/// Why a line's keys could not be collected.
enum KeyProblem {
    /// The line is no JSON object: a row error.
    Row(String),
    /// The columns went over a cap: a source error.
    Cap(Cap),
}

/// A cap the columns went over.
#[derive(Clone, Copy)]
enum Cap {
    Columns(usize),
    HeaderBytes(usize),
}

impl KeyProblem {
    fn into_error(self, path: &Path, line: u64) -> SourceError {
        let source_name = path.display().to_string();
        match self {
            KeyProblem::Row(reason) => SourceError::InvalidRow {
                source_name,
                line,
                reason,
            },
            KeyProblem::Cap(Cap::Columns(max)) => SourceError::TooManyColumns {
                source_name,
                line,
                max,
            },
            KeyProblem::Cap(Cap::HeaderBytes(max)) => SourceError::HeaderTooLong {
                source_name,
                line,
                max,
            },
        }
    }
}

fn collect_keys(bytes: &[u8], keys: &mut KeySet) -> Result<(), KeyProblem> {
    let parsed = object_text(bytes).and_then(|text| parse(text, KeyCollector(keys)));
    // A cap stops the parse with an error of its own; the cap is what to report.
    match (keys.over.take(), parsed) {
        (Some(cap), _) => Err(KeyProblem::Cap(cap)),
        (None, parsed) => parsed.map_err(KeyProblem::Row),
    }
}

/// The line as text if it is UTF-8 and starts like an object; otherwise why it is no row.
fn object_text(bytes: &[u8]) -> Result<&str, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "the line is not valid UTF-8; save the file as UTF-8".to_owned())?;
    let kind = match text.trim_start().as_bytes().first() {
        Some(b'{') => return Ok(text),
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    };
    // Check it parses before calling it a non-object value rather than invalid JSON.
    let mut de = serde_json::Deserializer::from_str(text);
    IgnoredAny::deserialize(&mut de)
        .and_then(|_| de.end())
        .map_err(|e| json_error_reason(&e))?;
    Err(format!(
        "the line is {kind}, not a JSON object; each line must be one object"
    ))
}

/// Parses one line with `seed`, refusing anything after the object.
fn parse<'de>(text: &'de str, seed: impl DeserializeSeed<'de, Value = ()>) -> Result<(), String> {
    let mut de = serde_json::Deserializer::from_str(text);
    seed.deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| json_error_reason(&e))
}

/// A reason without the line's content: syntax messages are fixed phrases, while data errors
/// could quote a value, so those get a generic phrase.
fn json_error_reason(error: &serde_json::Error) -> String {
    match error.classify() {
        Category::Syntax | Category::Eof => {
            let message = error.to_string();
            let phrase = message.split(" at line ").next().unwrap_or(&message);
            format!(
                "the line is not valid JSON: {phrase} (column {})",
                error.column()
            )
        }
        Category::Data | Category::Io => format!(
            "the line is not a valid JSON object (column {})",
            error.column()
        ),
    }
}

/// Text of a top-level value: `None` for null, strings as they are, numbers and booleans as
/// written (a number is not rounded through `f64`: `12345678901234567890123` and `10.50` stay
/// as they are), nested arrays and objects as their compact JSON text.
fn render(raw: &RawValue) -> Result<Option<String>, serde_json::Error> {
    let text = raw.get();
    Ok(match text.as_bytes().first() {
        Some(b'"') => Some(serde_json::from_str::<String>(text)?),
        Some(b'[' | b'{') => Some(serde_json::from_str::<Value>(text)?.to_string()),
        _ if text == "null" => None,
        _ => Some(text.to_owned()),
    })
}

/// Non-blank lines of a file with their 1-based line numbers, reusing one buffer.
struct Lines {
    reader: BufReader<File>,
    /// The current line; reused so reading allocates only when a line is longer than before,
    /// and never past `max_bytes`.
    buf: Vec<u8>,
    /// The line cap, line feed included (`source.max_line_bytes`).
    max_bytes: usize,
    /// Physical lines read so far, blank ones included, so numbers match an editor's.
    line: u64,
    /// Names the file in I/O errors.
    path: PathBuf,
}

impl Lines {
    fn open(path: &SourceFile, max_bytes: usize) -> Result<Self, SourceError> {
        let mut reader = open_file(path, READ_BUFFER_BYTES)?;
        // A UTF-8 BOM (Notepad, PowerShell 5 `Out-File`) is no part of the first line's JSON.
        // `open_file` has filled the buffer, so a BOM at the start of the file is all in it.
        if reader.buffer().starts_with(UTF8_BOM) {
            reader.consume(UTF8_BOM.len());
        }
        Ok(Lines {
            reader,
            buf: Vec::new(),
            max_bytes,
            line: 0,
            path: path.to_path_buf(),
        })
    }

    fn next_line(&mut self) -> Result<Option<(u64, &[u8])>, SourceError> {
        loop {
            if !self.read_line()? {
                return Ok(None);
            }
            self.line += 1;
            if !self.buf.iter().all(u8::is_ascii_whitespace) {
                return Ok(Some((self.line, &self.buf)));
            }
        }
    }

    /// Reads the next line into `buf`, line feed included; `false` at the end of the file. A
    /// line over the cap is an error as soon as the cap is passed, not once it is all read.
    fn read_line(&mut self) -> Result<bool, SourceError> {
        self.buf.clear();
        loop {
            let available = self.reader.fill_buf().map_err(|source| SourceError::Read {
                path: self.path.clone(),
                line: self.line + 1,
                source,
            })?;
            if available.is_empty() {
                return Ok(!self.buf.is_empty());
            }
            let (take, done) = match memchr::memchr(b'\n', available) {
                Some(i) => (i + 1, true),
                None => (available.len(), false),
            };
            if self.buf.len() + take > self.max_bytes {
                return Err(SourceError::LineTooLong {
                    path: self.path.clone(),
                    line: self.line + 1,
                    max: self.max_bytes,
                });
            }
            self.buf.extend_from_slice(&available[..take]);
            self.reader.consume(take);
            if done {
                return Ok(true);
            }
        }
    }
}

/// Column names in first-seen order, within the column caps.
struct KeySet {
    /// The columns, in the order the file first uses them.
    names: Vec<String>,
    /// The same names, for a cheap membership test on every key of every line.
    seen: HashSet<String>,
    /// Bytes of the names together, against `max_header_bytes`.
    bytes: usize,
    max_columns: usize,
    max_header_bytes: usize,
    /// Set when a new key would go over a cap; the parse is stopped then.
    over: Option<Cap>,
}

impl KeySet {
    fn new(limits: SourceSettings) -> Self {
        KeySet {
            names: Vec::new(),
            seen: HashSet::new(),
            bytes: 0,
            max_columns: limits.max_columns,
            max_header_bytes: limits.max_header_bytes,
            over: None,
        }
    }

    /// Adds `name` unless known; `false` (with `over` set) when that would pass a cap.
    fn insert(&mut self, name: &str) -> bool {
        if self.seen.contains(name) {
            return true;
        }
        if self.names.len() >= self.max_columns {
            self.over = Some(Cap::Columns(self.max_columns));
            return false;
        }
        if self.bytes + name.len() > self.max_header_bytes {
            self.over = Some(Cap::HeaderBytes(self.max_header_bytes));
            return false;
        }
        self.bytes += name.len();
        self.seen.insert(name.to_owned());
        self.names.push(name.to_owned());
        true
    }
}

/// An object key, borrowed from the line unless it had escapes.
enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(s) => s,
            Key::Owned(s) => s,
        }
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::Borrowed(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key::Owned(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key::Owned(v))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Fills `values` from an object's keys that are in `columns`; skips the others.
struct Projected<'a> {
    /// The requested columns, in output order.
    columns: &'a [String],
    /// The row being built, one slot per requested column, `None` until its key is seen.
    values: &'a mut [Option<String>],
    /// Longest value kept (`source.max_field_bytes`).
    max_field_bytes: usize,
    /// Set to the column of a value over `max_field_bytes`: the row is then rejected.
    too_long: &'a mut Option<usize>,
}

impl<'de> DeserializeSeed<'de> for Projected<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Projected<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Projected {
            columns,
            values,
            max_field_bytes,
            too_long,
        } = self;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            // A handful of columns: a linear scan beats hashing.
            let mut slots = columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.as_str() == key.as_str())
                .map(|(i, _)| i);
            let Some(first) = slots.next() else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let text = render(map.next_value::<&'de RawValue>()?).map_err(A::Error::custom)?;
            if text.as_ref().is_some_and(|t| t.len() > max_field_bytes) {
                too_long.get_or_insert(first);
                continue;
            }
            // The same column requested twice gets the value twice.
            for other in slots {
                values[other].clone_from(&text);
            }
            values[first] = text;
        }
        Ok(())
    }
}

/// Records an object's keys in a [`KeySet`]; skips the values.
struct KeyCollector<'a>(&'a mut KeySet);

impl<'de> DeserializeSeed<'de> for KeyCollector<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for KeyCollector<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let keys = self.0;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            if !keys.insert(key.as_str()) {
                return Err(A::Error::custom("over a column cap"));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tempfile::NamedTempFile;

    use super::super::{SourceDef, describe, open};
    use super::*;
    use crate::source::testing::{names, read_all, temp_file, values};

    fn def(file: &NamedTempFile) -> SourceDef {
        SourceDef::Jsonl {
            path: file.path().to_owned().into(),
            limits: SourceSettings::default(),
        }
    }

    #[tokio::test]
    async fn numbers_are_sent_as_their_json_text() {
        let file = temp_file(
            b"{\"id\": 12345678901234567890123, \"price\": 10.50, \"e\": 1e2, \"p\": 0.1}\n",
        );

        let items = read_all(&def(&file), &["id", "price", "e", "p"]).await;

        assert_eq!(
            values(items[0].as_ref().expect("row")),
            [
                Some("12345678901234567890123"),
                Some("10.50"),
                Some("1e2"),
                Some("0.1")
            ]
        );
    }

    #[tokio::test]
    async fn a_utf8_bom_before_the_first_object_is_skipped() {
        let file = temp_file(
            b"\xEF\xBB\xBF{\"email\":\"a@example.com\"}\r\n{\"email\":\"b@example.com\"}\r\n",
        );

        let description = describe(&def(&file)).await.expect("describe");
        assert_eq!(description.columns, names(&["email"]));
        let items = read_all(&def(&file), &["email"]).await;
        assert_eq!(items.len(), 2);
        assert_eq!(
            values(items[0].as_ref().expect("first row read despite the BOM")),
            [Some("a@example.com")]
        );
    }

    #[tokio::test]
    async fn a_one_line_file_with_a_utf8_bom_has_its_columns() {
        let file = temp_file(b"\xEF\xBB\xBF{\"email\":\"a@example.com\"}");

        let description = describe(&def(&file)).await.expect("describe");

        assert_eq!(description.columns, names(&["email"]));
        assert_eq!(description.rows, 1);
    }

    #[tokio::test]
    async fn renders_numbers_booleans_and_nested_values_as_text() {
        let file = temp_file(
            br#"{"n": 42, "f": 1.5, "b": true, "list": [1, "x"], "obj": {"k": null}, "s": "hi"}
"#,
        );

        let items = read_all(&def(&file), &["n", "f", "b", "list", "obj", "s"]).await;

        assert_eq!(
            values(items[0].as_ref().expect("row")),
            [
                Some("42"),
                Some("1.5"),
                Some("true"),
                Some(r#"[1,"x"]"#),
                Some(r#"{"k":null}"#),
                Some("hi")
            ]
        );
    }

    #[tokio::test]
    async fn a_missing_key_or_null_is_none_and_an_empty_string_stays_empty() {
        let file =
            temp_file(b"{\"email\": \"a@example.com\", \"name\": \"\"}\n{\"email\": null}\n");

        let items = read_all(&def(&file), &["email", "name"]).await;

        assert_eq!(
            values(items[0].as_ref().expect("row")),
            [Some("a@example.com"), Some("")]
        );
        assert_eq!(values(items[1].as_ref().expect("row")), [None, None]);
    }

    #[tokio::test]
    async fn reads_keys_written_with_escapes() {
        let file = temp_file(b"{\"e\\u006dail\": \"a@example.com\"}\n");

        let items = read_all(&def(&file), &["email"]).await;

        assert_eq!(
            values(items[0].as_ref().expect("row")),
            [Some("a@example.com")]
        );
    }

    #[tokio::test]
    async fn describe_lists_the_union_of_keys_in_first_seen_order_and_skips_blank_lines() {
        let file = temp_file(b"{\"z\": 1, \"a\": 2}\n\n   \n{\"m\": 3, \"z\": 4}\n");

        let description = describe(&def(&file)).await.expect("describe");

        assert_eq!(
            description,
            Description {
                columns: names(&["z", "a", "m"]),
                types: vec![ColumnType::jsonl(); 3],
                rows: 2
            }
        );
    }

    #[tokio::test]
    async fn describe_refuses_invalid_json_naming_its_line() {
        let file = temp_file(b"{\"a\": 1}\n\n{\"a\": \"secret-value\n");

        let error = describe(&def(&file)).await.expect_err("invalid json");

        assert!(
            matches!(error, SourceError::InvalidRow { line: 3, .. }),
            "{error}"
        );
        assert!(!error.to_string().contains("secret-value"), "{error}");
    }

    #[tokio::test]
    async fn describe_refuses_a_line_that_is_not_an_object() {
        let file = temp_file(b"{\"a\": 1}\n[\"a@example.com\"]\n");

        let error = describe(&def(&file)).await.expect_err("array line");

        assert!(error.to_string().contains("line 2"), "{error}");
        assert!(error.to_string().contains("an array"), "{error}");
        assert!(!error.to_string().contains("a@example.com"), "{error}");
    }

    #[tokio::test]
    async fn open_yields_a_bad_line_as_a_row_error_and_goes_on() {
        let file = temp_file(b"{\"a\": 1}\nnot json\n\n{\"a\": 2}\n");

        let items = read_all(&def(&file), &["a"]).await;

        assert_eq!(items.len(), 3);
        let error = items[1].as_ref().expect_err("bad line");
        assert_eq!(error.number, 2);
        assert!(error.reason.contains("not valid JSON"), "{}", error.reason);
        let last = items[2].as_ref().expect("row");
        assert_eq!((last.number, values(last)), (4, vec![Some("2")]));
    }

    fn def_with(file: &NamedTempFile, limits: SourceSettings) -> SourceDef {
        SourceDef::Jsonl {
            path: file.path().to_owned().into(),
            limits,
        }
    }

    /// Caps small enough for generated test files.
    fn small_limits() -> SourceSettings {
        SourceSettings {
            max_line_bytes: 1024,
            max_field_bytes: 100,
            max_header_bytes: 64,
            max_columns: 4,
        }
    }

    #[tokio::test]
    async fn an_empty_file_is_refused_for_having_no_columns() {
        for contents in [&b""[..], b"\n  \n\n", b"{}\n"] {
            let file = temp_file(contents);

            let error = describe(&def(&file)).await.expect_err("no columns");

            assert!(matches!(error, SourceError::NoColumns { .. }), "{error}");
            assert!(
                error
                    .to_string()
                    .contains(&file.path().display().to_string()),
                "{error}"
            );
        }
    }

    #[tokio::test]
    async fn opening_an_empty_file_is_refused_for_having_no_columns() {
        let file = temp_file(b"");

        let error = open(&def(&file), &names(&["email"]))
            .await
            .err()
            .expect("empty");

        assert!(matches!(error, SourceError::NoColumns { .. }), "{error}");
    }

    #[tokio::test]
    async fn a_line_over_the_cap_is_a_source_error_naming_the_line_and_the_setting() {
        let contents = format!(
            "{{\"email\": \"a@example.com\"}}\n{{\"email\": \"{}\"}}\n",
            "secret".repeat(200)
        );
        let file = temp_file(contents.as_bytes());

        let error = describe(&def_with(&file, small_limits()))
            .await
            .expect_err("long line");

        assert!(
            matches!(
                error,
                SourceError::LineTooLong {
                    line: 2,
                    max: 1024,
                    ..
                }
            ),
            "{error}"
        );
        assert!(
            error.to_string().contains("source.max_line_bytes"),
            "{error}"
        );
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    #[tokio::test]
    async fn a_line_over_the_cap_past_the_scanned_lines_stops_the_row_stream() {
        let mut contents = "{\"email\": \"a@example.com\"}\n".repeat(1000);
        contents.push_str(&format!("{{\"email\": \"{}\"}}\n", "x".repeat(2000)));
        contents.push_str("{\"email\": \"c@example.com\"}\n");
        let file = temp_file(contents.as_bytes());
        let mut stream = open(&def_with(&file, small_limits()), &names(&["email"]))
            .await
            .expect("open");

        let mut rows = 0;
        let error = loop {
            match stream.next_chunk(2048).await {
                Ok(Some(chunk)) => rows += chunk.len(),
                Ok(None) => panic!("the stream ended without an error"),
                Err(e) => break e,
            }
        };

        assert_eq!(rows, 1000);
        assert!(
            matches!(error, SourceError::LineTooLong { line: 1001, .. }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn more_distinct_keys_than_the_column_cap_are_refused_naming_the_line() {
        let file = temp_file(b"{\"a\": 1, \"b\": 2}\n{\"c\": 3, \"d\": 4}\n{\"e\": 5}\n");

        let error = describe(&def_with(&file, small_limits()))
            .await
            .expect_err("five columns");

        assert!(
            matches!(
                error,
                SourceError::TooManyColumns {
                    line: 3,
                    max: 4,
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("source.max_columns"), "{error}");
    }

    #[tokio::test]
    async fn key_names_longer_together_than_the_header_cap_are_refused() {
        let contents = format!("{{\"email\": 1, \"{}\": 2}}\n", "k".repeat(100));
        let file = temp_file(contents.as_bytes());

        let error = open(&def_with(&file, small_limits()), &names(&["email"]))
            .await
            .err()
            .expect("long key");

        assert!(
            matches!(
                error,
                SourceError::HeaderTooLong {
                    line: 1,
                    max: 64,
                    ..
                }
            ),
            "{error}"
        );
        assert!(!error.to_string().contains("kkkk"), "{error}");
    }

    #[tokio::test]
    async fn a_mapped_value_over_the_field_cap_is_a_row_error_naming_the_column() {
        let contents = format!(
            "{{\"email\": \"a@example.com\", \"notes\": \"{}\"}}\n{{\"email\": \"b@example.com\"}}\n",
            "x".repeat(101)
        );
        let file = temp_file(contents.as_bytes());

        let items = read_all(&def_with(&file, small_limits()), &["email", "notes"]).await;

        let long = items[0].as_ref().expect_err("long value");
        assert!(long.reason.contains("`notes`"), "{}", long.reason);
        assert!(
            long.reason.contains("source.max_field_bytes"),
            "{}",
            long.reason
        );
        assert!(items[1].is_ok());
    }

    #[tokio::test]
    async fn a_utf16_file_is_refused_naming_the_encoding() {
        let file = temp_file(b"\xFE\xFF\x00{\x00}\x00\n");

        let error = describe(&def(&file)).await.expect_err("utf-16");

        assert!(matches!(error, SourceError::Utf16 { .. }), "{error}");
    }

    #[tokio::test]
    async fn a_column_only_seen_after_the_first_thousand_lines_is_unknown() {
        let mut contents = "{\"email\": \"x\"}\n".repeat(1000);
        contents.push_str("{\"email\": \"y\", \"late\": 1}\n");
        let file = temp_file(contents.as_bytes());

        let error = open(&def(&file), &names(&["late"]))
            .await
            .err()
            .expect("unknown column");

        match error {
            SourceError::UnknownColumn {
                column, available, ..
            } => {
                assert_eq!(column, "late");
                assert_eq!(available, names(&["email"]));
            }
            other => panic!("unexpected error: {other}"),
        }
    }
}
