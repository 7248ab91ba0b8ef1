//! Sliding-window request limits, as ActiveCampaign enforces them: a general requests-per-second
//! budget (answered with 429) and a per-minute budget for multi-contact bulk imports (answered
//! with a 400). A sliding log of hit times is exact where a token bucket would let bursts through
//! at window edges, and at these sizes (at most a few hundred entries) it costs nothing.
//! [`PeakWindow`] counts the other way round: every attempt, admitted or not, and the most that
//! ever fell within one window, so a test can read what all its clients together sent.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Window of the general limit: "5 requests per second per account" (ActiveCampaign rate-limit
/// docs).
pub(crate) const GENERAL_WINDOW: Duration = Duration::from_secs(1);

/// Window of the bulk import limit: "100 req/min for multi-contact requests" (ActiveCampaign bulk
/// import docs).
pub(crate) const BULK_WINDOW: Duration = Duration::from_secs(60);

/// At most `limit` hits in any window of length `window`.
#[derive(Debug)]
pub(crate) struct SlidingWindow {
    limit: u32,
    window: Duration,
    /// Times of the hits still inside the window, oldest first.
    hits: VecDeque<Instant>,
}

/// The window is full; the hit was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowFull;

impl SlidingWindow {
    pub(crate) fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            hits: VecDeque::new(),
        }
    }

    pub(crate) fn limit(&self) -> u32 {
        self.limit
    }

    /// Records a hit at `now` unless `limit` hits already fall within the window ending at `now`;
    /// returns how many hits remain in the window after this one. `now` must not go backwards
    /// (callers take it while holding the window's lock).
    pub(crate) fn try_hit(&mut self, now: Instant) -> Result<u32, WindowFull> {
        while let Some(&oldest) = self.hits.front() {
            if now.duration_since(oldest) >= self.window {
                self.hits.pop_front();
            } else {
                break;
            }
        }
        let used = u32::try_from(self.hits.len()).unwrap_or(u32::MAX);
        if used >= self.limit {
            return Err(WindowFull);
        }
        self.hits.push_back(now);
        Ok(self.limit - used - 1)
    }
}

/// The most hits that ever fell within one window of length `window`; every hit counts.
#[derive(Debug)]
pub(crate) struct PeakWindow {
    window: Duration,
    /// Times of the hits still inside the window ending at the latest hit, oldest first.
    hits: VecDeque<Instant>,
    peak: u64,
}

impl PeakWindow {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            hits: VecDeque::new(),
            peak: 0,
        }
    }

    /// Counts a hit at `now`; `now` must not go backwards (callers take it under their lock).
    pub(crate) fn hit(&mut self, now: Instant) {
        while let Some(&oldest) = self.hits.front() {
            if now.duration_since(oldest) >= self.window {
                self.hits.pop_front();
            } else {
                break;
            }
        }
        self.hits.push_back(now);
        self.peak = self.peak.max(self.hits.len() as u64);
    }

    pub(crate) fn peak(&self) -> u64 {
        self.peak
    }
}

/// The largest number of `times` (sorted ascending) that fall within one window of length
/// `window`, i.e. with less than `window` between the first and the last.
pub(crate) fn max_in_window(times: &[Instant], window: Duration) -> usize {
    let mut best = 0;
    let mut start = 0;
    for (end, &at) in times.iter().enumerate() {
        while at.duration_since(times[start]) >= window {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_rejects_the_hit_past_its_limit() {
        let mut window = SlidingWindow::new(2, GENERAL_WINDOW);
        let t0 = Instant::now();

        assert_eq!(window.try_hit(t0), Ok(1));
        assert_eq!(window.try_hit(t0 + Duration::from_millis(10)), Ok(0));
        assert_eq!(
            window.try_hit(t0 + Duration::from_millis(20)),
            Err(WindowFull)
        );
    }

    #[test]
    fn a_window_admits_again_once_the_oldest_hit_slides_out() {
        let mut window = SlidingWindow::new(2, GENERAL_WINDOW);
        let t0 = Instant::now();
        window.try_hit(t0).ok();
        window.try_hit(t0 + Duration::from_millis(500)).ok();

        assert_eq!(
            window.try_hit(t0 + Duration::from_millis(999)),
            Err(WindowFull)
        );
        assert_eq!(window.try_hit(t0 + Duration::from_millis(1000)), Ok(0));
    }

    #[test]
    fn a_peak_window_keeps_the_densest_stretch_seen_also_after_it_slid_out() {
        let t0 = Instant::now();
        let mut peak = PeakWindow::new(GENERAL_WINDOW);
        for ms in [0, 100, 200, 999, 1100, 3000] {
            peak.hit(t0 + Duration::from_millis(ms));
        }

        // 0..=999 holds four; by 1100 the hits at 0 and 100 (1000 ms back) have slid out.
        assert_eq!(peak.peak(), 4);
    }

    #[test]
    fn max_in_window_counts_the_densest_stretch() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let times = [
            ms(0),
            ms(500),
            ms(1200),
            ms(1300),
            ms(1400),
            ms(1500),
            ms(3000),
        ];

        // 500..=1400 and 1200..=1500 hold four each; 500 and 1500 are a full second apart.
        assert_eq!(max_in_window(&times, Duration::from_secs(1)), 4);
    }

    #[test]
    fn max_in_window_of_nothing_is_zero() {
        assert_eq!(max_in_window(&[], Duration::from_secs(1)), 0);
    }
}
