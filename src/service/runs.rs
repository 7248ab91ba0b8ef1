//! Runs as a user asks for them: a run now (handed to the daemon when one is up, else in this
//! process), following a handed-over run to its end, triggers, cancels and the run history.
//!
//! The daemon owns runs while it is up: a manual run is handed to it as a signal file and
//! followed in the database, never run beside it. (The request budget of each ActiveCampaign
//! account is shared by every process anyway: `activecampaign::budget`.)

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use super::access::{Actor, Role};
use super::{Context, ServiceError};
use crate::pipeline::{PipelineError, Progress, RunOptions, RunOutcome};
use crate::scheduler::{TriggerError, TriggerRequest, write_trigger};
use crate::store::{RunIssue, RunRecord, RunStatus, StoreError, TriggerKind, from_text};

/// How long a handed-over run may take to start (or at least be queued) before the follower
/// gives up: the daemon takes signal files within a second, so this means it is stuck.
pub const HAND_OVER_WAIT: Duration = Duration::from_secs(30);
/// How often the follower reads the run history.
const FOLLOW_POLL: Duration = Duration::from_millis(300);

/// Why a run operation failed. Worded without command-line flags: the CLI words them.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Only a dry run works on a disabled export (`dry_run_allowed` says whether the refused
    /// operation had that choice).
    #[error("export {export:?} is disabled")]
    Disabled {
        export: String,
        dry_run_allowed: bool,
    },
    /// The daemon stopped beating while the handed-over run was in progress; the run resumes
    /// when the daemon starts again.
    #[error("the daemon stopped while running {export} (run {run_id})")]
    DaemonStopped { export: String, run_id: i64 },
    /// The daemon neither started nor queued the handed-over run in time.
    #[error("the daemon did not pick up the run of {export} within {} s", .waited.as_secs())]
    HandOverTimedOut { export: String, waited: Duration },
    #[error("run {id} does not exist")]
    RunNotFound { id: i64 },
    /// The signal file for the daemon could not be written.
    #[error(transparent)]
    Trigger(#[from] TriggerError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A run asked for now (`export run`).
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub export: String,
    /// Send every profile again, not only new and changed ones.
    pub full: bool,
    /// Plan only; always runs in this process (it sends nothing, so needs no budget).
    pub dry_run: bool,
    /// Who asks, recorded in the signal file with the OS user (e.g. the command's name).
    pub origin: String,
}

/// Where a run asked for now goes.
#[derive(Debug)]
pub enum RunRoute {
    /// No daemon is up (or it is a dry run): run it in this process with [`Context::run_here`].
    Here(LocalRun),
    /// The daemon has it (the signal file is written): follow it with [`Context::follow_run`].
    HandedOver(HandOver),
}

/// A run to do in this process.
#[derive(Debug)]
pub struct LocalRun {
    /// The export's stored name.
    pub export: String,
    options: RunOptions,
}

/// A run handed to the daemon, to follow in the run history.
#[derive(Debug, Clone)]
pub struct HandOver {
    /// The export's stored name.
    pub export: String,
    export_id: i64,
    /// The export's latest run before the hand-over: the daemon's run is the next one.
    after_run_id: i64,
    asked_at: Instant,
    /// How long the daemon may take to start or queue it.
    wait: Duration,
}

/// What `trigger` asks the daemon to run.
#[derive(Debug, Clone)]
pub enum TriggerTarget {
    Export(String),
    /// Every enabled export.
    All,
}

/// A trigger written for the daemon.
#[derive(Debug, Clone)]
pub struct Triggered {
    /// `None` when the daemon itself queued the run (a request on its control socket).
    pub signal_file: Option<PathBuf>,
    /// Whether a daemon is up to take it now (else it waits until one starts).
    pub daemon_up: bool,
}

/// What a cancel did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The running run stops at its next batch boundary (a queued one was removed too).
    Stopping { export: String, run_id: i64 },
    /// The export was only queued; the queued run was removed.
    Dequeued { export: String },
    /// The export is neither queued nor running.
    NothingToCancel { export: String },
}

