//! Segments: a CSV or JSONL file, or an SQL query against the user's SQLite or PostgreSQL
//! database (read-only). Adding one reads it through once, so a broken file is refused with
//! the line at fault before it is saved, and records each column's type and text rule, so an
//! export mapping a column that cannot be exported is refused when it is saved. Updating one
//! reads its new source the same way, and is refused while an export maps a column the new
//! source lacks.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::access::Role;
use super::{Context, MappedField, Remedy, ServiceError, check_name};
use crate::secrets::Purpose;
pub use crate::source::shown_column;
use crate::source::{
    self, ColumnType, FileReader, Row, RowError, SourceDef, SourceError, SourceFile,
};
use crate::store::SegmentDef;
use crate::store::connections::Sealed;
use crate::store::exports::{ColumnRole, MappedColumn};
pub use crate::store::segments::SegmentKind;
use crate::store::segments::{NewSegment, SegmentUpdate};

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

/// A database for an SQL segment, as the user gave it.
#[derive(Debug)]
pub enum DatabaseInput {
    /// The URL itself, sealed in the store.
    Url(SecretString),
    /// The environment variable holding the URL, read at each use.
    Env(String),
}

impl DatabaseInput {
    /// As [`SegmentInput::Sql`] holds it: the URL or the variable.
    pub fn into_parts(self) -> (Option<SecretString>, Option<String>) {
        match self {
            DatabaseInput::Url(url) => (Some(url), None),
            DatabaseInput::Env(var) => (None, Some(var)),
        }
    }
}

/// A segment's new file or query; its kind may differ from the current one.
#[derive(Debug)]
pub enum NewSource {
    Csv(PathBuf),
    Jsonl(PathBuf),
    Sql(String),
}

/// Changes to a segment's source; `None` keeps the current value. Changing the kind is
/// allowed (a CSV segment may become an SQL one), as adding allows any kind: the exports
/// reading it only need the columns they map.
#[derive(Debug, Default)]
pub struct SegmentPatch {
    pub source: Option<NewSource>,
    /// The CSV delimiter.
    pub delimiter: Option<u8>,
    /// The SQL query's database.
    pub database: Option<DatabaseInput>,
}

/// Why a [`SegmentPatch`] does not fit the segment it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchMismatch {
    /// The patch changes nothing.
    Empty,
    /// A delimiter for a source that is not CSV (`kind` is the kind after the patch).
    DelimiterNotCsv { kind: SegmentKind },
    /// A database for a source that is not SQL (`kind` is the kind after the patch).
    DatabaseNotSql { kind: SegmentKind },
    /// A query for a segment that reads a file (`kind`), so has no database to keep.
    QueryWithoutDatabase { kind: SegmentKind },
}

impl std::fmt::Display for PatchMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PatchMismatch::Empty => {
                f.write_str("nothing to change: give a new file, query, database or delimiter")
            }
            PatchMismatch::DelimiterNotCsv { kind } => write!(
                f,
                "a delimiter applies only to a CSV file, and the segment would read {}",
                kind_phrase(*kind)
            ),
            PatchMismatch::DatabaseNotSql { kind } => write!(
                f,
                "a database applies only to an SQL query, and the segment would read {}",
                kind_phrase(*kind)
            ),
            PatchMismatch::QueryWithoutDatabase { kind } => write!(
                f,
                "a query needs a database, and the segment reads {}, which has none to keep",
                kind_phrase(*kind)
            ),
        }
    }
}

/// How messages say what a segment reads.
pub fn kind_phrase(kind: SegmentKind) -> &'static str {
    match kind {
        SegmentKind::Csv => "a CSV file",
        SegmentKind::Jsonl => "a JSONL file",
        SegmentKind::Sql => "an SQL query",
    }
}

/// A column an export maps from a segment, and the field it fills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInUse {
    pub export: String,
    pub field: MappedField,
    pub column: String,
}

impl From<MappedColumn> for ColumnInUse {
    fn from(m: MappedColumn) -> ColumnInUse {
        let field = match m.role {
            ColumnRole::Email => MappedField::Email,
            ColumnRole::FirstName => MappedField::FirstName,
            ColumnRole::LastName => MappedField::LastName,
            ColumnRole::Phone => MappedField::Phone,
            ColumnRole::Field(id) => MappedField::Custom(id),
        };
        ColumnInUse {
            export: m.export,
            field,
            column: m.column,
        }
    }
}

