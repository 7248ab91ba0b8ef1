//! Connections (Customer Insights: Admin > Connections): verified against ActiveCampaign
//! ("Connect") before anything is saved; the key is sealed; only its last characters are shown.

use secrecy::SecretString;
use serde::Serialize;

use super::access::Role;
use super::{Context, Remedy, ServiceError, check_name};
use crate::activecampaign::BaseUrl;
use crate::redact::hint;
use crate::secrets::Purpose;
pub use crate::store::connections::ConnectionStatus;
use crate::store::connections::{NewConnection, Sealed};
use crate::store::{ConnectionDef, now_text};

/// Shown when an admin adds a connection without accepting the data transfer; each front end
/// adds how to accept it.
pub const PRIVACY_NOTICE: &str = "\
Data privacy notice: exports through this connection send personal data (email addresses and \
the mapped names, phone numbers and fields) out of this system to ActiveCampaign. You are \
responsible for ActiveCampaign meeting your organisation's privacy and security obligations \
(lawful basis, data processing agreement, transfers outside your region).";

#[derive(Debug)]
pub struct AddConnection {
    pub name: String,
    pub host: String,
    pub api_key: SecretString,
    pub allow_contributors: bool,
    pub accept_data_transfer: bool,
}

#[derive(Debug, Default)]
pub struct UpdateConnection {
    pub host: Option<String>,
    pub api_key: Option<SecretString>,
    pub allow_contributors: Option<bool>,
}

/// The kind of destination a connection reaches (Customer Insights shows a connection's
/// "type" to contributors).
pub const CONNECTION_TYPE: &str = "ActiveCampaign";

/// A connection as shown to users: its name, type and status to everyone who may use it; the
/// rest to admins only.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionView {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub status: ConnectionStatus,
    /// `None` for non-admins: the host, key hint and account are where data goes, which only
    /// admins control.
    #[serde(flatten)]
    pub details: Option<ConnectionDetails>,
}

/// What only admins see of a connection: never the key, only its last characters.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionDetails {
    pub host: String,
    pub api_key: String,
    pub allowed_users: &'static str,
    pub export_user: Option<String>,
    pub status_detail: Option<String>,
    pub checked_at: String,
    pub consent_at: String,
    pub consent_by: String,
    pub exports: Vec<String>,
}

impl Context {
    async fn connection_view(&self, c: ConnectionDef) -> Result<ConnectionView, ServiceError> {
        if !self.actor().is_admin() {
            return Ok(ConnectionView {
                name: c.name,
                kind: CONNECTION_TYPE,
                status: c.status,
                details: None,
            });
        }
        let exports = self.store.exports_using_connection(c.id).await?;
        let details = ConnectionDetails {
            host: BaseUrl::parse(&c.base_url)
                .map(|b| b.host().to_owned())
                .unwrap_or(c.base_url),
            api_key: c.api_key_hint,
            allowed_users: if c.allow_contributors {
                "admins and contributors"
            } else {
                "admins"
            },
            export_user: c.ac_user,
            status_detail: c.status_detail,
            checked_at: c.checked_at,
            consent_at: c.consent_at,
            consent_by: c.consent_by,
            exports,
        };
        Ok(ConnectionView {
            name: c.name,
            kind: CONNECTION_TYPE,
            status: c.status,
            details: Some(details),
        })
    }

    pub async fn find_connection(&self, name: &str) -> Result<ConnectionDef, ServiceError> {
        self.store
            .connection(name)
            .await?
            .ok_or_else(|| ServiceError::not_found("connection", name))
    }

    /// A connection by name for an admin operation: refused before anything is looked up.
    async fn admin_connection(
        &self,
        name: &str,
        action: &str,
    ) -> Result<ConnectionDef, ServiceError> {
        self.require(Role::Admin, action)?;
        self.find_connection(name).await
    }

    /// Verifies the key against ActiveCampaign, then saves the connection.
    pub async fn add_connection(&self, req: AddConnection) -> Result<ConnectionView, ServiceError> {
        self.require(Role::Admin, "add connections")?;
        check_name("connection", &req.name)?;
        if !req.accept_data_transfer {
            return Err(ServiceError::ConsentRequired);
        }
        let base = BaseUrl::parse(&req.host)?;
        if self.store.name_taken("connections", &req.name).await? {
            return Err(ServiceError::Duplicate {
                kind: "connection",
                name: req.name,
            });
        }
        let user = self
            .client_for(base.clone(), req.api_key.clone())?
            .users_me()
            .await?;
        let sealed = self.secret_key().seal(Purpose::ApiKey, &req.api_key);
        let consent_by = self.actor().name.clone();
        let inserted = self
            .store
            .insert_connection(NewConnection {
                name: &req.name,
                base_url: base.as_str(),
                api_key_sealed: Sealed(sealed),
                api_key_hint: &hint(&req.api_key),
                allow_contributors: req.allow_contributors,
                consent_by: &consent_by,
                ac_user: &user.display(),
            })
            .await?;
        if inserted.is_none() {
            return Err(ServiceError::Duplicate {
                kind: "connection",
                name: req.name,
            });
        }
        tracing::info!(connection = %req.name, host = %base, "Connection verified and saved");
        self.show_connection(&req.name).await
    }

