//! One batch: send it as a bulk import, then confirm it with `import/info` before its outcome
//! is recorded. The wait before the first poll adapts to how long imports take, so a fast
//! ActiveCampaign is not kept waiting and a slow one is not flooded.
//!
//! Accepted is not failed: once ActiveCampaign queued an import, its members are reported to
//! the delivery loop, which records the import (group commit) so that a run that dies before
//! the confirmation confirms it on resume instead of sending it again. An `import/info` that
//! cannot be read is asked again later; an import whose outcome stays unknown is left
//! `accepted`, never counted failed or sent again while ActiveCampaign may have it.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use super::SendingSlot;
use super::outbox::body;
use crate::activecampaign::wire::{BulkOutcome, ImportState};
use crate::activecampaign::{AcError, Client, MAX_BULK_IMPORT_BYTES};
use crate::pipeline::control::RunControl;
use crate::store::delivery::{AcceptedImport, OutboxItem, SuppressReason};

/// Longest wait for ActiveCampaign to finish one import.
const MAX_CONFIRM_WAIT: Duration = Duration::from_secs(20 * 60);
/// Bounds of the wait between `import/info` polls.
const MIN_POLL: Duration = Duration::from_millis(20);
const MAX_POLL: Duration = Duration::from_secs(10);
/// The first imports' wait before their first poll: short, because each poll that finds an
/// import unfinished raises the wait of every later one.
pub(super) const FIRST_POLL_START: Duration = Duration::from_millis(50);
/// Longest wait before the first poll: the time imports have been taking, up to this.
const MAX_FIRST_POLL: Duration = Duration::from_secs(5 * 60);
/// Why ActiveCampaign lists a contact in `failure` (its docs give these causes).
const NOT_IMPORTED: &str = "ActiveCampaign did not import this contact (excluded, bounced, \
     unsubscribed from the list earlier, or over the account's contact limit)";

/// Why a batch's contacts are sent again when `import/info` lists failures it cannot match.
const UNMATCHED_FAILURES: &str = "ActiveCampaign's import report lists failures that name no \
     contact of the batch, so which contacts it imported is unknown; sent again";

/// What became of one batch.
#[derive(Debug, Default)]
pub(super) struct BatchResult {
    /// ActiveCampaign's id of the import, once it accepted it.
    pub(super) batch_id: Option<String>,
    pub(super) delivered: Vec<OutboxItem>,
    pub(super) failed: Vec<(OutboxItem, String)>,
    /// Not imported, and ActiveCampaign will not take them (see [`super::suppress`]).
    pub(super) suppressed: Vec<(OutboxItem, SuppressReason)>,
    /// Accepted, and whether ActiveCampaign imported them could not be learnt: the import
    /// stays recorded as accepted and a later run confirms it.
    pub(super) unconfirmed: Vec<OutboxItem>,
    /// The batch as a whole failed with this error (its contacts are in `failed`).
    pub(super) batch_error: Option<String>,
    /// A key rejection or a redirect: the run must stop.
    pub(super) fatal: Option<AcError>,
    /// Stopped or aborted before confirmation: sent again on resume, unless it was accepted
    /// (then its record is confirmed on resume).
    pub(super) abandoned: bool,
}

impl BatchResult {
    /// The import was accepted and its outcome is known now: its record can go.
    pub(super) fn resolved(&self) -> bool {
        self.batch_id.is_some() && !self.abandoned && self.unconfirmed.is_empty()
    }
}

/// Where accepted imports are reported for the next group commit.
#[derive(Clone)]
pub(super) struct AcceptedTx {
    pub(super) tx: UnboundedSender<AcceptedImport>,
    pub(super) list_id: i64,
}

impl AcceptedTx {
    fn report(&self, client: &Client, batch_id: &str, items: &[OutboxItem]) {
        let import = AcceptedImport {
            batch_id: batch_id.to_owned(),
            host: client.host().to_owned(),
            list_id: self.list_id,
            items: items.iter().map(without_payload).collect(),
        };
        // The loop outlives every batch task; a send can only fail once it has returned.
        let _ = self.tx.send(import);
    }
}

/// What the delivery state needs of an item.
fn without_payload(item: &OutboxItem) -> OutboxItem {
    OutboxItem {
        email: item.email.clone(),
        hash: item.hash.clone(),
        kind: item.kind,
        payload: String::new(),
        sent_fields: item.sent_fields,
    }
}

