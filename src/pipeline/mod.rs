//! The export engine, one readable chain: preflight → read and plan (stream every segment
//! through the data matching, diff against the delivery state) → deliver (bulk imports,
//! confirmed) → record (the `Recorder`). The run row exists before any work, progress is
//! committed per batch, and the finish is recorded on every path. The engine takes what it
//! needs as an [`ExportJob`] prepared by its caller and stops through one [`RunControl`].

pub mod control;
pub mod deliver;
pub mod matching;
pub mod plan;
pub mod record;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::Instrument;

use crate::activecampaign::{AcError, Client};
use crate::secrets::ProfileHasher;
use crate::source::SourceError;
use crate::store::alerts::FailureKind;
use crate::store::connections::ConnectionStatus;
use crate::store::delivery::WorkTables;
use crate::store::exports::OnLeave;
use crate::store::runs::StartError;
use crate::store::{
    ExportDef, RunCounts, RunIssue, RunRecord, RunStatus, Store, StoreError, TriggerKind,
};
pub use control::{RunControl, StopReason};
use plan::{AbortOnDrop, PlanTotals, Planner, SegmentSource};
use record::Recorder;

/// How often a run looks for a cancel another process recorded in the database.
const STORE_CANCEL_POLL: Duration = Duration::from_millis(500);

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
    /// The job could not be prepared (a secret that does not unseal, a segment gone, ...).
    #[error(transparent)]
    Job(#[from] JobError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A task of the run panicked or was lost.
    #[error("internal error: a task of the run failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// Stopped on request before the work was done (not a failure).
    #[error("stopped: {0:?}")]
    Stopped(StopReason),
    /// The run ended but its finish could not be written (a store fault); `outcome` is what it
    /// would have recorded, and the next start of the export records it from a note.
    #[error(
        "{source}. Run {} could not record that it ended ({}); the next run of the export \
         records it",
        outcome.run_id.unwrap_or_default(), outcome.status
    )]
    Unfinished {
        outcome: Box<RunOutcome>,
        source: StoreError,
    },
}

impl PipelineError {
    /// What a run whose finish could not be written would have recorded.
    pub fn unfinished_outcome(&self) -> Option<&RunOutcome> {
        match self {
            PipelineError::Unfinished { outcome, .. } => Some(outcome),
            _ => None,
        }
    }

    /// The kind of failure, coarse enough that a failure repeating at every slot is told
    /// from a new one (alerts).
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            PipelineError::ActiveCampaign(e) if e.is_rejected_key() => FailureKind::KeyRejected,
            PipelineError::ActiveCampaign(_) => FailureKind::ActiveCampaign,
            PipelineError::Source { .. } => FailureKind::Source,
            PipelineError::TooManyProfiles { .. } => FailureKind::TooManyProfiles,
            PipelineError::Job(_) => FailureKind::Setup,
            PipelineError::Store(_) | PipelineError::Unfinished { .. } => FailureKind::Store,
            PipelineError::AlreadyRunning { .. }
            | PipelineError::Task(_)
            | PipelineError::Internal(_)
            | PipelineError::Stopped(_) => FailureKind::Internal,
        }
    }
}

/// Why the caller could not prepare a job, with its cause (the engine does not know the
/// caller's error types).
#[derive(Debug)]
pub struct JobError(pub Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for JobError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// What a run needs besides its definition, prepared from the stored definitions and
/// secrets by the caller.
pub struct ExportJob {
    /// A client for the export's connection, with the account's shared budget.
    pub client: Client,
    /// The export's segments, in order.
    pub segments: Vec<SegmentSource>,
    /// Keys the delivery-state fingerprints.
    pub hasher: ProfileHasher,
    /// More valid profiles than this fail the run before anything is sent.
    pub max_profiles: u64,
    /// Suppressed members whose values did not change are sent again (to learn whether
    /// ActiveCampaign still refuses them) once this many days have passed.
    pub suppressed_recheck_days: u32,
}

/// Who or what started a run, and how.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub trigger: TriggerKind,
    /// Treat every member as changed.
    pub full: bool,
    /// Plan only: send nothing, change no state.
    pub dry_run: bool,
    /// Who asked for it, recorded on the run.
    pub requested_by: Option<String>,
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
    /// Suppressed members held back (values unchanged, checked within the recheck days).
    pub suppressed: u64,
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
    /// What kind of failure ended a failed run (for alerts; not part of the printed outcome).
    #[serde(skip)]
    pub failure: Option<FailureKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    pub seconds: f64,
}

