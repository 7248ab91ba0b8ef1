//! Long-running commands: `daemon`, `demo` and `sandbox`. They stop on SIGINT or SIGTERM
//! (systemd's stop), finishing the work in hand.

#[cfg(feature = "sandbox")]
use std::net::{Ipv4Addr, SocketAddr};
#[cfg(feature = "sandbox")]
use std::path::PathBuf;

#[cfg(feature = "sandbox")]
use clap::{ArgGroup, Args};
#[cfg(feature = "sandbox")]
use secrecy::ExposeSecret;

use super::CliError;
#[cfg(feature = "sandbox")]
use super::{secret_from_env, secret_from_file, secret_from_stdin};
#[cfg(feature = "sandbox")]
use crate::sandbox::{self, SandboxOptions};
use crate::settings::Loaded;

/// Where `acexport sandbox` listens unless told otherwise: loopback only, so the sandbox is
/// never reachable from the network.
#[cfg(feature = "sandbox")]
const SANDBOX_DEFAULT_PORT: u16 = 8085;
/// How the sandbox's token is named in messages.
#[cfg(feature = "sandbox")]
const TOKEN_NAME: &str = "sandbox token";

/// The sandbox's token guards the profiles it receives (its `/_sandbox` views show them), so it
/// is read like an API key: from a file, a named environment variable or stdin, never from the
/// command line. Without any of them a random one is made up and printed once on stderr.
#[cfg(feature = "sandbox")]
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("token_source").args(["token_file", "token_env", "token_stdin"])))]
pub struct SandboxArgs {
    /// Loopback port to listen on (0: any free port)
    #[arg(long, value_name = "P", default_value_t = SANDBOX_DEFAULT_PORT)]
    pub port: u16,
    /// Read the API token the sandbox expects from this file [default: a random one, printed
    /// on stderr]
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Read the token from this environment variable
    #[arg(long, value_name = "VAR")]
    pub token_env: Option<String>,
    /// Read the token from standard input
    #[arg(long)]
    pub token_stdin: bool,
    /// Serve without ActiveCampaign's rate limits (5 requests/s, 100 bulk imports/min), for
    /// load and crash tests: the client's own budget then sets the pace
    #[arg(long)]
    pub no_limits: bool,
    /// No longer accepted (it showed the token in `ps`); kept to say what to use instead
    #[arg(long, value_name = "T", hide = true)]
    pub token: Option<String>,
}

#[cfg(feature = "sandbox")]
impl SandboxArgs {
    /// The token from the option given, or `None` when none was.
    fn token(&self) -> Result<Option<String>, CliError> {
        if self.token.is_some() {
            return Err(CliError::Input(
                "--token: secrets must not be given on the command line (every local user sees \
                 them in `ps` and /proc/PID/cmdline); give the sandbox token with --token-file \
                 PATH, --token-env VAR or --token-stdin, or give none to have one made up"
                    .to_owned(),
            ));
        }
        let secret = if let Some(path) = &self.token_file {
            secret_from_file(TOKEN_NAME, path)?
        } else if let Some(var) = &self.token_env {
            secret_from_env(TOKEN_NAME, "--token-env", var)?
        } else if self.token_stdin {
            secret_from_stdin(TOKEN_NAME)?
        } else {
            return Ok(None);
        };
        Ok(Some(secret.expose_secret().to_owned()))
    }
}

/// `acexport daemon`: runs until SIGTERM or SIGINT; SIGHUP reloads the settings.
pub async fn daemon(loaded: Loaded) -> Result<(), CliError> {
    Ok(crate::daemon::run_with_signals(loaded, super::remote::handler()).await?)
}

/// `acexport demo`.
#[cfg(feature = "sandbox")]
pub async fn demo(loaded: Loaded) -> Result<(), CliError> {
    super::demo::run(loaded).await
}

/// `acexport sandbox`: serves until SIGINT or SIGTERM.
#[cfg(feature = "sandbox")]
pub async fn sandbox(args: SandboxArgs) -> Result<(), CliError> {
    let given = args.token()?;
    let listener = sandbox::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, args.port)))
        .await
        .map_err(CliError::Sandbox)?;
    let addr = listener.local_addr().map_err(CliError::Sandbox)?;
    let token = match given {
        Some(token) => token,
        None => {
            let token = sandbox::generate_token();
            // Stderr, once: the terminal of whoever started it, apart from the output below.
            eprintln!("Sandbox token (made up for this run): {token}");
            token
        }
    };
    let mut opts = SandboxOptions {
        token,
        ..SandboxOptions::default()
    };
    if args.no_limits {
        opts.requests_per_second = None;
        opts.bulk_imports_per_minute = None;
    }
    super::output::emit(&format!(
        "Sandbox API on http://{addr} until Ctrl-C. Try it with:\n  acexport connection add \
         sandbox --host http://{addr} --api-key-stdin --accept-data-transfer\n(the key is the \
         sandbox token; http://{addr}/_sandbox/contacts and /_sandbox/stats show what arrived \
         to requests with the same Api-Token header)"
    ))?;
    sandbox::serve(listener, opts, crate::daemon::termination())
        .await
        .map_err(CliError::Sandbox)
}
