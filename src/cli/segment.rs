//! `acexport segment ...`: where profiles come from. A database URL holding a password is
//! refused as an option value (shell history, `ps`), by `add` and `update` alike; it comes from
//! stdin (sealed in the store) or from an environment variable read at every run.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Subcommand};

use super::output::{self, Table};
use super::remote::Carried;
use super::{CliError, secret_from_stdin};
use crate::escape::untrusted_capped;
use crate::service::Context;
use crate::service::segments::{
    DatabaseInput, NewSource, SegmentInput, SegmentKind, SegmentPatch, SegmentPreview, SegmentView,
    shown_column,
};

/// Rows `segment preview` shows unless `--limit` says otherwise.
const DEFAULT_PREVIEW_ROWS: u16 = 10;
/// Upper bound of `--limit`: a preview is for eyes, not for copying a segment out.
pub(super) const MAX_PREVIEW_ROWS: u16 = 1000;
/// Characters of a value shown in a preview cell: enough to recognise it, and a table stays a
/// table.
const SHOWN_VALUE_CHARS: usize = 40;

#[derive(Debug, Subcommand, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SegmentCommand {
    /// Add a segment; the source is read through once and refused if any line is broken
    Add(AddArgs),
    /// List segments
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show a segment's source, columns and current row count
    Show {
        name: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Print the first rows of a segment
    Preview {
        name: String,
        /// How many rows
        #[arg(long, default_value_t = DEFAULT_PREVIEW_ROWS,
              value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_PREVIEW_ROWS)))]
        limit: u16,
    },
    /// Change a segment's file, query, database or delimiter; the new source is read through
    /// once, and the change is refused if it lacks a column an export maps
    Update(UpdateArgs),
    /// Remove a segment (refused while an export uses it)
    Remove { name: String },
}

#[derive(Debug, Args, serde::Serialize, serde::Deserialize)]
#[command(group(ArgGroup::new("source").required(true).args(["csv", "jsonl", "sql"])))]
#[command(group(
    ArgGroup::new("database_source").args(["database", "database_env", "database_stdin"])
))]
pub struct AddArgs {
    /// Name of the segment (up to 100 characters)
    pub name: String,
    /// A CSV file whose first line names the columns
    #[arg(long, value_name = "PATH")]
    pub csv: Option<PathBuf>,
    /// CSV delimiter: , ; | or tab
    #[arg(long, value_name = "C", requires = "csv", value_parser = parse_delimiter)]
    pub delimiter: Option<u8>,
    /// A file with one JSON object per line
    #[arg(long, value_name = "PATH")]
    pub jsonl: Option<PathBuf>,
    /// An SQL query, run read-only against --database / --database-env / --database-stdin
    #[arg(long, value_name = "QUERY")]
    pub sql: Option<String>,
    /// Database URL without a password (sqlite:PATH, postgres://USER@HOST/DB)
    #[arg(long, value_name = "URL", requires = "sql")]
    pub database: Option<String>,
    /// Environment variable holding the database URL, read at every run (not stored)
    #[arg(long, value_name = "VAR", requires = "sql")]
    pub database_env: Option<String>,
    /// Read the database URL from standard input; it is sealed in the store
    #[arg(long, requires = "sql")]
    pub database_stdin: bool,
    /// The URL as the client read it from stdin, for a command the daemon runs.
    #[arg(skip)]
    #[serde(default)]
    pub database_carried: Option<Carried>,
}

