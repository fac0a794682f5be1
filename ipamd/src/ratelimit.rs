//! EC2 discipline on the client side: a token bucket, jittered exponential backoff, and a count of calls by API.
//!
//! EC2 throttles each account per region with token buckets (one per API; `RequestLimitExceeded` when empty).
//! Every node of a cluster draws from the same account buckets, so a node that retries hard makes every other
//! node's calls fail too (anchor issues #405, #887, #3719). The anchor has no client-side limit, only the SDK's
//! retries. Here every EC2 call of the pool engine goes through [`PacedEc2`]:
//!
//! ```text
//!   call ─▶ take a token from the node's bucket ─(empty)─▶ wait until one refills (no request sent)
//!        ─▶ send, count it under its API name
//!        ─▶ retryable failure (throttled, timeout, 5xx)? ─▶ wait base·2^n, jittered, capped; try again
//!                                                            (at most `max_attempts` sends per call)
//! ```
//!
//! **Token bucket.** `capacity` tokens, refilled continuously at `refill_per_sec`; a call takes one. A full bucket
//! lets a burst through (node start, a pod burst), after which calls are spaced at the refill rate. Time comes
//! from the [`Clock`], so the same code paces virtual time in tests.
//!
//! **Backoff.** "Equal jitter": the n-th retry waits `d/2 + random(0..d/2)` with `d = min(cap, base·2^n)`, so
//! retries from many nodes spread out instead of arriving together, yet never retry sooner than `d/2`.
//!
//! The simulator uses the same [`TokenBucket`] server-side, per API, to answer `RequestLimitExceeded`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ipnetwork::Ipv4Network;

use crate::clock::Clock;
use crate::ec2::{
    Assigned, CreateEniRequest, Ec2, Ec2Error, EniDescription, EniFilter, InstanceDescription,
    InstanceTypeInfo, IpRequest, SubnetDescription, SubnetFilter,
};

/// A token bucket on a clock (see the module docs).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    refill_per_sec: f64,
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(capacity: u32, refill_per_sec: f64, now: Duration) -> TokenBucket {
        TokenBucket {
            capacity: f64::from(capacity.max(1)),
            refill_per_sec: refill_per_sec.max(0.0),
            tokens: f64::from(capacity.max(1)),
            last: now,
        }
    }

    fn refill(&mut self, now: Duration) {
        let dt = now.saturating_sub(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.refill_per_sec).min(self.capacity);
        self.last = self.last.max(now);
    }

    /// Takes a token, or says how long until one is there.
    pub fn try_take(&mut self, now: Duration) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if self.refill_per_sec <= 0.0 {
            return Err(Duration::from_secs(3600));
        }
        let secs = (1.0 - self.tokens) / self.refill_per_sec;
        Err(Duration::from_secs_f64(secs.max(0.001)))
    }

    /// Empties the bucket (a throttling burst in the simulator).
    pub fn drain(&mut self, now: Duration) {
        self.refill(now);
        self.tokens = 0.0;
    }

    /// Tokens left now (for tests and status).
    pub fn tokens(&mut self, now: Duration) -> f64 {
        self.refill(now);
        self.tokens
    }
}

/// Exponential backoff with equal jitter (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The wait before retry number `attempt` (1 = first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let d = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.cap);
        let half = d / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// Client-side pacing settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PacingConfig {
    /// Burst size of the node's bucket.
    pub burst: u32,
    /// Sustained calls per second.
    pub per_second: f64,
    /// Sends per call at most (1 = no retry).
    pub max_attempts: u32,
    pub backoff: Backoff,
}

impl Default for PacingConfig {
    fn default() -> Self {
        PacingConfig {
            burst: 10,
            per_second: 1.0,
            max_attempts: 4,
            backoff: Backoff {
                base: Duration::from_millis(500),
                cap: Duration::from_secs(20),
            },
        }
    }
}

