//! Roles, as Customer Insights has them: admins control where data can go, contributors define
//! the payload and frequency on the connections shared with them, viewers look.
//!
//! The policy, checked by every operation of the service whoever calls it:
//! - Root and the daemon's own user are always admins; anyone else holds the highest role an
//!   `access.*` entry gives their name or one of their groups, or none.
//! - Admins: everything. Only they add, update, test, share and remove connections, see a
//!   connection's host and key hint, use SQL sources (which would lend the daemon's database
//!   access and environment) and read the audit log.
//! - Contributors: exports on shared connections only (add, update, enable, disable, remove,
//!   run, trigger, cancel); segments from files they can read themselves; a segment change only
//!   when every export reading it is on a shared connection.
//! - Viewers: exports, runs and status, on shared connections only; no segment rows.
//! - A connection's sharing is read at each request, so changing it takes effect at once.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::{Context, ServiceError};
use crate::identity::LocalUser;
use crate::settings::AccessSettings;
use crate::store::ConnectionDef;

/// The kernel's overflow uid (`/proc/sys/kernel/overflowuid`, "nobody").
const OVERFLOW_UID: u32 = 65534;

/// A role, ordered: each may do what the ones below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Contributor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Contributor => "contributor",
            Role::Admin => "admin",
        }
    }

    /// The setting that grants it.
    pub fn setting(self) -> &'static str {
        match self {
            Role::Viewer => "access.viewers",
            Role::Contributor => "access.contributors",
            Role::Admin => "access.admins",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who asks: recorded in the audit log, the consent and the run queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The user's name (`uid N` when the user database has none).
    pub name: String,
    pub uid: u32,
    /// The user's groups by id, for checking what files they can read.
    pub gids: Vec<u32>,
    pub role: Option<Role>,
}

impl Actor {
    /// The role `user` holds under `access`; `service_uid` is the daemon's own user.
    pub fn of(user: &LocalUser, access: &AccessSettings, service_uid: u32) -> Actor {
        Actor {
            name: user.display(),
            uid: user.uid,
            gids: user.gids.clone(),
            role: role_of(user, access, service_uid),
        }
    }

    /// The process's own user, an admin: without a daemon, whoever can open the store can
    /// change anything in it anyway.
    pub fn process(user: &LocalUser) -> Actor {
        Actor {
            name: user.display(),
            uid: user.uid,
            gids: user.gids.clone(),
            role: Some(Role::Admin),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Some(Role::Admin)
    }

    fn holds(&self, need: Role) -> bool {
        self.role.is_some_and(|r| r >= need)
    }
}

/// The highest role `user` holds.
pub fn role_of(user: &LocalUser, access: &AccessSettings, service_uid: u32) -> Option<Role> {
    if user.uid == 0 || user.uid == service_uid {
        return Some(Role::Admin);
    }
    // The overflow uid is what every unmapped user looks like from inside a user namespace
    // (systemd's PrivateUsers=): a role for it would be a role for everyone.
    if user.uid == OVERFLOW_UID {
        return None;
    }
    [
        (Role::Admin, &access.admins),
        (Role::Contributor, &access.contributors),
        (Role::Viewer, &access.viewers),
    ]
    .into_iter()
    .find(|(_, entries)| entries.iter().any(|e| names(e, user)))
    .map(|(role, _)| role)
}

/// Whether an `access.*` entry (a user name or `@group`) names `user`.
fn names(entry: &str, user: &LocalUser) -> bool {
    match entry.strip_prefix('@') {
        Some(group) => user.in_group(group),
        None => user.name.as_deref() == Some(entry),
    }
}

/// Why a request was refused; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub actor: String,
    pub role: Option<Role>,
    /// What was asked, e.g. "add connections".
    pub action: String,
    pub reason: RefusalReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalReason {
    /// The action needs this role.
    Needs(Role),
    /// A file the actor cannot read themselves: the daemon reads it only for those who can.
    Unreadable { path: PathBuf, why: String },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.role.map_or("no role", Role::as_str);
        write!(
            f,
            "user {:?} ({held}) may not {}: ",
            self.actor, self.action
        )?;
        match &self.reason {
            RefusalReason::Needs(role) => write!(
                f,
                "that needs the {role} role; an admin can grant it in {}",
                role.setting()
            ),
            RefusalReason::Unreadable { path, why } => write!(
                f,
                "{} is not readable by {:?} ({why}); the daemon reads a source only for someone \
                 who can read it",
                crate::escape::untrusted(&path.display().to_string()),
                self.actor
            ),
        }
    }
}