#[derive(Debug, Args, serde::Serialize, serde::Deserialize)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args(["csv", "jsonl", "sql", "delimiter", "database", "database_env", "database_stdin"])
))]
#[command(group(ArgGroup::new("source").args(["csv", "jsonl", "sql"])))]
#[command(group(
    ArgGroup::new("database_source").args(["database", "database_env", "database_stdin"])
))]
pub struct UpdateArgs {
    /// Name of the segment
    pub name: String,
    /// Read this CSV file instead (its first line names the columns)
    #[arg(long, value_name = "PATH", conflicts_with = "database_source")]
    pub csv: Option<PathBuf>,
    /// CSV delimiter: , ; | or tab [default: the current one, else ,]
    #[arg(long, value_name = "C", conflicts_with_all = ["jsonl", "sql"],
          value_parser = parse_delimiter)]
    pub delimiter: Option<u8>,
    /// Read this JSONL file instead
    #[arg(long, value_name = "PATH", conflicts_with = "database_source")]
    pub jsonl: Option<PathBuf>,
    /// Run this SQL query instead (on the current database unless one is given)
    #[arg(long, value_name = "QUERY")]
    pub sql: Option<String>,
    /// Database URL without a password (sqlite:PATH, postgres://USER@HOST/DB)
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// Environment variable holding the database URL, read at every run (not stored)
    #[arg(long, value_name = "VAR")]
    pub database_env: Option<String>,
    /// Read the database URL from standard input; it is sealed in the store
    #[arg(long)]
    pub database_stdin: bool,
    /// The URL as the client read it from stdin, for a command the daemon runs.
    #[arg(skip)]
    #[serde(default)]
    pub database_carried: Option<Carried>,
    /// Print the segment as JSON, as `segment show --json` does
    #[arg(long)]
    pub json: bool,
}

impl UpdateArgs {
    fn patch(self) -> Result<SegmentPatch, CliError> {
        let source = match (self.csv, self.jsonl, self.sql) {
            (Some(path), _, _) => Some(NewSource::Csv(path)),
            (None, Some(path), _) => Some(NewSource::Jsonl(path)),
            (None, None, Some(query)) => Some(NewSource::Sql(query)),
            (None, None, None) => None,
        };
        Ok(SegmentPatch {
            source,
            delimiter: self.delimiter,
            database: database_input(
                self.database,
                self.database_env,
                self.database_stdin,
                self.database_carried,
            )?,
        })
    }
}

/// `--database`, `--database-env` or `--database-stdin` (at most one: clap checks it), read
/// the same way for `segment add` and `segment update`.
fn database_input(
    url: Option<String>,
    env: Option<String>,
    stdin: bool,
    carried: Option<Carried>,
) -> Result<Option<DatabaseInput>, CliError> {
    if let Some(url) = carried {
        return Ok(Some(DatabaseInput::Url(url.0)));
    }
    Ok(match (url, env) {
        (Some(url), _) => {
            refuse_password_in_url(&url)?;
            Some(DatabaseInput::Url(url.into()))
        }
        (None, Some(var)) => Some(DatabaseInput::Env(var)),
        (None, None) if stdin => Some(DatabaseInput::Url(secret_from_stdin("database URL")?)),
        (None, None) => None,
    })
}

/// `--delimiter`: one of the separators CSV exports actually use.
fn parse_delimiter(text: &str) -> Result<u8, String> {
    match text {
        "," => Ok(b','),
        ";" => Ok(b';'),
        "|" => Ok(b'|'),
        "\t" | "\\t" | "tab" | "TAB" => Ok(b'\t'),
        _ => Err("use one of , ; | or tab".to_owned()),
    }
}

/// A password in `--database` would be visible to every user through `ps` and kept in shell
/// history; refuse it before it goes anywhere. The message does not repeat the URL.
fn refuse_password_in_url(url: &str) -> Result<(), CliError> {
    // Whatever the redaction would hide is a password: one rule for both.
    if crate::redact::redact_url(url) != url {
        return Err(CliError::Input(
            "--database: the URL contains a password, and secrets must not be given on the \
             command line (they stay in shell history and are visible in `ps`). Use \
             --database-stdin to give the URL on standard input (it is sealed in the store), or \
             --database-env VAR to read it from an environment variable at every run"
                .to_owned(),
        ));
    }
    Ok(())
}

