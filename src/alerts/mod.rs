//! Alerts: telling someone when an export fails, ends partial or recovers, or when
//! ActiveCampaign refuses a connection's key. `decide` says whether a finished run calls for an
//! alert (pure, with the state the store keeps); `alert` says what an alert holds; `webhook`
//! and `command` deliver it.
//!
//! Delivery never holds up a run: alerts go into a bounded queue that one background task
//! works through in order, each alert to every channel at once. A process that ends (a
//! foreground `export run`, the daemon stopping) waits a few seconds for the queue
//! ([`AlertQueue::flush`]) and says what it could not deliver; the store then still holds the
//! alert as undelivered, and the next run that ends in the same state sends it again.

pub mod alert;
pub mod command;
pub mod decide;
pub mod webhook;

use std::time::Duration;

use tokio::sync::{mpsc, watch};

pub use alert::{Alert, RunFacts};
use command::{AlertCommand, CommandError};
use webhook::{Webhook, WebhookError};

use crate::escape::untrusted;
use crate::settings::AlertsSettings;
use crate::store::Store;
use crate::store::alerts::AlertSubject;

/// Alerts waiting for delivery at most: far more than runs end in the time a failing webhook
/// takes to give up on one (about two minutes), so a full queue means every channel is down.
const QUEUE_CAPACITY: usize = 64;

/// Every channel the settings name.
#[derive(Debug)]
pub struct Channels {
    webhook: Option<Webhook>,
    command: Option<AlertCommand>,
}

/// How one channel took one alert.
#[derive(Debug)]
pub struct ChannelReport {
    /// `webhook https://host/…` or `command /path/to/program`.
    pub channel: String,
    /// What it got, or why it failed.
    pub outcome: Result<Delivery, ChannelError>,
}

/// What a channel that took an alert said.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `HTTP 200 after 1 attempt`, `exit 0 in 0.1 s`.
    pub summary: String,
    /// The command's output, capped and escaped; empty for the webhook.
    pub output: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    #[error(transparent)]
    Command(#[from] CommandError),
}

impl Channels {
    /// The channels of `settings` (none when no channel is set).
    pub fn from_settings(settings: &AlertsSettings) -> Result<Channels, WebhookError> {
        Ok(Channels {
            webhook: Webhook::from_settings(settings)?,
            command: AlertCommand::from_settings(settings),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.webhook.is_none() && self.command.is_none()
    }

    /// Sends `alert` to every channel at once, the webhook up to `webhook_attempts` times.
    pub async fn send(&self, alert: &Alert, webhook_attempts: u32) -> Vec<ChannelReport> {
        let body = alert.to_json();
        let webhook = async {
            let hook = self.webhook.as_ref()?;
            let outcome = hook
                .send(&body, &alert.id, alert.event.as_str(), webhook_attempts)
                .await
                .map(|d| Delivery {
                    summary: format!(
                        "HTTP {} after {} attempt{}",
                        d.status,
                        d.attempts,
                        if d.attempts == 1 { "" } else { "s" }
                    ),
                    output: String::new(),
                })
                .map_err(ChannelError::from);
            Some(ChannelReport {
                channel: format!("webhook {}", hook.shown()),
                outcome,
            })
        };
        let command = async {
            let command = self.command.as_ref()?;
            let outcome = command
                .run(alert)
                .await
                .map(|ran| Delivery {
                    summary: format!("exit 0 in {:.1} s", ran.took.as_secs_f64()),
                    output: ran.output,
                })
                .map_err(ChannelError::from);
            Some(ChannelReport {
                channel: format!("command {}", command.program()),
                outcome,
            })
        };
        let (webhook, command) = tokio::join!(webhook, command);
        webhook.into_iter().chain(command).collect()
    }
}

/// An alert waiting in the queue, with whose state to mark delivered once a channel took it.
struct Queued {
    alert: Alert,
    subject: Option<AlertSubject>,
}

/// The process's alert queue and its delivery task; inert when no channel is set.
pub struct AlertQueue {
    on: Option<Running>,
}

struct Running {
    queue: mpsc::Sender<Queued>,
    /// Alerts queued or being delivered; [`AlertQueue::flush`] waits for zero.
    pending: watch::Sender<usize>,
}

impl std::fmt::Debug for AlertQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertQueue")
            .field("on", &self.on.is_some())
            .finish()
    }
}

