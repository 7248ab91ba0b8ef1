//! The daemon's own settings, from one loader: built-in defaults, then a TOML file, then
//! `ACEXPORT_<SECTION>__<KEY>` environment variables. `acexport check-config` runs this same
//! code path, so what it accepts is exactly what the daemon will run with.

mod alerts;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::activecampaign::host::is_loopback;
use crate::redact::redact_url;
pub use alerts::{AlertsSettings, WebhookUrl};

/// Where the settings file is looked for when neither `--config` nor `$ACEXPORT_CONFIG` names one.
pub const SYSTEM_CONFIG_FILE: &str = "/etc/acexport/acexport.toml";
/// Environment variable naming the settings file.
pub const CONFIG_ENV: &str = "ACEXPORT_CONFIG";
/// Prefix of the environment variables that override single keys.
const ENV_PREFIX: &str = "ACEXPORT_";
/// systemd credential name of the secrets key (`LoadCredential=acexport-secrets-key:...`).
pub const SECRETS_CREDENTIAL: &str = "acexport-secrets-key";
/// ActiveCampaign's documented general limit: 5 requests per second per account.
pub const AC_REQUESTS_PER_SECOND: u32 = 5;
/// ActiveCampaign's documented limit for multi-contact bulk imports.
pub const AC_BULK_IMPORTS_PER_MINUTE: u32 = 100;
/// Highest budgets accepted: far above any ActiveCampaign plan, high enough that the
/// benchmark against the sandbox (limits off) measures acexport and not the pacing.
const MAX_REQUESTS_PER_SECOND: u32 = 100_000;
const MAX_BULK_IMPORTS_PER_MINUTE: u32 = 6_000_000;
/// Customer Insights' documented ceiling per export, our default guard.
pub const DEFAULT_MAX_PROFILES: u64 = 1_000_000;
/// Days a suppressed contact is left alone: a month, so that someone taken off ActiveCampaign's
/// exclusion list is reached within one, at a few requests each per month otherwise.
pub const DEFAULT_SUPPRESSED_RECHECK_DAYS: u32 = 30;
/// Longest recheck accepted: a century, far beyond any use, and within what dates can hold.
const MAX_SUPPRESSED_RECHECK_DAYS: u32 = 36_500;
/// Default longest line of a segment file: a profile with a thousand columns of typical values
/// is a few kilobytes, so a megabyte only stops a wrong or broken file.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1024 * 1024;
/// Default longest value acexport takes from a row: far above any name, phone or field value.
pub const DEFAULT_MAX_FIELD_BYTES: usize = 64 * 1024;
/// Default longest header (the column names together).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Default most columns in a segment file.
pub const DEFAULT_MAX_COLUMNS: usize = 1000;
/// Highest byte cap accepted (line, value, header): a few lines of this size are what a run may
/// hold at once, which keeps memory within a small service's budget.
const MAX_LINE_BYTES_CEILING: usize = 64 * 1024 * 1024;
/// Highest `source.max_columns` accepted.
const MAX_COLUMNS_CEILING: usize = 100_000;
/// The control socket's file name in its default folder.
pub const CONTROL_SOCKET_NAME: &str = "control.sock";
/// Longest socket path the kernel accepts (`sun_path` is 108 bytes with its final NUL).
pub const MAX_SOCKET_PATH_BYTES: usize = 107;
/// Longest user or group name in `access.*`.
const MAX_ACCESS_NAME_LEN: usize = 64;

/// An `access.*` entry: a user name, or `@` and a group name, as the user and group databases
/// spell them.
fn check_access_entry(entry: &str) -> Result<(), String> {
    let name = entry.strip_prefix('@').unwrap_or(entry);
    let ok = !name.is_empty()
        && name.len() <= MAX_ACCESS_NAME_LEN
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a user name or @group name (letters, digits, '_', '-', '.', at most              {MAX_ACCESS_NAME_LEN} characters)",
            crate::escape::untrusted_capped(entry, 80)
        ))
    }
}

/// A socket path the kernel can bind.
fn check_socket_path(path: &Path) -> Result<(), String> {
    let len = path.as_os_str().len();
    if len == 0 {
        return Err("must not be empty".to_owned());
    }
    if len > MAX_SOCKET_PATH_BYTES {
        return Err(format!(
            "{} is {len} bytes long; a Unix socket path may have at most              {MAX_SOCKET_PATH_BYTES}: choose a shorter one",
            path.display()
        ));
    }
    Ok(())
}

