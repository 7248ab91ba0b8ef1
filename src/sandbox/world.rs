//! One world for everything that runs acexport against the sandbox: the integration tests, the
//! benchmark and `acexport demo`. A [`World`] is a fresh folder holding a settings file, the
//! store and secrets key it names, and a running sandbox on loopback; it creates the
//! connection, segment and export a run needs, and starts the real binary with only this
//! world's settings in its environment.
//!
//! Settings are typed: the builder starts from [`Settings`] with the world's paths, applies the
//! keys a caller sets (`"daemon.workers"`, or whole TOML sections), refuses an unknown key or
//! an invalid value at build, and writes the file with the `toml` serializer. The binary, the
//! daemon and in-process runs then all read that same file through [`Settings::load_from`].

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use secrecy::SecretString;

use super::{Sandbox, SandboxOptions};
use crate::service::connections::{AddConnection, ConnectionView};
use crate::service::exports::{ExportInput, ExportView};
use crate::service::segments::{SegmentInput, SegmentView};
use crate::service::{Context, ServiceError};
use crate::settings::{Settings, SettingsError};
use crate::store::exports::OnLeave;

/// The sandbox's API key unless a caller picks its own.
pub const DEFAULT_TOKEN: &str = "world-sandbox-token-5d1e";
/// File name of the settings file in the world's folder.
const SETTINGS_FILE: &str = "acexport.toml";
/// Folder of the store, the secrets key and the signal files, inside the world's folder.
const STATE_DIR: &str = "state";
/// How long the test sandbox keeps a bulk import queued: short, so runs finish quickly.
const TEST_IMPORT_DELAY: Duration = Duration::from_millis(5);
/// Variables of the caller's environment that would point the binary at other state or change
/// its logging; every `ACEXPORT_*` variable is removed too.
const FOREIGN_VARIABLES: &[&str] = &[
    "STATE_DIRECTORY",
    "CREDENTIALS_DIRECTORY",
    "XDG_STATE_HOME",
    "RUST_LOG",
];

