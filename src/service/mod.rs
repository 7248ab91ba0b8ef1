//! Every operation a user can ask for (definitions, runs, history, status), kept out of the
//! CLI so a control socket can serve the same operations with per-user roles. Requests,
//! results and errors are typed, and errors name no command-line flag (the CLI words them).
//! Every definition change checks everything first and writes in one transaction: a refused
//! definition is never half-saved.

pub mod access;
pub mod alerts;
pub mod audit;
pub mod connections;
pub mod exports;
pub mod jobs;
pub mod runs;
pub mod segments;
pub mod status;

pub use exports::MappedField;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use secrecy::SecretString;

use crate::activecampaign::{AcError, BaseUrl, Client, ClientOptions, HostError};
use crate::alerts::AlertQueue;
use crate::pipeline::RunControl;
use crate::scheduler::ScheduleError;
use crate::secrets::{Purpose, SecretKey, SecretsError};
use crate::settings::Settings;
use crate::source::{ColumnType, SourceError};
use crate::store::{ConnectionDef, Store};

// The views the CLI renders, so it need not reach into the store.
pub use crate::pipeline::{Progress, RunOptions, RunOutcome, Silent};
pub use crate::store::exports::OnLeave;
pub use crate::store::queue::DaemonState;
pub use crate::store::{RunCounts, RunIssue, RunRecord, RunStatus, StoreError, TriggerKind};

/// Longest definition name accepted, in characters.
const MAX_NAME_CHARS: usize = 100;

/// Why an operation was refused or failed, in the service's own terms. Its `Display` names no
/// command-line flag (the daemon's logs and a control socket show it); the command line renders
/// each variant with its own flags (`cli::errors`).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{kind} {name:?} does not exist")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} {name:?} already exists; choose another name or update it")]
    Duplicate { kind: &'static str, name: String },
    /// The store lost an export's connection (the foreign key should prevent it).
    #[error("export {export:?} refers to connection id {connection_id}, which no longer exists")]
    ConnectionGone { export: String, connection_id: i64 },
    #[error(
        "{kind} name {} is invalid: use 1 to {max} characters, without control or invisible \
         characters and without spaces at either end",
        crate::escape::untrusted_capped(.name, MAX_NAME_CHARS + 20),
        max = MAX_NAME_CHARS
    )]
    InvalidName { kind: &'static str, name: String },
    /// A definition other definitions depend on; `remedy` says what lifts the refusal.
    #[error("{kind} {name:?} is used by export(s) {}; {}", .users.join(", "), .remedy.advice(kind))]
    InUse {
        kind: &'static str,
        name: String,
        users: Vec<String>,
        remedy: Remedy,
    },
    /// A connection sends personal data out of this system: whoever adds it must accept that.
    #[error(
        "{} The data transfer must be accepted to add the connection.",
        connections::PRIVACY_NOTICE
    )]
    ConsentRequired,
    #[error("an SQL segment needs a database: its URL, or the environment variable holding it")]
    NoDatabase,
    /// The environment variable given for a new SQL segment's database URL.
    #[error("environment variable {var}, given for the database URL, is not set")]
    DatabaseEnvUnset { var: String },
    /// A stored SQL segment's database URL is read from the environment at each use.
    #[error(
        "segment {segment:?} reads its database URL from the environment variable {var}, which \
         is not set"
    )]
    SegmentDatabaseEnvUnset { segment: String, var: String },
    #[error("segment {segment:?} has no database")]
    SegmentWithoutDatabase { segment: String },
    /// A segment update that does not fit the segment; nothing was saved.
    #[error("segment {segment:?} was not changed: {problem}")]
    SegmentPatchMismatch {
        segment: String,
        problem: segments::PatchMismatch,
    },
    /// A segment's new source lacks columns that exports reading it map; nothing was saved.
    #[error(
        "segment {segment:?} was not changed: its new source lacks columns that exports map: \
         {}. Keep them in the source, or change those exports' mappings first",
        segments::describe_columns_in_use(.missing)
    )]
    ColumnsStillMapped {
        segment: String,
        missing: Vec<segments::ColumnInUse>,
    },
    #[error("cannot resolve the path {}: {source}", .path.display())]
    ResolvePath {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("field mapping {text:?} must look like AC_FIELD_ID=COLUMN, e.g. 12=loyalty_tier")]
    BadFieldMapping { text: String },
    #[error("the email column is required")]
    MissingEmailColumn,
    #[error("at least one segment is required")]
    NoSegment,
    #[error("{0} is not an ActiveCampaign list ID (a positive number)")]
    InvalidListId(i64),
    #[error("invalid schedule: {0}")]
    BadSchedule(#[source] ScheduleError),
    #[error("invalid time zone: {0}")]
    BadTimezone(#[source] ScheduleError),
    #[error("segment {segment:?} is given twice")]
    SegmentTwice { segment: String },
    /// A mapped column missing from one of the export's segments.
    #[error(
        "segment {segment:?} has no column {column:?} (mapped to the {field}); its columns are: \
         {}",
        .columns.join(", ")
    )]
    UnknownColumn {
        field: MappedField,
        column: String,
        segment: String,
        columns: Vec<String>,
    },
    /// A mapped column whose type has no text rule (see `crate::source::Conversion`).
    #[error(
        "column {column:?} of segment {segment:?} (mapped to the {field}) has type {}, which \
         cannot be exported: {}",
        .column_type.name,
        .column_type.refusal().unwrap_or_default()
    )]
    NotExportableColumn {
        field: MappedField,
        column: String,
        segment: String,
        /// Boxed to keep every error small.
        column_type: Box<ColumnType>,
    },
    #[error(
        "connection {connection:?} was rejected by ActiveCampaign ({}); update its key first",
        .detail.as_deref().unwrap_or_default()
    )]
    ConnectionRejected {
        connection: String,
        detail: Option<String>,
    },
    #[error(
        "custom field {id} not found in ActiveCampaign at {host} ({known} fields exist; see \
         Contacts > Fields there for their IDs)"
    )]
    UnknownCustomField { id: i64, host: String, known: usize },
    #[error("custom field {id} is mapped twice")]
    FieldMappedTwice { id: i64 },
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    ActiveCampaign(#[from] AcError),
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A segment's source could not be read, named so the user knows which segment to fix.
    #[error("segment {segment:?}: {source}")]
    SegmentSource {
        segment: String,
        source: SourceError,
    },
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The actor's role does not allow it; nothing was changed.
    #[error("{0}")]
    Forbidden(access::Refusal),
}

