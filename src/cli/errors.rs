//! Service errors as the command line says them: the service names no flag (a control socket
//! serves the same operations), so the flags that fix each refusal are named here.

use crate::escape::untrusted_capped;
use crate::service::connections::PRIVACY_NOTICE;
use crate::service::segments::{PatchMismatch, describe_columns_in_use, kind_phrase};
use crate::service::{MappedField, Remedy, ServiceError};

/// Column names listed in a refusal before "and N more": they come from the segment's file.
const SHOWN_COLUMNS: usize = 20;
/// Characters of each listed column name.
const SHOWN_COLUMN_CHARS: usize = 64;

/// The text of a service error on the command line, naming the flags that fix it.
pub fn service_error_text(e: &ServiceError) -> String {
    match e {
        ServiceError::InUse {
            kind,
            name,
            users,
            remedy,
        } => {
            let advice = match remedy {
                Remedy::Force => {
                    format!("remove them first, or pass --force to remove them with the {kind}")
                }
                Remedy::Detach => {
                    "remove it from those exports (export update) or remove them first".to_owned()
                }
            };
            format!(
                "{kind} {name:?} is used by export(s) {}; {advice}",
                users.join(", ")
            )
        }
        ServiceError::ConsentRequired => {
            format!("{PRIVACY_NOTICE} Re-run the command with --accept-data-transfer to confirm.")
        }
        ServiceError::NoDatabase => {
            "an SQL segment needs --database URL or --database-env VAR".to_owned()
        }
        ServiceError::DatabaseEnvUnset { var } => {
            format!("environment variable {var} (--database-env) is not set")
        }
        ServiceError::BadFieldMapping { text } => {
            format!("--field {text:?} must look like AC_FIELD_ID=COLUMN, e.g. 12=loyalty_tier")
        }
        ServiceError::MissingEmailColumn => "--email COLUMN is required".to_owned(),
        ServiceError::NoSegment => "at least one --segment is required".to_owned(),
        ServiceError::InvalidListId(id) => {
            format!("--list {id} is not an ActiveCampaign list ID (a positive number)")
        }
        ServiceError::BadSchedule(e) => format!("--schedule: {e}"),
        ServiceError::BadTimezone(e) => format!("--timezone: {e}"),
        ServiceError::UnknownColumn {
            field,
            column,
            segment,
            columns,
        } => format!(
            "segment {segment:?} has no column {column:?} (mapped by {}); its columns are: {}",
            field_flag(*field),
            column_excerpt(columns)
        ),
        ServiceError::SegmentPatchMismatch { segment, problem } => {
            let problem = match problem {
                PatchMismatch::Empty => "give at least one of --csv, --jsonl, --sql, --delimiter, \
                                         --database, --database-env or --database-stdin"
                    .to_owned(),
                PatchMismatch::DelimiterNotCsv { kind } => format!(
                    "--delimiter applies only to a CSV file, and the segment would read {} (give \
                     --csv PATH with it to read a CSV file instead)",
                    kind_phrase(*kind)
                ),
                PatchMismatch::DatabaseNotSql { kind } => format!(
                    "--database, --database-env and --database-stdin apply only to an SQL query, \
                     and the segment would read {} (give --sql QUERY with them to read a query \
                     instead)",
                    kind_phrase(*kind)
                ),
                PatchMismatch::QueryWithoutDatabase { kind } => format!(
                    "--sql needs --database URL, --database-env VAR or --database-stdin, since \
                     the segment reads {} and has no database to keep",
                    kind_phrase(*kind)
                ),
            };
            format!("segment {segment:?} was not changed: {problem}")
        }
        ServiceError::ColumnsStillMapped { segment, missing } => format!(
            "segment {segment:?} was not changed: its new source lacks, or cannot export, \
             columns that exports map: {}. Keep them in the source (with a type `segment show` \
             lists as exportable), or first map other columns in those exports with \
             `acexport export update`",
            describe_columns_in_use(missing)
        ),
        ServiceError::NotExportableColumn {
            field,
            column,
            segment,
            column_type,
        } => format!(
            "column {column:?} of segment {segment:?} (mapped by {}) has type {}, which cannot \
             be exported: {}",
            field_flag(*field),
            column_type.name,
            column_type.refusal().unwrap_or_default()
        ),
        ServiceError::ConnectionRejected { connection, detail } => format!(
            "connection {connection:?} was rejected by ActiveCampaign ({}); fix it with \
             `acexport connection update` first",
            detail.as_deref().unwrap_or_default()
        ),
        // Their own text names no flag and says what to fix.
        ServiceError::NotFound { .. }
        | ServiceError::ConnectionGone { .. }
        | ServiceError::Duplicate { .. }
        | ServiceError::InvalidName { .. }
        | ServiceError::SegmentDatabaseEnvUnset { .. }
        | ServiceError::SegmentWithoutDatabase { .. }
        | ServiceError::ResolvePath { .. }
        | ServiceError::SegmentTwice { .. }
        | ServiceError::UnknownCustomField { .. }
        | ServiceError::FieldMappedTwice { .. }
        | ServiceError::Host(_)
        | ServiceError::ActiveCampaign(_)
        | ServiceError::Source(_)
        | ServiceError::SegmentSource { .. }
        | ServiceError::Secrets(_)
        | ServiceError::Store(_)
        | ServiceError::Forbidden(_) => e.to_string(),
    }
}

