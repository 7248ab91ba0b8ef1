//! Segments: a CSV or JSONL file, or an SQL query against the user's SQLite or PostgreSQL
//! database (read-only). Adding one reads it through once, so a broken file is refused with
//! the line at fault before it is saved.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::{Context, ServiceError, check_name};
use crate::secrets::Purpose;
use crate::source::{self, Row, SourceDef};
use crate::store::SegmentDef;
use crate::store::connections::Sealed;
use crate::store::segments::NewSegment;

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

#[derive(Debug, Clone, Serialize)]
pub struct SegmentView {
    pub name: String,
    pub kind: String,
    /// File path, or the database (password masked) and query.
    pub source: String,
    pub columns: Vec<String>,
    pub rows: i64,
    pub exports: Vec<String>,
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
        match s.kind.as_str() {
            "csv" => Ok(SourceDef::Csv {
                path: PathBuf::from(s.path.clone().unwrap_or_default()),
                delimiter: s
                    .delimiter
                    .and_then(|d| u8::try_from(d).ok())
                    .unwrap_or(b','),
            }),
            "jsonl" => Ok(SourceDef::Jsonl {
                path: PathBuf::from(s.path.clone().unwrap_or_default()),
            }),
            _ => {
                let url = match (&s.database_sealed, &s.database_env) {
                    (Some(sealed), _) => {
                        self.secret_key()?.open(Purpose::DatabaseUrl, &sealed.0)?
                    }
                    (None, Some(var)) => match std::env::var(var) {
                        Ok(v) if !v.is_empty() => SecretString::from(v),
                        _ => {
                            return Err(ServiceError::Invalid(format!(
                                "segment {:?} reads its database URL from the environment \
                                 variable {var}, which is not set",
                                s.name
                            )));
                        }
                    },
                    (None, None) => {
                        return Err(ServiceError::Invalid(format!(
                            "segment {:?} has no database",
                            s.name
                        )));
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
        let origin = match s.kind.as_str() {
            "sql" => format!(
                "{} :: {}",
                s.database_shown
                    .clone()
                    .or_else(|| s.database_env.as_ref().map(|v| format!("${v}")))
                    .unwrap_or_default(),
                s.query.clone().unwrap_or_default()
            ),
            _ => s.path.clone().unwrap_or_default(),
        };
        Ok(SegmentView {
            columns: s.columns(),
            name: s.name,
            kind: s.kind,
            source: origin,
            rows: s.row_count,
            exports,
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
        let (def, kind, path, delimiter, query, sealed, env, shown) = match input {
            SegmentInput::Csv { path, delimiter } => {
                let path = absolute(path)?;
                let shown = path.display().to_string();
                (
                    SourceDef::Csv { path, delimiter },
                    "csv",
                    Some(shown),
                    Some(delimiter),
                    None,
                    None,
                    None,
                    None,
                )
            }
            SegmentInput::Jsonl { path } => {
                let path = absolute(path)?;
                let shown = path.display().to_string();
                (
                    SourceDef::Jsonl { path },
                    "jsonl",
                    Some(shown),
                    None,
                    None,
                    None,
                    None,
                    None,
                )
            }
            SegmentInput::Sql {
                query,
                database_url,
                database_env,
            } => {
                let (url, sealed, env) = match (database_url, database_env) {
                    (Some(url), _) => {
                        let sealed = self.secret_key()?.seal(Purpose::DatabaseUrl, &url);
                        (url, Some(Sealed(sealed)), None)
                    }
                    (None, Some(var)) => match std::env::var(&var) {
                        Ok(v) if !v.is_empty() => (SecretString::from(v), None, Some(var)),
                        _ => {
                            return Err(ServiceError::Invalid(format!(
                                "environment variable {var} (--database-env) is not set"
                            )));
                        }
                    },
                    (None, None) => {
                        return Err(ServiceError::Invalid(
                            "an SQL segment needs --database URL or --database-env VAR".to_owned(),
                        ));
                    }
                };
                let shown = crate::redact::redact_url(url.expose_secret());
                (
                    SourceDef::Sql {
                        query: query.clone(),
                        database_url: url,
                    },
                    "sql",
                    None,
                    None,
                    Some(query),
                    sealed,
                    env,
                    Some(shown),
                )
            }
        };
        let description = source::describe(&def).await?;
        let inserted = self
            .store
            .insert_segment(NewSegment {
                name,
                kind,
                path: path.as_deref(),
                delimiter,
                query: query.as_deref(),
                database_sealed: sealed,
                database_env: env.as_deref(),
                database_shown: shown.as_deref(),
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
        tracing::info!(segment = %name, kind, rows = description.rows, "Segment saved");
        // The view of what was just stored: its columns and row count are the ones read above.
        self.segment_view(self.find_segment(name).await?).await
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
                users: users.join(", "),
                advice: "remove it from those exports (export update) or remove them first",
            });
        }
        self.store.remove_segment(s.id, name).await?;
        Ok(())
    }
}

/// Stored paths are absolute: the daemon's working folder is not the user's.
fn absolute(path: PathBuf) -> Result<PathBuf, ServiceError> {
    std::path::absolute(&path).map_err(|e| {
        ServiceError::Invalid(format!("cannot resolve the path {}: {e}", path.display()))
    })
}