impl Context {
    /// Who this context acts for.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// The same context acting for `actor` (a request on the control socket).
    pub fn as_actor(&self, actor: Actor) -> Context {
        Context {
            settings: self.settings.clone(),
            store: self.store.as_actor(&actor.name),
            key: Arc::clone(&self.key),
            control: self.control.clone(),
            actor: Arc::new(actor),
            in_daemon: self.in_daemon,
            daemon_wake: Arc::clone(&self.daemon_wake),
            alerts: Arc::clone(&self.alerts),
        }
    }

    fn refuse(&self, action: &str, reason: RefusalReason) -> ServiceError {
        ServiceError::Forbidden(Refusal {
            actor: self.actor.name.clone(),
            role: self.actor.role,
            action: action.to_owned(),
            reason,
        })
    }

    /// Refuses unless the actor holds `need`.
    pub fn require(&self, need: Role, action: &str) -> Result<(), ServiceError> {
        if self.actor.holds(need) {
            Ok(())
        } else {
            Err(self.refuse(action, RefusalReason::Needs(need)))
        }
    }

    /// Refuses a file the actor could not read with their own credentials. The actor of the
    /// process itself needs no check: the system checks its own opens.
    pub fn require_readable(&self, path: &Path) -> Result<(), ServiceError> {
        if self.actor.uid == rustix::process::geteuid().as_raw() {
            return Ok(());
        }
        crate::source::access::readable_by(path, self.actor.uid, &self.actor.gids).map_err(|why| {
            self.refuse(
                "use this file as a source",
                RefusalReason::Unreadable {
                    path: path.to_path_buf(),
                    why,
                },
            )
        })
    }

    /// Whom a file the actor names is read for: themselves, unless they are root or the
    /// daemon's own user (who read as the daemon does anyway).
    pub fn file_reader(&self) -> Option<crate::source::FileReader> {
        let own = rustix::process::geteuid().as_raw();
        (self.actor.uid != 0 && self.actor.uid != own).then(|| crate::source::FileReader {
            uid: self.actor.uid,
            gids: self.actor.gids.clone(),
        })
    }

    /// Whether the actor may see (and, holding the role, use) `connection`.
    pub fn may_use(&self, connection: &ConnectionDef) -> bool {
        self.actor.is_admin() || (self.actor.role.is_some() && connection.allow_contributors)
    }

    /// Refuses unless the actor holds `need` and may use `connection`. A connection kept for
    /// admins does not exist for the others: they learn nothing of it, not even its name.
    pub fn require_on(
        &self,
        connection: &ConnectionDef,
        need: Role,
        action: &str,
    ) -> Result<(), ServiceError> {
        self.require(need, action)?;
        if self.may_use(connection) {
            Ok(())
        } else {
            Err(ServiceError::NotFound {
                kind: "connection",
                name: connection.name.clone(),
            })
        }
    }

    /// Refuses unless the actor holds `need` and may use the connection of `export`: an export
    /// on a connection kept for admins does not exist for the others.
    pub async fn require_export(
        &self,
        export: &crate::store::ExportDef,
        need: Role,
        action: &str,
    ) -> Result<(), ServiceError> {
        self.require(need, action)?;
        if self.actor.is_admin() {
            return Ok(());
        }
        match self.store.connection_by_id(export.connection_id).await? {
            Some(c) if self.may_use(&c) => Ok(()),
            _ => Err(ServiceError::NotFound {
                kind: "export",
                name: export.name.clone(),
            }),
        }
    }

