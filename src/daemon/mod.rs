//! The long-running service: runs every enabled export on its schedule (or the system refresh
//! schedule), runs exports on demand from signal files, and tells systemd and `acexport
//! status` what it is doing.
//!
//! Scheduling is a small loop of our own over croner + chrono-tz rather than
//! tokio-cron-scheduler, which keeps a fixed UTC offset across daylight-saving changes, lets a
//! slow job overlap itself and persists only to PostgreSQL or NATS. Slots fired are recorded in
//! SQLite, so a restart neither repeats a slot nor skips one silently (a slot missed while down
//! runs once at start, like systemd's `Persistent=`). Queue, schedule marks and run state all
//! live in the database: nothing queued is lost by a restart, and runs left `running` by a
//! crash are resumed.

pub mod control;
mod observe;
pub mod systemd;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::pipeline::{PipelineError, Progress, RunControl, RunOptions};
use crate::scheduler::{Schedule, TriggerRequest, TriggerWatcher, claim_all};
use crate::service::alerts::ALERT_FLUSH_WAIT;
use crate::service::status::{activity_line, run_activity};
use crate::service::{Context, ServiceError};
use crate::settings::{Loaded, Settings};
use crate::store::{RunCounts, StoreError, TriggerKind};

/// Rescan of the trigger folder: when inotify events are lost, and for files left in
/// `processing/` (which inotify does not watch). Inotify itself wakes the loop at once; a
/// directory read every 5 s is no measurable load for an idle daemon.
const TRIGGER_RESCAN: Duration = Duration::from_secs(5);
/// How long a queued run waits before it is queued again behind a run of its export in another
/// process.
const REQUEUE_WAIT: Duration = Duration::from_secs(2);
/// Longest sleep between two reads of the schedules. The loop otherwise wakes at the next slot
/// and whenever definitions change through this daemon; this re-read catches definitions
/// written straight into the database by another process (a root CLI when the socket is
/// unreachable) and jumps of the wall clock.
const SCHEDULE_REREAD: Duration = Duration::from_secs(30);
/// How often the heartbeat, STATUS= and `/healthz` liveness are refreshed while runs go on.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// The same while idle: a third of the staleness bound (`HEARTBEAT_STALE_SECS`, 30 s) after
/// which `acexport status` and `/healthz` call the daemon down.
const IDLE_HEARTBEAT: Duration = Duration::from_secs(10);
/// Longest wait for running exports to reach a batch boundary at shutdown; below systemd's
/// TimeoutStopSec (90 s in deploy/acexport.service).
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(60);
/// The last part of the drain deadline, after in-flight HTTP calls are abandoned.
const ABORT_MARGIN: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "another acexport daemon (pid {0}) is running on this database; stop it first or use \
         `acexport trigger` to run exports through it"
    )]
    AlreadyRunning(i64),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot watch the trigger folder: {0}")]
    Triggers(#[from] crate::scheduler::TriggerError),
    #[error("cannot install the SIGHUP handler: {0}")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error(transparent)]
    Metrics(#[from] observe::ListenError),
}

/// The exports this daemon runs now: their names and run controls (a cancel reaches the run
/// directly, not through the database).
type Running = HashMap<i64, (String, RunControl)>;

/// Tells the loop an export is free again when its task ends, even by a panic.
struct DoneGuard {
    export_id: i64,
    name: String,
    done: mpsc::UnboundedSender<i64>,
    board: Board,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.board
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.name);
        let _ = self.done.send(self.export_id);
    }
}

/// Live progress of running exports, for STATUS= and logs.
type Board = Arc<Mutex<HashMap<String, (String, RunCounts)>>>;

struct BoardProgress {
    export: String,
    board: Board,
}

impl Progress for BoardProgress {
    fn report(&self, phase: &str, counts: &RunCounts) {
        let mut board = self.board.lock().unwrap_or_else(|e| e.into_inner());
        board.insert(self.export.clone(), (phase.to_owned(), *counts));
    }
}

