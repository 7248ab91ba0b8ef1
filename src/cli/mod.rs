//! The command line: clap definitions and dispatch. A thin layer: every command parses its
//! options, calls the service layer (`crate::service`) and prints the result; all checking and
//! saving happens there, so a later control socket behaves the same.
//!
//! Secrets never travel as option values (they would land in shell history and `ps`): API keys
//! and database URLs with passwords come from a file, an environment variable or stdin.

pub mod alerts;
pub mod audit;
pub mod connection;
pub mod daemon;
#[cfg(feature = "sandbox")]
pub mod demo;
pub mod errors;
pub mod export;
pub mod output;
pub mod remote;
pub mod run;
pub mod runs;
pub mod segment;

use std::fmt;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use secrecy::SecretString;

use crate::daemon::DaemonError;
use crate::secrets::SecretsError;
use crate::service::runs::RunError;
use crate::service::{Context, ServiceError, StoreError};
use crate::settings::{Loaded, Settings, SettingsError};

/// Exit status for invalid settings (`EX_CONFIG` from sysexits.h); systemd's unit does not
/// restart on it, since restarting cannot fix a bad file.
pub const EXIT_INVALID_SETTINGS: u8 = 78;
/// Exit status for every other failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status for a request the user's role does not allow (`EX_NOPERM` from sysexits.h).
pub const EXIT_NO_PERMISSION: u8 = 77;

/// Export customer segments into ActiveCampaign lists.
#[derive(Debug, Parser)]
#[command(name = "acexport", version, propagate_version = true)]
pub struct Cli {
    /// Settings file [default: $ACEXPORT_CONFIG, else /etc/acexport/acexport.toml if it exists]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the settings and print the values in force
    CheckConfig(CheckConfigArgs),
    /// Connections to ActiveCampaign accounts
    #[command(subcommand)]
    Connection(connection::ConnectionCommand),
    /// Segments: the CSV, JSONL or SQL sources of profiles
    #[command(subcommand)]
    Segment(segment::SegmentCommand),
    /// Exports: which segments go to which ActiveCampaign list
    #[command(subcommand)]
    Export(export::ExportCommand),
    /// Run history
    Runs(runs::RunsArgs),
    /// Alerts: check the channels
    #[command(subcommand)]
    Alerts(alerts::AlertsCommand),
    /// Try acexport end to end against a built-in sandbox
    #[cfg(feature = "sandbox")]
    Demo,
    /// Run the scheduler and workers (the systemd service)
    Daemon,
    /// Ask the daemon to run an export (or all enabled exports) now
    Trigger(run::TriggerArgs),
    /// Ask the daemon to stop an export's current run at its next batch
    Cancel(run::CancelArgs),
    /// What the daemon is doing: running exports, queue, next schedules
    Status(run::StatusArgs),
    /// Who changed what: definitions, sharing, consents, run requests (admins only)
    Audit(audit::AuditArgs),
    /// Serve an ActiveCampaign-compatible sandbox API on loopback
    #[cfg(feature = "sandbox")]
    Sandbox(daemon::SandboxArgs),
}

#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// Print `{"settings_file", "settings": {section: {key: value}}}` (secrets as `***`)
    #[arg(long)]
    pub json: bool,
}

impl Command {
    /// Commands that print their own progress and summary; their logs default to warnings.
    pub fn reports_itself(&self) -> bool {
        match self {
            #[cfg(feature = "sandbox")]
            Command::Demo => true,
            Command::Export(export::ExportCommand::Run(_)) => true,
            _ => false,
        }
    }
}

