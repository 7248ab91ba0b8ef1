//! Commands that run exports, hand them to the daemon, stop them or show what runs:
//! `export run`, `trigger`, `cancel` and `status`. The service decides where a run goes
//! (handed to the daemon when one is up) and follows it; this file draws the progress, handles
//! Ctrl-C and prints.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{ArgGroup, Args};
use serde_json::json;

use super::errors::service_error_text;
use super::output::{self, Table};
use super::{CliError, Worded};
use crate::service::runs::{CancelOutcome, RunError, RunRequest, RunRoute, TriggerTarget};
use crate::service::status::status_report;
use crate::service::{Context, Progress, RunCounts, RunOutcome, RunStatus};
use crate::settings::Loaded;

/// Exit status of a run that finished `partial` (some contacts failed).
pub const EXIT_PARTIAL: u8 = 2;
/// Who asks, in the signal file `export run` hands to the daemon.
const EXPORT_RUN_ORIGIN: &str = "acexport export run";

#[derive(Debug, Args, serde::Serialize, serde::Deserialize)]
pub struct ExportRunArgs {
    /// Name of the export
    pub name: String,
    /// Read, check and plan, but send nothing to ActiveCampaign
    #[arg(long)]
    pub dry_run: bool,
    /// Send every profile again, not only new and changed ones
    #[arg(long)]
    pub full: bool,
    /// Print the outcome as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, serde::Serialize, serde::Deserialize)]
#[command(group(ArgGroup::new("target").required(true).args(["name", "all"])))]
pub struct TriggerArgs {
    /// Name of the export to run
    pub name: Option<String>,
    /// Run every enabled export
    #[arg(long)]
    pub all: bool,
    /// Send every profile again, not only new and changed ones
    #[arg(long)]
    pub full: bool,
}

#[derive(Debug, Args, serde::Serialize, serde::Deserialize)]
pub struct CancelArgs {
    /// Name of the export whose run should stop
    pub name: String,
}

#[derive(Debug, Args, serde::Serialize, serde::Deserialize)]
pub struct StatusArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// A one-line progress display on stderr, redrawn at most ten times a second.
pub struct TerminalProgress {
    last: Mutex<Option<Instant>>,
}

impl TerminalProgress {
    /// A display when stderr is a terminal, else nothing.
    pub fn for_stderr() -> Arc<dyn Progress> {
        if output::stderr_is_terminal() {
            Arc::new(TerminalProgress {
                last: Mutex::new(None),
            })
        } else {
            Arc::new(crate::service::Silent)
        }
    }

    pub fn finish() {
        if output::stderr_is_terminal() {
            output::note("\r\x1b[2K");
        }
    }
}

impl Progress for TerminalProgress {
    fn report(&self, phase: &str, c: &RunCounts) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) {
            return;
        }
        *last = Some(Instant::now());
        output::note(&format!("\r\x1b[2K{}", progress_line(phase, c)));
    }
}

/// `[sending ████████░░░░ 66%] read 3,000 · planned 2,940 · sent 2,000 · confirmed 1,940`
pub fn progress_line(phase: &str, c: &RunCounts) -> String {
    let confirmed = c.upserted + c.unsubscribed + c.failed + c.suppressed;
    let bar = if c.planned > 0 && phase != "reading" {
        let done = (confirmed as f64 / c.planned as f64).min(1.0);
        let filled = (done * 20.0).round() as usize;
        format!(
            " {}{} {:>3.0}%",
            "█".repeat(filled),
            "░".repeat(20 - filled),
            done * 100.0
        )
    } else {
        String::new()
    };
    format!(
        "[{phase}{bar}] read {} · planned {} · sent {} · confirmed {}",
        thousands(c.rows_read),
        thousands(c.planned),
        thousands(c.sent),
        thousands(confirmed)
    )
}

pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The JSON object `export run --json` prints.
pub fn outcome_json(o: &RunOutcome) -> serde_json::Value {
    let c = &o.counts;
    let mut value = json!({
        "run_id": o.run_id,
        "export": o.export,
        "status": o.status,
        "counts": {
            "rows_read": c.rows_read, "rejected": c.rejected, "duplicates": c.duplicates,
            "unchanged": c.unchanged, "sent": c.sent, "upserted": c.upserted,
            "unsubscribed": c.unsubscribed, "suppressed": c.suppressed, "failed": c.failed,
        },
        "error": o.error,
    });
    if let Some(plan) = &o.plan {
        value["plan"] = json!(plan);
    }
    value
}

