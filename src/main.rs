//! The `acexport` binary: parse the command line, load the settings, start logging, run the
//! command and turn its outcome into an exit status. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;

use acexport::cli::{self, Cli, CliError};
use acexport::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match cli::load_settings(&cli) {
        Ok(loaded) => loaded,
        Err(error) => return fail(&error),
    };
    telemetry::init(loaded.settings.log.format, cli.command.reports_itself());
    match cli::run(cli, loaded).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.is_closed_pipe() => ExitCode::SUCCESS,
        Err(CliError::Quiet(code)) => ExitCode::from(code),
        Err(error) => fail(&error),
    }
}

/// Says why the command failed on stderr. On the journal stream (the daemon under systemd)
/// the line starts with the error priority, so `journalctl -p err` shows why it stopped.
fn fail(error: &CliError) -> ExitCode {
    let priority = if telemetry::stderr_is_journal() {
        "<3>"
    } else {
        ""
    };
    eprintln!("{priority}acexport: {}", cli::error_chain(error));
    ExitCode::from(error.exit_code())
}
