//! Who a local user is: a uid's name and groups, read from the system's user and group
//! databases (NSS), as PostgreSQL's peer authentication reads them. Roles are granted to names
//! and `@group` names, so every decision about a person starts here.
//!
//! Groups come from the group database (`getgrouplist`), not from the asking process: removing
//! someone from a group takes effect at their next request, not at their next login.

use std::ffi::CString;

use nix::unistd::{Gid, Group, Uid, User, getgrouplist};

/// A local user as the system knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalUser {
    pub uid: u32,
    /// `None` for a uid with no entry in the user database.
    pub name: Option<String>,
    /// The names of the user's groups, primary group included (those the group database
    /// names; a gid without a name is left out).
    pub groups: Vec<String>,
    /// The same groups by id, unnamed ones included: what file permissions are checked against.
    pub gids: Vec<u32>,
}

impl LocalUser {
    /// The user's name, or `uid N` when the user database has none.
    pub fn display(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => format!("uid {}", self.uid),
        }
    }

    /// Whether `group` is one of the user's groups.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// Looks a uid up. `gid` is the primary gid the kernel reported (peer credentials, a file's
/// group is not used): it counts even when the user database has no entry for the uid.
pub fn lookup(uid: u32, gid: Option<u32>) -> LocalUser {
    let user = User::from_uid(Uid::from_raw(uid)).ok().flatten();
    let mut gids: Vec<Gid> = Vec::new();
    if let Some(gid) = gid {
        gids.push(Gid::from_raw(gid));
    }
    if let Some(user) = &user
        && let Ok(name) = CString::new(user.name.as_str())
    {
        // Includes the primary group from the user database.
        if let Ok(list) = getgrouplist(&name, user.gid) {
            gids.extend(list);
        } else {
            gids.push(user.gid);
        }
    }
    gids.sort_unstable_by_key(|g| g.as_raw());
    gids.dedup();
    let groups = gids
        .iter()
        .filter_map(|g| Group::from_gid(*g).ok().flatten().map(|g| g.name))
        .collect();
    LocalUser {
        uid,
        name: user.map(|u| u.name),
        groups,
        gids: gids.into_iter().map(Gid::as_raw).collect(),
    }
}

/// The user this process runs as (its effective uid), for records made without a daemon.
pub fn current() -> LocalUser {
    lookup(
        rustix::process::geteuid().as_raw(),
        Some(rustix::process::getegid().as_raw()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_named_root_and_in_group_root() {
        let root = lookup(0, Some(0));
        assert_eq!(root.name.as_deref(), Some("root"));
        assert_eq!(root.display(), "root");
        assert!(root.in_group("root"), "{root:?}");
    }

    #[test]
    fn a_uid_without_an_entry_is_shown_by_number_and_keeps_its_primary_group() {
        let nobody_known = lookup(4_000_000_123, Some(0));
        assert_eq!(nobody_known.name, None);
        assert_eq!(nobody_known.display(), "uid 4000000123");
        assert_eq!(nobody_known.groups, ["root"]);
    }
}
