//! The request budget of one ActiveCampaign account, shared by every process on the host that
//! uses the same state folder: the daemon, `export run` in a terminal, and the requests of other
//! commands (`connection test`, `export add`).
//!
//! ActiveCampaign allows 5 requests per second per account and 100 multi-contact bulk imports
//! per minute. We assume it counts in any sliding window, so bursts above the rate are not
//! allowed: permits are spaced evenly (GCRA with a burst of one) at 98% of the configured rate,
//! which leaves room for network jitter and still uses well over 95% of the budget. A permit is
//! taken for every attempt, retries included. A 429's `Retry-After` pauses the whole account,
//! in every process, including senders already waiting for a permit: they take fresh, spaced
//! permits after it.
//!
//! Status polls (`import/info`) get only what bulk imports leave of the per-second limit: when
//! ActiveCampaign is slow to process imports, many await confirmation at once, and their polls
//! must not crowd out the imports that use the budget.
//!
//! The GCRA state is four times (when the next request, bulk import and poll may go, and the end
//! of a pause), kept in a small file per account ([`super::budget_file`]) that each permit reads
//! and rewrites under a file lock. That is why this is not `governor`: its state lives in one
//! process's memory, and two processes each with their own would together send twice the rate
//! (two runs at once made 36 × 429 and 7 requests in one second). Each process spaces permits by
//! its own settings; they meet in the shared times. Should the file be unusable (a read-only
//! folder) or stay locked (a holder stopped with Ctrl-Z mid-permit), this process keeps its own
//! spacing and says so in the log, rather than stop sending.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::budget_file::{self, BudgetFile, HORIZON};

/// Share of the configured rate we aim for; the rest absorbs timing jitter between our clock
/// and ActiveCampaign's window.
const RATE_SAFETY: f64 = 0.98;
/// How long to wait before asking again for the file lock another process holds: it holds it
/// for microseconds, so a short wait.
const LOCK_RETRY: Duration = Duration::from_millis(1);
/// How long the file may stay locked before this process stops waiting for it and spaces its
/// own permits: far longer than a permit takes, so only a holder that is stuck.
const LOCK_PATIENCE: Duration = Duration::from_secs(2);

/// Which limits a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Any API call: counts against the per-second limit.
    Plain,
    /// A multi-contact bulk import: counts against both limits.
    BulkImport,
    /// A bulk import status poll: a plain call, further held to what imports leave.
    Poll,
}

/// Share of what bulk imports leave of the per-second limit that polls may use.
const POLL_SHARE: f64 = 0.9;
/// When bulk imports could take (nearly) the whole per-second limit, the per-second limit is
/// what paces them, and polls are counted as if imports left them this share of it.
const MIN_POLL_SHARE: f64 = 0.5;

/// When each kind of request may next be sent, in nanoseconds of the monotonic clock
/// ([`budget_file::now`]): GCRA with a burst of one, so a request may go once `now` reaches its
/// time, which then moves one spacing past `now`. Zero is "any time".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Slots {
    /// Every request.
    pub(super) requests: u64,
    /// Bulk imports, on top of `requests`.
    pub(super) bulk: u64,
    /// Status polls, on top of `requests`.
    pub(super) polls: u64,
    /// Set by a 429: nobody sends before then.
    pub(super) paused_until: u64,
}

impl Slots {
    /// When a request of `kind` may go.
    fn ready_at(&self, kind: RequestKind) -> u64 {
        let own = match kind {
            RequestKind::Plain => 0,
            RequestKind::BulkImport => self.bulk,
            RequestKind::Poll => self.polls,
        };
        self.paused_until.max(self.requests).max(own)
    }

    /// How long from `now` until a request of `kind` may go; `None` if it may go now.
    fn wait(&self, kind: RequestKind, now: u64) -> Option<Duration> {
        let ready = self.ready_at(kind);
        (now < ready).then(|| Duration::from_nanos(ready - now))
    }

    /// Takes a permit for `kind` at `now`, or says how long until one may be taken.
    fn take(&mut self, kind: RequestKind, now: u64, spacing: &Spacing) -> Result<(), Duration> {
        if let Some(wait) = self.wait(kind, now) {
            return Err(wait);
        }
        match kind {
            RequestKind::Plain => {}
            RequestKind::BulkImport => self.bulk = now.saturating_add(spacing.bulk),
            RequestKind::Poll => self.polls = now.saturating_add(spacing.polls),
        }
        self.requests = now.saturating_add(spacing.requests);
        Ok(())
    }

