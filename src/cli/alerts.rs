//! `acexport alerts test`: a sample alert to every channel the settings name, reported per
//! channel. It needs neither the store nor a daemon, so it checks a new channel before anything
//! else is set up.

use clap::Subcommand;

use super::{CliError, EXIT_FAILURE, output};
use crate::service::alerts::{AlertsError, send_test_alert};
use crate::settings::Loaded;

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Send a sample alert to every channel (webhook, command) once, and say how each took it
    Test,
}

pub async fn run(loaded: &Loaded, command: AlertsCommand) -> Result<(), CliError> {
    match command {
        AlertsCommand::Test => test(loaded).await,
    }
}

async fn test(loaded: &Loaded) -> Result<(), CliError> {
    let reports = send_test_alert(&loaded.settings.alerts)
        .await
        .map_err(|e| match e {
            AlertsError::NoChannel => CliError::Input(e.to_string()),
            AlertsError::Webhook(_) => CliError::Input(e.to_string()),
        })?;
    let mut text = String::new();
    let mut failed = false;
    for report in &reports {
        match &report.outcome {
            Ok(delivery) => {
                text.push_str(&format!(
                    "{}: delivered ({})\n",
                    report.channel, delivery.summary
                ));
                for line in delivery.output.lines() {
                    text.push_str(&format!("  {line}\n"));
                }
            }
            Err(error) => {
                failed = true;
                text.push_str(&format!("{}: FAILED: {error}\n", report.channel));
            }
        }
    }
    output::emit(&text)?;
    if failed {
        return Err(CliError::Quiet(EXIT_FAILURE));
    }
    Ok(())
}