/// Which runs the history lists, latest first.
#[derive(Debug, Clone)]
pub struct RunsQuery {
    /// Only runs of this export.
    pub export: Option<String>,
    pub limit: u32,
}

/// One run with the profiles it rejected or failed (`runs show`; also its JSON shape).
#[derive(Debug, Serialize)]
pub struct RunDetail {
    pub run: RunRecord,
    pub issues: Vec<RunIssue>,
}

impl Context {
    /// Whether a daemon is beating on this database (and its process is still there).
    pub async fn daemon_is_up(&self) -> Result<bool, StoreError> {
        Ok(self
            .store
            .daemon_state()
            .await?
            .is_some_and(|d| super::status::daemon_alive(&d)))
    }

    /// Decides where a run asked for now goes and, when the daemon is up, hands it over.
    pub async fn route_run(&self, request: RunRequest) -> Result<RunRoute, RunError> {
        self.require(Role::Contributor, "run exports")?;
        let export = self.find_export(&request.export).await?;
        self.require_export(&export, Role::Contributor, "run this export")
            .await?;
        if !export.enabled && !request.dry_run {
            return Err(RunError::Disabled {
                export: export.name,
                dry_run_allowed: true,
            });
        }
        // In the daemon a real run always goes to its workers (whatever its heartbeat says):
        // they own the run controls, and a request's task may end with its client.
        if request.dry_run || (!self.in_daemon() && !self.daemon_is_up().await?) {
            if !request.dry_run {
                self.store
                    .record_audit("run.request", &export.name, None)
                    .await?;
            }
            return Ok(RunRoute::Here(LocalRun {
                export: export.name,
                options: RunOptions {
                    trigger: TriggerKind::Manual,
                    full: request.full,
                    dry_run: request.dry_run,
                    requested_by: Some(self.actor().name.clone()),
                },
            }));
        }
        let after_run_id = self
            .store
            .runs(Some(export.id), 1)
            .await?
            .first()
            .map_or(0, |r| r.id);
        if self.in_daemon() {
            self.queue_run(export.id, &export.name, TriggerKind::Manual, request.full)
                .await?;
        } else {
            let trigger = TriggerRequest::Run {
                export: export.name.clone(),
                full: request.full,
            };
            write_trigger(
                &self.settings.daemon.trigger_dir,
                &trigger,
                Some(&request.origin),
            )?;
        }
        Ok(RunRoute::HandedOver(HandOver {
            export: export.name,
            export_id: export.id,
            after_run_id,
            asked_at: Instant::now(),
            wait: HAND_OVER_WAIT,
        }))
    }

    /// Runs an export in this process. The caller owns the stop: the context's control
    /// (`shutdown`, then `abort`).
    pub async fn run_here(
        &self,
        run: LocalRun,
        progress: Arc<dyn Progress>,
    ) -> Result<RunOutcome, RunError> {
        Ok(self.run_export(&run.export, run.options, progress).await?)
    }

