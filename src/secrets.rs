//! Secrets at rest. API keys and database URLs with passwords are sealed with
//! XChaCha20-Poly1305 under one 32-byte key kept outside the database (`secrets.key_file`, or
//! the systemd credential `acexport-secrets-key`). The same key, through a derived subkey, keys
//! the HMAC that fingerprints delivered profiles, so destroying the key file crypto-shreds both.
//!
//! The key file is guarded as ssh guards a private key: one that others can read, that anyone
//! but its owner can write, or that belongs to someone other than root or this user is refused.
//! A symlink is followed and the file it leads to is judged (after opening it, on the open
//! file), as ssh does: what matters is who can read or replace the key, not how it is reached.
//! A new key is only ever created by [`SecretKey::create`]; whether the store allows it is the
//! caller's decision.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// Length of the master key in bytes (XChaCha20-Poly1305 key size).
const KEY_LEN: usize = 32;
/// First byte of every sealed value, so the format can change without guessing.
const SEALED_VERSION: u8 = 1;
/// XChaCha20 nonce length; random nonces of this size never repeat in practice.
const NONCE_LEN: usize = 24;
/// Most bytes read from a key file: a hex key with line breaks fits many times over, and a
/// path mistakenly pointing at a large file is not read whole.
const MAX_KEY_FILE_BYTES: u64 = 4096;
/// Mode bits a key file must not have: any access for others, write for its group. Group read
/// stays allowed: the install's `0640 root:acexport` lets the service user read it.
const LOOSE_KEY_BITS: u32 = 0o027;
/// Mode of a new key file: its owner only.
const NEW_KEY_MODE: u32 = 0o600;

/// What a sealed value is for. It is bound into the ciphertext as associated data, so a sealed
/// API key cannot be passed off as a database URL by editing the database.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    ApiKey,
    DatabaseUrl,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::ApiKey => b"acexport/v1/activecampaign-api-key",
            Purpose::DatabaseUrl => b"acexport/v1/database-url",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read the secrets key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the secrets key file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the secrets key file {path} is missing, but the database holds values sealed with it: \
         without it the stored API keys and database passwords cannot be opened, and change \
         tracking (keyed by it) would send every contact again. Restore the file from a backup; \
         a new key is created only for a database with nothing sealed in it"
    )]
    Missing { path: PathBuf },
    #[error("the secrets key file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error(
        "the secrets key file {path} is owned by uid {owner}, who could replace the key; it must \
         belong to root or to the user running acexport (uid {user})"
    )]
    Owner {
        path: PathBuf,
        owner: u32,
        user: u32,
    },
    #[error(
        "the secrets key file {path} has mode {mode:04o}: {faults}. A key that others can read or \
         anyone but its owner can write is refused, as ssh refuses a loose private key; fix it \
         with `chmod {fix:04o} {path}`",
        faults = loose_key_faults(*.mode)
    )]
    Loose { path: PathBuf, mode: u32, fix: u32 },
    #[error(
        "the secrets key file {path} must hold 32 raw bytes or 64 hex characters, found {len} bytes"
    )]
    BadKey { path: PathBuf, len: usize },
    #[error(
        "a stored secret could not be unsealed: it was sealed under another secrets key \
         (was the key file {path} replaced?) or the database was altered"
    )]
    Unseal { path: PathBuf },
}

/// The master key, loaded once per process. Its `Debug` shows the file, never the key.
pub struct SecretKey {
    key: [u8; KEY_LEN],
    path: PathBuf,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        // Best effort: do not leave the key in freed memory.
        self.key.iter_mut().for_each(|b| *b = 0);
    }
}

impl SecretKey {
    /// Reads the key file at `path`, `None` when there is none. The file is judged on the open
    /// file (owner, mode, kind) before a byte of it is read; opening never blocks (a FIFO put
    /// there is refused, not waited on).
    pub fn read(path: &Path) -> Result<Option<SecretKey>, SecretsError> {
        match read_guarded(path)? {
            Some(bytes) => Self::from_file_bytes(path, bytes).map(Some),
            None => Ok(None),
        }
    }

