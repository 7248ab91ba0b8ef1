//! Whether a finished run calls for an alert: one pure function of what the store remembers
//! and how the run ended, kept apart from delivery so that every rule is a line of a table
//! test.
//!
//! The rules:
//! - A state is how the last finished run ended: `ok`, `partial`, or `failed` with the kind of
//!   failure. A run that ends in the state already remembered alerts nothing: failing again
//!   with the same kind at every slot is one alert. A change of state alerts: `failed` after
//!   `partial`, `partial` after `failed`, `failed` of another kind.
//! - The first succeeded run after an alerted `failed` or `partial` alerts `recovered`; a
//!   success with nothing alerted before alerts nothing.
//! - A rejected API key is one alert per connection, whichever of its exports ran into it
//!   first: the export's own state changes silently. The connection alerts `key-accepted` at the
//!   first run of one of its exports that gets past the key (succeeded or partial), and an
//!   export whose failure was the key then recovers silently.
//! - An alert no channel took (every attempt failed, or a foreground run stopped waiting) is
//!   sent again by the next run that ends in the same state.
//! - A cancelled or interrupted run says nothing about the export's health: nothing changes.
//! - While no channel is set, states are still kept: a failure or partial run stays to be
//!   alerted by the next run in that state once a channel is set; a recovery is not alerted,
//!   since nobody was told of the failure.

use crate::store::RunStatus;
use crate::store::alerts::{AlertEvent, Change, ExportState, FailureKind, KeyState, Remembered};

/// How a run ended, as alerts see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    Succeeded,
    Partial,
    Failed(FailureKind),
    /// Cancelled or interrupted: not a verdict on the export.
    Stopped,
}

impl Observed {
    /// A finished run's status; a failed run without a kind counts as an internal failure.
    pub fn of(status: RunStatus, failure: Option<FailureKind>) -> Observed {
        match status {
            RunStatus::Succeeded => Observed::Succeeded,
            RunStatus::Partial => Observed::Partial,
            RunStatus::Failed => Observed::Failed(failure.unwrap_or(FailureKind::Internal)),
            RunStatus::Running | RunStatus::Cancelled | RunStatus::Interrupted => Observed::Stopped,
        }
    }
}

/// What to remember, and which alerts to send: per export, and per connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decision {
    pub export: Option<Change<ExportState>>,
    pub connection: Option<Change<KeyState>>,
}

impl Decision {
    /// This decision when no channel is set: the same states, with only the alerts of bad
    /// states kept pending (see the module's rules).
    pub fn without_channels(self) -> Decision {
        let bad = |change: Change<_>| Change {
            alert: change.alert.filter(|a| {
                matches!(
                    a,
                    AlertEvent::Failed | AlertEvent::Partial | AlertEvent::KeyRejected
                )
            }),
            ..change
        };
        Decision {
            export: self.export.map(bad),
            connection: self.connection.map(|change| Change {
                alert: change.alert.filter(|a| *a == AlertEvent::KeyRejected),
                ..change
            }),
        }
    }
}

/// The changes and alerts a run that ended as `observed` calls for, given the export's and its
/// connection's remembered states (`None`: never remembered).
pub fn decide(
    observed: Observed,
    export: Option<Remembered<ExportState>>,
    connection: Option<Remembered<KeyState>>,
) -> Decision {
    let (now, key) = match observed {
        Observed::Stopped => return Decision::default(),
        Observed::Succeeded => (ExportState::Ok, Some(KeyState::Accepted)),
        Observed::Partial => (ExportState::Partial, Some(KeyState::Accepted)),
        Observed::Failed(FailureKind::KeyRejected) => (
            ExportState::Failed(FailureKind::KeyRejected),
            Some(KeyState::Rejected),
        ),
        // Other failures may come before the key is tried (a source that cannot be read, a
        // secret that does not unseal): they say nothing about it.
        Observed::Failed(kind) => (ExportState::Failed(kind), None),
    };
    Decision {
        export: export_change(export, now),
        connection: key.and_then(|key| key_change(connection, key)),
    }
}

fn export_change(
    before: Option<Remembered<ExportState>>,
    now: ExportState,
) -> Option<Change<ExportState>> {
    if let Some(before) = before.filter(|b| b.state == now) {
        return resend(before);
    }
    let alert = match (before.map(|b| b.state), now) {
        // The connection's alert tells it, once for all its exports.
        (_, ExportState::Failed(FailureKind::KeyRejected)) => None,
        (Some(ExportState::Failed(FailureKind::KeyRejected)), ExportState::Ok) => None,
        (None | Some(ExportState::Ok), ExportState::Ok) => None,
        (Some(_), ExportState::Ok) => Some(AlertEvent::Recovered),
        (_, ExportState::Partial) => Some(AlertEvent::Partial),
        (_, ExportState::Failed(_)) => Some(AlertEvent::Failed),
    };
    Some(Change { state: now, alert })
}