/// What the pacer saw, by API name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallCounts {
    /// Requests sent to EC2 (retries included).
    pub sent: BTreeMap<&'static str, u64>,
    /// Of those, failed with a retryable error and were retried.
    pub retried: BTreeMap<&'static str, u64>,
    /// Calls that had to wait for a client-side token.
    pub paced: BTreeMap<&'static str, u64>,
}

impl CallCounts {
    /// Requests sent, all APIs.
    pub fn total_sent(&self) -> u64 {
        self.sent.values().sum()
    }
}

/// An [`Ec2`] that paces, retries and counts every call of the inner one (see the module docs).
pub struct PacedEc2 {
    inner: Arc<dyn Ec2>,
    clock: Arc<dyn Clock>,
    cfg: PacingConfig,
    bucket: Mutex<TokenBucket>,
    counts: Mutex<CallCounts>,
}

impl std::fmt::Debug for PacedEc2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacedEc2")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn bump(m: &mut BTreeMap<&'static str, u64>, api: &'static str) {
    *m.entry(api).or_default() += 1;
}

impl PacedEc2 {
    pub fn new(inner: Arc<dyn Ec2>, clock: Arc<dyn Clock>, cfg: PacingConfig) -> PacedEc2 {
        let bucket = TokenBucket::new(cfg.burst, cfg.per_second, clock.now());
        PacedEc2 {
            inner,
            clock,
            cfg,
            bucket: Mutex::new(bucket),
            counts: Mutex::new(CallCounts::default()),
        }
    }

