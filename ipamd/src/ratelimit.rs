//! EC2 discipline on the client side: a token bucket, a throttle-aware gate per API, jittered exponential
//! backoff, and a count of calls by API.
//!
//! EC2 throttles each account per region with token buckets (one per API; `RequestLimitExceeded` when empty; a
//! refused request takes no token). Every node of a cluster draws from the same account buckets, so a node that
//! retries hard makes every other node's calls fail too (anchor issues #405, #887, #3719). The anchor has no
//! client-side limit, only the SDK's retries. Here every EC2 call of the pool engine goes through [`PacedEc2`],
//! the [`Pacer`] layered over the backend (an [`Ec2Layer`]: the whole policy is [`Pacer::paced`]):
//!
//! ```text
//!   call ─▶ wait until this API's gate opens (held shut after RequestLimitExceeded, see below)
//!        ─▶ take a token from the node's bucket ─(empty)─▶ wait until one refills (no request sent)
//!        ─▶ send, count it under its API name
//!        ─▶ RequestLimitExceeded? ─▶ widen the API's window, shut its gate for a random part of it, drain the
//!                                    node's bucket; try again through the gate (for at most `throttle_budget`)
//!        ─▶ other retryable failure (timeout, 5xx)? ─▶ wait base·2^n, jittered, capped; try again
//!                                                       (at most `max_attempts` sends per call)
//! ```
//!
//! **Token bucket.** `capacity` tokens, refilled continuously at `refill_per_sec`; a call takes one. A full bucket
//! lets a burst through (node start, a pod burst), after which calls are spaced at the refill rate. Time comes
//! from the [`Clock`], so the same code paces virtual time in tests. This is the node's own budget: what one node
//! may spend when the account is quiet.
//!
//! **Throttle gate** ([`ThrottleGate`], one per API, shared by every caller on the node). A throttled call tells
//! the node something about everybody: the account's bucket for that API is empty, so the whole cluster is
//! asking faster than EC2 refills, and whoever sends next without waiting most likely fails too (and spends
//! nothing but everybody's patience). The node therefore slows down as a whole, not call by call:
//! - each throttle *multiplies* the API's contention window (`initial`, then ×`growth`, up to `max`; early in a
//!   congestion episode up to `episode_max` less the episode's age, see [`CongestionConfig::episode_max`]:
//!   a node that has just met a saturated account finds out in few throttled calls how far to back off, and
//!   one that has waited long comes back at least every `max`) and shuts
//!   the gate for a uniformly random part of it ("full jitter"): nodes throttled together spread their retries
//!   over the whole window instead of coming back in step; the mean retry rate of `n` throttled nodes is about
//!   `2n / window`, so the windows widen until the crowd asks no faster than the account refills;
//! - throttles of requests sent before the window last widened (concurrent calls that were already in flight)
//!   do not widen it again: one congestion signal, one step;
//! - a success shrinks the window by `recovery` (slow recovery: the account was just saturated, the next call
//!   of the same API waits its turn behind a random part of the remaining window) until it closes;
//! - the node's bucket is drained on a throttle, so a node does not release a burst when its gate reopens;
//! - EC2 keeps one bucket per API, so one API's congestion does not hold back another's (a node whose
//!   CreateNetworkInterface just got through attaches the ENI at once: AttachNetworkInterface's bucket only sees
//!   the nodes that got that far).
//!
//! A throttled call is retried through the gate for up to `throttle_budget` before it fails with
//! `RequestLimitExceeded`, so the calls the caller made before it (a DescribeInstances before a
//! CreateNetworkInterface) are not repeated for every throttle. Callers that retry on their own after that
//! (the pool task) ask [`PacedEc2::hold`] how long the gate is still shut rather than keeping a backoff of
//! their own.
//!
//! **Backoff** for other retryable errors. "Equal jitter": the n-th retry waits `d/2 + random(0..d/2)` with
//! `d = min(cap, base·2^n)`, so retries from many nodes spread out instead of arriving together, yet never retry
//! sooner than `d/2`.
//!
//! The bucket is `ec2_api`'s [`TokenBucket`], the same one the simulator uses server-side, per API, to answer
//! `RequestLimitExceeded`, and `ec2-aws` under the SDK. The aws backend below makes one attempt per call
//! (`ec2_aws::AwsOptions::caller_retries`): the retries are this layer's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ec2_api::bucket::TokenBucket;
use ec2_api::clock::Clock;
use ec2_api::layer::{Attempt, Call};
use ec2_api::{Api, Ec2Error, Ec2Layer, Layered};

use crate::schedule::{ClusterSchedule, Limit, NoSchedule, ScheduleError, Share, CONGESTED_WAIT};

tokio::task_local! {
    /// Set by a caller with another way to get what it asks (the pool's growth, which can take another API):
    /// a throttled call then shuts its gate and fails at once instead of waiting at the gate to retry.
    pub static FAIL_FAST_ON_THROTTLE: bool;
}