/// Why a command failed. Each message says what to fix and names the thing at fault; typed
/// errors are carried whole, so the chain printed by `main` keeps their causes.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// Rendered with the flags that fix it (`errors::service_error_text`).
    #[error(transparent)]
    Service(Worded<ServiceError>),
    #[error(transparent)]
    Run(Worded<RunError>),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An option value that cannot be used, or a secret that cannot be read.
    #[error("{0}")]
    Input(String),
    /// A secret's file or standard input could not be read (`what`: "the API key file X").
    #[error("cannot read {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("export {export:?} is neither queued nor running")]
    NothingToCancel { export: String },
    #[error("`acexport {command}` is not implemented yet")]
    NotImplemented { command: &'static str },
    /// The demo's folder, settings or sandbox could not be set up.
    #[cfg(feature = "sandbox")]
    #[error(transparent)]
    World(crate::sandbox::world::WorldError),
    /// The daemon's control socket could not be reached or broke off.
    #[error("cannot reach the daemon's control socket {}: {source}", .socket.display())]
    Control {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the sandbox stopped: {0}")]
    Sandbox(std::io::Error),
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
    /// The outcome was already printed (a run that finished `partial` or `failed`); exit with
    /// this status and say nothing more.
    #[error("")]
    Quiet(u8),
}

impl From<ServiceError> for CliError {
    fn from(error: ServiceError) -> CliError {
        CliError::Service(Worded(error))
    }
}

impl From<RunError> for CliError {
    fn from(error: RunError) -> CliError {
        CliError::Run(Worded(error))
    }
}

impl CliError {
    /// The process exit status for this error. The daemon also exits with
    /// [`EXIT_INVALID_SETTINGS`] when its key file, state folder or database needs an operator
    /// ([`daemon_needs_operator`]): the unit's `RestartPreventExitStatus=` then leaves it failed
    /// instead of restarting it every few seconds to the same refusal. Other commands keep 1
    /// for those: a person reads their message, no supervisor acts on the code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Settings(_) => EXIT_INVALID_SETTINGS,
            CliError::Daemon(e) if daemon_needs_operator(e) => EXIT_INVALID_SETTINGS,
            CliError::Quiet(code) => *code,
            CliError::Service(Worded(ServiceError::Forbidden(_)))
            | CliError::Run(Worded(RunError::Service(ServiceError::Forbidden(_)))) => {
                EXIT_NO_PERMISSION
            }
            _ => EXIT_FAILURE,
        }
    }

    /// Stdout was closed by the reader (`acexport runs | head`): nothing left to say.
    pub fn is_closed_pipe(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// Whether the daemon's failure to start is one that only an operator can fix, so that
/// starting again cannot help: a refused or missing secrets key file, a state folder or
/// database it may not open, a database from a newer version. A full disk or a busy database
/// may clear by itself, and stays a plain failure.
fn daemon_needs_operator(error: &DaemonError) -> bool {
    match error {
        DaemonError::Service(ServiceError::Secrets(e)) => secrets_need_operator(e),
        DaemonError::Service(ServiceError::Store(e)) | DaemonError::Store(e) => {
            store_needs_operator(e)
        }
        _ => false,
    }
}

fn secrets_need_operator(error: &SecretsError) -> bool {
    match error {
        SecretsError::Read { source, .. } | SecretsError::Create { source, .. } => denied(source),
        SecretsError::Missing { .. }
        | SecretsError::NotAFile { .. }
        | SecretsError::Owner { .. }
        | SecretsError::Loose { .. }
        | SecretsError::BadKey { .. }
        | SecretsError::Unseal { .. } => true,
    }
}

fn store_needs_operator(error: &StoreError) -> bool {
    match error {
        StoreError::Open { source, .. } | StoreError::Folder { source, .. } => denied(source),
        StoreError::LooseFolder { .. }
        | StoreError::Vanished { .. }
        | StoreError::NewerSchema { .. } => true,
        _ => false,
    }
}

/// Refused by permissions or a read-only mount: the same again next time.
fn denied(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
    )
}

/// A typed error as the command line words it (flag and command names included); its text
/// replaces the error's own, its causes stay in the chain.
#[derive(Debug)]
pub struct Worded<E>(pub E);

/// The command line's text for a typed error.
pub trait CliText {
    fn cli_text(&self) -> String;
}

impl CliText for ServiceError {
    fn cli_text(&self) -> String {
        errors::service_error_text(self)
    }
}

impl CliText for RunError {
    fn cli_text(&self) -> String {
        run::run_error_text(self)
    }
}

impl<E: CliText> fmt::Display for Worded<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.cli_text())
    }
}

