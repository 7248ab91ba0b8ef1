//! `acexport connection ...`: ActiveCampaign accounts. The API key is read from a file, an
//! environment variable or stdin, verified by the service, sealed in the store and from then on
//! shown only as its last characters.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Subcommand};
use secrecy::SecretString;

use super::output::{self, Table};
use super::remote::Carried;
use super::{CliError, secret_from_env, secret_from_file, secret_from_stdin};
use crate::service::Context;
use crate::service::connections::{AddConnection, ConnectionView, UpdateConnection};

const WHAT: &str = "API key";

#[derive(Debug, Subcommand, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionCommand {
    /// Verify an ActiveCampaign account's API key and save the connection
    Add(AddArgs),
    /// List connections
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show one connection
    Show {
        name: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Verify a saved connection's key against ActiveCampaign again
    Test { name: String },
    /// Change the host, API key or sharing of a connection (re-verified before saving)
    Update(UpdateArgs),
    /// Remove a connection and its sealed key
    Remove {
        name: String,
        /// Also remove the exports that use it
        #[arg(long)]
        force: bool,
    },
}

/// Where the API key comes from; never the key itself on the command line.
#[derive(Debug, Args, serde::Serialize, serde::Deserialize)]
#[group(id = "api_key_source", multiple = false)]
pub struct ApiKeyArgs {
    /// Read the API key from this file (e.g. a systemd credential)
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,
    /// Read the API key from this environment variable
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// Read the API key from standard input
    #[arg(long)]
    pub api_key_stdin: bool,
    /// The key as the client read it, for a command the daemon runs (`super::remote`).
    #[arg(skip)]
    #[serde(default)]
    pub carried: Option<Carried>,
}

impl ApiKeyArgs {
    /// Reads the key here, in the user's process, so the daemon never reads a file or an
    /// environment variable for them.
    pub fn carry(&mut self) -> Result<(), CliError> {
        self.carried = self.read()?.map(Carried);
        self.api_key_file = None;
        self.api_key_env = None;
        self.api_key_stdin = false;
        Ok(())
    }

    /// Whether the key still has to be read from a local source.
    pub fn is_local(&self) -> bool {
        self.api_key_file.is_some() || self.api_key_env.is_some() || self.api_key_stdin
    }

    /// The key from whichever source was given, or `None` when none was.
    fn read(&self) -> Result<Option<SecretString>, CliError> {
        if let Some(key) = &self.carried {
            return Ok(Some(key.0.clone()));
        }
        if let Some(path) = &self.api_key_file {
            return secret_from_file(WHAT, path).map(Some);
        }
        if let Some(var) = &self.api_key_env {
            return secret_from_env(WHAT, "--api-key-env", var).map(Some);
        }
        if self.api_key_stdin {
            return secret_from_stdin(WHAT).map(Some);
        }
        Ok(None)
    }
}

#[derive(Debug, Args, serde::Serialize, serde::Deserialize)]
#[command(group(
    ArgGroup::new("api_key_required")
        .required(true)
        .args(["api_key_file", "api_key_env", "api_key_stdin"])
))]
pub struct AddArgs {
    /// Name of the connection, e.g. "Marketing AC" (up to 100 characters)
    pub name: String,
    /// REST endpoint of the account (Settings > Developer), e.g. acme.api-us1.com
    #[arg(long, value_name = "HOST")]
    pub host: String,
    #[command(flatten)]
    pub key: ApiKeyArgs,
    /// Let contributors (not only admins) use this connection in exports
    #[arg(long)]
    pub allow_contributors: bool,
    /// Confirm that exports may send personal data to ActiveCampaign (see the notice)
    #[arg(long)]
    pub accept_data_transfer: bool,
}

#[derive(Debug, Args, serde::Serialize, serde::Deserialize)]
pub struct UpdateArgs {
    /// Name of the connection
    pub name: String,
    /// New REST endpoint of the account
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    #[command(flatten)]
    pub key: ApiKeyArgs,
    /// Whether contributors may use this connection
    #[arg(long, value_name = "true|false")]
    pub allow_contributors: Option<bool>,
}