/// Why a world could not be built or set up.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("cannot create a temporary folder")]
    Folder(#[source] std::io::Error),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("settings text for the world is not TOML")]
    SettingsText(#[source] toml::de::Error),
    #[error("the settings set for the world ({keys}) do not fit the settings")]
    SettingsKeys {
        keys: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("cannot write the world's settings as TOML")]
    SettingsFile(#[source] toml::ser::Error),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("cannot start the sandbox")]
    Sandbox(#[source] std::io::Error),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// Sandbox options for tests: limits off (the sandbox's own tests check them; here they would
/// only slow runs down) and imports processed after a few milliseconds.
pub fn test_sandbox_options(token: &str) -> SandboxOptions {
    SandboxOptions {
        token: token.to_owned(),
        requests_per_second: None,
        bulk_imports_per_minute: None,
        import_delay: TEST_IMPORT_DELAY,
        ..SandboxOptions::default()
    }
}

/// An export of `segments` to list 1 through `connection`, mapping only the `email` column;
/// callers fill in the rest with struct update syntax.
pub fn export_input(name: &str, connection: &str, segments: &[&str]) -> ExportInput {
    ExportInput {
        name: name.to_owned(),
        connection: connection.to_owned(),
        list_id: 1,
        segments: segments.iter().map(|s| (*s).to_owned()).collect(),
        email: "email".to_owned(),
        first_name: None,
        last_name: None,
        phone: None,
        fields: Vec::new(),
        tags: Vec::new(),
        schedule: None,
        timezone: None,
        on_leave: OnLeave::Keep,
        enabled: true,
    }
}

/// Collects how the world should look; [`WorldBuilder::build`] makes it.
pub struct WorldBuilder {
    sandbox: SandboxOptions,
    /// Settings the caller set, as a TOML table merged over the world's defaults at build.
    overrides: toml::Table,
    /// The first settings text that did not parse, reported by `build`.
    error: Option<WorldError>,
}

impl WorldBuilder {
    /// The sandbox's API key (and so the key connections are given).
    pub fn token(mut self, token: &str) -> Self {
        token.clone_into(&mut self.sandbox.token);
        self
    }

    /// The sandbox's request limits per second and bulk imports per minute; `None` is off.
    pub fn limits(
        mut self,
        requests_per_second: Option<u32>,
        bulk_per_minute: Option<u32>,
    ) -> Self {
        self.sandbox.requests_per_second = requests_per_second;
        self.sandbox.bulk_imports_per_minute = bulk_per_minute;
        self
    }

    /// Every sandbox option at once, token included.
    pub fn sandbox_options(mut self, options: SandboxOptions) -> Self {
        self.sandbox = options;
        self
    }

    /// Changes some sandbox options (latency, import delay, history, ...).
    pub fn sandbox(mut self, change: impl FnOnce(&mut SandboxOptions)) -> Self {
        change(&mut self.sandbox);
        self
    }

    /// `daemon.workers`: exports the daemon runs at once.
    pub fn workers(self, workers: u32) -> Self {
        self.setting("daemon.workers", workers)
    }

    /// One settings key by its dotted name, as in the settings file: `"export.max_profiles"`.
    /// An unknown key or a value of the wrong type fails [`WorldBuilder::build`].
    pub fn setting(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        set_dotted(&mut self.overrides, key, value.into());
        self
    }

    /// Whole sections of settings as TOML text, merged key by key over what is set so far.
    pub fn settings_toml(mut self, text: &str) -> Self {
        match text.parse::<toml::Table>() {
            Ok(table) => merge(&mut self.overrides, table),
            Err(e) => {
                self.error.get_or_insert(WorldError::SettingsText(e));
            }
        }
        self
    }

    /// Creates the folder, writes the settings file and starts the sandbox.
    pub async fn build(self) -> Result<World, WorldError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let dir = tempfile::tempdir().map_err(WorldError::Folder)?;
        let config = dir.path().join(SETTINGS_FILE);
        let settings = settings_for(dir.path(), self.overrides)?;
        write_settings(&config, &settings)?;
        let sandbox = Sandbox::start(self.sandbox.clone())
            .await
            .map_err(WorldError::Sandbox)?;
        Ok(World {
            dir,
            config,
            sandbox,
            token: self.sandbox.token,
        })
    }
}

/// A folder with a settings file, its store and secrets key, and a running sandbox. The folder
/// is removed and the sandbox stopped when the world is dropped.
pub struct World {
    /// The world's folder: settings file, `state/` (store, key, signal files), source files.
    pub dir: tempfile::TempDir,
    /// The settings file every process of this world reads.
    pub config: PathBuf,
    /// The ActiveCampaign double the world's connections point at.
    pub sandbox: Sandbox,
    /// The key the sandbox accepts; kept to give it to connections.
    token: String,
}

// The token is a credential, even a sandbox one: keep it out of Debug output.
impl fmt::Debug for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("World")
            .field("dir", &self.dir.path())
            .field("config", &self.config)
            .field("sandbox", &self.sandbox)
            .finish_non_exhaustive()
    }
}

impl World {
    /// A world with test defaults: the sandbox's limits off, [`DEFAULT_TOKEN`], built-in
    /// settings apart from the world's paths.
    pub fn builder() -> WorldBuilder {
        WorldBuilder {
            sandbox: test_sandbox_options(DEFAULT_TOKEN),
            overrides: toml::Table::new(),
            error: None,
        }
    }

    /// The settings of the world in `dir`, read from its file as the binary reads them (with no
    /// environment variables): what a new process of that world runs with.
    pub fn load_settings(dir: &Path) -> Result<Settings, WorldError> {
        let file = dir.join(SETTINGS_FILE);
        Ok(Settings::load_from(Some(&file), &BTreeMap::new())?.settings)
    }

    /// The world's settings, read from its file.
    pub fn settings(&self) -> Result<Settings, WorldError> {
        World::load_settings(self.dir.path())
    }

    /// Changes the settings file (as an admin would before a reload).
    pub fn rewrite_settings(&self, change: impl FnOnce(&mut Settings)) -> Result<(), WorldError> {
        let mut settings = self.settings()?;
        change(&mut settings);
        settings.validate()?;
        write_settings(&self.config, &settings)
    }

    /// A path in the world's folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Where the world keeps its store, unless a `store.path` setting moved it.
    pub fn store_path(&self) -> PathBuf {
        state_dir(self.dir.path()).join("acexport.db")
    }

    /// The daemon's signal-file folder, unless a `daemon.trigger_dir` setting moved it.
    pub fn trigger_dir(&self) -> PathBuf {
        state_dir(self.dir.path()).join("triggers")
    }

    /// What a connection's host is given: `http://127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.sandbox.host()
    }

    /// The API key the sandbox accepts.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Opens the store with the world's settings, as a command of this world would.
    pub async fn open_context(&self) -> Result<Context, WorldError> {
        Ok(Context::open(self.settings()?).await?)
    }

    /// Adds connection `name` to the sandbox, consent given.
    pub async fn add_connection(
        &self,
        ctx: &Context,
        name: &str,
    ) -> Result<ConnectionView, WorldError> {
        let request = AddConnection {
            name: name.to_owned(),
            host: self.host(),
            api_key: SecretString::from(self.token.clone()),
            allow_contributors: false,
            accept_data_transfer: true,
        };
        Ok(ctx.add_connection(request).await?)
    }

    /// Writes `text` to `NAME.csv` in the world's folder and adds it as segment `name`.
    pub async fn add_csv_segment(
        &self,
        ctx: &Context,
        name: &str,
        text: &str,
    ) -> Result<SegmentView, WorldError> {
        let path = self.csv_path(name);
        std::fs::write(&path, text).map_err(|source| WorldError::Write {
            path: path.clone(),
            source,
        })?;
        let input = SegmentInput::Csv {
            path,
            delimiter: b',',
        };
        Ok(ctx.add_segment(name, input).await?)
    }

    /// Where [`World::add_csv_segment`] keeps segment `name`'s file.
    pub fn csv_path(&self, name: &str) -> PathBuf {
        self.path(&format!("{name}.csv"))
    }

    /// Adds an export (see [`export_input`] for a starting point).
    pub async fn add_export(
        &self,
        ctx: &Context,
        input: ExportInput,
    ) -> Result<ExportView, WorldError> {
        Ok(ctx.add_export(input).await?)
    }

    /// A command running `program` (the acexport binary) in this world: its folder as working
    /// directory and `HOME`, `ACEXPORT_CONFIG` naming the world's settings file, and none of the
    /// caller's variables that would point it at other state.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        command.current_dir(self.dir.path());
        for (key, _) in std::env::vars_os() {
            let foreign = key
                .to_str()
                .is_none_or(|k| k.starts_with("ACEXPORT_") || FOREIGN_VARIABLES.contains(&k));
            if foreign {
                command.env_remove(&key);
            }
        }
        command
            .env(crate::settings::CONFIG_ENV, &self.config)
            .env("HOME", self.dir.path());
        command
    }

    /// Stops the sandbox, waiting for requests in flight, and removes the folder.
    pub async fn shutdown(self) {
        self.sandbox.shutdown().await;
    }
}

