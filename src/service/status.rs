//! The status report: whether the daemon is up, what runs, what waits, and per export the
//! next scheduled time (in the schedule's time zone) and the last result. Read from the
//! database, so it works from any process that can read it.
//!
//! One source of truth for "running": the run rows. A row says `running` until its process
//! records the finish, so a row whose process is gone (a daemon killed with `kill -9`, a
//! terminal closed mid-run) is shown as the `interrupted` run that the next start will record,
//! never as running; and the daemon's line is built from the same rows, not from the
//! heartbeat's text, which lags its runs by up to a heartbeat.

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use super::{Context, ServiceError};
use crate::scheduler::Schedule;
use crate::store::queue::DaemonState;
use crate::store::{RunCounts, RunRecord, RunStatus, TriggerKind};

/// Said of a run whose process is gone; the next run of its export, or the daemon's next start,
/// records it so.
const GONE: &str = "the process running it is gone (crash, kill or power loss); the next start \
                    records it as interrupted and resumes it";

#[derive(Debug, Serialize)]
pub struct DaemonInfo {
    pub up: bool,
    /// The daemon's row (pid, start, last heartbeat); its `status` is what the daemon runs now,
    /// from the run rows, or `not running`.
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

/// A scheduled slot in the zone its schedule is read in. JSON: RFC 3339 with the zone's offset
/// (`2026-12-06T06:30:00+01:00`); text: `2026-12-06 06:30 +01:00 Europe/Berlin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextRun(pub DateTime<Tz>);

impl Serialize for NextRun {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0.to_rfc3339_opts(SecondsFormat::AutoSi, false))
    }
}

impl std::fmt::Display for NextRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let time = if self.0.second() == 0 {
            "%Y-%m-%d %H:%M %:z"
        } else {
            "%Y-%m-%d %H:%M:%S %:z"
        };
        write!(f, "{} {}", self.0.format(time), self.0.timezone().name())
    }
}

#[derive(Debug, Serialize)]
pub struct ExportStatus {
    pub name: String,
    pub enabled: bool,
    /// The schedule in force: the export's own, else the system refresh.
    pub schedule: Option<String>,
    /// The zone the schedule is read in: the export's own, else `schedule.timezone`.
    pub timezone: String,
    pub next_run: Option<NextRun>,
    /// The latest run that is not running now.
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
    let up = state.as_ref().is_some_and(daemon_alive);
    let now = Utc::now();
    let mut running = Vec::new();
    let mut exports = Vec::new();
    let mut shown = Vec::new();
    for export in ctx.store.exports().await? {
        if !visible(export.connection_id) {
            continue;
        }
        shown.push(export.name.clone());
        let mut last_run = None;
        for run in ctx.store.runs(Some(export.id), 2).await? {
            if run.status != RunStatus::Running {
                last_run.get_or_insert(run);
            } else if still_running(&run) {
                running.push(run);
            } else {
                last_run.get_or_insert(as_gone(run));
            }
        }
        let schedule = export
            .schedule
            .clone()
            .or_else(|| ctx.settings.schedule.refresh.clone());
        let timezone = export
            .timezone
            .clone()
            .unwrap_or_else(|| ctx.settings.schedule.timezone.clone());
        let next_run = next_run(
            schedule.as_deref().filter(|_| export.enabled),
            &timezone,
            now,
        );
        exports.push(ExportStatus {
            name: export.name.clone(),
            enabled: export.enabled,
            schedule,
            timezone,
            next_run,
            last_run,
        });
    }
    let queued: Vec<QueuedInfo> = ctx
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
    let state = state.map(|s| {
        let status = if up {
            let own: Vec<String> = running
                .iter()
                .filter(|r| r.owner_pid == Some(s.pid))
                .map(|r| run_activity(&r.export, &r.phase, &r.counts))
                .collect();
            activity_line(own, queued.len())
        } else if process_exists(s.pid) {
            // Its loop has not beaten for a while (a database locked for long, a stopped
            // process); its runs are still its own and shown running.
            format!("not responding since {}", s.heartbeat)
        } else {
            "not running".to_owned()
        };
        DaemonState { status, ..s }
    });
    Ok(StatusReport {
        daemon: DaemonInfo { up, state },
        running,
        queued,
        exports,
    })
}

/// The first slot after `now` of `schedule` read in `zone`, if there is a schedule and the zone
/// is known (a stored zone was checked when saved).
pub fn next_run(schedule: Option<&str>, zone: &str, now: DateTime<Utc>) -> Option<NextRun> {
    let tz = Schedule::parse_tz(zone).ok()?;
    let slot = Schedule::parse(schedule?, tz).ok()?.next_after(now)?;
    Some(NextRun(slot.with_timezone(&tz)))
}

/// Whether the daemon of this row is up: beating, and its process still there. A daemon killed
/// with `kill -9` leaves a fresh heartbeat behind for a while; its process is gone at once.
pub fn daemon_alive(state: &DaemonState) -> bool {
    state.is_live() && process_exists(state.pid)
}

/// Whether a run row saying `running` still has its process (the daemon, or a terminal's
/// `export run`) behind it.
fn still_running(run: &RunRecord) -> bool {
    // A row written before owners were recorded has nothing to check against.
    run.owner_pid.is_none_or(process_exists)
}

/// A run whose process is gone, as the next start will record it.
fn as_gone(run: RunRecord) -> RunRecord {
    RunRecord {
        status: RunStatus::Interrupted,
        error: Some(GONE.to_owned()),
        ..run
    }
}