/// Exponential backoff with equal jitter (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The longest wait before retry number `attempt` (1 = first retry): `min(cap, base·2^(attempt−1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.cap)
    }

    /// The wait before retry number `attempt` (1 = first retry): between half the [`Backoff::ceiling`] and all
    /// of it.
    pub fn delay(&self, attempt: u32) -> Duration {
        let half = self.ceiling(attempt) / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// How a node reacts to `RequestLimitExceeded` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CongestionConfig {
    /// The contention window after the first throttle.
    pub initial: Duration,
    /// Each further throttle multiplies the window by this.
    pub growth: f64,
    /// The widest window once the congestion episode is [`CongestionConfig::episode_max`] old.
    pub max: Duration,
    /// Early in a congestion episode (the window opened from closed) the window may grow up to this less the
    /// episode's age, never below `max`: a node that has just met a saturated account backs off far (and
    /// spends few throttled calls finding out how far), one that has been waiting long comes back at least
    /// every `max` (and does not sit out tokens the account refilled meanwhile). Zero: `max` throughout.
    pub episode_max: Duration,
    /// Each success multiplies the window by this; below `initial / 2` it closes.
    pub recovery: f64,
}

impl Default for CongestionConfig {
    fn default() -> Self {
        // Measured on the scale-up benchmark (2,000 nodes): against 2 s doubling to 60 s throughout, about ten
        // points fewer throttled calls in both address modes, every pod still placed within 1.15x the refill floor.
        CongestionConfig {
            initial: Duration::from_secs(8),
            growth: 4.0,
            max: Duration::from_secs(60),
            episode_max: Duration::from_secs(300),
            recovery: 0.5,
        }
    }
}

/// One API's throttle gate (see the module docs). Pure state on a caller-supplied clock and jitter, so it is
/// tested without time passing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThrottleGate {
    window: Duration,
    open_at: Duration,
    widened_at: Option<Duration>,
    /// When the window last opened from closed: the start of the current congestion episode.
    episode_since: Option<Duration>,
    throttles: u64,
    last_throttle: Option<Duration>,
}

impl ThrottleGate {
    /// How long the gate stays shut from `now` (zero: open).
    pub fn hold(&self, now: Duration) -> Duration {
        self.open_at.saturating_sub(now)
    }

    /// The current contention window (zero: no recent throttling).
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Throttles seen so far.
    pub fn throttles(&self) -> u64 {
        self.throttles
    }

    /// When EC2 last throttled a request of this API (`None`: never).
    pub fn last_throttle(&self) -> Option<Duration> {
        self.last_throttle
    }

    /// EC2 throttled a request of this API sent at `sent_at`; `jitter` is uniform in `[0, 1)`. Returns how long
    /// the gate is now shut.
    pub fn throttled(
        &mut self,
        cfg: &CongestionConfig,
        sent_at: Duration,
        now: Duration,
        jitter: f64,
    ) -> Duration {
        self.throttles += 1;
        self.last_throttle = Some(now);
        if self.widened_at.is_none_or(|w| sent_at > w) {
            if self.window.is_zero() {
                self.episode_since = Some(now);
            }
            let age = self
                .episode_since
                .map_or(Duration::ZERO, |t| now.saturating_sub(t));
            let widest = cfg.max.max(cfg.episode_max.saturating_sub(age));
            self.window = if self.window.is_zero() {
                cfg.initial
            } else {
                self.window.mul_f64(cfg.growth.max(1.0)).min(widest)
            };
            self.widened_at = Some(now);
        }
        self.shut(now, jitter)
    }

    /// A request of this API succeeded at `now`; `jitter` is uniform in `[0, 1)`.
    pub fn succeeded(&mut self, cfg: &CongestionConfig, now: Duration, jitter: f64) {
        if self.window.is_zero() {
            return;
        }
        self.window = self.window.mul_f64(cfg.recovery.clamp(0.0, 1.0));
        if self.window < cfg.initial / 2 {
            self.window = Duration::ZERO;
            self.episode_since = None;
            return;
        }
        self.shut(now, jitter);
    }

    fn shut(&mut self, now: Duration, jitter: f64) -> Duration {
        let hold = self.window.mul_f64(jitter.clamp(0.0, 1.0));
        self.open_at = self.open_at.max(now + hold);
        self.hold(now)
    }
}

/// The cluster's EC2 schedule a pacer reserves its slots in ([`crate::schedule`]); by default none.
#[derive(Clone)]
pub struct SharedSchedule(pub Arc<dyn ClusterSchedule>);

impl Default for SharedSchedule {
    fn default() -> Self {
        SharedSchedule(Arc::new(NoSchedule))
    }
}

impl std::fmt::Debug for SharedSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedSchedule({:?})", self.0.describe())
    }
}

