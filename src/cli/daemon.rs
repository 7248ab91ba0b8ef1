//! Long-running commands: `daemon`, `demo` and `sandbox`. They stop on SIGINT or SIGTERM
//! (systemd's stop), finishing the work in hand.

#[cfg(feature = "sandbox")]
use std::net::{Ipv4Addr, SocketAddr};

#[cfg(feature = "sandbox")]
use clap::Args;

use super::CliError;
#[cfg(feature = "sandbox")]
use crate::sandbox::{self, SandboxOptions};
use crate::settings::Loaded;

/// Where `acexport sandbox` listens unless told otherwise: loopback only, so the sandbox is
/// never reachable from the network.
#[cfg(feature = "sandbox")]
const SANDBOX_DEFAULT_PORT: u16 = 8085;
/// The sandbox's default `Api-Token`; it guards nothing real.
#[cfg(feature = "sandbox")]
const SANDBOX_DEFAULT_TOKEN: &str = "sandbox-token";

#[cfg(feature = "sandbox")]
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Loopback port to listen on
    #[arg(long, value_name = "P", default_value_t = SANDBOX_DEFAULT_PORT)]
    pub port: u16,
    /// API token the sandbox expects
    #[arg(long, value_name = "T", default_value = SANDBOX_DEFAULT_TOKEN)]
    pub token: String,
}

/// `acexport daemon`: runs until SIGTERM or SIGINT; SIGHUP reloads the settings.
pub async fn daemon(loaded: Loaded) -> Result<(), CliError> {
    Ok(crate::daemon::run_with_signals(loaded).await?)
}

/// `acexport demo`.
#[cfg(feature = "sandbox")]
pub async fn demo(loaded: Loaded) -> Result<(), CliError> {
    super::demo::run(loaded).await
}

/// `acexport sandbox`: serves until SIGINT or SIGTERM.
#[cfg(feature = "sandbox")]
pub async fn sandbox(args: SandboxArgs) -> Result<(), CliError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let opts = SandboxOptions {
        token: args.token,
        ..SandboxOptions::default()
    };
    super::output::emit(&format!(
        "Sandbox API on http://{addr} until Ctrl-C. Try it with:\n  acexport connection add \
         sandbox --host http://{addr} --api-key-stdin --accept-data-transfer"
    ))?;
    sandbox::serve(addr, opts, crate::daemon::termination())
        .await
        .map_err(CliError::Sandbox)
}
