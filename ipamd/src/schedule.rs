//! The cluster's EC2 schedule: one token bucket per EC2 API shared by every node of the cluster, kept in one
//! Kubernetes object, so that the nodes together ask no faster than the account refills.
//!
//! Why: EC2 throttles per account and API (mutating actions 200 tokens at 5/s, `Describe*` 100 at 20/s). A node
//! learns the account is saturated only from its own `RequestLimitExceeded`; when 2,000 nodes start within a
//! minute, about 1,500 first calls are throttled before any node can know (the scale-up benchmark). Every ipamd
//! already talks to the Kubernetes API, so the nodes share their plan there instead.
//!
//! **The schedule** is a `coordination.k8s.io/v1` Lease named [`LEASE_NAME`] in the pod's namespace
//! (`MY_POD_NAMESPACE`, default `kube-system`). Its annotations hold, per EC2 API, a GCRA "theoretical arrival
//! time" (`ec2-schedule.aws-cni/<Api>`: unix milliseconds). To send a call of API X, a node reads the lease,
//! takes the next slot ([`gcra`]: `tat = max(tat_X, now)`, slot `max(now, tat − (burst−1)/rate)`), writes
//! `tat_X = tat + 1/rate` with the resourceVersion it read (optimistic concurrency: a 409 Conflict means another
//! node took a slot meanwhile, so it reads again after a short random pause, [`conflict_backoff`], at most
//! [`CONFLICT_ATTEMPTS`] times), and sends no EC2 request
//! until its slot. That is a token bucket of `burst` at `rate`, shared by every node: one GET and one PUT per EC2
//! call, in one small object. A tat in the far past is simply max'ed with now; a tat more than [`MAX_WAIT`]
//! beyond what the bucket allows is clamped, so one broken value cannot stall nodes for long.
//!
//! The bucket's size is a [`Share`] of EC2's defaults ([`ec2_api::Api::account_bucket`], the one table of these
//! facts): a little below the account's rate and burst, so that calls sent a little after their slot and calls
//! of other consumers of the account (the console, other controllers) do not empty the account's bucket.
//!
//! **Where.** [`crate::ratelimit::Pacer`] reserves a slot for every EC2 call right before it sends it (after the
//! node's own throttle gate and token bucket, so a reserved slot is not spent waiting there); the node's own
//! reaction to `RequestLimitExceeded` stays as it is, for throttles caused by others.
//!
//! **Failure is never fatal**: with the API unreachable, a 403 (an aws-node ClusterRole without lease rights), or
//! conflicts beyond the bound, the call goes on under the node's own pacing; the pacer sets the schedule aside
//! for [`ScheduleError::retry_after`], shows the reason in `ipamd status`, counts it
//! (`awscni_ec2_schedule_total`), and logs once per change.
//!
//! Implementations: the real one on the Kubernetes API ([`crate::schedule_lease::LeaseSchedule`]), [`NoSchedule`]
//! (no API, or `AWS_CNI_EC2_CLUSTER_SCHEDULE=false`: reserves nothing), and [`MemorySchedule`], an in-memory
//! double with a modelled API latency and real compare-and-swap conflicts (tests and the virtual benchmarks).

use std::time::Duration;

use async_trait::async_trait;
use ec2_api::Api;

/// The Lease that holds the schedule.
pub const LEASE_NAME: &str = "aws-cni-ec2-schedule";

/// The annotation prefix: `ec2-schedule.aws-cni/<Api>` holds that API's theoretical arrival time.
pub const ANNOTATION_PREFIX: &str = "ec2-schedule.aws-cni/";

/// The longest a reservation makes a call wait beyond what the bucket allows (see the module docs).
pub const MAX_WAIT: Duration = Duration::from_secs(15 * 60);

/// Reads and writes per reservation before it gives up on conflicts.
pub const CONFLICT_ATTEMPTS: u32 = 10;

/// The wait before reading again after a conflicting write: uniform in `[0, 10 ms · 2^attempt)`, at most
/// 640 ms, so nodes that collided do not collide again in step.
pub fn conflict_backoff(attempt: u32) -> Duration {
    let ceiling = Duration::from_millis(10 << attempt.min(6));
    ceiling.mul_f64(rand::random::<f64>())
}

