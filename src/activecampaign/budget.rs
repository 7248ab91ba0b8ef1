//! The request budget of one ActiveCampaign account, shared by every run in this process.
//!
//! ActiveCampaign allows 5 requests per second per account and 100 multi-contact bulk imports
//! per minute. We assume it counts in any sliding window, so bursts above the rate are not
//! allowed: permits are spaced evenly (GCRA with a burst of one) at 98% of the configured rate,
//! which leaves room for network jitter and still uses well over 95% of the budget. A permit is
//! taken for every attempt, retries included. A 429's `Retry-After` pauses the whole account.

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
}

pub struct AccountBudget {
    requests: Limiter,
    bulk: Limiter,
    /// Set by a 429: nobody sends to this account before then.
    paused_until: Mutex<Option<Instant>>,
    requests_per_second: u32,
    bulk_per_minute: u32,
}

impl std::fmt::Debug for AccountBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountBudget")
            .field("requests_per_second", &self.requests_per_second)
            .field("bulk_per_minute", &self.bulk_per_minute)
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
            requests: RateLimiter::direct(spaced_quota(
                Duration::from_secs(1),
                requests_per_second,
            )),
            bulk: RateLimiter::direct(spaced_quota(Duration::from_secs(60), bulk_per_minute)),
            paused_until: Mutex::new(None),
            requests_per_second,
            bulk_per_minute,
        }
    }

    /// Waits until a request of `kind` may be sent. Cancel-safe: dropping the future gives up
    /// the wait without consuming anything further.
    pub async fn acquire(&self, kind: RequestKind) {
        loop {
            let pause = *self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
            match pause {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => break,
            }
        }
        if kind == RequestKind::BulkImport {
            self.bulk.until_ready().await;
        }
        self.requests.until_ready().await;
    }

    /// ActiveCampaign said "too many requests": pause every sender on this account.
    pub fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut guard = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none_or(|current| current < until) {
            *guard = Some(until);
        }
    }
}

/// One budget per account (host) for the whole process.
pub fn budget_for(
    host: &str,
    requests_per_second: u32,
    bulk_per_minute: u32,
) -> Arc<AccountBudget> {
    static BUDGETS: OnceLock<Mutex<HashMap<String, Arc<AccountBudget>>>> = OnceLock::new();
    let map = BUDGETS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    let existing = map.get(host).filter(|b| {
        // Settings reloaded with other limits: start a budget with the new ones.
        b.requests_per_second == requests_per_second && b.bulk_per_minute == bulk_per_minute
    });
    match existing {
        Some(b) => Arc::clone(b),
        None => {
            let budget = Arc::new(AccountBudget::new(requests_per_second, bulk_per_minute));
            map.insert(host.to_owned(), Arc::clone(&budget));
            budget
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn permits_never_exceed_the_rate_in_any_one_second_window() {
        let budget = AccountBudget::new(20, 6000);
        let start = std::time::Instant::now();
        let mut times = Vec::new();
        for _ in 0..30 {
            budget.acquire(RequestKind::Plain).await;
            times.push(start.elapsed());
        }
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .filter(|u| **u - *t < Duration::from_secs(1))
                .count();
            assert!(in_window <= 20, "{in_window} permits within one second");
        }
        // And the budget is used: 30 permits at ~19.6/s take about 1.5 s, not much more.
        assert!(
            start.elapsed() < Duration::from_millis(2200),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn the_same_host_shares_one_budget() {
        let a = budget_for("shared.example:1", 5, 100);
        let b = budget_for("shared.example:1", 5, 100);
        assert!(Arc::ptr_eq(&a, &b));
        let c = budget_for("other.example:1", 5, 100);
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[tokio::test]
    async fn a_pause_holds_back_every_sender() {
        let budget = AccountBudget::new(1000, 60000);
        budget.pause_for(Duration::from_millis(300));
        let start = std::time::Instant::now();
        budget.acquire(RequestKind::Plain).await;
        assert!(start.elapsed() >= Duration::from_millis(290));
    }
}
