//! Logging: one subscriber for the daemon and every command, writing to stderr so that stdout
//! stays clean for tables and `--json`. `RUST_LOG` picks the levels; `log.format` picks plain
//! text (for terminals and journald) or JSON lines (for log shippers).
//!
//! Log lines never carry secrets or profile data: callers log names, hosts and counts only.
//! Text lines escape every field value ([`crate::escape::untrusted`]), so a name or a server
//! message with a newline or an ESC sequence cannot forge a line; JSON lines are escaped by
//! JSON itself.
//!
//! Under systemd, stderr is a journal stream (`JOURNAL_STREAM` names its device and inode).
//! The text format then, like `log.format = "journal"` anywhere, writes to journald over its
//! native protocol (tracing-journald): each entry has the priority of its level (`journalctl
//! -p warning`) and one field per log field, span fields included (`journalctl -u acexport
//! EXPORT=weekly`, `RUN_ID=`), every value escaped and capped as in text lines ([`Escaped`]).
//! When the journal's socket cannot be reached, text lines go to stderr instead; on a journal
//! stream they then start with their syslog priority (`<4>` for a warning, sd-daemon(3)) and
//! carry no timestamp of their own (the journal adds one).

use std::fmt;
use std::io::IsTerminal;

use tracing::field::{Field, FieldSet, Value, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer, debug_fn};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

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
                write!(writer, "{}={}", field.name(), quoted_if_spaced(&shown))
            }
        },
    )
    .delimited(" ")
}

/// A field value as one `name=value` word: quoted (logfmt style) when it holds a space, `=` or
/// a quote, so that an export named `x run_id=99` cannot pass for another field.
fn quoted_if_spaced(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains([' ', '=', '"']) && !is_one_quoted_word(value) {
        format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\"")).into()
    } else {
        value.into()
    }
}

/// Whether `value` is already one quoted word, as a `?` field of a string prints it: quotes
/// around it, and every quote and backslash inside escaped.
fn is_one_quoted_word(value: &str) -> bool {
    let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return false;
    };
    let mut escaped = false;
    for c in inner.chars() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => return false,
            _ => {}
        }
    }
    !escaped
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

