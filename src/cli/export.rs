//! `acexport export ...`: export definitions (which segments go to which list, with which
//! columns). Saving checks the definition against ActiveCampaign but sends no profiles; running
//! is `acexport export run` (see `run.rs`), the schedule, or the daemon's trigger.

use clap::{Args, Subcommand, ValueEnum};

use super::output::{self, NONE, Table};
use super::{CliError, run::ExportRunArgs};
use crate::service::exports::{ExportInput, ExportPatch, ExportView, parse_field_mapping};
use crate::service::{Context, OnLeave, RunRecord};
use crate::settings::Settings;

#[derive(Debug, Subcommand, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportCommand {
    /// Define an export (checked against ActiveCampaign; nothing is sent)
    Add(AddArgs),
    /// List exports
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show one export
    Show {
        name: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Change an export; options not given keep their value
    Update(UpdateArgs),
    /// Let the schedule and triggers run an export
    Enable { name: String },
    /// Stop the schedule and triggers from running an export
    Disable { name: String },
    /// Remove an export and its delivery state (list members stay in ActiveCampaign)
    Remove { name: String },
    /// Run an export now, in this process
    Run(ExportRunArgs),
}

/// What happens to list members who left every segment of the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum OnLeaveArg {
    /// Leave them on the list
    Keep,
    /// Unsubscribe them from the list
    Unsubscribe,
}

impl From<OnLeaveArg> for OnLeave {
    fn from(arg: OnLeaveArg) -> OnLeave {
        match arg {
            OnLeaveArg::Keep => OnLeave::Keep,
            OnLeaveArg::Unsubscribe => OnLeave::Unsubscribe,
        }
    }
}

#[derive(Debug, Args, serde::Serialize, serde::Deserialize)]
pub struct AddArgs {
    /// Name of the export (up to 100 characters)
    pub name: String,
    /// Connection to the ActiveCampaign account
    #[arg(long, value_name = "NAME")]
    pub connection: String,
    /// ActiveCampaign list ID (Lists > the list's URL shows it)
    #[arg(long = "list", value_name = "LIST_ID")]
    pub list_id: i64,
    /// Segment whose profiles join the list; repeat for several
    #[arg(long = "segment", value_name = "NAME", required = true)]
    pub segments: Vec<String>,
    /// Column holding the email address
    #[arg(long, value_name = "COLUMN")]
    pub email: String,
    /// Column for the first name
    #[arg(long, value_name = "COLUMN")]
    pub first_name: Option<String>,
    /// Column for the last name
    #[arg(long, value_name = "COLUMN")]
    pub last_name: Option<String>,
    /// Column for the phone number
    #[arg(long, value_name = "COLUMN")]
    pub phone: Option<String>,
    /// Custom field mapping, e.g. 12=loyalty_tier; repeat for several
    #[arg(long = "field", value_name = "AC_FIELD_ID=COLUMN")]
    pub fields: Vec<String>,
    /// Tag added to every exported contact; repeat for several
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Own cron schedule (else the refresh schedule of the settings)
    #[arg(long, value_name = "CRON")]
    pub schedule: Option<String>,
    /// IANA time zone the schedule is read in, e.g. Europe/Berlin (else schedule.timezone)
    #[arg(long, value_name = "ZONE")]
    pub timezone: Option<String>,
    /// What happens to members who left every segment
    #[arg(long, value_enum, value_name = "keep|unsubscribe", default_value_t = OnLeaveArg::Keep)]
    pub on_leave: OnLeaveArg,
}