impl AddArgs {
    fn input(self) -> Result<SegmentInput, CliError> {
        if let Some(path) = self.csv {
            return Ok(SegmentInput::Csv {
                path,
                delimiter: self.delimiter.unwrap_or(b','),
            });
        }
        if let Some(path) = self.jsonl {
            return Ok(SegmentInput::Jsonl { path });
        }
        let Some(query) = self.sql else {
            return Err(CliError::Input(
                "give one of --csv, --jsonl or --sql".to_owned(),
            ));
        };
        let Some(database) = database_input(
            self.database,
            self.database_env,
            self.database_stdin,
            self.database_carried,
        )?
        else {
            return Err(CliError::Input(
                "--sql needs --database URL, --database-env VAR or --database-stdin".to_owned(),
            ));
        };
        let (database_url, database_env) = database.into_parts();
        Ok(SegmentInput::Sql {
            query,
            database_url,
            database_env,
        })
    }
}

/// Reads what only the user's process can (a database URL on stdin) and makes file paths
/// absolute, before the command goes to the daemon.
pub fn carry(cmd: &mut SegmentCommand) -> Result<(), CliError> {
    let (csv, jsonl, stdin, carried) = match cmd {
        SegmentCommand::Add(a) => (
            &mut a.csv,
            &mut a.jsonl,
            &mut a.database_stdin,
            &mut a.database_carried,
        ),
        SegmentCommand::Update(u) => (
            &mut u.csv,
            &mut u.jsonl,
            &mut u.database_stdin,
            &mut u.database_carried,
        ),
        _ => return Ok(()),
    };
    for path in [csv, jsonl].into_iter().flatten() {
        *path = std::path::absolute(&*path).map_err(|source| CliError::Read {
            what: format!("the path {}", path.display()),
            source,
        })?;
    }
    if *stdin {
        *carried = Some(Carried(secret_from_stdin("database URL")?));
        *stdin = false;
    }
    Ok(())
}

/// Whether the command still needs something only the user's process has.
pub fn is_local(cmd: &SegmentCommand) -> bool {
    let (csv, jsonl, stdin) = match cmd {
        SegmentCommand::Add(a) => (&a.csv, &a.jsonl, a.database_stdin),
        SegmentCommand::Update(u) => (&u.csv, &u.jsonl, u.database_stdin),
        _ => return false,
    };
    stdin || [csv, jsonl].into_iter().flatten().any(|p| p.is_relative())
}

pub async fn run(ctx: &Context, cmd: SegmentCommand) -> Result<(), CliError> {
    match cmd {
        SegmentCommand::Add(args) => {
            let name = args.name.clone();
            let view = ctx.add_segment(&name, args.input()?).await?;
            output::emit(&format!(
                "Segment {:?} saved.\n{}",
                view.name,
                describe(&view)
            ))
        }
        SegmentCommand::List { json } => {
            let views = ctx.list_segments().await?;
            if json {
                return output::emit_json(&views);
            }
            if views.is_empty() {
                return output::emit(
                    "No segments. Add one with: acexport segment add NAME --csv PATH",
                );
            }
            let mut table = Table::new(["NAME", "KIND", "ROWS", "COLUMNS", "SOURCE", "EXPORTS"]);
            for v in &views {
                table.row(vec![
                    v.name.clone(),
                    v.kind.to_string(),
                    v.rows.to_string(),
                    v.columns.len().to_string(),
                    v.source.clone(),
                    output::list_or_none(&v.exports),
                ]);
            }
            output::emit(&table.render())
        }
        SegmentCommand::Show { name, json } => {
            let view = ctx.show_segment(&name).await?;
            if json {
                output::emit_json(&view)
            } else {
                output::emit(&describe(&view))
            }
        }
        SegmentCommand::Preview { name, limit } => {
            let preview = ctx.preview_segment(&name, usize::from(limit)).await?;
            output::emit(&preview_text(&preview))?;
            // The rows read are shown above; the reason reading stopped is the error.
            match preview.stopped {
                Some(error) => Err(error.into()),
                None => Ok(()),
            }
        }
        SegmentCommand::Update(args) => {
            let name = args.name.clone();
            let json = args.json;
            let view = ctx.update_segment(&name, args.patch()?).await?;
            if json {
                return output::emit_json(&view);
            }
            let mut text = format!("Segment {:?} updated.\n{}", view.name, describe(&view));
            if !view.exports.is_empty() {
                text.push_str(
                    "Its exports keep their delivery state: their next run sends only what \
                     changed.\n",
                );
            }
            output::emit(&text)
        }
        SegmentCommand::Remove { name } => {
            ctx.remove_segment(&name).await?;
            output::emit(&format!("Segment {name:?} removed."))
        }
    }
}