pub struct Daemon {
    /// The settings file, re-read on SIGHUP.
    file: Option<PathBuf>,
    /// Held while the daemon runs: a second daemon on the same database is refused.
    _lock: crate::store::locks::Lock,
    ctx: Arc<Context>,
    board: Board,
    /// Runs the commands that arrive on the control socket (the command line's); `None`
    /// serves no socket.
    control: Option<control::Handler>,
    /// The `metrics.listen` socket, bound at build so that a taken port stops the start.
    metrics_listener: Option<tokio::net::TcpListener>,
    /// Beaten by the scheduling loop; `/healthz` reads it.
    liveness: crate::metrics::Liveness,
}

impl Daemon {
    /// Opens the store (migrating it), claims the daemon role and recovers interrupted runs.
    pub async fn build(loaded: Loaded, ctx: Context) -> Result<Daemon, DaemonError> {
        let lock = match ctx.store.claim_daemon().await? {
            Ok(lock) => lock,
            Err(pid) => return Err(DaemonError::AlreadyRunning(pid)),
        };
        let metrics_listener = match observe::bind(&ctx.settings).await {
            Ok(listener) => listener,
            Err(e) => {
                let _ = ctx.store.release_daemon().await;
                return Err(e.into());
            }
        };
        Ok(Daemon {
            file: loaded.file,
            _lock: lock,
            ctx: Arc::new(ctx.for_daemon()),
            board: Board::default(),
            control: None,
            metrics_listener,
            liveness: crate::metrics::Liveness::new(observe::HEALTH_STALE),
        })
    }

    /// Serves the control socket (`Settings::control_socket`) with `handler` while running.
    pub fn serve_control(mut self, handler: control::Handler) -> Daemon {
        self.control = Some(handler);
        self
    }

