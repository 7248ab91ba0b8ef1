//! Deliver: the outbox is cut into bulk imports of at most 250 contacts and under 400,000
//! bytes (measured on the serialised body), sent with the account's shared budget, and each
//! accepted import is confirmed with `import/info` before the delivery state changes. Several
//! imports are in flight at once; confirmed ones are committed together (group commit), with
//! the run's counts, in one transaction.
//!
//! Sending and confirming are capped apart. ActiveCampaign queues imports and may take minutes
//! to process them, while its budget allows 100 imports a minute: using that budget needs
//! "imports per second × confirmation time" imports awaiting confirmation, so that cap is
//! large, and an accepted import keeps only what the delivery state records (no payload).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::{AssertSqlSafe, Row, SqliteConnection};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;

use super::plan::placeholders;
use super::{PipelineError, Sink, StopReason, Stopper};
use crate::activecampaign::wire::{BulkOutcome, ImportState};
use crate::activecampaign::{AcError, Client, MAX_BULK_IMPORT_BYTES, MAX_CONTACTS_PER_BULK_IMPORT};
use crate::store::{Doing, RunCounts, RunIssue, Store};

/// Imports prepared and waiting for a rate permit or being sent, with their payloads.
const MAX_SENDING: usize = 8;
/// Accepted imports awaiting confirmation (about 40 KB each, 20 MB at most): at
/// ActiveCampaign's 100 imports a minute, the whole budget stays in use while imports take up
/// to about 4 minutes to confirm (the benchmark: 97% at 3 minutes, 86-89% at 5).
const MAX_AWAITING: usize = 512;
/// Outbox rows read per query.
const PAGE: i64 = 2_000;
/// Confirmed contacts held for the next group commit before sending pauses for it.
const MAX_UNCOMMITTED: usize = 8 * MAX_CONTACTS_PER_BULK_IMPORT;
/// Consecutive imports failing as a whole (not per contact) before the run gives up.
const MAX_FAILED_BATCHES_IN_A_ROW: u32 = 3;
/// Longest wait for ActiveCampaign to finish one import.
const MAX_CONFIRM_WAIT: Duration = Duration::from_secs(20 * 60);
/// Bounds of the wait between `import/info` polls.
const MIN_POLL: Duration = Duration::from_millis(20);
const MAX_POLL: Duration = Duration::from_secs(10);
/// The first imports' wait before their first poll: short, because each poll that finds an
/// import unfinished raises the wait of every later one.
const FIRST_POLL_START: Duration = Duration::from_millis(50);
/// Longest wait before the first poll: the time imports have been taking, up to this.
const MAX_FIRST_POLL: Duration = Duration::from_secs(5 * 60);
/// `{"contacts":[` ... `]}`
const BODY_OVERHEAD: usize = r#"{"contacts":[]}"#.len();
/// Why ActiveCampaign lists a contact in `failure` (its docs give these causes).
const NOT_IMPORTED: &str = "ActiveCampaign did not import this contact (excluded, bounced, \
     unsubscribed from the list earlier, or over the account's contact limit)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    New,
    Changed,
    Leave,
}

/// One outbox entry. Its `Debug` shows neither the address nor the payload: both are profile
/// data.
pub struct Item {
    pub email: String,
    pub hash: Vec<u8>,
    pub kind: Kind,
    pub payload: String,
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Item")
            .field("kind", &self.kind)
            .field("payload_bytes", &self.payload.len())
            .finish_non_exhaustive()
    }
}

/// What became of one batch.
#[derive(Debug, Default)]
struct BatchResult {
    delivered: Vec<Item>,
    failed: Vec<(Item, String)>,
    /// Contacts in accepted imports.
    sent: u64,
    /// The batch as a whole failed with this error (its contacts are in `failed`).
    batch_error: Option<String>,
    /// A key rejection: the run must stop.
    fatal: Option<AcError>,
    /// Cancelled by shutdown before confirmation: not committed, resent on resume.
    abandoned: bool,
}

pub struct Delivery<'a> {
    pub conn: &'a mut SqliteConnection,
    pub store: &'a Store,
    pub client: Arc<Client>,
    pub export_id: i64,
    pub run_id: i64,
    pub counts: &'a mut RunCounts,
    pub stopper: &'a Stopper,
}

