//! The status report: whether the daemon is up, what runs, what waits, and per export the
//! next scheduled time and the last result. Read from the database, so it works from any
//! process that can read it.

use chrono::Utc;
use serde::Serialize;

use super::{Context, ServiceError};
use crate::scheduler::Schedule;
use crate::store::queue::DaemonState;
use crate::store::{RunRecord, TriggerKind, to_text};

#[derive(Debug, Serialize)]
pub struct DaemonInfo {
    pub up: bool,
    #[serde(flatten)]
    pub state: Option<DaemonState>,
}

#[derive(Debug, Serialize)]
pub struct QueuedInfo {
    pub export: String,
    pub trigger: TriggerKind,
    pub full: bool,
    pub requested_at: String,
}

#[derive(Debug, Serialize)]
pub struct ExportStatus {
    pub name: String,
    pub enabled: bool,
    /// The schedule in force: the export's own, else the system refresh.
    pub schedule: Option<String>,
    pub next_run: Option<String>,
    pub last_run: Option<RunRecord>,
}

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub daemon: DaemonInfo,
    pub running: Vec<RunRecord>,
    pub queued: Vec<QueuedInfo>,
    pub exports: Vec<ExportStatus>,
}

/// What the daemon is doing, from the database.
pub async fn status_report(ctx: &Context) -> Result<StatusReport, ServiceError> {
    ctx.require(super::access::Role::Viewer, "see the status")?;
    // Non-admins see the exports on the connections they may use, and nothing of the others.
    let usable = ctx.usable_connections().await?;
    let visible = |connection_id: i64| {
        usable
            .as_ref()
            .is_none_or(|ids| ids.contains(&connection_id))
    };
    let mut state = ctx.store.daemon_state().await?;
    if let Some(state) = state.as_mut().filter(|_| usable.is_some()) {
        // The daemon's status line names every running export.
        state.status = "details shown to admins".to_owned();
    }
    let up = state.as_ref().is_some_and(DaemonState::is_live);
    let tz = ctx.settings.timezone();
    let now = Utc::now();
    let mut running = Vec::new();
    let mut exports = Vec::new();
    let mut shown = Vec::new();
    for export in ctx.store.exports().await? {
        if !visible(export.connection_id) {
            continue;
        }
        shown.push(export.name.clone());
        if let Some(run) = ctx.store.running_run(export.id).await? {
            running.push(run);
        }
        let schedule = export
            .schedule
            .clone()
            .or_else(|| ctx.settings.schedule.refresh.clone());
        let next_run = schedule
            .as_deref()
            .filter(|_| export.enabled)
            .and_then(|expr| Schedule::parse(expr, tz).ok())
            .and_then(|s| s.next_after(now))
            .map(to_text);
        exports.push(ExportStatus {
            name: export.name.clone(),
            enabled: export.enabled,
            schedule,
            next_run,
            last_run: ctx.store.last_run(export.id).await?,
        });
    }
    let queued = ctx
        .store
        .queued_runs()
        .await?
        .into_iter()
        .filter(|(_, name)| shown.contains(name))
        .map(|(q, name)| QueuedInfo {
            export: name,
            trigger: q.trigger,
            full: q.full,
            requested_at: q.requested_at,
        })
        .collect();
    Ok(StatusReport {
        daemon: DaemonInfo { up, state },
        running,
        queued,
        exports,
    })
}