impl<E: CliText + std::error::Error> std::error::Error for Worded<E> {
    /// The error's own causes: its text is already the worded message.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// The error and its causes on one line, each cause added only when the message above does not
/// already say it (most of our errors include their source).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Loads the settings every command runs with (`--config`, else `$ACEXPORT_CONFIG`, else the
/// system file), exactly as the daemon does.
pub fn load_settings(cli: &Cli) -> Result<Loaded, CliError> {
    Ok(Settings::load(cli.config.as_deref())?)
}

/// Runs one parsed command with loaded settings: through the daemon's control socket when the
/// daemon runs, else here.
pub async fn run(cli: Cli, loaded: Loaded) -> Result<(), CliError> {
    let command = match remote::Request::route(cli.command) {
        remote::Route::Daemon(request) => {
            let socket = loaded.settings.control_socket();
            match remote::connect(&socket).await? {
                Some(stream) => {
                    return match remote::forward(stream, &socket, request).await? {
                        0 => Ok(()),
                        code => Err(CliError::Quiet(code)),
                    };
                }
                None => request.into_command(),
            }
        }
        remote::Route::Here(command) => command,
    };
    match command {
        Command::CheckConfig(args) => check_config(&loaded, &args),
        Command::Connection(cmd) => {
            with_context(loaded, async |ctx| connection::run(ctx, cmd).await).await
        }
        Command::Segment(cmd) => {
            with_context(loaded, async |ctx| segment::run(ctx, cmd).await).await
        }
        // `export run --json` prints its object also when the store cannot be opened.
        Command::Export(export::ExportCommand::Run(args)) => {
            run::export_run_command(loaded, args).await
        }
        Command::Export(cmd) => with_context(loaded, async |ctx| export::run(ctx, cmd).await).await,
        Command::Runs(args) => with_context(loaded, async |ctx| runs::run(ctx, args).await).await,
        Command::Alerts(cmd) => alerts::run(&loaded, cmd).await,
        Command::Trigger(args) => {
            with_context(loaded, async |ctx| run::trigger(ctx, args).await).await
        }
        Command::Cancel(args) => {
            with_context(loaded, async |ctx| run::cancel(ctx, args).await).await
        }
        Command::Status(args) => {
            with_context(loaded, async |ctx| run::status(ctx, args).await).await
        }
        Command::Audit(args) => with_context(loaded, async |ctx| audit::run(ctx, args).await).await,
        #[cfg(feature = "sandbox")]
        Command::Demo => daemon::demo(loaded).await,
        Command::Daemon => daemon::daemon(loaded).await,
        #[cfg(feature = "sandbox")]
        Command::Sandbox(args) => daemon::sandbox(args).await,
    }
}

/// Opens the store, runs `f`, and closes the store so its WAL is checkpointed on exit.
async fn with_context<F>(loaded: Loaded, f: F) -> Result<(), CliError>
where
    F: AsyncFnOnce(&Context) -> Result<(), CliError>,
{
    let ctx = Context::open(loaded.settings).await?;
    let result = f(&ctx).await;
    ctx.close().await;
    result
}

fn check_config(loaded: &Loaded, args: &CheckConfigArgs) -> Result<(), CliError> {
    if args.json {
        return output::emit_json(&serde_json::json!({
            "settings_file": loaded.file,
            "settings": loaded.settings.to_json(),
        }));
    }
    let file = match &loaded.file {
        Some(path) => path.display().to_string(),
        None => "none, built-in defaults".to_owned(),
    };
    let mut text = format!("settings file: {file}\n");
    for line in loaded.settings.to_lines() {
        text.push_str(&line);
        text.push('\n');
    }
    output::emit(&text)
}

/// Reads a secret (API key, database URL) from a file. The value is never echoed; only the
/// path appears in errors.
pub fn secret_from_file(what: &str, path: &Path) -> Result<SecretString, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
        what: format!("the {what} file {}", path.display()),
        source,
    })?;
    one_secret(what, &text, &format!("the {what} file {}", path.display()))
}

/// Reads a secret from an environment variable.
pub fn secret_from_env(what: &str, option: &str, var: &str) -> Result<SecretString, CliError> {
    match std::env::var(var) {
        Ok(text) => one_secret(
            what,
            &text,
            &format!("environment variable {var} ({option})"),
        ),
        Err(std::env::VarError::NotPresent) => Err(CliError::Input(format!(
            "environment variable {var} ({option}) is not set; export it with the {what}"
        ))),
        Err(std::env::VarError::NotUnicode(_)) => Err(CliError::Input(format!(
            "environment variable {var} ({option}) is not valid UTF-8"
        ))),
    }
}

/// Reads a secret from stdin: a prompt and one line on a terminal, else everything piped in.
pub fn secret_from_stdin(what: &str) -> Result<SecretString, CliError> {
    let stdin = std::io::stdin();
    let mut text = String::new();
    let read = if stdin.is_terminal() {
        eprint!("Paste the {what} and press Enter: ");
        stdin.read_line(&mut text)
    } else {
        stdin.lock().read_to_string(&mut text)
    };
    read.map_err(|source| CliError::Read {
        what: format!("the {what} from standard input"),
        source,
    })?;
    one_secret(what, &text, "standard input")
}

