//! systemd notifications (`Type=notify`). Each is a no-op without `$NOTIFY_SOCKET`, so the
//! daemon runs the same way in a terminal, under systemd, and in tests with a fake socket.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "Cannot notify systemd");
    }
}

/// Settings, migrations, recovery, scheduler and trigger watcher are up.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("ready")]);
}

pub fn reloading() {
    send(&[NotifyState::Reloading]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// One line for `systemctl status`.
pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// Half of `WatchdogSec=`, as systemd advises, when the watchdog is on.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}
