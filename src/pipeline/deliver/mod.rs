//! Deliver: the outbox is cut into bulk imports (`outbox`), sent with the account's shared
//! budget, and each accepted import is confirmed with `import/info` before the delivery state
//! changes (`confirm`). Several imports are in flight at once; confirmed ones are recorded
//! together (group commit), with the run's counts, in one transaction.
//!
//! Every accepted import is recorded with its members in the next group commit, and its record
//! removed in the one that records its outcome; a run that resumes after a crash first confirms
//! the imports still recorded (`resume`), so only the import whose request was in flight when
//! the process died can be sent twice.
//!
//! Sending and confirming are capped apart. ActiveCampaign queues imports and may take minutes
//! to process them, while its budget allows 100 imports a minute: using that budget needs
//! "imports per second × confirmation time" imports awaiting confirmation, so that cap is
//! large, and an accepted import keeps only what the delivery state records (no payload).

mod confirm;
mod outbox;
mod resume;
mod suppress;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tracing::Instrument;

use super::PipelineError;
use super::control::{RunControl, StopReason};
use super::record::Recorder;
use crate::activecampaign::{AcError, Client, MAX_CONTACTS_PER_BULK_IMPORT};
use crate::store::delivery::{
    self, AcceptedImport, OutboxItem, OutboxKind, SuppressReason, WorkTables,
};
use crate::store::{RunCounts, RunIssue, Store};
use confirm::{AcceptedTx, BatchResult, FIRST_POLL_START, deliver_batch};
use outbox::OutboxReader;
pub use resume::confirm_accepted;

/// Imports prepared and waiting for a rate permit or being sent, with their payloads.
const MAX_SENDING: usize = 8;
/// Accepted imports awaiting confirmation (about 40 KB each, 20 MB at most): at
/// ActiveCampaign's 100 imports a minute, the whole budget stays in use while imports take up
/// to about 4 minutes to confirm (the benchmark: 97% at 3 minutes, 86-89% at 5).
const MAX_AWAITING: usize = 512;
/// Confirmed contacts held for the next group commit before sending pauses for it.
const MAX_UNCOMMITTED: usize = 8 * MAX_CONTACTS_PER_BULK_IMPORT;
/// Consecutive imports failing as a whole (not per contact) before the run gives up.
const MAX_FAILED_BATCHES_IN_A_ROW: u32 = 3;
/// Why an oversized contact is not sent.
const OVERSIZED: &str = "contact is larger than ActiveCampaign's 400,000-byte import limit";

pub struct Delivery<'a> {
    pub tables: &'a mut WorkTables,
    pub store: &'a Store,
    pub client: Arc<Client>,
    pub export_id: i64,
    /// The export's list: where returning members are re-subscribed, refusals looked up, and
    /// what each accepted import is recorded with.
    pub list_id: i64,
    pub run_id: i64,
    pub control: &'a RunControl,
}

/// Everything the delivery loop tracks between wake-ups.
struct Flow<'t> {
    outbox: OutboxReader<'t>,
    /// µs before the first poll; adapts to how long imports take (misses raise it at once).
    poll: Arc<AtomicU64>,
    in_flight: JoinSet<BatchResult>,
    sending: Arc<Sending>,
    /// Batch tasks report accepted imports here, for the next group commit.
    accepted_tx: AcceptedTx,
    accepted_rx: UnboundedReceiver<AcceptedImport>,
    confirmed: Confirmed,
    /// The group commit under way, at most one.
    committing: Option<JoinHandle<Result<(), PipelineError>>>,
    failed_in_a_row: u32,
    /// Why sending stopped early: a stop request, failing imports.
    stop: Option<StopReason>,
    /// A key rejection or a redirect: in-flight imports are aborted and the run fails.
    fatal: Option<AcError>,
    /// The first store or internal error; the run fails with it once drained.
    error: Option<PipelineError>,
}

impl Flow<'_> {
    fn go_on(&self) -> bool {
        self.stop.is_none() && self.fatal.is_none() && self.error.is_none()
    }

    /// Nothing in flight, being read or being committed.
    fn drained(&self) -> bool {
        self.in_flight.is_empty() && self.outbox.reading.is_none() && self.committing.is_none()
    }
}

