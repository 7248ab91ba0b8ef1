//! `acexport audit`: the audit log, for admins.

use clap::Args;

use super::CliError;
use super::output::{self, Table};
use crate::service::Context;

/// Entries listed unless `--limit` says otherwise.
const DEFAULT_ENTRIES: u32 = 50;
/// Most entries one listing shows.
pub(super) const MAX_ENTRIES: u32 = 10_000;

#[derive(Debug, Args, serde::Serialize, serde::Deserialize)]
pub struct AuditArgs {
    /// How many entries, latest first
    #[arg(long, value_name = "N", default_value_t = DEFAULT_ENTRIES,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_ENTRIES)))]
    pub limit: u32,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

pub async fn run(ctx: &Context, args: AuditArgs) -> Result<(), CliError> {
    let entries = ctx.audit_log(args.limit).await?;
    if args.json {
        return output::emit_json(&entries);
    }
    if entries.is_empty() {
        return output::emit("The audit log is empty.");
    }
    let mut table = Table::new(["AT", "WHO", "ACTION", "SUBJECT", "DETAIL"]);
    for e in &entries {
        table.row(vec![
            e.at.clone(),
            e.actor.clone(),
            e.action.clone(),
            e.subject.clone(),
            output::or_none(e.detail.as_deref()),
        ]);
    }
    output::emit(&table.render())
}
