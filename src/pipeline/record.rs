//! Record: the one place a run's outcome is kept. The recorder owns the run's counts, the
//! rejected, failed and suppressed profiles it records (masked, capped per run), the progress it reports,
//! and the finish. The planner and the delivery tell it what happened; the store writes it.
//! A dry run records into its plan instead of the history.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{PipelineError, Plan, Progress};
use crate::redact::mask_email;
use crate::store::delivery::SuppressReason;
use crate::store::faults::FinishNote;
use crate::store::{
    Doing, IssueKind, RunCounts, RunIssue, RunRecord, RunStatus, Store, StoreError,
};

/// Rejected and failed profiles kept per run with details; counts stay exact beyond it.
pub const MAX_ISSUES_PER_RUN: u64 = 10_000;
/// Samples of rejected rows shown by a dry run.
const DRY_RUN_SAMPLES: usize = 20;
/// Issues held before they are written.
const ISSUES_PER_WRITE: usize = 1_000;
/// How often progress reaches the database (for `status` and a CLI following a daemon run).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Before a finish that hit a fault is tried once more: a moment for a fault that clears by
/// itself (another process's write lock let go, a log rotated off a full disk).
const FINISH_RETRY_WAIT: Duration = Duration::from_secs(1);

/// Where the record goes.
enum Target {
    /// The run's history.
    Run {
        store: Store,
        run_id: i64,
        /// Names the lock file a finish that cannot be written leaves its note in.
        export_id: i64,
    },
    /// A dry run's plan: samples only, nothing written.
    Plan(Plan),
}

pub struct Recorder {
    pub counts: RunCounts,
    /// Contacts in accepted imports left unconfirmed (they stay recorded for the next run).
    pub unconfirmed: u64,
    target: Target,
    /// Issues not yet written.
    pending: Vec<RunIssue>,
    /// Issues kept so far (the cap counts them).
    issues_kept: u64,
    progress: Arc<dyn Progress>,
    phase: &'static str,
    last_flush: Instant,
}

impl Recorder {
    pub fn for_run(store: Store, run: &RunRecord, progress: Arc<dyn Progress>) -> Recorder {
        let target = Target::Run {
            store,
            run_id: run.id,
            export_id: run.export_id,
        };
        Recorder::new(target, progress, "preflight")
    }

    pub fn for_dry_run(progress: Arc<dyn Progress>) -> Recorder {
        Recorder::new(Target::Plan(Plan::default()), progress, "reading")
    }

    fn new(target: Target, progress: Arc<dyn Progress>, phase: &'static str) -> Recorder {
        Recorder {
            counts: RunCounts::default(),
            unconfirmed: 0,
            target,
            pending: Vec::new(),
            issues_kept: 0,
            progress,
            phase,
            last_flush: Instant::now(),
        }
    }

    /// A source row the data matching refused.
    pub async fn rejected(
        &mut self,
        segment: &str,
        row: u64,
        email: Option<&str>,
        reason: &str,
    ) -> Result<(), PipelineError> {
        self.counts.rejected += 1;
        let issue = RunIssue {
            kind: IssueKind::Rejected,
            source: segment.to_owned(),
            row: Some(row as i64),
            email: email
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(mask_email),
            reason: reason.to_owned(),
        };
        if let Target::Plan(plan) = &mut self.target {
            if plan.sample_rejects.len() < DRY_RUN_SAMPLES {
                plan.sample_rejects.push(issue);
            }
            return Ok(());
        }
        if self.keep_one() {
            self.pending.push(issue);
        }
        if self.pending.len() >= ISSUES_PER_WRITE {
            self.flush(false).await?;
        }
        Ok(())
    }

    /// A contact ActiveCampaign did not import, recorded with the next write.
    pub fn failed(&mut self, email: &str, reason: &str) {
        self.counts.failed += 1;
        if let Some(issue) = self.failure_issue(email, reason) {
            self.pending.push(issue);
        }
    }

