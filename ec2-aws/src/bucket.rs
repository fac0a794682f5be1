//! A client-side token bucket, one per EC2 API, that every HTTP attempt (first tries and SDK retries alike) must
//! pass before it leaves the node.
//!
//! # Why
//!
//! EC2 throttles per account and region, and every node of a cluster draws from the same budget. A daemon that
//! loops on a failing call (or a fleet restarting at once) can exhaust it for everyone; EC2 then answers
//! `RequestLimitExceeded` to the whole account. The SDK's own retry quota only limits *retries*, not the rate
//! of first attempts. This bucket caps the sustained rate per API and absorbs short bursts.
//!
//! # The math
//!
//! A bucket holds at most `capacity` tokens and gains `refill_per_sec` tokens per second (continuously, as a
//! real number, so 0.5/s means one token every 2 s). Taking a token at time `t`:
//!
//! ```text
//!   tokens(t) = min(capacity, tokens(t0) + (t - t0) * refill_per_sec)      refill since the last update
//!   tokens(t) >= 1      -> take it, go now
//!   tokens(t) <  1      -> the token arrives after  wait = (1 - tokens(t)) / refill_per_sec
//!      wait <= max_wait -> reserve it: tokens(t) -= 1 (goes negative: a debt later callers queue behind),
//!                          sleep `wait` (+ jitter), go
//!      wait >  max_wait -> refuse (nothing taken): the caller reports "throttled" and the SDK backs off
//! ```
//!
//! Reserving instead of polling makes waiters first come, first served: the n-th caller in a burst waits n/rate,
//! not a thundering herd that wakes together and mostly loses again. Each sleep gets up to 10% random jitter
//! so that nodes which started together drift apart.
//!
//! When EC2 itself says `RequestLimitExceeded` (HTTP 503), [`TokenBucket::drain`] empties the bucket: the
//! account is over budget, so this node slows down to the refill rate at once instead of spending its burst.
//!
//! Default rates ([`BucketConfig::for_api`]) follow EC2's published throttling classes in spirit: describes are
//! cheap (burst 20, 5/s), mutations are not (burst 10, 2/s). One node needs far less than that; the limits
//! only bite when something loops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Size and speed of one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketConfig {
    /// Most tokens the bucket holds (the burst).
    pub capacity: f64,
    /// Tokens gained per second.
    pub refill_per_sec: f64,
    /// Longest a caller waits for its token before the attempt is refused as throttled.
    pub max_wait: Duration,
}

impl BucketConfig {
    /// For read-only calls (`Describe*`).
    pub const DESCRIBE: BucketConfig = BucketConfig {
        capacity: 20.0,
        refill_per_sec: 5.0,
        max_wait: Duration::from_secs(2),
    };
    /// For calls that change something.
    pub const MUTATE: BucketConfig = BucketConfig {
        capacity: 10.0,
        refill_per_sec: 2.0,
        max_wait: Duration::from_secs(2),
    };

    /// The default bucket of an EC2 action.
    pub fn for_api(action: &str) -> BucketConfig {
        if action.starts_with("Describe") {
            BucketConfig::DESCRIBE
        } else {
            BucketConfig::MUTATE
        }
    }
}

#[derive(Debug)]
struct State {
    tokens: f64,
    updated: Instant,
}

/// One token bucket; see the module docs.
#[derive(Debug)]
pub struct TokenBucket {
    config: BucketConfig,
    state: Mutex<State>,
}