impl Delivery<'_> {
    /// Sends the whole outbox; returns why it stopped early, if it did.
    ///
    /// Three things overlap: the next page of the outbox is read while batches are in flight,
    /// and confirmed batches are committed (one group commit at a time, in a task of its own)
    /// while more are sent and confirmed. Whatever was confirmed is committed before this
    /// returns, on every path.
    pub async fn run(&mut self, sink: &mut Sink) -> Result<Option<StopReason>, PipelineError> {
        // µs before the first poll; adapts to how long imports take (misses raise it at once).
        let poll = Arc::new(AtomicU64::new(FIRST_POLL_START.as_micros() as u64));
        let mut in_flight: JoinSet<BatchResult> = JoinSet::new();
        let sending = Arc::new(Sending::default());
        let mut last_seq = 0i64;
        let mut page: VecDeque<Item> = VecDeque::new();
        let mut reading: Option<PageRead<'_>> = None;
        let mut exhausted = false;
        let mut confirmed = Confirmed::default();
        let mut committing: Option<JoinHandle<Result<(), PipelineError>>> = None;
        let mut failed_in_a_row = 0u32;
        let mut stop: Option<StopReason> = None;
        let mut fatal: Option<AcError> = None;
        let mut error: Option<PipelineError> = None;
        // The run's connection, lent to the page being read and handed back with it.
        let mut idle_conn = Some(&mut *self.conn);
        loop {
            if stop.is_none() {
                stop = self.stopper.reason();
            }
            let go_on = stop.is_none() && fatal.is_none() && error.is_none();
            // Confirmed contacts wait in memory for the commit: when it falls behind, sending
            // waits for it, so memory stays flat.
            let room = confirmed.len() < MAX_UNCOMMITTED;
            while go_on
                && room
                && sending.count() < MAX_SENDING
                && in_flight.len() < MAX_SENDING + MAX_AWAITING
            {
                // A short batch only at the very end of the outbox.
                if page.len() < MAX_CONTACTS_PER_BULK_IMPORT && !exhausted {
                    break;
                }
                let (batch, oversized) = take_batch(&mut page);
                for item in oversized {
                    self.counts.failed += 1;
                    let reason =
                        "contact is larger than ActiveCampaign's 400,000-byte import limit";
                    sink.failed(&item.email, reason).await?;
                }
                if batch.is_empty() {
                    break;
                }
                let client = Arc::clone(&self.client);
                let slot = SendingSlot::take(&sending);
                // Spawned tasks do not inherit the run's span; carry it so every line names the run.
                in_flight.spawn(
                    deliver_batch(client, batch, slot, Arc::clone(&poll), self.stopper.clone())
                        .instrument(tracing::Span::current()),
                );
            }
            // Read ahead, so the next batches are ready when slots free up. After taking batches,
            // so that a page just emptied is refilled now, not after the next confirmation.
            if go_on
                && !exhausted
                && page.len() < PAGE as usize
                && let Some(conn) = idle_conn.take()
            {
                reading = Some(Box::pin(next_page(conn, last_seq)));
            }
            if committing.is_none() && !confirmed.is_empty() {
                self.counts.requests = self.client.requests_sent();
                let batch = std::mem::take(&mut confirmed);
                committing = Some(tokio::spawn(
                    batch
                        .commit(
                            self.store.clone(),
                            self.export_id,
                            self.run_id,
                            *self.counts,
                        )
                        .instrument(tracing::Span::current()),
                ));
            }
            let drained = in_flight.is_empty() && reading.is_none() && committing.is_none();
            if drained && (!go_on || (exhausted && page.is_empty())) {
                break;
            }
            tokio::select! {
                Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                    let mut results = vec![joined];
                    while let Some(more) = in_flight.try_join_next() {
                        results.push(more);
                    }
                    for result in results {
                        let mut result = match result {
                            Ok(result) => result,
                            // Aborted after a key rejection: nothing of it is committed.
                            Err(e) if e.is_cancelled() => continue,
                            Err(e) => {
                                error.get_or_insert(PipelineError::Internal(e.to_string()));
                                continue;
                            }
                        };
                        if result.batch_error.is_some() {
                            failed_in_a_row += 1;
                        } else if !result.abandoned {
                            failed_in_a_row = 0;
                        }
                        if let Some(e) = result.fatal.take() {
                            fatal.get_or_insert(e);
                        }
                        confirmed.add(result, self.counts, sink);
                    }
                    if fatal.is_some() {
                        in_flight.abort_all();
                    }
                    if failed_in_a_row >= MAX_FAILED_BATCHES_IN_A_ROW && stop.is_none() {
                        stop = Some(StopReason::Failing(format!(
                            "{failed_in_a_row} imports in a row failed as a whole; the rest is \
                             left for the next run"
                        )));
                    }
                }
                (conn, rows) = wait_for(&mut reading) => {
                    reading = None;
                    idle_conn = Some(conn);
                    match rows {
                        Ok(rows) => {
                            exhausted = rows.len() < PAGE as usize;
                            if let Some((seq, _)) = rows.last() {
                                last_seq = *seq;
                            }
                            page.extend(rows.into_iter().map(|(_, item)| item));
                        }
                        Err(e) => {
                            error.get_or_insert(e);
                        }
                    }
                }
                // A batch was accepted: its sending slot is free for the next one. Not
                // conditioned on the count: a slot freed between the loop above and this
                // `select!` would otherwise go unnoticed until the next confirmation. A permit
                // stored by an earlier release costs one extra pass at most.
                () = sending.freed.notified(), if go_on => {}
                committed = wait_for(&mut committing) => {
                    committing = None;
                    match committed {
                        Ok(Ok(())) => {
                            self.counts.requests = self.client.requests_sent();
                            sink.progress(self.counts).await;
                        }
                        Ok(Err(e)) => {
                            error.get_or_insert(e);
                        }
                        Err(e) => {
                            error.get_or_insert(PipelineError::Internal(e.to_string()));
                        }
                    }
                }
            }
        }
        if let Some(e) = error {
            return Err(e);
        }
        if let Some(e) = fatal {
            return Err(PipelineError::ActiveCampaign(e));
        }
        Ok(stop)
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