/// The human summary of a run.
pub fn outcome_text(o: &RunOutcome) -> String {
    let c = &o.counts;
    let mut out = match o.run_id {
        Some(id) => format!(
            "Run {id} of {}: {} in {:.1} s\n",
            o.export, o.status, o.seconds
        ),
        None => format!("Dry run of {}: nothing was sent\n", o.export),
    };
    if let Some(plan) = &o.plan {
        out.push_str(&format!(
            "  would add {}, update {}, leave {} unchanged and {} suppressed, unsubscribe {}, \
             forget {} who left\n  rejected {}, duplicates {}\n",
            thousands(plan.adds),
            thousands(plan.updates),
            thousands(plan.unchanged),
            thousands(plan.suppressed),
            thousands(plan.unsubscribes),
            thousands(plan.forgotten),
            thousands(plan.rejected),
            thousands(plan.duplicates)
        ));
        if !plan.sample_rejects.is_empty() {
            let mut table = Table::new(["SOURCE", "ROW", "EMAIL", "REASON"]);
            for r in &plan.sample_rejects {
                table.row(vec![
                    r.source.clone(),
                    r.row.map(|n| n.to_string()).unwrap_or_default(),
                    r.email.clone().unwrap_or_else(|| output::NONE.to_owned()),
                    r.reason.clone(),
                ]);
            }
            out.push_str("  rejected rows (first ones):\n");
            for line in table.render().lines() {
                out.push_str("    ");
                out.push_str(line);
                out.push('\n');
            }
        }
    } else {
        out.push_str(&format!(
            "  read {} · rejected {} · duplicates {} · unchanged {} · upserted {} · unsubscribed \
             {} · suppressed {} · failed {} · requests {}\n",
            thousands(c.rows_read),
            thousands(c.rejected),
            thousands(c.duplicates),
            thousands(c.unchanged),
            thousands(c.upserted),
            thousands(c.unsubscribed),
            thousands(c.suppressed),
            thousands(c.failed),
            thousands(c.requests)
        ));
    }
    if let Some(error) = &o.error {
        out.push_str(&format!("  error: {error}\n"));
    }
    if let Some(id) = o
        .run_id
        .filter(|_| c.rejected + c.failed + c.suppressed > 0)
    {
        out.push_str(&format!(
            "  The rejected, failed and suppressed profiles, with reasons: acexport runs show \
             {id}\n"
        ));
    }
    out
}

fn exit_for(status: RunStatus) -> Result<(), CliError> {
    match status {
        RunStatus::Succeeded => Ok(()),
        RunStatus::Partial => Err(CliError::Quiet(EXIT_PARTIAL)),
        _ => Err(CliError::Quiet(super::EXIT_FAILURE)),
    }
}

fn print_outcome(o: &RunOutcome, as_json: bool) -> Result<(), CliError> {
    if as_json {
        output::emit_json(&outcome_json(o))
    } else {
        output::emit(&outcome_text(o))
    }
}

/// `acexport export run NAME` in a context already open (the daemon's, for a client), with
/// `--json` printing the one object on failure too.
pub async fn export_run_reporting(ctx: &Context, args: ExportRunArgs) -> Result<(), CliError> {
    let json = args.json;
    let export = args.name.clone();
    match export_run(ctx, args).await {
        Err(error) if json && !matches!(error, CliError::Quiet(_) | CliError::Output(_)) => {
            output::emit_json(&failure_json(&export, &error))?;
            Err(error)
        }
        other => other,
    }
}

/// `acexport export run NAME` from the opening of the store on. With `--json`, a failure that
/// has no outcome to print (the store cannot be opened, the run cannot start or cannot record
/// its finish) is printed as the one object too, with its message (also said on stderr).
pub async fn export_run_command(loaded: Loaded, args: ExportRunArgs) -> Result<(), CliError> {
    let json = args.json;
    let export = args.name.clone();
    let result = super::with_context(loaded, async |ctx| export_run(ctx, args).await).await;
    match result {
        Err(error) if json && !matches!(error, CliError::Quiet(_) | CliError::Output(_)) => {
            output::emit_json(&failure_json(&export, &error))?;
            Err(error)
        }
        other => other,
    }
}

/// The object `export run --json` prints for a failure: the outcome a run that could not record
/// its finish would have recorded, else no run and no counts.
fn failure_json(export: &str, error: &CliError) -> serde_json::Value {
    let message = super::error_chain(error);
    if let CliError::Run(Worded(RunError::Pipeline(e))) = error
        && let Some(outcome) = e.unfinished_outcome()
    {
        let mut value = outcome_json(outcome);
        value["error"] = json!(message);
        return value;
    }
    json!({
        "run_id": null,
        "export": export,
        "status": RunStatus::Failed,
        "counts": null,
        "error": message,
    })
}

