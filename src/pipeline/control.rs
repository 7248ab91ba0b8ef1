//! How a run is told to stop. One vocabulary, three requests:
//! - **shutdown**: the process is stopping (SIGTERM, Ctrl-C). The run stops at its next chunk
//!   or batch boundary, confirms and records the imports in hand, and is recorded
//!   `interrupted`; it resumes at the next start.
//! - **cancel**: a user asked this run to stop (`acexport cancel`). Same boundary; recorded
//!   `cancelled`.
//! - **abort**: stop now. HTTP calls in flight are abandoned (their batches are sent again
//!   on resume). Follows a shutdown that takes too long, or a second Ctrl-C.
//!
//! A process holds one control; each run gets its own with [`RunControl::for_run`], sharing
//! the process's shutdown and abort and adding a cancel of its own, so cancelling one run
//! leaves the others alone. The process running a run cancels it through its control; another
//! process records the cancel in the database, where the run looks for it.

use tokio_util::sync::CancellationToken;

/// Why a run stopped before its work was done.
#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    /// The user's cancel: recorded `cancelled`.
    Cancelled,
    /// Shutdown (or abort): recorded `interrupted`, resumed at next start.
    Shutdown,
    /// ActiveCampaign keeps failing whole imports: recorded `failed`.
    Failing(String),
}

#[derive(Debug, Clone, Default)]
pub struct RunControl {
    shutdown: CancellationToken,
    cancel: CancellationToken,
    abort: CancellationToken,
}

impl RunControl {
    pub fn new() -> RunControl {
        RunControl::default()
    }

    /// A control for one run: the process's shutdown and abort reach it, and its own cancel
    /// reaches nobody else.
    pub fn for_run(&self) -> RunControl {
        RunControl {
            shutdown: self.shutdown.child_token(),
            cancel: self.cancel.child_token(),
            abort: self.abort.child_token(),
        }
    }

    /// Asks every run under this control to stop at its next boundary, to resume later.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Asks the run to stop at its next boundary, for good.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Abandons what is in flight now.
    pub fn abort(&self) {
        self.abort.cancel();
    }

    /// Whether the run was cancelled (for good), as opposed to stopped by a shutdown.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Why the run should stop at the next boundary, if it should. A shutdown wins over a
    /// cancel: the run is resumed, not dropped, when both arrive.
    pub fn stop_reason(&self) -> Option<StopReason> {
        if self.shutdown.is_cancelled() || self.abort.is_cancelled() {
            Some(StopReason::Shutdown)
        } else if self.cancel.is_cancelled() {
            Some(StopReason::Cancelled)
        } else {
            None
        }
    }

    /// Completes when the run is asked to stop in any way.
    pub async fn stopping(&self) {
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            () = self.cancel.cancelled() => {}
            () = self.abort.cancelled() => {}
        }
    }

    /// The token HTTP clients watch: cancelled on abort only.
    pub fn abort_token(&self) -> CancellationToken {
        self.abort.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_control_asks_nothing() {
        assert_eq!(RunControl::new().stop_reason(), None);
    }

    #[test]
    fn a_cancel_reaches_only_the_run_it_was_given_to() {
        let process = RunControl::new();
        let (one, two) = (process.for_run(), process.for_run());
        one.cancel();
        assert_eq!(one.stop_reason(), Some(StopReason::Cancelled));
        assert_eq!(two.stop_reason(), None);
        assert_eq!(process.stop_reason(), None);
    }

    #[test]
    fn a_shutdown_reaches_every_run_and_wins_over_a_cancel() {
        let process = RunControl::new();
        let run = process.for_run();
        run.cancel();
        process.shutdown();
        assert_eq!(run.stop_reason(), Some(StopReason::Shutdown));
        assert!(run.is_shutting_down());
    }

    #[test]
    fn an_abort_reaches_the_runs_http_token() {
        let process = RunControl::new();
        let run = process.for_run();
        let token = run.abort_token();
        process.abort();
        assert!(token.is_cancelled());
        assert_eq!(run.stop_reason(), Some(StopReason::Shutdown));
    }

    #[tokio::test]
    async fn stopping_completes_on_a_cancel() {
        let run = RunControl::new().for_run();
        run.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(1), run.stopping())
            .await
            .expect("stopping completes");
    }
}
