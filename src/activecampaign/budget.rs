//! The request budget of one ActiveCampaign account, shared by every run in this process.
//!
//! ActiveCampaign allows 5 requests per second per account and 100 multi-contact bulk imports
//! per minute. We assume it counts in any sliding window, so bursts above the rate are not
//! allowed: permits are spaced evenly (GCRA with a burst of one) at 98% of the configured rate,
//! which leaves room for network jitter and still uses well over 95% of the budget. A permit is
//! taken for every attempt, retries included. A 429's `Retry-After` pauses the whole account,
//! including senders already waiting for a permit: they take fresh, spaced permits after it.
//!
//! Status polls (`import/info`) get only what bulk imports leave of the per-second limit: when
//! ActiveCampaign is slow to process imports, many await confirmation at once, and their polls
//! must not crowd out the imports that use the budget.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use governor::clock::DefaultClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

/// Share of the configured rate we aim for; the rest absorbs timing jitter between our clock
/// and ActiveCampaign's window.
const RATE_SAFETY: f64 = 0.98;

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

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

/// The limiters for one pair of limits; replaced whole when a reload changes the limits.
struct Limiters {
    requests_per_second: u32,
    bulk_per_minute: u32,
    requests: Arc<Limiter>,
    bulk: Arc<Limiter>,
    polls: Arc<Limiter>,
}

impl Limiters {
    fn new(requests_per_second: u32, bulk_per_minute: u32) -> Limiters {
        Limiters {
            requests_per_second,
            bulk_per_minute,
            requests: Arc::new(RateLimiter::direct(spaced_quota(
                Duration::from_secs(1),
                requests_per_second,
            ))),
            bulk: Arc::new(RateLimiter::direct(spaced_quota(
                Duration::from_secs(60),
                bulk_per_minute,
            ))),
            polls: Arc::new(RateLimiter::direct(poll_quota(
                requests_per_second,
                bulk_per_minute,
            ))),
        }
    }
}

/// Polls per second: most of what bulk imports at their full rate leave of the per-second
/// limit. With ActiveCampaign's 5/s and 100/min that is 0.9 × (5 − 1.67) = 3 polls/s.
fn poll_quota(requests_per_second: u32, bulk_per_minute: u32) -> Quota {
    let requests = f64::from(requests_per_second);
    let left = requests - f64::from(bulk_per_minute) / 60.0;
    let per_second = (left.max(requests * MIN_POLL_SHARE) * POLL_SHARE).max(0.01);
    Quota::with_period(
        Duration::from_secs(1)
            .div_f64(per_second)
            .max(Duration::from_micros(1)),
    )
    .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
    .allow_burst(NonZeroU32::MIN)
}

pub struct AccountBudget {
    limiters: Mutex<Limiters>,
    /// Set by a 429: nobody sends to this account before then.
    paused_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for AccountBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let limits = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("AccountBudget")
            .field("requests_per_second", &limits.requests_per_second)
            .field("bulk_per_minute", &limits.bulk_per_minute)
            .finish_non_exhaustive()
    }
}

fn spaced_quota(per: Duration, count: u32) -> Quota {
    let period = per.div_f64(f64::from(count.max(1)) * RATE_SAFETY);
    Quota::with_period(period.max(Duration::from_micros(1)))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::MIN)
}

impl AccountBudget {
    pub fn new(requests_per_second: u32, bulk_per_minute: u32) -> AccountBudget {
        AccountBudget {
            limiters: Mutex::new(Limiters::new(requests_per_second, bulk_per_minute)),
            paused_until: Mutex::new(None),
        }
    }

    fn pause(&self) -> Option<Instant> {
        let pause = *self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        pause.filter(|until| *until > Instant::now())
    }

    /// Waits until a request of `kind` may be sent. Cancel-safe: dropping the future gives up
    /// the wait without consuming anything further.
    pub async fn acquire(&self, kind: RequestKind) {
        loop {
            while let Some(until) = self.pause() {
                tokio::time::sleep_until(until).await;
            }
            let (requests, kind_limiter) = {
                let limits = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
                let kind_limiter = match kind {
                    RequestKind::Plain => None,
                    RequestKind::BulkImport => Some(Arc::clone(&limits.bulk)),
                    RequestKind::Poll => Some(Arc::clone(&limits.polls)),
                };
                (Arc::clone(&limits.requests), kind_limiter)
            };
            if let Some(limiter) = kind_limiter {
                limiter.until_ready().await;
            }
            requests.until_ready().await;
            // A pause that began while we waited: those permits are spent, and sending now
            // would hit the throttled account. Wait it out and take fresh permits.
            if self.pause().is_none() {
                return;
            }
        }
    }

    /// ActiveCampaign said "too many requests": pause every sender on this account.
    pub fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut guard = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none_or(|current| current < until) {
            *guard = Some(until);
        }
    }

    /// Applies new limits (a settings reload) to every sender on this account at once.
    fn set_limits(&self, requests_per_second: u32, bulk_per_minute: u32) {
        let mut limits = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        if limits.requests_per_second != requests_per_second
            || limits.bulk_per_minute != bulk_per_minute
        {
            *limits = Limiters::new(requests_per_second, bulk_per_minute);
        }
    }
}

/// One budget per account (host) for the whole process. Asking with other limits (after a
/// reload) changes the limits of the one budget rather than starting a second one.
pub fn budget_for(
    host: &str,
    requests_per_second: u32,
    bulk_per_minute: u32,
) -> Arc<AccountBudget> {
    static BUDGETS: OnceLock<Mutex<HashMap<String, Arc<AccountBudget>>>> = OnceLock::new();
    let map = BUDGETS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    let budget = map
        .entry(host.to_owned())
        .or_insert_with(|| Arc::new(AccountBudget::new(requests_per_second, bulk_per_minute)));
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
        let per_second = |rps, bulk| 1.0 / poll_quota(rps, bulk).replenish_interval().as_secs_f64();

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
        let a = budget_for("shared.example:1", 5, 100);
        let b = budget_for("shared.example:1", 5, 100);
        assert!(Arc::ptr_eq(&a, &b));
        let reloaded = budget_for("shared.example:1", 4, 100);
        assert!(
            Arc::ptr_eq(&a, &reloaded),
            "a reload must not split the budget"
        );
        assert_eq!(a.limiters.lock().expect("lock").requests_per_second, 4);
        let c = budget_for("other.example:1", 5, 100);
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
}
