//! The webhook channel: each alert is POSTed as JSON, signed when a secret is set, and tried
//! again with jittered, capped backoff while the receiver is down or busy. As for
//! ActiveCampaign, no redirect is followed and proxy variables in the environment are
//! ignored: the alert goes to the URL the settings name and nowhere else. Whether an attempt
//! is worth repeating is the ActiveCampaign client's pure classifier (`retry::classify`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use crate::activecampaign::client::{error_chain, is_tls};
use crate::activecampaign::retry::{Attempt, Verdict, backoff, classify};
use crate::escape::untrusted;
use crate::secrets::{SecretsError, loose_key_faults, read_guarded};
use crate::settings::{AlertsSettings, WebhookUrl};

/// Attempts per alert: with the default first wait of 2 s, doubling with jitter, the last one
/// starts within about a minute of the first, and all of them end within two.
pub const WEBHOOK_ATTEMPTS: u32 = 5;
/// Longest wait between attempts, also for a receiver's `Retry-After`.
const RETRY_CAP: Duration = Duration::from_secs(30);
/// Longest time one attempt may take; a receiver that holds an alert longer is down.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The signature header: `sha256=` and the hex HMAC-SHA256 of the body under the secret.
pub const SIGNATURE_HEADER: &str = "X-Acexport-Signature";
/// The alert's id, the same on every attempt, so a receiver can drop a repeat.
const DELIVERY_HEADER: &str = "X-Acexport-Delivery";
const EVENT_HEADER: &str = "X-Acexport-Event";

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The signing secret cannot be used; nothing was sent (an unsigned alert would be refused
    /// by a receiver that checks, or accepted by one that should not).
    #[error("the webhook secret file {} {problem}", .path.display())]
    Secret { path: PathBuf, problem: String },
    #[error("{url} answered HTTP {status} ({attempts} attempt(s))")]
    Refused {
        url: String,
        status: u16,
        attempts: u32,
    },
    #[error(
        "{url} answered with a redirect (HTTP {status}); redirects are not followed: give the \
         URL it redirects to"
    )]
    Redirect { url: String, status: u16 },
    #[error("cannot reach {url} ({attempts} attempt(s)): {detail}")]
    Unreachable {
        url: String,
        attempts: u32,
        detail: String,
    },
    #[error("{url} did not answer within {} s ({attempts} attempt(s))", ATTEMPT_TIMEOUT.as_secs())]
    Timeout { url: String, attempts: u32 },
    #[error("cannot set up the webhook client: {0}")]
    Client(String),
}

/// What a delivered alert got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub status: u16,
    pub attempts: u32,
}

/// The webhook the settings name.
#[derive(Debug)]
pub struct Webhook {
    url: WebhookUrl,
    secret_file: Option<PathBuf>,
    retry_base: Duration,
    http: reqwest::Client,
}

impl Webhook {
    /// The webhook of `settings`, if one is set.
    pub fn from_settings(settings: &AlertsSettings) -> Result<Option<Webhook>, WebhookError> {
        let Some(url) = &settings.webhook_url else {
            return Ok(None);
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("acexport/", env!("CARGO_PKG_VERSION")))
            // The alert and its signature go to the configured URL only.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(ATTEMPT_TIMEOUT)
            .build()
            .map_err(|e| WebhookError::Client(untrusted(&error_chain(&e)).into_owned()))?;
        Ok(Some(Webhook {
            url: url.clone(),
            secret_file: settings.webhook_secret_file.clone(),
            retry_base: Duration::from_millis(settings.webhook_retry_base_ms),
            http,
        }))
    }

    /// The URL as logs and reports show it (scheme, host and port).
    pub fn shown(&self) -> String {
        self.url.shown()
    }

