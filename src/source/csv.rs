//! CSV segments: a header row naming the columns, then one profile per record. UTF-8 with an
//! optional BOM, RFC 4180 quoting (embedded delimiters, newlines and doubled quotes), any
//! single-byte delimiter. Records are read as raw bytes and only the projected fields become
//! `String`s, which keeps a million-row file well under a couple of seconds.

use std::fs::File;
use std::path::Path;

use ::csv::{ByteRecord, ErrorKind, Reader, ReaderBuilder};

use super::{
    ChunkSender, Row, RowError, RowStream, SourceError, duplicate_names, project, run_blocking,
    spawn_blocking_reader,
};

/// Read buffer of the CSV parser: larger than the crate's 8 KiB default so that big files
/// take fewer read calls.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Opens `path`, reads its header and starts streaming its records projected onto `columns`
/// (`None`: every column). Returns the header's column names too.
pub(super) async fn open(
    path: &Path,
    delimiter: u8,
    columns: Option<&[String]>,
) -> Result<(Vec<String>, RowStream), SourceError> {
    let source_name = path.display().to_string();
    let owned = path.to_owned();
    let (reader, header) = run_blocking(
        || source_name.clone(),
        move || open_reader(&owned, delimiter),
    )
    .await?;
    let projection = project(&header, columns, || source_name.clone())?;
    let path = path.to_owned();
    let task_header = header.clone();
    let stream = spawn_blocking_reader(source_name, move |sender| {
        read_rows(reader, &path, &task_header, &projection, sender);
    });
    Ok((header, stream))
}