    fn from_file_bytes(path: &Path, mut bytes: Vec<u8>) -> Result<SecretKey, SecretsError> {
        let mut key = [0u8; KEY_LEN];
        let trimmed: Vec<u8> = bytes
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect::<Vec<_>>();
        if bytes.len() == KEY_LEN {
            key.copy_from_slice(&bytes);
        } else if trimmed.len() == KEY_LEN * 2 && trimmed.iter().all(u8::is_ascii_hexdigit) {
            for (i, pair) in trimmed.chunks(2).enumerate() {
                key[i] = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
            }
        } else {
            let len = bytes.len();
            bytes.iter_mut().for_each(|b| *b = 0);
            return Err(SecretsError::BadKey {
                path: path.to_path_buf(),
                len,
            });
        }
        bytes.iter_mut().for_each(|b| *b = 0);
        Ok(SecretKey {
            key,
            path: path.to_path_buf(),
        })
    }

    /// Creates the key file at `path` with a fresh random key, owner-only. If another process
    /// created it first, that key is read instead. Callers decide whether a new key is allowed
    /// (a store with sealed values needs the old one back, not a new one).
    pub fn create(path: &Path) -> Result<SecretKey, SecretsError> {
        let err = |source| SecretsError::Create {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(err)?;
        }
        let mut key = [0u8; KEY_LEN];
        rand::fill(&mut key);
        // create_new (O_EXCL): two processes racing to create the key must not overwrite each
        // other, and a symlink planted at the path is not followed.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(NEW_KEY_MODE)
            .open(path);
        match file {
            Ok(mut f) => {
                f.write_all(&key).and_then(|()| f.sync_all()).map_err(err)?;
                Ok(SecretKey {
                    key,
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                key.iter_mut().for_each(|b| *b = 0);
                // Gone again (or a dangling symlink): say so rather than loop.
                Self::read(path)?.ok_or_else(|| SecretsError::Read {
                    path: path.to_path_buf(),
                    source: std::io::ErrorKind::NotFound.into(),
                })
            }
            Err(e) => Err(err(e)),
        }
    }

    /// Seals `plain` for storage: version byte, random nonce, ciphertext with tag.
    pub fn seal(&self, purpose: Purpose, plain: &SecretString) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new(&self.key.into());
        let nonce = XNonce::generate();
        let payload = Payload {
            msg: plain.expose_secret().as_bytes(),
            aad: purpose.label(),
        };
        // Encryption with a valid key and an in-memory buffer cannot fail.
        let sealed = cipher.encrypt(&nonce, payload).unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(SEALED_VERSION);
        out.extend_from_slice(nonce.as_slice());
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens a value sealed by [`SecretKey::seal`] for the same purpose.
    pub fn open(&self, purpose: Purpose, sealed: &[u8]) -> Result<SecretString, SecretsError> {
        let fail = || SecretsError::Unseal {
            path: self.path.clone(),
        };
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != SEALED_VERSION {
            return Err(fail());
        }
        let cipher = XChaCha20Poly1305::new(&self.key.into());
        let nonce = XNonce::try_from(&sealed[1..1 + NONCE_LEN]).map_err(|_| fail())?;
        let plain = cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad: purpose.label(),
                },
            )
            .map_err(|_| fail())?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| fail())
    }

    /// The keyed hash that fingerprints a profile's mapped values in the delivery state.
    pub fn profile_hasher(&self) -> ProfileHasher {
        let mut derive = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        derive.update(b"acexport/v1/delivery-state-hmac");
        let subkey = derive.finalize().into_bytes();
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&subkey)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        ProfileHasher { mac }
    }
}

/// HMAC-SHA256 keyed by a subkey of the master key; cloned per profile (cheap: the keyed state
/// is precomputed).
#[derive(Clone)]
pub struct ProfileHasher {
    mac: Hmac<Sha256>,
}

/// Stored fingerprint length: 128 bits is ample to detect a change between two runs.
pub const FINGERPRINT_LEN: usize = 16;

