//! The export engine, one readable chain: preflight → read and plan (stream every segment
//! through the data matching, diff against the delivery state) → deliver (bulk imports,
//! confirmed) → finish. The run row exists before any work, progress is committed per batch,
//! and the finish is recorded on every path.

pub mod deliver;
pub mod matching;
pub mod plan;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::activecampaign::AcError;
use crate::service::{Context, ServiceError, mask_email};
use crate::source::SourceError;
use crate::store::exports::OnLeave;
use crate::store::runs::StartRefused;
use crate::store::{
    Doing, ExportDef, RunCounts, RunIssue, RunRecord, RunStatus, Store, StoreError,
};
use matching::Matching;
use plan::{PlanTotals, Planner, SegmentSource};

/// Rejected and failed profiles kept per run with details; counts stay exact beyond it.
const MAX_ISSUES_PER_RUN: u64 = 10_000;
/// Samples of each kind shown by a dry run.
const DRY_RUN_SAMPLES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("export {export:?} is already running (run {run_id})")]
    AlreadyRunning { export: String, run_id: i64 },
    #[error(
        "the export has {found} valid profiles, more than export.max_profiles ({max}); nothing \
         was sent. Raise export.max_profiles in the settings if this is intended"
    )]
    TooManyProfiles { found: u64, max: u64 },
    #[error("segment {segment:?}: {source}")]
    Source {
        segment: String,
        source: SourceError,
    },
    #[error(transparent)]
    ActiveCampaign(#[from] AcError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
    /// Stopped on request before the work was done (not a failure).
    #[error("stopped: {0:?}")]
    Stopped(StopReason),
}

/// Who or what started a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// manual | schedule | signal-file | resume ...
    pub trigger: String,
    /// Treat every member as changed.
    pub full: bool,
    /// Plan only: send nothing, change no state.
    pub dry_run: bool,
}

/// Receives progress; the CLI draws a bar, the daemon updates systemd's STATUS.
pub trait Progress: Send + Sync {
    fn report(&self, phase: &str, counts: &RunCounts);
}

/// No progress display.
pub struct Silent;
impl Progress for Silent {
    fn report(&self, _: &str, _: &RunCounts) {}
}

/// What a dry run would do.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub adds: u64,
    pub updates: u64,
    pub unchanged: u64,
    pub unsubscribes: u64,
    /// Members who left and are forgotten (on-leave keep).
    pub forgotten: u64,
    pub rejected: u64,
    pub duplicates: u64,
    pub sample_rejects: Vec<RunIssue>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub run_id: Option<i64>,
    pub export: String,
    pub status: RunStatus,
    pub counts: RunCounts,
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    pub seconds: f64,
}

/// Why delivery stopped before the outbox was empty.
#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    /// `acexport cancel`: recorded `cancelled`.
    Cancelled,
    /// Daemon shutdown: recorded `interrupted`, resumed at next start.
    Shutdown,
    /// ActiveCampaign keeps failing whole imports.
    Failing(String),
}

/// Answers "should this run stop at the next batch boundary?" without a query per batch.
#[derive(Clone)]
pub struct Stopper {
    shutdown: CancellationToken,
    cancelled: Arc<AtomicBool>,
}

impl Stopper {
    pub fn reason(&self) -> Option<StopReason> {
        if self.shutdown.is_cancelled() {
            Some(StopReason::Shutdown)
        } else if self.cancelled.load(Ordering::Relaxed) {
            Some(StopReason::Cancelled)
        } else {
            None
        }
    }
}

/// Where rejections and progress go: the run's history, or a dry run's plan.
pub struct Sink {
    store: Option<(Store, i64)>,
    pending: Vec<RunIssue>,
    issues_kept: u64,
    plan: Option<Plan>,
    progress: Arc<dyn Progress>,
    phase: &'static str,
    last_flush: Instant,
}

impl Sink {
    async fn rejected(
        &mut self,
        segment: &str,
        row: u64,
        email: Option<&str>,
        reason: &str,
    ) -> Result<(), PipelineError> {
        let issue = RunIssue {
            kind: "rejected".to_owned(),
            source: segment.to_owned(),
            row: Some(row as i64),
            email: email
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(mask_email),
            reason: reason.to_owned(),
        };
        if let Some(plan) = &mut self.plan {
            if plan.sample_rejects.len() < DRY_RUN_SAMPLES {
                plan.sample_rejects.push(issue);
            }
            return Ok(());
        }
        if self.issues_kept < MAX_ISSUES_PER_RUN {
            self.issues_kept += 1;
            self.pending.push(issue);
        }
        if self.pending.len() >= 1_000 {
            self.flush(None).await?;
        }
        Ok(())
    }