/// A secret is one token: surrounding whitespace (the newline of `echo`) is dropped, inner
/// whitespace means the wrong thing was given.
fn one_secret(what: &str, text: &str, origin: &str) -> Result<SecretString, CliError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(CliError::Input(format!(
            "no {what} in {origin}: it is empty"
        )));
    }
    if trimmed.chars().any(char::is_whitespace) {
        return Err(CliError::Input(format!(
            "{origin} holds more than the {what} (it contains spaces or several lines); it \
             must hold only the {what}"
        )));
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_secret_with_a_trailing_newline_is_trimmed() {
        let secret = one_secret("API key", "abc123\n", "stdin").expect("one token");
        assert_eq!(secrecy::ExposeSecret::expose_secret(&secret), "abc123");
    }

    #[test]
    fn a_secret_spanning_two_lines_is_refused_without_quoting_it() {
        let err = one_secret("API key", "abc123\nxyz789\n", "stdin").expect_err("two tokens");
        let text = err.to_string();
        assert!(text.contains("more than the API key"), "{text}");
        assert!(!text.contains("abc123"), "{text}");
    }

    #[test]
    fn invalid_settings_exit_with_78_and_other_failures_with_1() {
        let settings = CliError::Settings(SettingsError::Invalid("x".to_owned()));
        assert_eq!(settings.exit_code(), 78);
        assert_eq!(CliError::Input("x".to_owned()).exit_code(), 1);
    }

    #[test]
    fn the_daemon_exits_78_on_a_key_file_or_state_folder_an_operator_must_fix() {
        let loose_key = SecretsError::Loose {
            path: PathBuf::from("/etc/acexport/secrets.key"),
            mode: 0o644,
            fix: 0o640,
        };
        let loose_folder = StoreError::LooseFolder {
            path: PathBuf::from("/var/lib/acexport"),
            mode: 0o777,
            owner: 0,
            fix: 0o750,
        };
        let denied = StoreError::Open {
            path: PathBuf::from("/var/lib/acexport/acexport.db"),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let busy = StoreError::Query {
            doing: "reading the queue",
            source: sqlx::Error::PoolTimedOut,
        };

        let daemon = |e: DaemonError| CliError::Daemon(e).exit_code();

        assert_eq!(
            daemon(DaemonError::Service(ServiceError::Secrets(loose_key))),
            78
        );
        assert_eq!(daemon(DaemonError::Store(loose_folder)), 78);
        assert_eq!(
            daemon(DaemonError::Service(ServiceError::Store(denied))),
            78
        );
        assert_eq!(daemon(DaemonError::Store(busy)), EXIT_FAILURE);
        assert_eq!(daemon(DaemonError::AlreadyRunning(42)), EXIT_FAILURE);
    }

    #[test]
    fn other_commands_keep_exit_1_for_a_loose_key_file() {
        let loose_key = SecretsError::Loose {
            path: PathBuf::from("/etc/acexport/secrets.key"),
            mode: 0o644,
            fix: 0o640,
        };

        let err = CliError::from(ServiceError::Secrets(loose_key));

        assert_eq!(err.exit_code(), EXIT_FAILURE);
    }

    #[test]
    fn a_run_error_is_worded_by_the_cli_and_keeps_its_cause() {
        let io = std::io::Error::other("disk full");
        let trigger = crate::scheduler::TriggerError::Io {
            action: "write",
            path: PathBuf::from("/run/acexport/triggers/x.json"),
            source: io,
        };
        let err = CliError::from(RunError::from(trigger));
        let cause = std::error::Error::source(&err).expect("the io error is kept");
        assert_eq!(cause.to_string(), "disk full");
        assert_eq!(
            error_chain(&err),
            "cannot write /run/acexport/triggers/x.json: disk full"
        );
        assert_eq!(err.exit_code(), EXIT_FAILURE);
    }

    #[test]
    fn an_unreadable_secret_file_keeps_the_io_error_as_its_cause() {
        let err = secret_from_file("API key", Path::new("/nonexistent/acexport-key"))
            .expect_err("no such file");
        assert!(matches!(err, CliError::Read { .. }), "{err:?}");
        assert!(std::error::Error::source(&err).is_some());
        assert!(
            err.to_string()
                .starts_with("cannot read the API key file /nonexistent/acexport-key: "),
            "{err}"
        );
    }

    #[test]
    fn the_error_chain_skips_causes_the_message_already_states() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Outer(#[source] std::io::Error);
        let inner = std::io::Error::other("disk full");
        assert_eq!(error_chain(&Outer(inner)), "outer: disk full");
    }
}