/// The same priorities for native journal entries. tracing-journald's default puts INFO at
/// notice (5); ours stay where the text lines put them, so `-p` filters alike either way.
fn journal_priorities() -> PriorityMappings {
    PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// The native journal layer: fields under their own names (`EXPORT=`, `RUN_ID=`, no `F_`
/// prefix, so `journalctl EXPORT=weekly` works), identifier `acexport`, values escaped. Our
/// field names are fixed in the code and none is a journal field of its own (`PRIORITY`,
/// `MESSAGE`...); the message goes to `MESSAGE`. Fails when the journal's socket cannot be
/// reached.
fn journal_layer() -> std::io::Result<Escaped<tracing_journald::Layer>> {
    let layer = tracing_journald::layer()?
        .with_field_prefix(None)
        .with_syslog_identifier("acexport".to_owned())
        .with_priority_mappings(journal_priorities());
    Ok(Escaped(layer))
}

/// Hands the inner layer every event and span with each field value as the text format shows
/// it: escaped and capped ([`MAX_LOG_FIELD_CHARS`]). The journal keeps a newline inside a field
/// (its protocol cannot be forged by one), but `journalctl` shows it as a new line, and
/// nothing should carry a megabyte of server text into the journal either.
///
/// The message also gets the event's and its spans' fields as `name=value`, as a text line has
/// them: `journalctl` shows only `MESSAGE` unless asked for more, and a warning without its
/// file or error would say little.
struct Escaped<L>(L);

/// A span's fields, escaped, for the messages of the events inside it.
struct SpanFields(Vec<(&'static str, String)>);

/// One event's or span's values, escaped, in the order of its field set.
struct EscapedValues(Vec<Option<String>>);

impl EscapedValues {
    fn of(fields: &FieldSet, record: impl FnOnce(&mut dyn Visit)) -> EscapedValues {
        let mut values = EscapedValues(vec![None; fields.len()]);
        record(&mut values);
        values
    }

    /// The values set, with their field names.
    fn named(&self, fields: &FieldSet) -> Vec<(&'static str, String)> {
        fields
            .iter()
            .zip(&self.0)
            .filter_map(|(field, value)| Some((field.name(), value.clone()?)))
            .collect()
    }

    /// Appends the other fields, then `spans`, to the message as ` name=value`.
    fn fold_into_message(&mut self, fields: &FieldSet, spans: &[(&'static str, String)]) {
        let Some(index) = fields.field("message").map(|f| f.index()) else {
            return;
        };
        let mut message = self.0[index].take().unwrap_or_default();
        for (name, value) in self.named(fields).iter().chain(spans) {
            if *name != "message" {
                message.push_str(&format!(" {name}={value}"));
            }
        }
        self.0[index] = Some(message);
    }

    /// The values as `tracing` takes them: strings, so the journal gets them unquoted.
    fn as_values(&self) -> Vec<Option<&dyn Value>> {
        self.0
            .iter()
            .map(|v| v.as_ref().map(|s| s as &dyn Value))
            .collect()
    }
}

impl Visit for EscapedValues {
    fn record_str(&mut self, field: &Field, value: &str) {
        if let Some(slot) = self.0.get_mut(field.index()) {
            *slot = Some(crate::escape::untrusted_capped(value, MAX_LOG_FIELD_CHARS).into_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

// `FieldSet::value_set_all` is the constructor `tracing`'s own macros expand to (hidden from
// its docs for that reason, kept stable within tracing-core 0.1 for the same one).
impl<S, L> Layer<S> for Escaped<L>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    L: Layer<S>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let meta = attrs.metadata();
        let escaped = EscapedValues::of(meta.fields(), |v| attrs.record(v));
        if let Some(span) = ctx.span(id) {
            let fields = SpanFields(escaped.named(meta.fields()));
            span.extensions_mut().insert(fields);
        }
        let values = escaped.as_values();
        let set = meta.fields().value_set_all(&values);
        let shown = match attrs.parent() {
            Some(parent) => Attributes::child_of(parent.clone(), meta, &set),
            None if attrs.is_root() => Attributes::new_root(meta, &set),
            None => Attributes::new(meta, &set),
        };
        self.0.on_new_span(&shown, id, ctx);
    }

    fn on_record(&self, id: &Id, record: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let meta = span.metadata();
        let escaped = EscapedValues::of(meta.fields(), |v| record.record(v));
        if let Some(known) = span.extensions_mut().get_mut::<SpanFields>() {
            for (name, value) in escaped.named(meta.fields()) {
                match known.0.iter_mut().find(|(n, _)| *n == name) {
                    Some(slot) => slot.1 = value,
                    None => known.0.push((name, value)),
                }
            }
        }
        let values = escaped.as_values();
        let set = meta.fields().value_set_all(&values);
        drop(span);
        self.0.on_record(id, &Record::new(&set), ctx);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut escaped = EscapedValues::of(meta.fields(), |v| event.record(v));
        let spans: Vec<(&'static str, String)> = ctx
            .event_scope(event)
            .into_iter()
            .flat_map(|scope| scope.from_root())
            .flat_map(|span| {
                span.extensions()
                    .get::<SpanFields>()
                    .map(|f| f.0.clone())
                    .unwrap_or_default()
            })
            .collect();
        escaped.fold_into_message(meta.fields(), &spans);
        let values = escaped.as_values();
        let set = meta.fields().value_set_all(&values);
        let shown = match event.parent() {
            Some(parent) => Event::new_child_of(parent.clone(), meta, &set),
            None if event.is_root() => Event::new_child_of(None::<Id>, meta, &set),
            None => Event::new(meta, &set),
        };
        self.0.on_event(&shown, ctx);
    }
}

/// Whether stderr is the journal stream systemd connected: `JOURNAL_STREAM` holds
/// `DEVICE:INODE` of it, and a redirected stderr (`2>file`) no longer matches.
pub fn stderr_is_journal() -> bool {
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
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let on_journal_stream = stderr_is_journal();
    let wants_journal = match format {
        LogFormat::Journal => true,
        LogFormat::Text => on_journal_stream,
        LogFormat::Json => false,
    };
    let mut unreachable = None;
    if wants_journal {
        match journal_layer() {
            // A failed `try_init` only means a subscriber is already installed.
            Ok(journal) => {
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    .with(journal)
                    .try_init();
                return;
            }
            Err(e) => unreachable = Some(e),
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text | LogFormat::Journal if on_journal_stream => builder
            .fmt_fields(escaped_fields())
            .with_ansi(false)
            .event_format(JournalPriority(
                tracing_subscriber::fmt::format()
                    .compact()
                    .without_time()
                    .with_ansi(false),
            ))
            .try_init(),
        LogFormat::Text | LogFormat::Journal => builder
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
    if let Some(error) = unreachable {
        tracing::warn!(
            error = %error,
            "Cannot reach the journal's socket; logging text lines to stderr"
        );
    }
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
        // Spaces in it: one quoted word, the escapes' backslashes escaped in turn.
        assert!(
            lines[0].contains("name=\"x.trigger\\\\n2026"),
            "{}",
            lines[0]
        );
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

    /// An event or span a layer was handed: its name and its fields as they arrived.
    type Entry = (String, Vec<(String, String)>);

    /// What a layer was handed, in order.
    #[derive(Clone, Default)]
    struct Handed(Arc<Mutex<Vec<Entry>>>);

    /// Fields as a layer receives them: strings as they are, anything else as `Debug` shows it.
    struct FieldList<'a>(&'a mut Vec<(String, String)>);

    impl Visit for FieldList<'_> {
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.push((field.name().to_owned(), value.to_owned()));
        }
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            self.0.push((field.name().to_owned(), format!("{value:?}")));
        }
    }

    impl Handed {
        fn push(&self, what: String, record: impl FnOnce(&mut dyn Visit)) {
            let mut fields = Vec::new();
            record(&mut FieldList(&mut fields));
            self.0.lock().expect("not poisoned").push((what, fields));
        }
        fn all(&self) -> Vec<Entry> {
            self.0.lock().expect("not poisoned").clone()
        }
    }

    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Handed {
        fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
            self.push(format!("span {}", attrs.metadata().name()), |v| {
                attrs.record(v)
            });
        }
        fn on_record(&self, _: &Id, record: &Record<'_>, _: Context<'_, S>) {
            self.push("record".to_owned(), |v| record.record(v));
        }
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            self.push(format!("event {}", event.metadata().level()), |v| {
                event.record(v)
            });
        }
    }

    /// Logs through [`Escaped`] around a recording layer and returns what that layer got.
    fn handed_through_escaped(log: impl FnOnce()) -> Vec<Entry> {
        let handed = Handed::default();
        let subscriber = tracing_subscriber::registry().with(Escaped(handed.clone()));
        tracing::subscriber::with_default(subscriber, log);
        handed.all()
    }

    fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no field {name} in {fields:?}"))
    }

    #[test]
    fn journal_fields_and_messages_are_escaped_and_capped_like_text_lines() {
        let forged = "x.trigger\nMESSAGE=Run succeeded\u{1b}[2K";
        let huge = "y".repeat(100_000);

        let handed = handed_through_escaped(|| {
            tracing::warn!(name = %forged, reason = forged, detail = %huge, "Server said {forged}");
        });

        assert_eq!(handed.len(), 1, "{handed:?}");
        let (what, fields) = &handed[0];
        assert_eq!(what, "event WARN");
        let message = field(fields, "message");
        assert!(
            message.starts_with(
                "Server said x.trigger\\nMESSAGE=Run succeeded\\u{1b}[2K name=x.trigger\\n"
            ),
            "{message}"
        );
        assert!(!message.contains('\n') && !message.contains('\u{1b}'));
        // A string value arrives unquoted, as the journal shows it.
        assert_eq!(
            field(fields, "reason"),
            "x.trigger\\nMESSAGE=Run succeeded\\u{1b}[2K"
        );
        assert_eq!(field(fields, "name"), field(fields, "reason"));
        let detail = field(fields, "detail");
        assert!(
            detail.chars().count() <= MAX_LOG_FIELD_CHARS + 1,
            "{}",
            detail.len()
        );
        assert!(detail.ends_with('…'));
    }

    #[test]
    fn span_fields_reach_the_journal_escaped_when_opened_and_when_recorded_later() {
        let handed = handed_through_escaped(|| {
            let span =
                tracing::info_span!("run", export = "week\nly", run_id = tracing::field::Empty);
            span.record("run_id", "7\u{1b}");
            let _in_run = span.enter();
            tracing::info!(sent = 2, "Run succeeded");
        });

        assert_eq!(handed.len(), 3, "{handed:?}");
        assert_eq!(handed[0].0, "span run");
        assert_eq!(field(&handed[0].1, "export"), "week\\nly");
        assert_eq!(handed[1].0, "record");
        assert_eq!(
            handed[1].1,
            vec![("run_id".to_owned(), "7\\u{1b}".to_owned())]
        );
        assert_eq!(handed[2].0, "event INFO");
        assert_eq!(field(&handed[2].1, "sent"), "2");
        // The message carries the event's fields, then the span's, as a text line does.
        assert_eq!(
            field(&handed[2].1, "message"),
            "Run succeeded sent=2 export=week\\nly run_id=7\\u{1b}"
        );
    }

    #[test]
    fn a_field_value_with_a_space_or_equals_sign_stays_one_quoted_word() {
        let lines = text_lines(|| {
            tracing::info!(export = %"x run_id=99", run_id = 3, "Run started");
        });
        assert!(
            lines[0].contains(r#"export="x run_id=99" run_id=3"#),
            "{}",
            lines[0]
        );
        assert_eq!(quoted_if_spaced("weekly"), "weekly");
        // What `?` printed stays as it is; a value that only looks quoted is quoted again.
        assert_eq!(quoted_if_spaced("\"weekly news\""), "\"weekly news\"");
        assert_eq!(
            quoted_if_spaced("\"x\" run_id=\"9\""),
            "\"\\\"x\\\" run_id=\\\"9\\\"\""
        );
        assert_eq!(quoted_if_spaced("a \"b\""), "\"a \\\"b\\\"\"");
    }

    #[test]
    fn journal_entries_get_the_same_priorities_as_text_lines() {
        let mappings = journal_priorities();
        for (level, priority) in [
            (Level::ERROR, mappings.error),
            (Level::WARN, mappings.warn),
            (Level::INFO, mappings.info),
            (Level::DEBUG, mappings.debug),
            (Level::TRACE, mappings.trace),
        ] {
            assert_eq!(priority as u8 - b'0', syslog_priority(level), "{level}");
        }
    }
}
