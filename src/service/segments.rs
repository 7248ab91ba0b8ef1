//! Segments: a CSV or JSONL file, or an SQL query against the user's SQLite or PostgreSQL
//! database (read-only). Adding one reads it through once, so a broken file is refused with
//! the line at fault before it is saved.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::{Context, Remedy, ServiceError, check_name};
use crate::secrets::Purpose;
use crate::source::{self, Row, SourceDef};
use crate::store::SegmentDef;
use crate::store::connections::Sealed;
use crate::store::segments::NewSegment;
pub use crate::store::segments::SegmentKind;

/// Where a new segment's profiles come from, as the user gave it.
#[derive(Debug)]
pub enum SegmentInput {
    Csv {
        path: PathBuf,
        delimiter: u8,
    },
    Jsonl {
        path: PathBuf,
    },
    /// `database_url` sealed in the store; or `database_env` read at each run.
    Sql {
        query: String,
        database_url: Option<SecretString>,
        database_env: Option<String>,
    },
}

/// A new segment's source, resolved: how to read it now, and what the store keeps of it.
#[derive(Debug)]
struct ResolvedSource {
    def: SourceDef,
    kind: SegmentKind,
    /// The absolute file path (CSV, JSONL).
    path: Option<String>,
    delimiter: Option<u8>,
    query: Option<String>,
    /// The database URL, sealed, when it was given rather than named by a variable.
    database_sealed: Option<Sealed>,
    /// The variable the database URL is read from at each use.
    database_env: Option<String>,
    /// The database URL with its password masked.
    database_shown: Option<String>,
}

