//! Alerts as the service raises them: after every run this process runs (daemon slots, signal
//! files, a foreground `export run`), the alert state is changed in the store by the pure rules
//! of `alerts::decide` and the alerts it calls for are queued; and `alerts test`, which sends a
//! sample to every channel without a store or a daemon.

use std::time::Duration;

use super::Context;
use crate::alerts::decide::{Observed, decide};
use crate::alerts::webhook::WebhookError;
use crate::alerts::{Alert, AlertQueue, ChannelReport, Channels, RunFacts};
use crate::pipeline::{PipelineError, RunOutcome};
use crate::settings::AlertsSettings;
use crate::store::alerts::{AlertDue, AlertEvent, FailureKind, new_alert_id};
use crate::store::{ExportDef, RunCounts, RunStatus};

/// How long a process that ends waits for its alerts: a foreground run must not hang on a
/// receiver that is down, and the daemon must stop within systemd's stop timeout.
pub const ALERT_FLUSH_WAIT: Duration = Duration::from_secs(5);

/// Why `alerts test` could not send.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    #[error("no alert channel is set: set alerts.webhook_url or alerts.command in the settings")]
    NoChannel,
    #[error(transparent)]
    Webhook(#[from] WebhookError),
}

impl Context {
    /// Decides, records and queues the alerts a run of `export` that ended with `result` calls
    /// for. The state is recorded also while no channel is set (see `alerts::decide`). Never
    /// fails the run: a problem is logged, and when the alert state cannot be read the run's
    /// alerts go out as if nothing had been alerted before.
    pub(super) async fn raise_alerts(
        &self,
        export: &ExportDef,
        result: &Result<RunOutcome, PipelineError>,
    ) {
        let on = self.alerts.is_on();
        let (run_id, status, failure, error, counts) = match result {
            Ok(o) => (o.run_id, o.status, o.failure, o.error.clone(), o.counts),
            // Another process runs it: that process alerts.
            Err(PipelineError::AlreadyRunning { .. }) => return,
            Err(e) => match e.unfinished_outcome() {
                Some(o) => (o.run_id, o.status, o.failure, o.error.clone(), o.counts),
                // No run could be recorded at all (the store failed at its start).
                None => (
                    None,
                    RunStatus::Failed,
                    Some(e.failure_kind()),
                    Some(e.to_string()),
                    RunCounts::default(),
                ),
            },
        };
        let observed = Observed::of(status, failure);
        if observed == Observed::Stopped {
            return;
        }
        let decided = self
            .store
            .change_alert_state(
                export.id,
                export.connection_id,
                run_id,
                move |export, connection| {
                    let mut decision = decide(observed, export, connection);
                    if !on {
                        decision = decision.without_channels();
                    }
                    (decision.export, decision.connection)
                },
            )
            .await;
        if !on {
            if let Err(error) = decided {
                tracing::debug!(export = %export.name, %error, "Cannot record the alert state");
            }
            return;
        }
        let due: Vec<(AlertEvent, Option<AlertDue>)> = match decided {
            Ok(due) => due.into_iter().map(|d| (d.event, Some(d))).collect(),
            Err(error) => {
                tracing::warn!(export = %export.name, %error, "Cannot read or record the alert state; alerting as if nothing was alerted before");
                let decision = decide(observed, None, None);
                [
                    decision.export.and_then(|c| c.alert),
                    decision.connection.and_then(|c| c.alert),
                ]
                .into_iter()
                .flatten()
                .map(|event| (event, None))
                .collect()
            }
        };
        if due.is_empty() {
            return;
        }
        let facts = self
            .run_facts(export, run_id, status, failure, error, counts)
            .await;
        for (event, recorded) in due {
            let id = recorded
                .as_ref()
                .map_or_else(new_alert_id, |d| d.alert_id.clone());
            let alert = Alert::for_run(id, event, &facts);
            tracing::info!(export = %export.name, run_id, event = %event, "Alert raised");
            self.alerts.enqueue(alert, recorded.map(|d| d.subject));
        }
    }

    /// What an alert about a run says, read from the store where it can be.
    async fn run_facts(
        &self,
        export: &ExportDef,
        run_id: Option<i64>,
        status: RunStatus,
        failure: Option<FailureKind>,
        error: Option<String>,
        counts: RunCounts,
    ) -> RunFacts {
        let connection = match self.store.connection_by_id(export.connection_id).await {
            Ok(Some(c)) => c.name,
            _ => format!("id {}", export.connection_id),
        };
        let record = match run_id {
            Some(id) => self.store.run(id).await.ok().flatten(),
            None => None,
        };
        let mut names = vec![export.name.clone(), connection.clone()];
        names.extend(export.segments.iter().map(|s| s.name.clone()));
        RunFacts {
            export: export.name.clone(),
            connection,
            run_id,
            status,
            failure,
            error,
            counts,
            started_at: record.as_ref().map(|r| r.started_at.clone()),
            finished_at: record.and_then(|r| r.finished_at),
            names,
        }
    }

    /// Waits up to `wait` for queued alerts; says in the log what it gave up on.
    pub async fn flush_alerts(&self, wait: Duration) {
        let left = self.alerts.flush(wait).await;
        if left > 0 {
            tracing::warn!(
                alerts = left,
                waited_secs = wait.as_secs(),
                "Alert could not be delivered in time; it is sent again by the next run that ends \
                 the same way"
            );
        }
    }
}

/// The alert queue for `settings`, sharing `current` when the alert settings did not change.
pub(super) fn alert_queue_for(
    settings: &AlertsSettings,
    current: Option<(&AlertsSettings, &std::sync::Arc<AlertQueue>)>,
    store: &crate::store::Store,
) -> std::sync::Arc<AlertQueue> {
    match current {
        Some((in_force, queue)) if in_force == settings => std::sync::Arc::clone(queue),
        _ => std::sync::Arc::new(AlertQueue::start(settings, store.clone())),
    }
}

/// Sends a sample alert to every channel `settings` names, once each (no retries, so the
/// answer comes at once), and reports per channel. Needs neither the store nor a daemon.
pub async fn send_test_alert(settings: &AlertsSettings) -> Result<Vec<ChannelReport>, AlertsError> {
    let channels = Channels::from_settings(settings)?;
    if channels.is_empty() {
        return Err(AlertsError::NoChannel);
    }
    let alert = Alert::sample(new_alert_id());
    Ok(channels.send(&alert, 1).await)
}
