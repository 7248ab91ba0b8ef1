//! Noticing trigger files: an inotify watch on the trigger directory plus a periodic rescan,
//! turned into coalesced wake-ups. What a wake-up leads to (claiming the files) is
//! [`super::claim_all`]'s job; this file never reads a trigger.

use std::path::Path;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::triggers::{TriggerError, ensure_dir, is_final_name};
use std::os::unix::ffi::OsStrExt;

/// `tokio::time::interval` panics on a zero period; also keeps a typo from busy-looping.
const MIN_RESCAN: Duration = Duration::from_secs(1);

/// Watches the trigger directory and wakes its receiver when a trigger may have arrived: on
/// every relevant inotify event and on a periodic rescan tick (a fallback for lost events,
/// e.g. on network filesystems). Wake-ups coalesce: a pending one is not repeated. Drop the
/// watcher to stop; the receiver then yields `None`.
pub struct TriggerWatcher {
    /// Kept alive for its inotify watch; dropping it stops the events.
    _watcher: notify::RecommendedWatcher,
    /// The rescan ticker, aborted on drop.
    ticker: tokio::task::JoinHandle<()>,
}

impl TriggerWatcher {
    /// Starts watching `dir`, creating it (mode 0770) if missing. The first wake-up comes at
    /// once, so the caller claims files that arrived while it was down. `rescan` is clamped
    /// to at least one second. Must be called within a tokio runtime.
    pub fn start(
        dir: &Path,
        rescan: Duration,
    ) -> Result<(TriggerWatcher, mpsc::Receiver<()>), TriggerError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| TriggerError::NoRuntime {
                path: dir.to_owned(),
            })?;
        ensure_dir(dir)?;
        // Capacity 1: one pending wake-up says "scan", more would say nothing new.
        let (wake, receiver) = mpsc::channel(1);

        let event_wake = wake.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match &event {
                    Ok(event) => is_relevant(event),
                    Err(error) => {
                        tracing::warn!(%error, "Trigger directory watch failed; rescanning");
                        true
                    }
                };
                if relevant {
                    // Full means a wake-up is already pending; closed means nobody listens.
                    let _ = event_wake.try_send(());
                }
            })
            .map_err(|source| TriggerError::Watch {
                path: dir.to_owned(),
                source,
            })?;
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|source| TriggerError::Watch {
                path: dir.to_owned(),
                source,
            })?;

        let period = rescan.max(MIN_RESCAN);
        let ticker = runtime.spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                interval.tick().await;
                if wake.is_closed() {
                    break;
                }
                let _ = wake.try_send(());
            }
        });
        Ok((
            TriggerWatcher {
                _watcher: watcher,
                ticker,
            },
            receiver,
        ))
    }
}

impl Drop for TriggerWatcher {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// Whether an event may mean a new trigger: reads are not, nor are writes to temporary names
/// (a writer's temp file changes many times before its one rename).
fn is_relevant(event: &notify::Event) -> bool {
    if matches!(event.kind, EventKind::Access(_)) {
        return false;
    }
    event.need_rescan()
        || event.paths.is_empty()
        || event.paths.iter().any(|path| {
            path.file_name()
                .is_some_and(|name| is_final_name(name.as_bytes()))
        })
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    use super::*;

    fn trigger_dir() -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("triggers");
        (root, dir)
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_watcher_creates_a_missing_dir_with_mode_0770() {
        use std::os::unix::fs::PermissionsExt;
        let (_root, dir) = trigger_dir();

        let (_watcher, _wake) =
            TriggerWatcher::start(&dir, Duration::from_secs(3600)).expect("start watcher");

        let mode = fs::metadata(&dir).expect("dir exists").permissions().mode();
        assert_eq!(mode & 0o7777, 0o1770);
    }

    #[tokio::test]
    async fn the_watcher_wakes_within_a_second_after_a_trigger_is_renamed_in() {
        let (root, dir) = trigger_dir();
        // An hour's rescan: only the inotify event can wake it within the test.
        let (_watcher, mut wake) =
            TriggerWatcher::start(&dir, Duration::from_secs(3600)).expect("start watcher");
        let initial = tokio::time::timeout(Duration::from_secs(1), wake.recv()).await;
        assert_eq!(initial, Ok(Some(())), "first wake-up comes at once");
        // Written outside the watched dir, so only the rename itself is seen.
        let outside = root.path().join("staged");
        fs::write(&outside, br#"{"export":"a"}"#).expect("stage");

        fs::rename(&outside, dir.join("a.trigger")).expect("rename in");

        let woke = tokio::time::timeout(Duration::from_secs(1), wake.recv()).await;
        assert_eq!(woke, Ok(Some(())));
    }

    #[tokio::test]
    async fn the_receiver_ends_when_the_watcher_is_dropped() {
        let (_root, dir) = trigger_dir();
        let (watcher, mut wake) =
            TriggerWatcher::start(&dir, Duration::from_secs(3600)).expect("start watcher");
        let _ = tokio::time::timeout(Duration::from_secs(1), wake.recv()).await;

        drop(watcher);

        let ended = tokio::time::timeout(Duration::from_secs(5), wake.recv()).await;
        assert_eq!(ended, Ok(None));
    }
}