    /// Runs until `shutdown` resolves; `reload` receives a message per SIGHUP.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()>,
        mut reload: mpsc::Receiver<()>,
    ) -> Result<(), DaemonError> {
        let store = self.ctx.store.clone();
        for run_id in store.recover_stale_runs().await? {
            tracing::warn!(
                run_id,
                "Run was interrupted by a crash or kill; it will be resumed"
            );
        }
        for export_id in store.interrupted_exports().await? {
            store
                .enqueue_run(
                    export_id,
                    TriggerKind::Resume,
                    false,
                    None,
                    Some("daemon start"),
                )
                .await?;
        }
        let mut trigger_dir = self.ctx.settings.daemon.trigger_dir.clone();
        let (mut _watcher, mut wake) = TriggerWatcher::start(&trigger_dir, TRIGGER_RESCAN)?;
        let tracker = TaskTracker::new();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<i64>();
        let mut running = Running::new();
        let watchdog = systemd::watchdog_interval();
        // Set when a run starts or ends, so the heartbeat's line follows at once.
        let mut beat_due = false;
        let mut next_beat = tokio::time::Instant::now();
        // Runs queued and definitions changed through this daemon (its control socket).
        let woken = self.ctx.daemon_wakes();
        tokio::pin!(shutdown);

        // Bound before READY=1: once systemd reports the unit started, commands reach it.
        let (contexts, contexts_rx) = watch::channel(Arc::clone(&self.ctx));
        let stop_control = CancellationToken::new();
        let socket_path = self.ctx.settings.control_socket();
        let control_task = match self.control.clone() {
            Some(handler) => {
                let socket = control::ControlSocket::bind(&socket_path).await?;
                tracing::info!(socket = %socket.path().display(), "Control socket ready");
                let stop = stop_control.clone();
                Some(tokio::spawn(socket.serve(contexts_rx, handler, stop)))
            }
            None => None,
        };
        observe::apply_settings(&self.ctx.settings);
        observe::seed(&store).await;
        let server = observe::Server::start(self.metrics_listener.take(), self.liveness.clone());
        let mut next_check = self.check_schedules().await;
        systemd::ready();
        tracing::info!(
            workers = self.ctx.settings.daemon.workers,
            trigger_dir = %trigger_dir.display(),
            refresh = self.ctx.settings.schedule.refresh.as_deref().unwrap_or("none"),
            timezone = %self.ctx.settings.schedule.timezone,
            "Daemon ready"
        );
        // The loop sleeps until its next event: a signal, a wake from the trigger folder or the
        // control socket, a run's end, the next schedule slot or the next heartbeat.
        loop {
            let mut check_now = false;
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(()) = reload.recv() => {
                    let reloaded = self.reload();
                    contexts.send_replace(Arc::clone(&self.ctx));
                    if self.ctx.settings.control_socket() != socket_path {
                        tracing::warn!("daemon.socket changed; the new socket is used after a restart");
                    }
                    if let Some(dir) = reloaded.filter(|d| *d != trigger_dir) {
                        match TriggerWatcher::start(&dir, TRIGGER_RESCAN) {
                            Ok((w, r)) => { _watcher = w; wake = r; trigger_dir = dir; }
                            Err(e) => tracing::error!(error = %e, "Cannot watch the new trigger folder; keeping the old one"),
                        }
                    }
                    // schedule.refresh or schedule.timezone may have changed.
                    check_now = true;
                }
                Some(export_id) = done_rx.recv() => { running.remove(&export_id); beat_due = true; }
                Some(()) = wake.recv() => self.consume_triggers(&trigger_dir, &running).await,
                () = woken.notified() => check_now = true,
                () = tokio::time::sleep_until(next_check) => check_now = true,
                () = tokio::time::sleep_until(next_beat) => {}
            }
            if check_now {
                next_check = self.check_schedules().await;
            }
            let before = running.len();
            self.dispatch(&mut running, &tracker, &done_tx).await;
            beat_due |= running.len() != before;
            crate::metrics::global().set_running(running.len());
            if beat_due || tokio::time::Instant::now() >= next_beat {
                beat_due = false;
                let status = self.status_line(&running).await;
                systemd::status(&status);
                match store.beat(&status).await {
                    Ok(()) => {
                        // After a database round trip, so that a stuck loop or database is
                        // noticed, not just a live runtime.
                        self.liveness.beat();
                        if watchdog.is_some() {
                            systemd::watchdog();
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "Cannot record the heartbeat"),
                }
                let period = if running.is_empty() {
                    IDLE_HEARTBEAT
                } else {
                    HEARTBEAT
                };
                let period = watchdog.map_or(period, |w| period.min(w));
                next_beat = tokio::time::Instant::now() + period;
            }
        }

        self.liveness.stop();
        systemd::stopping();
        let stopping = tokio::time::Instant::now();
        // No new requests. Those in flight (a client following its run) are waited for after
        // the runs stop, so that they can say how their run ended.
        stop_control.cancel();
        tracing::info!(
            running = running.len(),
            "Shutting down: running exports stop at their next batch boundary"
        );
        // Soft stop first: runs finish the imports in hand and commit them. If that takes
        // too long (ActiveCampaign slow to confirm), abandon the HTTP calls still in flight;
        // their batches are sent again when the runs resume.
        self.ctx.control.shutdown();
        tracker.close();
        if tokio::time::timeout(DRAIN_DEADLINE - ABORT_MARGIN, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "Imports still unconfirmed at the drain deadline; they stay recorded as accepted \
                 and are confirmed at the next start"
            );
            self.ctx.control.abort();
            if tokio::time::timeout(ABORT_MARGIN, tracker.wait())
                .await
                .is_err()
            {
                tracing::error!("Running exports did not stop in time; they resume at next start");
            }
        }
        if let Some(server) = server {
            server.stop().await;
        }
        // Alerts of runs that just ended, within what is left of the drain deadline.
        let left = DRAIN_DEADLINE.saturating_sub(stopping.elapsed());
        self.ctx.flush_alerts(left.min(ALERT_FLUSH_WAIT)).await;
        // The socket file goes with the server, after the requests in flight (bounded).
        if let Some(task) = control_task {
            let _ = task.await;
        }
        let _ = store.release_daemon().await;
        store.close().await;
        tracing::info!("Daemon stopped");
        Ok(())
    }

    /// Starts queued runs while workers are free; one run per export at a time.
    async fn dispatch(
        &self,
        running: &mut Running,
        tracker: &TaskTracker,
        done: &mpsc::UnboundedSender<i64>,
    ) {
        let workers = self.ctx.settings.daemon.workers as usize;
        while running.len() < workers && !self.ctx.control.is_shutting_down() {
            let busy: Vec<i64> = running.keys().copied().collect();
            let queued = match self.ctx.store.take_queued(&busy).await {
                Ok(Some(q)) => q,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(error = %e, "Cannot read the run queue");
                    return;
                }
            };
            let export = match self.ctx.store.export_by_id(queued.export_id).await {
                Ok(Some(e)) if e.enabled => e,
                Ok(Some(e)) => {
                    tracing::info!(export = %e.name, trigger = %queued.trigger, "Export is disabled; queued run dropped");
                    continue;
                }
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "Cannot read an export");
                    return;
                }
            };
            let trigger = queued.trigger;
            let control = self.ctx.control.for_run();
            running.insert(export.id, (export.name.clone(), control.clone()));
            let ctx = Arc::clone(&self.ctx);
            let done = done.clone();
            let board = Arc::clone(&self.board);
            let options = RunOptions {
                trigger,
                full: queued.full,
                dry_run: false,
                requested_by: queued.requested_by.clone(),
            };
            let store = self.ctx.store.clone();
            tracker.spawn(async move {
                // Reports the export free again however the task ends, a panic included.
                let _done = DoneGuard { export_id: export.id, done, board: Arc::clone(&board), name: export.name.clone() };
                let progress = Arc::new(BoardProgress { export: export.name.clone(), board });
                match ctx.run_export_with(&export.name, options.clone(), &control, progress).await {
                    Ok(outcome) => observe::record_outcome(&outcome),
                    Err(PipelineError::AlreadyRunning { run_id, .. }) => {
                        // Another process (a foreground `export run`) runs it: run after it.
                        // Wait a little first, so that the queue is not taken and put back
                        // hundreds of times a second while that run goes on.
                        tokio::select! {
                            () = tokio::time::sleep(REQUEUE_WAIT) => {}
                            () = control.stopping() => {}
                        }
                        if control.is_cancelled() {
                            tracing::info!(export = %export.name, "Queued run cancelled");
                            return;
                        }
                        match store.requeue_behind(export.id, options.trigger, options.full, run_id).await {
                            Ok(true) => tracing::warn!(export = %export.name, run_id, "Export runs in another process; queued again"),
                            Ok(false) => tracing::info!(export = %export.name, run_id, "Export runs in another process, which was asked to cancel; not queued again"),
                            Err(e) => tracing::error!(export = %export.name, error = %e, "Cannot queue the run again"),
                        }
                    }
                    Err(e) => tracing::error!(export = %export.name, error = %e, "Run could not be recorded"),
                }
            });
        }
    }

    /// Queues every export whose schedule has a slot due, read in the export's time zone (else
    /// `schedule.timezone`). A new or changed schedule or zone starts counting from now; a slot
    /// missed while the daemon was down runs once. Returns when to read them again: at the
    /// earliest next slot, at the latest after [`SCHEDULE_REREAD`].
    async fn check_schedules(&self) -> tokio::time::Instant {
        let reread = tokio::time::Instant::now() + SCHEDULE_REREAD;
        let settings = &self.ctx.settings;
        let exports = match self.ctx.store.schedule_candidates().await {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "Cannot read exports");
                return reread;
            }
        };
        let now = Utc::now();
        let mut next_slot: Option<DateTime<Utc>> = None;
        for export in exports {
            let Some(expr) = export
                .schedule
                .as_deref()
                .or(settings.schedule.refresh.as_deref())
            else {
                continue;
            };
            let zone = export
                .timezone
                .as_deref()
                .unwrap_or(&settings.schedule.timezone);
            let schedule = match Schedule::parse_tz(zone).and_then(|tz| Schedule::parse(expr, tz)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(export = %export.name, error = %e, "Schedule cannot be used");
                    continue;
                }
            };
            if let Some(slot) = schedule.next_after(now) {
                next_slot = Some(next_slot.map_or(slot, |n| n.min(slot)));
            }
            let key = format!("{expr} @ {zone}");
            let result = match export.mark {
                Some((marked, last)) if marked == key => match schedule.due(last, now) {
                    Some(slot) => {
                        tracing::info!(export = %export.name, slot = %slot, "Scheduled slot due; run queued");
                        self.ctx
                            .store
                            .mark_schedule(
                                export.export_id,
                                &key,
                                slot,
                                Some(TriggerKind::Schedule),
                            )
                            .await
                    }
                    None => Ok(()),
                },
                _ => {
                    self.ctx
                        .store
                        .mark_schedule(export.export_id, &key, now, None)
                        .await
                }
            };
            if let Err(e) = result {
                tracing::error!(export = %export.name, error = %e, "Cannot record a schedule slot");
            }
        }
        // A slot is a whole second; waking a little early only finds it not yet due and sleeps
        // the rest.
        match next_slot.and_then(|slot| (slot - Utc::now()).to_std().ok()) {
            Some(wait) => reread.min(tokio::time::Instant::now() + wait),
            // A slot already past (the read was slow) is due now.
            None if next_slot.is_some() => tokio::time::Instant::now(),
            None => reread,
        }
    }

    /// Takes every signal file in the trigger folder exactly once.
    async fn consume_triggers(&self, dir: &std::path::Path, running: &Running) {
        let claimed = match claim_all(dir) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "Cannot read the trigger folder");
                return;
            }
        };
        for r in claimed.rejected {
            tracing::warn!(file = %r.name, reason = %r.reason, "Signal file rejected; its reason is in rejected/");
        }
        for file in claimed.requests {
            // Authorized as the file's owner, by the roles the control socket uses.
            let ctx = match self.ctx.trigger_actor(file.owner, &file.request).await {
                Ok(ctx) => ctx,
                Err(e) => {
                    let reason = e.to_string();
                    match file.reject(&reason) {
                        Ok(r) => {
                            tracing::warn!(file = %r.name, reason = %r.reason, "Signal file refused; its reason is in rejected/")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "Cannot reject a signal file; it is tried again at the next wake")
                        }
                    }
                    continue;
                }
            };
            let store = &ctx.store;
            let by = Some(requester(&ctx.actor().name, file.requested_by.as_deref()));
            let outcome: Result<Option<String>, StoreError> = match &file.request {
                TriggerRequest::Run { export, full } => match store.export(export).await {
                    Ok(None) => Ok(Some(format!("unknown export {export:?}"))),
                    Ok(Some(e)) if !e.enabled => Ok(Some(format!("export {export:?} is disabled"))),
                    Ok(Some(e)) => store
                        .enqueue_run(e.id, TriggerKind::SignalFile, *full, Some(&file.key), by.as_deref())
                        .await
                        .map(|fresh| {
                            if fresh {
                                tracing::info!(export = %e.name, file = %file.name, by = %ctx.actor().name, full, "Signal file: run queued");
                            }
                            None
                        }),
                    Err(e) => Err(e),
                },
                TriggerRequest::RunAll { full } => match store.exports().await {
                    Ok(exports) => {
                        let mut result = Ok(None);
                        for e in exports.iter().filter(|e| e.enabled) {
                            let key = format!("{}#{}", file.key, e.id);
                            if let Err(err) = store.enqueue_run(e.id, TriggerKind::SignalFile, *full, Some(&key), by.as_deref()).await {
                                result = Err(err);
                                break;
                            }
                        }
                        tracing::info!(file = %file.name, "Signal file: every enabled export queued");
                        result
                    }
                    Err(e) => Err(e),
                },
                TriggerRequest::Cancel { export } => match store.export(export).await {
                    Ok(None) => Ok(Some(format!("unknown export {export:?}"))),
                    Ok(Some(e)) => match store.consume_trigger_key(&file.key).await {
                        // Consumed before a crash: acting again could cancel a newer run.
                        Ok(false) => Ok(None),
                        Ok(true) => match store.cancel_export(e.id).await {
                            Ok((dequeued, flagged)) => {
                                // A run of this daemon stops through its control, at once; the
                                // flag reaches a run in another process (a foreground `export
                                // run`), which looks for it in the database.
                                let here = running.get(&e.id).map(|(_, control)| control.cancel()).is_some();
                                tracing::info!(export = %e.name, dequeued, running = here || flagged.is_some(), "Cancel requested");
                                if dequeued || here || flagged.is_some() {
                                    Ok(None)
                                } else {
                                    Ok(Some(format!("export {export:?} is neither queued nor running")))
                                }
                            }
                            Err(err) => Err(err),
                        },
                        Err(err) => Err(err),
                    },
                    Err(e) => Err(e),
                },
            };
            match outcome {
                Ok(None) => {
                    let (action, subject) = match &file.request {
                        TriggerRequest::Run { export, .. } => ("run.request", export.as_str()),
                        TriggerRequest::RunAll { .. } => ("run.request", "every enabled export"),
                        TriggerRequest::Cancel { export } => ("run.cancel", export.as_str()),
                    };
                    if let Err(e) = store
                        .record_audit(action, subject, Some("signal file"))
                        .await
                    {
                        tracing::warn!(error = %e, "Cannot record a signal file in the audit log");
                    }
                    if let Err(e) = file.finish() {
                        tracing::warn!(error = %e, "Cannot remove a consumed signal file");
                    }
                }
                Ok(Some(reason)) => match file.reject(&reason) {
                    Ok(r) => {
                        tracing::warn!(file = %r.name, reason = %r.reason, "Signal file rejected; its reason is in rejected/")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Cannot reject a signal file; it is tried again at the next wake")
                    }
                },
                // Left in processing/: retried at the next wake with the same key.
                Err(e) => {
                    tracing::error!(error = %e, file = %file.name, "Cannot queue a signal file's run; will retry")
                }
            }
        }
    }

    /// SIGHUP: re-reads settings; an invalid file is refused and the old settings stay.
    /// Returns the trigger folder in force afterwards.
    fn reload(&mut self) -> Option<PathBuf> {
        systemd::reloading();
        let result = Settings::load(self.file.as_deref());
        let outcome = match result {
            Err(e) => {
                tracing::error!(error = %e, "Settings reload refused; the settings in force stay");
                None
            }
            Ok(loaded) => {
                if loaded.settings.store.path != self.ctx.settings.store.path {
                    tracing::warn!("store.path changed; the new database is used after a restart");
                }
                if loaded.settings.metrics != self.ctx.settings.metrics {
                    tracing::warn!("metrics settings changed; they take effect after a restart");
                }
                observe::apply_settings(&loaded.settings);
                let ctx = self.ctx.with_settings(loaded.settings);
                let dir = ctx.settings.daemon.trigger_dir.clone();
                self.ctx = Arc::new(ctx);
                tracing::info!("Settings reloaded");
                Some(dir)
            }
        };
        systemd::ready();
        outcome
    }

    async fn status_line(&self, running: &Running) -> String {
        let board = self.board.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let queued = self
            .ctx
            .store
            .queued_runs()
            .await
            .map(|q| q.len())
            .unwrap_or(0);
        crate::metrics::global().set_queue_length(queued);
        let runs = running
            .values()
            .map(|(name, _)| match board.get(name) {
                Some((phase, c)) => run_activity(name, phase, c),
                None => format!("{name}: starting"),
            })
            .collect();
        activity_line(runs, queued)
    }
}

/// Runs the daemon with the process signals: SIGTERM/SIGINT stop it, SIGHUP reloads.
pub async fn run_with_signals(
    loaded: Loaded,
    handler: control::Handler,
) -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let ctx = Context::open(loaded.settings.clone()).await?;
    let daemon = Daemon::build(loaded, ctx).await?.serve_control(handler);
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = reload_tx.try_send(());
        }
    });
    let shutdown = termination();
    daemon.run(shutdown, reload_rx).await
}

/// Completes on the first SIGTERM (systemd's stop) or SIGINT (Ctrl-C).
pub async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without handlers the signals keep their default action: the process ends.
        _ => {
            tracing::warn!("Cannot listen for SIGTERM/SIGINT; stopping will not be graceful");
            std::future::pending::<()>().await;
        }
    }
}

/// A signal file's requester: its owner, with the name written inside kept as a note only
/// (anyone can write any name there).
fn requester(owner: &str, note: Option<&str>) -> String {
    match note {
        Some(note) => format!(
            "{owner} (note: {})",
            crate::escape::untrusted_capped(note, 100)
        ),
        None => owner.to_owned(),
    }
}
