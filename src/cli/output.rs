//! How commands print: aligned plain-text tables and `key: value` blocks for people, pretty JSON
//! for scripts. Everything goes to stdout (logs and errors go to stderr), written in one piece
//! so that a closed pipe (`acexport runs | head`) is an error we can recognise, not a panic.

use std::io::Write;

use serde::Serialize;

use super::CliError;

/// Space between table columns.
const COLUMN_GAP: &str = "  ";

/// Shown for an absent value in tables and blocks.
pub const NONE: &str = "-";

/// Where a command's output goes when it runs in the daemon for a control-socket client:
/// frames sent back to the client, which prints them on its own stdout and stderr.
pub use crate::daemon::control::Console as RemoteConsole;
use crate::daemon::control::Frame;

tokio::task_local! {
    /// Set while a command runs for a control-socket client.
    static REMOTE: RemoteConsole;
}

/// Runs `f` with its output sent to `console` instead of this process's stdout and stderr.
pub async fn with_remote_console<F: Future>(console: RemoteConsole, f: F) -> F::Output {
    REMOTE.scope(console, f).await
}

/// Whether the command runs for a control-socket client.
pub fn is_remote() -> bool {
    REMOTE.try_with(|_| ()).is_ok()
}

/// Whether the user's stderr is a terminal (the client's, for a remote command).
pub fn stderr_is_terminal() -> bool {
    REMOTE
        .try_with(|c| c.terminal)
        .unwrap_or_else(|_| std::io::IsTerminal::is_terminal(&std::io::stderr()))
}

/// Writes `text` to the user's stderr as it is (progress, notes; not errors, which `main`
/// prints).
pub fn note(text: &str) {
    if REMOTE
        .try_with(|c| c.frames.send(Frame::Err(text.to_owned())))
        .is_ok()
    {
        return;
    }
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}

/// `word` as one shell word in a command we suggest: as it is when plain, else in single quotes
/// ("Weekly news" becomes `'Weekly news'`), so the suggestion can be pasted as it stands.
pub fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':' | '@'));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Writes `text` to stdout, adding a final newline when missing.
pub fn emit(text: &str) -> Result<(), CliError> {
    if let Ok(sent) = REMOTE.try_with(|c| {
        let mut text = text.to_owned();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        c.frames.send(Frame::Out(text))
    }) {
        // A client that hung up: as a closed pipe would be here.
        return sent.map_err(|_| CliError::Output(std::io::ErrorKind::BrokenPipe.into()));
    }
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).map_err(CliError::Output)?;
    if !text.ends_with('\n') {
        out.write_all(b"\n").map_err(CliError::Output)?;
    }
    out.flush().map_err(CliError::Output)
}

/// Prints `value` as pretty JSON.
pub fn emit_json<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::Output(e.into()))?;
    emit(&text)
}

/// A table whose columns are padded to their widest cell.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<I, S>(headers: I) -> Table
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells.into_iter().map(|c| one_line(&c)).collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str(COLUMN_GAP);
                }
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', w - width(cell)));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A `key: value` block with the values aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let key_width = pairs.iter().map(|(k, _)| width(k)).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        out.push_str(key);
        out.push(':');
        out.extend(std::iter::repeat_n(' ', key_width - width(key) + 1));
        out.push_str(&one_line(value));
        out.push('\n');
    }
    out
}

/// Joins names for a cell, or [`NONE`] when there are none.
pub fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        NONE.to_owned()
    } else {
        items.join(", ")
    }
}

/// The value, or [`NONE`].
pub fn or_none(value: Option<&str>) -> String {
    value.filter(|v| !v.is_empty()).unwrap_or(NONE).to_owned()
}

/// Control characters (a newline inside a CSV cell, say) would break the alignment.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn width(text: &str) -> usize {
    text.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suggested_name_is_one_shell_word() {
        assert_eq!(shell_word("weekly"), "weekly");
        assert_eq!(shell_word("Weekly news"), "'Weekly news'");
        assert_eq!(shell_word("Bob's list"), r"'Bob'\''s list'");
        assert_eq!(shell_word("$HOME"), "'$HOME'");
    }

    #[test]
    fn table_columns_are_padded_to_the_widest_cell_without_trailing_spaces() {
        let mut table = Table::new(["NAME", "ROWS"]);
        table.row(vec!["newsletter".to_owned(), "3".to_owned()]);
        table.row(vec!["vip".to_owned(), "12".to_owned()]);
        assert_eq!(
            table.render(),
            "NAME        ROWS\nnewsletter  3\nvip         12\n"
        );
    }

    #[test]
    fn a_newline_inside_a_cell_does_not_break_the_row() {
        let mut table = Table::new(["A", "B"]);
        table.row(vec!["x\ny".to_owned(), "z".to_owned()]);
        assert_eq!(table.render().lines().count(), 2);
    }

    #[test]
    fn field_values_start_in_one_column() {
        let text = fields(&[("name", "a".to_owned()), ("api key", "…1234".to_owned())]);
        assert_eq!(text, "name:    a\napi key: …1234\n");
    }
}