/// A page of the outbox being read; the connection comes back with it.
type PageRead<'c> =
    std::pin::Pin<Box<dyn Future<Output = (&'c mut SqliteConnection, Page)> + Send + 'c>>;
type Page = Result<Vec<(i64, Item)>, PipelineError>;

/// Awaits the future in `slot`, or never completes when there is none (a `select!` branch
/// that is off).
async fn wait_for<F: Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    match slot {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn next_page(conn: &mut SqliteConnection, after: i64) -> (&mut SqliteConnection, Page) {
    let page = read_page(&mut *conn, after).await;
    (conn, page)
}

async fn read_page(conn: &mut SqliteConnection, after: i64) -> Page {
    let rows = sqlx::query(
        "SELECT seq, email, hash, kind, payload FROM temp.outbox WHERE seq > ? ORDER BY seq \
         LIMIT ?",
    )
    .bind(after)
    .bind(PAGE)
    .fetch_all(&mut *conn)
    .await
    .doing("reading the outbox")?;
    Ok(rows
        .iter()
        .map(|r| {
            let kind = match r.get::<&str, _>(3) {
                "new" => Kind::New,
                "leave" => Kind::Leave,
                _ => Kind::Changed,
            };
            (
                r.get(0),
                Item {
                    email: r.get(1),
                    hash: r.get(2),
                    kind,
                    payload: r.get(4),
                },
            )
        })
        .collect())
}

/// Confirmed batches waiting for the next group commit; the run's counts already include
/// them.
#[derive(Default)]
struct Confirmed {
    delivered: Vec<Item>,
    left: Vec<Item>,
    failed: Vec<Item>,
    issues: Vec<RunIssue>,
}

impl Confirmed {
    /// Contacts held.
    fn len(&self) -> usize {
        self.delivered.len() + self.left.len() + self.failed.len()
    }

    fn is_empty(&self) -> bool {
        self.delivered.is_empty()
            && self.left.is_empty()
            && self.failed.is_empty()
            && self.issues.is_empty()
    }

    /// Counts one batch's outcome and keeps what the commit must record.
    fn add(&mut self, result: BatchResult, counts: &mut RunCounts, sink: &mut Sink) {
        counts.sent += result.sent;
        for item in result.delivered {
            if item.kind == Kind::Leave {
                counts.unsubscribed += 1;
                self.left.push(item);
            } else {
                counts.upserted += 1;
                self.delivered.push(item);
            }
        }
        if let Some(e) = &result.batch_error {
            tracing::error!(error = %e, contacts = result.failed.len(), "Import failed; its contacts are retried next run");
        }
        for (item, reason) in result.failed {
            counts.failed += 1;
            if let Some(issue) = sink.failure_issue(&item.email, &reason) {
                self.issues.push(issue);
            }
            if item.kind != Kind::Leave {
                self.failed.push(item);
            }
        }
    }

    /// Records confirmed batches: delivery state, failures and counts in one transaction.
    async fn commit(
        self,
        store: Store,
        export_id: i64,
        run_id: i64,
        counts: RunCounts,
    ) -> Result<(), PipelineError> {
        let mut tx = store.write().await?;
        upsert_state(&mut tx, export_id, run_id, &self.delivered, "delivered").await?;
        upsert_state(&mut tx, export_id, run_id, &self.failed, "failed").await?;
        for chunk in self.left.chunks(500) {
            let sql = format!(
                "DELETE FROM delivery_state WHERE export_id = ? AND email IN {}",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(export_id);
            for item in chunk {
                q = q.bind(item.email.as_str());
            }
            q.execute(&mut *tx).await.doing("recording unsubscribes")?;
        }
        Store::record_issues(&mut tx, run_id, &self.issues).await?;
        Store::write_run_counts(&mut tx, run_id, &counts).await?;
        tx.commit().await.doing("recording a confirmed import")?;
        Ok(())
    }
}

async fn upsert_state(
    tx: &mut SqliteConnection,
    export_id: i64,
    run_id: i64,
    items: &[Item],
    status: &str,
) -> Result<(), PipelineError> {
    for chunk in items.chunks(200) {
        // A failure never overwrites what is known to be delivered: a member whose update
        // failed keeps its delivered row (its new values still differ, so the next run sends
        // them again) and is still unsubscribed should it leave.
        let on_conflict = if status == "delivered" {
            "DO UPDATE SET hash = excluded.hash, status = excluded.status, run_id = excluded.run_id"
        } else {
            "DO NOTHING"
        };
        let sql = format!(
            "INSERT INTO delivery_state (export_id, email, hash, status, run_id) VALUES {} \
             ON CONFLICT(export_id, email) {on_conflict}",
            placeholders(chunk.len(), 5)
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for item in chunk {
            q = q
                .bind(export_id)
                .bind(item.email.as_str())
                .bind(&item.hash[..])
                .bind(status)
                .bind(run_id);
        }
        q.execute(&mut *tx)
            .await
            .doing("recording delivery state")?;
    }
    Ok(())
}

/// Takes the next batch off the page: up to 250 contacts whose body stays under 400,000 bytes.
/// Contacts too large to send at all are returned separately.
fn take_batch(page: &mut VecDeque<Item>) -> (Vec<Item>, Vec<Item>) {
    let mut batch = Vec::new();
    let mut oversized = Vec::new();
    let mut bytes = BODY_OVERHEAD;
    while let Some(item) = page.front() {
        let extra = item.payload.len() + usize::from(!batch.is_empty());
        if BODY_OVERHEAD + item.payload.len() >= MAX_BULK_IMPORT_BYTES {
            oversized.extend(page.pop_front());
            continue;
        }
        if batch.len() == MAX_CONTACTS_PER_BULK_IMPORT || bytes + extra >= MAX_BULK_IMPORT_BYTES {
            break;
        }
        bytes += extra;
        batch.extend(page.pop_front());
    }
    (batch, oversized)
}

fn body(items: &[Item]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        BODY_OVERHEAD + items.iter().map(|i| i.payload.len() + 1).sum::<usize>(),
    );
    out.extend_from_slice(br#"{"contacts":["#);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item.payload.as_bytes());
    }
    out.extend_from_slice(b"]}");
    out
}

/// Sends one batch and waits for ActiveCampaign's verdict. A batch refused for some of its
/// contacts is sent again without them.
async fn deliver_batch(
    client: Arc<Client>,
    mut items: Vec<Item>,
    slot: SendingSlot,
    poll: Arc<AtomicU64>,
    stopper: Stopper,
) -> BatchResult {
    // Asked once the rate permit is granted: a batch not yet sent when the run is told to stop
    // stays for the next run, so "stop at the next batch boundary" holds even with many
    // batches waiting for permits.
    let go_on = move || stopper.reason().is_none();
    let mut result = BatchResult::default();
    while !items.is_empty() {
        let payload = body(&items);
        debug_assert!(payload.len() < MAX_BULK_IMPORT_BYTES);
        match client.bulk_import(payload, &go_on).await {
            Ok(BulkOutcome::Queued { batch_id }) => {
                result.sent += items.len() as u64;
                drop(slot);
                // ActiveCampaign has the payloads now; an import that waits minutes for
                // confirmation holds only what the delivery state records.
                for item in &mut items {
                    item.payload = String::new();
                }
                confirm(&client, &batch_id, items, &poll, &mut result).await;
                return result;
            }
            Ok(BulkOutcome::Rejected(reasons)) => {
                // ActiveCampaign names contacts by their position in `contacts[]`.
                let mut positions: Vec<(usize, String)> = reasons
                    .into_iter()
                    .filter(|(i, _)| *i < items.len())
                    .collect();
                if positions.is_empty() {
                    let reason = "ActiveCampaign refused the import without naming a contact";
                    result
                        .failed
                        .extend(items.drain(..).map(|i| (i, reason.to_owned())));
                    result.batch_error = Some(reason.to_owned());
                    return result;
                }
                positions.sort_by_key(|p| std::cmp::Reverse(p.0));
                positions.dedup_by_key(|p| p.0);
                for (index, reason) in positions {
                    let item = items.remove(index);
                    result
                        .failed
                        .push((item, format!("ActiveCampaign: {reason}")));
                }
            }
            Err(AcError::Cancelled) => {
                result.abandoned = true;
                return result;
            }
            Err(e) if e.is_rejected_key() => {
                result.fatal = Some(e);
                result.abandoned = true;
                return result;
            }
            Err(e) => {
                let reason = e.to_string();
                result
                    .failed
                    .extend(items.drain(..).map(|i| (i, reason.clone())));
                result.batch_error = Some(reason);
                return result;
            }
        }
    }
    result
}

/// The wait before the first `import/info` poll of the next imports, from how this one went.
/// The time an import took is only known to within the last poll, so an import found done at
/// the first poll pulls the estimate down (the wait may have been longer than needed: without
/// this the estimate could never fall below its start), and one that needed several polls
/// pulls it up to the time taken. A moving average keeps one odd import from swinging it; the
/// gentle pull down keeps most imports confirmed at their first poll.
fn next_first_poll(previous: Duration, waited: Duration, polls: u32, took: Duration) -> Duration {
    let observed = if polls <= 1 { waited * 3 / 4 } else { took };
    ((previous * 3 + observed) / 4).clamp(MIN_POLL, MAX_FIRST_POLL)
}

/// The wait before the poll after `previous` missed: the first miss means the estimate was a
/// little short, so the next poll comes soon (an eighth of the first wait), then backs off.
fn next_retry_poll(first_wait: Duration, previous: Duration, polls: u32) -> Duration {
    let next = if polls <= 1 {
        first_wait / 8
    } else {
        previous * 3 / 2
    };
    next.clamp(MIN_POLL, MAX_POLL)
}

/// Polls `import/info` until the import is final; the first poll comes after the time recent
/// imports took, so a fast server is not kept waiting and a slow one is not flooded.
async fn confirm(
    client: &Client,
    batch_id: &str,
    items: Vec<Item>,
    poll: &AtomicU64,
    result: &mut BatchResult,
) {
    let started = tokio::time::Instant::now();
    let first_wait =
        Duration::from_micros(poll.load(Ordering::Relaxed)).clamp(MIN_POLL, MAX_FIRST_POLL);
    let mut wait = first_wait;
    let mut polls = 0u32;
    loop {
        // The wait can be minutes when ActiveCampaign is slow: a hard stop must not wait it out.
        if client
            .wait_or_cancel(tokio::time::sleep(wait))
            .await
            .is_err()
        {
            result.abandoned = true;
            return;
        }
        polls += 1;
        match client.import_info(batch_id).await {
            Ok(info) => match info.state() {
                ImportState::Completed => {
                    let took = started.elapsed();
                    // An update, not a store: another import may have raised it meanwhile.
                    let _ = poll.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |previous| {
                        let previous = Duration::from_micros(previous);
                        let next = next_first_poll(previous, first_wait, polls, took);
                        Some(next.as_micros() as u64)
                    });
                    let failures: HashSet<String> = info.failed_emails().collect();
                    for item in items {
                        if failures.contains(&item.email) {
                            result.failed.push((item, NOT_IMPORTED.to_owned()));
                        } else {
                            result.delivered.push(item);
                        }
                    }
                    return;
                }
                ImportState::Failed => {
                    let reason = format!(
                        "ActiveCampaign reported import {batch_id} as {}",
                        info.status.as_str().unwrap_or("failed")
                    );
                    result
                        .failed
                        .extend(items.into_iter().map(|i| (i, reason.clone())));
                    result.batch_error = Some(reason);
                    return;
                }
                ImportState::Pending => {
                    // Imports take at least this long now: the next ones need not ask sooner.
                    let pending_for = started.elapsed().min(MAX_FIRST_POLL);
                    poll.fetch_max(pending_for.as_micros() as u64, Ordering::Relaxed);
                }
            },
            Err(AcError::Cancelled) => {
                result.abandoned = true;
                return;
            }
            Err(e) if e.is_rejected_key() => {
                result.fatal = Some(e);
                result.abandoned = true;
                return;
            }
            Err(e) => {
                let reason = format!("import {batch_id} could not be confirmed: {e}");
                result
                    .failed
                    .extend(items.into_iter().map(|i| (i, reason.clone())));
                result.batch_error = Some(reason);
                return;
            }
        }
        if started.elapsed() > MAX_CONFIRM_WAIT {
            let reason = format!(
                "ActiveCampaign did not finish import {batch_id} within {} minutes",
                MAX_CONFIRM_WAIT.as_secs() / 60
            );
            result
                .failed
                .extend(items.into_iter().map(|i| (i, reason.clone())));
            result.batch_error = Some(reason);
            return;
        }
        wait = next_retry_poll(first_wait, wait, polls);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(len: usize) -> Item {
        Item {
            email: "a@example.com".into(),
            hash: vec![],
            kind: Kind::New,
            payload: "x".repeat(len),
        }
    }

    #[test]
    fn batches_hold_at_most_250_contacts() {
        let mut page: std::collections::VecDeque<Item> = (0..600).map(|_| item(10)).collect();
        let (first, _) = take_batch(&mut page);
        assert_eq!(first.len(), 250);
        assert_eq!(page.len(), 350);
    }

    #[test]
    fn batches_stay_under_400000_bytes_measured_on_the_body() {
        let mut page: std::collections::VecDeque<Item> = (0..250).map(|_| item(3_000)).collect();
        let (batch, _) = take_batch(&mut page);
        assert!(body(&batch).len() < MAX_BULK_IMPORT_BYTES);
        assert!(batch.len() < 250 && batch.len() >= 132, "{}", batch.len());
        let mut one_more: Vec<Item> = batch;
        one_more.push(item(3_000));
        assert!(body(&one_more).len() >= MAX_BULK_IMPORT_BYTES - 3_001);
    }

    #[test]
    fn an_import_done_at_the_first_poll_shortens_the_next_first_wait() {
        let wait = Duration::from_millis(200);

        let next = next_first_poll(wait, wait, 1, Duration::from_millis(201));

        assert!(next < Duration::from_millis(195), "{next:?}");
    }

    #[test]
    fn a_missed_first_poll_is_followed_soon_then_backed_off() {
        let first = Duration::from_millis(800);

        let second = next_retry_poll(first, first, 1);
        let third = next_retry_poll(first, second, 2);

        assert_eq!(
            (second, third),
            (Duration::from_millis(100), Duration::from_millis(150))
        );
    }

    #[test]
    fn an_import_needing_several_polls_lengthens_the_next_first_wait() {
        let wait = Duration::from_millis(100);

        let next = next_first_poll(wait, wait, 3, Duration::from_millis(500));

        assert_eq!(next, Duration::from_millis(200));
    }

    #[tokio::test]
    async fn a_hard_stop_ends_a_long_wait_for_confirmation() {
        // Imports have been taking minutes: the next confirmation waits that long before its
        // first poll, and an abort must still end it at once.
        let abort = tokio_util::sync::CancellationToken::new();
        let settings = crate::settings::Settings::default();
        let options = crate::activecampaign::ClientOptions::from_settings(&settings.activecampaign);
        let base = crate::activecampaign::BaseUrl::parse("127.0.0.1:9").expect("loopback host");
        let client =
            Client::new(base, "key".to_owned().into(), options, abort.clone()).expect("client");
        let poll = AtomicU64::new(Duration::from_secs(240).as_micros() as u64);
        let mut result = BatchResult::default();
        let stopper = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            abort.cancel();
        };

        let confirming = confirm(&client, "batch", vec![item(10)], &poll, &mut result);
        let ((), ()) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(confirming, stopper)
        })
        .await
        .expect("the abort ended the wait");

        assert!(result.abandoned);
        assert!(result.delivered.is_empty() && result.failed.is_empty());
    }

    #[test]
    fn a_contact_too_large_for_any_import_is_set_aside() {
        let mut page: std::collections::VecDeque<Item> = vec![item(400_000), item(5)].into();
        let (batch, oversized) = take_batch(&mut page);
        assert_eq!((batch.len(), oversized.len()), (1, 1));
    }
}