    /// The connections the actor may use: all of them for admins, the shared ones (name, type
    /// and status only) for contributors and viewers.
    pub async fn list_connections(&self) -> Result<Vec<ConnectionView>, ServiceError> {
        self.require(Role::Viewer, "list connections")?;
        let mut out = Vec::new();
        for c in self.store.connections().await? {
            if self.may_use(&c) {
                out.push(self.connection_view(c).await?);
            }
        }
        Ok(out)
    }

    pub async fn show_connection(&self, name: &str) -> Result<ConnectionView, ServiceError> {
        self.require(Role::Viewer, "see connections")?;
        let c = self.find_connection(name).await?;
        self.require_on(&c, Role::Viewer, "see this connection")?;
        self.connection_view(c).await
    }

    /// Re-verifies a stored connection and records the result.
    pub async fn test_connection(&self, name: &str) -> Result<ConnectionView, ServiceError> {
        let c = self.admin_connection(name, "test connections").await?;
        let result = self.client(&c)?.users_me().await;
        match &result {
            Ok(_) => {
                self.store
                    .record_connection_check(c.id, ConnectionStatus::Verified, None)
                    .await?
            }
            Err(e) => {
                let status = if e.is_rejected_key() {
                    ConnectionStatus::Rejected
                } else {
                    ConnectionStatus::Unreachable
                };
                self.store
                    .record_connection_check(c.id, status, Some(&e.to_string()))
                    .await?;
            }
        }
        result?;
        self.show_connection(name).await
    }

    /// Changes host, key or sharing; re-verifies before saving.
    pub async fn update_connection(
        &self,
        name: &str,
        req: UpdateConnection,
    ) -> Result<ConnectionView, ServiceError> {
        let action = if req.host.is_none() && req.api_key.is_none() {
            "share connections"
        } else {
            "update connections"
        };
        let mut c = self.admin_connection(name, action).await?;
        let base = match &req.host {
            Some(host) => BaseUrl::parse(host)?,
            None => BaseUrl::parse(&c.base_url)?,
        };
        let key = match &req.api_key {
            Some(key) => key.clone(),
            None => self
                .secret_key()
                .open(Purpose::ApiKey, &c.api_key_sealed.0)?,
        };
        if req.host.is_some() || req.api_key.is_some() {
            let user = self
                .client_for(base.clone(), key.clone())?
                .users_me()
                .await?;
            c.ac_user = Some(user.display());
            c.status = ConnectionStatus::Verified;
            c.status_detail = None;
            c.checked_at = now_text();
        }
        if let Some(api_key) = &req.api_key {
            c.api_key_sealed = Sealed(self.secret_key().seal(Purpose::ApiKey, api_key));
            c.api_key_hint = hint(api_key);
        }
        c.base_url = base.as_str().to_owned();
        if let Some(allow) = req.allow_contributors {
            c.allow_contributors = allow;
        }
        if self.store.update_connection(&c).await? {
            tracing::info!(connection = %name, "Host changed: delivery state of its exports reset; their next runs send every member");
        }
        self.show_connection(name).await
    }

    /// Removes a connection and its sealed key. Refused while exports use it, unless `force`,
    /// which removes those exports (and their delivery state) too. Returns the removed exports.
    pub async fn remove_connection(
        &self,
        name: &str,
        force: bool,
    ) -> Result<Vec<String>, ServiceError> {
        let c = self.admin_connection(name, "remove connections").await?;
        let users = self.store.exports_using_connection(c.id).await?;
        if !users.is_empty() && !force {
            return Err(ServiceError::InUse {
                kind: "connection",
                name: name.to_owned(),
                users,
                remedy: Remedy::Force,
            });
        }
        self.store.remove_connection(c.id, name).await?;
        tracing::info!(connection = %name, exports_removed = users.len(), "Connection removed");
        Ok(users)
    }
}