/// Smallest line cap accepted: below this, ordinary profiles would not fit.
const MIN_LINE_BYTES: usize = 1024;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub store: StoreSettings,
    pub secrets: SecretsSettings,
    pub activecampaign: ActiveCampaignSettings,
    pub export: ExportSettings,
    pub source: SourceSettings,
    pub daemon: DaemonSettings,
    pub schedule: ScheduleSettings,
    pub log: LogSettings,
    pub access: AccessSettings,
    pub metrics: MetricsSettings,
    pub alerts: AlertsSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// SQLite database holding definitions, delivery state and run history.
    pub path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsSettings {
    /// 32-byte key that seals API keys and database passwords at rest; created on first use.
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveCampaignSettings {
    /// Budget for all requests to one ActiveCampaign account, shared by every run and every
    /// acexport process using the same state folder (the daemon, commands in a terminal).
    pub requests_per_second: u32,
    /// Budget for multi-contact bulk imports to one account, shared the same way.
    pub bulk_imports_per_minute: u32,
    /// Total timeout of one HTTP request.
    pub timeout_secs: u64,
    /// Attempts for a request that fails transiently (5xx, timeout, dropped connection).
    pub max_attempts: u32,
    /// First backoff wait between attempts; it doubles up to 30 s, with jitter.
    pub retry_base_ms: u64,
    /// The only proxy requests go through; unset or empty, they go direct. Proxy variables in
    /// the environment (`HTTPS_PROXY`...) are never used: one in a service's environment would
    /// receive every API key.
    #[serde(deserialize_with = "empty_as_unset")]
    pub proxy: Option<ProxyUrl>,
}

/// A proxy's URL, as the settings give it: https, or http on a loopback address, so that
/// neither the API key (over http to a loopback ActiveCampaign) nor the proxy's own password
/// crosses a network in clear. Its `Debug` hides that password.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct ProxyUrl(String);

impl ProxyUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL with its password as `***`, for messages and `check-config`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }

    /// Why this URL cannot be a proxy, if it cannot.
    fn check(&self) -> Result<(), String> {
        let refuse = |why: &str| {
            Err(format!(
                "{why}, got {:?}. Give an https:// URL, or an http:// URL on a loopback \
                 address (127.0.0.1, ::1, localhost); remove the key to connect directly",
                self.redacted()
            ))
        };
        let url = match secure_url(&self.0) {
            Ok(url) => url,
            Err(UrlRefusal::PlainHttpOffLoopback) => {
                return refuse(
                    "a plain http:// proxy must be on a loopback address: what is sent to it, \
                     its password included, would otherwise cross the network unencrypted",
                );
            }
            Err(UrlRefusal::OtherScheme) => {
                return refuse("only https:// and http:// proxies are supported");
            }
            Err(other) => return refuse(other.as_str()),
        };
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return refuse("a proxy URL has no path, query or fragment");
        }
        Ok(())
    }
}

/// Why a URL may not carry what acexport sends out of the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UrlRefusal {
    NotUrl,
    NoHost,
    /// Plain http:// off loopback: what is sent would cross the network unencrypted.
    PlainHttpOffLoopback,
    OtherScheme,
}

impl UrlRefusal {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            UrlRefusal::NotUrl => "not a URL",
            UrlRefusal::NoHost => "no host",
            UrlRefusal::PlainHttpOffLoopback => "a plain http:// URL must be on a loopback address",
            UrlRefusal::OtherScheme => "only https:// and http:// are supported",
        }
    }
}

/// The one rule for URLs acexport sends to (a proxy, a webhook): https://, or http:// on a
/// loopback address.
pub(crate) fn secure_url(text: &str) -> Result<reqwest::Url, UrlRefusal> {
    let url = reqwest::Url::parse(text).map_err(|_| UrlRefusal::NotUrl)?;
    let host = url.host_str().unwrap_or_default();
    match url.scheme() {
        _ if host.is_empty() => Err(UrlRefusal::NoHost),
        "https" => Ok(url),
        "http" if is_loopback(host) => Ok(url),
        "http" => Err(UrlRefusal::PlainHttpOffLoopback),
        _ => Err(UrlRefusal::OtherScheme),
    }
}

/// `proxy = ""` means no proxy, so that `ACEXPORT_ACTIVECAMPAIGN__PROXY=` can lift a proxy the
/// file names, and an example file can list the key without naming a proxy.
fn empty_as_unset<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ProxyUrl>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    Ok(text.filter(|t| !t.trim().is_empty()).map(ProxyUrl))
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ProxyUrl").field(&self.redacted()).finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSettings {
    /// A run with more valid profiles than this fails before sending anything.
    pub max_profiles: u64,
    /// Days a suppressed contact (unsubscribed, bounced, excluded) whose values did not change
    /// is left alone before it is sent again to see whether ActiveCampaign still refuses it.
    pub suppressed_recheck_days: u32,
}