/// What lifts an [`ServiceError::InUse`] refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remedy {
    /// Remove the users first, or force the removal, which removes them with it.
    Force,
    /// Detach it from the users or remove them first; there is no forcing.
    Detach,
}

impl Remedy {
    /// The advice in the service's terms; `kind` is what is in use.
    fn advice(self, kind: &str) -> String {
        match self {
            Remedy::Force => {
                format!("remove them first, or force the removal to remove them with the {kind}")
            }
            Remedy::Detach => "remove it from those exports or remove them first".to_owned(),
        }
    }
}

impl ServiceError {
    fn not_found(kind: &'static str, name: &str) -> ServiceError {
        ServiceError::NotFound {
            kind,
            name: name.to_owned(),
        }
    }
}

/// What every operation needs: settings, the store, the secrets key and the process's run
/// control.
#[derive(Debug)]
pub struct Context {
    pub settings: Settings,
    pub store: Store,
    /// Loaded when the context opens, so that every command (and the daemon's start) refuses a
    /// missing or loose key file, not only those that unseal something. It belongs with the
    /// store: a reload keeps both until a restart.
    key: Arc<SecretKey>,
    /// The process's stop requests (shutdown, abort); every run in the process gets a control
    /// of its own under it.
    pub control: RunControl,
    /// Who the operations are for: the process's own user (an admin), or a control-socket
    /// peer (`as_actor`).
    actor: Arc<access::Actor>,
    /// Whether this is the daemon's context: runs asked for are queued for its workers, not
    /// handed over by signal file.
    in_daemon: bool,
    /// Wakes the daemon's scheduling loop (a run queued, definitions changed); shared by every
    /// context cloned from the daemon's. Nobody waits on it outside the daemon.
    daemon_wake: Arc<tokio::sync::Notify>,
    /// Where finished runs' alerts go; kept over a reload unless `[alerts]` changed.
    alerts: Arc<AlertQueue>,
}

impl Context {
    pub async fn open(settings: Settings) -> Result<Context, ServiceError> {
        // The key file is judged before the store is touched: a refused file changes nothing.
        let key_path = settings.secrets_key_path();
        let found = SecretKey::read(&key_path)?;
        let store = Store::open(&settings.store.path).await?;
        let key = match found {
            Some(key) => key,
            None => first_key(&settings, &key_path, &store).await?,
        };
        let actor = access::Actor::process(&crate::identity::current());
        let alerts = alerts::alert_queue_for(&settings.alerts, None, &store);
        Ok(Context {
            settings,
            store: store.as_actor(&actor.name),
            key: Arc::new(key),
            control: RunControl::new(),
            actor: Arc::new(actor),
            in_daemon: false,
            daemon_wake: Arc::default(),
            alerts,
        })
    }

