//! `acexport segment ...`: where profiles come from. A database URL holding a password is
//! refused as an option value (shell history, `ps`); it comes from stdin (sealed in the store)
//! or from an environment variable read at every run.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Subcommand};

use super::output::{self, Table};
use super::{CliError, secret_from_stdin};
use crate::service::Context;
use crate::service::segments::{SegmentInput, SegmentView};

/// Rows `segment preview` shows unless `--limit` says otherwise.
const DEFAULT_PREVIEW_ROWS: u16 = 10;
/// Upper bound of `--limit`: a preview is for eyes, not for copying a segment out.
const MAX_PREVIEW_ROWS: u16 = 1000;

#[derive(Debug, Subcommand)]
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
    /// Remove a segment (refused while an export uses it)
    Remove { name: String },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["csv", "jsonl", "sql"])))]
#[command(group(
    ArgGroup::new("database_source").args(["database", "database_env", "database_stdin"])
))]
pub struct AddArgs {
    /// Name of the segment (letters, digits, '-', '_', '.')
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
        let (database_url, database_env) = match (self.database, self.database_env) {
            (Some(url), _) => {
                refuse_password_in_url(&url)?;
                (Some(url.into()), None)
            }
            (None, Some(var)) => (None, Some(var)),
            (None, None) if self.database_stdin => (Some(secret_from_stdin("database URL")?), None),
            (None, None) => {
                return Err(CliError::Input(
                    "--sql needs --database URL, --database-env VAR or --database-stdin".to_owned(),
                ));
            }
        };
        Ok(SegmentInput::Sql {
            query,
            database_url,
            database_env,
        })
    }
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
            let (columns, rows) = ctx.preview_segment(&name, usize::from(limit)).await?;
            let mut table = Table::new(columns);
            for row in &rows {
                table.row(
                    row.values
                        .iter()
                        .map(|v| v.clone().unwrap_or_default())
                        .collect(),
                );
            }
            let mut text = table.render();
            if table.is_empty() {
                text.push_str("(no rows)\n");
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
        ("columns", output::list_or_none(&v.columns)),
        ("exports", output::list_or_none(&v.exports)),
    ]);
    output::fields(&fields)
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