    /// What non-admins must not read in any output: each connection's address (a server's
    /// error or a run's recorded error may quote it). Empty for admins.
    pub async fn hidden_addresses(&self) -> Result<Vec<String>, ServiceError> {
        if self.actor.is_admin() {
            return Ok(Vec::new());
        }
        let mut hidden = Vec::new();
        for c in self.store.connections().await? {
            if let Ok(base) = crate::activecampaign::BaseUrl::parse(&c.base_url) {
                hidden.push(base.as_str().to_owned());
                hidden.push(base.host().to_owned());
            }
            hidden.push(c.base_url);
        }
        // Longest first, so a full URL is replaced before the host inside it.
        hidden.sort_by_key(|text| std::cmp::Reverse(text.len()));
        hidden.retain(|text| !text.is_empty());
        hidden.dedup();
        Ok(hidden)
    }

    /// The ids of the connections the actor may use (`None`: all of them).
    pub async fn usable_connections(&self) -> Result<Option<Vec<i64>>, ServiceError> {
        if self.actor.is_admin() {
            return Ok(None);
        }
        let connections = self.store.connections().await?;
        Ok(Some(
            connections
                .iter()
                .filter(|c| self.may_use(c))
                .map(|c| c.id)
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE_UID: u32 = 990;

    fn user(uid: u32, name: Option<&str>, groups: &[&str]) -> LocalUser {
        LocalUser {
            uid,
            name: name.map(str::to_owned),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            gids: Vec::new(),
        }
    }

    fn access(admins: &[&str], contributors: &[&str], viewers: &[&str]) -> AccessSettings {
        let list = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect();
        AccessSettings {
            admins: list(admins),
            contributors: list(contributors),
            viewers: list(viewers),
        }
    }

    #[test]
    fn roles_come_from_names_and_groups_and_the_highest_wins() {
        let a = access(
            &["ann"],
            &["@marketing", "carl"],
            &["@staff", "carl", "nobody"],
        );
        let cases: &[(LocalUser, Option<Role>)] = &[
            (user(0, Some("root"), &[]), Some(Role::Admin)),
            (user(SERVICE_UID, Some("acexport"), &[]), Some(Role::Admin)),
            (user(1001, Some("ann"), &["staff"]), Some(Role::Admin)),
            (
                user(1002, Some("bob"), &["marketing"]),
                Some(Role::Contributor),
            ),
            (user(1003, Some("carl"), &[]), Some(Role::Contributor)),
            (user(1004, Some("dora"), &["staff"]), Some(Role::Viewer)),
            (user(1005, Some("eve"), &["users"]), None),
            // A group entry never matches a user of that name, nor the reverse.
            (user(1006, Some("marketing"), &[]), None),
            (user(1007, Some("staff"), &["ann"]), None),
            // A uid without a name matches groups only.
            (user(1008, None, &["marketing"]), Some(Role::Contributor)),
            // The overflow uid never holds a role, even when named.
            (user(65534, Some("nobody"), &["nogroup"]), None),
        ];
        for (u, expected) in cases {
            assert_eq!(role_of(u, &a, SERVICE_UID), *expected, "{u:?}");
        }
    }

    #[test]
    fn roles_are_ordered_so_that_each_includes_the_ones_below() {
        let contributor = Actor {
            name: "bob".into(),
            uid: 1002,
            gids: vec![1002],
            role: Some(Role::Contributor),
        };
        assert!(contributor.holds(Role::Viewer));
        assert!(contributor.holds(Role::Contributor));
        assert!(!contributor.holds(Role::Admin));
        let nobody = Actor {
            role: None,
            ..contributor
        };
        assert!(!nobody.holds(Role::Viewer));
    }

    #[test]
    fn a_refusal_names_the_user_the_role_held_and_the_role_needed() {
        let refusal = Refusal {
            actor: "bob".into(),
            role: Some(Role::Contributor),
            action: "add connections".into(),
            reason: RefusalReason::Needs(Role::Admin),
        };
        assert_eq!(
            refusal.to_string(),
            "user \"bob\" (contributor) may not add connections: that needs the admin role; an \
             admin can grant it in access.admins"
        );
    }
}
