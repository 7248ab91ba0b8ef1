//! `acexport runs` and `acexport runs show RUN_ID`: the run history, with the profiles a run
//! rejected or ActiveCampaign refused (emails masked).

use clap::{Args, Subcommand};

use super::CliError;
use super::output::{self, NONE, Table};
use crate::service::runs::{RunsQuery, run_duration};
use crate::service::{Context, RunRecord};

/// Runs listed unless `--limit` says otherwise.
const DEFAULT_RUNS: u32 = 20;
/// Most runs one listing shows.
pub(super) const MAX_RUNS: u32 = 1000;
/// Most rejected, failed and suppressed profiles `runs show` prints: enough to see the pattern.
const MAX_ISSUES_SHOWN: u32 = 200;

#[derive(Debug, Args, serde::Serialize, serde::Deserialize)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RunsArgs {
    #[command(subcommand)]
    pub command: Option<RunsCommand>,
    /// Only runs of this export
    #[arg(long, value_name = "NAME")]
    pub export: Option<String>,
    /// How many runs, latest first
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RUNS,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_RUNS)))]
    pub limit: u32,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunsCommand {
    /// One run with its counts and the profiles it rejected, failed or found suppressed
    Show {
        run_id: i64,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(ctx: &Context, args: RunsArgs) -> Result<(), CliError> {
    match args.command {
        Some(RunsCommand::Show { run_id, json }) => show(ctx, run_id, json).await,
        None => {
            let query = RunsQuery {
                export: args.export,
                limit: args.limit,
            };
            list(ctx, &query, args.json).await
        }
    }
}

async fn list(ctx: &Context, query: &RunsQuery, json: bool) -> Result<(), CliError> {
    let runs = ctx.list_runs(query).await?;
    if json {
        return output::emit_json(&runs);
    }
    if runs.is_empty() {
        return output::emit(match query.export {
            Some(_) => "No runs of this export yet.",
            None => "No runs yet.",
        });
    }
    let mut table = Table::new([
        "ID",
        "EXPORT",
        "TRIGGER",
        "STATUS",
        "STARTED",
        "DURATION",
        "READ",
        "UPSERTED",
        "UNSUBSCRIBED",
        "REJECTED",
        "SUPPRESSED",
        "FAILED",
        "ERROR",
    ]);
    for r in &runs {
        let c = &r.counts;
        table.row(vec![
            r.id.to_string(),
            r.export.clone(),
            trigger_text(r),
            r.status.to_string(),
            r.started_at.clone(),
            duration_text(r),
            c.rows_read.to_string(),
            c.upserted.to_string(),
            c.unsubscribed.to_string(),
            c.rejected.to_string(),
            c.suppressed.to_string(),
            c.failed.to_string(),
            output::or_none(r.error.as_deref()),
        ]);
    }
    output::emit(&table.render())
}

async fn show(ctx: &Context, run_id: i64, json: bool) -> Result<(), CliError> {
    let detail = ctx.show_run(run_id, MAX_ISSUES_SHOWN).await?;
    if json {
        return output::emit_json(&detail);
    }
    let (run, issues) = (detail.run, detail.issues);
    let c = &run.counts;
    let mut text = output::fields(&[
        ("run", run.id.to_string()),
        ("export", run.export.clone()),
        ("trigger", trigger_text(&run)),
        ("requested by", output::or_none(run.requested_by.as_deref())),
        ("status", run.status.to_string()),
        ("phase", run.phase.clone()),
        ("started", run.started_at.clone()),
        ("finished", output::or_none(run.finished_at.as_deref())),
        ("duration", duration_text(&run)),
        (
            "resumes run",
            run.resumes_run_id
                .map_or_else(|| NONE.to_owned(), |id| id.to_string()),
        ),
        ("rows read", c.rows_read.to_string()),
        ("rejected", c.rejected.to_string()),
        ("duplicates", c.duplicates.to_string()),
        ("unchanged", c.unchanged.to_string()),
        ("planned", c.planned.to_string()),
        ("sent", c.sent.to_string()),
        ("upserted", c.upserted.to_string()),
        ("unsubscribed", c.unsubscribed.to_string()),
        ("suppressed", c.suppressed.to_string()),
        ("failed", c.failed.to_string()),
        ("requests", c.requests.to_string()),
        ("error", output::or_none(run.error.as_deref())),
    ]);
    if !issues.is_empty() {
        text.push_str("\nRejected, failed and suppressed profiles");
        if issues.len() == MAX_ISSUES_SHOWN as usize {
            text.push_str(&format!(
                " (first {MAX_ISSUES_SHOWN}; --json for the same list)"
            ));
        }
        text.push_str(":\n");
        let mut table = Table::new(["KIND", "SOURCE", "ROW", "EMAIL", "REASON"]);
        for issue in &issues {
            table.row(vec![
                issue.kind.to_string(),
                issue.source.clone(),
                issue.row.map_or_else(|| NONE.to_owned(), |n| n.to_string()),
                output::or_none(issue.email.as_deref()),
                issue.reason.clone(),
            ]);
        }
        text.push_str(&table.render());
    }
    output::emit(&text)
}

fn trigger_text(r: &RunRecord) -> String {
    if r.full {
        format!("{} (full)", r.trigger)
    } else {
        r.trigger.to_string()
    }
}

/// Finished runs: start to finish. A run in progress: time so far.
fn duration_text(r: &RunRecord) -> String {
    run_duration(r, chrono::Utc::now()).map_or_else(
        || NONE.to_owned(),
        |d| human_duration(d.num_milliseconds().max(0)),
    )
}

/// `850ms`, `12.3s`, `4m05s`, `2h03m`.
fn human_duration(ms: i64) -> String {
    let secs = ms / 1000;
    if ms < 1000 {
        format!("{ms}ms")
    } else if secs < 60 {
        format!("{}.{}s", secs, (ms % 1000) / 100)
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_shown_in_the_largest_sensible_unit() {
        assert_eq!(human_duration(850), "850ms");
        assert_eq!(human_duration(12_345), "12.3s");
        assert_eq!(human_duration(245_000), "4m05s");
        assert_eq!(human_duration(7_380_000), "2h03m");
    }
}