    /// POSTs `body` (alert `id`, telling `event`), up to `attempts` times while the receiver
    /// is down, busy or failing.
    pub async fn send(
        &self,
        body: &str,
        id: &str,
        event: &str,
        attempts: u32,
    ) -> Result<Delivered, WebhookError> {
        let signature = match &self.secret_file {
            Some(path) => Some(signature(&read_secret(path)?, body.as_bytes())),
            None => None,
        };
        let url = self.shown();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self
                .http
                .post(self.url.as_str())
                .header(CONTENT_TYPE, "application/json")
                .header(DELIVERY_HEADER, id)
                .header(EVENT_HEADER, event)
                .body(body.to_owned());
            if let Some(signature) = &signature {
                request = request.header(SIGNATURE_HEADER, signature);
            }
            let (verdict, problem) = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok());
                    let verdict = classify(Attempt::Response {
                        status,
                        retry_after,
                        // The receiver's words are not read: its status says it all.
                        body: b"",
                    });
                    let problem = if status.is_redirection() {
                        WebhookError::Redirect {
                            url: url.clone(),
                            status: status.as_u16(),
                        }
                    } else {
                        WebhookError::Refused {
                            url: url.clone(),
                            status: status.as_u16(),
                            attempts: attempt,
                        }
                    };
                    if verdict == Verdict::Success {
                        return Ok(Delivered {
                            status: status.as_u16(),
                            attempts: attempt,
                        });
                    }
                    (verdict, problem)
                }
                Err(e) => {
                    // Without the URL: its path may hold the receiver's token.
                    let e = e.without_url();
                    let kind = if e.is_timeout() {
                        Attempt::Timeout
                    } else if is_tls(&e) {
                        Attempt::Tls
                    } else {
                        Attempt::Connection
                    };
                    let problem = match kind {
                        Attempt::Timeout => WebhookError::Timeout {
                            url: url.clone(),
                            attempts: attempt,
                        },
                        _ => WebhookError::Unreachable {
                            url: url.clone(),
                            attempts: attempt,
                            detail: untrusted(&error_chain(&e)).into_owned(),
                        },
                    };
                    (classify(kind), problem)
                }
            };
            let wait = match verdict {
                Verdict::Throttled(wait) => wait.min(RETRY_CAP),
                Verdict::Transient => backoff(attempt - 1, self.retry_base, RETRY_CAP),
                Verdict::Success | Verdict::Permanent => return Err(problem),
            };
            if attempt >= attempts {
                return Err(problem);
            }
            tracing::debug!(webhook = %url, attempt, error = %problem, wait_ms = wait.as_millis() as u64, "Webhook attempt failed; trying again");
            tokio::time::sleep(wait).await;
        }
    }
}

/// `sha256=` and the lower-case hex HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &SecretString, body: &[u8]) -> String {
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The signing secret: the file's text without surrounding whitespace. The file is refused as
/// the secrets key file is: others must not read it, nobody but its owner write it, and it
/// must belong to root or the user running acexport.
pub fn read_secret(path: &Path) -> Result<SecretString, WebhookError> {
    let problem = |problem: String| WebhookError::Secret {
        path: path.to_path_buf(),
        problem,
    };
    let bytes = match read_guarded(path) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Err(problem("does not exist".to_owned())),
        Err(e) => return Err(problem(secret_file_problem(e))),
    };
    let text = String::from_utf8(bytes)
        .map_err(|_| problem("is not text: the secret must be UTF-8 text".to_owned()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(problem("is empty".to_owned()));
    }
    Ok(SecretString::from(secret.to_owned()))
}

/// A refusal of the secrets key file, worded for the webhook's secret file.
fn secret_file_problem(e: SecretsError) -> String {
    match e {
        SecretsError::Read { source, .. } => format!("cannot be read: {source}"),
        SecretsError::NotAFile { .. } => "is not a regular file".to_owned(),
        SecretsError::Owner { owner, user, .. } => format!(
            "is owned by uid {owner}, who could replace the secret; it must belong to root or to \
             the user running acexport (uid {user})"
        ),
        SecretsError::Loose { path, mode, fix } => format!(
            "has mode {mode:04o}: {}. A secret that others can read or anyone but its owner can \
             write is refused; fix it with `chmod {fix:04o} {}`",
            loose_key_faults(mode),
            path.display()
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        let secret = SecretString::from("Jefe".to_owned());

        let signed = signature(&secret, b"what do ya want for nothing?");

        assert_eq!(
            signed,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn secret_file(text: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("webhook.secret");
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        (dir, path)
    }

    #[test]
    fn the_secret_is_the_file_text_without_its_line_break() {
        let (_dir, path) = secret_file("s3cret-value\n", 0o600);

        let secret = read_secret(&path).expect("read");

        assert_eq!(secret.expose_secret(), "s3cret-value");
    }

    #[test]
    fn a_secret_file_others_can_read_is_refused_with_the_chmod_that_fixes_it() {
        let (_dir, path) = secret_file("s3cret-value\n", 0o644);

        let err = read_secret(&path).expect_err("loose");

        let message = err.to_string();
        assert!(message.contains("webhook secret file"), "{message}");
        assert!(message.contains("others can read it"), "{message}");
        assert!(message.contains("chmod 0640"), "{message}");
        assert!(!message.contains("s3cret-value"), "{message}");
    }

    #[test]
    fn a_missing_or_empty_secret_file_is_refused_naming_it() {
        let (dir, path) = secret_file(" \n", 0o600);
        let missing = dir.path().join("nope");

        for (path, says) in [(path, "is empty"), (missing, "does not exist")] {
            let message = read_secret(&path).expect_err("refused").to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(says), "{message}");
        }
    }
}
