//! `acexport demo`: the whole product in one command, safely. In a temporary folder it starts
//! the built-in sandbox (with ActiveCampaign's real limits), writes a sample segment of a few
//! thousand synthetic profiles (some invalid, some duplicated), defines a connection, a segment
//! and an export, runs the export, then runs it again to show that nothing unchanged is sent.

use std::fmt::Write as _;

use secrecy::SecretString;

use super::CliError;
use super::output;
use super::run::{TerminalProgress, outcome_text};
use crate::pipeline::RunOptions;
use crate::sandbox::{Sandbox, SandboxOptions};
use crate::service::Context;
use crate::service::connections::AddConnection;
use crate::service::exports::ExportInput;
use crate::service::segments::SegmentInput;
use crate::settings::{Loaded, Settings};
use crate::store::exports::OnLeave;
use crate::store::{RunStatus, TriggerKind};

/// Profiles in the sample segment.
const PROFILES: usize = 3_000;
/// Rows with an address ActiveCampaign would refuse.
const INVALID: usize = 25;
/// Rows repeating an earlier address (in another letter case).
const DUPLICATES: usize = 40;
const TOKEN: &str = "demo-sandbox-token-7f3a";

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

pub async fn run(_loaded: Loaded) -> Result<(), CliError> {
    let dir = tempfile::tempdir()
        .map_err(|e| CliError::Input(format!("cannot create a temporary folder: {e}")))?;
    let options = SandboxOptions {
        token: TOKEN.to_owned(),
        ..SandboxOptions::default()
    };
    let sandbox = Sandbox::start(options).await.map_err(CliError::Sandbox)?;
    let mut settings = Settings::default();
    settings.store.path = dir.path().join("acexport.db");
    settings.secrets.key_file = dir.path().join("secrets.key");
    settings.daemon.trigger_dir = dir.path().join("triggers");
    let ctx = Context::open(settings).await?;
    let control = ctx.control.clone();
    let signals = tokio::spawn(async move {
        crate::daemon::termination().await;
        control.shutdown();
    });

    output::emit(&format!(
        "acexport demo — everything happens in {} and against a sandbox on {}, never a real \
         account.\nThe sandbox enforces ActiveCampaign's limits: 5 requests/s and 100 bulk \
         imports/min.\n",
        dir.path().display(),
        sandbox.host()
    ))?;
    let connection = ctx
        .add_connection(AddConnection {
            name: "demo".to_owned(),
            host: sandbox.host(),
            api_key: SecretString::from(TOKEN),
            allow_contributors: false,
            accept_data_transfer: true,
        })
        .await?;
    output::emit(&format!(
        "1. Connection `demo` verified (acexport connection add demo --host {} --api-key-stdin \
         --accept-data-transfer); key shown as {}.",
        sandbox.host(),
        connection.api_key
    ))?;
    let csv = dir.path().join("customers.csv");
    std::fs::write(&csv, sample_csv())
        .map_err(|e| CliError::Input(format!("cannot write {}: {e}", csv.display())))?;
    let segment = ctx
        .add_segment(
            "customers",
            SegmentInput::Csv {
                path: csv,
                delimiter: b',',
            },
        )
        .await?;
    output::emit(&format!(
        "2. Segment `customers`: {} rows ({} profiles, {} invalid addresses, {} duplicates).",
        segment.rows, PROFILES, INVALID, DUPLICATES
    ))?;
    ctx.add_export(ExportInput {
        name: "newsletter".to_owned(),
        connection: "demo".to_owned(),
        list_id: 1,
        segments: vec!["customers".to_owned()],
        email: "email".to_owned(),
        first_name: Some("first_name".to_owned()),
        last_name: Some("last_name".to_owned()),
        phone: Some("phone".to_owned()),
        fields: Vec::new(),
        tags: vec!["acexport-demo".to_owned()],
        schedule: None,
        on_leave: OnLeave::Keep,
        enabled: true,
    })
    .await?;
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
            cancel_via_store: false,
        };
        let outcome = ctx
            .run_export("newsletter", options, TerminalProgress::for_stderr())
            .await
            .map_err(|e| CliError::Input(e.to_string()))?;
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
    if let Some(first) = ctx.store.runs(None, 2).await?.last() {
        let mut table = output::Table::new(["SOURCE", "ROW", "EMAIL", "REASON"]);
        for issue in ctx.store.run_issues(first.id, 5).await? {
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
            sandbox.members(1, crate::sandbox::ListStatus::Active),
        ))?;
    }
    signals.abort();
    ctx.store.close().await;
    sandbox.shutdown().await;
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