impl PartialEq for SharedSchedule {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Client-side pacing settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PacingConfig {
    /// Burst size of the node's bucket.
    pub burst: u32,
    /// Sustained calls per second.
    pub per_second: f64,
    /// Sends per call at most for timeouts and server errors (1 = no retry).
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// The reaction to `RequestLimitExceeded`.
    pub congestion: CongestionConfig,
    /// How long one call keeps retrying `RequestLimitExceeded` through its gate before it reports it.
    pub throttle_budget: Duration,
    /// The cluster's EC2 schedule every call reserves a slot in before it is sent (none by default).
    pub schedule: SharedSchedule,
    /// The part of EC2's default buckets the schedule hands out.
    pub schedule_share: Share,
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
            congestion: CongestionConfig::default(),
            throttle_budget: Duration::from_secs(600),
            schedule: SharedSchedule::default(),
            schedule_share: Share::default(),
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
    /// Requests EC2 answered with `RequestLimitExceeded`.
    pub throttled: BTreeMap<&'static str, u64>,
}

impl CallCounts {
    /// Requests sent, all APIs.
    pub fn total_sent(&self) -> u64 {
        self.sent.values().sum()
    }

    /// Requests throttled, all APIs.
    pub fn total_throttled(&self) -> u64 {
        self.throttled.values().sum()
    }
}

/// What the pacer knows of the cluster's EC2 schedule ([`crate::schedule`]).
#[derive(Debug, Default)]
struct ScheduleState {
    /// Calls waiting for their slot: API → the slot.
    waiting: BTreeMap<&'static str, Duration>,
    /// After a failure the schedule is set aside until this (calls go under the node's own pacing).
    aside_until: Duration,
    /// The last failure; `None` while the schedule answers.
    problem: Option<ScheduleError>,
    /// When a reservation of the API last waited [`CONGESTED_WAIT`] or more.
    congested: BTreeMap<&'static str, Duration>,
    /// Reservations by outcome (`reserved`, `waited`, `skipped`, or a [`ScheduleError::outcome`]).
    outcomes: BTreeMap<&'static str, u64>,
}

/// The cluster's EC2 schedule as this node sees it, for `ipamd status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleStatus {
    /// A schedule is configured.
    pub enabled: bool,
    /// Where it lives.
    pub place: String,
    /// Why it is set aside now (`None`: in use).
    pub problem: Option<String>,
    /// When it is tried again after the problem.
    pub retry_in: Duration,
    /// Calls waiting for their slot: API and how long still.
    pub waiting: Vec<(&'static str, Duration)>,
    /// Reservations by outcome since startup.
    pub outcomes: BTreeMap<&'static str, u64>,
}

impl ScheduleStatus {
    /// One line for `ipamd status`.
    pub fn describe(&self) -> String {
        if !self.enabled {
            return "off: this node paces its EC2 calls alone".into();
        }
        if let Some(p) = &self.problem {
            return format!(
                "not in use, EC2 calls go under this node's own pacing (tried again in {}s): {p}",
                self.retry_in.as_secs()
            );
        }
        if self.waiting.is_empty() {
            return format!("in use ({})", self.place);
        }
        let waits: Vec<String> = self
            .waiting
            .iter()
            .map(|(api, d)| format!("{api} in {}s", d.as_secs_f64().ceil() as u64))
            .collect();
        format!(
            "waiting for the cluster's EC2 schedule: {} ({})",
            waits.join(", "),
            self.place
        )
    }
}

/// An [`ec2_api::Ec2`] that paces, retries and counts every call of the inner one (see the module docs).
pub type PacedEc2 = Layered<Pacer>;

/// The pacing layer (see the module docs); its state (gates, counts) is what the engine asks about.
pub struct Pacer {
    clock: Arc<dyn Clock>,
    cfg: PacingConfig,
    bucket: Mutex<TokenBucket>,
    gates: Mutex<BTreeMap<&'static str, ThrottleGate>>,
    counts: Mutex<CallCounts>,
    schedule: Mutex<ScheduleState>,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn bump(m: &mut BTreeMap<&'static str, u64>, api: &'static str) {
    *m.entry(api).or_default() += 1;
}

impl Pacer {
    /// Adds one to the `api` entry of the counter `which` picks.
    fn count(
        &self,
        which: impl FnOnce(&mut CallCounts) -> &mut BTreeMap<&'static str, u64>,
        api: &'static str,
    ) {
        bump(
            which(&mut self.counts.lock().unwrap_or_else(|p| p.into_inner())),
            api,
        );
    }

    pub fn new(clock: Arc<dyn Clock>, cfg: PacingConfig) -> Pacer {
        let bucket = TokenBucket::new(cfg.burst, cfg.per_second, clock.now());
        Pacer {
            clock,
            cfg,
            bucket: Mutex::new(bucket),
            gates: Mutex::new(BTreeMap::new()),
            counts: Mutex::new(CallCounts::default()),
            schedule: Mutex::new(ScheduleState::default()),
        }
    }

    fn lock_schedule(&self) -> std::sync::MutexGuard<'_, ScheduleState> {
        self.schedule.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cluster's EC2 schedule as this node sees it.
    pub fn schedule_status(&self) -> ScheduleStatus {
        let now = self.clock.now();
        let st = self.lock_schedule();
        ScheduleStatus {
            enabled: self.cfg.schedule.0.enabled(),
            place: self.cfg.schedule.0.describe(),
            problem: st.problem.as_ref().map(ToString::to_string),
            retry_in: st.aside_until.saturating_sub(now),
            waiting: st
                .waiting
                .iter()
                .filter(|(_, until)| **until > now)
                .map(|(api, until)| (*api, until.saturating_sub(now)))
                .collect(),
            outcomes: st.outcomes.clone(),
        }
    }