/// Runs an export now, in this process. `job` prepares what the run needs; its failure is
/// recorded like any other. Returns the outcome also when the run failed (the failure is
/// recorded); `Err` only when no run could be recorded at all.
pub async fn run(
    store: &Store,
    export: &ExportDef,
    options: RunOptions,
    control: &RunControl,
    progress: Arc<dyn Progress>,
    job: impl Future<Output = Result<ExportJob, JobError>>,
) -> Result<RunOutcome, PipelineError> {
    if options.dry_run {
        return dry_run(store, export, progress, job.await?).await;
    }
    let (run, _run_lock) = match store
        .start_run(
            export.id,
            options.trigger,
            options.full,
            options.requested_by.as_deref(),
        )
        .await
    {
        Ok(started) => started,
        Err(StartError::AlreadyRunning(run_id)) => {
            return Err(PipelineError::AlreadyRunning {
                export: export.name.clone(),
                run_id,
            });
        }
        Err(StartError::Store(e)) => return Err(e.at(store.path()).into()),
    };
    let span = tracing::info_span!("run", export = %export.name, run_id = run.id);
    async move {
        let started = Instant::now();
        tracing::info!(trigger = %options.trigger, full = run.full, resumes = ?run.resumes_run_id, "Run started");
        let mut recorder = Recorder::for_run(store.clone(), &run, progress);
        let control = control.for_run();
        // `acexport cancel` in another process reaches the run through the database; a cancel
        // from the process running it reaches it through its control.
        let _watcher = watch_store_cancel(store.clone(), run.id, control.clone());
        let result = async {
            let job = job.await?;
            execute(store, export, &run, job, &mut recorder, &control).await
        }
        .await;
        // A stop (cancel, shutdown) is an outcome, not an error.
        let result = match result {
            Err(PipelineError::Stopped(reason)) => Ok(Some(reason)),
            Err(PipelineError::ActiveCampaign(AcError::Stopped | AcError::Aborted)) => {
                Ok(Some(StopReason::Shutdown))
            }
            // A store fault names the database in the run's error.
            Err(PipelineError::Store(e)) => Err(PipelineError::Store(e.at(store.path()))),
            other => other,
        };
        let counts = recorder.counts;
        let (status, error) = match &result {
            Ok(None) if recorder.unconfirmed > 0 => (RunStatus::Partial, Some(unconfirmed_note(recorder.unconfirmed))),
            Ok(None) if counts.failed > 0 => (RunStatus::Partial, None),
            Ok(None) => (RunStatus::Succeeded, None),
            Ok(Some(StopReason::Cancelled)) => (RunStatus::Cancelled, Some("cancelled by request".to_owned())),
            Ok(Some(StopReason::Shutdown)) => (RunStatus::Interrupted, Some("stopped by shutdown; resumes at next start".to_owned())),
            Ok(Some(StopReason::Failing(why))) => (RunStatus::Failed, Some(why.clone())),
            Err(e) => (RunStatus::Failed, Some(e.to_string())),
        };
        let failure = match &result {
            Ok(Some(StopReason::Failing(_))) => Some(FailureKind::ActiveCampaign),
            Err(e) => Some(e.failure_kind()),
            Ok(_) => None,
        };
        if let Err(PipelineError::ActiveCampaign(e)) = &result
            && e.is_rejected_key()
        {
            let _ = store.record_connection_check(export.connection_id, ConnectionStatus::Rejected, Some(&e.to_string())).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        if let Err(source) = recorder.finish(status, error.as_deref()).await {
            let outcome = RunOutcome { run_id: Some(run.id), export: export.name.clone(), status, counts, error, failure, plan: None, seconds };
            return Err(PipelineError::Unfinished { outcome: Box::new(outcome), source });
        }
        match status {
            RunStatus::Failed => tracing::error!(
                error = error.as_deref().unwrap_or(""), rows_read = counts.rows_read,
                upserted = counts.upserted, failed = counts.failed, "Run failed"
            ),
            _ => tracing::info!(
                status = %status, seconds = format!("{seconds:.1}"), rows_read = counts.rows_read,
                rejected = counts.rejected, duplicates = counts.duplicates,
                unchanged = counts.unchanged, upserted = counts.upserted,
                unsubscribed = counts.unsubscribed, suppressed = counts.suppressed,
                failed = counts.failed,
                requests = counts.requests, "Run finished"
            ),
        }
        Ok(RunOutcome {
            run_id: Some(run.id),
            export: export.name.clone(),
            status,
            counts,
            error,
            failure,
            plan: None,
            seconds,
        })
    }
    .instrument(span)
    .await
}

/// Why a run whose imports were accepted but not all confirmed is `partial`.
fn unconfirmed_note(contacts: u64) -> String {
    format!(
        "{contacts} contacts are in imports ActiveCampaign accepted whose outcome could not be \
         read yet; they are not sent again, and the next run confirms them"
    )
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

/// Cancels the run when another process records a cancel for it (`acexport cancel`). Stops
/// with the run: the task is aborted when the returned guard is dropped.
fn watch_store_cancel(store: Store, run_id: i64, control: RunControl) -> AbortOnDrop {
    let span = tracing::Span::current();
    AbortOnDrop(tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(STORE_CANCEL_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = control.stopping() => return,
                }
                if store.cancel_requested(run_id).await.unwrap_or(false) {
                    tracing::info!("Cancel requested; stopping at the next batch boundary");
                    control.cancel();
                    return;
                }
            }
        }
        .instrument(span),
    ))
}