/// `export "weekly" maps "first_name" (first name), "tier" (custom field 3); export ...`,
/// one clause per export, in the order given (sorted by export).
pub fn describe_columns_in_use(columns: &[ColumnInUse]) -> String {
    let mut clauses: Vec<String> = Vec::new();
    let mut current: Option<&str> = None;
    for c in columns {
        let mapping = format!("{:?} ({})", c.column, c.field);
        match (current, clauses.last_mut()) {
            (Some(export), Some(clause)) if export == c.export => {
                clause.push_str(", ");
                clause.push_str(&mapping);
            }
            _ => {
                clauses.push(format!("export {:?} maps {mapping}", c.export));
                current = Some(&c.export);
            }
        }
    }
    clauses.join("; ")
}

/// The source a segment reads after a patch, before it is resolved.
#[derive(Debug)]
enum PatchedSource {
    Csv {
        path: PathBuf,
        delimiter: u8,
    },
    Jsonl {
        path: PathBuf,
    },
    /// `database: None` keeps the segment's current database.
    Sql {
        query: String,
        database: Option<DatabaseInput>,
    },
}

/// What `current` reads after `patch`: a value the patch does not give is kept, or defaults
/// (`,` for a delimiter) when the kind changes. A CSV or JSONL segment that becomes an SQL one
/// needs a database.
fn patched_source(
    current: &SegmentDef,
    patch: SegmentPatch,
) -> Result<PatchedSource, ServiceError> {
    let mismatch = |problem| ServiceError::SegmentPatchMismatch {
        segment: current.name.clone(),
        problem,
    };
    let SegmentPatch {
        source,
        delimiter,
        database,
    } = patch;
    if source.is_none() && delimiter.is_none() && database.is_none() {
        return Err(mismatch(PatchMismatch::Empty));
    }
    let current_path = || PathBuf::from(current.path.clone().unwrap_or_default());
    let kind = match &source {
        Some(NewSource::Csv(_)) => SegmentKind::Csv,
        Some(NewSource::Jsonl(_)) => SegmentKind::Jsonl,
        Some(NewSource::Sql(_)) => SegmentKind::Sql,
        None => current.kind,
    };
    if delimiter.is_some() && kind != SegmentKind::Csv {
        return Err(mismatch(PatchMismatch::DelimiterNotCsv { kind }));
    }
    if database.is_some() && kind != SegmentKind::Sql {
        return Err(mismatch(PatchMismatch::DatabaseNotSql { kind }));
    }
    Ok(match source {
        Some(NewSource::Csv(path)) => PatchedSource::Csv {
            path,
            delimiter: delimiter.unwrap_or_else(|| csv_delimiter(current)),
        },
        Some(NewSource::Jsonl(path)) => PatchedSource::Jsonl { path },
        Some(NewSource::Sql(query)) => {
            if database.is_none() && current.kind != SegmentKind::Sql {
                return Err(mismatch(PatchMismatch::QueryWithoutDatabase {
                    kind: current.kind,
                }));
            }
            PatchedSource::Sql { query, database }
        }
        None => match current.kind {
            SegmentKind::Csv => PatchedSource::Csv {
                path: current_path(),
                delimiter: delimiter.unwrap_or_else(|| csv_delimiter(current)),
            },
            SegmentKind::Jsonl => PatchedSource::Jsonl {
                path: current_path(),
            },
            SegmentKind::Sql => PatchedSource::Sql {
                query: current.query.clone().unwrap_or_default(),
                database,
            },
        },
    })
}