/// A reservation that waits at least this long means the cluster asks as fast as the account refills: the
/// pacer notes it as congestion (see [`crate::ratelimit::Pacer::since_congested`]).
pub const CONGESTED_WAIT: Duration = Duration::from_secs(5);

/// One API's shared bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Calls that may go at once after a quiet spell (at least 1).
    pub burst: u32,
    /// Calls per second sustained.
    pub per_second: f64,
}

/// The part of EC2's default buckets the cluster's schedule hands out (`AWS_CNI_EC2_SCHEDULE_RATE_SHARE`,
/// `AWS_CNI_EC2_SCHEDULE_BURST_SHARE`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    /// Of the refill rate, in (0, 1].
    pub rate: f64,
    /// Of the bucket's capacity, in (0, 1].
    pub burst: f64,
}

impl Default for Share {
    /// Measured on the scale-up benchmark (2,000 nodes, see `bench/src/virt/scaleup.rs`).
    fn default() -> Self {
        Share {
            rate: DEFAULT_RATE_SHARE,
            burst: DEFAULT_BURST_SHARE,
        }
    }
}

/// The default [`Share::rate`].
pub const DEFAULT_RATE_SHARE: f64 = 0.97;
/// The default [`Share::burst`].
pub const DEFAULT_BURST_SHARE: f64 = 0.9;

impl Limit {
    /// `share` of EC2's default bucket for `api`.
    pub fn of(api: Api, share: Share) -> Limit {
        let (capacity, rate) = api.account_bucket();
        Limit {
            burst: ((f64::from(capacity) * share.burst).floor() as u32).max(1),
            per_second: (rate * share.rate).max(1e-3),
        }
    }

    /// The time between two calls at the sustained rate, in microseconds.
    fn interval_us(&self) -> u64 {
        (1e6 / self.per_second).round().max(1.0) as u64
    }
}

/// What one reservation decided ([`gcra`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The theoretical arrival time to store (unix microseconds).
    pub tat_us: u64,
    /// When the call may be sent (unix microseconds).
    pub slot_us: u64,
}

/// The GCRA step (see the module docs): with the stored theoretical arrival time `stored_us` (`None`: never set)
/// at `now_us`, the call's slot and the new theoretical arrival time. All in unix microseconds.
pub fn gcra(stored_us: Option<u64>, now_us: u64, limit: Limit) -> Grant {
    let t = limit.interval_us();
    let tolerance = t.saturating_mul(u64::from(limit.burst.max(1) - 1));
    let ceiling = now_us
        .saturating_add(tolerance)
        .saturating_add(MAX_WAIT.as_micros() as u64);
    let tat = stored_us.unwrap_or(0).clamp(now_us, ceiling);
    Grant {
        tat_us: tat.saturating_add(t),
        slot_us: tat.saturating_sub(tolerance).max(now_us),
    }
}

/// How long a reservation of each of `apis` would wait at wall time `now` with the lease's `annotations`.
pub fn peek_waits(
    annotations: &std::collections::BTreeMap<String, String>,
    apis: &[(&'static str, Limit)],
    now: Duration,
) -> Vec<Duration> {
    let now_us = now.as_micros() as u64;
    apis.iter()
        .map(|(api, limit)| {
            let stored = annotations
                .get(&annotation_key(api))
                .and_then(|v| parse_tat(v));
            Duration::from_micros(gcra(stored, now_us, *limit).slot_us - now_us)
        })
        .collect()
}

/// The annotation key of `api`'s theoretical arrival time.
pub fn annotation_key(api: &str) -> String {
    format!("{ANNOTATION_PREFIX}{api}")
}

/// An annotation value: unix milliseconds with three decimals.
pub fn format_tat(tat_us: u64) -> String {
    format!("{}.{:03}", tat_us / 1000, tat_us % 1000)
}

/// Reads an annotation value ([`format_tat`]; an integer of milliseconds too). `None`: not a time (treated as
/// never set).
pub fn parse_tat(v: &str) -> Option<u64> {
    let v = v.trim();
    let (ms, frac) = v.split_once('.').unwrap_or((v, ""));
    let ms: u64 = ms.parse().ok()?;
    let mut us = 0u64;
    let digits: String = frac.chars().take(3).collect();
    if !digits.is_empty() {
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        us = format!("{digits:0<3}").parse().ok()?;
    }
    ms.checked_mul(1000)?.checked_add(us)
}

/// Why a reservation failed: the call then goes on under the node's own pacing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// 403: the service account may not read or write the lease (an older aws-node ClusterRole).
    #[error("the Kubernetes API refused access to the lease {lease} (403 Forbidden: give aws-node's service account get, create and update on leases; see deploy/): {message}")]
    Forbidden { lease: String, message: String },
    /// The API server did not answer (in time).
    #[error("the Kubernetes API is unreachable: {0}")]
    Unreachable(String),
    /// Other nodes wrote the lease between every read and write.
    #[error("{attempts} conflicting writes of the lease in a row")]
    Contended { attempts: u32 },
    /// Any other answer.
    #[error("the Kubernetes API answered {code}: {message}")]
    Api { code: u16, message: String },
}

impl ScheduleError {
    /// How long the node sets the schedule aside after this failure.
    pub fn retry_after(&self) -> Duration {
        match self {
            ScheduleError::Forbidden { .. } => Duration::from_secs(60),
            ScheduleError::Unreachable(_) | ScheduleError::Api { .. } => Duration::from_secs(10),
            ScheduleError::Contended { .. } => Duration::ZERO,
        }
    }

    /// The metric label of this failure.
    pub fn outcome(&self) -> &'static str {
        match self {
            ScheduleError::Forbidden { .. } => "forbidden",
            ScheduleError::Unreachable(_) => "unreachable",
            ScheduleError::Contended { .. } => "contended",
            ScheduleError::Api { .. } => "error",
        }
    }
}