    /// Calls so far.
    pub fn counts(&self) -> CallCounts {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn take_token(&self, api: &'static str) {
        let mut waited = false;
        loop {
            let res = self
                .bucket
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .try_take(self.clock.now());
            match res {
                Ok(()) => break,
                Err(wait) => {
                    waited = true;
                    self.clock.sleep(wait).await;
                }
            }
        }
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if waited {
            bump(&mut c.paced, api);
        }
        bump(&mut c.sent, api);
    }

    async fn call<T, F, Fut>(&self, api: &'static str, mut f: F) -> Result<T, Ec2Error>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T, Ec2Error>> + Send,
        T: Send,
    {
        let mut attempt = 1;
        loop {
            self.take_token(api).await;
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && attempt < self.cfg.max_attempts => {
                    let wait = self.cfg.backoff.delay(attempt);
                    tracing::debug!(api, error = %e, attempt, retry_in = ?wait, "EC2 call failed; retrying");
                    bump(
                        &mut self
                            .counts
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .retried,
                        api,
                    );
                    attempt += 1;
                    self.clock.sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[async_trait]
impl Ec2 for PacedEc2 {
    async fn create_network_interface(
        &self,
        req: CreateEniRequest,
    ) -> Result<EniDescription, Ec2Error> {
        self.call("CreateNetworkInterface", || {
            self.inner.create_network_interface(req.clone())
        })
        .await
    }

    async fn attach_network_interface(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
        network_card_index: u32,
    ) -> Result<String, Ec2Error> {
        self.call("AttachNetworkInterface", || {
            self.inner.attach_network_interface(
                eni_id,
                instance_id,
                device_index,
                network_card_index,
            )
        })
        .await
    }

    async fn set_delete_on_termination(
        &self,
        eni_id: &str,
        attachment_id: &str,
    ) -> Result<(), Ec2Error> {
        self.call("ModifyNetworkInterfaceAttribute", || {
            self.inner.set_delete_on_termination(eni_id, attachment_id)
        })
        .await
    }

    async fn assign_private_ips(&self, eni_id: &str, req: IpRequest) -> Result<Assigned, Ec2Error> {
        self.call("AssignPrivateIpAddresses", || {
            self.inner.assign_private_ips(eni_id, req)
        })
        .await
    }

    async fn unassign_private_ips(
        &self,
        eni_id: &str,
        ips: &[Ipv4Addr],
        prefixes: &[Ipv4Network],
    ) -> Result<(), Ec2Error> {
        self.call("UnassignPrivateIpAddresses", || {
            self.inner.unassign_private_ips(eni_id, ips, prefixes)
        })
        .await
    }

    async fn detach_network_interface(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        self.call("DetachNetworkInterface", || {
            self.inner.detach_network_interface(attachment_id)
        })
        .await
    }

    async fn delete_network_interface(&self, eni_id: &str) -> Result<(), Ec2Error> {
        self.call("DeleteNetworkInterface", || {
            self.inner.delete_network_interface(eni_id)
        })
        .await
    }

    async fn describe_network_interfaces(
        &self,
        ids: &[String],
    ) -> Result<Vec<EniDescription>, Ec2Error> {
        self.call("DescribeNetworkInterfaces", || {
            self.inner.describe_network_interfaces(ids)
        })
        .await
    }

    async fn list_network_interfaces(
        &self,
        filter: &EniFilter,
    ) -> Result<Vec<EniDescription>, Ec2Error> {
        self.call("DescribeNetworkInterfaces", || {
            self.inner.list_network_interfaces(filter)
        })
        .await
    }

    async fn describe_instance(&self, instance_id: &str) -> Result<InstanceDescription, Ec2Error> {
        self.call("DescribeInstances", || {
            self.inner.describe_instance(instance_id)
        })
        .await
    }

    async fn describe_subnets(
        &self,
        filter: &SubnetFilter,
    ) -> Result<Vec<SubnetDescription>, Ec2Error> {
        self.call("DescribeSubnets", || self.inner.describe_subnets(filter))
            .await
    }

    async fn create_tags(
        &self,
        resource_id: &str,
        tags: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), Ec2Error> {
        self.call("CreateTags", || self.inner.create_tags(resource_id, tags))
            .await
    }

    async fn describe_instance_types(
        &self,
        types: &[String],
    ) -> Result<Vec<InstanceTypeInfo>, Ec2Error> {
        self.call("DescribeInstanceTypes", || {
            self.inner.describe_instance_types(types)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;
    use crate::sim::{NoHotplug, SimEc2, SimSpec};

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
    fn backoff_grows_is_capped_and_jittered() {
        let b = Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(8),
        };
        for attempt in 1..10 {
            let d = b.delay(attempt);
            let full = Duration::from_secs(1 << (attempt - 1).min(3));
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn paced_calls_wait_for_tokens_and_retry_retryable_errors() {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::default());
        let mut spec = SimSpec::new("m5.large");
        spec.clock = Arc::clone(&clock);
        let sim = SimEc2::launch(spec, Arc::new(NoHotplug))
            .await
            .expect("sim");
        let paced = PacedEc2::new(
            Arc::new(sim.clone()),
            Arc::clone(&clock),
            PacingConfig {
                burst: 2,
                per_second: 1.0,
                ..PacingConfig::default()
            },
        );
        let iid = sim.instance_id();
        let start = clock.now();
        for _ in 0..5 {
            paced.describe_instance(&iid).await.expect("describe");
        }
        // 2 from the burst, 3 more at one per second.
        assert!(clock.now() - start >= Duration::from_secs(3));
        assert_eq!(paced.counts().sent.get("DescribeInstances"), Some(&5));
        assert_eq!(paced.counts().paced.get("DescribeInstances"), Some(&3));

        sim.inject_faults(crate::sim::Fault::ServerError, Some("DescribeInstances"), 2);
        paced
            .describe_instance(&iid)
            .await
            .expect("retried past 5xx");
        assert_eq!(paced.counts().retried.get("DescribeInstances"), Some(&2));

        sim.inject_faults(
            crate::sim::Fault::ServerError,
            Some("DescribeInstances"),
            10,
        );
        let err = paced.describe_instance(&iid).await.expect_err("gives up");
        assert!(err.is_retryable());
    }
}