fn describe(v: &SegmentView) -> String {
    let columns: Vec<String> = v.columns.iter().map(|c| shown_column(c)).collect();
    let mut fields = vec![
        ("name", v.name.clone()),
        ("kind", v.kind.to_string()),
        ("source", v.source.clone()),
    ];
    if let Some(tls) = &v.tls {
        fields.push(("TLS", tls.clone()));
    }
    fields.extend([
        ("rows", v.rows.to_string()),
        ("columns", output::list_or_none(&columns)),
        ("exports", output::list_or_none(&v.exports)),
    ]);
    let mut text = output::fields(&fields);
    if !v.column_types.is_empty() {
        let mut table = Table::new(["COLUMN", "TYPE", "SENT AS"]);
        for column in &v.column_types {
            table.row(vec![
                shown_column(&column.name),
                column.type_name.clone(),
                column.conversion.clone(),
            ]);
        }
        text.push('\n');
        text.push_str(&table.render());
    }
    text
}

/// The preview table of the rows a run would send, then the rows it would reject and the
/// columns it cannot send, each with the reason: every row read is accounted for.
fn preview_text(preview: &SegmentPreview) -> String {
    // Row numbers are file lines for files, positions in the result for a query.
    let unit = match preview.kind {
        SegmentKind::Csv | SegmentKind::Jsonl => "line",
        SegmentKind::Sql => "row",
    };
    let mut table = Table::new(preview.columns.iter().map(|c| shown_column(c)));
    let mut rejected = Vec::new();
    for row in &preview.rows {
        match row {
            Ok(row) => table.row(
                row.values
                    .iter()
                    .map(|v| {
                        untrusted_capped(v.as_deref().unwrap_or_default(), SHOWN_VALUE_CHARS)
                            .into_owned()
                    })
                    .collect(),
            ),
            Err(e) => rejected.push(format!("  {unit} {}: {}", e.number, e.reason)),
        }
    }
    let mut text = table.render();
    if table.is_empty() {
        text.push_str("(no rows)\n");
    }
    if !rejected.is_empty() {
        text.push_str("\nRejected (a run records these and sends the rest):\n");
        for line in rejected {
            text.push_str(&line);
            text.push('\n');
        }
    }
    if !preview.hidden.is_empty() {
        text.push_str("\nNot shown (an export cannot map these):\n");
        for column in &preview.hidden {
            text.push_str(&format!(
                "  {} ({}): {}\n",
                shown_column(&column.name),
                column.type_name,
                column.conversion
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tab_can_be_given_by_name_or_escape() {
        for text in ["tab", "\\t", "\t"] {
            assert_eq!(parse_delimiter(text), Ok(b'\t'), "{text:?}");
        }
    }

    #[test]
    fn a_two_character_delimiter_is_refused() {
        assert!(parse_delimiter(";;").is_err());
    }

    #[test]
    fn a_database_url_with_a_password_is_refused_without_echoing_it() {
        for url in [
            "postgres://app:s3cret@db.internal/crm",
            "postgres://app@db.internal/crm?password=s3cret",
            "postgres://app:s3cret@[bad/crm",
        ] {
            let err = refuse_password_in_url(url).expect_err(url);
            assert!(!err.to_string().contains("s3cret"), "{err}");
            assert!(err.to_string().contains("--database-stdin"), "{err}");
        }
    }

    #[test]
    fn a_database_url_without_a_password_is_accepted() {
        for url in ["sqlite:/var/lib/crm.db", "postgres://app@db.internal/crm"] {
            assert!(refuse_password_in_url(url).is_ok(), "{url}");
        }
    }
}