/// Caps on what a segment file may hold, checked while it is read, so that reading holds at
/// most a few lines in memory whatever the file holds. A file over a cap is refused naming the
/// line and the setting.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SourceSettings {
    /// Longest line, line break included, in bytes; for CSV a record whose quoted values hold
    /// line breaks counts as one line.
    pub max_line_bytes: usize,
    /// Longest value taken from a row (a mapped column), in bytes; a longer one rejects the row.
    pub max_field_bytes: usize,
    /// Longest header in bytes: the CSV header line, or a JSONL file's key names together.
    pub max_header_bytes: usize,
    /// Most columns: fields of a CSV record, distinct keys of a JSONL file.
    pub max_columns: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSettings {
    /// Folder watched for on-demand signal files.
    pub trigger_dir: PathBuf,
    /// How many exports run at once.
    pub workers: u32,
    /// The control socket every command goes through while the daemon runs. Unset: beside the
    /// database, or `$RUNTIME_DIRECTORY/control.sock` when systemd gives a runtime directory.
    pub socket: Option<PathBuf>,
}

/// Who holds which role (`service::access`): user names and `@group` names. Root and the
/// daemon's own user are always admins and need no entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AccessSettings {
    pub admins: Vec<String>,
    pub contributors: Vec<String>,
    pub viewers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSettings {
    /// System refresh cron; every enabled export without its own schedule runs with it.
    pub refresh: Option<String>,
    /// IANA time zone the crons are read in.
    pub timezone: String,
}

/// The daemon's `/metrics` and `/healthz` server (off unless `listen` is set).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Address and port to serve on, e.g. `127.0.0.1:9464`; unset or empty, nothing is served.
    #[serde(deserialize_with = "empty_text_as_unset")]
    pub listen: Option<String>,
    /// Allows a `listen` address other than loopback. The server has no authentication, and
    /// its export names and counts are the business's own: serving them beyond this host must
    /// be a choice.
    pub allow_remote: bool,
}

/// `key = ""` means unset, so that an environment variable can lift what the file sets.
fn empty_text_as_unset<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    Ok(text.filter(|t| !t.trim().is_empty()))
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Plain lines on stderr; under systemd (stderr is the journal) the journal's own fields.
    Text,
    Json,
    /// journald's native protocol: a priority per level and one field per log field.
    Journal,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
}

/// Default folder for state when no settings file says otherwise: systemd's `StateDirectory`,
/// else the XDG state folder of the user running the command.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd may pass several colon-separated folders; the first is ours.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        return PathBuf::from(first);
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("acexport");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/acexport"),
        None => PathBuf::from("/var/lib/acexport"),
    }
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            path: default_state_dir().join("acexport.db"),
        }
    }
}
impl Default for SecretsSettings {
    fn default() -> Self {
        Self {
            key_file: default_state_dir().join("secrets.key"),
        }
    }
}
impl Default for ActiveCampaignSettings {
    fn default() -> Self {
        Self {
            requests_per_second: AC_REQUESTS_PER_SECOND,
            bulk_imports_per_minute: AC_BULK_IMPORTS_PER_MINUTE,
            timeout_secs: 30,
            max_attempts: 6,
            retry_base_ms: 500,
            proxy: None,
        }
    }
}
impl Default for ExportSettings {
    fn default() -> Self {
        Self {
            max_profiles: DEFAULT_MAX_PROFILES,
            suppressed_recheck_days: DEFAULT_SUPPRESSED_RECHECK_DAYS,
        }
    }
}
impl Default for SourceSettings {
    fn default() -> Self {
        Self {
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            max_field_bytes: DEFAULT_MAX_FIELD_BYTES,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_columns: DEFAULT_MAX_COLUMNS,
        }
    }
}
impl Default for DaemonSettings {
    fn default() -> Self {
        Self {
            trigger_dir: default_state_dir().join("triggers"),
            workers: 2,
            socket: None,
        }
    }
}
impl Default for ScheduleSettings {
    fn default() -> Self {
        Self {
            refresh: None,
            timezone: "UTC".to_owned(),
        }
    }
}
impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
        }
    }
}
/// Why settings were refused. The message always names the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("settings file {path} does not exist")]
    MissingFile { path: PathBuf },
    /// The file is there (or may be) but cannot be read: never a reason to fall back to the
    /// built-in defaults.
    #[error("cannot read settings file {path}: {source}{hint}", hint = unreadable_hint(.source))]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("settings file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("settings: {0}")]
    Invalid(String),
    #[error("settings key {key}: {message}")]
    Key { key: &'static str, message: String },
}

/// The settings in force plus where they came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub settings: Settings,
    /// The file that was read, if any.
    pub file: Option<PathBuf>,
}

impl Settings {
    /// Loads settings: defaults, then `explicit` (or `$ACEXPORT_CONFIG`, or the system file when
    /// it exists), then `ACEXPORT_<SECTION>__<KEY>` variables; then validates every key.
    pub fn load(explicit: Option<&Path>) -> Result<Loaded, SettingsError> {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::load_from(explicit, &env)
    }

