//! The `[alerts]` section: where acexport tells someone that an export failed, ended partial or
//! recovered, or that ActiveCampaign refused a connection's key. Both channels are off unless
//! set: a webhook (`webhook_url`) and a command (`command`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SettingsError;

/// Default first wait between webhook attempts: with five attempts, doubling and jittered, a
/// receiver that is down for up to about a minute still gets the alert.
pub const DEFAULT_WEBHOOK_RETRY_BASE_MS: u64 = 2000;
/// Longest first wait accepted: a minute, which already spreads the attempts over minutes.
const MAX_WEBHOOK_RETRY_BASE_MS: u64 = 60_000;
/// Default time a command may take before it is killed.
pub const DEFAULT_COMMAND_TIMEOUT_SECS: u64 = 30;
/// Longest command timeout accepted: an alert later than an hour is no alert.
const MAX_COMMAND_TIMEOUT_SECS: u64 = 3600;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsSettings {
    /// Where each alert is POSTed as JSON: https, or http on a loopback address. Unset or
    /// empty: no webhook.
    #[serde(deserialize_with = "empty_as_unset")]
    pub webhook_url: Option<WebhookUrl>,
    /// A file holding the secret that signs each body (`X-Acexport-Signature`), read at each
    /// alert and refused, like the secrets key, when others can read it. Unset: unsigned.
    #[serde(deserialize_with = "empty_as_unset")]
    pub webhook_secret_file: Option<PathBuf>,
    /// First wait between webhook attempts; it doubles, with jitter, over five attempts.
    pub webhook_retry_base_ms: u64,
    /// A program and its arguments, run for each alert with the alert in its environment; no
    /// shell. Empty: no command.
    pub command: Vec<String>,
    /// The command is killed (with everything it started) after this long.
    pub command_timeout_secs: u64,
}

impl Default for AlertsSettings {
    fn default() -> Self {
        Self {
            webhook_url: None,
            webhook_secret_file: None,
            webhook_retry_base_ms: DEFAULT_WEBHOOK_RETRY_BASE_MS,
            command: Vec::new(),
            command_timeout_secs: DEFAULT_COMMAND_TIMEOUT_SECS,
        }
    }
}

/// A webhook's URL. Receivers such as chat services put their token in the path, so it is a
/// secret of sorts: logs, errors, `check-config` and `Debug` show only its scheme, host and
/// port ([`WebhookUrl::shown`]).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `https://host:port/…`: the URL without user info, path or query.
    pub fn shown(&self) -> String {
        match reqwest::Url::parse(&self.0) {
            Ok(url) => {
                let host = url.host_str().unwrap_or_default();
                let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
                let rest = if url.path() == "/" && url.query().is_none() {
                    "/"
                } else {
                    "/…"
                };
                format!("{}://{host}{port}{rest}", url.scheme())
            }
            Err(_) => "(not a URL)".to_owned(),
        }
    }

    /// Why this URL cannot take alerts, if it cannot.
    fn check(&self) -> Result<(), String> {
        let why = match super::secure_url(&self.0) {
            Ok(_) => return Ok(()),
            Err(super::UrlRefusal::PlainHttpOffLoopback) => {
                "a plain http:// webhook must be on a loopback address: the alert (and its \
                 signature) would otherwise cross the network unencrypted"
            }
            Err(super::UrlRefusal::OtherScheme) => {
                "only https:// and http:// webhooks are supported"
            }
            Err(other) => other.as_str(),
        };
        Err(format!(
            "{why}, got {}. Give an https:// URL, or an http:// URL on a loopback address \
             (127.0.0.1, ::1, localhost)",
            self.shown()
        ))
    }
}

impl std::fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("WebhookUrl").field(&self.shown()).finish()
    }
}

/// `key = ""` means unset, so that an environment variable can lift what the file sets and an
/// example file can list the key without a value.
fn empty_as_unset<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: From<String>,
{
    let text = Option::<String>::deserialize(d)?;
    Ok(text.filter(|t| !t.trim().is_empty()).map(T::from))
}

impl From<String> for WebhookUrl {
    fn from(text: String) -> Self {
        WebhookUrl(text)
    }
}

impl AlertsSettings {
    /// Whether any channel is set.
    pub fn any_channel(&self) -> bool {
        self.webhook_url.is_some() || !self.command.is_empty()
    }

    /// The command's program, if a command is set.
    pub fn program(&self) -> Option<&Path> {
        self.command.first().map(Path::new)
    }

