//! Segments: a CSV or JSONL file, or an SQL query against the user's SQLite or PostgreSQL
//! database (read-only). Adding one reads it through once, so a broken file is refused with
//! the line at fault before it is saved, and records each column's type and text rule, so an
//! export mapping a column that cannot be exported is refused when it is saved.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::{Context, Remedy, ServiceError, check_name};
use crate::secrets::Purpose;
use crate::source::{self, ColumnType, Row, RowError, SourceDef, SourceError};
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
    /// Each column's type and how its values become text, in the order of `columns`; empty
    /// for an SQL segment saved before types were recorded, until `segment show` reads them.
    pub column_types: Vec<ColumnView>,
    pub rows: i64,
    pub exports: Vec<String>,
}

/// A column's type as `segment add`/`segment show` list it.
#[derive(Debug, Clone, Serialize)]
pub struct ColumnView {
    pub name: String,
    /// The type as the source names it.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Whether an export may map it.
    pub exportable: bool,
    /// How its values become text, or "cannot be exported: REASON".
    pub conversion: String,
}

fn column_views(columns: &[String], types: &[ColumnType]) -> Vec<ColumnView> {
    columns
        .iter()
        .zip(types)
        .map(|(name, ty)| ColumnView {
            name: name.clone(),
            type_name: ty.name.clone(),
            exportable: ty.refusal().is_none(),
            conversion: ty.conversion.describe(),
        })
        .collect()
}

/// A segment's column types as stored with it; `None` when they were not recorded (saved
/// before they were, or unreadable), in which case a run checks them when it opens the source.
pub(super) fn stored_column_types(s: &SegmentDef) -> Option<Vec<ColumnType>> {
    let types = match (&s.column_types_json, s.kind) {
        (Some(json), _) => match serde_json::from_str::<Vec<ColumnType>>(json) {
            Ok(types) => types,
            Err(e) => {
                tracing::warn!(segment = %s.name, error = %e, "Stored column types unreadable; they are checked at each run");
                return None;
            }
        },
        // A file's column types follow from its kind.
        (None, SegmentKind::Csv) => s.columns.0.iter().map(|_| ColumnType::csv()).collect(),
        (None, SegmentKind::Jsonl) => s.columns.0.iter().map(|_| ColumnType::jsonl()).collect(),
        (None, SegmentKind::Sql) => return None,
    };
    (types.len() == s.columns.0.len()).then_some(types)
}

/// Names the segment in a source error.
fn in_segment(segment: &str) -> impl FnOnce(SourceError) -> ServiceError + '_ {
    move |source| ServiceError::SegmentSource {
        segment: segment.to_owned(),
        source,
    }
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
        let column_types = stored_column_types(&s)
            .map(|types| column_views(&s.columns.0, &types))
            .unwrap_or_default();
        Ok(SegmentView {
            columns: s.columns.0,
            column_types,
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
        let resolved = self.resolve_source(input)?;
        let description = source::describe(&resolved.def)
            .await
            .map_err(in_segment(name))?;
        // Serialising plain strings and enums cannot fail; an empty list would only mean
        // "not recorded", never a wrong type.
        let column_types_json = serde_json::to_string(&description.types).ok();
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
                column_types_json: column_types_json.as_deref(),
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
        self.segment_view(self.find_segment(name).await?).await
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

    /// Columns, their types and the current row count (the source is read again).
    pub async fn show_segment(&self, name: &str) -> Result<SegmentView, ServiceError> {
        let s = self.find_segment(name).await?;
        let def = self.source_def(&s)?;
        let mut view = self.segment_view(s).await?;
        let description = source::describe(&def).await.map_err(in_segment(name))?;
        view.column_types = column_views(&description.columns, &description.types);
        view.columns = description.columns;
        view.rows = description.rows as i64;
        Ok(view)
    }

    /// The first `limit` rows, each shown or rejected with its reason; an error after the
    /// first row is in [`SegmentPreview::stopped`], named with the segment.
    pub async fn preview_segment(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<SegmentPreview, ServiceError> {
        let s = self.find_segment(name).await?;
        let def = self.source_def(&s)?;
        let preview = source::preview(&def, limit)
            .await
            .map_err(in_segment(name))?;
        let (hidden, hidden_types): (Vec<String>, Vec<ColumnType>) =
            preview.hidden.into_iter().unzip();
        Ok(SegmentPreview {
            hidden: column_views(&hidden, &hidden_types),
            columns: preview.columns,
            rows: preview.rows,
            stopped: preview.stopped.map(in_segment(name)),
            kind: s.kind,
        })
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

/// What `segment preview` shows.
#[derive(Debug)]
pub struct SegmentPreview {
    pub kind: SegmentKind,
    /// The columns shown: those an export can map.
    pub columns: Vec<String>,
    /// The columns left out, with why.
    pub hidden: Vec<ColumnView>,
    /// Every row read, in order: its values, or why a run would reject it.
    pub rows: Vec<Result<Row, RowError>>,
    /// Why reading stopped before the limit or the end, if it did.
    pub stopped: Option<ServiceError>,
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