    async fn failed(&mut self, email: &str, reason: &str) -> Result<(), PipelineError> {
        if let Some(issue) = self.failure_issue(email, reason) {
            self.pending.push(issue);
        }
        Ok(())
    }

    /// A failed profile's record, unless the per-run cap is reached.
    fn failure_issue(&mut self, email: &str, reason: &str) -> Option<RunIssue> {
        if self.issues_kept >= MAX_ISSUES_PER_RUN {
            return None;
        }
        self.issues_kept += 1;
        Some(RunIssue {
            kind: "failed".to_owned(),
            source: "activecampaign".to_owned(),
            row: None,
            email: Some(mask_email(email)),
            reason: reason.to_owned(),
        })
    }

    async fn progress(&mut self, counts: &RunCounts) {
        self.progress.report(self.phase, counts);
        if self.last_flush.elapsed() > Duration::from_secs(1) {
            // Progress is visible to `status` and to a CLI following a daemon run.
            let _ = self.flush(Some(counts)).await;
        }
    }

    async fn flush(&mut self, counts: Option<&RunCounts>) -> Result<(), PipelineError> {
        self.last_flush = Instant::now();
        let Some((store, run_id)) = &self.store else {
            self.pending.clear();
            return Ok(());
        };
        if self.pending.is_empty() && counts.is_none() {
            return Ok(());
        }
        let mut tx = store.write().await?;
        Store::record_issues(&mut tx, *run_id, &self.pending).await?;
        if let Some(counts) = counts {
            Store::write_run_counts(&mut tx, *run_id, counts).await?;
        }
        tx.commit().await.doing("recording rejected profiles")?;
        self.pending.clear();
        Ok(())
    }

    async fn phase(&mut self, phase: &'static str, counts: &RunCounts) {
        self.phase = phase;
        self.progress.report(phase, counts);
        if let Some((store, run_id)) = &self.store {
            let _ = store.set_run_phase(*run_id, phase).await;
        }
    }
}