    /// Follows a handed-over run in the history until it finishes, reporting its progress.
    /// Fails when the daemon stops meanwhile or never picks the run up.
    pub async fn follow_run(
        &self,
        hand_over: &HandOver,
        progress: &dyn Progress,
    ) -> Result<RunOutcome, RunError> {
        loop {
            let latest = self
                .store
                .runs(Some(hand_over.export_id), 1)
                .await?
                .into_iter()
                .next();
            match look(latest, hand_over.after_run_id) {
                Look::Finished(run) => return Ok(outcome_of(run)),
                Look::Running(run) => {
                    progress.report(&run.phase, &run.counts);
                    if !self.daemon_is_up().await? {
                        return Err(RunError::DaemonStopped {
                            export: hand_over.export.clone(),
                            run_id: run.id,
                        });
                    }
                }
                Look::NotStarted => {
                    if hand_over.asked_at.elapsed() > hand_over.wait
                        && !self.store.is_queued(hand_over.export_id).await?
                    {
                        return Err(RunError::HandOverTimedOut {
                            export: hand_over.export.clone(),
                            waited: hand_over.wait,
                        });
                    }
                }
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }

    /// Asks the daemon, by a signal file, to run an export (or every enabled one) now.
    pub async fn trigger_run(
        &self,
        target: TriggerTarget,
        full: bool,
    ) -> Result<Triggered, RunError> {
        let request = match target {
            TriggerTarget::Export(name) => {
                self.require(Role::Contributor, "run exports")?;
                let export = self.find_export(&name).await?;
                self.require_export(&export, Role::Contributor, "run this export")
                    .await?;
                if !export.enabled {
                    return Err(RunError::Disabled {
                        export: name,
                        dry_run_allowed: false,
                    });
                }
                TriggerRequest::Run {
                    export: export.name,
                    full,
                }
            }
            TriggerTarget::All => {
                self.require(Role::Admin, "run every export at once")?;
                TriggerRequest::RunAll { full }
            }
        };
        if self.in_daemon() {
            let exports = match &request {
                TriggerRequest::Run { export, .. } => vec![self.find_export(export).await?],
                _ => self
                    .store
                    .exports()
                    .await?
                    .into_iter()
                    .filter(|e| e.enabled)
                    .collect(),
            };
            for export in &exports {
                self.queue_run(export.id, &export.name, TriggerKind::SignalFile, full)
                    .await?;
            }
            return Ok(Triggered {
                signal_file: None,
                daemon_up: true,
            });
        }
        let signal_file = write_trigger(&self.settings.daemon.trigger_dir, &request, None)?;
        Ok(Triggered {
            signal_file: Some(signal_file),
            daemon_up: self.daemon_is_up().await?,
        })
    }

    /// Removes an export's queued run and asks its running run to stop at the next batch
    /// boundary.
    ///
    /// The cancel is recorded in the database, tied to the run it names, for whichever process
    /// runs the export (the daemon or a foreground `export run`) to find within a second.
    pub async fn cancel_run(&self, export: &str) -> Result<CancelOutcome, RunError> {
        self.require(Role::Contributor, "cancel runs")?;
        let export = self.find_export(export).await?;
        self.require_export(&export, Role::Contributor, "cancel this export's run")
            .await?;
        let (dequeued, running) = self.store.cancel_export(export.id).await?;
        self.store
            .record_audit("run.cancel", &export.name, None)
            .await?;
        Ok(cancel_outcome(export.name, dequeued, running))
    }

    /// The latest runs, optionally of one export.
    /// The latest runs the actor may see (of exports on connections they may use).
    pub async fn list_runs(&self, query: &RunsQuery) -> Result<Vec<RunRecord>, RunError> {
        self.require(Role::Viewer, "read run history")?;
        let export_id = match &query.export {
            Some(name) => {
                let export = self.find_export(name).await?;
                self.require_export(&export, Role::Viewer, "read this export's runs")
                    .await?;
                Some(export.id)
            }
            None => None,
        };
        let Some(usable) = self.usable_connections().await? else {
            return Ok(self.store.runs(export_id, query.limit).await?);
        };
        let visible: Vec<i64> = self
            .store
            .exports()
            .await?
            .into_iter()
            .filter(|e| usable.contains(&e.connection_id))
            .map(|e| e.id)
            .collect();
        // Filtered after reading: the history is one row per run, and a viewer's page must be
        // full even when other exports ran in between.
        let mut out = Vec::new();
        for run in self.store.runs(export_id, u32::MAX).await? {
            if out.len() >= query.limit as usize {
                break;
            }
            if visible.contains(&run.export_id) {
                out.push(run);
            }
        }
        Ok(out)
    }

    /// The context a signal file acts in: its owner's, under the roles the control socket
    /// uses. Refused when the owner may not ask for this; an unknown export is left to the
    /// caller to name.
    pub async fn trigger_actor(
        &self,
        owner: u32,
        request: &TriggerRequest,
    ) -> Result<Context, ServiceError> {
        let user = crate::identity::lookup(owner, None);
        let service_uid = rustix::process::geteuid().as_raw();
        let ctx = self.as_actor(Actor::of(&user, &self.settings.access, service_uid));
        match request {
            TriggerRequest::Run { export, .. } | TriggerRequest::Cancel { export } => {
                ctx.require(Role::Contributor, "run exports")?;
                if let Some(e) = self.store.export(export).await? {
                    ctx.require_export(&e, Role::Contributor, "run this export")
                        .await?;
                }
            }
            TriggerRequest::RunAll { .. } => {
                ctx.require(Role::Admin, "run every export at once")?
            }
        }
        Ok(ctx)
    }

    /// Queues a run for the daemon's workers (this is the daemon) and records who asked.
    async fn queue_run(
        &self,
        export_id: i64,
        export: &str,
        trigger: TriggerKind,
        full: bool,
    ) -> Result<(), RunError> {
        let by = self.actor().name.clone();
        self.store
            .enqueue_run(export_id, trigger, full, None, Some(&by))
            .await?;
        // The daemon's loop sleeps until its next event: this run is one.
        self.wake_daemon();
        self.store.record_audit("run.request", export, None).await?;
        Ok(())
    }

    /// Wakes the daemon's scheduling loop to dispatch queued runs and re-read the schedules
    /// (in a context of the daemon; elsewhere nobody listens). Wakes coalesce: one pending wake
    /// covers every request made before the loop takes it.
    pub fn wake_daemon(&self) {
        self.daemon_wake.notify_one();
    }

    /// What [`Context::wake_daemon`] notifies, for the daemon's loop to wait on.
    pub fn daemon_wakes(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.daemon_wake)
    }

    /// One run with up to `max_issues` of its rejected and failed profiles.
    pub async fn show_run(&self, run_id: i64, max_issues: u32) -> Result<RunDetail, RunError> {
        self.require(Role::Viewer, "read run history")?;
        let run = self
            .store
            .run(run_id)
            .await?
            .ok_or(RunError::RunNotFound { id: run_id })?;
        if let Some(export) = self.store.export_by_id(run.export_id).await? {
            self.require_export(&export, Role::Viewer, "read this export's runs")
                .await?;
        }
        // The rejected and failed profiles are segment rows: not for viewers.
        let issues = if self.actor().role >= Some(Role::Contributor) {
            self.store.run_issues(run_id, max_issues).await?
        } else {
            Vec::new()
        };
        Ok(RunDetail { run, issues })
    }
}

/// How long a run took: start to finish, or so far (to `now`) while it runs. `None` when a
/// time in the record cannot be read.
pub fn run_duration(run: &RunRecord, now: DateTime<Utc>) -> Option<TimeDelta> {
    let start = from_text(&run.started_at)?;
    let end = match &run.finished_at {
        Some(finished) => from_text(finished)?,
        None => now,
    };
    Some(end - start)
}

/// One look at the export's latest run while following a hand-over.
#[derive(Debug)]
enum Look {
    /// No run newer than the hand-over yet.
    NotStarted,
    Running(RunRecord),
    Finished(RunRecord),
}

fn look(latest: Option<RunRecord>, after_run_id: i64) -> Look {
    match latest.filter(|run| run.id > after_run_id) {
        None => Look::NotStarted,
        Some(run) if run.status == RunStatus::Running => Look::Running(run),
        Some(run) => Look::Finished(run),
    }
}

/// A finished run as the outcome of a run in this process would report it (no plan: the
/// daemon never dry-runs).
fn outcome_of(run: RunRecord) -> RunOutcome {
    let seconds =
        run_duration(&run, Utc::now()).map_or(0.0, |d| d.num_milliseconds() as f64 / 1000.0);
    RunOutcome {
        run_id: Some(run.id),
        export: run.export,
        status: run.status,
        counts: run.counts,
        error: run.error,
        // Alerts are decided by the process that ran it.
        failure: None,
        plan: None,
        seconds,
    }
}

/// A running run takes precedence: it is what the user wants stopped.
fn cancel_outcome(export: String, dequeued: bool, running: Option<i64>) -> CancelOutcome {
    match (dequeued, running) {
        (_, Some(run_id)) => CancelOutcome::Stopping { export, run_id },
        (true, None) => CancelOutcome::Dequeued { export },
        (false, None) => CancelOutcome::NothingToCancel { export },
    }
}

#[cfg(test)]
mod tests;
