//! The release hysteresis' memory: the highest need of the pool over a sliding window.

use std::collections::VecDeque;
use std::time::Duration;

/// A sliding-window maximum of the pool's need: the highest value sampled in the last `window` (the release
/// hysteresis of the module docs). The engine samples at every pool step (at least every 5 s, and after every
/// ADD and DEL), and the newest sample never expires, so the mark follows the need with at most one sampling
/// interval of lag. Samples are kept as a deque of strictly decreasing values: a record is amortised O(1) and
/// the deque never holds more entries than there were drops within the window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HighWater {
    window: Duration,
    /// `(time, value)`, values strictly decreasing from front to back.
    samples: VecDeque<(Duration, u32)>,
}

impl HighWater {
    /// A high-water mark over `window`; a zero window remembers nothing (the peak is always 0).
    pub fn new(window: Duration) -> HighWater {
        HighWater {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Changes the window (a live reload of `AWS_CNI_POOL_RELEASE_DELAY`): samples older than the new window
    /// expire at the next read; a zero window forgets them all.
    pub fn set_window(&mut self, window: Duration) {
        self.window = window;
        if window.is_zero() {
            self.samples.clear();
        }
    }

    /// The window in force.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Records `value` sampled at `now` (monotonic; a time before the last sample counts as the last one's).
    pub fn record(&mut self, now: Duration, value: u32) {
        if self.window.is_zero() {
            return;
        }
        let now = self.samples.back().map_or(now, |(t, _)| now.max(*t));
        while self.samples.back().is_some_and(|(_, v)| *v <= value) {
            self.samples.pop_back();
        }
        self.samples.push_back((now, value));
        self.expire(now);
    }

    /// The highest value sampled within `window` before `now`, or the newest sample if all are older (0 when
    /// none was ever recorded or the window is zero).
    pub fn peak(&mut self, now: Duration) -> u32 {
        self.expire(now);
        self.samples.front().map_or(0, |(_, v)| *v)
    }

    fn expire(&mut self, now: Duration) {
        while self.samples.len() > 1
            && self
                .samples
                .front()
                .is_some_and(|(t, _)| now.saturating_sub(*t) >= self.window)
        {
            self.samples.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn high_water_is_a_sliding_window_maximum() {
        let s = Duration::from_secs;
        let mut hw = HighWater::new(s(300));
        assert_eq!(hw.peak(s(0)), 0, "nothing recorded");
        hw.record(s(0), 10);
        hw.record(s(10), 40);
        hw.record(s(20), 25);
        hw.record(s(30), 5);
        assert_eq!(hw.peak(s(30)), 40);
        // 40 was sampled at 10 s: it holds until 310 s, then 25 (sampled at 20 s) until 320 s, then 5.
        assert_eq!(hw.peak(s(309)), 40);
        assert_eq!(hw.peak(s(310)), 25);
        assert_eq!(hw.peak(s(320)), 5);
        // The newest sample never expires: it is the current value until something newer is recorded.
        assert_eq!(hw.peak(s(10_000)), 5);
        // A higher sample replaces every lower one before it at once.
        hw.record(s(10_000), 7);
        hw.record(s(10_001), 3);
        assert_eq!(hw.peak(s(10_001)), 7);
        // A time going backwards counts as the last sample's time (no panic, no reordering).
        hw.record(s(9_000), 6);
        assert_eq!(hw.peak(s(10_299)), 7);
        assert_eq!(hw.peak(s(10_301)), 6);
    }

    #[test]
    fn high_water_matches_a_brute_force_window_maximum() {
        // Deterministic pseudo-random samples; the deque must agree with a scan of every sample in the window.
        let window = Duration::from_secs(60);
        let mut hw = HighWater::new(window);
        let mut all: Vec<(Duration, u32)> = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut t = Duration::ZERO;
        for _ in 0..2_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t += Duration::from_secs(x % 20);
            let v = u32::try_from(x % 100).expect("small");
            hw.record(t, v);
            all.push((t, v));
            let in_window = all
                .iter()
                .filter(|(at, _)| t.saturating_sub(*at) < window)
                .map(|(_, v)| *v)
                .max()
                .unwrap_or(v);
            assert_eq!(hw.peak(t), in_window, "at {t:?}");
        }
    }

    #[test]
    fn a_zero_window_remembers_nothing() {
        let mut hw = HighWater::new(Duration::ZERO);
        hw.record(Duration::ZERO, 50);
        assert_eq!(hw.peak(Duration::ZERO), 0);
    }
}