    /// A failed contact's record, unless the per-run cap is reached; for the caller to write
    /// with the batch it belongs to (whose commit carries the counts).
    pub fn failure_issue(&mut self, email: &str, reason: &str) -> Option<RunIssue> {
        self.keep_one().then(|| RunIssue {
            kind: IssueKind::Failed,
            source: "activecampaign".to_owned(),
            row: None,
            email: Some(mask_email(email)),
            reason: reason.to_owned(),
        })
    }

    /// A suppressed contact's record (why ActiveCampaign will not take it), unless the
    /// per-run cap is reached; written with its batch like a failure's.
    pub fn suppressed_issue(&mut self, email: &str, reason: SuppressReason) -> Option<RunIssue> {
        self.keep_one().then(|| RunIssue {
            kind: IssueKind::Suppressed,
            source: "activecampaign".to_owned(),
            row: None,
            email: Some(mask_email(email)),
            reason: reason.explain().to_owned(),
        })
    }

    fn keep_one(&mut self) -> bool {
        let keep = self.issues_kept < MAX_ISSUES_PER_RUN;
        self.issues_kept += u64::from(keep);
        keep
    }

    /// Reports progress; writes it (with pending issues) at most once a second.
    pub async fn progress(&mut self) {
        self.progress.report(self.phase, &self.counts);
        if self.last_flush.elapsed() > PROGRESS_EVERY {
            // Best effort: the next write or the finish records it anyway.
            let _ = self.flush(true).await;
        }
    }

    /// Writes pending issues, and the counts when `with_counts`.
    pub async fn flush(&mut self, with_counts: bool) -> Result<(), PipelineError> {
        self.last_flush = Instant::now();
        let Target::Run { store, run_id, .. } = &self.target else {
            self.pending.clear();
            return Ok(());
        };
        if self.pending.is_empty() && !with_counts {
            return Ok(());
        }
        let mut tx = store.write().await?;
        Store::record_issues(&mut tx, *run_id, &self.pending).await?;
        if with_counts {
            Store::write_run_counts(&mut tx, *run_id, &self.counts).await?;
        }
        tx.commit().await.doing("recording rejected profiles")?;
        self.pending.clear();
        Ok(())
    }

    /// Enters a phase (`reading`, `sending`, ...), shown by `status` and progress displays.
    pub async fn phase(&mut self, phase: &'static str) {
        self.phase = phase;
        self.progress.report(phase, &self.counts);
        if let Target::Run { store, run_id, .. } = &self.target {
            let _ = store.set_run_phase(*run_id, phase).await;
        }
    }

    /// Records the end of the run: pending issues, final counts and status.
    ///
    /// A finish that hits a store fault is tried once more after [`FINISH_RETRY_WAIT`]; if it
    /// still cannot be written, what it would have recorded is left as a note in the export's
    /// lock file, and the next start of the export (or of the daemon) records it, so the run
    /// is not left `running`. The fault is returned either way.
    pub async fn finish(
        &mut self,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let _ = self.flush(false).await;
        let Target::Run {
            store,
            run_id,
            export_id,
        } = &self.target
        else {
            return Ok(());
        };
        match store.finish_run(*run_id, status, &self.counts, error).await {
            Ok(()) => return Ok(()),
            Err(e) if e.fault().is_none() => return Err(e),
            Err(_) => tokio::time::sleep(FINISH_RETRY_WAIT).await,
        }
        let fault = match store.finish_run(*run_id, status, &self.counts, error).await {
            Ok(()) => return Ok(()),
            Err(e) if e.fault().is_none() => return Err(e),
            Err(e) => e,
        };
        let note = FinishNote {
            run_id: *run_id,
            status: status.as_str().to_owned(),
            error: error.map(str::to_owned),
            counts: self.counts,
            fault: fault.to_string(),
        };
        if let Err(io) = store.leave_finish_note(*export_id, &note) {
            tracing::error!(
                error = %io,
                "Cannot leave a note of the run's finish either: the next start records the \
                 run as interrupted"
            );
        }
        Err(fault)
    }

    /// A dry run's plan with the samples recorded.
    pub fn take_plan(&mut self) -> Plan {
        match &mut self.target {
            Target::Plan(plan) => std::mem::take(plan),
            Target::Run { .. } => Plan::default(),
        }
    }
}
