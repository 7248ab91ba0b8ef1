//! The outbox side of delivery: pages read ahead from the run's work tables while batches are
//! in flight, and cut into bulk imports of at most 250 contacts and under 400,000 bytes
//! (measured on the serialised body).

use std::collections::VecDeque;
use std::pin::Pin;

use crate::activecampaign::{MAX_BULK_IMPORT_BYTES, MAX_CONTACTS_PER_BULK_IMPORT};
use crate::pipeline::PipelineError;
use crate::store::delivery::{OutboxItem, WorkTables};

/// Outbox rows read per query.
const PAGE: i64 = 2_000;
/// `{"contacts":[` ... `]}`
const BODY_OVERHEAD: usize = r#"{"contacts":[]}"#.len();

/// A page of the outbox being read; the work tables come back with it.
type PageRead<'t> = Pin<
    Box<
        dyn Future<
                Output = (
                    &'t mut WorkTables,
                    Result<Vec<(i64, OutboxItem)>, PipelineError>,
                ),
            > + Send
            + 't,
    >,
>;

/// Reads the outbox a page ahead of what is being sent.
pub(super) struct OutboxReader<'t> {
    /// The work tables, while no page is being read.
    idle: Option<&'t mut WorkTables>,
    /// The page being read, holding the work tables.
    pub(super) reading: Option<PageRead<'t>>,
    page: VecDeque<OutboxItem>,
    last_seq: i64,
    exhausted: bool,
}

impl<'t> OutboxReader<'t> {
    pub(super) fn new(tables: &'t mut WorkTables) -> Self {
        OutboxReader {
            idle: Some(tables),
            reading: None,
            page: VecDeque::new(),
            last_seq: 0,
            exhausted: false,
        }
    }

    /// Starts reading the next page unless one is being read, the page in hand is full, or
    /// the outbox is exhausted.
    pub(super) fn read_ahead(&mut self) {
        if self.exhausted || self.page.len() >= PAGE as usize {
            return;
        }
        if let Some(tables) = self.idle.take() {
            let after = self.last_seq;
            self.reading = Some(Box::pin(async move {
                let page = tables
                    .read_outbox(after, PAGE)
                    .await
                    .map_err(PipelineError::from);
                (tables, page)
            }));
        }
    }

    /// Takes a page that was read; the work tables are idle again.
    pub(super) fn on_page(
        &mut self,
        tables: &'t mut WorkTables,
        rows: Result<Vec<(i64, OutboxItem)>, PipelineError>,
    ) -> Result<(), PipelineError> {
        self.reading = None;
        self.idle = Some(tables);
        let rows = rows?;
        self.exhausted = rows.len() < PAGE as usize;
        if let Some((seq, _)) = rows.last() {
            self.last_seq = *seq;
        }
        self.page.extend(rows.into_iter().map(|(_, item)| item));
        Ok(())
    }

    /// Whether a batch can be cut now: a short batch only at the very end of the outbox.
    pub(super) fn has_batch(&self) -> bool {
        self.page.len() >= MAX_CONTACTS_PER_BULK_IMPORT || self.exhausted
    }

    /// Nothing left to read or send.
    pub(super) fn is_empty(&self) -> bool {
        self.exhausted && self.page.is_empty()
    }

    /// The next batch off the page, and the contacts too large to send at all.
    pub(super) fn take_batch(&mut self) -> (Vec<OutboxItem>, Vec<OutboxItem>) {
        take_batch(&mut self.page)
    }
}

/// Takes the next batch off the page: up to 250 contacts whose body stays under 400,000 bytes.
/// Contacts too large to send at all are returned separately.
fn take_batch(page: &mut VecDeque<OutboxItem>) -> (Vec<OutboxItem>, Vec<OutboxItem>) {
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

/// The bulk-import request body: the payloads joined into `{"contacts":[...]}`.
pub(super) fn body(items: &[OutboxItem]) -> Vec<u8> {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::delivery::OutboxKind;

    pub(in crate::pipeline::deliver) fn item(len: usize) -> OutboxItem {
        OutboxItem {
            email: "a@example.com".into(),
            hash: vec![],
            kind: OutboxKind::New,
            payload: "x".repeat(len),
            sent_fields: 0,
        }
    }

    #[test]
    fn batches_hold_at_most_250_contacts() {
        let mut page: VecDeque<OutboxItem> = (0..600).map(|_| item(10)).collect();
        let (first, _) = take_batch(&mut page);
        assert_eq!(first.len(), 250);
        assert_eq!(page.len(), 350);
    }

    #[test]
    fn batches_stay_under_400000_bytes_measured_on_the_body() {
        let mut page: VecDeque<OutboxItem> = (0..250).map(|_| item(3_000)).collect();
        let (batch, _) = take_batch(&mut page);
        assert!(body(&batch).len() < MAX_BULK_IMPORT_BYTES);
        assert!(batch.len() < 250 && batch.len() >= 132, "{}", batch.len());
        let mut one_more: Vec<OutboxItem> = batch;
        one_more.push(item(3_000));
        assert!(body(&one_more).len() >= MAX_BULK_IMPORT_BYTES - 3_001);
    }

    #[test]
    fn a_contact_too_large_for_any_import_is_set_aside() {
        let mut page: VecDeque<OutboxItem> = vec![item(400_000), item(5)].into();
        let (batch, oversized) = take_batch(&mut page);
        assert_eq!((batch.len(), oversized.len()), (1, 1));
    }
}
