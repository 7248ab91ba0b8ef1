//! `acexport demo`: the whole product in one command, safely. In a temporary folder it starts
//! the built-in sandbox (with ActiveCampaign's real limits), writes a sample segment of a few
//! thousand synthetic profiles (some invalid, some duplicated), defines a connection, a segment
//! and an export, runs the export, then runs it again to show that nothing unchanged is sent.
//! The folder, settings and sandbox are a [`World`], as in the integration tests.

use std::fmt::Write as _;

use super::CliError;
use super::output;
use super::run::{TerminalProgress, outcome_text};
use crate::sandbox::SandboxOptions;
use crate::sandbox::world::{World, WorldError, export_input};
use crate::service::exports::ExportInput;
use crate::service::runs::RunsQuery;
use crate::service::{RunOptions, RunStatus, TriggerKind};
use crate::settings::Loaded;

/// Profiles in the sample segment.
const PROFILES: usize = 3_000;
/// Rows with an address ActiveCampaign would refuse.
const INVALID: usize = 25;
/// Rows repeating an earlier address (in another letter case).
const DUPLICATES: usize = 40;

const FIRST: &[&str] = &[
    "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken",
];
const LAST: &[&str] = &[
    "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen",
];

/// The sample segment as CSV text.
fn sample_csv() -> String {
    let mut out = String::from("email,first_name,last_name,phone\n");
    for i in 0..PROFILES {
        let first = FIRST[i % FIRST.len()];
        let last = LAST[(i / FIRST.len()) % LAST.len()];
        let _ = writeln!(
            out,
            "{}.{}{i}@example.com,{first},{last},+1-555-{:04}",
            first.to_lowercase(),
            last.to_lowercase(),
            i % 10_000
        );
        if i < INVALID {
            let _ = writeln!(out, "broken-address-{i}.example.com,{first},{last},");
        }
        if i < DUPLICATES {
            let _ = writeln!(
                out,
                "{}.{}{i}@EXAMPLE.COM,{first},{last},",
                first.to_uppercase(),
                last.to_uppercase()
            );
        }
    }
    out
}

/// A demo world error as the CLI reports it: service errors worded with their flags, the
/// rest with their causes.
fn world_error(error: WorldError) -> CliError {
    match error {
        WorldError::Settings(e) => CliError::Settings(e),
        WorldError::Service(e) => CliError::from(e),
        other => CliError::World(other),
    }
}

pub async fn run(_loaded: Loaded) -> Result<(), CliError> {
    // ActiveCampaign's real limits and a token made up for this run (the sandbox's defaults):
    // a fixed token, public in this code, would open the sandbox's views to every local user
    // while the demo runs.
    let world = World::builder()
        .sandbox_options(SandboxOptions::default())
        .build()
        .await
        .map_err(world_error)?;
    let ctx = world.open_context().await.map_err(world_error)?;
    let control = ctx.control.clone();
    let signals = tokio::spawn(async move {
        crate::daemon::termination().await;
        control.shutdown();
    });

    output::emit(&format!(
        "acexport demo — everything happens in {} and against a sandbox on {}, never a real \
         account.\nThe sandbox enforces ActiveCampaign's limits: 5 requests/s and 100 bulk \
         imports/min.\n",
        world.dir.path().display(),
        world.host()
    ))?;
    let connection = world
        .add_connection(&ctx, "demo")
        .await
        .map_err(world_error)?;
    output::emit(&format!(
        "1. Connection `demo` verified (acexport connection add demo --host {} --api-key-stdin \
         --accept-data-transfer); key shown as {}.",
        world.host(),
        connection
            .details
            .as_ref()
            .map_or(output::NONE, |d| d.api_key.as_str())
    ))?;
    let segment = world
        .add_csv_segment(&ctx, "customers", &sample_csv())
        .await
        .map_err(world_error)?;
    output::emit(&format!(
        "2. Segment `customers`: {} rows ({} profiles, {} invalid addresses, {} duplicates).",
        segment.rows, PROFILES, INVALID, DUPLICATES
    ))?;
    let export = ExportInput {
        first_name: Some("first_name".to_owned()),
        last_name: Some("last_name".to_owned()),
        phone: Some("phone".to_owned()),
        tags: vec!["acexport-demo".to_owned()],
        ..export_input("newsletter", "demo", &["customers"])
    };
    world.add_export(&ctx, export).await.map_err(world_error)?;
    output::emit(
        "3. Export `newsletter`: customers → list 1 (Newsletter), mapping email, first and last \
         name, phone.\n\n4. First run: every valid profile is new.",
    )?;
    let mut status = RunStatus::Succeeded;
    for step in [4, 5] {
        let options = RunOptions {
            trigger: TriggerKind::Manual,
            full: false,
            dry_run: false,
            requested_by: None,
        };
        let outcome = ctx
            .run_export("newsletter", options, TerminalProgress::for_stderr())
            .await
            .map_err(|e| CliError::from(crate::service::runs::RunError::from(e)))?;
        TerminalProgress::finish();
        output::emit(&outcome_text(&outcome))?;
        if outcome.status != RunStatus::Succeeded {
            status = outcome.status;
            break;
        }
        if step == 4 {
            output::emit("5. Second run of the unchanged segment: nothing is sent again.")?;
        }
    }
    let latest = ctx
        .list_runs(&RunsQuery {
            export: None,
            limit: 2,
        })
        .await?;
    if let Some(first) = latest.last() {
        let mut table = output::Table::new(["SOURCE", "ROW", "EMAIL", "REASON"]);
        for issue in ctx.show_run(first.id, 5).await?.issues {
            table.row(vec![
                issue.source,
                issue.row.map(|r| r.to_string()).unwrap_or_default(),
                issue.email.unwrap_or_else(|| output::NONE.to_owned()),
                issue.reason,
            ]);
        }
        output::emit(&format!(
            "\nThe first rejected rows of run {} (`acexport runs show {}` lists them all; emails \
             are masked in the history):\n{}\nThe sandbox now holds {} contacts on list 1. \
             Next: the README's quickstart connects a real account.",
            first.id,
            first.id,
            table.render(),
            world.sandbox.members(1, crate::sandbox::ListStatus::Active),
        ))?;
    }
    signals.abort();
    ctx.close().await;
    world.shutdown().await;
    match status {
        RunStatus::Succeeded => Ok(()),
        _ => Err(CliError::Quiet(super::EXIT_FAILURE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_has_the_announced_invalid_and_duplicate_rows() {
        let csv = sample_csv();
        assert_eq!(csv.lines().count(), 1 + PROFILES + INVALID + DUPLICATES);
        assert_eq!(
            csv.lines()
                .filter(|l| l.starts_with("broken-address"))
                .count(),
            INVALID
        );
    }
}