/// Preflight: the key still works and the list still exists. Nothing is sent otherwise.
async fn preflight(client: &Client, export: &ExportDef) -> Result<(), PipelineError> {
    client.users_me().await?;
    client.list(export.list_id).await?;
    Ok(())
}

/// What reading and planning leave for delivery.
struct Planned {
    client: Arc<Client>,
    tables: WorkTables,
    totals: PlanTotals,
}

/// Preflight, then read every segment through the data matching and plan against the
/// delivery state. Shared by runs and dry runs; a run (`run_id`) first confirms the imports
/// earlier runs left accepted, so that planning sends only what ActiveCampaign did not import.
async fn read_and_plan(
    store: &Store,
    export: &ExportDef,
    job: ExportJob,
    full_floor: Option<i64>,
    recorder: &mut Recorder,
    control: Option<&RunControl>,
    run_id: Option<i64>,
) -> Result<Planned, PipelineError> {
    let ExportJob {
        client,
        segments,
        hasher,
        suppressed_recheck_days,
        ..
    } = job;
    let client = Arc::new(client);
    preflight(&client, export).await?;
    recorder.counts.requests = client.requests_sent();
    if let Some(run_id) = run_id {
        deliver::confirm_accepted(store, &client, export.id, export.list_id, run_id, recorder)
            .await?;
    }
    // A dry run (no control) changes no state.
    let records_state = control.is_some();
    let matching = plan::matching_for(store, export, records_state).await?;
    let mut tables = WorkTables::create(store).await?;
    let recheck = chrono::Utc::now() - chrono::Duration::days(suppressed_recheck_days.into());
    tables.recheck_suppressed_before(crate::store::to_text(recheck));
    recorder.phase("reading").await;
    let mut planner = Planner {
        tables: &mut tables,
        export_id: export.id,
        full_floor,
        matching: &matching,
        hasher: &hasher,
        recorder,
        totals: PlanTotals::default(),
        control,
        records_state,
    };
    planner.plan(&segments, export.on_leave).await?;
    let totals = planner.totals.clone();
    Ok(Planned {
        client,
        tables,
        totals,
    })
}

async fn execute(
    store: &Store,
    export: &ExportDef,
    run: &RunRecord,
    job: ExportJob,
    recorder: &mut Recorder,
    control: &RunControl,
) -> Result<Option<StopReason>, PipelineError> {
    let full_floor = if run.full {
        Some(full_floor(store, run).await?)
    } else {
        None
    };
    let max = job.max_profiles;
    let Planned {
        client,
        mut tables,
        totals,
    } = read_and_plan(
        store,
        export,
        job,
        full_floor,
        recorder,
        Some(control),
        Some(run.id),
    )
    .await?;
    if totals.members > max {
        return Err(PipelineError::TooManyProfiles {
            found: totals.members,
            max,
        });
    }
    let counts = &recorder.counts;
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
    recorder.flush(true).await?;
    recorder.phase("sending").await;
    let mut delivery = deliver::Delivery {
        tables: &mut tables,
        store,
        client,
        export_id: export.id,
        list_id: export.list_id,
        run_id: run.id,
        control,
    };
    let stopped = delivery.run(recorder).await?;
    if stopped.is_none() {
        // Leavers are forgotten once the run completed: all of them under `keep`; under
        // `unsubscribe` only those never delivered (delivered ones were removed on confirmation
        // or stay to be unsubscribed next time).
        let only_undelivered = export.on_leave == OnLeave::Unsubscribe;
        let forgotten = tables.forget_leavers(export.id, only_undelivered).await?;
        if forgotten > 0 {
            tracing::info!(forgotten, "Forgot members who left every segment");
        }
    }
    Ok(stopped)
}

async fn dry_run(
    store: &Store,
    export: &ExportDef,
    progress: Arc<dyn Progress>,
    job: ExportJob,
) -> Result<RunOutcome, PipelineError> {
    let started = Instant::now();
    let max = job.max_profiles;
    let mut recorder = Recorder::for_dry_run(progress);
    let Planned { totals, .. } =
        read_and_plan(store, export, job, None, &mut recorder, None, None).await?;
    let counts = recorder.counts;
    let mut plan = recorder.take_plan();
    plan.adds = totals.new;
    plan.updates = totals.changed;
    plan.unchanged = counts.unchanged;
    plan.suppressed = counts.suppressed;
    plan.rejected = counts.rejected;
    plan.duplicates = counts.duplicates;
    match export.on_leave {
        OnLeave::Unsubscribe => plan.unsubscribes = totals.leaving,
        OnLeave::Keep => plan.forgotten = totals.leaving,
    }
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
        failure: error.is_some().then_some(FailureKind::TooManyProfiles),
        error,
        plan: Some(plan),
        seconds: started.elapsed().as_secs_f64(),
    })
}