/// `acexport export run NAME`: in the foreground, or through the daemon when it runs.
pub async fn export_run(ctx: &Context, args: ExportRunArgs) -> Result<(), CliError> {
    let request = RunRequest {
        export: args.name,
        full: args.full,
        dry_run: args.dry_run,
        origin: EXPORT_RUN_ORIGIN.to_owned(),
    };
    let outcome = match ctx.route_run(request).await? {
        RunRoute::Here(run) => {
            // In the daemon (a remote dry run), its own signal handling stops the run.
            let signals = (!output::is_remote()).then(|| stop_on_termination(ctx));
            let result = ctx.run_here(run, TerminalProgress::for_stderr()).await;
            if let Some(signals) = signals {
                signals.abort();
            }
            TerminalProgress::finish();
            result?
        }
        RunRoute::HandedOver(hand_over) => {
            if !args.json {
                output::note(&format!(
                    "The daemon is running; the run of {} was handed to it. Following it here.\n",
                    hand_over.export
                ));
            }
            let progress = TerminalProgress::for_stderr();
            let result = ctx.follow_run(&hand_over, progress.as_ref()).await;
            TerminalProgress::finish();
            result?
        }
    };
    print_outcome(&outcome, args.json)?;
    exit_for(outcome.status)
}

/// Ctrl-C or SIGTERM stops a run in this process at the next batch boundary (the imports in
/// hand are confirmed and kept); a second one abandons them. Either way the run is resumable.
/// Abort the returned task when the run is over.
fn stop_on_termination(ctx: &Context) -> tokio::task::JoinHandle<()> {
    let control = ctx.control.clone();
    tokio::spawn(async move {
        crate::daemon::termination().await;
        eprintln!("\nStopping at the next batch boundary; press Ctrl-C again to stop at once.");
        control.shutdown();
        crate::daemon::termination().await;
        control.abort();
    })
}

/// The text `acexport` prints for a failed run operation.
pub fn run_error_text(e: &RunError) -> String {
    match e {
        RunError::Disabled {
            export,
            dry_run_allowed,
        } => {
            let mut text = format!(
                "export {export:?} is disabled; `acexport export enable {}` first",
                output::shell_word(export)
            );
            if *dry_run_allowed {
                text.push_str(" (a --dry-run works on a disabled export)");
            }
            text
        }
        RunError::DaemonStopped { export, run_id } => format!(
            "the daemon stopped while running {export} (run {run_id}); the run resumes when it \
             starts again (see `acexport status`)"
        ),
        RunError::HandOverTimedOut { export, waited } => format!(
            "the daemon did not pick up the run of {export} within {} s; check `acexport \
             status` and its log",
            waited.as_secs()
        ),
        RunError::RunNotFound { id } => {
            format!("run {id} does not exist; `acexport runs` lists the recent runs")
        }
        RunError::Service(e) => service_error_text(e),
        RunError::Trigger(_) | RunError::Pipeline(_) | RunError::Store(_) => e.to_string(),
    }
}

/// `acexport trigger NAME|--all`: drops a signal file for the daemon.
pub async fn trigger(ctx: &Context, args: TriggerArgs) -> Result<(), CliError> {
    let target = match args.name {
        Some(name) => TriggerTarget::Export(name),
        None => TriggerTarget::All,
    };
    let triggered = ctx.trigger_run(target, args.full).await?;
    let mut text = match &triggered.signal_file {
        Some(file) => format!("Signal file written: {}\n", file.display()),
        None => "The daemon queued the run.\n".to_owned(),
    };
    if triggered.daemon_up {
        text.push_str(
            "The daemon picks it up within a second; follow it with `acexport status`.\n",
        );
    } else {
        text.push_str(
            "No daemon is running on this database: the request waits until it starts.\n",
        );
    }
    output::emit(&text)
}

/// `acexport cancel NAME`.
pub async fn cancel(ctx: &Context, args: CancelArgs) -> Result<(), CliError> {
    match ctx.cancel_run(&args.name).await? {
        CancelOutcome::Stopping { export, run_id } => output::emit(&format!(
            "Cancel requested: run {run_id} of {export} stops at its next batch boundary."
        )),
        CancelOutcome::Dequeued { export } => {
            output::emit(&format!("The queued run of {export} was removed."))
        }
        CancelOutcome::NothingToCancel { export } => Err(CliError::NothingToCancel { export }),
    }
}