    /// [`Settings::load`] with the environment passed in, so tests need not mutate the process.
    pub fn load_from(
        explicit: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Loaded, SettingsError> {
        let file = settings_file(explicit, env, Path::new(SYSTEM_CONFIG_FILE))?;
        let mut builder = config::Config::builder();
        if let Some(path) = &file {
            let text = read_settings_file(path)?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        // Only `ACEXPORT_<SECTION>__<KEY>` variables are settings; others such as
        // ACEXPORT_CONFIG or test variables are not, and must not trip `deny_unknown_fields`.
        let overrides: config::Map<String, String> = env
            .iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(ENV_PREFIX)?;
                rest.contains("__").then(|| (k.clone(), v.clone()))
            })
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("ACEXPORT")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides)),
        );
        let raw = builder
            .build()
            .map_err(|e| describe_config_error(e, file.as_deref()))?;
        let mut settings: Settings = raw
            .try_deserialize()
            .map_err(|e| describe_config_error(e, file.as_deref()))?;
        let base = file
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| std::env::current_dir().unwrap_or_default());
        settings.resolve_paths(&base);
        settings.validate()?;
        Ok(Loaded { settings, file })
    }

    /// Relative paths are read against the settings file's folder, so a file can be moved
    /// together with its data.
    fn resolve_paths(&mut self, base: &Path) {
        for path in [
            &mut self.store.path,
            &mut self.secrets.key_file,
            &mut self.daemon.trigger_dir,
        ] {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        if let Some(socket) = self.daemon.socket.as_mut().filter(|p| p.is_relative()) {
            *socket = base.join(&*socket);
        }
        self.alerts.resolve_paths(base);
    }

    /// The control socket in force: `daemon.socket`, else `$RUNTIME_DIRECTORY/control.sock`
    /// (systemd's `RuntimeDirectory=`), else `control.sock` beside the database.
    pub fn control_socket(&self) -> PathBuf {
        if let Some(path) = &self.daemon.socket {
            return path.clone();
        }
        let runtime = std::env::var_os("RUNTIME_DIRECTORY")
            .and_then(|dirs| std::env::split_paths(&dirs).next())
            .filter(|d| d.is_absolute());
        let dir = runtime.unwrap_or_else(|| {
            self.store
                .path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default()
        });
        dir.join(CONTROL_SOCKET_NAME)
    }

    /// Checks every value a deserializer cannot: ranges, cron syntax, time zone names.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let ac = &self.activecampaign;
        if ac.requests_per_second == 0 || ac.requests_per_second > MAX_REQUESTS_PER_SECOND {
            return Err(SettingsError::Key {
                key: "activecampaign.requests_per_second",
                message: format!(
                    "must be between 1 and {MAX_REQUESTS_PER_SECOND}, got {} (ActiveCampaign allows \
                     {AC_REQUESTS_PER_SECOND})",
                    ac.requests_per_second
                ),
            });
        }
        if ac.bulk_imports_per_minute == 0
            || ac.bulk_imports_per_minute > MAX_BULK_IMPORTS_PER_MINUTE
        {
            return Err(SettingsError::Key {
                key: "activecampaign.bulk_imports_per_minute",
                message: format!(
                    "must be between 1 and {MAX_BULK_IMPORTS_PER_MINUTE}, got {} (ActiveCampaign \
                     allows {AC_BULK_IMPORTS_PER_MINUTE})",
                    ac.bulk_imports_per_minute
                ),
            });
        }
        if ac.timeout_secs == 0 || ac.timeout_secs > 3600 {
            return Err(SettingsError::Key {
                key: "activecampaign.timeout_secs",
                message: format!(
                    "must be between 1 and 3600 seconds, got {}",
                    ac.timeout_secs
                ),
            });
        }
        if ac.max_attempts == 0 || ac.max_attempts > 100 {
            return Err(SettingsError::Key {
                key: "activecampaign.max_attempts",
                message: format!("must be between 1 and 100, got {}", ac.max_attempts),
            });
        }
        if let Some(proxy) = &ac.proxy {
            proxy.check().map_err(|message| SettingsError::Key {
                key: "activecampaign.proxy",
                message,
            })?;
        }
        if self.export.max_profiles == 0 {
            return Err(SettingsError::Key {
                key: "export.max_profiles",
                message: "must be at least 1".to_owned(),
            });
        }
        if self.export.suppressed_recheck_days > MAX_SUPPRESSED_RECHECK_DAYS {
            return Err(SettingsError::Key {
                key: "export.suppressed_recheck_days",
                message: format!(
                    "must be at most {MAX_SUPPRESSED_RECHECK_DAYS} days, got {}",
                    self.export.suppressed_recheck_days
                ),
            });
        }
        self.source.validate()?;
        if self.daemon.workers == 0 || self.daemon.workers > 64 {
            return Err(SettingsError::Key {
                key: "daemon.workers",
                message: format!("must be between 1 and 64, got {}", self.daemon.workers),
            });
        }
        let tz = crate::scheduler::Schedule::parse_tz(&self.schedule.timezone).map_err(|e| {
            SettingsError::Key {
                key: "schedule.timezone",
                message: e.to_string(),
            }
        })?;
        if let Some(expr) = &self.schedule.refresh {
            crate::scheduler::Schedule::parse(expr, tz).map_err(|e| SettingsError::Key {
                key: "schedule.refresh",
                message: e.to_string(),
            })?;
        }
        for (key, entries) in [
            ("access.admins", &self.access.admins),
            ("access.contributors", &self.access.contributors),
            ("access.viewers", &self.access.viewers),
        ] {
            for entry in entries {
                check_access_entry(entry).map_err(|message| SettingsError::Key { key, message })?;
            }
        }
        if let Some(socket) = &self.daemon.socket {
            check_socket_path(socket).map_err(|message| SettingsError::Key {
                key: "daemon.socket",
                message,
            })?;
        }
        self.metrics_listen()?;
        for (key, path) in [
            ("store.path", &self.store.path),
            ("secrets.key_file", &self.secrets.key_file),
            ("daemon.trigger_dir", &self.daemon.trigger_dir),
        ] {
            if path.as_os_str().is_empty() {
                return Err(SettingsError::Key {
                    key,
                    message: "must not be empty".to_owned(),
                });
            }
        }
        self.alerts.validate()?;
        Ok(())
    }

    /// The time zone crons are read in (validated at load).
    pub fn timezone(&self) -> chrono_tz::Tz {
        crate::scheduler::Schedule::parse_tz(&self.schedule.timezone).unwrap_or(chrono_tz::UTC)
    }

    /// The address the daemon serves `/metrics` and `/healthz` on, if any. A non-loopback
    /// address needs `metrics.allow_remote` (checked at load).
    pub fn metrics_listen(&self) -> Result<Option<SocketAddr>, SettingsError> {
        let Some(text) = &self.metrics.listen else {
            return Ok(None);
        };
        let refuse = |message: String| SettingsError::Key {
            key: "metrics.listen",
            message,
        };
        let addr: SocketAddr = text.trim().parse().map_err(|_| {
            refuse(format!(
                "{text:?} is not an IP address and port; give e.g. 127.0.0.1:9464 or [::1]:9464"
            ))
        })?;
        if !addr.ip().is_loopback() && !self.metrics.allow_remote {
            return Err(refuse(format!(
                "{addr} is not a loopback address, and /metrics and /healthz have no \
                 authentication; listen on 127.0.0.1, or set metrics.allow_remote = true to \
                 serve them beyond this host (behind a firewall or a proxy that authenticates)"
            )));
        }
        Ok(Some(addr))
    }

    /// The secrets key file in force: under systemd, `LoadCredential=acexport-secrets-key:...`
    /// wins over `secrets.key_file`, because credentials are readable by this unit only.
    pub fn secrets_key_path(&self) -> PathBuf {
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
            let candidate = PathBuf::from(dir).join(SECRETS_CREDENTIAL);
            if candidate.exists() {
                return candidate;
            }
        }
        self.secrets.key_file.clone()
    }

    /// `section.key = value` lines for `check-config`. The one secret settings can hold, a
    /// proxy's password, is shown as `***`; the secrets key is named by its path only.
    pub fn to_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let value = self.to_json();
        if let Some(sections) = value.as_object() {
            for (section, keys) in sections {
                if let Some(keys) = keys.as_object() {
                    for (key, v) in keys {
                        let shown = match v {
                            serde_json::Value::Null => "(not set)".to_owned(),
                            other => other.to_string(),
                        };
                        lines.push(format!("{section}.{key} = {shown}"));
                    }
                }
            }
        }
        lines
    }

    /// The settings as one JSON object of sections, for `check-config --json`, with the same
    /// redaction as [`Settings::to_lines`] (which is built from it).
    pub fn to_json(&self) -> serde_json::Value {
        let mut shown = self.clone();
        if let Some(proxy) = &mut shown.activecampaign.proxy {
            *proxy = ProxyUrl(proxy.redacted());
        }
        shown.alerts.hide_secrets();
        serde_json::to_value(&shown).unwrap_or_default()
    }
}