/// Sends one batch and waits for ActiveCampaign's verdict. A batch refused for some of its
/// contacts is sent again without them.
pub(super) async fn deliver_batch(
    client: Arc<Client>,
    list_id: i64,
    mut items: Vec<OutboxItem>,
    slot: SendingSlot,
    poll: Arc<AtomicU64>,
    control: RunControl,
    accepted: AcceptedTx,
) -> BatchResult {
    // Asked once the rate permit is granted: a batch not yet sent when the run is told to stop
    // stays for the next run, so "stop at the next batch boundary" holds even with many
    // batches waiting for permits.
    let go_on = move || control.stop_reason().is_none();
    let mut result = BatchResult::default();
    super::suppress::resubscribe_returning(&client, list_id, &mut items, &mut result).await;
    if result.fatal.is_some() {
        result.abandoned = true;
        return result;
    }
    while !items.is_empty() {
        let payload = body(&items);
        debug_assert!(payload.len() < MAX_BULK_IMPORT_BYTES);
        match client.bulk_import(payload, &go_on).await {
            Ok(BulkOutcome::Queued { batch_id }) => {
                drop(slot);
                // ActiveCampaign has the payloads now; an import that waits minutes for
                // confirmation holds only what the delivery state records.
                for item in &mut items {
                    item.payload = String::new();
                }
                accepted.report(&client, &batch_id, &items);
                result.batch_id = Some(batch_id.clone());
                confirm(&client, list_id, &batch_id, items, &poll, &mut result).await;
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
            Err(AcError::Stopped | AcError::Aborted) => {
                result.abandoned = true;
                return result;
            }
            Err(e) if e.stops_the_run() => {
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
/// imports took, so a fast server is not kept waiting and a slow one is not flooded. An answer
/// that cannot be read is asked for again, with the same backoff, until [`MAX_CONFIRM_WAIT`];
/// an import still unconfirmed then is left `unconfirmed` (accepted), never failed.
pub(super) async fn confirm(
    client: &Client,
    list_id: i64,
    batch_id: &str,
    items: Vec<OutboxItem>,
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
            .wait_or_abort(tokio::time::sleep(wait))
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
                    let (not_imported, imported): (Vec<_>, Vec<_>) = items
                        .into_iter()
                        .partition(|item| failures.contains(&item.email));
                    if not_imported.len() < info.failure.len() {
                        // A failure entry that names none of the batch's contacts (not a
                        // string, or another address): which contacts were imported is not
                        // known, so none is recorded delivered; they are sent again.
                        result.failed.extend(
                            imported
                                .into_iter()
                                .map(|i| (i, UNMATCHED_FAILURES.to_owned())),
                        );
                    } else {
                        result.delivered.extend(imported);
                    }
                    super::suppress::sort_out(client, list_id, not_imported, NOT_IMPORTED, result)
                        .await;
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
            Err(AcError::Stopped | AcError::Aborted) => {
                result.abandoned = true;
                return;
            }
            Err(e) if e.stops_the_run() => {
                result.fatal = Some(e);
                result.abandoned = true;
                return;
            }
            Err(e) if is_unknown_import(&e) => {
                // Nothing says they were imported: failed, so that they are planned again.
                let reason = format!(
                    "ActiveCampaign no longer knows import {batch_id}; its contacts are sent again"
                );
                tracing::warn!(
                    batch_id,
                    "ActiveCampaign does not know an accepted import; its contacts are sent again"
                );
                result
                    .failed
                    .extend(items.into_iter().map(|i| (i, reason.clone())));
                return;
            }
            Err(e) if is_worth_asking_again(&e) => {
                tracing::warn!(batch_id, error = %e, "Import status could not be read; asking again later");
            }
            Err(e) => {
                tracing::warn!(batch_id, error = %e, "Import status cannot be read; the import stays accepted for the next run to confirm");
                result.unconfirmed = items;
                return;
            }
        }
        if started.elapsed() > MAX_CONFIRM_WAIT {
            tracing::warn!(
                batch_id,
                minutes = MAX_CONFIRM_WAIT.as_secs() / 60,
                "Import not confirmed in time; it stays accepted for the next run to confirm"
            );
            result.unconfirmed = items;
            return;
        }
        wait = next_retry_poll(first_wait, wait, polls);
    }
}

/// A 404: ActiveCampaign no longer knows the batch (it keeps them for a while only).
fn is_unknown_import(e: &AcError) -> bool {
    matches!(
        e,
        AcError::NotFound { .. } | AcError::Refused { status: 404, .. }
    )
}

/// A failure that may pass (the client already retried it): a server error, throttling, no
/// answer, or an answer that could not be read.
fn is_worth_asking_again(e: &AcError) -> bool {
    matches!(
        e,
        AcError::Server { .. }
            | AcError::Throttled { .. }
            | AcError::Timeout { .. }
            | AcError::Unreachable { .. }
            | AcError::Decode { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::deliver::outbox::tests::item;

    #[test]
    fn what_an_unreadable_import_status_leads_to() {
        let host = || "ac.example".to_owned();
        // (error, the import is unknown, worth asking again)
        let cases = [
            (
                AcError::Server {
                    host: host(),
                    status: 503,
                    attempts: 4,
                },
                false,
                true,
            ),
            (
                AcError::Throttled {
                    host: host(),
                    waited_secs: 300,
                },
                false,
                true,
            ),
            (
                AcError::Timeout {
                    host: host(),
                    secs: 30,
                    attempts: 4,
                },
                false,
                true,
            ),
            (
                AcError::Unreachable {
                    host: host(),
                    detail: "refused".into(),
                },
                false,
                true,
            ),
            (
                AcError::Decode {
                    host: host(),
                    detail: "import/info".into(),
                },
                false,
                true,
            ),
            (
                AcError::Refused {
                    host: host(),
                    status: 404,
                    answer: "HTTP 404".into(),
                },
                true,
                false,
            ),
            (
                AcError::NotFound {
                    host: host(),
                    what: "batch".into(),
                },
                true,
                false,
            ),
            (
                AcError::Refused {
                    host: host(),
                    status: 400,
                    answer: "HTTP 400".into(),
                },
                false,
                false,
            ),
        ];
        for (error, unknown, again) in cases {
            assert_eq!(
                (is_unknown_import(&error), is_worth_asking_again(&error)),
                (unknown, again),
                "{error}"
            );
        }
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

    /// A loopback host answering every request with `body` (200, JSON).
    async fn answering(body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(body.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn failures_that_name_no_contact_of_the_batch_record_none_delivered() {
        let host = answering(r#"{"status":"completed","success":[],"failure":[42]}"#).await;
        let settings = crate::settings::Settings::default();
        let options = crate::activecampaign::ClientOptions::from_settings(&settings.activecampaign);
        let base = crate::activecampaign::BaseUrl::parse(&host).expect("loopback host");
        let client = Client::new(base, "key".to_owned().into(), options, Default::default())
            .expect("client");
        let poll = AtomicU64::new(0);
        let mut result = BatchResult::default();

        confirm(&client, 1, "batch", vec![item(10)], &poll, &mut result).await;

        assert!(result.delivered.is_empty(), "{:?}", result.delivered);
        assert_eq!(result.failed.len(), 1, "{result:?}");
        assert_eq!(result.failed[0].1, UNMATCHED_FAILURES);
    }

    #[tokio::test]
    async fn a_hard_stop_ends_a_long_wait_for_confirmation() {
        // Imports have been taking minutes: the next confirmation waits that long before its
        // first poll, and an abort must still end it at once.
        let control = RunControl::new();
        let settings = crate::settings::Settings::default();
        let options = crate::activecampaign::ClientOptions::from_settings(&settings.activecampaign);
        let base = crate::activecampaign::BaseUrl::parse("127.0.0.1:9").expect("loopback host");
        let client = Client::new(
            base,
            "key".to_owned().into(),
            options,
            control.abort_token(),
        )
        .expect("client");
        let poll = AtomicU64::new(Duration::from_secs(240).as_micros() as u64);
        let mut result = BatchResult::default();
        let stopper = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            control.abort();
        };

        let confirming = confirm(&client, 1, "batch", vec![item(10)], &poll, &mut result);
        let ((), ()) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(confirming, stopper)
        })
        .await
        .expect("the abort ended the wait");

        assert!(result.abandoned);
        assert!(result.delivered.is_empty() && result.failed.is_empty());
    }
}