/// `acexport status`.
pub async fn status(ctx: &Context, args: StatusArgs) -> Result<(), CliError> {
    let report = status_report(ctx).await?;
    if args.json {
        return output::emit_json(&report);
    }
    let mut out = String::new();
    match &report.daemon.state {
        Some(state) if report.daemon.up => out.push_str(&format!(
            "Daemon: up (pid {}, since {}); {}\n",
            state.pid, state.started_at, state.status
        )),
        _ => out.push_str("Daemon: not running\n"),
    }
    if report.running.is_empty() {
        out.push_str("Running: none\n");
    } else {
        out.push_str("Running:\n");
        for run in &report.running {
            out.push_str(&format!(
                "  {} (run {}, {}): {}\n",
                run.export,
                run.id,
                run.trigger,
                progress_line(&run.phase, &run.counts)
            ));
        }
    }
    if report.queued.is_empty() {
        out.push_str("Queued: none\n");
    } else {
        out.push_str("Queued:\n");
        for q in &report.queued {
            out.push_str(&format!(
                "  {} ({}, since {})\n",
                q.export, q.trigger, q.requested_at
            ));
        }
    }
    let mut table = Table::new(["EXPORT", "ENABLED", "SCHEDULE", "NEXT RUN", "LAST RUN"]);
    for e in &report.exports {
        let last = e.last_run.as_ref().map_or_else(
            || output::NONE.to_owned(),
            |r| {
                format!(
                    "{} {} ({})",
                    r.id,
                    r.status,
                    r.finished_at.as_deref().unwrap_or(&r.started_at)
                )
            },
        );
        table.row(vec![
            e.name.clone(),
            if e.enabled { "yes" } else { "no" }.to_owned(),
            e.schedule.clone().unwrap_or_else(|| "on demand".to_owned()),
            e.next_run
                .map_or_else(|| output::NONE.to_owned(), |n| n.to_string()),
            last,
        ]);
    }
    out.push_str(&table.render());
    output::emit(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }

    #[test]
    fn the_disabled_refusal_suggests_a_dry_run_only_where_one_works() {
        let run = RunError::Disabled {
            export: "weekly".to_owned(),
            dry_run_allowed: true,
        };
        assert_eq!(
            run_error_text(&run),
            "export \"weekly\" is disabled; `acexport export enable weekly` first (a --dry-run \
             works on a disabled export)"
        );
        let trigger = RunError::Disabled {
            export: "weekly".to_owned(),
            dry_run_allowed: false,
        };
        assert_eq!(
            run_error_text(&trigger),
            "export \"weekly\" is disabled; `acexport export enable weekly` first"
        );
    }

    #[test]
    fn a_follow_that_fails_tells_where_to_look_next() {
        let stopped = RunError::DaemonStopped {
            export: "weekly".to_owned(),
            run_id: 4,
        };
        assert_eq!(
            run_error_text(&stopped),
            "the daemon stopped while running weekly (run 4); the run resumes when it starts \
             again (see `acexport status`)"
        );
        let late = RunError::HandOverTimedOut {
            export: "weekly".to_owned(),
            waited: Duration::from_secs(30),
        };
        assert_eq!(
            run_error_text(&late),
            "the daemon did not pick up the run of weekly within 30 s; check `acexport status` \
             and its log"
        );
    }

    #[test]
    fn an_idle_export_cannot_be_cancelled_and_the_command_fails() {
        let err = CliError::NothingToCancel {
            export: "weekly".to_owned(),
        };
        assert_eq!(
            err.to_string(),
            "export \"weekly\" is neither queued nor running"
        );
        assert_eq!(err.exit_code(), super::super::EXIT_FAILURE);
    }

    #[test]
    fn the_json_outcome_has_exactly_the_documented_counts() {
        let o = RunOutcome {
            run_id: Some(3),
            export: "e".into(),
            status: RunStatus::Partial,
            counts: RunCounts {
                rows_read: 5,
                failed: 1,
                ..RunCounts::default()
            },
            error: None,
            failure: None,
            plan: None,
            seconds: 1.0,
        };
        let v = outcome_json(&o);
        let mut keys: Vec<&str> = v["counts"]
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "duplicates",
                "failed",
                "rejected",
                "rows_read",
                "sent",
                "suppressed",
                "unchanged",
                "unsubscribed",
                "upserted"
            ]
        );
        assert_eq!(v["status"], "partial");
        assert_eq!(v["run_id"], 3);
    }
}
