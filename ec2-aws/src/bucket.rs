//! The connector guard: a client-side token bucket per EC2 action that every HTTP request to EC2 must pass
//! before it leaves the node.
//!
//! # Why
//!
//! EC2 throttles per account and region, and every node of a cluster draws from the same budget. A daemon that
//! loops on a failing call (or a fleet restarting at once) can exhaust it for everyone; EC2 then answers
//! `RequestLimitExceeded` to the whole account. This guard caps the sustained rate per action at the wire and
//! absorbs short bursts, whatever the caller above does: ipamd's pacer (which owns the retries; the SDK makes one
//! attempt per call by default, see [`crate::options`]), or the SDK's own retry loop when it is configured
//! for more attempts, whose retries then spend tokens like first tries.
//!
//! # The rule
//!
//! The bucket is `ec2_api`'s [`TokenBucket`] on a [`Clock`], used with *reservations*: a request that finds
//! the bucket empty reserves the next token and waits for it (plus up to 10% jitter, so nodes that started
//! together drift apart), first come first served, unless that wait exceeds [`BucketConfig::max_wait`]; then
//! nothing is taken and the request fails as throttled ([`Exhausted`]) without reaching EC2.
//!
//! When EC2 itself answers 503 (`RequestLimitExceeded`, `Unavailable`), the connector drains the bucket: the
//! account is over budget, so this node goes at the refill rate at once instead of spending its burst.
//!
//! Default rates ([`BucketConfig::for_api`]) follow EC2's published throttling classes in spirit: describes are
//! cheap (burst 20, 5/s), mutations are not (burst 10, 2/s). One node needs far less than that; the limits
//! only bite when something loops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ec2_api::bucket::TokenBucket;
use ec2_api::clock::{Clock, SystemClock};

/// Size and speed of one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketConfig {
    /// Most tokens the bucket holds (the burst).
    pub capacity: u32,
    /// Tokens gained per second.
    pub refill_per_sec: f64,
    /// Longest a caller waits for its token before the attempt is refused as throttled.
    pub max_wait: Duration,
}

impl BucketConfig {
    /// For read-only calls (`Describe*`).
    pub const DESCRIBE: BucketConfig = BucketConfig {
        capacity: 20,
        refill_per_sec: 5.0,
        max_wait: Duration::from_secs(2),
    };
    /// For calls that change something.
    pub const MUTATE: BucketConfig = BucketConfig {
        capacity: 10,
        refill_per_sec: 2.0,
        max_wait: Duration::from_secs(2),
    };

    /// The default bucket of an EC2 action.
    pub fn for_api(action: &str) -> BucketConfig {
        match ec2_api::Api::from_name(action) {
            Some(api) if !api.is_mutating() => BucketConfig::DESCRIBE,
            Some(_) => BucketConfig::MUTATE,
            None if action.starts_with("Describe") => BucketConfig::DESCRIBE,
            None => BucketConfig::MUTATE,
        }
    }
}

/// A token could not be had within the caller's patience.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("client-side rate limit: next token in {wait:?}, more than the {max_wait:?} we wait")]
pub struct Exhausted {
    pub wait: Duration,
    pub max_wait: Duration,
}