fn key_change(before: Option<Remembered<KeyState>>, now: KeyState) -> Option<Change<KeyState>> {
    match (before, now) {
        (Some(before), now) if before.state == now => resend(before),
        // A key never refused: nothing to remember.
        (None, KeyState::Accepted) => None,
        (_, KeyState::Rejected) => Some(Change {
            state: now,
            alert: Some(AlertEvent::KeyRejected),
        }),
        (Some(_), KeyState::Accepted) => Some(Change {
            state: now,
            alert: Some(AlertEvent::KeyAccepted),
        }),
    }
}

/// The same state again: its alert once more if no channel took it, else nothing.
fn resend<S: Copy>(before: Remembered<S>) -> Option<Change<S>> {
    match before.alert {
        Some(alert) if !before.delivered => Some(Change {
            state: before.state,
            alert: Some(alert),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AlertEvent::{Failed, KeyAccepted, KeyRejected, Partial, Recovered};

    const SOURCE: FailureKind = FailureKind::Source;
    const AC: FailureKind = FailureKind::ActiveCampaign;
    const KEY: FailureKind = FailureKind::KeyRejected;

    /// A state whose alert (if any) a channel took.
    fn told<S>(state: S, alert: Option<AlertEvent>) -> Option<Remembered<S>> {
        Some(Remembered {
            state,
            alert,
            delivered: true,
        })
    }

    /// A state whose alert no channel took.
    fn untold<S>(state: S, alert: AlertEvent) -> Option<Remembered<S>> {
        Some(Remembered {
            state,
            alert: Some(alert),
            delivered: false,
        })
    }

    fn change<S>(state: S, alert: Option<AlertEvent>) -> Option<Change<S>> {
        Some(Change { state, alert })
    }

    #[test]
    fn an_export_alerts_each_change_of_state_once() {
        use ExportState::{Ok, Partial as P};
        let f = ExportState::Failed;
        let cases = [
            // (before, observed, export change expected)
            (None, Observed::Succeeded, change(Ok, None)),
            (
                None,
                Observed::Failed(SOURCE),
                change(f(SOURCE), Some(Failed)),
            ),
            (None, Observed::Partial, change(P, Some(Partial))),
            (told(Ok, None), Observed::Succeeded, None),
            (told(Ok, Some(Recovered)), Observed::Succeeded, None),
            (
                told(Ok, None),
                Observed::Failed(SOURCE),
                change(f(SOURCE), Some(Failed)),
            ),
            (
                told(f(SOURCE), Some(Failed)),
                Observed::Failed(SOURCE),
                None,
            ),
            (
                told(f(SOURCE), Some(Failed)),
                Observed::Failed(AC),
                change(f(AC), Some(Failed)),
            ),
            (
                told(f(SOURCE), Some(Failed)),
                Observed::Partial,
                change(P, Some(Partial)),
            ),
            (told(P, Some(Partial)), Observed::Partial, None),
            (
                told(P, Some(Partial)),
                Observed::Failed(AC),
                change(f(AC), Some(Failed)),
            ),
            (
                told(f(SOURCE), Some(Failed)),
                Observed::Succeeded,
                change(Ok, Some(Recovered)),
            ),
            (
                told(P, Some(Partial)),
                Observed::Succeeded,
                change(Ok, Some(Recovered)),
            ),
        ];
        for (before, observed, expected) in cases {
            let decision = decide(observed, before, None);
            assert_eq!(decision.export, expected, "{before:?} then {observed:?}");
        }
    }

    #[test]
    fn an_alert_no_channel_took_is_sent_again_by_the_next_run_in_the_same_state() {
        let f = ExportState::Failed;
        let cases = [
            (
                untold(f(SOURCE), Failed),
                Observed::Failed(SOURCE),
                change(f(SOURCE), Some(Failed)),
            ),
            (
                untold(ExportState::Partial, Partial),
                Observed::Partial,
                change(ExportState::Partial, Some(Partial)),
            ),
            (
                untold(ExportState::Ok, Recovered),
                Observed::Succeeded,
                change(ExportState::Ok, Some(Recovered)),
            ),
            // A change of state sends the new state's alert, not the old one.
            (
                untold(f(SOURCE), Failed),
                Observed::Succeeded,
                change(ExportState::Ok, Some(Recovered)),
            ),
        ];
        for (before, observed, expected) in cases {
            assert_eq!(
                decide(observed, before, None).export,
                expected,
                "{before:?} then {observed:?}"
            );
        }
    }

    #[test]
    fn a_cancelled_or_interrupted_run_changes_nothing() {
        for status in [RunStatus::Cancelled, RunStatus::Interrupted] {
            let observed = Observed::of(status, None);
            let before = untold(ExportState::Failed(SOURCE), Failed);

            let decision = decide(observed, before, untold(KeyState::Rejected, KeyRejected));

            assert_eq!(decision, Decision::default(), "{status}");
        }
    }

    #[test]
    fn a_rejected_key_is_one_alert_for_the_connection_and_none_for_its_exports() {
        let f = ExportState::Failed;
        let cases = [
            // (export before, connection before, export change, connection change)
            (
                None,
                None,
                change(f(KEY), None),
                change(KeyState::Rejected, Some(KeyRejected)),
            ),
            // A second export of the same connection: the connection was told already.
            (
                told(ExportState::Ok, None),
                told(KeyState::Rejected, Some(KeyRejected)),
                change(f(KEY), None),
                None,
            ),
            // A key refused again after it was accepted is news.
            (
                told(ExportState::Ok, None),
                told(KeyState::Accepted, Some(KeyAccepted)),
                change(f(KEY), None),
                change(KeyState::Rejected, Some(KeyRejected)),
            ),
            // An export failing for another reason first, then on the key.
            (
                told(f(SOURCE), Some(Failed)),
                None,
                change(f(KEY), None),
                change(KeyState::Rejected, Some(KeyRejected)),
            ),
            // The same refusal at the next slot: nothing.
            (
                told(f(KEY), None),
                told(KeyState::Rejected, Some(KeyRejected)),
                None,
                None,
            ),
            // The connection's alert was not delivered: sent again.
            (
                told(f(KEY), None),
                untold(KeyState::Rejected, KeyRejected),
                None,
                change(KeyState::Rejected, Some(KeyRejected)),
            ),
        ];
        for (export, connection, export_change, key_change) in cases {
            let decision = decide(Observed::Failed(KEY), export, connection);
            assert_eq!(decision.export, export_change, "{export:?} {connection:?}");
            assert_eq!(decision.connection, key_change, "{export:?} {connection:?}");
        }
    }

    #[test]
    fn a_key_accepted_again_is_one_alert_for_the_connection_and_its_exports_recover_silently() {
        let rejected = told(KeyState::Rejected, Some(KeyRejected));
        let accepted = told(KeyState::Accepted, Some(KeyAccepted));
        let f = ExportState::Failed;
        let cases = [
            // (export before, connection before, observed, export change, connection change)
            (
                told(f(KEY), None),
                rejected,
                Observed::Succeeded,
                change(ExportState::Ok, None),
                change(KeyState::Accepted, Some(KeyAccepted)),
            ),
            // Another export of the connection, after the first one told the key works.
            (
                told(f(KEY), None),
                accepted,
                Observed::Succeeded,
                change(ExportState::Ok, None),
                None,
            ),
            // Past the key but partial: that is news of its own.
            (
                told(f(KEY), None),
                rejected,
                Observed::Partial,
                change(ExportState::Partial, Some(Partial)),
                change(KeyState::Accepted, Some(KeyAccepted)),
            ),
            // A failure of another kind does not tell whether the key works.
            (
                told(f(KEY), None),
                rejected,
                Observed::Failed(SOURCE),
                change(f(SOURCE), Some(Failed)),
                None,
            ),
            // A connection never refused has nothing to remember.
            (
                None,
                None,
                Observed::Succeeded,
                change(ExportState::Ok, None),
                None,
            ),
        ];
        for (export, connection, observed, export_change, key_change) in cases {
            let decision = decide(observed, export, connection);
            assert_eq!(
                decision.export, export_change,
                "{export:?} {connection:?} {observed:?}"
            );
            assert_eq!(
                decision.connection, key_change,
                "{export:?} {connection:?} {observed:?}"
            );
        }
    }

    #[test]
    fn without_channels_states_are_kept_and_only_bad_news_stays_pending() {
        let f = ExportState::Failed;
        let cases = [
            // (export before, connection before, observed, export change, connection change)
            (
                None,
                None,
                Observed::Failed(SOURCE),
                change(f(SOURCE), Some(Failed)),
                None,
            ),
            (
                None,
                None,
                Observed::Partial,
                change(ExportState::Partial, Some(Partial)),
                None,
            ),
            (
                None,
                None,
                Observed::Failed(KEY),
                change(f(KEY), None),
                change(KeyState::Rejected, Some(KeyRejected)),
            ),
            (
                untold(f(SOURCE), Failed),
                None,
                Observed::Succeeded,
                change(ExportState::Ok, None),
                None,
            ),
            (
                told(f(KEY), None),
                untold(KeyState::Rejected, KeyRejected),
                Observed::Succeeded,
                change(ExportState::Ok, None),
                change(KeyState::Accepted, None),
            ),
        ];
        for (export, connection, observed, export_change, key_change) in cases {
            let decision = decide(observed, export, connection).without_channels();
            assert_eq!(decision.export, export_change, "{export:?} {observed:?}");
            assert_eq!(
                decision.connection, key_change,
                "{connection:?} {observed:?}"
            );
        }
    }

    #[test]
    fn a_failed_run_without_a_kind_counts_as_an_internal_failure() {
        assert_eq!(
            Observed::of(RunStatus::Failed, None),
            Observed::Failed(FailureKind::Internal)
        );
        assert_eq!(
            Observed::of(RunStatus::Partial, Some(SOURCE)),
            Observed::Partial
        );
    }
}
