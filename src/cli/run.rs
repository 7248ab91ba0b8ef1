//! Commands that run exports or talk to the running daemon: `export run`, `trigger`, `cancel`
//! and `status`. Declared here with their options; the implementations come with the pipeline
//! and the daemon.

use clap::{ArgGroup, Args};

use super::CliError;
use crate::service::Context;

#[derive(Debug, Args)]
pub struct ExportRunArgs {
    /// Name of the export
    pub name: String,
    /// Read, check and plan, but send nothing to ActiveCampaign
    #[arg(long)]
    pub dry_run: bool,
    /// Send every profile again, not only new and changed ones
    #[arg(long)]
    pub full: bool,
    /// Print the outcome as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["name", "all"])))]
pub struct TriggerArgs {
    /// Name of the export to run
    pub name: Option<String>,
    /// Run every enabled export
    #[arg(long)]
    pub all: bool,
    /// Send every profile again, not only new and changed ones
    #[arg(long)]
    pub full: bool,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// Name of the export whose run should stop
    pub name: String,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// `acexport export run NAME`.
pub async fn export_run(_ctx: &Context, _args: ExportRunArgs) -> Result<(), CliError> {
    Err(CliError::NotImplemented {
        command: "export run",
    })
}

/// `acexport trigger NAME|--all`.
pub async fn trigger(_ctx: &Context, _args: TriggerArgs) -> Result<(), CliError> {
    Err(CliError::NotImplemented { command: "trigger" })
}

/// `acexport cancel NAME`.
pub async fn cancel(_ctx: &Context, _args: CancelArgs) -> Result<(), CliError> {
    Err(CliError::NotImplemented { command: "cancel" })
}

/// `acexport status`.
pub async fn status(_ctx: &Context, _args: StatusArgs) -> Result<(), CliError> {
    Err(CliError::NotImplemented { command: "status" })
}