impl AlertQueue {
    /// A queue that takes nothing: no channel is set.
    pub fn off() -> AlertQueue {
        AlertQueue { on: None }
    }

    /// Starts the delivery task for the channels of `settings`; `store` records which alerts
    /// a channel took. Off when no channel is set, or when the webhook's client cannot be
    /// built (said in the log: alerts would be lost silently otherwise).
    pub fn start(settings: &AlertsSettings, store: Store) -> AlertQueue {
        let channels = match Channels::from_settings(settings) {
            Ok(channels) if channels.is_empty() => return AlertQueue::off(),
            Ok(channels) => channels,
            Err(error) => {
                tracing::error!(%error, "Alerts are off: the webhook cannot be set up");
                return AlertQueue::off();
            }
        };
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let (pending, _) = watch::channel(0usize);
        tokio::spawn(deliver_queued(channels, receiver, store, pending.clone()));
        AlertQueue {
            on: Some(Running { queue, pending }),
        }
    }

    /// Whether a channel is set.
    pub fn is_on(&self) -> bool {
        self.on.is_some()
    }

    /// Queues `alert` without waiting; when a channel takes it, `subject`'s state is marked
    /// delivered. A full queue drops it (said in the log): it stays undelivered in the store.
    pub fn enqueue(&self, alert: Alert, subject: Option<AlertSubject>) {
        let Some(on) = &self.on else { return };
        on.pending.send_modify(|n| *n += 1);
        if let Err(e) = on.queue.try_send(Queued { alert, subject }) {
            on.pending.send_modify(|n| *n -= 1);
            let alert = match e {
                mpsc::error::TrySendError::Full(q) | mpsc::error::TrySendError::Closed(q) => {
                    q.alert
                }
            };
            tracing::warn!(event = %alert.event, export = alert.export.as_deref().unwrap_or(""), "Alert queue full; alert dropped (it is sent again by the next run in the same state)");
        }
    }

    /// Waits up to `wait` for every queued alert to be delivered or given up; returns how many
    /// were still waiting when it stopped.
    pub async fn flush(&self, wait: Duration) -> usize {
        let Some(on) = &self.on else { return 0 };
        let mut pending = on.pending.subscribe();
        let drained = tokio::time::timeout(wait, async {
            let _ = pending.wait_for(|n| *n == 0).await;
        })
        .await;
        match drained {
            Ok(()) => 0,
            Err(_) => *on.pending.borrow(),
        }
    }
}

/// The delivery task: each alert in turn to every channel, then its state marked delivered
/// when a channel took it. Ends when the queue's last sender is gone.
async fn deliver_queued(
    channels: Channels,
    mut receiver: mpsc::Receiver<Queued>,
    store: Store,
    pending: watch::Sender<usize>,
) {
    while let Some(Queued { alert, subject }) = receiver.recv().await {
        let reports = channels.send(&alert, webhook::WEBHOOK_ATTEMPTS).await;
        log_reports(&alert, &reports);
        if let Some(subject) = subject
            && reports.iter().any(|r| r.outcome.is_ok())
            && let Err(error) = store.mark_alert_delivered(subject, &alert.id).await
        {
            tracing::warn!(%error, "Cannot record an alert as delivered; it may be sent again");
        }
        pending.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// One log line per channel: delivered at info (the command's output at debug), failed at
/// warn with the output (an operator may need to fix the channel). Output is escaped.
pub fn log_reports(alert: &Alert, reports: &[ChannelReport]) {
    let export = alert.export.as_deref().unwrap_or("");
    for report in reports {
        match &report.outcome {
            Ok(delivery) => {
                tracing::info!(event = %alert.event, export, channel = %report.channel, outcome = %delivery.summary, "Alert delivered");
                if !delivery.output.is_empty() {
                    tracing::debug!(channel = %report.channel, output = %untrusted(&delivery.output), "Alert command output");
                }
            }
            Err(error) => {
                tracing::warn!(event = %alert.event, export, channel = %report.channel, %error, "Alert not delivered")
            }
        }
    }
}