/// Whether a process with this id exists. A process of another user counts (the answer is
/// "not permitted", not "no such process"), a zombie (ended, not yet reaped by its parent)
/// does not; the id of a process gone since could have been reused, so a live answer is a
/// "maybe", a dead one is sure.
fn process_exists(pid: i64) -> bool {
    let Some(raw) = i32::try_from(pid).ok().filter(|pid| *pid > 0) else {
        return false;
    };
    let Some(pid) = rustix::process::Pid::from_raw(raw) else {
        return false;
    };
    let exists = match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    };
    exists && !is_zombie(raw)
}

/// Whether /proc says the process has ended and waits to be reaped. Unreadable (another
/// user's process under `ProtectProc=invisible`): not known to be a zombie.
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        // The state follows the command name, which is in parentheses and may hold any byte.
        .and_then(|stat| {
            let (_, after) = stat.rsplit_once(')')?;
            after.split_whitespace().next().map(|state| state == "Z")
        })
        .unwrap_or(false)
}

/// One run's progress for a status line: `weekly: sending, read 3000, sent 250/1000`.
pub fn run_activity(export: &str, phase: &str, c: &RunCounts) -> String {
    format!(
        "{export}: {phase}, read {}, sent {}/{}",
        c.rows_read,
        c.upserted + c.unsubscribed + c.failed,
        c.planned
    )
}

/// The daemon's line: `idle; 0 queued` or `running weekly: ...; daily: ...; 1 queued`.
pub fn activity_line(mut runs: Vec<String>, queued: usize) -> String {
    if runs.is_empty() {
        return format!("idle; {queued} queued");
    }
    runs.sort();
    format!("running {}; {queued} queued", runs.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().expect("instant")
    }

    #[test]
    fn the_next_run_carries_the_offset_in_force_at_the_slot_across_a_dst_change() {
        // Berlin leaves summer time on 25 October 2026 and enters it on 28 March 2027.
        let cases = [
            (
                "2026-10-24T12:00:00Z",
                "2026-10-25 06:30 +01:00 Europe/Berlin",
            ),
            (
                "2026-10-23T12:00:00Z",
                "2026-10-24 06:30 +02:00 Europe/Berlin",
            ),
            (
                "2027-03-27T12:00:00Z",
                "2027-03-28 06:30 +02:00 Europe/Berlin",
            ),
        ];
        for (now, expected) in cases {
            let next = next_run(Some("30 6 * * *"), "Europe/Berlin", at(now)).expect("a slot");

            assert_eq!(next.to_string(), expected, "after {now}");
        }
    }

    #[test]
    fn the_next_run_is_rfc3339_with_the_zone_offset_in_json() {
        let next = next_run(
            Some("0 30 6 * * *"),
            "Australia/Sydney",
            at("2026-12-05T00:00:00Z"),
        )
        .expect("a slot");

        let json = serde_json::to_value(next).expect("json");

        assert_eq!(json, "2026-12-06T06:30:00+11:00");
    }

    #[test]
    fn seconds_are_shown_only_when_the_slot_has_them() {
        let next = next_run(Some("15 0 7 * * *"), "UTC", at("2026-12-05T00:00:00Z")).expect("slot");

        assert_eq!(next.to_string(), "2026-12-05 07:00:15 +00:00 UTC");
    }

    #[test]
    fn no_schedule_or_an_unknown_zone_has_no_next_run() {
        let now = at("2026-12-05T00:00:00Z");

        assert_eq!(next_run(None, "UTC", now), None);
        assert_eq!(next_run(Some("30 6 * * *"), "Mars/Olympus", now), None);
    }

    #[test]
    fn the_activity_line_is_idle_or_lists_the_runs_in_order() {
        let counts = RunCounts {
            rows_read: 3000,
            planned: 1000,
            upserted: 240,
            failed: 10,
            ..RunCounts::default()
        };

        assert_eq!(activity_line(Vec::new(), 2), "idle; 2 queued");
        assert_eq!(
            activity_line(
                vec![
                    run_activity("weekly", "sending", &counts),
                    run_activity("daily", "reading", &RunCounts::default()),
                ],
                0
            ),
            "running daily: reading, read 0, sent 0/0; weekly: sending, read 3000, sent 250/1000; \
             0 queued"
        );
    }

    #[test]
    fn a_process_that_exists_is_found_and_one_that_ended_is_not() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("start a process");
        let pid = i64::from(child.id());
        child.wait().expect("reap it");

        assert!(process_exists(i64::from(std::process::id())));
        assert!(!process_exists(pid), "an ended and reaped process");
        assert!(!process_exists(-1));
    }

    #[test]
    fn an_ended_process_its_parent_has_not_reaped_yet_is_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("start a process");
        let pid = child.id();
        let raw = rustix::process::Pid::from_raw(pid as i32).expect("pid");
        rustix::process::kill_process(raw, rustix::process::Signal::KILL).expect("kill");
        // Waits for it to end but leaves it unreaped (a zombie), as a parent slow to reap does.
        rustix::process::waitid(
            rustix::process::WaitId::Pid(raw),
            rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOWAIT,
        )
        .expect("it ends");

        let seen = process_exists(i64::from(pid));

        child.wait().expect("reap it");
        assert!(!seen, "a zombie is not a running process");
    }
}
