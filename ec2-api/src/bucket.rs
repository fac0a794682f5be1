//! The token bucket: EC2's own request-rate model, and the one every client-side limit of ours uses.
//!
//! A bucket holds at most `capacity` tokens and gains `refill_per_sec` tokens per second, continuously (0.5/s is
//! one token every 2 s); a request takes one. A full bucket lets a burst through, after which requests are spaced
//! at the refill rate. Time is a [`Duration`] on a [`crate::clock::Clock`], so the same bucket paces virtual time
//! in tests and benchmarks.
//!
//! ```text
//!   tokens(t) = min(capacity, tokens(t0) + (t - t0) · refill_per_sec)
//!   try_take:  tokens >= 1 ─▶ take it             else ─▶ Err(time until one is there); nothing taken
//!   reserve:   tokens >= 1 ─▶ take it, wait 0     else ─▶ wait = (1 - tokens) / refill_per_sec
//!                                                        wait <= max_wait ─▶ take it anyway (tokens < 0: a debt
//!                                                                            later callers queue behind), Ok(wait)
//!                                                        wait >  max_wait ─▶ Err(wait); nothing taken
//!   drain:     tokens = min(tokens, 0)   (the account is over budget: no burst from here; debts are kept)
//! ```
//!
//! `try_take` is EC2's rule (a refused request takes no token) and the pacer's (poll, sleep, try again);
//! `reserve` makes waiters first come, first served: the n-th caller of a burst waits n/rate, instead of a herd
//! that wakes together and mostly loses again.

use std::time::Duration;

/// A token bucket on a clock (see the module docs).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    refill_per_sec: f64,
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    /// A full bucket (of at least one token).
    pub fn new(capacity: u32, refill_per_sec: f64, now: Duration) -> TokenBucket {
        let capacity = f64::from(capacity.max(1));
        TokenBucket {
            capacity,
            refill_per_sec: refill_per_sec.max(0.0),
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Duration) {
        let dt = now.saturating_sub(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.refill_per_sec).min(self.capacity);
        self.last = self.last.max(now);
    }

    /// How long until the balance reaches one token (`Duration::MAX`: never).
    fn until_one(&self) -> Duration {
        if self.refill_per_sec <= 0.0 {
            return Duration::MAX;
        }
        Duration::try_from_secs_f64((1.0 - self.tokens) / self.refill_per_sec)
            .unwrap_or(Duration::MAX)
    }

    /// Takes a token, or says how long until one is there (at least 1 ms, at most an hour); nothing is taken
    /// then.
    pub fn try_take(&mut self, now: Duration) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        Err(self
            .until_one()
            .clamp(Duration::from_millis(1), Duration::from_secs(3600)))
    }

    /// Reserves a token: `Ok(wait)` is how long the caller must wait before using it (zero when one was there);
    /// `Err(wait)` when that wait would exceed `max_wait` (nothing taken then).
    pub fn reserve(&mut self, now: Duration, max_wait: Duration) -> Result<Duration, Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(Duration::ZERO);
        }
        let wait = self.until_one();
        if wait > max_wait {
            return Err(wait);
        }
        self.tokens -= 1.0;
        Ok(wait)
    }

    /// Empties the bucket; debts (a negative balance) are kept.
    pub fn drain(&mut self, now: Duration) {
        self.refill(now);
        self.tokens = self.tokens.min(0.0);
    }

    /// Tokens now (negative while callers wait on reserved tokens).
    pub fn tokens(&mut self, now: Duration) -> f64 {
        self.refill(now);
        self.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn bucket_bursts_then_paces() {
        let mut b = TokenBucket::new(3, 2.0, Duration::ZERO);
        for _ in 0..3 {
            assert!(b.try_take(Duration::ZERO).is_ok());
        }
        let wait = b.try_take(Duration::ZERO).expect_err("empty");
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        assert!(b.try_take(Duration::from_millis(500)).is_ok());
        // Refill never exceeds the capacity.
        assert!(b.tokens(Duration::from_secs(3600)) <= 3.0);
    }

    #[test]
    fn an_empty_bucket_queues_reservations_one_refill_interval_apart() {
        let t0 = Duration::from_secs(1);
        let mut b = TokenBucket::new(3, 2.0, t0);
        for _ in 0..3 {
            assert_eq!(b.reserve(t0, ms(1000)), Ok(Duration::ZERO));
        }
        assert!(b.tokens(t0).abs() < 1e-9);
        // 2 tokens/s: the 4th caller waits 0.5 s, the 5th 1 s (each reserves behind the previous one).
        assert_eq!(b.reserve(t0, ms(1000)), Ok(ms(500)));
        assert_eq!(b.reserve(t0, ms(1000)), Ok(ms(1000)));
        // The 6th would wait 1.5 s > 1 s: refused, and nothing is taken.
        let before = b.tokens(t0);
        assert_eq!(b.reserve(t0, ms(1000)), Err(ms(1500)));
        assert!((b.tokens(t0) - before).abs() < 1e-9);
    }

    #[test]
    fn refill_is_continuous_and_capped_at_capacity() {
        let t0 = Duration::from_secs(1);
        let mut b = TokenBucket::new(3, 2.0, t0);
        for _ in 0..3 {
            b.reserve(t0, ms(1000)).expect("burst");
        }
        assert!((b.tokens(t0 + ms(250)) - 0.5).abs() < 1e-9);
        assert_eq!(b.reserve(t0 + ms(250), ms(1000)), Ok(ms(250)));
        assert!((b.tokens(t0 + Duration::from_secs(3600)) - 3.0).abs() < 1e-9);
    }

    #[test]
    fn drain_forces_the_refill_rate_but_keeps_debts() {
        let t0 = Duration::from_secs(1);
        let mut b = TokenBucket::new(3, 2.0, t0);
        b.drain(t0);
        assert_eq!(b.reserve(t0, ms(1000)), Ok(ms(500)));
        // The reserved debt survives a second drain: the next caller still queues behind it.
        b.drain(t0);
        assert_eq!(b.reserve(t0, ms(1000)), Ok(ms(1000)));
    }

    #[test]
    fn time_going_backwards_never_adds_tokens() {
        let t0 = Duration::from_secs(10);
        let mut b = TokenBucket::new(3, 2.0, t0);
        for _ in 0..3 {
            b.try_take(t0).expect("burst");
        }
        assert!(b.tokens(t0 - Duration::from_secs(5)).abs() < 1e-9);
    }

    #[test]
    fn a_bucket_without_refill_refuses_once_empty() {
        let mut b = TokenBucket::new(1, 0.0, Duration::ZERO);
        assert_eq!(b.reserve(Duration::ZERO, ms(60_000)), Ok(Duration::ZERO));
        assert!(b.reserve(Duration::from_secs(3600), ms(60_000)).is_err());
        assert_eq!(
            b.try_take(Duration::from_secs(7200)),
            Err(Duration::from_secs(3600))
        );
    }
}