impl Delivery<'_> {
    /// Sends the whole outbox; returns why it stopped early, if it did.
    ///
    /// Three things overlap: the next page of the outbox is read while batches are in flight,
    /// and confirmed batches are committed (one group commit at a time, in a task of its own)
    /// while more are sent and confirmed. Whatever was confirmed is committed before this
    /// returns, on every path.
    pub async fn run(
        &mut self,
        recorder: &mut Recorder,
    ) -> Result<Option<StopReason>, PipelineError> {
        let (tx, accepted_rx) = mpsc::unbounded_channel();
        let mut flow = Flow {
            outbox: OutboxReader::new(&mut *self.tables),
            poll: Arc::new(AtomicU64::new(FIRST_POLL_START.as_micros() as u64)),
            in_flight: JoinSet::new(),
            sending: Arc::new(Sending::default()),
            accepted_tx: AcceptedTx {
                tx,
                list_id: self.list_id,
            },
            accepted_rx,
            confirmed: Confirmed::default(),
            committing: None,
            failed_in_a_row: 0,
            stop: None,
            fatal: None,
            error: None,
        };
        loop {
            if flow.stop.is_none() {
                flow.stop = self.control.stop_reason();
            }
            let go_on = flow.go_on();
            if go_on {
                send_batches(
                    &mut flow,
                    &self.client,
                    self.list_id,
                    self.control,
                    recorder,
                );
                // After taking batches, so that a page just emptied is refilled now, not
                // after the next confirmation.
                flow.outbox.read_ahead();
            }
            if flow.committing.is_none() && !flow.confirmed.is_empty() {
                recorder.counts.requests = self.client.requests_sent();
                let batch = std::mem::take(&mut flow.confirmed);
                let (store, export_id, run_id) = (self.store.clone(), self.export_id, self.run_id);
                let counts = recorder.counts;
                flow.committing = Some(tokio::spawn(
                    async move { batch.commit(&store, export_id, run_id, &counts).await }
                        .instrument(tracing::Span::current()),
                ));
            }
            if flow.drained() && (!go_on || flow.outbox.is_empty()) {
                break;
            }
            tokio::select! {
                Some(joined) = flow.in_flight.join_next(), if !flow.in_flight.is_empty() => {
                    let mut results = vec![joined];
                    while let Some(more) = flow.in_flight.try_join_next() {
                        results.push(more);
                    }
                    take_results(&mut flow, results, recorder);
                }
                // Recorded by the next group commit, which starts at once when none is under way.
                Some(import) = flow.accepted_rx.recv() => {
                    flow.confirmed.accept(import, recorder);
                }
                (tables, rows) = wait_for(&mut flow.outbox.reading) => {
                    if let Err(e) = flow.outbox.on_page(tables, rows) {
                        flow.error.get_or_insert(e);
                    }
                }
                // A batch was accepted: its sending slot is free for the next one. Not
                // conditioned on the count: a slot freed between `send_batches` and this
                // `select!` would otherwise go unnoticed until the next confirmation. A permit
                // stored by an earlier release costs one extra pass at most.
                () = flow.sending.freed.notified(), if go_on => {}
                committed = wait_for(&mut flow.committing) => {
                    flow.committing = None;
                    match committed {
                        Ok(Ok(())) => {
                            recorder.counts.requests = self.client.requests_sent();
                            recorder.progress().await;
                        }
                        Ok(Err(e)) => {
                            flow.error.get_or_insert(e);
                        }
                        Err(e) => {
                            flow.error.get_or_insert(PipelineError::Task(e));
                        }
                    }
                }
            }
        }
        if let Some(e) = flow.error {
            return Err(e);
        }
        if let Some(e) = flow.fatal {
            return Err(PipelineError::ActiveCampaign(e));
        }
        Ok(flow.stop)
    }
}

/// Starts batches while sending slots are free and confirmed contacts wait in memory under
/// their cap (when the commit falls behind, sending waits for it, so memory stays flat).
fn send_batches(
    flow: &mut Flow<'_>,
    client: &Arc<Client>,
    list_id: i64,
    control: &RunControl,
    recorder: &mut Recorder,
) {
    while flow.confirmed.len() < MAX_UNCOMMITTED
        && flow.sending.count() < MAX_SENDING
        && flow.in_flight.len() < MAX_SENDING + MAX_AWAITING
        && flow.outbox.has_batch()
    {
        let (batch, oversized) = flow.outbox.take_batch();
        for item in oversized {
            recorder.failed(&item.email, OVERSIZED);
        }
        if batch.is_empty() {
            break;
        }
        let slot = SendingSlot::take(&flow.sending);
        // Spawned tasks do not inherit the run's span; carry it so every line names the run.
        flow.in_flight.spawn(
            deliver_batch(
                Arc::clone(client),
                list_id,
                batch,
                slot,
                Arc::clone(&flow.poll),
                control.clone(),
                flow.accepted_tx.clone(),
            )
            .instrument(tracing::Span::current()),
        );
    }
}