/// A token could not be had within the caller's patience.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("client-side rate limit: next token in {wait:?}, more than the {max_wait:?} we wait")]
pub struct Exhausted {
    pub wait: Duration,
    pub max_wait: Duration,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(config: BucketConfig, now: Instant) -> TokenBucket {
        TokenBucket {
            config,
            state: Mutex::new(State {
                tokens: config.capacity,
                updated: now,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The critical sections below cannot panic; if one ever did, the numbers are still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refill(&self, st: &mut State, now: Instant) {
        let elapsed = now.saturating_duration_since(st.updated).as_secs_f64();
        st.tokens = (st.tokens + elapsed * self.config.refill_per_sec).min(self.config.capacity);
        if now > st.updated {
            st.updated = now;
        }
    }

    /// Reserves one token at `now`: `Ok(wait)` is how long the caller must wait before using it (zero when one
    /// was in the bucket); `Err` when that wait would exceed `max_wait` (then nothing was taken).
    pub fn reserve(&self, now: Instant) -> Result<Duration, Exhausted> {
        let mut st = self.lock();
        self.refill(&mut st, now);
        if st.tokens >= 1.0 {
            st.tokens -= 1.0;
            return Ok(Duration::ZERO);
        }
        let wait = if self.config.refill_per_sec > 0.0 {
            Duration::try_from_secs_f64((1.0 - st.tokens) / self.config.refill_per_sec)
                .unwrap_or(Duration::MAX)
        } else {
            Duration::MAX
        };
        if wait > self.config.max_wait {
            return Err(Exhausted {
                wait,
                max_wait: self.config.max_wait,
            });
        }
        st.tokens -= 1.0;
        Ok(wait)
    }

    /// Empties the bucket (server-side throttling seen): from now on calls go at the refill rate. Debts
    /// (negative balances) are kept.
    pub fn drain(&self, now: Instant) {
        let mut st = self.lock();
        self.refill(&mut st, now);
        st.tokens = st.tokens.min(0.0);
    }

    /// Tokens in the bucket at `now` (negative while callers wait on reserved tokens).
    pub fn tokens(&self, now: Instant) -> f64 {
        let mut st = self.lock();
        self.refill(&mut st, now);
        st.tokens
    }

    /// Takes a token, sleeping (with jitter) until it is due. The only `async` entry point.
    pub async fn acquire(&self) -> Result<(), Exhausted> {
        let wait = self.reserve(Instant::now())?;
        if !wait.is_zero() {
            tokio::time::sleep(wait + jitter(wait)).await;
        }
        Ok(())
    }
}

/// Up to 10% of `wait`, at random.
fn jitter(wait: Duration) -> Duration {
    wait.mul_f64(rand::random::<f64>() * 0.1)
}

/// One bucket per EC2 action, created on first use.
#[derive(Debug, Default)]
pub struct Buckets {
    by_api: Mutex<HashMap<String, Arc<TokenBucket>>>,
    /// Replaces [`BucketConfig::for_api`] for every action (tests, tuning).
    uniform: Option<BucketConfig>,
}

impl Buckets {
    /// Buckets with the defaults of [`BucketConfig::for_api`].
    pub fn new() -> Buckets {
        Buckets::default()
    }

    /// Buckets that all use `config`.
    pub fn uniform(config: BucketConfig) -> Buckets {
        Buckets {
            by_api: Mutex::default(),
            uniform: Some(config),
        }
    }

    /// The bucket of `action` (e.g. `DescribeNetworkInterfaces`).
    pub fn get(&self, action: &str) -> Arc<TokenBucket> {
        let mut map = self.by_api.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.get(action) {
            return Arc::clone(b);
        }
        let config = self
            .uniform
            .unwrap_or_else(|| BucketConfig::for_api(action));
        let b = Arc::new(TokenBucket::new(config, Instant::now()));
        map.insert(action.to_string(), Arc::clone(&b));
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: BucketConfig = BucketConfig {
        capacity: 3.0,
        refill_per_sec: 2.0,
        max_wait: Duration::from_secs(1),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_full_bucket_serves_its_burst_without_waiting() {
        let t0 = Instant::now();
        let b = TokenBucket::new(CFG, t0);
        for _ in 0..3 {
            assert_eq!(b.reserve(t0), Ok(Duration::ZERO));
        }
        assert!(b.tokens(t0).abs() < 1e-9);
    }

    #[test]
    fn an_empty_bucket_queues_callers_one_refill_interval_apart() {
        let t0 = Instant::now();
        let b = TokenBucket::new(CFG, t0);
        for _ in 0..3 {
            b.reserve(t0).expect("burst");
        }
        // 2 tokens/s: the 4th caller waits 0.5 s, the 5th 1 s (each reserves behind the previous one).
        assert_eq!(b.reserve(t0), Ok(ms(500)));
        assert_eq!(b.reserve(t0), Ok(ms(1000)));
        // The 6th would wait 1.5 s > max_wait 1 s: refused, and nothing is taken.
        let before = b.tokens(t0);
        assert_eq!(
            b.reserve(t0),
            Err(Exhausted {
                wait: ms(1500),
                max_wait: ms(1000)
            })
        );
        assert!((b.tokens(t0) - before).abs() < 1e-9);
    }

    #[test]
    fn refill_is_continuous_and_capped_at_capacity() {
        let t0 = Instant::now();
        let b = TokenBucket::new(CFG, t0);
        for _ in 0..3 {
            b.reserve(t0).expect("burst");
        }
        assert!((b.tokens(t0 + ms(250)) - 0.5).abs() < 1e-9);
        assert_eq!(b.reserve(t0 + ms(250)), Ok(ms(250)));
        // An hour later the bucket is full again, not overfull.
        assert!((b.tokens(t0 + Duration::from_secs(3600)) - 3.0).abs() < 1e-9);
    }

    #[test]
    fn drain_forces_the_refill_rate_but_keeps_debts() {
        let t0 = Instant::now();
        let b = TokenBucket::new(CFG, t0);
        b.drain(t0);
        assert_eq!(b.reserve(t0), Ok(ms(500)));
        // The reserved debt survives a second drain: the next caller still queues behind it.
        b.drain(t0);
        assert_eq!(b.reserve(t0), Ok(ms(1000)));
    }

    #[test]
    fn time_going_backwards_never_adds_tokens() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let b = TokenBucket::new(CFG, t0);
        for _ in 0..3 {
            b.reserve(t0).expect("burst");
        }
        let earlier = t0 - Duration::from_secs(5);
        assert!(b.tokens(earlier).abs() < 1e-9);
    }

    #[test]
    fn a_bucket_without_refill_refuses_once_empty() {
        let t0 = Instant::now();
        let b = TokenBucket::new(
            BucketConfig {
                capacity: 1.0,
                refill_per_sec: 0.0,
                max_wait: Duration::from_secs(60),
            },
            t0,
        );
        assert_eq!(b.reserve(t0), Ok(Duration::ZERO));
        assert!(b.reserve(t0 + Duration::from_secs(3600)).is_err());
    }

    #[test]
    fn describes_and_mutations_get_different_defaults() {
        assert_eq!(
            BucketConfig::for_api("DescribeNetworkInterfaces"),
            BucketConfig::DESCRIBE
        );
        assert_eq!(
            BucketConfig::for_api("AssignPrivateIpAddresses"),
            BucketConfig::MUTATE
        );
        let set = Buckets::new();
        let a = set.get("CreateNetworkInterface");
        let b = set.get("CreateNetworkInterface");
        assert!(Arc::ptr_eq(&a, &b), "one bucket per API");
        assert!(!Arc::ptr_eq(&a, &set.get("DeleteNetworkInterface")));
    }

    #[tokio::test]
    async fn acquire_sleeps_about_the_reserved_wait() {
        let b = TokenBucket::new(
            BucketConfig {
                capacity: 1.0,
                refill_per_sec: 10.0,
                max_wait: Duration::from_secs(1),
            },
            Instant::now(),
        );
        let start = Instant::now();
        b.acquire().await.expect("first");
        b.acquire().await.expect("second");
        let waited = start.elapsed();
        // One token every 100 ms, plus at most 10% jitter (and some scheduling slack on a busy machine).
        assert!(waited >= ms(99) && waited <= ms(400), "waited {waited:?}");
    }
}
