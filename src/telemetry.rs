//! Logging: one subscriber for the daemon and every command, writing to stderr so that stdout
//! stays clean for tables and `--json`. `RUST_LOG` picks the levels; `log.format` picks plain
//! text (for terminals and journald) or JSON lines (for log shippers).
//!
//! Log lines never carry secrets or profile data: callers log names, hosts and counts only.
//! Text lines escape every field value ([`crate::escape::untrusted`]), so a name or a server
//! message with a newline or an ESC sequence cannot forge a line; JSON lines are escaped by
//! JSON itself.
//!
//! Under systemd, stderr is a journal stream (`JOURNAL_STREAM` names its device and inode):
//! text lines then start with their syslog priority (`<4>` for a warning, sd-daemon(3)), so
//! `journalctl -p warning` finds them, and carry no timestamp of their own (the journal adds
//! one).

use std::fmt;
use std::io::IsTerminal;

use tracing::field::Field;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer, debug_fn};
use tracing_subscriber::registry::LookupSpan;

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

/// A text event format with the line's syslog priority in front, for the journal.
struct JournalPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for JournalPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", syslog_priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// sd-daemon(3) priorities: err 3, warning 4, info 6, debug 7.
fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Whether stderr is the journal stream systemd connected: `JOURNAL_STREAM` holds
/// `DEVICE:INODE` of it, and a redirected stderr (`2>file`) no longer matches.
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    rustix::fs::fstat(std::io::stderr())
        .is_ok_and(|stat| names_stream(&stream, stat.st_dev, stat.st_ino))
}

/// Whether a `JOURNAL_STREAM` value names the file with this device and inode.
fn names_stream(value: &str, dev: u64, ino: u64) -> bool {
    value
        .split_once(':')
        .is_some_and(|(d, i)| d.parse() == Ok(dev) && i.parse() == Ok(ino))
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
        LogFormat::Text if stderr_is_journal() => builder
            .fmt_fields(escaped_fields())
            .with_ansi(false)
            .event_format(JournalPriority(
                tracing_subscriber::fmt::format()
                    .compact()
                    .without_time()
                    .with_ansi(false),
            ))
            .try_init(),
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
    fn journal_lines_start_with_their_priority_and_carry_no_timestamp() {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .fmt_fields(escaped_fields())
            .with_ansi(false)
            .event_format(JournalPriority(
                tracing_subscriber::fmt::format()
                    .compact()
                    .without_time()
                    .with_ansi(false),
            ))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!("Run failed");
            tracing::warn!(export = "weekly", "Run partial");
            tracing::info!("Idle");
        });
        let bytes = captured.0.lock().expect("not poisoned").clone();
        let text = String::from_utf8(bytes).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();

        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("<3>"), "{}", lines[0]);
        assert!(lines[1].starts_with("<4>"), "{}", lines[1]);
        assert!(lines[1].contains(r#"export="weekly""#), "{}", lines[1]);
        assert!(lines[2].starts_with("<6>"), "{}", lines[2]);
        let year = chrono::Utc::now().format("%Y-").to_string();
        assert!(lines.iter().all(|l| !l.contains(&year)), "{text}");
    }

    #[test]
    fn a_journal_stream_is_told_by_its_device_and_inode() {
        let cases = [
            ("8:1234", 8, 1234, true),
            ("8:1234", 8, 1235, false),
            ("9:1234", 8, 1234, false),
            ("", 8, 1234, false),
            ("8", 8, 1234, false),
            ("x:y", 8, 1234, false),
        ];
        for (value, dev, ino, is) in cases {
            assert_eq!(names_stream(value, dev, ino), is, "{value:?}");
        }
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