    /// Relative paths (the secret file, the command's program) are read against `base`.
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        if let Some(path) = &mut self.webhook_secret_file
            && path.is_relative()
        {
            *path = base.join(&*path);
        }
        if let Some(program) = self.command.first_mut()
            && Path::new(program).is_relative()
            && !program.is_empty()
        {
            *program = base.join(&*program).to_string_lossy().into_owned();
        }
    }

    /// The settings as `check-config` shows them: the webhook URL cut to its host.
    pub(super) fn hide_secrets(&mut self) {
        if let Some(url) = &mut self.webhook_url {
            *url = WebhookUrl(url.shown());
        }
    }

    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        let refuse = |key, message: String| Err(SettingsError::Key { key, message });
        if let Some(url) = &self.webhook_url {
            url.check()
                .or_else(|message| refuse("alerts.webhook_url", message))?;
        }
        if self.webhook_secret_file.is_some() && self.webhook_url.is_none() {
            return refuse(
                "alerts.webhook_secret_file",
                "is set but alerts.webhook_url is not: set the webhook, or remove the key"
                    .to_owned(),
            );
        }
        if !(1..=MAX_WEBHOOK_RETRY_BASE_MS).contains(&self.webhook_retry_base_ms) {
            return refuse(
                "alerts.webhook_retry_base_ms",
                format!(
                    "must be between 1 and {MAX_WEBHOOK_RETRY_BASE_MS} ms, got {}",
                    self.webhook_retry_base_ms
                ),
            );
        }
        if let Some(program) = self.program() {
            if program.as_os_str().is_empty() {
                return refuse(
                    "alerts.command",
                    "starts with an empty program: give the program's path first, then its \
                     arguments, e.g. [\"/usr/local/bin/page-oncall\", \"--team\", \"data\"]"
                        .to_owned(),
                );
            }
            if !program.is_file() {
                return refuse(
                    "alerts.command",
                    format!(
                        "the program {} is not a file (a command is run without a shell, so \
                         give the program's full path)",
                        program.display()
                    ),
                );
            }
        }
        if !(1..=MAX_COMMAND_TIMEOUT_SECS).contains(&self.command_timeout_secs) {
            return refuse(
                "alerts.command_timeout_secs",
                format!(
                    "must be between 1 and {MAX_COMMAND_TIMEOUT_SECS} seconds, got {}",
                    self.command_timeout_secs
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_url(url: &str) -> AlertsSettings {
        AlertsSettings {
            webhook_url: Some(WebhookUrl(url.to_owned())),
            ..AlertsSettings::default()
        }
    }

    #[test]
    fn only_an_https_webhook_or_an_http_webhook_on_loopback_is_accepted() {
        let cases = [
            ("https://hooks.example.com/services/T0/B0/secret", true),
            ("https://hooks.example.com", true),
            ("http://127.0.0.1:9000/alerts", true),
            ("http://[::1]:9000/", true),
            ("http://localhost:9000", true),
            ("http://hooks.example.com/alerts", false),
            ("http://10.0.0.5:9000/alerts", false),
            ("http://127.0.0.1.evil.example/alerts", false),
            ("ftp://hooks.example.com/", false),
            ("hooks.example.com/alerts", false),
        ];
        for (url, accepted) in cases {
            let result = with_url(url).validate();
            assert_eq!(result.is_ok(), accepted, "{url}: {result:?}");
            if let Err(e) = result {
                assert!(e.to_string().contains("alerts.webhook_url"), "{e}");
            }
        }
    }

    #[test]
    fn a_refused_webhook_url_is_shown_without_its_path() {
        let err = with_url("http://hooks.example.com/services/T0/B0/s3cret-token")
            .validate()
            .expect_err("plain http off loopback");

        let message = err.to_string();
        assert!(message.contains("http://hooks.example.com/…"), "{message}");
        assert!(!message.contains("s3cret-token"), "{message}");
    }

    #[test]
    fn a_webhook_url_shows_as_its_scheme_host_and_port_only() {
        let cases = [
            (
                "https://u:pw@hooks.example.com/T0/secret?x=1",
                "https://hooks.example.com/…",
            ),
            ("https://hooks.example.com", "https://hooks.example.com/"),
            ("http://127.0.0.1:9000/alerts", "http://127.0.0.1:9000/…"),
        ];
        for (url, shown) in cases {
            let url = WebhookUrl(url.to_owned());
            assert_eq!(url.shown(), shown);
            assert_eq!(format!("{url:?}"), format!("WebhookUrl({shown:?})"));
        }
    }

    #[test]
    fn a_secret_file_without_a_webhook_is_refused_naming_both_keys() {
        let settings = AlertsSettings {
            webhook_secret_file: Some(PathBuf::from("/etc/acexport/webhook.secret")),
            ..AlertsSettings::default()
        };

        let err = settings.validate().expect_err("no webhook");

        let message = err.to_string();
        assert!(message.contains("alerts.webhook_secret_file"), "{message}");
        assert!(message.contains("alerts.webhook_url"), "{message}");
    }

    #[test]
    fn a_command_whose_program_is_not_a_file_is_refused_naming_it() {
        let settings = AlertsSettings {
            command: vec!["/nonexistent/page-oncall".to_owned(), "--now".to_owned()],
            ..AlertsSettings::default()
        };

        let err = settings.validate().expect_err("no such program");

        let message = err.to_string();
        assert!(message.contains("alerts.command"), "{message}");
        assert!(message.contains("/nonexistent/page-oncall"), "{message}");
    }

    #[test]
    fn a_relative_program_and_secret_file_are_read_against_the_settings_folder() {
        let mut settings = AlertsSettings {
            webhook_url: Some(WebhookUrl("https://hooks.example.com".to_owned())),
            webhook_secret_file: Some(PathBuf::from("webhook.secret")),
            command: vec!["bin/alert.sh".to_owned(), "arg".to_owned()],
            ..AlertsSettings::default()
        };

        settings.resolve_paths(Path::new("/etc/acexport"));

        assert_eq!(
            settings.webhook_secret_file,
            Some(PathBuf::from("/etc/acexport/webhook.secret"))
        );
        assert_eq!(settings.command, ["/etc/acexport/bin/alert.sh", "arg"]);
    }

    #[test]
    fn timeouts_and_waits_outside_their_range_are_refused_naming_the_key() {
        let cases = [
            (
                AlertsSettings {
                    command_timeout_secs: 0,
                    ..AlertsSettings::default()
                },
                "alerts.command_timeout_secs",
            ),
            (
                AlertsSettings {
                    webhook_retry_base_ms: 0,
                    ..AlertsSettings::default()
                },
                "alerts.webhook_retry_base_ms",
            ),
        ];
        for (settings, key) in cases {
            let err = settings.validate().expect_err(key);
            assert!(err.to_string().contains(key), "{err}");
        }
    }
}
