//! The state folder (the database's, and its `locks` folder inside): a new one is created
//! owner-only (0700). An existing one that others can enter or its group can write is
//! tightened when this process's user owns it (a warning says so, once: the next start finds
//! it tight), and refused otherwise, naming the `chmod` that fixes it; acexport does not change
//! another user's folder.
//!
//! The database file and its `-wal`/`-shm` companions get the same treatment with a stricter
//! rule: nobody but the owner reads them (a file restored from a backup under umask 022 is
//! 0644, and the folder's group includes the trigger group's path). Another user's loose file
//! is only warned about: root may run the CLI against the service user's database.
//!
//! Group read and search are kept: the systemd install makes the folder 0750 with an ACL that
//! lets the trigger group pass through to `triggers/` (deploy/acexport.tmpfiles), and with an
//! ACL the group bits are the ACL's mask. Tightening to 0700 would cut that path.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::StoreError;

/// Mode bits no state folder keeps: any access for others, write for its group (who could
/// otherwise swap the database or plant links in it).
const LOOSE_BITS: u32 = 0o027;
/// Mode of a folder acexport creates.
const NEW_FOLDER_MODE: u32 = 0o700;

/// The mode a folder with `mode` should have: `None` when it is tight already.
fn tightened(mode: u32) -> Option<u32> {
    (mode & LOOSE_BITS != 0).then_some(mode & 0o7777 & !LOOSE_BITS)
}

/// Creates `dir` (and its missing parents) owner-only, or makes sure the existing folder is
/// closed to others and to writes by its group.
pub(super) fn ensure_private(dir: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Folder {
        path: dir.to_path_buf(),
        source,
    };
    match open_dir(dir) {
        Ok(folder) => tighten(dir, &folder),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(NEW_FOLDER_MODE)
            .create(dir)
            .map_err(io),
        Err(e) => Err(io(e)),
    }
}

/// Opens the folder itself, so that its mode is read and changed on what was opened.
fn open_dir(dir: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::DIRECTORY.bits() as i32)
        .open(dir)
}

fn tighten(dir: &Path, folder: &File) -> Result<(), StoreError> {
    let io = |source| StoreError::Folder {
        path: dir.to_path_buf(),
        source,
    };
    let meta = folder.metadata().map_err(io)?;
    let mode = meta.mode() & 0o7777;
    let Some(tight) = tightened(mode) else {
        return Ok(());
    };
    if meta.uid() != rustix::process::geteuid().as_raw() {
        return Err(StoreError::LooseFolder {
            path: dir.to_path_buf(),
            mode,
            owner: meta.uid(),
            fix: tight,
        });
    }
    folder
        .set_permissions(std::fs::Permissions::from_mode(tight))
        .map_err(io)?;
    tracing::warn!(
        folder = %dir.display(),
        was = %format_args!("{mode:04o}"),
        now = %format_args!("{tight:04o}"),
        "State folder was open to others or writable by its group; tightened it"
    );
    Ok(())
}

/// Mode bits no database file keeps: the profile data in it is for its owner only.
const LOOSE_FILE_BITS: u32 = 0o077;

/// Makes sure the database at `path` and its `-wal` and `-shm` files, where they exist, are
/// owner-only: tightened when this process's user owns them, warned about otherwise.
pub(super) fn ensure_private_files(path: &Path) -> Result<(), StoreError> {
    for name in std::iter::once(path.to_path_buf()).chain(super::faults::sidecars(path)) {
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&name)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(StoreError::Folder { path: name, source }),
        };
        let meta = file.metadata().map_err(|source| StoreError::Folder {
            path: name.clone(),
            source,
        })?;
        let mode = meta.mode() & 0o7777;
        if mode & LOOSE_FILE_BITS == 0 {
            continue;
        }
        let tight = mode & !LOOSE_FILE_BITS;
        if meta.uid() != rustix::process::geteuid().as_raw() {
            tracing::warn!(
                file = %name.display(),
                mode = %format_args!("{mode:04o}"),
                fix = %format_args!("chmod {tight:04o} {}", name.display()),
                "Database file is readable by others than its owner"
            );
            continue;
        }
        file.set_permissions(std::fs::Permissions::from_mode(tight))
            .map_err(|source| StoreError::Folder {
                path: name.clone(),
                source,
            })?;
        tracing::warn!(
            file = %name.display(),
            was = %format_args!("{mode:04o}"),
            now = %format_args!("{tight:04o}"),
            "Database file was readable by others than its owner; tightened it"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_access_for_others_and_group_writes_are_taken_away() {
        let cases = [
            (0o700, None),
            (0o750, None), // the systemd install, with the trigger group's ACL
            (0o710, None),
            (0o2750, None),
            (0o755, Some(0o750)),
            (0o777, Some(0o750)),
            (0o770, Some(0o750)),
            (0o701, Some(0o700)),
            (0o720, Some(0o700)),
            (0o2775, Some(0o2750)),
            (0o40755, Some(0o750)), // st_mode carries the file type too
        ];
        for (mode, want) in cases {
            assert_eq!(tightened(mode), want, "{mode:o}");
        }
    }

    #[test]
    fn a_database_restored_world_readable_is_made_owner_only_with_its_wal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("acexport.db");
        let wal = dir.path().join("acexport.db-wal");
        for file in [&db, &wal] {
            std::fs::write(file, b"x").expect("write");
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }

        ensure_private_files(&db).expect("tightened");

        for file in [&db, &wal] {
            let mode = std::fs::metadata(file).expect("meta").mode() & 0o7777;
            assert_eq!(mode, 0o600, "{}", file.display());
        }
    }

    #[test]
    fn a_missing_folder_is_created_owner_only_with_its_parents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("a/state");

        ensure_private(&state).expect("created");

        let mode = std::fs::metadata(&state).expect("meta").mode() & 0o7777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn an_own_folder_open_to_others_is_tightened() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");

        ensure_private(dir.path()).expect("tightened");

        let mode = std::fs::metadata(dir.path()).expect("meta").mode() & 0o7777;
        assert_eq!(mode, 0o750);
    }

    #[test]
    fn a_file_in_place_of_the_folder_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("state");
        std::fs::write(&file, b"").expect("write");

        let err = ensure_private(&file).expect_err("not a folder");

        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
    }
}