#[derive(Debug, Args, serde::Serialize, serde::Deserialize)]
pub struct UpdateArgs {
    /// Name of the export
    pub name: String,
    /// Connection to the ActiveCampaign account
    #[arg(long, value_name = "NAME")]
    pub connection: Option<String>,
    /// ActiveCampaign list ID
    #[arg(long = "list", value_name = "LIST_ID")]
    pub list_id: Option<i64>,
    /// Replaces the segments; repeat for several
    #[arg(long = "segment", value_name = "NAME")]
    pub segments: Option<Vec<String>>,
    /// Column holding the email address
    #[arg(long, value_name = "COLUMN")]
    pub email: Option<String>,
    /// Column for the first name
    #[arg(long, value_name = "COLUMN", conflicts_with = "no_first_name")]
    pub first_name: Option<String>,
    /// Column for the last name
    #[arg(long, value_name = "COLUMN", conflicts_with = "no_last_name")]
    pub last_name: Option<String>,
    /// Column for the phone number
    #[arg(long, value_name = "COLUMN", conflicts_with = "no_phone")]
    pub phone: Option<String>,
    /// Replaces the custom field mappings; repeat for several
    #[arg(long = "field", value_name = "AC_FIELD_ID=COLUMN")]
    pub fields: Option<Vec<String>>,
    /// Replaces the tags; repeat for several
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Option<Vec<String>>,
    /// Own cron schedule
    #[arg(long, value_name = "CRON", conflicts_with = "no_schedule")]
    pub schedule: Option<String>,
    /// IANA time zone the schedule is read in, e.g. Europe/Berlin
    #[arg(long, value_name = "ZONE", conflicts_with = "no_timezone")]
    pub timezone: Option<String>,
    /// Drop the own time zone (read the schedule in schedule.timezone)
    #[arg(long)]
    pub no_timezone: bool,
    /// What happens to members who left every segment
    #[arg(long, value_enum, value_name = "keep|unsubscribe")]
    pub on_leave: Option<OnLeaveArg>,
    /// Drop the own schedule (run with the refresh schedule)
    #[arg(long)]
    pub no_schedule: bool,
    /// Stop sending the first name
    #[arg(long)]
    pub no_first_name: bool,
    /// Stop sending the last name
    #[arg(long)]
    pub no_last_name: bool,
    /// Stop sending the phone number
    #[arg(long)]
    pub no_phone: bool,
}

fn parse_fields(texts: &[String]) -> Result<Vec<(i64, String)>, CliError> {
    texts
        .iter()
        .map(|t| parse_field_mapping(t).map_err(CliError::from))
        .collect()
}

/// `Some(None)` clears a column, `Some(Some(c))` sets it, `None` keeps it.
fn column_change(value: Option<String>, clear: bool) -> Option<Option<String>> {
    if clear { Some(None) } else { value.map(Some) }
}

impl UpdateArgs {
    fn patch(self) -> Result<ExportPatch, CliError> {
        Ok(ExportPatch {
            connection: self.connection,
            list_id: self.list_id,
            segments: self.segments,
            email: self.email,
            first_name: column_change(self.first_name, self.no_first_name),
            last_name: column_change(self.last_name, self.no_last_name),
            phone: column_change(self.phone, self.no_phone),
            fields: self.fields.as_deref().map(parse_fields).transpose()?,
            tags: self.tags,
            schedule: column_change(self.schedule, self.no_schedule),
            timezone: column_change(self.timezone, self.no_timezone),
            on_leave: self.on_leave.map(OnLeave::from),
        })
    }
}

pub async fn run(ctx: &Context, cmd: ExportCommand) -> Result<(), CliError> {
    match cmd {
        ExportCommand::Add(args) => {
            let input = ExportInput {
                fields: parse_fields(&args.fields)?,
                name: args.name,
                connection: args.connection,
                list_id: args.list_id,
                segments: args.segments,
                email: args.email,
                first_name: args.first_name,
                last_name: args.last_name,
                phone: args.phone,
                tags: args.tags,
                schedule: args.schedule,
                timezone: args.timezone,
                on_leave: args.on_leave.into(),
                enabled: true,
            };
            let view = ctx.add_export(input).await?;
            output::emit(&format!(
                "{}\n{}",
                describe(&view, &ctx.settings),
                saved_note(&view, &ctx.settings)
            ))
        }
        ExportCommand::List { json } => {
            let views = ctx.list_exports().await?;
            if json {
                return output::emit_json(&views);
            }
            if views.is_empty() {
                return output::emit(
                    "No exports. Add one with: acexport export add NAME --connection C --list \
                     LIST_ID --segment S --email COLUMN",
                );
            }
            let mut table = Table::new([
                "NAME",
                "CONNECTION",
                "LIST",
                "SEGMENTS",
                "SCHEDULE",
                "ENABLED",
                "LAST RUN",
            ]);
            for v in &views {
                let d = &v.def;
                table.row(vec![
                    d.name.clone(),
                    d.connection.clone(),
                    format!("{} ({})", d.list_name, d.list_id),
                    segment_names(v).join(", "),
                    schedule_text(v, &ctx.settings),
                    if d.enabled { "yes" } else { "no" }.to_owned(),
                    last_run_text(v.last_run.as_ref()),
                ]);
            }
            output::emit(&table.render())
        }
        ExportCommand::Show { name, json } => {
            let view = ctx.show_export(&name).await?;
            if json {
                output::emit_json(&view)
            } else {
                output::emit(&describe(&view, &ctx.settings))
            }
        }
        ExportCommand::Update(args) => {
            let name = args.name.clone();
            let view = ctx.update_export(&name, args.patch()?).await?;
            output::emit(&format!(
                "Export {name:?} updated.\n{}",
                describe(&view, &ctx.settings)
            ))
        }
        ExportCommand::Enable { name } => {
            ctx.set_export_enabled(&name, true).await?;
            output::emit(&format!(
                "Export {name:?} enabled: the schedule and triggers run it again."
            ))
        }
        ExportCommand::Disable { name } => {
            ctx.set_export_enabled(&name, false).await?;
            output::emit(&format!(
                "Export {name:?} disabled: the schedule and triggers skip it until `acexport \
                 export enable {name}`."
            ))
        }
        ExportCommand::Remove { name } => {
            ctx.remove_export(&name).await?;
            output::emit(&format!(
                "Export {name:?} removed with its delivery state; its contacts stay in \
                 ActiveCampaign."
            ))
        }
        ExportCommand::Run(args) => super::run::export_run(ctx, args).await,
    }
}

