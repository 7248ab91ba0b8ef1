//! Read and plan: every segment is streamed through the data matching; members are
//! de-duplicated and compared with the export's delivery state in the run's work tables
//! (`store::delivery`), so memory stays flat whatever the segment size. The result is an
//! outbox of new, changed and leaving members, and exact counts.
//!
//! A resumed run plans again from the sources; what was confirmed before the crash is then
//! unchanged and is not sent twice.
//!
//! A member's mapped values that were sent non-empty before and are empty now are sent as ""
//! (clearing them in ActiveCampaign): staging marks them from the bits the delivery state
//! keeps, and the payloads are completed once all segments are read.

use std::borrow::Cow;
use std::collections::HashSet;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::PipelineError;
use super::control::RunControl;
use super::matching::{Matching, Member};
use super::record::Recorder;
use crate::secrets::ProfileHasher;
use crate::source::{self, RowStream, SourceDef, SourceError};
use crate::store::delivery::{Staged, WorkTables};
use crate::store::exports::OnLeave;
use crate::store::{ExportDef, Store};

/// Rows read from a source per chunk; also the number of members looked up per statement.
pub const CHUNK: usize = 2048;

/// Mapped chunks the matching task may run ahead of planning.
const MAPPED_AHEAD: usize = 2;
/// Outbox entries completed with their emptied values per round trip.
const CLEARS_PER_READ: i64 = 500;

/// One chunk of source rows after matching.
struct MappedChunk {
    /// Source rows it came from.
    rows: u64,
    members: Vec<Member>,
    rejects: Vec<Reject>,
}

/// A row the matching refused, with what its record needs.
struct Reject {
    row: u64,
    /// The raw email value, masked when recorded.
    email: Option<String>,
    reason: Cow<'static, str>,
}

/// The matching task: maps chunks of rows until the source ends, fails, or planning stops
/// listening.
async fn map_rows(
    mut rows: RowStream,
    matching: Matching,
    hasher: ProfileHasher,
    tx: mpsc::Sender<Result<MappedChunk, SourceError>>,
) {
    loop {
        let chunk = match rows.next_chunk(CHUNK).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let mut mapped = MappedChunk {
            rows: chunk.len() as u64,
            members: Vec::with_capacity(chunk.len()),
            rejects: Vec::new(),
        };
        for item in chunk {
            match item {
                Ok(row) => match matching.map(&row.values, &hasher) {
                    Ok(member) => mapped.members.push(member),
                    Err(reason) => mapped.rejects.push(Reject {
                        row: row.number,
                        email: row
                            .values
                            .into_iter()
                            .nth(matching.email_column())
                            .flatten(),
                        reason,
                    }),
                },
                Err(e) => mapped.rejects.push(Reject {
                    row: e.number,
                    email: None,
                    reason: Cow::Owned(e.reason),
                }),
            }
        }
        if tx.send(Ok(mapped)).await.is_err() {
            return;
        }
    }
}

/// Aborts the task when dropped, so a helper task (the matching, a cancel watcher) ends with
/// what it serves, also when that stops early.
pub(super) struct AbortOnDrop(pub(super) JoinHandle<()>);

impl AbortOnDrop {
    /// Waits for the task's end; an error if it panicked.
    async fn finish(mut self) -> Result<(), tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the plan found besides the counts.
#[derive(Debug, Default, Clone)]
pub struct PlanTotals {
    pub new: u64,
    pub changed: u64,
    pub leaving: u64,
    /// Unique valid members across all segments.
    pub members: u64,
}

/// A segment to read, with its name for rejection records.
pub struct SegmentSource {
    pub name: String,
    pub def: SourceDef,
}

pub struct Planner<'a> {
    pub tables: &'a mut WorkTables,
    pub export_id: i64,
    /// With `--full`: state written by runs before this id counts as not yet sent.
    pub full_floor: Option<i64>,
    pub matching: &'a Matching,
    pub hasher: &'a ProfileHasher,
    pub recorder: &'a mut Recorder,
    pub totals: PlanTotals,
    /// Checked after every chunk, so a cancel or shutdown does not wait for a whole segment.
    pub control: Option<&'a RunControl>,
    /// Whether planning may write the delivery state (not in a dry run): the fields of
    /// members delivered before acexport recorded them, learned while planning.
    pub records_state: bool,
}

/// The export's data matching, its mapped fields given their bits in the delivery state.
/// `assign` (a run, not a dry run) gives fields mapped since the last run theirs and takes
/// back those of fields no longer mapped.
pub async fn matching_for(
    store: &Store,
    export: &ExportDef,
    assign: bool,
) -> Result<Matching, PipelineError> {
    let mut matching = Matching::new(export);
    let targets = matching.field_targets();
    let slots = store.field_slots(export.id, &targets, assign).await?;
    let without = slots.iter().filter(|slot| slot.is_none()).count();
    if assign && without > 0 {
        tracing::warn!(
            fields = targets.len(),
            without,
            "More mapped fields than bits to record them: values of the last fields are never \
             sent empty, so ActiveCampaign keeps them when they are emptied in the source"
        );
    }
    matching.set_field_slots(&slots);
    Ok(matching)
}