/// The cluster's EC2 schedule as an outside world (see the module docs).
#[async_trait]
pub trait ClusterSchedule: Send + Sync + 'static {
    /// Reserves the next slot of `api` in a bucket of `limit` shared by the cluster; returns how long from now
    /// (the return) the caller waits before it sends.
    async fn reserve(&self, api: &'static str, limit: Limit) -> Result<Duration, ScheduleError>;

    /// How long a call of each of `apis` would wait if it reserved now (one read, nothing written): lets a
    /// caller with a choice take the API whose slot comes first, or put off what can wait.
    async fn peek(&self, apis: &[(&'static str, Limit)]) -> Result<Vec<Duration>, ScheduleError>;

    /// Where the schedule lives, for status and logs (empty: nowhere, [`NoSchedule`]).
    fn describe(&self) -> String;

    /// Whether there is a schedule at all (false: [`NoSchedule`]; the pacer then asks nothing).
    fn enabled(&self) -> bool {
        true
    }
}

/// No schedule: no Kubernetes API, or `AWS_CNI_EC2_CLUSTER_SCHEDULE=false`. Reserves nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSchedule;

#[async_trait]
impl ClusterSchedule for NoSchedule {
    async fn reserve(&self, _api: &'static str, _limit: Limit) -> Result<Duration, ScheduleError> {
        Ok(Duration::ZERO)
    }

    async fn peek(&self, apis: &[(&'static str, Limit)]) -> Result<Vec<Duration>, ScheduleError> {
        Ok(vec![Duration::ZERO; apis.len()])
    }

    fn describe(&self) -> String {
        String::new()
    }

    fn enabled(&self) -> bool {
        false
    }
}

/// Turns the schedule on or off (default true; false: every node paces its EC2 calls alone).
pub const ENV_SCHEDULE: &str = "AWS_CNI_EC2_CLUSTER_SCHEDULE";
/// [`Share::rate`] (default [`DEFAULT_RATE_SHARE`]).
pub const ENV_RATE_SHARE: &str = "AWS_CNI_EC2_SCHEDULE_RATE_SHARE";
/// [`Share::burst`] (default [`DEFAULT_BURST_SHARE`]).
pub const ENV_BURST_SHARE: &str = "AWS_CNI_EC2_SCHEDULE_BURST_SHARE";

/// The schedule's settings from the environment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleSettings {
    pub enabled: bool,
    pub share: Share,
}

impl ScheduleSettings {
    /// Reads [`ENV_SCHEDULE`], [`ENV_RATE_SHARE`] and [`ENV_BURST_SHARE`]; a bad value is refused naming it.
    pub fn from_env(
        env: &dyn crate::config::EnvSource,
    ) -> Result<ScheduleSettings, crate::config::ConfigError> {
        let fraction =
            |var: &'static str, default: f64| -> Result<f64, crate::config::ConfigError> {
                let Some(v) = env.get(var).filter(|v| !v.trim().is_empty()) else {
                    return Ok(default);
                };
                match v.trim().parse::<f64>() {
                Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
                _ => Err(crate::config::ConfigError {
                    var,
                    value: v.clone(),
                    reason:
                        "expected a fraction of EC2's default bucket, greater than 0 and at most 1"
                            .into(),
                }),
            }
            };
        Ok(ScheduleSettings {
            enabled: crate::config::env::parse_bool(env, ENV_SCHEDULE)?.unwrap_or(true),
            share: Share {
                rate: fraction(ENV_RATE_SHARE, DEFAULT_RATE_SHARE)?,
                burst: fraction(ENV_BURST_SHARE, DEFAULT_BURST_SHARE)?,
            },
        })
    }
}

/// The lease's content as the double keeps it: a resourceVersion and the annotations.
#[cfg(any(test, feature = "fakes"))]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseDoc {
    pub resource_version: u64,
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// A [`ClusterSchedule`] double: the lease in memory, each read and each write taking `latency` on `clock`, a
/// write against a stale resourceVersion refused (409) as the API server does, so concurrent reservers conflict
/// for real. Clones share the lease (every node of a simulated cluster holds one).
#[cfg(any(test, feature = "fakes"))]
#[derive(Clone)]
pub struct MemorySchedule {
    clock: std::sync::Arc<dyn ec2_api::clock::Clock>,
    latency: Duration,
    pub doc: std::sync::Arc<std::sync::Mutex<LeaseDoc>>,
    /// While set, every reservation fails so (e.g. [`ScheduleError::Forbidden`]).
    pub fail: std::sync::Arc<std::sync::Mutex<Option<ScheduleError>>>,
    /// Reads, writes and refused (409) writes so far.
    pub stats: std::sync::Arc<std::sync::Mutex<MemoryStats>>,
}

/// What a [`MemorySchedule`] saw.
#[cfg(any(test, feature = "fakes"))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub reads: u64,
    pub writes: u64,
    pub conflicts: u64,
    /// Reservations that gave up after [`CONFLICT_ATTEMPTS`] conflicting writes.
    pub contended: u64,
}

#[cfg(any(test, feature = "fakes"))]
impl MemorySchedule {
    pub fn new(clock: std::sync::Arc<dyn ec2_api::clock::Clock>, latency: Duration) -> Self {
        MemorySchedule {
            clock,
            latency,
            doc: Default::default(),
            fail: Default::default(),
            stats: Default::default(),
        }
    }

    /// Sets `api`'s theoretical arrival time (unix microseconds), as another node or an operator would.
    pub fn set_tat(&self, api: &str, tat_us: u64) {
        let mut d = crate::sync::lock(&self.doc);
        d.resource_version += 1;
        d.annotations
            .insert(annotation_key(api), format_tat(tat_us));
    }

    /// `api`'s theoretical arrival time now stored (unix microseconds).
    pub fn tat(&self, api: &str) -> Option<u64> {
        crate::sync::lock(&self.doc)
            .annotations
            .get(&annotation_key(api))
            .and_then(|v| parse_tat(v))
    }

    pub fn stats(&self) -> MemoryStats {
        *crate::sync::lock(&self.stats)
    }

    /// A GET: the lease as the server had it when the request arrived, answered after the round trip.
    async fn get(&self) -> LeaseDoc {
        self.clock.sleep(self.latency / 2).await;
        let read = crate::sync::lock(&self.doc).clone();
        crate::sync::lock(&self.stats).reads += 1;
        self.clock.sleep(self.latency / 2).await;
        read
    }
}

#[cfg(any(test, feature = "fakes"))]
#[async_trait]
impl ClusterSchedule for MemorySchedule {
    async fn reserve(&self, api: &'static str, limit: Limit) -> Result<Duration, ScheduleError> {
        let key = annotation_key(api);
        for attempt in 0..CONFLICT_ATTEMPTS {
            if let Some(e) = crate::sync::lock(&self.fail).clone() {
                return Err(e);
            }
            let read = self.get().await;
            let now_us = self.clock.wall().as_micros() as u64;
            let grant = gcra(
                read.annotations.get(&key).and_then(|v| parse_tat(v)),
                now_us,
                limit,
            );
            // PUT with the resourceVersion read: refused if another write came first.
            self.clock.sleep(self.latency / 2).await;
            let written = {
                let mut d = crate::sync::lock(&self.doc);
                if d.resource_version == read.resource_version {
                    d.resource_version += 1;
                    d.annotations.insert(key.clone(), format_tat(grant.tat_us));
                    true
                } else {
                    false
                }
            };
            {
                let mut s = crate::sync::lock(&self.stats);
                s.writes += 1;
                s.conflicts += u64::from(!written);
            }
            self.clock.sleep(self.latency / 2).await;
            if written {
                let now_us = self.clock.wall().as_micros() as u64;
                return Ok(Duration::from_micros(grant.slot_us.saturating_sub(now_us)));
            }
            self.clock.sleep(conflict_backoff(attempt)).await;
        }
        crate::sync::lock(&self.stats).contended += 1;
        Err(ScheduleError::Contended {
            attempts: CONFLICT_ATTEMPTS,
        })
    }

    async fn peek(&self, apis: &[(&'static str, Limit)]) -> Result<Vec<Duration>, ScheduleError> {
        if let Some(e) = crate::sync::lock(&self.fail).clone() {
            return Err(e);
        }
        let read = self.get().await;
        Ok(peek_waits(&read.annotations, apis, self.clock.wall()))
    }

    fn describe(&self) -> String {
        format!("lease {LEASE_NAME} (in memory)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ec2_api::clock::{Clock, TokioClock};
    use std::sync::Arc;

    const SEC: u64 = 1_000_000;

    fn limit(burst: u32, per_second: f64) -> Limit {
        Limit { burst, per_second }
    }

    #[test]
    fn gcra_lets_a_burst_through_then_spaces_calls_at_the_rate() {
        let l = limit(3, 2.0);
        let now = 1_000 * SEC;
        let mut tat = None;
        let mut slots = Vec::new();
        for _ in 0..6 {
            let g = gcra(tat, now, l);
            tat = Some(g.tat_us);
            slots.push(g.slot_us - now);
        }
        // Three at once (the burst), then one every half second.
        assert_eq!(slots, [0, 0, 0, SEC / 2, SEC, 3 * SEC / 2]);
        // After a quiet spell the bucket is full again: a tat in the past is max'ed with now.
        let later = now + 100 * SEC;
        let g = gcra(tat, later, l);
        assert_eq!(g.slot_us, later);
        assert_eq!(g.tat_us, later + SEC / 2);
    }

    #[test]
    fn a_tat_far_ahead_is_clamped_to_the_longest_wait() {
        let l = limit(10, 5.0);
        let now = 1_000 * SEC;
        let broken = now + 365 * 24 * 3600 * SEC;
        let g = gcra(Some(broken), now, l);
        assert_eq!(
            g.slot_us - now,
            MAX_WAIT.as_micros() as u64,
            "capped at MAX_WAIT"
        );
        // The stored value heals: the next reservation continues from the clamp, not from a year ahead.
        assert!(g.tat_us < now + MAX_WAIT.as_micros() as u64 + 10 * SEC);
    }

    #[test]
    fn limits_are_a_share_of_ec2_defaults() {
        let share = Share {
            rate: 0.95,
            burst: 0.9,
        };
        let m = Limit::of(Api::CreateNetworkInterface, share);
        assert_eq!(m.burst, 180);
        assert!((m.per_second - 4.75).abs() < 1e-9);
        let d = Limit::of(Api::DescribeSubnets, share);
        assert_eq!(d.burst, 90);
        assert!((d.per_second - 19.0).abs() < 1e-9);
    }

    #[test]
    fn settings_default_to_on_and_refuse_bad_values_by_name() {
        use crate::config::env::env_map;
        let d = ScheduleSettings::from_env(&env_map(&[])).expect("defaults");
        assert!(d.enabled);
        assert_eq!(d.share, Share::default());
        let off = ScheduleSettings::from_env(&env_map(&[(ENV_SCHEDULE, "false")])).expect("off");
        assert!(!off.enabled);
        let s = ScheduleSettings::from_env(&env_map(&[
            (ENV_RATE_SHARE, "0.5"),
            (ENV_BURST_SHARE, "1"),
        ]))
        .expect("shares");
        assert_eq!(
            s.share,
            Share {
                rate: 0.5,
                burst: 1.0
            }
        );
        for (var, v) in [
            (ENV_SCHEDULE, "maybe"),
            (ENV_RATE_SHARE, "0"),
            (ENV_RATE_SHARE, "1.5"),
            (ENV_BURST_SHARE, "lots"),
        ] {
            let e = ScheduleSettings::from_env(&env_map(&[(var, v)])).expect_err(v);
            assert_eq!(e.var, var);
            assert!(e.to_string().contains(var), "{e}");
        }
    }

    #[test]
    fn tats_round_trip_through_the_annotation() {
        for us in [0, 1, 999, 1_767_225_600_123_456] {
            assert_eq!(parse_tat(&format_tat(us)), Some(us));
        }
        assert_eq!(parse_tat("1767225600123"), Some(1_767_225_600_123_000));
        assert_eq!(parse_tat("12.5"), Some(12_500));
        assert_eq!(parse_tat("soon"), None);
        assert_eq!(parse_tat("1.x"), None);
    }

    /// Every window `[a, b]` of the sorted send times holds at most `burst + rate·(b − a + slack)` of them
    /// (`slack`: a call whose slot passed while its write was answered is sent on the answer, a round trip late).
    fn assert_bucket_holds(slots: &mut [u64], l: Limit, slack: Duration) {
        slots.sort_unstable();
        for i in 0..slots.len() {
            for j in i..slots.len() {
                let w = (slots[j] - slots[i]) as f64 / 1e6 + slack.as_secs_f64();
                let n = (j - i + 1) as f64;
                assert!(
                    n <= f64::from(l.burst) + l.per_second * w + 1e-6,
                    "{n} slots within {w} s exceed {} + {}·{w}",
                    l.burst,
                    l.per_second
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_reservers_conflict_retry_and_never_share_a_slot() {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::default());
        let s = MemorySchedule::new(Arc::clone(&clock), Duration::from_millis(8));
        let l = limit(5, 2.0);
        let mut tasks = Vec::new();
        for i in 0..40u64 {
            let s = s.clone();
            let clock = Arc::clone(&clock);
            tasks.push(tokio::spawn(async move {
                // Arrivals 20 ms apart, each node reserving three times in a row: reads and writes overlap.
                clock.sleep(Duration::from_millis(20 * i)).await;
                let mut slots = Vec::new();
                for _ in 0..3 {
                    let wait = s.reserve("CreateNetworkInterface", l).await;
                    let wait = wait.expect("reserved within the conflict bound");
                    // As the pacer does: wait for the slot, send, then the next call.
                    clock.sleep(wait).await;
                    slots.push(clock.wall().as_micros() as u64);
                }
                slots
            }));
        }
        let mut slots = Vec::new();
        for t in tasks {
            slots.extend(t.await.expect("task"));
        }
        let stats = s.stats();
        assert!(stats.conflicts > 0, "reservers did collide: {stats:?}");
        assert_eq!(stats.writes - stats.conflicts, 120, "one write per slot");
        let mut distinct = slots.clone();
        distinct.sort_unstable();
        distinct.dedup();
        // Slots after the burst are distinct; the burst's five share "now" legitimately.
        assert!(distinct.len() >= 120 - 5, "{} distinct", distinct.len());
        assert_bucket_holds(&mut slots, l, Duration::from_millis(8));
        // 120 calls at 2/s after a burst of 5: the last slot is about (120 − 5) / 2 s after the first.
        let span = (slots[119] - slots[0]) as f64 / 1e6;
        assert!((56.0..60.0).contains(&span), "{span}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_schedule_says_why_and_none_reserves_nothing() {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::default());
        let s = MemorySchedule::new(clock, Duration::from_millis(5));
        *crate::sync::lock(&s.fail) = Some(ScheduleError::Forbidden {
            lease: "kube-system/aws-cni-ec2-schedule".into(),
            message: "leases is forbidden".into(),
        });
        let e = s
            .reserve("AssignPrivateIpAddresses", limit(1, 1.0))
            .await
            .expect_err("forbidden");
        assert_eq!(e.outcome(), "forbidden");
        assert_eq!(e.retry_after(), Duration::from_secs(60));
        assert!(e.to_string().contains("403"), "{e}");
        assert_eq!(s.stats().writes, 0);
        assert_eq!(
            NoSchedule
                .reserve("AssignPrivateIpAddresses", limit(1, 1.0))
                .await,
            Ok(Duration::ZERO)
        );
        assert!(!NoSchedule.enabled());
    }
}
