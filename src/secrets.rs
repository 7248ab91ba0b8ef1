//! Secrets at rest. API keys and database URLs with passwords are sealed with
//! XChaCha20-Poly1305 under one 32-byte key kept outside the database (`secrets.key_file`, or
//! the systemd credential `acexport-secrets-key`). The same key, through a derived subkey, keys
//! the HMAC that fingerprints delivered profiles, so destroying the key file crypto-shreds both.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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
    /// Loads the key from `path`. With `create`, a missing file is created with a fresh random
    /// key, mode 0600; a systemd credential is never created (it is read-only by design).
    pub fn load(path: &Path, create: bool) -> Result<SecretKey, SecretsError> {
        match std::fs::read(path) {
            Ok(bytes) => Self::from_file_bytes(path, bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => Self::create(path),
            Err(source) => Err(SecretsError::Read {
                path: path.to_path_buf(),
                source,
            }),
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

    fn create(path: &Path) -> Result<SecretKey, SecretsError> {
        let err = |source| SecretsError::Create {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir).map_err(err)?;
        }
        let mut key = [0u8; KEY_LEN];
        rand::fill(&mut key);
        // create_new: two processes racing to create the key must not overwrite each other.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        match file {
            Ok(mut f) => {
                f.write_all(&key).and_then(|()| f.sync_all()).map_err(err)?;
                Ok(SecretKey {
                    key,
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path, false),
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

/// Creates `dir` (and parents) readable by the owner only.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
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
        SecretKey::load(&dir.join("secrets.key"), true).expect("key")
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
        let other = SecretKey::load(&dir.path().join("other.key"), true).expect("key");
        assert!(other.open(Purpose::ApiKey, &sealed).is_err());
    }

    #[test]
    fn a_hex_key_file_is_accepted_and_a_short_one_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hex = dir.path().join("hex.key");
        std::fs::write(&hex, format!("{}\n", "ab".repeat(32))).expect("write");
        assert!(SecretKey::load(&hex, false).is_ok());
        let short = dir.path().join("short.key");
        std::fs::write(&short, b"too short").expect("write");
        let err = SecretKey::load(&short, false).expect_err("refused");
        assert!(err.to_string().contains("short.key"), "{err}");
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
