//! The audit log: who changed which definition, shared a connection, accepted a data transfer,
//! asked for a run or cancelled one. It names definitions and people, never a profile value or
//! a secret; only admins read it.

use super::access::Role;
use super::{Context, ServiceError};
pub use crate::store::AuditEntry;

impl Context {
    /// The latest `limit` entries, newest first.
    pub async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, ServiceError> {
        self.require(Role::Admin, "read the audit log")?;
        Ok(self.store.audit_entries(limit).await?)
    }
}
