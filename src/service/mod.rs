//! Operations on definitions (add a connection, add an export, ...), kept out of the CLI so a
//! later control socket can serve the same operations with per-user roles. Every operation
//! checks everything first and writes in one transaction: a refused definition is never
//! half-saved.

pub mod connections;
pub mod exports;
pub mod runs;
pub mod segments;
pub mod status;

use std::sync::OnceLock;

use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::activecampaign::{AcError, BaseUrl, Client, ClientOptions, HostError};
use crate::secrets::{Purpose, SecretKey, SecretsError};
use crate::settings::Settings;
use crate::source::SourceError;
use crate::store::{ConnectionDef, Store};

// The views the CLI renders, so it need not reach into the store.
pub use crate::store::exports::OnLeave;
pub use crate::store::queue::DaemonState;
pub use crate::store::{RunCounts, RunIssue, RunRecord, RunStatus, StoreError};

/// Longest definition name accepted.
const MAX_NAME_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{kind} {name:?} does not exist{hint}")]
    NotFound {
        kind: &'static str,
        name: String,
        hint: String,
    },
    #[error("{kind} {name:?} already exists; choose another name or update it")]
    Duplicate { kind: &'static str, name: String },
    #[error("{kind} {name:?} is used by export(s) {users}; {advice}")]
    InUse {
        kind: &'static str,
        name: String,
        users: String,
        advice: &'static str,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    ConsentRequired(String),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    ActiveCampaign(#[from] AcError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ServiceError {
    fn not_found(kind: &'static str, name: &str) -> ServiceError {
        ServiceError::NotFound {
            kind,
            name: name.to_owned(),
            hint: String::new(),
        }
    }
}

/// What every operation needs: settings, the store, the secrets key (loaded on first use) and
/// the cancellation of the process.
#[derive(Debug)]
pub struct Context {
    pub settings: Settings,
    pub store: Store,
    key: OnceLock<SecretKey>,
    /// Soft stop (shutdown, Ctrl-C): runs stop at their next batch boundary, finishing the
    /// imports in hand.
    pub cancel: CancellationToken,
    /// Hard stop: HTTP calls in flight are abandoned (their batches are resent on resume).
    /// Used when a soft stop takes too long.
    pub abort: CancellationToken,
}

impl Context {
    pub async fn open(
        settings: Settings,
        cancel: CancellationToken,
    ) -> Result<Context, ServiceError> {
        let store = Store::open(&settings.store.path).await?;
        Ok(Context {
            settings,
            store,
            key: OnceLock::new(),
            cancel,
            abort: CancellationToken::new(),
        })
    }

    /// The same store and cancellation with other settings (a reload).
    pub fn with_settings(&self, settings: Settings) -> Context {
        Context {
            settings,
            store: self.store.clone(),
            key: OnceLock::new(),
            cancel: self.cancel.clone(),
            abort: self.abort.clone(),
        }
    }

    /// Closes the store, checkpointing its WAL: the last thing a command does.
    pub async fn close(&self) {
        self.store.close().await;
    }

    /// The secrets key; created on first use unless it comes from a systemd credential.
    pub fn secret_key(&self) -> Result<&SecretKey, ServiceError> {
        if let Some(key) = self.key.get() {
            return Ok(key);
        }
        let path = self.settings.secrets_key_path();
        let create = path == self.settings.secrets.key_file;
        let key = SecretKey::load(&path, create)?;
        Ok(self.key.get_or_init(|| key))
    }

    /// A client for a stored connection.
    pub fn client(&self, connection: &ConnectionDef) -> Result<Client, ServiceError> {
        let key = self
            .secret_key()?
            .open(Purpose::ApiKey, &connection.api_key_sealed.0)?;
        let base = BaseUrl::parse(&connection.base_url)?;
        self.client_for(base, key)
    }

    pub fn client_for(&self, base: BaseUrl, key: SecretString) -> Result<Client, ServiceError> {
        let options = ClientOptions::from_settings(&self.settings.activecampaign);
        Ok(Client::new(base, key, options, self.abort.child_token())?)
    }
}

/// Names are shown in tables, logs and trigger files: keep them simple and unambiguous.
pub fn check_name(kind: &str, name: &str) -> Result<(), ServiceError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(ServiceError::Invalid(format!(
            "{kind} name {name:?} is invalid: use 1 to {MAX_NAME_LEN} letters, digits, '-', '_' \
             or '.' (not starting with '.')"
        )))
    }
}

/// Masks an email for history and reports: `j***@example.com`. The domain is kept only when
/// it looks like one, so a rejected value that is not an address (a whole misparsed row, say)
/// never lands in the history.
pub fn mask_email(email: &str) -> String {
    let first: String = email
        .chars()
        .take(1)
        .filter(|c| !c.is_whitespace())
        .collect();
    match email.split_once('@') {
        Some((_, domain))
            if !domain.is_empty()
                && domain.len() <= 253
                && domain
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') =>
        {
            format!("{first}***@{domain}")
        }
        _ => format!("{first}***"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_masked_to_first_letter_and_domain() {
        assert_eq!(mask_email("jane.doe@example.com"), "j***@example.com");
        assert_eq!(mask_email("nodomain"), "n***");
        assert_eq!(mask_email("a@b,John Smith,555-1234"), "a***");
        assert_eq!(mask_email(""), "***");
    }

    #[test]
    fn names_with_spaces_or_slashes_are_refused() {
        assert!(check_name("export", "weekly-news_1.0").is_ok());
        for bad in ["", "a b", "a/b", ".hidden", &"x".repeat(65)] {
            assert!(check_name("export", bad).is_err(), "{bad:?}");
        }
    }
}