    /// The later of each time: what both views of the budget allow.
    fn latest(self, other: Slots) -> Slots {
        Slots {
            requests: self.requests.max(other.requests),
            bulk: self.bulk.max(other.bulk),
            polls: self.polls.max(other.polls),
            paused_until: self.paused_until.max(other.paused_until),
        }
    }
}

/// The spacing of permits for one pair of limits, in nanoseconds; replaced whole when a reload
/// changes the limits.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Spacing {
    requests_per_second: u32,
    bulk_per_minute: u32,
    requests: u64,
    bulk: u64,
    polls: u64,
}

impl Spacing {
    fn new(requests_per_second: u32, bulk_per_minute: u32) -> Spacing {
        Spacing {
            requests_per_second,
            bulk_per_minute,
            requests: spaced(Duration::from_secs(1), requests_per_second),
            bulk: spaced(Duration::from_secs(60), bulk_per_minute),
            polls: nanos(poll_spacing(requests_per_second, bulk_per_minute)),
        }
    }
}

/// The spacing of `count` permits per `per`, at [`RATE_SAFETY`].
fn spaced(per: Duration, count: u32) -> u64 {
    nanos(per.div_f64(f64::from(count.max(1)) * RATE_SAFETY))
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1_000)
}

/// The spacing of polls: most of what bulk imports at their full rate leave of the per-second
/// limit. With ActiveCampaign's 5/s and 100/min that is 0.9 × (5 − 1.67) = 3 polls/s.
fn poll_spacing(requests_per_second: u32, bulk_per_minute: u32) -> Duration {
    let requests = f64::from(requests_per_second);
    let left = requests - f64::from(bulk_per_minute) / 60.0;
    let per_second = (left.max(requests * MIN_POLL_SHARE) * POLL_SHARE).max(0.01);
    Duration::from_secs(1).div_f64(per_second)
}

pub struct AccountBudget {
    spacing: Mutex<Spacing>,
    /// This process's view of the slots: the whole budget when nothing is shared, else the
    /// latest seen in the file (so this process's own spacing holds even if the file is reset)
    /// and what it goes by while the file cannot be used.
    local: Mutex<Slots>,
    /// The file the slots are shared through; `None` keeps them in this process.
    shared: Option<BudgetFile>,
    /// Since when another process holds the file lock, while it does.
    busy_since: Mutex<Option<Instant>>,
    /// A pause (429) that could not be written to the file yet, because it was busy.
    unpublished_pause: AtomicBool,
    /// Whether the log already says this process spaces permits on its own.
    warned: AtomicBool,
}

impl std::fmt::Debug for AccountBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let spacing = *self.spacing.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("AccountBudget")
            .field("requests_per_second", &spacing.requests_per_second)
            .field("bulk_per_minute", &spacing.bulk_per_minute)
            .field("shared", &self.shared.as_ref().map(BudgetFile::path))
            .finish_non_exhaustive()
    }
}

impl AccountBudget {
    /// A budget of this process alone.
    pub fn new(requests_per_second: u32, bulk_per_minute: u32) -> AccountBudget {
        AccountBudget {
            spacing: Mutex::new(Spacing::new(requests_per_second, bulk_per_minute)),
            local: Mutex::new(Slots::default()),
            shared: None,
            busy_since: Mutex::new(None),
            unpublished_pause: AtomicBool::new(false),
            warned: AtomicBool::new(false),
        }
    }

    /// The budget of the account at `host`, shared through a file in `dir` with every process
    /// that uses the same folder.
    pub fn shared(
        dir: &Path,
        host: &str,
        requests_per_second: u32,
        bulk_per_minute: u32,
    ) -> AccountBudget {
        AccountBudget {
            shared: Some(BudgetFile::new(dir, host)),
            ..AccountBudget::new(requests_per_second, bulk_per_minute)
        }
    }

