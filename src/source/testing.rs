//! Helpers shared by the readers' tests.

use super::{Row, RowError, SourceDef, open};

/// Column names as the readers take them.
pub fn names(columns: &[&str]) -> Vec<String> {
    columns.iter().map(|c| c.to_string()).collect()
}

/// A row's values as `Option<&str>`, for comparisons.
pub fn values(row: &Row) -> Vec<Option<&str>> {
    row.values.iter().map(|v| v.as_deref()).collect()
}

/// Every item of a source, projected onto `columns`.
pub async fn read_all(def: &SourceDef, columns: &[&str]) -> Vec<Result<Row, RowError>> {
    let mut stream = open(def, &names(columns)).await.expect("open");
    let mut items = Vec::new();
    while let Some(chunk) = stream.next_chunk(100).await.expect("chunk") {
        items.extend(chunk);
    }
    items
}

/// A temporary file holding `contents`.
pub fn temp_file(contents: &[u8]) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(contents).expect("write temp file");
    file
}