    /// The daemon's context: runs asked for through it go straight to its queue.
    pub fn for_daemon(mut self) -> Context {
        self.in_daemon = true;
        self
    }

    /// Whether this is the daemon's context.
    pub fn in_daemon(&self) -> bool {
        self.in_daemon
    }

    /// The same store, secrets key and run control with other settings (a reload).
    pub fn with_settings(&self, settings: Settings) -> Context {
        if settings.secrets_key_path() != self.settings.secrets_key_path() {
            tracing::warn!("secrets.key_file changed; the new key file is used after a restart");
        }
        let alerts = alerts::alert_queue_for(
            &settings.alerts,
            Some((&self.settings.alerts, &self.alerts)),
            &self.store,
        );
        Context {
            settings,
            store: self.store.clone(),
            key: Arc::clone(&self.key),
            control: self.control.clone(),
            actor: Arc::clone(&self.actor),
            in_daemon: self.in_daemon,
            daemon_wake: Arc::clone(&self.daemon_wake),
            alerts,
        }
    }

    /// Waits a little for alerts still queued, then closes the store, checkpointing its WAL:
    /// the last thing a command does.
    pub async fn close(&self) {
        self.flush_alerts(alerts::ALERT_FLUSH_WAIT).await;
        self.store.close().await;
    }

    /// The secrets key.
    pub fn secret_key(&self) -> &SecretKey {
        &self.key
    }

    /// A client for a stored connection.
    pub fn client(&self, connection: &ConnectionDef) -> Result<Client, ServiceError> {
        let key = self
            .secret_key()
            .open(Purpose::ApiKey, &connection.api_key_sealed.0)?;
        let base = BaseUrl::parse(&connection.base_url)?;
        self.client_for(base, key)
    }

    pub fn client_for(&self, base: BaseUrl, key: SecretString) -> Result<Client, ServiceError> {
        let options = ClientOptions {
            // Every process using this store draws from one budget per account.
            budget_dir: Some(self.store.locks_dir()),
            ..ClientOptions::from_settings(&self.settings.activecampaign)
        };
        Ok(Client::new(base, key, options, self.control.abort_token())?)
    }
}

/// The key for a store whose key file does not exist. A new one is created only while nothing
/// in the store is sealed under a key: otherwise the old key is lost, and a new one would leave
/// the stored API keys unopenable and change every delivery fingerprint, so that every contact
/// is sent again. A systemd credential is never created (it is read-only by design).
async fn first_key(
    settings: &Settings,
    path: &Path,
    store: &Store,
) -> Result<SecretKey, ServiceError> {
    if path != settings.secrets.key_file || store.holds_sealed_values().await? {
        return Err(SecretsError::Missing {
            path: path.to_path_buf(),
        }
        .into());
    }
    Ok(SecretKey::create(path)?)
}

/// Display names ("Marketing AC") are free text, but shown in tables, logs and trigger files:
/// nothing in them may change how a line reads, and spaces at either end would make two names
/// look alike. Uniqueness ignores case (`Store::name_taken`).
pub fn check_name(kind: &'static str, name: &str) -> Result<(), ServiceError> {
    let chars = name.chars().count();
    let ok = (1..=MAX_NAME_CHARS).contains(&chars)
        && crate::escape::is_plain(name)
        && name.trim() == name
        // The metrics' series for exports past their label cap.
        && name != crate::metrics::OTHER_EXPORTS;
    if ok {
        Ok(())
    } else {
        Err(ServiceError::InvalidName {
            kind,
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_are_free_text_without_control_characters_or_outer_spaces() {
        for good in [
            "weekly-news_1.0",
            "Marketing AC",
            "Käufer (DE)",
            "a/b",
            &"x".repeat(100),
        ] {
            assert!(check_name("export", good).is_ok(), "{good:?}");
        }
        let too_long = "x".repeat(101);
        for bad in [
            "",
            " lead",
            "trail ",
            "tab\there",
            "line\nbreak",
            "bidi\u{202e}",
            &too_long,
        ] {
            assert!(check_name("export", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_invalid_name_is_shown_escaped() {
        let err = check_name("connection", "evil\x1b[2J").expect_err("control character");
        assert!(!err.to_string().contains('\x1b'), "{err}");
    }
}