/// One action's bucket on the guard's clock; see the module docs.
pub struct ApiBucket {
    max_wait: Duration,
    bucket: Mutex<TokenBucket>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for ApiBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiBucket")
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl ApiBucket {
    /// A full bucket.
    pub fn new(config: BucketConfig, clock: Arc<dyn Clock>) -> ApiBucket {
        ApiBucket {
            max_wait: config.max_wait,
            bucket: Mutex::new(TokenBucket::new(
                config.capacity,
                config.refill_per_sec,
                clock.now(),
            )),
            clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, TokenBucket> {
        // The critical sections cannot panic; if one ever did, the numbers are still usable.
        self.bucket.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves one token now: `Ok(wait)` is how long to wait before using it.
    pub fn reserve(&self) -> Result<Duration, Exhausted> {
        let now = self.clock.now();
        self.lock()
            .reserve(now, self.max_wait)
            .map_err(|wait| Exhausted {
                wait,
                max_wait: self.max_wait,
            })
    }

    /// EC2 said the account is over budget: no burst from this node (reserved debts are kept).
    pub fn drain(&self) {
        let now = self.clock.now();
        self.lock().drain(now);
    }

    /// Tokens now (negative while callers wait on reserved tokens).
    pub fn tokens(&self) -> f64 {
        let now = self.clock.now();
        self.lock().tokens(now)
    }

    /// Takes a token, sleeping on the clock (with jitter) until it is due.
    pub async fn acquire(&self) -> Result<(), Exhausted> {
        let wait = self.reserve()?;
        if !wait.is_zero() {
            self.clock.sleep(wait + jitter(wait)).await;
        }
        Ok(())
    }
}

/// Up to 10% of `wait`, at random.
fn jitter(wait: Duration) -> Duration {
    wait.mul_f64(rand::random::<f64>() * 0.1)
}

/// One bucket per EC2 action, created on first use.
pub struct Buckets {
    by_api: Mutex<HashMap<String, Arc<ApiBucket>>>,
    /// Replaces [`BucketConfig::for_api`] for every action (tests, tuning).
    uniform: Option<BucketConfig>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Buckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buckets")
            .field("uniform", &self.uniform)
            .finish_non_exhaustive()
    }
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets::new()
    }
}

impl Buckets {
    /// Buckets with the defaults of [`BucketConfig::for_api`], on the system clock.
    pub fn new() -> Buckets {
        Buckets::on(None, Arc::new(SystemClock::default()))
    }

    /// Buckets that all use `config`.
    pub fn uniform(config: BucketConfig) -> Buckets {
        Buckets::on(Some(config), Arc::new(SystemClock::default()))
    }

    /// Buckets on `clock`: every action with `uniform`, or with its default when `None`.
    pub fn on(uniform: Option<BucketConfig>, clock: Arc<dyn Clock>) -> Buckets {
        Buckets {
            by_api: Mutex::default(),
            uniform,
            clock,
        }
    }

    /// The bucket of `action` (e.g. `DescribeNetworkInterfaces`).
    pub fn get(&self, action: &str) -> Arc<ApiBucket> {
        let mut map = self.by_api.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.get(action) {
            return Arc::clone(b);
        }
        let config = self
            .uniform
            .unwrap_or_else(|| BucketConfig::for_api(action));
        let b = Arc::new(ApiBucket::new(config, Arc::clone(&self.clock)));
        map.insert(action.to_string(), Arc::clone(&b));
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ec2_api::clock::{ManualClock, TokioClock};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn reservations_queue_and_refuse_past_max_wait_on_the_clock() {
        let clock = ManualClock::default();
        let b = ApiBucket::new(
            BucketConfig {
                capacity: 3,
                refill_per_sec: 2.0,
                max_wait: ms(1000),
            },
            Arc::new(clock.clone()),
        );
        for _ in 0..3 {
            assert_eq!(b.reserve(), Ok(Duration::ZERO));
        }
        assert_eq!(b.reserve(), Ok(ms(500)));
        assert_eq!(b.reserve(), Ok(ms(1000)));
        assert_eq!(
            b.reserve(),
            Err(Exhausted {
                wait: ms(1500),
                max_wait: ms(1000)
            })
        );
        // Two tokens were reserved on credit; one second at 2/s pays them off.
        clock.advance(ms(1000));
        assert!(
            b.tokens().abs() < 1e-9,
            "the debts are paid off, nothing more"
        );
        b.drain();
        assert_eq!(b.reserve(), Ok(ms(500)));
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

    #[tokio::test(start_paused = true)]
    async fn acquire_sleeps_about_the_reserved_wait() {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::default());
        let b = ApiBucket::new(
            BucketConfig {
                capacity: 1,
                refill_per_sec: 10.0,
                max_wait: Duration::from_secs(1),
            },
            Arc::clone(&clock),
        );
        let start = clock.now();
        b.acquire().await.expect("first");
        b.acquire().await.expect("second");
        let waited = clock.now() - start;
        // One token every 100 ms, plus at most 10% jitter.
        assert!(waited >= ms(100) && waited <= ms(110), "waited {waited:?}");
    }
}
