//! SQL segments (being written).

use secrecy::{ExposeSecret, SecretString};

use super::{RowStream, SourceError};

pub fn redact_url(url: &str) -> String {
    url.split('@').next_back().unwrap_or_default().to_owned()
}

pub(super) fn source_name(url: &SecretString) -> String {
    redact_url(url.expose_secret())
}

pub(super) async fn open(
    _query: &str,
    url: &SecretString,
    _columns: Option<&[String]>,
) -> Result<(Vec<String>, RowStream), SourceError> {
    Err(SourceError::ReaderFailed {
        source_name: source_name(url),
        message: "SQL sources are not implemented yet".to_owned(),
    })
}
