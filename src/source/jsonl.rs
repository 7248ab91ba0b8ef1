//! JSONL segments (being written).

use std::path::Path;

use super::{Description, RowStream, SourceError};

pub(super) async fn describe(path: &Path) -> Result<Description, SourceError> {
    Err(not_yet(path.display().to_string()))
}

pub(super) async fn open(
    path: &Path,
    _columns: Option<&[String]>,
) -> Result<(Vec<String>, RowStream), SourceError> {
    Err(not_yet(path.display().to_string()))
}

fn not_yet(source_name: String) -> SourceError {
    SourceError::ReaderFailed {
        source_name,
        message: "JSONL sources are not implemented yet".to_owned(),
    }
}