impl ProfileHasher {
    /// Fingerprint of a sequence of fields. Each field is length-prefixed so that
    /// ("ab","c") and ("a","bc") differ; `None` and `Some("")` differ too.
    pub fn fingerprint<'a>(
        &self,
        fields: impl IntoIterator<Item = Option<&'a str>>,
    ) -> [u8; FINGERPRINT_LEN] {
        let mut mac = self.mac.clone();
        for field in fields {
            match field {
                None => mac.update(&[0]),
                Some(v) => {
                    mac.update(&[1]);
                    mac.update(&(v.len() as u64).to_le_bytes());
                    mac.update(v.as_bytes());
                }
            }
        }
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; FINGERPRINT_LEN];
        out.copy_from_slice(&full[..FINGERPRINT_LEN]);
        out
    }
}

/// The first [`MAX_KEY_FILE_BYTES`] of a file holding a secret (the secrets key, a webhook's
/// signing secret), `None` when there is none. The file is judged on the open file (owner,
/// mode, kind) before a byte of it is read; opening never blocks (a FIFO put there is refused,
/// not waited on). Errors name the secrets key file: callers reading another secret reword them.
pub(crate) fn read_guarded(path: &Path) -> Result<Option<Vec<u8>>, SecretsError> {
    let io = |source| SecretsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(SecretsError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    check_key_file(
        path,
        meta.uid(),
        meta.mode(),
        rustix::process::geteuid().as_raw(),
    )?;
    let mut bytes = Vec::with_capacity(KEY_LEN * 2 + 1);
    file.take(MAX_KEY_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    Ok(Some(bytes))
}

/// Refuses a key file owned by anyone but root or `user` (who could replace the key), or whose
/// `mode` lets others read it or anyone but its owner write it.
fn check_key_file(path: &Path, owner: u32, mode: u32, user: u32) -> Result<(), SecretsError> {
    if owner != 0 && owner != user {
        return Err(SecretsError::Owner {
            path: path.to_path_buf(),
            owner,
            user,
        });
    }
    if mode & LOOSE_KEY_BITS != 0 {
        // The install's group read stays; everything else goes.
        let fix = if mode & 0o040 != 0 {
            0o640
        } else {
            NEW_KEY_MODE
        };
        return Err(SecretsError::Loose {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
            fix,
        });
    }
    Ok(())
}

/// What a loose key file's `mode` allows, in words, for its error.
pub(crate) fn loose_key_faults(mode: u32) -> String {
    let mut faults = Vec::new();
    if mode & 0o004 != 0 {
        faults.push("others can read it");
    }
    if mode & 0o002 != 0 {
        faults.push("others can write it");
    }
    if mode & 0o020 != 0 {
        faults.push("its group can write it");
    }
    if faults.is_empty() {
        faults.push("others have access to it");
    }
    faults.join(" and ")
}

/// Creates `dir` (and parents) readable by the owner only; an existing folder is left as it is.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

fn hex_value(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_in(dir: &Path) -> SecretKey {
        SecretKey::create(&dir.join("secrets.key")).expect("key")
    }

    /// Writes `bytes` to a new file `name` in `dir` with `mode`, as an admin would.
    fn key_file(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn a_new_key_file_is_created_owner_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _ = key_in(dir.path());
        let mode = std::fs::metadata(dir.path().join("secrets.key"))
            .expect("meta")
            .permissions();
        assert_eq!(mode.mode() & 0o777, 0o600);
    }

    #[test]
    fn sealed_values_open_with_the_same_key_and_purpose_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = key_in(dir.path());
        let secret = SecretString::from("abcdef-0123456789-key");
        let sealed = key.seal(Purpose::ApiKey, &secret);
        assert!(
            !sealed.windows(6).any(|w| w == b"abcdef"),
            "plain text must not show"
        );
        let opened = key.open(Purpose::ApiKey, &sealed).expect("open");
        assert_eq!(opened.expose_secret(), "abcdef-0123456789-key");
        assert!(key.open(Purpose::DatabaseUrl, &sealed).is_err());
        let other = SecretKey::create(&dir.path().join("other.key")).expect("key");
        assert!(other.open(Purpose::ApiKey, &sealed).is_err());
    }

    #[test]
    fn a_hex_key_file_is_accepted_and_a_short_one_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hex = key_file(
            dir.path(),
            "hex.key",
            format!("{}\n", "ab".repeat(32)).as_bytes(),
            0o600,
        );
        assert!(SecretKey::read(&hex).expect("read").is_some());
        let short = key_file(dir.path(), "short.key", b"too short", 0o600);
        let err = SecretKey::read(&short).expect_err("refused");
        assert!(err.to_string().contains("short.key"), "{err}");
    }

    #[test]
    fn a_missing_key_file_reads_as_none_and_is_not_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secrets.key");

        assert!(SecretKey::read(&path).expect("read").is_none());
        assert!(!path.exists());
    }

    #[test]
    fn creating_a_key_where_one_exists_reads_the_existing_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = key_file(dir.path(), "secrets.key", &[7u8; KEY_LEN], 0o600);
        let before = SecretKey::read(&path).expect("read").expect("exists");

        let created = SecretKey::create(&path).expect("create");

        let sealed = before.seal(Purpose::ApiKey, &SecretString::from("k"));
        assert!(created.open(Purpose::ApiKey, &sealed).is_ok(), "same key");
    }

    #[test]
    fn key_files_are_judged_by_owner_and_mode_as_ssh_judges_private_keys() {
        const USER: u32 = 1000;
        // (owner, mode, the chmod advised or None when accepted)
        let cases: &[(u32, u32, Option<u32>)] = &[
            (USER, 0o600, None),
            (USER, 0o400, None),
            (0, 0o640, None), // the install: root:acexport 0640
            (0, 0o440, None),
            (USER, 0o640, None),
            (USER, 0o644, Some(0o640)),
            (USER, 0o660, Some(0o640)),
            (USER, 0o666, Some(0o640)),
            (USER, 0o604, Some(0o600)),
            (USER, 0o602, Some(0o600)),
            (USER, 0o601, Some(0o600)),
            (USER, 0o620, Some(0o600)),
            (0, 0o100644, Some(0o640)), // st_mode carries the file type too
        ];
        let path = Path::new("/etc/acexport/secrets.key");
        for &(owner, mode, fix) in cases {
            let result = check_key_file(path, owner, mode, USER);
            match (fix, result) {
                (None, Ok(())) => {}
                (Some(want), Err(SecretsError::Loose { fix, .. })) => {
                    assert_eq!(fix, want, "owner {owner} mode {mode:o}");
                }
                (fix, result) => panic!("owner {owner} mode {mode:o}: {result:?}, want {fix:?}"),
            }
        }
    }

    #[test]
    fn a_key_file_of_another_user_is_refused_whatever_its_mode() {
        let err = check_key_file(Path::new("/k"), 1001, 0o600, 1000).expect_err("refused");

        assert!(
            matches!(err, SecretsError::Owner { owner: 1001, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("owned by uid 1001"), "{err}");
    }

    #[test]
    fn a_loose_key_file_error_names_the_file_what_is_wrong_and_the_chmod() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = key_file(dir.path(), "secrets.key", &[7u8; KEY_LEN], 0o664);

        let err = SecretKey::read(&path).expect_err("refused").to_string();

        assert!(err.contains("mode 0664"), "{err}");
        assert!(
            err.contains("others can read it and its group can write it"),
            "{err}"
        );
        assert!(
            err.contains(&format!("`chmod 0640 {}`", path.display())),
            "{err}"
        );
    }

    #[test]
    fn a_fifo_in_place_of_the_key_file_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secrets.key");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");

        let err = SecretKey::read(&path).expect_err("refused");

        assert!(matches!(err, SecretsError::NotAFile { .. }), "{err:?}");
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = key_in(dir.path());
        let shown = format!("{key:?}");
        assert!(
            shown.contains("secrets.key") && !shown.contains("key: ["),
            "{shown}"
        );
    }

    #[test]
    fn fingerprints_separate_fields_and_absence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = key_in(dir.path()).profile_hasher();
        assert_ne!(
            h.fingerprint([Some("ab"), Some("c")]),
            h.fingerprint([Some("a"), Some("bc")])
        );
        assert_ne!(h.fingerprint([None]), h.fingerprint([Some("")]));
        assert_eq!(h.fingerprint([Some("x")]), h.fingerprint([Some("x")]));
    }
}