/// The delimiter a CSV segment reads with; `,` for a segment that is not CSV yet.
fn csv_delimiter(s: &SegmentDef) -> u8 {
    match s.kind {
        SegmentKind::Csv => s
            .delimiter
            .and_then(|d| u8::try_from(d).ok())
            .unwrap_or(b','),
        SegmentKind::Jsonl | SegmentKind::Sql => b',',
    }
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
    /// Whom its file is read for, to be stored with the segment.
    fn reader_uid(&self) -> Option<u32> {
        match &self.def {
            SourceDef::Csv { path, .. } | SourceDef::Jsonl { path, .. } => {
                path.reader.as_ref().map(|r| r.uid)
            }
            SourceDef::Sql { .. } => None,
        }
    }

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
    /// A PostgreSQL source's TLS mode and why, e.g. "verify-full (default off loopback)"; shown
    /// by `segment add` and `segment show`, which have the database URL at hand.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
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
                path: stored_file(s),
                delimiter: csv_delimiter(s),
                limits: self.settings.source,
            }),
            SegmentKind::Jsonl => Ok(SourceDef::Jsonl {
                path: stored_file(s),
                limits: self.settings.source,
            }),
            SegmentKind::Sql => {
                let url = match (&s.database_sealed, &s.database_env) {
                    (Some(sealed), _) => self.secret_key().open(Purpose::DatabaseUrl, &sealed.0)?,
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
            tls: None,
        })
    }

    /// Reads the source through once (columns, row count, every line valid), then saves it.
    pub async fn add_segment(
        &self,
        name: &str,
        input: SegmentInput,
    ) -> Result<SegmentView, ServiceError> {
        self.require(Role::Contributor, "add segments")?;
        check_name("segment", name)?;
        if self.store.name_taken("segments", name).await? {
            return Err(ServiceError::Duplicate {
                kind: "segment",
                name: name.to_owned(),
            });
        }
        self.require_source_input(&input)?;
        let resolved = self.resolve_source(input)?;
        let description = source::describe(&resolved.def)
            .await
            .map_err(in_segment(name))?;
        // Serialising plain strings and enums cannot fail; an empty list would only mean
        // "not recorded", never a wrong type.
        let column_types_json = serde_json::to_string(&description.types).ok();
        let reader_uid = resolved.reader_uid();
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
                unexportable: &[],
                row_count: description.rows,
                reader_uid,
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

    /// Changes a segment's source. The new source is read through once, as when adding, then
    /// saved in one transaction, unless an export reading the segment maps a column it lacks.
    /// The exports keep their delivery state: their next run sends only members whose mapped
    /// values differ from what was delivered.
    pub async fn update_segment(
        &self,
        name: &str,
        patch: SegmentPatch,
    ) -> Result<SegmentView, ServiceError> {
        self.require(Role::Contributor, "update segments")?;
        let current = self.find_segment(name).await?;
        self.require_segment_change(&current, "update this segment")
            .await?;
        let input = match patched_source(&current, patch)? {
            PatchedSource::Csv { path, delimiter } => SegmentInput::Csv { path, delimiter },
            PatchedSource::Jsonl { path } => SegmentInput::Jsonl { path },
            PatchedSource::Sql {
                query,
                database: Some(database),
            } => {
                let (database_url, database_env) = database.into_parts();
                SegmentInput::Sql {
                    query,
                    database_url,
                    database_env,
                }
            }
            PatchedSource::Sql {
                query,
                database: None,
            } => self.kept_database(&current, query)?,
        };
        self.require_source_input(&input)?;
        let resolved = self.resolve_source(input)?;
        let description = source::describe(&resolved.def)
            .await
            .map_err(in_segment(name))?;
        let column_types_json = serde_json::to_string(&description.types).ok();
        let unexportable: Vec<String> = description
            .columns
            .iter()
            .zip(&description.types)
            .filter(|(_, ty)| ty.refusal().is_some())
            .map(|(name, _)| name.clone())
            .collect();
        let reader_uid = resolved.reader_uid();
        let outcome = self
            .store
            .update_segment(
                current.id,
                NewSegment {
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
                    unexportable: &unexportable,
                    row_count: description.rows,
                    reader_uid,
                },
            )
            .await?;
        match outcome {
            SegmentUpdate::Saved => {}
            SegmentUpdate::ColumnsInUse(missing) => {
                return Err(ServiceError::ColumnsStillMapped {
                    segment: name.to_owned(),
                    missing: missing.into_iter().map(ColumnInUse::from).collect(),
                });
            }
            SegmentUpdate::Gone => return Err(ServiceError::not_found("segment", name)),
        }
        tracing::info!(segment = %name, kind = %resolved.kind, rows = description.rows, "Segment updated");
        self.segment_view(self.find_segment(name).await?).await
    }

    /// An SQL segment's new query with its current database, as [`Self::resolve_source`]
    /// takes it: the sealed URL opened (it is sealed again), or the same variable.
    fn kept_database(&self, s: &SegmentDef, query: String) -> Result<SegmentInput, ServiceError> {
        let (database_url, database_env) = match (&s.database_sealed, &s.database_env) {
            (Some(sealed), _) => (
                Some(self.secret_key().open(Purpose::DatabaseUrl, &sealed.0)?),
                None,
            ),
            (None, Some(var)) => {
                // Named as the segment's own variable, not as one given for this update.
                if database_url_from_env(var).is_none() {
                    return Err(ServiceError::SegmentDatabaseEnvUnset {
                        segment: s.name.clone(),
                        var: var.clone(),
                    });
                }
                (None, Some(var.clone()))
            }
            (None, None) => {
                return Err(ServiceError::SegmentWithoutDatabase {
                    segment: s.name.clone(),
                });
            }
        };
        Ok(SegmentInput::Sql {
            query,
            database_url,
            database_env,
        })
    }

    /// Checks the source the user gave and resolves it: absolute paths, the database URL
    /// sealed or read from its variable.
    fn resolve_source(&self, input: SegmentInput) -> Result<ResolvedSource, ServiceError> {
        match input {
            SegmentInput::Csv { path, delimiter } => {
                let path = absolute(path)?;
                let shown = path.display().to_string();
                Ok(ResolvedSource::file(
                    SourceDef::Csv {
                        path: SourceFile::new(path, self.file_reader()),
                        delimiter,
                        limits: self.settings.source,
                    },
                    SegmentKind::Csv,
                    shown,
                    Some(delimiter),
                ))
            }
            SegmentInput::Jsonl { path } => {
                let path = absolute(path)?;
                let shown = path.display().to_string();
                Ok(ResolvedSource::file(
                    SourceDef::Jsonl {
                        path: SourceFile::new(path, self.file_reader()),
                        limits: self.settings.source,
                    },
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
                        let sealed = self.secret_key().seal(Purpose::DatabaseUrl, &url);
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
        self.require(Role::Contributor, "list segments")?;
        let visible = self.visible_export_names().await?;
        let mut out = Vec::new();
        for s in self.store.segments().await? {
            let sql = s.kind == SegmentKind::Sql;
            let mut view = self.segment_view(s).await?;
            // Non-admins see neither the query and database of an SQL segment nor exports
            // on connections not shared with them.
            if let Some(visible) = &visible {
                if sql {
                    view.source = "an SQL query (shown to admins)".to_owned();
                }
                view.exports.retain(|e| visible.contains(e));
            }
            out.push(view);
        }
        Ok(out)
    }

    /// Columns, their types and the current row count (the source is read again).
    pub async fn show_segment(&self, name: &str) -> Result<SegmentView, ServiceError> {
        self.require(Role::Contributor, "see segments")?;
        let s = self.find_segment(name).await?;
        self.require_readable_source(&s)?;
        let def = self.source_def(&s)?;
        let mut view = self.segment_view(s).await?;
        let description = source::describe(&def).await.map_err(in_segment(name))?;
        view.column_types = column_views(&description.columns, &description.types);
        view.columns = description.columns;
        view.rows = description.rows as i64;
        view.tls = source::postgres_tls(&def).map(|tls| tls.to_string());
        if let Some(visible) = self.visible_export_names().await? {
            view.exports.retain(|e| visible.contains(e));
        }
        Ok(view)
    }

    /// The first `limit` rows, each shown or rejected with its reason; an error after the
    /// first row is in [`SegmentPreview::stopped`], named with the segment.
    pub async fn preview_segment(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<SegmentPreview, ServiceError> {
        self.require(Role::Contributor, "preview segment rows")?;
        let s = self.find_segment(name).await?;
        self.require_readable_source(&s)?;
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
        self.require(Role::Contributor, "remove segments")?;
        let s = self.find_segment(name).await?;
        self.require_segment_change(&s, "remove this segment")
            .await?;
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

impl Context {
    /// A new source's access: SQL sources are for admins (they would lend the daemon's own
    /// database access and environment); a file must be readable by the actor.
    fn require_source_input(&self, input: &SegmentInput) -> Result<(), ServiceError> {
        match input {
            SegmentInput::Sql { .. } => self.require(Role::Admin, "use SQL sources"),
            SegmentInput::Csv { path, .. } | SegmentInput::Jsonl { path } => {
                self.require_readable(path)
            }
        }
    }

    /// A stored segment's rows are for those who could read them: its file readable by the
    /// actor, and SQL segments for admins (their query runs with the daemon's access).
    fn require_readable_source(&self, s: &SegmentDef) -> Result<(), ServiceError> {
        match (&s.kind, &s.path) {
            (SegmentKind::Sql, _) => self.require(Role::Admin, "read SQL segments"),
            (SegmentKind::Csv | SegmentKind::Jsonl, Some(path)) => {
                self.require_readable(Path::new(path))
            }
            _ => Ok(()),
        }
    }

    /// The names of the exports the actor may see (`None`: all of them).
    async fn visible_export_names(&self) -> Result<Option<Vec<String>>, ServiceError> {
        let Some(ids) = self.usable_connections().await? else {
            return Ok(None);
        };
        Ok(Some(
            self.store
                .exports()
                .await?
                .into_iter()
                .filter(|e| ids.contains(&e.connection_id))
                .map(|e| e.name)
                .collect(),
        ))
    }

    /// A segment put into an export: the same rule as reading its rows.
    pub(super) fn require_segment_use(&self, s: &SegmentDef) -> Result<(), ServiceError> {
        self.require_readable_source(s)
    }

    /// A segment is changed or removed by a non-admin only when it is no SQL segment and every
    /// export reading it is on a connection they may use: its rows go wherever those go.
    async fn require_segment_change(
        &self,
        s: &SegmentDef,
        action: &str,
    ) -> Result<(), ServiceError> {
        if self.actor().is_admin() {
            return Ok(());
        }
        if s.kind == SegmentKind::Sql {
            return self.require(Role::Admin, "change SQL segments");
        }
        let visible = self.visible_export_names().await?.unwrap_or_default();
        for export in self.store.exports().await? {
            if export.segments.iter().any(|seg| seg.name == s.name)
                && !visible.contains(&export.name)
            {
                // Named neither the export nor its connection: both are the admins'.
                return self.require(
                    Role::Admin,
                    &format!("{action} (an export on a connection kept for admins reads it)"),
                );
            }
        }
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

/// A stored segment's file, read for the user who named it (their groups as they are now).
fn stored_file(s: &SegmentDef) -> SourceFile {
    let reader = s
        .reader_uid
        .and_then(|uid| u32::try_from(uid).ok())
        .map(|uid| FileReader {
            uid,
            gids: crate::identity::lookup(uid, None).gids,
        });
    SourceFile::new(PathBuf::from(s.path.clone().unwrap_or_default()), reader)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::segments::Columns;

    /// A stored segment of `kind`: `/data/members.csv` with `;` for CSV, `/data/members.jsonl`
    /// for JSONL, a query on the database in `$CRM_DB` for SQL.
    fn stored(kind: SegmentKind) -> SegmentDef {
        let (path, delimiter, query, database_env) = match kind {
            SegmentKind::Csv => (Some("/data/members.csv"), Some(i64::from(b';')), None, None),
            SegmentKind::Jsonl => (Some("/data/members.jsonl"), None, None, None),
            SegmentKind::Sql => (
                None,
                None,
                Some("SELECT email FROM members"),
                Some("CRM_DB"),
            ),
        };
        SegmentDef {
            id: 1,
            name: "members".to_owned(),
            kind,
            path: path.map(str::to_owned),
            delimiter,
            query: query.map(str::to_owned),
            database_sealed: None,
            database_env: database_env.map(str::to_owned),
            database_shown: None,
            columns: Columns(vec!["email".to_owned()]),
            column_types_json: None,
            row_count: 2,
            created_at: String::new(),
            updated_at: String::new(),
            reader_uid: None,
        }
    }

    fn env(var: &str) -> Option<DatabaseInput> {
        Some(DatabaseInput::Env(var.to_owned()))
    }

    /// A patched source in a few words, for comparing in a table.
    fn summary(source: &PatchedSource) -> String {
        match source {
            PatchedSource::Csv { path, delimiter } => {
                format!("csv {} {}", path.display(), char::from(*delimiter))
            }
            PatchedSource::Jsonl { path } => format!("jsonl {}", path.display()),
            PatchedSource::Sql { query, database } => {
                let database = match database {
                    None => "kept".to_owned(),
                    Some(DatabaseInput::Env(var)) => format!("${var}"),
                    Some(DatabaseInput::Url(_)) => "url".to_owned(),
                };
                format!("sql {query} on {database}")
            }
        }
    }

    #[test]
    fn a_patch_changes_what_it_gives_and_keeps_the_rest() {
        let csv = |path: &str| Some(NewSource::Csv(PathBuf::from(path)));
        let cases: Vec<(SegmentKind, SegmentPatch, &str)> = vec![
            (
                SegmentKind::Csv,
                SegmentPatch {
                    source: csv("/data/new.csv"),
                    ..SegmentPatch::default()
                },
                "csv /data/new.csv ;",
            ),
            (
                SegmentKind::Csv,
                SegmentPatch {
                    delimiter: Some(b'|'),
                    ..SegmentPatch::default()
                },
                "csv /data/members.csv |",
            ),
            (
                SegmentKind::Jsonl,
                SegmentPatch {
                    source: csv("/data/new.csv"),
                    ..SegmentPatch::default()
                },
                "csv /data/new.csv ,",
            ),
            (
                SegmentKind::Csv,
                SegmentPatch {
                    source: Some(NewSource::Jsonl(PathBuf::from("/data/new.jsonl"))),
                    ..SegmentPatch::default()
                },
                "jsonl /data/new.jsonl",
            ),
            (
                SegmentKind::Sql,
                SegmentPatch {
                    source: Some(NewSource::Sql("SELECT email, tier FROM members".to_owned())),
                    ..SegmentPatch::default()
                },
                "sql SELECT email, tier FROM members on kept",
            ),
            (
                SegmentKind::Sql,
                SegmentPatch {
                    database: env("CRM_REPLICA"),
                    ..SegmentPatch::default()
                },
                "sql SELECT email FROM members on $CRM_REPLICA",
            ),
            (
                SegmentKind::Csv,
                SegmentPatch {
                    source: Some(NewSource::Sql("SELECT email FROM crm".to_owned())),
                    database: env("CRM_DB"),
                    ..SegmentPatch::default()
                },
                "sql SELECT email FROM crm on $CRM_DB",
            ),
        ];
        for (kind, patch, expected) in cases {
            let described = format!("{kind} {patch:?}");

            let source = patched_source(&stored(kind), patch).expect(&described);

            assert_eq!(summary(&source), expected, "{described}");
        }
    }

    #[test]
    fn a_patch_that_does_not_fit_the_segment_is_refused_saying_why() {
        let cases: Vec<(SegmentKind, SegmentPatch, PatchMismatch)> = vec![
            (
                SegmentKind::Csv,
                SegmentPatch::default(),
                PatchMismatch::Empty,
            ),
            (
                SegmentKind::Jsonl,
                SegmentPatch {
                    delimiter: Some(b';'),
                    ..SegmentPatch::default()
                },
                PatchMismatch::DelimiterNotCsv {
                    kind: SegmentKind::Jsonl,
                },
            ),
            (
                SegmentKind::Csv,
                SegmentPatch {
                    source: Some(NewSource::Sql("SELECT 1".to_owned())),
                    delimiter: Some(b';'),
                    database: env("CRM_DB"),
                },
                PatchMismatch::DelimiterNotCsv {
                    kind: SegmentKind::Sql,
                },
            ),
            (
                SegmentKind::Csv,
                SegmentPatch {
                    database: env("CRM_DB"),
                    ..SegmentPatch::default()
                },
                PatchMismatch::DatabaseNotSql {
                    kind: SegmentKind::Csv,
                },
            ),
            (
                SegmentKind::Sql,
                SegmentPatch {
                    source: Some(NewSource::Jsonl(PathBuf::from("/data/new.jsonl"))),
                    database: env("CRM_DB"),
                    ..SegmentPatch::default()
                },
                PatchMismatch::DatabaseNotSql {
                    kind: SegmentKind::Jsonl,
                },
            ),
            (
                SegmentKind::Jsonl,
                SegmentPatch {
                    source: Some(NewSource::Sql("SELECT 1".to_owned())),
                    ..SegmentPatch::default()
                },
                PatchMismatch::QueryWithoutDatabase {
                    kind: SegmentKind::Jsonl,
                },
            ),
        ];
        for (kind, patch, expected) in cases {
            let described = format!("{kind} {patch:?}");

            let err = patched_source(&stored(kind), patch).expect_err(&described);

            let ServiceError::SegmentPatchMismatch { segment, problem } = err else {
                panic!("{described}: unexpected {err:?}");
            };
            assert_eq!(segment, "members", "{described}");
            assert_eq!(problem, expected, "{described}");
        }
    }

    #[test]
    fn columns_in_use_are_said_once_per_export() {
        let uses = [
            ("daily", MappedField::Email, "email"),
            ("weekly", MappedField::FirstName, "first_name"),
            ("weekly", MappedField::Custom(3), "tier"),
        ]
        .map(|(export, field, column)| ColumnInUse {
            export: export.to_owned(),
            field,
            column: column.to_owned(),
        });

        let text = describe_columns_in_use(&uses);

        assert_eq!(
            text,
            "export \"daily\" maps \"email\" (email); export \"weekly\" maps \"first_name\" \
             (first name), \"tier\" (custom field 3)"
        );
    }
}
