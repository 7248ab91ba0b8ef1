//! Logging: one subscriber for the daemon and every command, writing to stderr so that stdout
//! stays clean for tables and `--json`. `RUST_LOG` picks the levels; `log.format` picks plain
//! text (for terminals and journald) or JSON lines (for log shippers).
//!
//! Log lines never carry secrets or profile data: callers log names, hosts and counts only.
//! Text lines escape every field value ([`crate::escape::untrusted`]), so a name or a server
//! message with a newline or an ESC sequence cannot forge a line; JSON lines are escaped by
//! JSON itself.

use std::fmt;
use std::io::IsTerminal;

use tracing::field::Field;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{FormatFields, Writer, debug_fn};

use crate::settings::LogFormat;

/// Levels when `RUST_LOG` is unset: our own info lines, only warnings from chatty libraries.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,notify=warn,hyper=warn,reqwest=warn";

/// Levels for commands that report their own progress and summary (`export run`, `demo`):
/// only warnings and errors, so the terminal shows the summary, not a log.
pub const QUIET_FILTER: &str = "warn";

/// Longest field value in a text log line, in characters: room for an error with its causes,
/// not for a megabyte of server text.
const MAX_LOG_FIELD_CHARS: usize = 2048;

/// The text format's fields: `name=value` separated by spaces, the message bare, every value
/// escaped and capped.
fn escaped_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    debug_fn(
        |writer: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug| {
            let shown = format!("{value:?}");
            let shown = crate::escape::untrusted_capped(&shown, MAX_LOG_FIELD_CHARS);
            if field.name() == "message" {
                write!(writer, "{shown}")
            } else {
                write!(writer, "{}={shown}", field.name())
            }
        },
    )
    .delimited(" ")
}

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
            .fmt_fields(escaped_fields())
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn text_lines(log: impl FnOnce()) -> Vec<String> {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .fmt_fields(escaped_fields())
            .compact()
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let bytes = captured.0.lock().expect("not poisoned").clone();
        String::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_value_with_a_newline_and_an_escape_sequence_cannot_forge_a_log_line() {
        let forged = "x.trigger\n2026-01-01T00:00:00Z  INFO acexport: Run succeeded\u{1b}[2K";
        let lines = text_lines(|| {
            tracing::warn!(name = %forged, reason = ?forged, "Trigger file rejected");
            tracing::warn!("Server said {forged}");
        });
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(lines.iter().all(|l| !l.contains('\u{1b}')), "{lines:#?}");
        assert!(lines[0].contains("name=x.trigger\\n2026"), "{}", lines[0]);
        assert!(
            lines[1].contains("Server said x.trigger\\n"),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn a_huge_value_is_capped_in_a_log_line() {
        let huge = "y".repeat(100_000);
        let lines = text_lines(|| tracing::warn!(detail = %huge, "Answer"));
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].len() < MAX_LOG_FIELD_CHARS + 200,
            "{}",
            lines[0].len()
        );
    }
}