    /// Waits until a request of `kind` may be sent. Cancel-safe: dropping the future gives up
    /// the wait without consuming anything further.
    pub async fn acquire(&self, kind: RequestKind) {
        loop {
            let taken = match self.try_shared(kind) {
                Some(taken) => taken,
                None if self.stuck() => {
                    self.on_its_own("the budget file stays locked", None);
                    self.try_local(kind)
                }
                None => Err(LOCK_RETRY),
            };
            match taken {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// One try through the shared file, or the local slots when there is none or it fails;
    /// `None` when another process holds the file lock this instant.
    fn try_shared(&self, kind: RequestKind) -> Option<Result<(), Duration>> {
        let Some(file) = &self.shared else {
            return Some(self.try_local(kind));
        };
        let spacing = *self.spacing.lock().unwrap_or_else(|e| e.into_inner());
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        // The file's times are never earlier than the last seen here: while this process's
        // view says wait, so does the file, and the senders waiting in this process do not
        // all read it each time one of them is let through.
        let publish = self.unpublished_pause.load(Ordering::Relaxed);
        if !publish && let Some(wait) = local.wait(kind, budget_file::now()) {
            return Some(Err(wait));
        }
        let taken = file.update(|slots, now| {
            *slots = slots.latest(*local);
            let taken = slots.take(kind, now, &spacing);
            *local = *slots;
            taken
        });
        drop(local);
        let mut busy_since = self.busy_since.lock().unwrap_or_else(|e| e.into_inner());
        match taken {
            Ok(Some(taken)) => {
                *busy_since = None;
                if publish {
                    self.unpublished_pause.store(false, Ordering::Relaxed);
                }
                Some(taken)
            }
            Ok(None) => {
                busy_since.get_or_insert_with(Instant::now);
                None
            }
            Err(error) => {
                drop(busy_since);
                self.on_its_own("the budget file cannot be used", Some(&error));
                Some(self.try_local(kind))
            }
        }
    }

    /// Whether the file has been locked by another process for longer than [`LOCK_PATIENCE`].
    fn stuck(&self) -> bool {
        let busy_since = self.busy_since.lock().unwrap_or_else(|e| e.into_inner());
        busy_since.is_some_and(|since| since.elapsed() >= LOCK_PATIENCE)
    }

    fn try_local(&self, kind: RequestKind) -> Result<(), Duration> {
        let spacing = *self.spacing.lock().unwrap_or_else(|e| e.into_inner());
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        local.take(kind, budget_file::now(), &spacing)
    }

    /// Says once that this process spaces its permits alone, so other processes may add to
    /// them.
    fn on_its_own(&self, why: &str, error: Option<&std::io::Error>) {
        if self.warned.swap(true, Ordering::Relaxed) {
            return;
        }
        let file = self.shared.as_ref().map(|f| f.path().display().to_string());
        tracing::warn!(
            file = file.as_deref().unwrap_or_default(),
            reason = why,
            error = error.map(tracing::field::display),
            "Request budget not shared with other acexport processes; this one keeps its own \
             limits, and theirs come on top"
        );
    }

    /// ActiveCampaign said "too many requests": pause every sender on this account, in every
    /// process.
    pub fn pause_for(&self, wait: Duration) {
        let until = budget_file::now().saturating_add(nanos(wait.min(HORIZON)));
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        local.paused_until = local.paused_until.max(until);
        if let Some(file) = &self.shared {
            let published = file.update(|slots, _| {
                *slots = slots.latest(*local);
                *local = *slots;
            });
            if matches!(published, Ok(None)) {
                // The file is busy this instant: the next try here writes the pause.
                self.unpublished_pause.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Applies new limits (a settings reload) to every sender on this account at once.
    fn set_limits(&self, requests_per_second: u32, bulk_per_minute: u32) {
        let mut spacing = self.spacing.lock().unwrap_or_else(|e| e.into_inner());
        if spacing.requests_per_second != requests_per_second
            || spacing.bulk_per_minute != bulk_per_minute
        {
            *spacing = Spacing::new(requests_per_second, bulk_per_minute);
        }
    }
}

/// One budget per account (host) and budget folder for the whole process; with a folder
/// (`Some(dir)`, the state folder's `locks/`) it is shared with every process using that
/// folder. Asking with other limits (after a reload) changes the limits of the one budget
/// rather than starting a second one.
pub fn budget_for(
    dir: Option<&Path>,
    host: &str,
    requests_per_second: u32,
    bulk_per_minute: u32,
) -> Arc<AccountBudget> {
    type Key = (Option<PathBuf>, String);
    static BUDGETS: OnceLock<Mutex<HashMap<Key, Arc<AccountBudget>>>> = OnceLock::new();
    let map = BUDGETS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    let budget = map
        .entry((dir.map(Path::to_path_buf), host.to_owned()))
        .or_insert_with(|| {
            Arc::new(match dir {
                Some(dir) => AccountBudget::shared(dir, host, requests_per_second, bulk_per_minute),
                None => AccountBudget::new(requests_per_second, bulk_per_minute),
            })
        });
    budget.set_limits(requests_per_second, bulk_per_minute);
    Arc::clone(budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_in_one_second(times: &[std::time::Duration]) -> usize {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| {
                times[i..]
                    .iter()
                    .filter(|u| **u - *t < Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn permits_never_exceed_the_rate_in_any_one_second_window() {
        let budget = AccountBudget::new(20, 6000);
        let start = std::time::Instant::now();
        let mut times = Vec::new();
        for _ in 0..30 {
            budget.acquire(RequestKind::Plain).await;
            times.push(start.elapsed());
        }
        assert!(max_in_one_second(&times) <= 20);
        // And the budget is used: 30 permits at ~19.6/s take about 1.5 s, not much more.
        assert!(
            start.elapsed() < Duration::from_millis(2200),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn bulk_imports_are_spaced_by_the_per_minute_limit() {
        // 600 a minute is one every 100 ms (102 ms at 98%), whatever the per-second limit.
        let budget = AccountBudget::new(1000, 600);
        let start = std::time::Instant::now();
        let mut times = Vec::new();
        for _ in 0..11 {
            budget.acquire(RequestKind::BulkImport).await;
            times.push(start.elapsed());
        }
        assert!(max_in_one_second(&times) <= 10, "{times:?}");
        assert!(
            start.elapsed() < Duration::from_millis(1600),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn polls_get_what_bulk_imports_leave_of_the_per_second_limit() {
        let per_second = |rps, bulk| 1.0 / poll_spacing(rps, bulk).as_secs_f64();

        // ActiveCampaign's limits: 0.9 × (5 − 100/60) = 3 polls/s.
        assert!((per_second(5, 100) - 3.0).abs() < 1e-3);
        // Bulk imports could take the whole per-second limit: polls still get 0.9 × half.
        assert!((per_second(5, 300) - 2.25).abs() < 1e-3);
        assert!((per_second(10, 6000) - 4.5).abs() < 1e-3);
    }

    #[tokio::test]
    async fn polls_wait_for_their_share_while_plain_calls_do_not() {
        // 20/s and 10 bulk imports/s leave 0.9 × 10 = 9 polls/s.
        let budget = AccountBudget::new(20, 600);
        let start = std::time::Instant::now();
        for _ in 0..20 {
            budget.acquire(RequestKind::Plain).await;
        }
        let plain = start.elapsed();
        let start = std::time::Instant::now();
        for _ in 0..20 {
            budget.acquire(RequestKind::Poll).await;
        }
        let polls = start.elapsed();

        // 19 spaced permits: about 0.97 s at 19.6/s, 2.1 s at 9/s.
        assert!(plain < Duration::from_millis(1600), "{plain:?}");
        assert!(polls >= Duration::from_millis(2000), "{polls:?}");
    }

    #[tokio::test]
    async fn the_same_host_shares_one_budget_also_after_a_limit_change() {
        let a = budget_for(None, "shared.example:1", 5, 100);
        let b = budget_for(None, "shared.example:1", 5, 100);
        assert!(Arc::ptr_eq(&a, &b));
        let reloaded = budget_for(None, "shared.example:1", 4, 100);
        assert!(
            Arc::ptr_eq(&a, &reloaded),
            "a reload must not split the budget"
        );
        assert_eq!(a.spacing.lock().expect("lock").requests_per_second, 4);
        let c = budget_for(None, "other.example:1", 5, 100);
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[tokio::test]
    async fn a_pause_holds_back_every_sender_including_those_already_waiting() {
        let budget = Arc::new(AccountBudget::new(10, 60000));
        let start = std::time::Instant::now();
        // Eight senders queue for permits (spaced 100 ms apart); a 429 arrives meanwhile.
        let mut senders = Vec::new();
        for _ in 0..8 {
            let budget = Arc::clone(&budget);
            senders.push(tokio::spawn(async move {
                budget.acquire(RequestKind::Plain).await;
                start.elapsed()
            }));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        budget.pause_for(Duration::from_millis(500));
        let mut times = Vec::new();
        for s in senders {
            times.push(s.await.expect("sender"));
        }
        let during_pause = times
            .iter()
            .filter(|t| **t > Duration::from_millis(160) && **t < Duration::from_millis(640))
            .count();
        assert_eq!(during_pause, 0, "{times:?}");
        times.sort();
        assert!(
            max_in_one_second(&times) <= 10,
            "no burst after the pause: {times:?}"
        );
    }

    /// Two budgets on one folder, as two processes have them: they share only the file.
    fn two_processes(dir: &Path, rps: u32, bulk: u32) -> (AccountBudget, AccountBudget) {
        (
            AccountBudget::shared(dir, "acme.api-us1.com", rps, bulk),
            AccountBudget::shared(dir, "acme.api-us1.com", rps, bulk),
        )
    }

    #[tokio::test]
    async fn processes_sharing_a_folder_together_stay_within_the_rate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, second) = two_processes(dir.path(), 20, 6000);
        let start = std::time::Instant::now();

        async fn send(budget: &AccountBudget, start: std::time::Instant) -> Vec<Duration> {
            let mut times = Vec::new();
            for _ in 0..15 {
                budget.acquire(RequestKind::Plain).await;
                times.push(start.elapsed());
            }
            times
        }
        let (mut times, more) = tokio::join!(send(&first, start), send(&second, start));
        times.extend(more);
        times.sort();

        assert!(max_in_one_second(&times) <= 20, "{times:?}");
        // 30 permits at 19.6/s take about 1.5 s: shared, not 15 each at the full rate.
        assert!(start.elapsed() >= Duration::from_millis(1400), "{times:?}");
    }

    #[tokio::test]
    async fn a_process_started_after_another_ended_keeps_its_spacing() {
        // A restart right after a crash: the new process must not start with a fresh burst.
        let dir = tempfile::tempdir().expect("tempdir");
        let (before, after) = two_processes(dir.path(), 1000, 6);
        before.acquire(RequestKind::BulkImport).await;
        drop(before);
        let start = std::time::Instant::now();

        let waited = tokio::time::timeout(
            Duration::from_millis(500),
            after.acquire(RequestKind::BulkImport),
        )
        .await;

        // 6 a minute is one every 10.2 s.
        assert!(waited.is_err(), "sent after {:?}", start.elapsed());
        after.acquire(RequestKind::Plain).await;
    }

    #[tokio::test]
    async fn a_pause_in_one_process_holds_back_the_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (throttled, other) = two_processes(dir.path(), 100, 6000);
        let start = std::time::Instant::now();

        throttled.pause_for(Duration::from_millis(400));
        other.acquire(RequestKind::Plain).await;

        assert!(
            start.elapsed() >= Duration::from_millis(380),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn a_pause_taken_while_the_file_is_busy_still_reaches_the_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (throttled, other) = two_processes(dir.path(), 100, 6000);
        throttled.acquire(RequestKind::Plain).await;
        let file = throttled
            .shared
            .as_ref()
            .expect("shared")
            .path()
            .to_path_buf();
        let holder = std::fs::File::open(&file).expect("open");
        holder.lock().expect("lock");
        let start = std::time::Instant::now();

        throttled.pause_for(Duration::from_millis(400));
        drop(holder);
        // The throttled sender tries again (and waits out the pause); then another process.
        let retry = tokio::time::timeout(
            Duration::from_millis(50),
            throttled.acquire(RequestKind::Plain),
        )
        .await;
        other.acquire(RequestKind::Plain).await;

        assert!(retry.is_err(), "the retry waits for the pause");
        assert!(
            start.elapsed() >= Duration::from_millis(380),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn a_budget_file_that_cannot_be_used_leaves_the_process_its_own_spacing() {
        let dir = tempfile::tempdir().expect("tempdir");
        // `locks` is a file, so no budget file can be made in it.
        let locks = dir.path().join("locks");
        std::fs::write(&locks, "").expect("write");
        let budget = AccountBudget::shared(&locks, "acme.api-us1.com", 10, 6000);
        let start = std::time::Instant::now();

        for _ in 0..4 {
            budget.acquire(RequestKind::Plain).await;
        }

        // Three spacings of 102 ms.
        assert!(
            start.elapsed() >= Duration::from_millis(300),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn a_budget_file_locked_for_long_stops_holding_up_this_process() {
        // A process stopped (Ctrl-Z) in the microseconds it holds the lock.
        let dir = tempfile::tempdir().expect("tempdir");
        let budget = AccountBudget::shared(dir.path(), "acme.api-us1.com", 100, 6000);
        budget.acquire(RequestKind::Plain).await;
        let file = budget.shared.as_ref().expect("shared").path().to_path_buf();
        let holder = std::fs::File::open(&file).expect("open");
        holder.lock().expect("lock");
        let start = std::time::Instant::now();

        tokio::time::timeout(LOCK_PATIENCE * 3, budget.acquire(RequestKind::Plain))
            .await
            .expect("a permit despite the lock");

        let waited = start.elapsed();
        assert!(waited >= LOCK_PATIENCE, "{waited:?}");
        assert!(waited < LOCK_PATIENCE * 2, "{waited:?}");
    }
}