pub async fn run(ctx: &Context, cmd: ConnectionCommand) -> Result<(), CliError> {
    match cmd {
        ConnectionCommand::Add(args) => {
            let api_key = args.key.read()?.ok_or_else(|| {
                CliError::Input(
                    "give the API key with --api-key-file, --api-key-env or --api-key-stdin"
                        .to_owned(),
                )
            })?;
            let view = ctx
                .add_connection(AddConnection {
                    name: args.name,
                    host: args.host,
                    api_key,
                    allow_contributors: args.allow_contributors,
                    accept_data_transfer: args.accept_data_transfer,
                })
                .await?;
            output::emit(&format!(
                "Connection {:?} verified and saved.\n{}",
                view.name,
                describe(&view)
            ))
        }
        ConnectionCommand::List { json } => {
            let views = ctx.list_connections().await?;
            if json {
                return output::emit_json(&views);
            }
            if views.is_empty() {
                return output::emit(
                    "No connections. Add one with: acexport connection add NAME --host HOST \
                     --api-key-stdin --accept-data-transfer",
                );
            }
            // Non-admins see the connections shared with them by name, type and status only.
            if views.iter().any(|v| v.details.is_none()) {
                let mut table = Table::new(["NAME", "TYPE", "STATUS"]);
                for v in &views {
                    table.row(vec![
                        v.name.clone(),
                        v.kind.to_owned(),
                        v.status.to_string(),
                    ]);
                }
                return output::emit(&table.render());
            }
            let mut table = Table::new([
                "NAME",
                "HOST",
                "API KEY",
                "EXPORT USER",
                "STATUS",
                "EXPORTS",
            ]);
            for v in &views {
                let Some(d) = &v.details else { continue };
                table.row(vec![
                    v.name.clone(),
                    d.host.clone(),
                    d.api_key.clone(),
                    output::or_none(d.export_user.as_deref()),
                    v.status.to_string(),
                    output::list_or_none(&d.exports),
                ]);
            }
            output::emit(&table.render())
        }
        ConnectionCommand::Show { name, json } => {
            let view = ctx.show_connection(&name).await?;
            if json {
                output::emit_json(&view)
            } else {
                output::emit(&describe(&view))
            }
        }
        ConnectionCommand::Test { name } => {
            let view = ctx.test_connection(&name).await?;
            let Some(d) = &view.details else {
                return output::emit(&format!("Connection {:?} verified.", view.name));
            };
            output::emit(&format!(
                "Connection {:?} verified: ActiveCampaign at {} accepted the API key {} (user {}).",
                view.name,
                d.host,
                d.api_key,
                output::or_none(d.export_user.as_deref())
            ))
        }
        ConnectionCommand::Update(args) => {
            let api_key = args.key.read()?;
            let view = ctx
                .update_connection(
                    &args.name,
                    UpdateConnection {
                        host: args.host,
                        api_key,
                        allow_contributors: args.allow_contributors,
                    },
                )
                .await?;
            output::emit(&format!(
                "Connection {:?} updated.\n{}",
                view.name,
                describe(&view)
            ))
        }
        ConnectionCommand::Remove { name, force } => {
            let removed = ctx.remove_connection(&name, force).await?;
            let mut text = format!("Connection {name:?} removed.");
            if !removed.is_empty() {
                text.push_str(&format!(
                    "\nExports removed with it: {}.",
                    removed.join(", ")
                ));
            }
            output::emit(&text)
        }
    }
}

/// The connection as a `key: value` block; the key appears only as its hint, and only to
/// admins.
fn describe(v: &ConnectionView) -> String {
    let Some(d) = &v.details else {
        return output::fields(&[
            ("name", v.name.clone()),
            ("type", v.kind.to_owned()),
            ("status", v.status.to_string()),
        ]);
    };
    let status = match &d.status_detail {
        Some(detail) => format!("{} ({detail}), checked {}", v.status, d.checked_at),
        None => format!("{}, checked {}", v.status, d.checked_at),
    };
    output::fields(&[
        ("name", v.name.clone()),
        ("type", v.kind.to_owned()),
        ("host", d.host.clone()),
        ("api key", d.api_key.clone()),
        ("export user", output::or_none(d.export_user.as_deref())),
        ("status", status),
        ("used by", d.allowed_users.to_owned()),
        (
            "data transfer",
            format!("accepted by {} at {}", d.consent_by, d.consent_at),
        ),
        ("exports", output::list_or_none(&d.exports)),
    ])
}