fn state_dir(dir: &Path) -> PathBuf {
    dir.join(STATE_DIR)
}

/// The built-in settings with the world's paths, then `overrides`; refused if a key is unknown
/// or a value out of range, as the loader would refuse the file.
fn settings_for(dir: &Path, overrides: toml::Table) -> Result<Settings, WorldError> {
    let state = state_dir(dir);
    let mut settings = Settings::default();
    settings.store.path = state.join("acexport.db");
    settings.secrets.key_file = state.join("secrets.key");
    settings.daemon.trigger_dir = state.join("triggers");
    let mut table = toml::Table::try_from(&settings).map_err(WorldError::SettingsFile)?;
    let keys = dotted_keys(&overrides);
    merge(&mut table, overrides);
    let settings: Settings =
        toml::Value::Table(table)
            .try_into()
            .map_err(|source| WorldError::SettingsKeys {
                keys: keys.join(", "),
                source,
            })?;
    settings.validate()?;
    Ok(settings)
}

fn write_settings(path: &Path, settings: &Settings) -> Result<(), WorldError> {
    let text = toml::to_string(settings).map_err(WorldError::SettingsFile)?;
    std::fs::write(path, text).map_err(|source| WorldError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Sets `a.b.c = value` in `table`, creating the tables on the way.
fn set_dotted(table: &mut toml::Table, key: &str, value: toml::Value) {
    let mut nested = toml::Table::new();
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    nested.insert(last.to_owned(), value);
    for part in parts.into_iter().rev() {
        let mut outer = toml::Table::new();
        outer.insert(part.to_owned(), toml::Value::Table(nested));
        nested = outer;
    }
    merge(table, nested);
}

/// Merges `from` into `into` key by key: tables are merged, any other value replaces.
fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(more)) => merge(inner, more),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// The dotted names of the leaves of `table`, for error messages.
fn dotted_keys(table: &toml::Table) -> Vec<String> {
    let mut keys = Vec::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(inner) => {
                keys.extend(dotted_keys(inner).into_iter().map(|k| format!("{key}.{k}")));
            }
            _ => keys.push(key.clone()),
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_world_writes_the_settings_it_was_given_and_the_loader_reads_them() {
        let world = World::builder()
            .workers(3)
            .setting("activecampaign.retry_base_ms", 10)
            .settings_toml("[schedule]\nrefresh = \"0 3 * * *\"\n")
            .build()
            .await
            .expect("world");

        let settings = world.settings().expect("settings");

        assert_eq!(settings.daemon.workers, 3);
        assert_eq!(settings.activecampaign.retry_base_ms, 10);
        assert_eq!(settings.schedule.refresh.as_deref(), Some("0 3 * * *"));
        assert_eq!(settings.store.path, world.store_path());
        assert_eq!(settings.daemon.trigger_dir, world.trigger_dir());
    }

    #[tokio::test]
    async fn an_unknown_settings_key_fails_the_build_naming_it() {
        let error = World::builder()
            .setting("daemon.wokers", 3)
            .build()
            .await
            .expect_err("refused");

        assert!(error.to_string().contains("daemon.wokers"), "{error}");
    }

    #[tokio::test]
    async fn an_invalid_settings_value_fails_the_build() {
        let error = World::builder()
            .setting("activecampaign.requests_per_second", 0)
            .build()
            .await
            .expect_err("refused");

        assert!(matches!(error, WorldError::Settings(_)), "{error}");
    }

    #[tokio::test]
    async fn a_rewrite_changes_only_the_key_asked_for() {
        let world = World::builder().workers(3).build().await.expect("world");

        world
            .rewrite_settings(|s| s.schedule.refresh = Some("* * * * * *".to_owned()))
            .expect("rewrite");

        let settings = world.settings().expect("settings");
        assert_eq!(settings.schedule.refresh.as_deref(), Some("* * * * * *"));
        assert_eq!(settings.daemon.workers, 3);
    }
}