/// Opens the file and reads the header row: trimmed names, UTF-8, each name once.
fn open_reader(path: &Path, delimiter: u8) -> Result<(Reader<File>, Vec<String>), SourceError> {
    let file = File::open(path).map_err(|source| SourceError::Open {
        path: path.to_owned(),
        source,
    })?;
    // Headers are read by hand and rows of the wrong width are checked by hand, so that a
    // ragged row becomes a row error naming its line rather than a parser error.
    let mut reader = ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(READ_BUFFER_BYTES)
        .from_reader(file);
    let mut record = ByteRecord::new();
    match reader.read_byte_record(&mut record) {
        Ok(true) => {}
        Ok(false) => {
            return Err(SourceError::MissingHeader {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(read_error(path, 1, e)),
    }
    let line = record.position().map_or(1, |p| p.line());
    let header = record
        .iter()
        .map(|field| std::str::from_utf8(field).map(|name| name.trim().to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| SourceError::HeaderNotUtf8 {
            path: path.to_owned(),
            line,
        })?;
    let duplicates = duplicate_names(&header);
    if !duplicates.is_empty() {
        return Err(SourceError::DuplicateColumns {
            source_name: path.display().to_string(),
            columns: duplicates,
        });
    }
    Ok((reader, header))
}

/// The reader task: parses records into rows until the end, an I/O error or a gone consumer.
fn read_rows(
    mut reader: Reader<File>,
    path: &Path,
    header: &[String],
    projection: &[usize],
    mut sender: ChunkSender,
) {
    // One record buffer for the whole file: the parser reuses its allocations.
    let mut record = ByteRecord::new();
    let mut line = 1;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => return sender.finish_blocking(None),
            Err(e) => return sender.finish_blocking(Some(read_error(path, line + 1, e))),
        }
        line = record.position().map_or(line + 1, |p| p.line());
        if sender
            .push_blocking(to_row(&record, line, header, projection))
            .is_err()
        {
            return;
        }
    }
}

/// Checks one record against the header and projects it. Reasons name columns, never values.
fn to_row(
    record: &ByteRecord,
    line: u64,
    header: &[String],
    projection: &[usize],
) -> Result<Row, RowError> {
    if record.len() != header.len() {
        return Err(RowError {
            number: line,
            reason: format!(
                "the row has {} fields but the header has {} columns",
                record.len(),
                header.len()
            ),
        });
    }
    // Every field is checked, not only the projected ones, so that open rejects exactly the
    // rows describe refuses. The ASCII test is the fast path for typical data.
    if !record.as_slice().is_ascii()
        && let Some(i) = record.iter().position(|f| std::str::from_utf8(f).is_err())
    {
        return Err(RowError {
            number: line,
            reason: format!(
                "the value in column `{}` is not valid UTF-8; save the file as UTF-8",
                header[i]
            ),
        });
    }
    let values = projection
        .iter()
        // Validated above, so this borrows and copies once; it never replaces anything.
        .map(|&i| Some(String::from_utf8_lossy(&record[i]).into_owned()))
        .collect();
    Ok(Row {
        number: line,
        values,
    })
}

fn read_error(path: &Path, line: u64, error: ::csv::Error) -> SourceError {
    let line = error.position().map_or(line, |p| p.line());
    match error.into_kind() {
        ErrorKind::Io(source) => SourceError::Read {
            path: path.to_owned(),
            line,
            source,
        },
        // Unreachable with byte records and flexible widths; reported rather than hidden.
        other => SourceError::ReaderFailed {
            source_name: path.display().to_string(),
            message: format!("CSV parser error near line {line}: {other:?}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use tempfile::NamedTempFile;

    use super::super::{ColumnType, Description, SourceDef, describe, open, preview};
    use super::*;
    use crate::source::testing::{names, read_all, temp_file, values};

    fn def(file: &NamedTempFile, delimiter: u8) -> SourceDef {
        SourceDef::Csv {
            path: file.path().to_owned(),
            delimiter,
        }
    }

    #[tokio::test]
    async fn strips_a_utf8_bom_before_the_first_header_name() {
        let file = temp_file(b"\xEF\xBB\xBFemail,name\na@example.com,Ann\n");

        let description = describe(&def(&file, b',')).await.expect("describe");

        assert_eq!(
            description,
            Description {
                columns: names(&["email", "name"]),
                types: vec![ColumnType::csv(); 2],
                rows: 1
            }
        );
    }

    #[tokio::test]
    async fn trims_header_names() {
        let file = temp_file(b" email , name\na,b\n");

        let description = describe(&def(&file, b',')).await.expect("describe");

        assert_eq!(description.columns, names(&["email", "name"]));
    }

    #[tokio::test]
    async fn reads_quoted_fields_with_delimiters_newlines_and_quotes() {
        let file = temp_file(b"a,b\n\"x,y\",\"two\nlines\"\n\"say \"\"hi\"\"\",\"\"\nlast,row\n");

        let items = read_all(&def(&file, b','), &["a", "b"]).await;

        let rows: Vec<&Row> = items.iter().map(|i| i.as_ref().expect("row")).collect();
        assert_eq!(values(rows[0]), [Some("x,y"), Some("two\nlines")]);
        assert_eq!(values(rows[1]), [Some("say \"hi\""), Some("")]);
        // The quoted newline moves later records down a line.
        assert_eq!(rows.iter().map(|r| r.number).collect::<Vec<_>>(), [2, 4, 5]);
    }

    #[tokio::test]
    async fn splits_on_a_custom_delimiter() {
        let file = temp_file(b"email;name\na@example.com;Smith, Ann\n");

        let items = read_all(&def(&file, b';'), &["name", "email"]).await;

        let row = items[0].as_ref().expect("row");
        assert_eq!(values(row), [Some("Smith, Ann"), Some("a@example.com")]);
    }

    #[tokio::test]
    async fn splits_on_tabs() {
        let file = temp_file(b"email\tname\na@example.com\tAnn\n");

        let items = read_all(&def(&file, b'\t'), &["name"]).await;

        assert_eq!(values(items[0].as_ref().expect("row")), [Some("Ann")]);
    }

    #[tokio::test]
    async fn projects_the_requested_columns_in_the_requested_order() {
        let file = temp_file(b"id,email,name,phone\n1,a@example.com,Ann,555\n");

        let items = read_all(&def(&file, b','), &["phone", "email"]).await;

        let row = items[0].as_ref().expect("row");
        assert_eq!(row.number, 2);
        assert_eq!(values(row), [Some("555"), Some("a@example.com")]);
    }

    #[tokio::test]
    async fn describe_refuses_a_ragged_row_naming_its_line() {
        let file = temp_file(b"a,b\n1,2\n3\n4,5\n");

        let error = describe(&def(&file, b',')).await.expect_err("ragged");

        assert!(
            matches!(error, SourceError::InvalidRow { line: 3, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("line 3"), "{error}");
    }

    #[tokio::test]
    async fn open_yields_a_ragged_row_as_a_row_error_and_goes_on() {
        let file = temp_file(b"a,b\n1,2\n3,4,5\n6,7\n");

        let items = read_all(&def(&file, b','), &["a"]).await;

        assert_eq!(items.len(), 3);
        let error = items[1].as_ref().expect_err("ragged");
        assert_eq!(error.number, 3);
        assert!(error.reason.contains("3 fields"), "{}", error.reason);
        assert_eq!(values(items[2].as_ref().expect("row")), [Some("6")]);
    }

    #[tokio::test]
    async fn describe_refuses_invalid_utf8_naming_its_line() {
        let file = temp_file(b"a,b\n1,2\n3,caf\xE9\n");

        let error = describe(&def(&file, b',')).await.expect_err("latin-1");

        assert!(
            matches!(error, SourceError::InvalidRow { line: 3, .. }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn open_yields_invalid_utf8_as_a_row_error_naming_the_column() {
        let file = temp_file(b"a,b\n1,caf\xE9\n3,4\n");

        let items = read_all(&def(&file, b','), &["a"]).await;

        let error = items[0].as_ref().expect_err("latin-1");
        assert_eq!(error.number, 2);
        assert!(error.reason.contains("`b`"), "{}", error.reason);
        assert!(!error.reason.contains("caf"), "{}", error.reason);
        assert_eq!(values(items[1].as_ref().expect("row")), [Some("3")]);
    }

    #[tokio::test]
    async fn refuses_an_empty_file_for_lack_of_a_header() {
        let file = temp_file(b"");

        let error = describe(&def(&file, b',')).await.expect_err("empty");

        assert!(
            matches!(error, SourceError::MissingHeader { .. }),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .contains(&file.path().display().to_string()),
            "{error}"
        );
    }

    #[tokio::test]
    async fn refuses_a_missing_file_naming_its_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("segment.csv");

        let error = describe(&SourceDef::Csv {
            path: path.clone(),
            delimiter: b',',
        })
        .await
        .expect_err("missing");

        assert!(matches!(error, SourceError::Open { .. }), "{error}");
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "{error}"
        );
    }

    #[tokio::test]
    async fn unknown_column_error_lists_the_available_columns() {
        let file = temp_file(b"email,name\n");

        let error = open(&def(&file, b','), &names(&["phone"]))
            .await
            .err()
            .expect("unknown column");

        match error {
            SourceError::UnknownColumn {
                column, available, ..
            } => {
                assert_eq!(column, "phone");
                assert_eq!(available, names(&["email", "name"]));
            }
            other => panic!("unexpected error: {other}"),
        }
    }

    #[tokio::test]
    async fn refuses_duplicate_header_names_naming_them() {
        let file = temp_file(b"email,name,email\n");

        let error = describe(&def(&file, b',')).await.expect_err("duplicate");

        match &error {
            SourceError::DuplicateColumns { columns, .. } => {
                assert_eq!(columns, &names(&["email"]));
            }
            other => panic!("unexpected error: {other}"),
        }
        assert!(error.to_string().contains("`email`"), "{error}");
    }

    #[tokio::test]
    async fn preview_returns_every_column_and_at_most_the_limit() {
        let file = temp_file(b"a,b\n1,2\n3,4\n5,6\n");

        let preview = preview(&def(&file, b','), 2).await.expect("preview");

        assert_eq!(preview.columns, names(&["a", "b"]));
        assert_eq!(preview.rows.len(), 2);
        assert_eq!(
            values(preview.rows[1].as_ref().expect("row")),
            [Some("3"), Some("4")]
        );
    }

    #[tokio::test]
    async fn streams_100k_generated_rows_in_chunks_no_larger_than_asked() {
        let mut contents = String::from("id,email,first,last\n");
        for i in 0..100_000 {
            contents.push_str(&format!("{i},user{i}@example.com,First{i},Last{i}\n"));
        }
        let file = temp_file(contents.as_bytes());
        let mut stream = open(&def(&file, b','), &names(&["email", "id"]))
            .await
            .expect("open");

        let mut count = 0u64;
        let mut last = None;
        while let Some(chunk) = stream.next_chunk(1000).await.expect("chunk") {
            assert!(!chunk.is_empty() && chunk.len() <= 1000, "{}", chunk.len());
            for item in chunk {
                let row = item.expect("row");
                count += 1;
                assert_eq!(row.number, count + 1);
                last = Some(row);
            }
        }

        assert_eq!(count, 100_000);
        let last = last.expect("a last row");
        assert_eq!(
            values(&last),
            [Some("user99999@example.com"), Some("99999")]
        );
    }
}