    /// The API whose call waits longest for its slot in the cluster's schedule, and how long still.
    pub fn schedule_wait(&self) -> Option<(&'static str, Duration)> {
        self.schedule_status()
            .waiting
            .into_iter()
            .max_by_key(|(_, d)| *d)
    }

    /// How long ago `api` was last seen congested: EC2 throttled it on this node, or the cluster's schedule
    /// made a call of it wait [`CONGESTED_WAIT`] or more (`None`: never).
    pub fn since_congested(&self, api: &str) -> Option<Duration> {
        let now = self.clock.now();
        let scheduled = self
            .lock_schedule()
            .congested
            .get(api)
            .map(|t| now.saturating_sub(*t));
        match (self.since_throttle(api), scheduled) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// How long a call of each of `apis` would wait for its slot in the cluster's EC2 schedule if it reserved
    /// now (`None`: no schedule in use). A wait of [`CONGESTED_WAIT`] or more is noted as congestion of that API
    /// ([`Pacer::since_congested`]).
    pub async fn schedule_peek(&self, apis: &[Api]) -> Option<Vec<Duration>> {
        let schedule = &self.cfg.schedule.0;
        if !schedule.enabled() || self.clock.now() < self.lock_schedule().aside_until {
            return None;
        }
        let asked: Vec<(&'static str, Limit)> = apis
            .iter()
            .map(|a| (a.name(), Limit::of(*a, self.cfg.schedule_share)))
            .collect();
        let result = schedule.peek(&asked).await;
        let now = self.clock.now();
        let mut st = self.lock_schedule();
        match result {
            Ok(waits) => {
                for ((api, _), wait) in asked.iter().zip(&waits) {
                    if *wait >= CONGESTED_WAIT {
                        st.congested.insert(api, now);
                    }
                }
                Some(waits)
            }
            Err(e) => {
                self.schedule_failed(&mut st, e, now);
                None
            }
        }
    }

    fn schedule_failed(&self, st: &mut ScheduleState, e: ScheduleError, now: Duration) {
        *st.outcomes.entry(e.outcome()).or_default() += 1;
        st.aside_until = now + e.retry_after();
        if matches!(e, ScheduleError::Contended { .. }) {
            // Busy, not broken: this one call goes under the node's own pacing, the next asks again.
            tracing::debug!(error = %e, "the cluster's EC2 schedule is contended: this call goes unscheduled");
        } else if st.problem.as_ref().map(ScheduleError::outcome) != Some(e.outcome()) {
            tracing::warn!(error = %e, retry_in = ?e.retry_after(),
                "the cluster's EC2 schedule is not available: pacing EC2 calls on this node alone");
        }
        st.problem = Some(e);
    }

    /// Reserves the call's slot in the cluster's EC2 schedule and waits for it (see [`crate::schedule`]). A
    /// failure sets the schedule aside for a while: the call goes on under the node's own pacing.
    async fn await_slot(&self, api: Api) {
        let schedule = &self.cfg.schedule.0;
        if !schedule.enabled() {
            return;
        }
        let name = api.name();
        {
            let mut st = self.lock_schedule();
            if self.clock.now() < st.aside_until {
                *st.outcomes.entry("skipped").or_default() += 1;
                return;
            }
        }
        let result = schedule
            .reserve(name, Limit::of(api, self.cfg.schedule_share))
            .await;
        let now = self.clock.now();
        let wait = {
            let mut st = self.lock_schedule();
            match result {
                Ok(wait) => {
                    match st.problem.take() {
                        Some(was) if !matches!(was, ScheduleError::Contended { .. }) => {
                            tracing::info!(previous = %was, schedule = %schedule.describe(),
                                "the cluster's EC2 schedule answers again");
                        }
                        _ => {}
                    }
                    let outcome = if wait.is_zero() { "reserved" } else { "waited" };
                    *st.outcomes.entry(outcome).or_default() += 1;
                    if wait >= CONGESTED_WAIT {
                        st.congested.insert(name, now);
                    }
                    if !wait.is_zero() {
                        let until = now + wait;
                        let slot = st.waiting.entry(name).or_default();
                        *slot = (*slot).max(until);
                        tracing::debug!(api = name, wait = ?wait, "waiting for the cluster's EC2 schedule");
                    }
                    wait
                }
                Err(e) => {
                    self.schedule_failed(&mut st, e, now);
                    Duration::ZERO
                }
            }
        };
        if wait.is_zero() {
            return;
        }
        self.clock.sleep(wait).await;
        let now = self.clock.now();
        let mut st = self.lock_schedule();
        if st.waiting.get(name).is_some_and(|until| *until <= now) {
            st.waiting.remove(name);
        }
    }

    /// Calls so far.
    pub fn counts(&self) -> CallCounts {
        self.counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How long `api`'s gate stays shut (zero: calls of it go at once, budget permitting).
    pub fn hold(&self, api: &str) -> Duration {
        let now = self.clock.now();
        self.lock_gates()
            .get(api)
            .map_or(Duration::ZERO, |g| g.hold(now))
    }

    /// How long ago EC2 last throttled a request of `api` from this node (`None`: never).
    pub fn since_throttle(&self, api: &str) -> Option<Duration> {
        let now = self.clock.now();
        self.lock_gates()
            .get(api)
            .and_then(ThrottleGate::last_throttle)
            .map(|t| now.saturating_sub(t))
    }

    /// The API whose gate is shut longest now, and for how long (`None`: EC2 is not throttling this node). A
    /// call waiting to retry after `RequestLimitExceeded` keeps its gate shut, so this is what an ADD that found
    /// no free address reports.
    pub fn throttling(&self) -> Option<(&'static str, Duration)> {
        let now = self.clock.now();
        self.lock_gates()
            .iter()
            .map(|(api, g)| (*api, g.hold(now)))
            .filter(|(_, hold)| !hold.is_zero())
            .max_by_key(|(_, hold)| *hold)
    }

    /// `api`'s gate (a default, open one if the API was never throttled).
    pub fn gate(&self, api: &str) -> ThrottleGate {
        self.lock_gates().get(api).cloned().unwrap_or_default()
    }

    fn lock_gates(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, ThrottleGate>> {
        self.gates.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `api`'s gate is open (it may be shut again meanwhile by a concurrent throttle).
    async fn pass_gate(&self, api: &'static str) {
        loop {
            let hold = self.hold(api);
            if hold.is_zero() {
                return;
            }
            self.clock.sleep(hold).await;
        }
    }

    fn on_throttle(&self, api: &'static str, sent_at: Duration) -> Duration {
        let now = self.clock.now();
        let hold = self.lock_gates().entry(api).or_default().throttled(
            &self.cfg.congestion,
            sent_at,
            now,
            rand::random::<f64>(),
        );
        // The account is saturated: no burst from this node when the gate reopens.
        self.bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(now);
        self.count(|c| &mut c.throttled, api);
        hold
    }

    fn on_success(&self, api: &'static str) {
        let now = self.clock.now();
        if let Some(g) = self.lock_gates().get_mut(api) {
            g.succeeded(&self.cfg.congestion, now, rand::random::<f64>());
        }
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

    /// One call of `api` under the pacing discipline of the module docs; `call` makes one attempt.
    pub async fn paced<T>(&self, api: Api, call: Call<'_, T>) -> Result<T, Ec2Error> {
        let api_id = api.name();
        let mut attempt = 1;
        let started = self.clock.now();
        loop {
            self.pass_gate(api_id).await;
            self.take_token(api_id).await;
            self.await_slot(api).await;
            let sent_at = self.clock.now();
            match call().await {
                Ok(v) => {
                    self.on_success(api_id);
                    return Ok(v);
                }
                Err(e @ Ec2Error::Throttled { .. }) => {
                    let hold = self.on_throttle(api_id, sent_at);
                    let now = self.clock.now();
                    let fail_fast = FAIL_FAST_ON_THROTTLE.try_with(|f| *f).unwrap_or(false);
                    if fail_fast || now.saturating_sub(started) + hold >= self.cfg.throttle_budget {
                        return Err(e);
                    }
                    tracing::debug!(api = api_id, retry_in = ?hold, "EC2 is throttling this API; the node slows down");
                    self.count(|c| &mut c.retried, api_id);
                }
                Err(e) if e.is_retryable() && attempt < self.cfg.max_attempts => {
                    let wait = self.cfg.backoff.delay(attempt);
                    tracing::debug!(api = api_id, error = %e, attempt, retry_in = ?wait, "EC2 call failed; retrying");
                    self.count(|c| &mut c.retried, api_id);
                    attempt += 1;
                    self.clock.sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Ec2Layer for Pacer {
    fn around<'a, T: Send + 'a>(&'a self, api: Api, call: Call<'a, T>) -> Attempt<'a, T> {
        Box::pin(self.paced(api, call))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ec2_api::clock::TokioClock;
    use ec2_api::Ec2;
    use ec2_sim::{NoHotplug, SimEc2, SimSpec};

    /// A simulated m5.large on tokio's clock (paused in these tests), and that clock.
    async fn sim_on_tokio_clock() -> (Arc<dyn Clock>, SimEc2) {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::default());
        let mut spec = SimSpec::new("m5.large");
        spec.clock = Arc::clone(&clock);
        let sim = SimEc2::launch(spec, Arc::new(NoHotplug))
            .await
            .expect("sim");
        (clock, sim)
    }

    fn pace(inner: Arc<dyn ec2_api::Ec2>, clock: Arc<dyn Clock>, cfg: PacingConfig) -> PacedEc2 {
        PacedEc2::new(Pacer::new(clock, cfg), inner)
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
            assert_eq!(b.ceiling(attempt), full);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        assert_eq!(
            b.ceiling(0),
            Duration::from_secs(1),
            "attempt 0 is the first"
        );
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(8));
    }

    fn cfg() -> CongestionConfig {
        CongestionConfig {
            initial: Duration::from_secs(2),
            growth: 2.0,
            max: Duration::from_secs(60),
            episode_max: Duration::ZERO,
            recovery: 0.5,
        }
    }

    #[test]
    fn early_in_an_episode_the_window_grows_past_max_and_late_it_is_capped_at_max() {
        let c = CongestionConfig {
            initial: Duration::from_secs(8),
            growth: 4.0,
            max: Duration::from_secs(60),
            episode_max: Duration::from_secs(300),
            recovery: 0.5,
        };
        let mut g = ThrottleGate::default();
        let t0 = Duration::from_secs(1000);
        g.throttled(&c, t0, t0, 0.0);
        assert_eq!(g.window(), Duration::from_secs(8));
        let t = t0 + Duration::from_secs(1);
        g.throttled(&c, t, t, 0.0);
        assert_eq!(g.window(), Duration::from_secs(32));
        let t = t0 + Duration::from_secs(2);
        g.throttled(&c, t, t, 0.0);
        assert_eq!(g.window(), Duration::from_secs(128), "past max, early on");
        let t = t0 + Duration::from_secs(100);
        g.throttled(&c, t, t, 0.0);
        assert_eq!(
            g.window(),
            Duration::from_secs(200),
            "episode_max less the episode's age"
        );
        // Late in the episode: capped at max (a throttle never widens past the cap in force).
        let t = t0 + Duration::from_secs(290);
        g.throttled(&c, t, t, 0.0);
        assert_eq!(g.window(), Duration::from_secs(60));
        // Successes close the window: the next throttle starts a new episode, which may widen far again.
        for _ in 0..10 {
            g.succeeded(&c, t, 0.0);
        }
        assert_eq!(g.window(), Duration::ZERO);
        let later = t + Duration::from_secs(10);
        for i in 0..3 {
            let at = later + Duration::from_secs(i);
            g.throttled(&c, at, at, 0.0);
        }
        assert_eq!(g.window(), Duration::from_secs(128));
    }

    #[test]
    fn gate_widens_per_throttle_up_to_the_cap_and_holds_a_jittered_part_of_it() {
        let c = cfg();
        let mut g = ThrottleGate::default();
        assert_eq!(
            g.hold(Duration::ZERO),
            Duration::ZERO,
            "a fresh gate is open"
        );
        let mut now = Duration::from_secs(100);
        let mut expected = Duration::from_secs(2);
        for _ in 0..10 {
            // Full jitter: the hold is the jitter's share of the window.
            let hold = g.throttled(&c, now, now, 0.5);
            assert_eq!(g.window(), expected);
            assert_eq!(hold, expected / 2);
            assert_eq!(g.hold(now), hold);
            now += hold;
            assert_eq!(g.hold(now), Duration::ZERO, "open once the hold has passed");
            expected = (expected * 2).min(Duration::from_secs(60));
        }
        assert_eq!(g.window(), Duration::from_secs(60), "capped");
        assert_eq!(g.throttles(), 10);
        // Jitter 0 and (almost) 1 bound the hold.
        assert_eq!(g.throttled(&c, now, now, 0.0), Duration::ZERO);
        let near_full = g.throttled(&c, now, now, 0.999);
        assert!(near_full > Duration::from_secs(59) && near_full <= Duration::from_secs(60));
    }

    #[test]
    fn concurrent_throttles_widen_the_window_once() {
        let c = cfg();
        let mut g = ThrottleGate::default();
        let t = Duration::from_secs(10);
        // Three requests sent at t, all throttled: one congestion signal.
        g.throttled(&c, t, t, 0.1);
        g.throttled(&c, t, t + Duration::from_millis(5), 0.1);
        g.throttled(&c, t, t + Duration::from_millis(9), 0.1);
        assert_eq!(g.window(), Duration::from_secs(2));
        assert_eq!(g.throttles(), 3);
        // A request sent after the widening and throttled again is a new signal.
        let later = t + Duration::from_secs(1);
        g.throttled(&c, later, later, 0.1);
        assert_eq!(g.window(), Duration::from_secs(4));
    }

    #[test]
    fn a_later_throttle_never_shortens_a_longer_hold() {
        let c = cfg();
        let mut g = ThrottleGate::default();
        let t = Duration::from_secs(10);
        g.throttled(&c, t, t, 0.9); // window 2 s, open at t + 1.8 s
        let again = t + Duration::from_millis(100);
        g.throttled(&c, t, again, 0.0); // same signal, zero jitter
        assert_eq!(g.hold(again), Duration::from_millis(1700));
    }

    #[test]
    fn successes_shrink_the_window_slowly_then_close_it() {
        let c = cfg();
        let mut g = ThrottleGate::default();
        let mut now = Duration::ZERO;
        for _ in 0..5 {
            g.throttled(&c, now, now, 0.0);
            now += Duration::from_secs(1);
        }
        assert_eq!(g.window(), Duration::from_secs(32));
        g.succeeded(&c, now, 0.5);
        assert_eq!(g.window(), Duration::from_secs(16));
        // The next call of this API waits its turn behind a random part of the remaining window.
        assert_eq!(g.hold(now), Duration::from_secs(8));
        for _ in 0..4 {
            g.succeeded(&c, now, 0.0);
        }
        assert_eq!(g.window(), Duration::from_secs(1), "16 -> 8 -> 4 -> 2 -> 1");
        g.succeeded(&c, now, 0.0);
        assert_eq!(g.window(), Duration::ZERO, "closed below initial / 2");
        // Open and quiet: a success on a closed gate changes nothing.
        let later = now + Duration::from_secs(30);
        g.succeeded(&c, later, 0.9);
        assert_eq!(g.hold(later), Duration::ZERO);
        assert_eq!(g.window(), Duration::ZERO);
    }

    #[tokio::test]
    async fn throttled_calls_wait_at_the_shared_gate_and_are_retried_without_resending_anything_else(
    ) {
        let (sim, clock) = ec2_sim::on_manual_clock("m5.large", |s| s.throttle = None).await;
        let paced = pace(
            Arc::new(sim.clone()),
            Arc::new(clock.clone()),
            PacingConfig {
                congestion: cfg(),
                ..PacingConfig::default()
            },
        );
        let iid = sim.instance_id();
        sim.inject_faults(ec2_sim::Fault::Throttle, Some("DescribeInstances"), 5);
        let start = clock.now();
        paced
            .describe_instance(&iid)
            .await
            .expect("retried through the gate");
        let c = paced.counts();
        assert_eq!(c.sent.get("DescribeInstances"), Some(&6));
        assert_eq!(c.throttled.get("DescribeInstances"), Some(&5));
        assert_eq!(c.total_throttled(), 5);
        // Five throttles widened the window to 32 s; the success halved it. Another API is not held back.
        assert_eq!(
            paced.gate("DescribeInstances").window(),
            Duration::from_secs(16)
        );
        assert_eq!(paced.hold("DescribeSubnets"), Duration::ZERO);
        assert!(clock.now() > start, "the node waited between the attempts");
        // Only the throttled API was sent again.
        assert_eq!(sim.calls().len(), 1, "{:?}", sim.calls());

        // Throttled past the budget: the error reaches the caller, who can ask how long the gate stays shut.
        let short = pace(
            Arc::new(sim.clone()),
            Arc::new(clock.clone()),
            PacingConfig {
                throttle_budget: Duration::from_secs(30),
                ..PacingConfig::default()
            },
        );
        sim.inject_faults(ec2_sim::Fault::Throttle, Some("DescribeInstances"), 1000);
        let err = short.describe_instance(&iid).await.expect_err("budget");
        assert!(matches!(err, Ec2Error::Throttled { .. }), "{err}");
        let sent = short
            .counts()
            .sent
            .get("DescribeInstances")
            .copied()
            .unwrap_or(0);
        assert!((2..20).contains(&sent), "a bounded number of sends: {sent}");
    }

    /// `nodes` pacers (each a node with its own bucket and gates) calling DescribeInstances `calls` times each,
    /// all at once, against one simulated account of EC2's default size; with `schedule`, all reserve their slots
    /// in it. Returns the requests EC2 throttled and the virtual time the last call took.
    async fn cluster_through(
        schedule: Option<crate::schedule::MemorySchedule>,
        nodes: usize,
        calls: usize,
    ) -> (u64, Duration) {
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::default());
        let mut spec = SimSpec::new("m5.large");
        spec.clock = Arc::clone(&clock);
        spec.throttle = Some(ec2_sim::ThrottleSpec::default());
        let sim = SimEc2::launch(spec, Arc::new(NoHotplug))
            .await
            .expect("sim");
        let iid = sim.instance_id();
        let start = clock.now();
        let mut tasks = Vec::new();
        for n in 0..nodes {
            let pacing = PacingConfig {
                burst: 20,
                per_second: 5.0,
                schedule: match &schedule {
                    Some(s) => SharedSchedule(Arc::new(s.clone())),
                    None => SharedSchedule::default(),
                },
                schedule_share: Share {
                    rate: 0.95,
                    burst: 0.9,
                },
                ..PacingConfig::default()
            };
            let paced = pace(Arc::new(sim.clone()), Arc::clone(&clock), pacing);
            let iid = iid.clone();
            let clock = Arc::clone(&clock);
            tasks.push(tokio::spawn(async move {
                // Nodes start 100 ms apart.
                clock.sleep(Duration::from_millis(100 * n as u64)).await;
                for _ in 0..calls {
                    paced.describe_instance(&iid).await.expect("describe");
                }
                paced.counts().total_throttled()
            }));
        }
        let mut throttled = 0;
        for t in tasks {
            throttled += t.await.expect("node");
        }
        (throttled, clock.now() - start)
    }

    #[tokio::test(start_paused = true)]
    async fn nodes_sharing_the_cluster_schedule_are_not_throttled_by_an_account_of_its_size() {
        // 30 nodes × 10 calls within 3 s: 300 calls against a bucket of 100 refilled at 20/s.
        let (alone, _) = cluster_through(None, 30, 10).await;
        assert!(alone > 0, "without the schedule the account throttles");
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::default());
        let schedule = crate::schedule::MemorySchedule::new(clock, Duration::from_millis(8));
        let (throttled, took) = cluster_through(Some(schedule.clone()), 30, 10).await;
        assert_eq!(
            throttled, 0,
            "the shared schedule kept the cluster within the account's bucket"
        );
        // 90 at once, the other 210 at 19/s: about 11 s, not the minutes of backing off.
        assert!(
            took >= Duration::from_secs(10) && took < Duration::from_secs(14),
            "{took:?}"
        );
        assert!(schedule.stats().conflicts > 0, "reservers did collide");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_schedule_never_stops_a_call_and_status_says_why() {
        let (sim, _) = ec2_sim::on_manual_clock("m5.large", |s| s.throttle = None).await;
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::default());
        let schedule =
            crate::schedule::MemorySchedule::new(Arc::clone(&clock), Duration::from_millis(5));
        *crate::sync::lock(&schedule.fail) = Some(ScheduleError::Forbidden {
            lease: "kube-system/aws-cni-ec2-schedule".into(),
            message: "leases is forbidden".into(),
        });
        let paced = pace(
            Arc::new(sim.clone()),
            Arc::clone(&clock),
            PacingConfig {
                schedule: SharedSchedule(Arc::new(schedule.clone())),
                ..PacingConfig::default()
            },
        );
        let iid = sim.instance_id();
        paced.describe_instance(&iid).await.expect("sent anyway");
        paced.describe_instance(&iid).await.expect("sent anyway");
        let st = paced.schedule_status();
        assert!(st.enabled);
        assert!(
            st.problem.as_deref().is_some_and(|p| p.contains("403")),
            "{st:?}"
        );
        assert!(st.describe().starts_with("not in use"), "{}", st.describe());
        assert_eq!(st.outcomes.get("forbidden"), Some(&1));
        assert_eq!(
            st.outcomes.get("skipped"),
            Some(&1),
            "set aside, not asked again at once"
        );
        assert_eq!(paced.counts().sent.get("DescribeInstances"), Some(&2));
        // The lease becomes writable: after the pause the schedule is in use again.
        *crate::sync::lock(&schedule.fail) = None;
        clock.sleep(Duration::from_secs(61)).await;
        paced.describe_instance(&iid).await.expect("describe");
        let st = paced.schedule_status();
        assert_eq!(st.problem, None);
        assert_eq!(st.outcomes.get("reserved"), Some(&1));
        assert!(schedule.tat("DescribeInstances").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_waits_for_its_slot_and_status_says_so() {
        let (clock, sim) = sim_on_tokio_clock().await;
        let schedule =
            crate::schedule::MemorySchedule::new(Arc::clone(&clock), Duration::from_millis(5));
        // Another node's reservations reach 30 s ahead (more than the bucket's tolerance).
        let burst_s = Limit::of(Api::DescribeInstances, Share::default()).burst as f64
            / Limit::of(Api::DescribeInstances, Share::default()).per_second;
        let ahead = Duration::from_secs(30) + Duration::from_secs_f64(burst_s);
        schedule.set_tat(
            "DescribeInstances",
            (clock.wall() + ahead).as_micros() as u64,
        );
        let paced = Arc::new(pace(
            Arc::new(sim.clone()),
            Arc::clone(&clock),
            PacingConfig {
                schedule: SharedSchedule(Arc::new(schedule.clone())),
                ..PacingConfig::default()
            },
        ));
        let start = clock.now();
        let call = {
            let paced = Arc::clone(&paced);
            let iid = sim.instance_id();
            tokio::spawn(async move { paced.describe_instance(&iid).await })
        };
        clock.sleep(Duration::from_secs(10)).await;
        assert_eq!(
            sim.calls().get("DescribeInstances"),
            None,
            "nothing sent before the slot"
        );
        let (api, left) = paced.schedule_wait().expect("waiting");
        assert_eq!(api, "DescribeInstances");
        assert!(
            left > Duration::from_secs(15) && left <= Duration::from_secs(21),
            "{left:?}"
        );
        assert!(paced
            .schedule_status()
            .describe()
            .contains("waiting for the cluster's EC2 schedule"));
        call.await.expect("task").expect("describe");
        let took = clock.now() - start;
        assert!(
            took >= Duration::from_secs(29) && took < Duration::from_secs(32),
            "{took:?}"
        );
        assert_eq!(sim.calls().get("DescribeInstances"), Some(&1));
        assert_eq!(paced.schedule_wait(), None);
        assert!(paced.since_congested("DescribeInstances").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn paced_calls_wait_for_tokens_and_retry_retryable_errors() {
        let (clock, sim) = sim_on_tokio_clock().await;
        let paced = pace(
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

        sim.inject_faults(ec2_sim::Fault::ServerError, Some("DescribeInstances"), 2);
        paced
            .describe_instance(&iid)
            .await
            .expect("retried past 5xx");
        assert_eq!(paced.counts().retried.get("DescribeInstances"), Some(&2));

        sim.inject_faults(ec2_sim::Fault::ServerError, Some("DescribeInstances"), 10);
        let err = paced.describe_instance(&iid).await.expect_err("gives up");
        assert!(err.is_retryable());
    }
}
