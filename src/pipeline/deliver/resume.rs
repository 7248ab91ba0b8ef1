//! Resume without re-sending: before a run plans, it confirms with `import/info` the imports an
//! earlier run of the export had ActiveCampaign accept but did not see through (it was killed,
//! aborted, or could not read their status). Their outcome goes into the delivery state, so
//! planning then counts what ActiveCampaign imported as unchanged and sends only the rest; the
//! run's own counts are left to planning and sending, so that they add up. An import still
//! unconfirmed stays recorded and its members are not planned (see `WorkTables::stage_chunk`).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::task::JoinSet;
use tracing::Instrument;

use super::Confirmed;
use super::confirm::{BatchResult, FIRST_POLL_START, confirm};
use crate::activecampaign::Client;
use crate::pipeline::PipelineError;
use crate::pipeline::record::Recorder;
use crate::store::Store;
use crate::store::delivery::OutboxKind;

/// Confirms the export's recorded accepted imports and records what became of them. Imports
/// recorded for another account or list than the export's now say nothing about it: their
/// records are dropped and their members planned as usual.
pub async fn confirm_accepted(
    store: &Store,
    client: &Arc<Client>,
    export_id: i64,
    list_id: i64,
    run_id: i64,
    recorder: &mut Recorder,
) -> Result<(), PipelineError> {
    let imports = store.accepted_imports(export_id).await?;
    if imports.is_empty() {
        return Ok(());
    }
    recorder.phase("confirming").await;
    let mut confirmed = Confirmed::default();
    let poll = Arc::new(AtomicU64::new(FIRST_POLL_START.as_micros() as u64));
    let mut tasks = JoinSet::new();
    for import in imports {
        if import.host != client.host() || import.list_id != list_id {
            confirmed.resolved.push(import.batch_id);
            continue;
        }
        let (client, poll) = (Arc::clone(client), Arc::clone(&poll));
        tasks.spawn(
            async move {
                let mut result = BatchResult {
                    batch_id: Some(import.batch_id.clone()),
                    ..BatchResult::default()
                };
                confirm(
                    &client,
                    list_id,
                    &import.batch_id,
                    import.items,
                    &poll,
                    &mut result,
                )
                .await;
                result
            }
            .instrument(tracing::Span::current()),
        );
    }
    let pending = tasks.len();
    tracing::info!(
        imports = pending,
        "Confirming imports an earlier run left accepted"
    );
    let mut fatal = None;
    while let Some(joined) = tasks.join_next().await {
        let mut result = joined?;
        if let Some(e) = result.fatal.take() {
            fatal.get_or_insert(e);
        }
        keep_outcome(&mut confirmed, result, recorder);
    }
    recorder.counts.requests = client.requests_sent();
    let counts = recorder.counts;
    confirmed.commit(store, export_id, run_id, &counts).await?;
    match fatal {
        Some(e) => Err(PipelineError::ActiveCampaign(e)),
        None => Ok(()),
    }
}

/// Keeps what the delivery state must record of a resumed import. Contacts ActiveCampaign will
/// not subscribe are recorded suppressed, as in a run's own imports, so that planning holds
/// them back (and counts them suppressed) instead of sending them again. Those it did not import
/// for another cause, and those of an import it no longer knows (nothing says they were
/// imported), are recorded failed (never over a delivered state), so this run plans them again
/// and counts them as it sends them.
fn keep_outcome(confirmed: &mut Confirmed, result: BatchResult, recorder: &mut Recorder) {
    if result.resolved()
        && let Some(batch_id) = &result.batch_id
    {
        confirmed.resolved.push(batch_id.clone());
    }
    if let Some(e) = &result.batch_error {
        tracing::warn!(error = %e, contacts = result.failed.len(), "A resumed import failed; its contacts are sent again");
    }
    recorder.unconfirmed += result.unconfirmed.len() as u64;
    for item in result.delivered {
        if item.kind == OutboxKind::Leave {
            // Counted by the run that confirms it: the run that sent it counted it sent only.
            recorder.counts.unsubscribed += 1;
            confirmed.left.push(item);
        } else {
            confirmed.delivered.push(item);
        }
    }
    for (item, reason) in result.suppressed {
        if let Some(issue) = recorder.suppressed_issue(&item.email, reason) {
            confirmed.issues.push(issue);
        }
        confirmed.suppressed.push((item, reason));
    }
    let failed = result.failed.into_iter().map(|(item, _)| item);
    confirmed
        .failed
        .extend(failed.filter(|item| item.kind != OutboxKind::Leave));
}