impl ResolvedSource {
    /// A file source: only its path is kept.
    fn file(def: SourceDef, kind: SegmentKind, path: String, delimiter: Option<u8>) -> Self {
        ResolvedSource {
            def,
            kind,
            path: Some(path),
            delimiter,
            query: None,
            database_sealed: None,
            database_env: None,
            database_shown: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentView {
    pub name: String,
    pub kind: SegmentKind,
    /// File path, or the database (password masked) and query.
    pub source: String,
    pub columns: Vec<String>,
    pub rows: i64,
    pub exports: Vec<String>,
    /// A PostgreSQL source's TLS mode and why, e.g. "verify-full (default off loopback)"; shown
    /// by `segment add` and `segment show`, which have the database URL at hand.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
}

impl Context {
    pub async fn find_segment(&self, name: &str) -> Result<SegmentDef, ServiceError> {
        self.store
            .segment(name)
            .await?
            .ok_or_else(|| ServiceError::not_found("segment", name))
    }

    /// How to read a stored segment.
    pub fn source_def(&self, s: &SegmentDef) -> Result<SourceDef, ServiceError> {
        match s.kind {
            SegmentKind::Csv => Ok(SourceDef::Csv {
                path: PathBuf::from(s.path.clone().unwrap_or_default()),
                delimiter: s
                    .delimiter
                    .and_then(|d| u8::try_from(d).ok())
                    .unwrap_or(b','),
            }),
            SegmentKind::Jsonl => Ok(SourceDef::Jsonl {
                path: PathBuf::from(s.path.clone().unwrap_or_default()),
            }),
            SegmentKind::Sql => {
                let url = match (&s.database_sealed, &s.database_env) {
                    (Some(sealed), _) => {
                        self.secret_key()?.open(Purpose::DatabaseUrl, &sealed.0)?
                    }
                    (None, Some(var)) => database_url_from_env(var).ok_or_else(|| {
                        ServiceError::SegmentDatabaseEnvUnset {
                            segment: s.name.clone(),
                            var: var.clone(),
                        }
                    })?,
                    (None, None) => {
                        return Err(ServiceError::SegmentWithoutDatabase {
                            segment: s.name.clone(),
                        });
                    }
                };
                Ok(SourceDef::Sql {
                    query: s.query.clone().unwrap_or_default(),
                    database_url: url,
                })
            }
        }
    }

    async fn segment_view(&self, s: SegmentDef) -> Result<SegmentView, ServiceError> {
        let exports = self.store.exports_using_segment(s.id).await?;
        let origin = match s.kind {
            SegmentKind::Sql => format!(
                "{} :: {}",
                s.database_shown
                    .clone()
                    .or_else(|| s.database_env.as_ref().map(|v| format!("${v}")))
                    .unwrap_or_default(),
                s.query.clone().unwrap_or_default()
            ),
            SegmentKind::Csv | SegmentKind::Jsonl => s.path.clone().unwrap_or_default(),
        };
        Ok(SegmentView {
            columns: s.columns.0,
            name: s.name,
            kind: s.kind,
            source: origin,
            rows: s.row_count,
            exports,
            tls: None,
        })
    }

    /// Reads the source through once (columns, row count, every line valid), then saves it.
    pub async fn add_segment(
        &self,
        name: &str,
        input: SegmentInput,
    ) -> Result<SegmentView, ServiceError> {
        check_name("segment", name)?;
        if self.store.segment(name).await?.is_some() {
            return Err(ServiceError::Duplicate {
                kind: "segment",
                name: name.to_owned(),
            });
        }
        let resolved = self.resolve_source(input)?;
        let description = source::describe(&resolved.def).await?;
        let inserted = self
            .store
            .insert_segment(NewSegment {
                name,
                kind: resolved.kind,
                path: resolved.path.as_deref(),
                delimiter: resolved.delimiter,
                query: resolved.query.as_deref(),
                database_sealed: resolved.database_sealed,
                database_env: resolved.database_env.as_deref(),
                database_shown: resolved.database_shown.as_deref(),
                columns: &description.columns,
                row_count: description.rows,
            })
            .await?;
        if inserted.is_none() {
            return Err(ServiceError::Duplicate {
                kind: "segment",
                name: name.to_owned(),
            });
        }
        tracing::info!(segment = %name, kind = %resolved.kind, rows = description.rows, "Segment saved");
        // The view of what was just stored: its columns and row count are the ones read above.
        let mut view = self.segment_view(self.find_segment(name).await?).await?;
        view.tls = source::postgres_tls(&resolved.def).map(|tls| tls.to_string());
        Ok(view)
    }

    /// Checks the source the user gave and resolves it: absolute paths, the database URL
    /// sealed or read from its variable.
    fn resolve_source(&self, input: SegmentInput) -> Result<ResolvedSource, ServiceError> {
        match input {
            SegmentInput::Csv { path, delimiter } => {
                let path = absolute(path)?;
                let shown = path.display().to_string();
                Ok(ResolvedSource::file(
                    SourceDef::Csv { path, delimiter },
                    SegmentKind::Csv,
                    shown,
                    Some(delimiter),
                ))
            }
            SegmentInput::Jsonl { path } => {
                let path = absolute(path)?;
                let shown = path.display().to_string();
                Ok(ResolvedSource::file(
                    SourceDef::Jsonl { path },
                    SegmentKind::Jsonl,
                    shown,
                    None,
                ))
            }
            SegmentInput::Sql {
                query,
                database_url,
                database_env,
            } => {
                let (url, database_sealed, database_env) = match (database_url, database_env) {
                    (Some(url), _) => {
                        let sealed = self.secret_key()?.seal(Purpose::DatabaseUrl, &url);
                        (url, Some(Sealed(sealed)), None)
                    }
                    (None, Some(var)) => match database_url_from_env(&var) {
                        Some(url) => (url, None, Some(var)),
                        None => return Err(ServiceError::DatabaseEnvUnset { var }),
                    },
                    (None, None) => return Err(ServiceError::NoDatabase),
                };
                let shown = crate::redact::redact_url(url.expose_secret());
                Ok(ResolvedSource {
                    def: SourceDef::Sql {
                        query: query.clone(),
                        database_url: url,
                    },
                    kind: SegmentKind::Sql,
                    path: None,
                    delimiter: None,
                    query: Some(query),
                    database_sealed,
                    database_env,
                    database_shown: Some(shown),
                })
            }
        }
    }

    pub async fn list_segments(&self) -> Result<Vec<SegmentView>, ServiceError> {
        let mut out = Vec::new();
        for s in self.store.segments().await? {
            out.push(self.segment_view(s).await?);
        }
        Ok(out)
    }

    /// Columns and the current row count (the source is read again).
    pub async fn show_segment(&self, name: &str) -> Result<SegmentView, ServiceError> {
        let s = self.find_segment(name).await?;
        let def = self.source_def(&s)?;
        let mut view = self.segment_view(s).await?;
        let description = source::describe(&def).await?;
        view.columns = description.columns;
        view.rows = description.rows as i64;
        view.tls = source::postgres_tls(&def).map(|tls| tls.to_string());
        Ok(view)
    }

    pub async fn preview_segment(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<(Vec<String>, Vec<Row>), ServiceError> {
        let s = self.find_segment(name).await?;
        let def = self.source_def(&s)?;
        Ok(source::preview(&def, limit).await?)
    }

    pub async fn remove_segment(&self, name: &str) -> Result<(), ServiceError> {
        let s = self.find_segment(name).await?;
        let users = self.store.exports_using_segment(s.id).await?;
        if !users.is_empty() {
            return Err(ServiceError::InUse {
                kind: "segment",
                name: name.to_owned(),
                users,
                remedy: Remedy::Detach,
            });
        }
        self.store.remove_segment(s.id, name).await?;
        Ok(())
    }
}

/// Stored paths are absolute: the daemon's working folder is not the user's.
fn absolute(path: PathBuf) -> Result<PathBuf, ServiceError> {
    std::path::absolute(&path).map_err(|source| ServiceError::ResolvePath { path, source })
}

/// A database URL from the environment variable `var`, read at each use so it never has to be
/// stored; `None` when it is unset, empty or not Unicode.
fn database_url_from_env(var: &str) -> Option<SecretString> {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .map(SecretString::from)
}
