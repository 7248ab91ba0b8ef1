//! Logging: one subscriber for the daemon and every command, writing to stderr so that stdout
//! stays clean for tables and `--json`. `RUST_LOG` picks the levels; `log.format` picks plain
//! text (for terminals and journald) or JSON lines (for log shippers).
//!
//! Log lines never carry secrets or profile data: callers log names, hosts and counts only.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// Levels when `RUST_LOG` is unset: our own info lines, only warnings from chatty libraries.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,notify=warn,hyper=warn,reqwest=warn";

/// Levels for commands that report their own progress and summary (`export run`, `demo`):
/// only warnings and errors, so the terminal shows the summary, not a log.
pub const QUIET_FILTER: &str = "warn";

/// Installs the global subscriber. Calling it again (tests, or a command that re-initialises)
/// keeps the first subscriber rather than failing. `quiet` picks [`QUIET_FILTER`] as the
/// default; `RUST_LOG` always wins.
pub fn init(format: LogFormat, quiet: bool) {
    let default = if quiet { QUIET_FILTER } else { DEFAULT_FILTER };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A failed `try_init` only means a subscriber is already installed.
    let _ = match format {
        LogFormat::Text => builder
            .compact()
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