/// Runs an export now, in this process. Returns the outcome also when the run failed (the
/// failure is recorded); `Err` only when no run could be recorded at all.
pub async fn run_export(
    ctx: &Context,
    export_name: &str,
    options: RunOptions,
    progress: Arc<dyn Progress>,
) -> Result<RunOutcome, PipelineError> {
    let export = ctx.find_export(export_name).await?;
    if options.dry_run {
        return dry_run(ctx, &export, progress).await;
    }
    let (run, _run_lock) = match ctx
        .store
        .start_run(export.id, &options.trigger, options.full)
        .await?
    {
        Ok(started) => started,
        Err(StartRefused::AlreadyRunning(run_id)) => {
            return Err(PipelineError::AlreadyRunning {
                export: export.name.clone(),
                run_id,
            });
        }
    };
    let span = tracing::info_span!("run", export = %export.name, run_id = run.id);
    async move {
        let started = Instant::now();
        tracing::info!(trigger = %options.trigger, full = run.full, resumes = ?run.resumes_run_id, "Run started");
        let mut counts = RunCounts::default();
        let mut sink = Sink {
            store: Some((ctx.store.clone(), run.id)),
            pending: Vec::new(),
            issues_kept: 0,
            plan: None,
            progress,
            phase: "preflight",
            last_flush: Instant::now(),
        };
        let cancelled = Arc::new(AtomicBool::new(false));
        let watcher = watch_cancel(ctx.store.clone(), run.id, Arc::clone(&cancelled));
        let stopper = Stopper { shutdown: ctx.cancel.clone(), cancelled };
        let result = execute(ctx, &export, &run, &mut counts, &mut sink, &stopper).await;
        watcher.abort();
        let _ = sink.flush(None).await;
        // A stop (cancel, shutdown) is an outcome, not an error.
        let result = match result {
            Err(PipelineError::Stopped(reason)) => Ok(Some(reason)),
            Err(PipelineError::ActiveCampaign(AcError::Cancelled)) => Ok(Some(StopReason::Shutdown)),
            other => other,
        };
        let (status, error) = match &result {
            Ok(None) if counts.failed > 0 => (RunStatus::Partial, None),
            Ok(None) => (RunStatus::Succeeded, None),
            Ok(Some(StopReason::Cancelled)) => (RunStatus::Cancelled, Some("cancelled by request".to_owned())),
            Ok(Some(StopReason::Shutdown)) => (RunStatus::Interrupted, Some("stopped by shutdown; resumes at next start".to_owned())),
            Ok(Some(StopReason::Failing(why))) => (RunStatus::Failed, Some(why.clone())),
            Err(e) => (RunStatus::Failed, Some(e.to_string())),
        };
        if let Err(PipelineError::ActiveCampaign(e)) = &result
            && e.is_rejected_key()
        {
            let _ = ctx.store.record_connection_check(export.connection_id, crate::store::connections::ConnectionStatus::Rejected, Some(&e.to_string())).await;
        }
        ctx.store.finish_run(run.id, status, &counts, error.as_deref()).await?;
        let seconds = started.elapsed().as_secs_f64();
        match status {
            RunStatus::Failed => tracing::error!(
                error = error.as_deref().unwrap_or(""), rows_read = counts.rows_read,
                upserted = counts.upserted, failed = counts.failed, "Run failed"
            ),
            _ => tracing::info!(
                status = %status, seconds = format!("{seconds:.1}"), rows_read = counts.rows_read,
                rejected = counts.rejected, duplicates = counts.duplicates,
                unchanged = counts.unchanged, upserted = counts.upserted,
                unsubscribed = counts.unsubscribed, failed = counts.failed,
                requests = counts.requests, "Run finished"
            ),
        }
        Ok(RunOutcome {
            run_id: Some(run.id),
            export: export.name.clone(),
            status,
            counts,
            error,
            plan: None,
            seconds,
        })
    }
    .instrument(span)
    .await
}

/// The first run of a chain of resumed `--full` runs: state written since then is this full
/// run's own and need not be sent again.
async fn full_floor(store: &Store, run: &RunRecord) -> Result<i64, PipelineError> {
    let mut floor = run.id;
    let mut previous = run.resumes_run_id;
    while let Some(id) = previous {
        match store.run(id).await? {
            Some(p) if p.full => {
                floor = p.id;
                previous = p.resumes_run_id;
            }
            _ => break,
        }
    }
    Ok(floor)
}

/// Polls the run's cancel flag (set by `acexport cancel`) twice a second.
fn watch_cancel(store: Store, run_id: i64, flag: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            if store.cancel_requested(run_id).await.unwrap_or(false) {
                flag.store(true, Ordering::Relaxed);
                return;
            }
        }
    })
}

async fn prepare(
    ctx: &Context,
    export: &ExportDef,
) -> Result<(crate::activecampaign::Client, Vec<SegmentSource>), PipelineError> {
    let connection = ctx
        .store
        .connection_by_id(export.connection_id)
        .await?
        .ok_or_else(|| PipelineError::Internal("export without connection".to_owned()))?;
    let client = ctx.client(&connection)?;
    let mut segments = Vec::new();
    for s in &export.segments {
        let def = ctx.find_segment(&s.name).await?;
        segments.push(SegmentSource {
            name: s.name.clone(),
            def: ctx.source_def(&def)?,
        });
    }
    Ok((client, segments))
}

/// Preflight: the key still works and the list still exists. Nothing is sent otherwise.
async fn preflight(
    client: &crate::activecampaign::Client,
    export: &ExportDef,
) -> Result<(), PipelineError> {
    client.users_me().await?;
    client.list(export.list_id).await?;
    Ok(())
}

/// What reading and planning leave for delivery.
struct Planned {
    client: crate::activecampaign::Client,
    conn: sqlx::SqliteConnection,
    totals: PlanTotals,
}