fn segment_names(v: &ExportView) -> Vec<String> {
    v.def.segments.iter().map(|s| s.name.clone()).collect()
}

/// The time zone the export's schedule is read in: its own, else the settings'.
fn timezone<'a>(v: &'a ExportView, settings: &'a Settings) -> &'a str {
    v.def
        .timezone
        .as_deref()
        .unwrap_or(&settings.schedule.timezone)
}

/// When the export runs without being asked.
fn schedule_text(v: &ExportView, settings: &Settings) -> String {
    let tz = timezone(v, settings);
    match (&v.def.schedule, &settings.schedule.refresh) {
        (Some(cron), _) => format!("{cron} ({tz})"),
        (None, Some(refresh)) => format!("refresh: {refresh} ({tz})"),
        (None, None) => "on demand".to_owned(),
    }
}

/// Saving runs nothing; say when it will run.
fn saved_note(v: &ExportView, settings: &Settings) -> String {
    let name = &v.def.name;
    let tz = timezone(v, settings);
    let when = match (&v.def.schedule, &settings.schedule.refresh) {
        (Some(cron), _) => format!("on its schedule ({cron}, {tz})"),
        (None, Some(refresh)) => format!("with the refresh schedule ({refresh}, {tz})"),
        (None, None) => "on demand".to_owned(),
    };
    let when = if v.def.enabled {
        when
    } else {
        "only on demand while disabled".to_owned()
    };
    format!(
        "Saved; nothing was sent yet. It runs {when}, or now with: acexport export run {}",
        output::shell_word(name)
    )
}

fn last_run_text(run: Option<&RunRecord>) -> String {
    match run {
        Some(r) => format!("#{} {} {}", r.id, r.status, r.started_at),
        None => NONE.to_owned(),
    }
}

fn describe(v: &ExportView, settings: &Settings) -> String {
    let d = &v.def;
    let fields: Vec<String> = d
        .fields
        .iter()
        .map(|f| format!("{} <- {}", f.field_id, f.column))
        .collect();
    output::fields(&[
        ("name", d.name.clone()),
        ("connection", d.connection.clone()),
        ("list", format!("{} ({})", d.list_name, d.list_id)),
        ("segments", segment_names(v).join(", ")),
        ("email", d.email_column.clone()),
        (
            "first name",
            output::or_none(d.first_name_column.as_deref()),
        ),
        ("last name", output::or_none(d.last_name_column.as_deref())),
        ("phone", output::or_none(d.phone_column.as_deref())),
        ("fields", output::list_or_none(&fields)),
        ("tags", output::list_or_none(&d.tags)),
        ("on leave", d.on_leave.as_str().to_owned()),
        ("schedule", schedule_text(v, settings)),
        (
            "time zone",
            match &d.timezone {
                Some(zone) => zone.clone(),
                None => format!("{} (schedule.timezone)", settings.schedule.timezone),
            },
        ),
        ("enabled", if d.enabled { "yes" } else { "no" }.to_owned()),
        ("last run", last_run_text(v.last_run.as_ref())),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clear_flag_wins_over_keeping_a_column() {
        assert_eq!(column_change(None, true), Some(None));
        assert_eq!(column_change(None, false), None);
        assert_eq!(
            column_change(Some("tel".to_owned()), false),
            Some(Some("tel".to_owned()))
        );
    }
}