impl SourceSettings {
    /// Each cap within its range. A value or header cap above the line cap is allowed: a value
    /// cannot outgrow its line, and the header is read with the larger of the two.
    fn validate(&self) -> Result<(), SettingsError> {
        for (key, value, min) in [
            ("source.max_line_bytes", self.max_line_bytes, MIN_LINE_BYTES),
            ("source.max_field_bytes", self.max_field_bytes, 1),
            ("source.max_header_bytes", self.max_header_bytes, 1),
        ] {
            if !(min..=MAX_LINE_BYTES_CEILING).contains(&value) {
                return Err(SettingsError::Key {
                    key,
                    message: format!(
                        "must be between {min} and {MAX_LINE_BYTES_CEILING} bytes, got {value}"
                    ),
                });
            }
        }
        if self.max_columns == 0 || self.max_columns > MAX_COLUMNS_CEILING {
            return Err(SettingsError::Key {
                key: "source.max_columns",
                message: format!(
                    "must be between 1 and {MAX_COLUMNS_CEILING}, got {}",
                    self.max_columns
                ),
            });
        }
        Ok(())
    }
}

/// The settings file to read: `explicit`, else `$ACEXPORT_CONFIG`, else `system` when it
/// exists. Whether `system` exists is asked so that an error (a folder the user may not
/// search) is told apart from absence: taking it for absent would run the command on built-in
/// defaults, with a store under the user's home, and report definitions as missing.
fn settings_file(
    explicit: Option<&Path>,
    env: &BTreeMap<String, String>,
    system: &Path,
) -> Result<Option<PathBuf>, SettingsError> {
    if let Some(path) = explicit {
        return Ok(Some(path.to_path_buf()));
    }
    if let Some(path) = env.get(CONFIG_ENV).filter(|v| !v.is_empty()) {
        return Ok(Some(PathBuf::from(path)));
    }
    match system.try_exists() {
        Ok(true) => Ok(Some(system.to_path_buf())),
        Ok(false) => Ok(None),
        Err(source) => Err(SettingsError::Unreadable {
            path: system.to_path_buf(),
            source,
        }),
    }
}