/// The `export add`/`export update` option that maps a field.
fn field_flag(field: MappedField) -> &'static str {
    match field {
        MappedField::Email => "--email",
        MappedField::FirstName => "--first-name",
        MappedField::LastName => "--last-name",
        MappedField::Phone => "--phone",
        MappedField::Custom(_) => "--field",
    }
}

/// The first [`SHOWN_COLUMNS`] names, each escaped and cut, then how many more there are.
fn column_excerpt(columns: &[String]) -> String {
    let mut text = columns
        .iter()
        .take(SHOWN_COLUMNS)
        .map(|c| untrusted_capped(c, SHOWN_COLUMN_CHARS))
        .collect::<Vec<_>>()
        .join(", ");
    if columns.len() > SHOWN_COLUMNS {
        text.push_str(&format!(" and {} more", columns.len() - SHOWN_COLUMNS));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::CliError;
    use crate::scheduler::Schedule;
    use crate::service::segments::{ColumnInUse, SegmentKind};

    /// Every variant whose text differs on the command line, with the flag it must name.
    fn flagged() -> Vec<(ServiceError, &'static str)> {
        let schedule = Schedule::parse("61 * * * *", chrono_tz::UTC).expect_err("bad minute");
        vec![
            (
                ServiceError::InUse {
                    kind: "connection",
                    name: "crm".to_owned(),
                    users: vec!["weekly".to_owned()],
                    remedy: Remedy::Force,
                },
                "--force",
            ),
            (ServiceError::ConsentRequired, "--accept-data-transfer"),
            (
                ServiceError::NoDatabase,
                "--database URL or --database-env VAR",
            ),
            (
                ServiceError::DatabaseEnvUnset {
                    var: "CRM_DB".to_owned(),
                },
                "--database-env",
            ),
            (
                ServiceError::BadFieldMapping {
                    text: "x".to_owned(),
                },
                "--field",
            ),
            (ServiceError::MissingEmailColumn, "--email"),
            (ServiceError::NoSegment, "--segment"),
            (ServiceError::InvalidListId(0), "--list 0"),
            (ServiceError::BadSchedule(schedule), "--schedule: "),
            (
                ServiceError::BadTimezone(Schedule::parse_tz("Mars/Olympus").expect_err("no zone")),
                "--timezone: ",
            ),
            (
                ServiceError::SegmentPatchMismatch {
                    segment: "vips".to_owned(),
                    problem: PatchMismatch::Empty,
                },
                "--csv, --jsonl, --sql, --delimiter",
            ),
            (
                ServiceError::SegmentPatchMismatch {
                    segment: "vips".to_owned(),
                    problem: PatchMismatch::DelimiterNotCsv {
                        kind: SegmentKind::Jsonl,
                    },
                },
                "--delimiter applies only to a CSV file, and the segment would read a JSONL file",
            ),
            (
                ServiceError::SegmentPatchMismatch {
                    segment: "vips".to_owned(),
                    problem: PatchMismatch::DatabaseNotSql {
                        kind: SegmentKind::Csv,
                    },
                },
                "--database, --database-env and --database-stdin apply only to an SQL query",
            ),
            (
                ServiceError::SegmentPatchMismatch {
                    segment: "vips".to_owned(),
                    problem: PatchMismatch::QueryWithoutDatabase {
                        kind: SegmentKind::Csv,
                    },
                },
                "--sql needs --database URL, --database-env VAR or --database-stdin",
            ),
            (
                ServiceError::ColumnsStillMapped {
                    segment: "vips".to_owned(),
                    missing: vec![ColumnInUse {
                        export: "weekly".to_owned(),
                        field: MappedField::Custom(3),
                        column: "tier".to_owned(),
                    }],
                },
                "`acexport export update`",
            ),
            (
                ServiceError::UnknownColumn {
                    field: MappedField::FirstName,
                    column: "first".to_owned(),
                    segment: "vips".to_owned(),
                    columns: vec!["email".to_owned()],
                },
                "--first-name",
            ),
            (
                ServiceError::NotExportableColumn {
                    field: MappedField::Custom(2),
                    column: "photo".to_owned(),
                    segment: "vips".to_owned(),
                    column_type: Box::new(crate::source::ColumnType {
                        name: "BYTEA".to_owned(),
                        conversion: crate::source::Conversion::Refused {
                            reason: "binary data".to_owned(),
                        },
                    }),
                },
                "--field",
            ),
        ]
    }

    #[test]
    fn the_command_line_names_the_flag_that_fixes_each_refusal() {
        for (error, flag) in flagged() {
            let text = service_error_text(&error);
            assert!(text.contains(flag), "{flag} missing from {text:?}");
        }
    }

    #[test]
    fn the_service_itself_names_no_flag() {
        for (error, _) in flagged() {
            let text = error.to_string();
            assert!(!text.contains("--"), "{text:?}");
        }
    }

    #[test]
    fn a_refusal_reads_as_it_did_before_the_service_named_its_own_terms() {
        let in_use = ServiceError::InUse {
            kind: "connection",
            name: "crm".to_owned(),
            users: vec!["daily".to_owned(), "weekly".to_owned()],
            remedy: Remedy::Force,
        };
        assert_eq!(
            service_error_text(&in_use),
            "connection \"crm\" is used by export(s) daily, weekly; remove them first, or pass \
             --force to remove them with the connection"
        );
        let column = ServiceError::UnknownColumn {
            field: MappedField::Custom(12),
            column: "tier".to_owned(),
            segment: "vips".to_owned(),
            columns: vec!["email".to_owned(), "name".to_owned()],
        };
        assert_eq!(
            service_error_text(&column),
            "segment \"vips\" has no column \"tier\" (mapped by --field); its columns are: \
             email, name"
        );
    }

    #[test]
    fn a_refusal_lists_an_excerpt_of_the_file_s_column_names_escaped() {
        let mut columns: Vec<String> = (0..30).map(|i| format!("c{i}")).collect();
        columns[0] = format!("{}\u{1b}[2J", "n".repeat(1000));
        let column = ServiceError::UnknownColumn {
            field: MappedField::Email,
            column: "mail".to_owned(),
            segment: "vips".to_owned(),
            columns,
        };

        let text = service_error_text(&column);

        assert!(text.len() < 400, "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.ends_with(", c19 and 10 more"), "{text}");
    }

    #[test]
    fn the_chain_of_a_schedule_error_does_not_repeat_the_cause() {
        let schedule = Schedule::parse("61 * * * *", chrono_tz::UTC).expect_err("bad minute");
        let cause = schedule.to_string();
        let error = CliError::from(ServiceError::BadSchedule(schedule));
        assert_eq!(
            super::super::error_chain(&error),
            format!("--schedule: {cause}")
        );
    }
}