/// Preflight, then read every segment through the data matching and plan against the
/// delivery state. Shared by runs and dry runs.
async fn read_and_plan(
    ctx: &Context,
    export: &ExportDef,
    full_floor: Option<i64>,
    counts: &mut RunCounts,
    sink: &mut Sink,
    stopper: Option<&Stopper>,
) -> Result<Planned, PipelineError> {
    let (client, segments) = prepare(ctx, export).await?;
    preflight(&client, export).await?;
    counts.requests = client.requests_sent();
    let hasher = ctx.secret_key()?.profile_hasher();
    let matching = Matching::new(export);
    let mut conn = ctx.store.dedicated_connection().await?;
    plan::create_temp_tables(&mut conn).await?;
    sink.phase("reading", counts).await;
    let mut planner = Planner {
        conn: &mut conn,
        export_id: export.id,
        full_floor,
        matching: &matching,
        hasher: &hasher,
        counts,
        totals: PlanTotals::default(),
        stopper,
    };
    planner.plan(&segments, export.on_leave, sink).await?;
    let totals = planner.totals.clone();
    Ok(Planned {
        client,
        conn,
        totals,
    })
}

async fn execute(
    ctx: &Context,
    export: &ExportDef,
    run: &RunRecord,
    counts: &mut RunCounts,
    sink: &mut Sink,
    stopper: &Stopper,
) -> Result<Option<StopReason>, PipelineError> {
    let full_floor = if run.full {
        Some(full_floor(&ctx.store, run).await?)
    } else {
        None
    };
    let Planned {
        client,
        mut conn,
        totals,
    } = read_and_plan(ctx, export, full_floor, counts, sink, Some(stopper)).await?;
    let max = ctx.settings.export.max_profiles;
    if totals.members > max {
        return Err(PipelineError::TooManyProfiles {
            found: totals.members,
            max,
        });
    }
    tracing::info!(
        rows_read = counts.rows_read,
        new = totals.new,
        changed = totals.changed,
        unchanged = counts.unchanged,
        leaving = totals.leaving,
        rejected = counts.rejected,
        duplicates = counts.duplicates,
        "Plan ready"
    );
    sink.flush(Some(counts)).await?;
    sink.phase("sending", counts).await;
    let mut delivery = deliver::Delivery {
        conn: &mut conn,
        store: &ctx.store,
        client: Arc::new(client),
        export_id: export.id,
        run_id: run.id,
        counts,
        stopper,
    };
    let stopped = delivery.run(sink).await?;
    if stopped.is_none() {
        // Leavers are forgotten once the run completed: all of them under `keep`; under
        // `unsubscribe` only those never delivered (delivered ones were removed on confirmation
        // or stay to be unsubscribed next time).
        let only_undelivered = export.on_leave == OnLeave::Unsubscribe;
        let forgotten = plan::forget_leavers(&mut conn, export.id, only_undelivered).await?;
        if forgotten > 0 {
            tracing::info!(forgotten, "Forgot members who left every segment");
        }
    }
    Ok(stopped)
}

async fn dry_run(
    ctx: &Context,
    export: &ExportDef,
    progress: Arc<dyn Progress>,
) -> Result<RunOutcome, PipelineError> {
    let started = Instant::now();
    let mut counts = RunCounts::default();
    let mut sink = Sink {
        store: None,
        pending: Vec::new(),
        issues_kept: 0,
        plan: Some(Plan::default()),
        progress,
        phase: "reading",
        last_flush: Instant::now(),
    };
    let Planned { totals, .. } =
        read_and_plan(ctx, export, None, &mut counts, &mut sink, None).await?;
    let mut plan = sink.plan.take().unwrap_or_default();
    plan.adds = totals.new;
    plan.updates = totals.changed;
    plan.unchanged = counts.unchanged;
    plan.rejected = counts.rejected;
    plan.duplicates = counts.duplicates;
    match export.on_leave {
        OnLeave::Unsubscribe => plan.unsubscribes = totals.leaving,
        OnLeave::Keep => plan.forgotten = totals.leaving,
    }
    let max = ctx.settings.export.max_profiles;
    let error = (totals.members > max).then(|| {
        PipelineError::TooManyProfiles {
            found: totals.members,
            max,
        }
        .to_string()
    });
    Ok(RunOutcome {
        run_id: None,
        export: export.name.clone(),
        status: if error.is_some() {
            RunStatus::Failed
        } else {
            RunStatus::Succeeded
        },
        counts,
        error,
        plan: Some(plan),
        seconds: started.elapsed().as_secs_f64(),
    })
}