/// The settings file's text. Read here rather than by the `config` crate so that a file that
/// exists but cannot be read is named as such, with the fix, not as missing.
fn read_settings_file(path: &Path) -> Result<String, SettingsError> {
    std::fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => SettingsError::MissingFile {
            path: path.to_path_buf(),
        },
        _ => SettingsError::Unreadable {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// What to do about a settings file that cannot be read, by why.
fn unreadable_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied => {
            ". Every user who runs acexport must be able to read it and search the folders \
             above it: it holds no secret, so install it with mode 0644 in a folder with mode \
             0755 (the secrets key is a separate file)"
        }
        _ => "",
    }
}

/// Turns the `config` crate's errors into messages that name the file and the key.
fn describe_config_error(err: config::ConfigError, file: Option<&Path>) -> SettingsError {
    let message = err.to_string();
    match file {
        Some(path) => SettingsError::File {
            path: path.to_path_buf(),
            message,
        },
        None => SettingsError::Invalid(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("acexport.toml");
        std::fs::write(&path, text).expect("write settings");
        path
    }

    #[test]
    fn defaults_follow_activecampaign_limits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(dir.path(), "");
        let loaded = Settings::load_from(Some(&file), &env(&[])).expect("load");
        assert_eq!(loaded.settings.activecampaign.requests_per_second, 5);
        assert_eq!(loaded.settings.activecampaign.bulk_imports_per_minute, 100);
        assert_eq!(loaded.settings.export.max_profiles, 1_000_000);
        assert_eq!(loaded.settings.schedule.timezone, "UTC");
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(dir.path(), "[activecampaign]\nrequests_per_second = 4\n");
        let loaded = Settings::load_from(
            Some(&file),
            &env(&[("ACEXPORT_ACTIVECAMPAIGN__REQUESTS_PER_SECOND", "2")]),
        )
        .expect("load");
        assert_eq!(loaded.settings.activecampaign.requests_per_second, 2);
    }

    #[test]
    fn unrelated_acexport_variables_are_not_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(dir.path(), "");
        let vars = env(&[
            ("ACEXPORT_CONFIG", "x"),
            ("ACEXPORT_TEST_POSTGRES_URL", "y"),
        ]);
        assert!(Settings::load_from(Some(&file), &vars).is_ok());
    }

    #[test]
    fn relative_paths_resolve_against_the_file_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(dir.path(), "[store]\npath = \"data/x.db\"\n");
        let loaded = Settings::load_from(Some(&file), &env(&[])).expect("load");
        assert_eq!(loaded.settings.store.path, dir.path().join("data/x.db"));
    }

    #[test]
    fn a_misspelt_key_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(dir.path(), "[activecampaign]\nrequests_per_secnd = 4\n");
        let err = Settings::load_from(Some(&file), &env(&[])).expect_err("must refuse");
        assert!(err.to_string().contains("requests_per_secnd"), "{err}");
    }

    #[test]
    fn a_zero_rate_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(dir.path(), "[activecampaign]\nrequests_per_second = 0\n");
        let err = Settings::load_from(Some(&file), &env(&[])).expect_err("must refuse");
        assert!(
            err.to_string()
                .contains("activecampaign.requests_per_second"),
            "{err}"
        );
    }

    #[test]
    fn the_suppressed_recheck_defaults_to_30_days_and_a_century_is_the_most() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(dir.path(), "[export]\nsuppressed_recheck_days = 36501\n");
        let err = Settings::load_from(Some(&file), &env(&[])).expect_err("must refuse");
        assert!(
            err.to_string().contains("export.suppressed_recheck_days"),
            "{err}"
        );
        assert_eq!(Settings::default().export.suppressed_recheck_days, 30);
    }

    #[test]
    fn an_unknown_time_zone_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(dir.path(), "[schedule]\ntimezone = \"Mars/Olympus\"\n");
        let err = Settings::load_from(Some(&file), &env(&[])).expect_err("must refuse");
        assert!(err.to_string().contains("schedule.timezone"), "{err}");
    }

    #[test]
    fn a_bad_refresh_cron_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(dir.path(), "[schedule]\nrefresh = \"every day\"\n");
        let err = Settings::load_from(Some(&file), &env(&[])).expect_err("must refuse");
        assert!(err.to_string().contains("schedule.refresh"), "{err}");
    }

    #[test]
    fn only_an_https_proxy_or_an_http_proxy_on_loopback_is_accepted() {
        let cases = [
            ("https://proxy.example:8443", true),
            ("https://user:pw@proxy.example", true),
            ("http://127.0.0.1:3128", true),
            ("http://127.8.9.10:3128/", true),
            ("http://[::1]:3128", true),
            ("http://localhost:3128", true),
            ("http://proxy.example:3128", false),
            ("http://10.0.0.1:3128", false),
            ("http://127.0.0.1.evil.example:3128", false),
            ("socks5://127.0.0.1:1080", false),
            ("https://proxy.example/path", false),
            ("https://proxy.example/?x=1", false),
            ("proxy.example:3128", false),
            ("", false),
        ];
        for (url, accepted) in cases {
            let proxy = ProxyUrl(url.to_owned());
            assert_eq!(
                proxy.check().is_ok(),
                accepted,
                "{url:?}: {:?}",
                proxy.check()
            );
        }
    }

    #[test]
    fn source_caps_default_to_a_megabyte_per_line_and_a_thousand_columns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(dir.path(), "");
        let loaded = Settings::load_from(Some(&file), &env(&[])).expect("load");
        assert_eq!(loaded.settings.source.max_line_bytes, 1_048_576);
        assert_eq!(loaded.settings.source.max_columns, 1000);
    }

    #[test]
    fn source_caps_outside_their_range_are_refused_naming_the_key() {
        let cases = [
            ("max_line_bytes = 10", "source.max_line_bytes"),
            ("max_line_bytes = 1000000000", "source.max_line_bytes"),
            ("max_field_bytes = 0", "source.max_field_bytes"),
            ("max_header_bytes = 100000000", "source.max_header_bytes"),
            ("max_columns = 0", "source.max_columns"),
        ];
        for (keys, named) in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            let file = write(dir.path(), &format!("[source]\n{keys}\n"));
            let err = Settings::load_from(Some(&file), &env(&[])).expect_err(keys);
            assert!(err.to_string().contains(named), "{keys}: {err}");
        }
    }

    #[test]
    fn an_empty_proxy_means_none_also_over_a_file_that_names_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(
            dir.path(),
            "[activecampaign]\nproxy = \"https://proxy.example\"\n",
        );

        let loaded =
            Settings::load_from(Some(&file), &env(&[("ACEXPORT_ACTIVECAMPAIGN__PROXY", "")]))
                .expect("load");

        assert_eq!(loaded.settings.activecampaign.proxy, None);
    }

    #[test]
    fn a_refused_proxy_is_named_by_its_key_without_its_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(
            dir.path(),
            "[activecampaign]\nproxy = \"http://me:s3cret-pw@proxy.example:3128\"\n",
        );

        let err = Settings::load_from(Some(&file), &env(&[])).expect_err("must refuse");

        let message = err.to_string();
        assert!(message.contains("activecampaign.proxy"), "{message}");
        assert!(
            message.contains("http://me:***@proxy.example:3128"),
            "{message}"
        );
        assert!(!message.contains("s3cret-pw"), "{message}");
    }

    #[test]
    fn a_proxy_password_is_hidden_from_check_config_and_debug() {
        let mut settings = Settings::default();
        settings.activecampaign.proxy = Some(ProxyUrl("https://me:s3cret-pw@proxy.example".into()));

        let lines = settings.to_lines().join("\n");
        let debug = format!("{settings:?}");

        assert!(
            lines.contains("activecampaign.proxy = \"https://me:***@proxy.example\""),
            "{lines}"
        );
        assert!(!lines.contains("s3cret-pw"), "{lines}");
        assert!(!debug.contains("s3cret-pw"), "{debug}");
    }

    #[test]
    fn metrics_are_off_by_default_and_listen_on_a_loopback_address_when_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let off = write(dir.path(), "");
        let loaded = Settings::load_from(Some(&off), &env(&[])).expect("load");
        assert_eq!(loaded.settings.metrics_listen().expect("valid"), None);

        for (listen, addr) in [
            ("127.0.0.1:9464", "127.0.0.1:9464"),
            ("[::1]:9464", "[::1]:9464"),
        ] {
            let file = write(dir.path(), &format!("[metrics]\nlisten = \"{listen}\"\n"));
            let loaded = Settings::load_from(Some(&file), &env(&[])).expect(listen);
            let shown = loaded.settings.metrics_listen().expect("valid");
            assert_eq!(shown.map(|a| a.to_string()).as_deref(), Some(addr));
        }
    }

    #[test]
    fn a_non_loopback_metrics_address_is_refused_unless_remote_is_allowed() {
        let dir = tempfile::tempdir().expect("tempdir");
        for listen in ["0.0.0.0:9464", "192.0.2.10:9464", "[::]:9464"] {
            let file = write(dir.path(), &format!("[metrics]\nlisten = \"{listen}\"\n"));

            let err = Settings::load_from(Some(&file), &env(&[])).expect_err(listen);

            let message = err.to_string();
            assert!(message.contains("metrics.listen"), "{message}");
            assert!(message.contains("metrics.allow_remote = true"), "{message}");

            let allowed = write(
                dir.path(),
                &format!("[metrics]\nlisten = \"{listen}\"\nallow_remote = true\n"),
            );
            assert!(
                Settings::load_from(Some(&allowed), &env(&[])).is_ok(),
                "{listen}"
            );
        }
    }

    #[test]
    fn a_metrics_address_that_is_not_an_ip_and_port_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        for listen in ["localhost:9464", "9464", "127.0.0.1"] {
            let file = write(dir.path(), &format!("[metrics]\nlisten = \"{listen}\"\n"));

            let err = Settings::load_from(Some(&file), &env(&[])).expect_err(listen);

            assert!(err.to_string().contains("metrics.listen"), "{err}");
        }
    }

    #[test]
    fn an_empty_metrics_address_from_the_environment_turns_the_server_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write(dir.path(), "[metrics]\nlisten = \"127.0.0.1:9464\"\n");

        let loaded = Settings::load_from(Some(&file), &env(&[("ACEXPORT_METRICS__LISTEN", "")]))
            .expect("load");

        assert_eq!(loaded.settings.metrics_listen().expect("valid"), None);
    }

    #[test]
    fn the_json_settings_hide_a_proxy_password_like_the_lines() {
        let mut settings = Settings::default();
        settings.activecampaign.proxy = Some(ProxyUrl("https://me:s3cret-pw@proxy.example".into()));

        let json = settings.to_json();

        assert_eq!(
            json["activecampaign"]["proxy"],
            "https://me:***@proxy.example"
        );
        assert!(!json.to_string().contains("s3cret-pw"));
        assert_eq!(json["metrics"]["listen"], serde_json::Value::Null);
    }

    #[test]
    fn a_missing_explicit_file_is_an_error() {
        let err = Settings::load_from(Some(Path::new("/nonexistent/acexport.toml")), &env(&[]))
            .expect_err("must refuse");
        assert!(matches!(err, SettingsError::MissingFile { .. }));
    }

    #[test]
    fn a_system_settings_file_that_cannot_be_looked_up_is_an_error_naming_it_not_a_fallback() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A link to itself: whether the file exists cannot be told (ELOOP), as with a folder
        // the user may not search (EACCES, which root does not get).
        let system = dir.path().join("acexport.toml");
        std::os::unix::fs::symlink(&system, &system).expect("symlink");

        let err = settings_file(None, &env(&[]), &system).expect_err("must refuse");

        assert!(matches!(err, SettingsError::Unreadable { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&system.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_missing_system_settings_file_means_the_built_in_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let system = dir.path().join("acexport.toml");

        let file = settings_file(None, &env(&[]), &system).expect("no file is fine");

        assert_eq!(file, None);
    }

    #[test]
    fn a_settings_file_that_cannot_be_read_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A folder in the file's place cannot be read, for root too.
        let path = dir.path().join("acexport.toml");
        std::fs::create_dir(&path).expect("mkdir");

        let err = Settings::load_from(Some(&path), &env(&[])).expect_err("must refuse");

        assert!(matches!(err, SettingsError::Unreadable { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read settings file {}: ", path.display())),
            "{err}"
        );
    }

    #[test]
    fn a_settings_file_refused_by_its_permissions_is_named_with_the_mode_to_give_it() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let err = SettingsError::Unreadable {
            path: PathBuf::from("/etc/acexport/acexport.toml"),
            source: denied,
        };

        let text = err.to_string();

        assert!(
            text.starts_with("cannot read settings file /etc/acexport/acexport.toml: "),
            "{text}"
        );
        assert!(text.contains("mode 0644"), "{text}");
    }
}