impl Planner<'_> {
    /// Reads every segment and plans the leavers, in one transaction on the run's connection.
    pub async fn plan(
        &mut self,
        segments: &[SegmentSource],
        on_leave: OnLeave,
    ) -> Result<(), PipelineError> {
        self.tables.begin().await?;
        let mut planned = async {
            self.tables.note_unrecorded_fields(self.export_id).await?;
            for segment in segments {
                self.read_segment(segment).await?;
            }
            self.add_values_to_clear().await?;
            self.plan_leavers(on_leave).await
        }
        .await;
        if planned.is_ok() {
            planned = self.tables.commit().await.map_err(PipelineError::from);
        }
        if planned.is_err() {
            self.tables.rollback().await;
        }
        planned?;
        if self.records_state {
            let learned = self.tables.record_learned_fields(self.export_id).await?;
            if learned > 0 {
                tracing::info!(learned, "Recorded which fields earlier runs sent");
            }
        }
        Ok(())
    }

    /// Completes the payloads of planned members whose values sent before are empty now, so
    /// that those values are sent as "" and cleared.
    async fn add_values_to_clear(&mut self) -> Result<(), PipelineError> {
        loop {
            let batch = self.tables.values_to_clear(CLEARS_PER_READ).await?;
            if batch.is_empty() {
                return Ok(());
            }
            let payloads = batch
                .into_iter()
                .map(|entry| {
                    let payload = self
                        .matching
                        .clearing_payload(&entry.payload, entry.fields)
                        .ok_or(PipelineError::Internal(
                            "a planned contact could not be read back to clear its values",
                        ))?;
                    Ok((entry.seq, payload))
                })
                .collect::<Result<Vec<_>, PipelineError>>()?;
            self.tables.write_clearing_payloads(&payloads).await?;
        }
    }

    /// Streams one segment through matching and planning. Matching runs in a task of its own,
    /// a chunk or two ahead, so that mapping the next chunk overlaps SQLite planning this one.
    async fn read_segment(&mut self, segment: &SegmentSource) -> Result<(), PipelineError> {
        let rows = source::open(&segment.def, self.matching.columns())
            .await
            .map_err(|e| PipelineError::Source {
                segment: segment.name.clone(),
                source: e,
            })?;
        let (tx, mut mapped) = mpsc::channel(MAPPED_AHEAD);
        let mapper = AbortOnDrop(tokio::spawn(map_rows(
            rows,
            self.matching.clone(),
            self.hasher.clone(),
            tx,
        )));
        while let Some(chunk) = mapped.recv().await {
            let chunk = chunk.map_err(|e| PipelineError::Source {
                segment: segment.name.clone(),
                source: e,
            })?;
            self.recorder.counts.rows_read += chunk.rows;
            for reject in chunk.rejects {
                self.recorder
                    .rejected(
                        &segment.name,
                        reject.row,
                        reject.email.as_deref(),
                        &reject.reason,
                    )
                    .await?;
            }
            self.plan_members(chunk.members).await?;
            self.recorder.progress().await;
            if let Some(reason) = self.control.and_then(RunControl::stop_reason) {
                return Err(PipelineError::Stopped(reason));
            }
        }
        // The channel closes when the mapper ends: at the end of the rows, or on a panic,
        // which must not look like the end of the data.
        mapper.finish().await.map_err(|e| PipelineError::Source {
            segment: segment.name.clone(),
            source: SourceError::ReaderFailed {
                source_name: segment.name.clone(),
                message: format!("the matching task failed: {e}"),
            },
        })
    }

    /// De-duplicates a chunk (first occurrence wins) and sorts it into new, changed and
    /// unchanged. The set work happens in SQLite over the whole chunk, so that no row travels
    /// back from the database.
    async fn plan_members(&mut self, members: Vec<Member>) -> Result<(), PipelineError> {
        if members.is_empty() {
            return Ok(());
        }
        let mut in_chunk = HashSet::with_capacity(members.len());
        let mut candidates = Vec::with_capacity(members.len());
        for member in &members {
            if in_chunk.insert(member.key.as_str()) {
                candidates.push(Staged {
                    email: &member.key,
                    hash: &member.fingerprint,
                    payload: &member.payload,
                    sent_fields: member.sent_fields,
                });
            } else {
                self.recorder.counts.duplicates += 1;
            }
        }
        let staged = self
            .tables
            .stage_chunk(self.export_id, self.full_floor, &candidates)
            .await?;
        let counts = &mut self.recorder.counts;
        counts.duplicates += staged.seen_before;
        counts.planned += staged.planned;
        counts.unchanged += staged.fresh - staged.planned - staged.held;
        counts.suppressed += staged.held;
        self.totals.members += staged.fresh;
        Ok(())
    }

    /// Members delivered earlier who are in no segment now. With `unsubscribe` they join the
    /// outbox; with `keep` they are only counted (and forgotten when the run finishes).
    async fn plan_leavers(&mut self, on_leave: OnLeave) -> Result<(), PipelineError> {
        (self.totals.new, self.totals.changed) = self.tables.count_outbox().await?;
        let leaving = self.tables.find_leavers(self.export_id).await?;
        self.totals.leaving = leaving;
        if on_leave == OnLeave::Unsubscribe && leaving > 0 {
            // The payload needs only the email and the list; it is built in SQL to stay
            // streaming.
            const SLOT: &str = "acexport-email-slot";
            let template = self.matching.unsubscribe_payload(SLOT);
            let (before, after) = template.split_once(&format!("\"{SLOT}\"")).ok_or_else(|| {
                PipelineError::Internal("the unsubscribe template has no email slot")
            })?;
            self.tables
                .plan_unsubscribes(self.export_id, before, after)
                .await?;
        }
        Ok(())
    }
}