/// Counts finished batches and keeps what the next commit records.
fn take_results(
    flow: &mut Flow<'_>,
    results: Vec<Result<BatchResult, JoinError>>,
    recorder: &mut Recorder,
) {
    // A batch reports its acceptance before it finishes: take the reports first, so that an
    // outcome never reaches a commit before the acceptance it resolves.
    while let Ok(import) = flow.accepted_rx.try_recv() {
        flow.confirmed.accept(import, recorder);
    }
    for result in results {
        let mut result = match result {
            Ok(result) => result,
            // Aborted after a key rejection or a redirect: nothing of it is committed.
            Err(e) if e.is_cancelled() => continue,
            Err(e) => {
                flow.error.get_or_insert(PipelineError::Task(e));
                continue;
            }
        };
        if result.batch_error.is_some() {
            flow.failed_in_a_row += 1;
        } else if !result.abandoned {
            flow.failed_in_a_row = 0;
        }
        if let Some(e) = result.fatal.take() {
            flow.fatal.get_or_insert(e);
        }
        flow.confirmed.add(result, recorder);
    }
    if flow.fatal.is_some() {
        flow.in_flight.abort_all();
    }
    if flow.failed_in_a_row >= MAX_FAILED_BATCHES_IN_A_ROW && flow.stop.is_none() {
        flow.stop = Some(StopReason::Failing(format!(
            "{} imports in a row failed as a whole; the rest is left for the next run",
            flow.failed_in_a_row
        )));
    }
}

/// Batches holding a sending slot, and a wake-up for the loop when one is freed.
#[derive(Default)]
struct Sending {
    count: AtomicUsize,
    freed: Notify,
}

impl Sending {
    fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

/// One batch's sending slot, given back when it is dropped: once the import is accepted or
/// has failed, or the task is aborted.
struct SendingSlot(Arc<Sending>);

impl SendingSlot {
    fn take(sending: &Arc<Sending>) -> Self {
        sending.count.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(sending))
    }
}

impl Drop for SendingSlot {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

/// Awaits the future in `slot`, or never completes when there is none (a `select!` branch
/// that is off).
async fn wait_for<F: Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    match slot {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// Confirmed batches waiting for the next group commit; the run's counts already include
/// them.
#[derive(Default)]
struct Confirmed {
    delivered: Vec<OutboxItem>,
    left: Vec<OutboxItem>,
    failed: Vec<OutboxItem>,
    suppressed: Vec<(OutboxItem, SuppressReason)>,
    issues: Vec<RunIssue>,
    /// Accepted imports not recorded yet.
    accepted: Vec<AcceptedImport>,
    /// Recorded accepted imports whose outcome is known now.
    resolved: Vec<String>,
}

impl Confirmed {
    /// Contacts held.
    fn len(&self) -> usize {
        self.delivered.len() + self.left.len() + self.failed.len() + self.suppressed.len()
    }

    fn is_empty(&self) -> bool {
        self.delivered.is_empty()
            && self.left.is_empty()
            && self.failed.is_empty()
            && self.suppressed.is_empty()
            && self.issues.is_empty()
            && self.accepted.is_empty()
            && self.resolved.is_empty()
    }

    /// Counts an accepted import's contacts as sent and keeps the import for the commit.
    fn accept(&mut self, import: AcceptedImport, recorder: &mut Recorder) {
        recorder.counts.sent += import.items.len() as u64;
        self.accepted.push(import);
    }

    /// Counts one batch's outcome and keeps what the commit must record.
    fn add(&mut self, result: BatchResult, recorder: &mut Recorder) {
        if result.resolved()
            && let Some(batch_id) = &result.batch_id
        {
            // Accepted and resolved before a commit recorded it: nothing to record or remove.
            match self.accepted.iter().position(|a| &a.batch_id == batch_id) {
                Some(index) => {
                    self.accepted.swap_remove(index);
                }
                None => self.resolved.push(batch_id.clone()),
            }
        }
        recorder.unconfirmed += result.unconfirmed.len() as u64;
        for item in result.delivered {
            if item.kind == OutboxKind::Leave {
                recorder.counts.unsubscribed += 1;
                self.left.push(item);
            } else {
                recorder.counts.upserted += 1;
                self.delivered.push(item);
            }
        }
        if let Some(e) = &result.batch_error {
            tracing::error!(error = %e, contacts = result.failed.len(), "Import failed; its contacts are retried next run");
        }
        for (item, reason) in result.failed {
            recorder.counts.failed += 1;
            if let Some(issue) = recorder.failure_issue(&item.email, &reason) {
                self.issues.push(issue);
            }
            if item.kind != OutboxKind::Leave {
                self.failed.push(item);
            }
        }
        for (item, reason) in result.suppressed {
            recorder.counts.suppressed += 1;
            if let Some(issue) = recorder.suppressed_issue(&item.email, reason) {
                self.issues.push(issue);
            }
            self.suppressed.push((item, reason));
        }
    }

    /// Records confirmed batches: delivery state, failures and counts in one transaction.
    async fn commit(
        self,
        store: &Store,
        export_id: i64,
        run_id: i64,
        counts: &RunCounts,
    ) -> Result<(), PipelineError> {
        let confirmed = delivery::Confirmed {
            delivered: &self.delivered,
            failed: &self.failed,
            suppressed: &self.suppressed,
            left: &self.left,
            issues: &self.issues,
            accepted: &self.accepted,
            resolved: &self.resolved,
        };
        store
            .record_confirmed(export_id, run_id, confirmed, counts)
            .await?;
        Ok(())
    }
}
