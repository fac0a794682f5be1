//! The pool task: the one EC2 actor of the node, which keeps addresses ready.
//!
//! [`Node::run_pool`] wakes on every ADD and DEL (after [`POOL_DEBOUNCE`], so a burst is one decision and one EC2
//! call) and every interval, asks the pure policy ([`crate::core::pool::decide()`]) what to do with the counts
//! (`Node::rooms`) and the [`Outlook`] (waiting ADDs, the release hysteresis' floor, whether a shrink is due),
//! and carries out one step at a time through the ENI lifecycle ([`super::enis`]). Pool steps, reconciliation and
//! the leaked-ENI cleanup are serialised (`Node::actor`), and every EC2 call goes through
//! [`crate::ratelimit::PacedEc2`]. EC2 errors are backed off with jitter; a throttled API waits for its gate.
//!
//! Release hysteresis (`AWS_CNI_POOL_RELEASE_DELAY`): every pool step samples the pool's need into a
//! [`crate::core::pool::HighWater`], and nothing is given back below its peak over the delay. Shrinking is
//! rate-limited (one release per [`SHRINK_INTERVAL`], anchor `decreaseIPPoolInterval`). After
//! `InsufficientFreeAddressesInSubnet` the pool does not try to grow for [`SUBNET_EXHAUSTED_BACKOFF`].
//!
//! **Prefix fallback.** In prefix mode, `InsufficientCidrBlocks` (the subnet has free addresses but no aligned
//! free /28, anchor #2749/#3410) does not stop growth: the same step is carried out at once with secondary IPs
//! (on the same ENI's free slots, or a new ENI created with secondary IPs), and the node stays in that fallback
//! ([`AddressMode::PrefixFallback`]: metrics, `ipamd status`, the ADD failure messages say so). Every
//! [`PREFIX_RETRY_INTERVAL`] the next growth tries prefixes again; when EC2 hands out a /28 the node is back in
//! prefix mode, and the policy gives back the free secondary IPs it no longer needs. ENIs holding both kinds are
//! ordinary to the datastore; after a restart EC2's description brings both back, and the pods' addresses come
//! back from the checkpoint whichever kind they are. Only when secondary IPs fail too is growth held for
//! [`SUBNET_EXHAUSTED_BACKOFF`].
//!
//! **Throttled Assign.** Growth by AssignPrivateIpAddresses, when a new ENI could serve instead, does not wait at
//! the pacer's gate after `RequestLimitExceeded` ([`crate::ratelimit::FAIL_FAST_ON_THROTTLE`]): the same step
//! creates an ENI with the same addresses (CreateNetworkInterface, another API with its own budget), and while
//! Assign's gate stays shut growth keeps taking new ENIs, as the anchor does. With an ENI slot left (two lanes)
//! that create does not wait at its own gate either: a throttle ends the step, and the pool task comes back when
//! the first of the two gates opens and takes that API. A node is so never queued behind one API's gate while
//! the other's tokens go unused (prefix mode, 2,000 nodes: every pod placed after ~340 s instead of ~390 s, the
//! two APIs' refills together serving the cluster).
//!
//! **Demand first** (cluster cold start). Growth no ADD waits for (the free addresses already cover every waiting
//! ADD) serves only the warm target. While its API is throttled on this node (the gate shut, a throttle less than
//! [`WARM_WAIT_AFTER_THROTTLE`] ago, or its own throttled attempt's wait, doubling to [`WARM_WAIT_MAX`]) such
//! growth waits and leaves the account's tokens to nodes whose pods wait; when it goes, a throttle fails it at
//! once (no wait at the gate, no move to another API). So a node's startup fill, when the account is saturated,
//! does not queue for minutes before the daemon serves: the pods' ADDs then wait in the daemon and the next
//! growth is sized from them plus the warm target (one call for all). With WARM_ENI_TARGET=1 and 30 pods on an
//! m5.xlarge this leaves two CreateNetworkInterface per node while throttled (the refill floor's count) instead of
//! three. Without throttling nothing changes: warm targets are kept as the anchor keeps them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::reconcile::Timers;
use super::Node;
use crate::core::datastore::PoolStats;
use crate::core::pool::{decide, Decision, EniRoom, Outlook, PREFIX_SIZE};
use crate::sync::lock;
use ec2_api::{Ec2Error, IpRequest};

/// Minimum time between two shrinking steps (anchor `decreaseIPPoolInterval`).
pub const SHRINK_INTERVAL: Duration = Duration::from_secs(30);

/// No growth this long after the subnet ran out (anchor `insufficientCidrErrorCooldown`).
pub const SUBNET_EXHAUSTED_BACKOFF: Duration = Duration::from_secs(120);

/// In the prefix fallback, how often growth tries /28 prefixes again (the anchor's `insufficientCidrErrorCooldown`).
pub const PREFIX_RETRY_INTERVAL: Duration = Duration::from_secs(120);

/// How the node gets addresses now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressMode {
    /// Secondary IPs (prefix delegation off, or not a Nitro instance).
    SecondaryIp,
    /// /28 prefixes.
    Prefix,
    /// Prefix delegation is on, but the subnet had no free /28: growing with secondary IPs.
    PrefixFallback,
}

impl AddressMode {
    /// As metrics and `ipamd status` name it.
    pub const fn as_str(self) -> &'static str {
        match self {
            AddressMode::SecondaryIp => "secondary-ip",
            AddressMode::Prefix => "prefix",
            AddressMode::PrefixFallback => "prefix-fallback-secondary-ip",
        }
    }
}

/// The prefix fallback in force (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fallback {
    /// When the subnet last said it has no free /28.
    pub(crate) since: Duration,
    /// When growth next tries prefixes.
    pub(crate) retry_at: Duration,
}

fn no_free_cidr_block(e: &Ec2Error) -> bool {
    matches!(e, Ec2Error::SubnetExhausted { code, .. } if code == "InsufficientCidrBlocks")
}

/// After EC2 throttled an API on this node, growth of that API that only serves a warm target (no ADD waiting)
/// waits at least this long since the last throttle (see the module docs). A cluster's cold start keeps the
/// account saturated for longer than ten minutes (2,000 nodes: about 13 in the scale-up benchmark), and nodes
/// served early whose hold ran out at ten minutes took about 200 of the account's CreateNetworkInterface tokens
/// for warm ENIs from nodes whose pods still waited. Pods arriving meanwhile still get addresses: their waiting
/// ADDs are demand, which is not held.
pub const WARM_WAIT_AFTER_THROTTLE: Duration = Duration::from_secs(1800);

/// How long an ADD that failed for want of an address counts as demand (kubelet retries a failed sandbox within
/// seconds).
pub const DEMAND_MEMORY: Duration = Duration::from_secs(10);

/// The longest a warm-only growth waits after its own attempt was throttled (the wait doubles per throttle).
pub const WARM_WAIT_MAX: Duration = Duration::from_secs(3600);

/// The wait of warm-only growth after its own attempt was throttled: [`WARM_WAIT_AFTER_THROTTLE`] doubling per
/// throttle up to [`WARM_WAIT_MAX`], equal jitter.
const WARM_BACKOFF: crate::ratelimit::Backoff = crate::ratelimit::Backoff {
    base: WARM_WAIT_AFTER_THROTTLE,
    cap: WARM_WAIT_MAX,
};

/// Warm-only growth held back while its API is throttled (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WarmHold {
    /// No warm-only growth before this time.
    pub(crate) until: Duration,
    /// Throttled warm-only attempts since the last success (zero: none).
    pub(crate) throttles: u32,
}

/// The API a growth step calls first for its addresses.
fn growth_api(d: &Decision) -> Option<ec2_api::Api> {
    match d {
        Decision::AssignIps { .. } | Decision::AssignPrefixes { .. } => {
            Some(ec2_api::Api::AssignPrivateIpAddresses)
        }
        Decision::AttachEni { .. } => Some(ec2_api::Api::CreateNetworkInterface),
        _ => None,
    }
}

/// Growth for waiting pods moves from AssignPrivateIpAddresses to a new ENI when the cluster's EC2 schedule has
/// a CreateNetworkInterface slot at least this much sooner (a new ENI costs two more calls, Attach and Modify).
pub const EARLIER_SLOT_MARGIN: Duration = Duration::from_secs(1);

/// How long the pool task lets a burst of ADDs and DELs gather after being woken, so the burst is one decision
/// (and one EC2 call) rather than one per request.
pub const POOL_DEBOUNCE: Duration = Duration::from_millis(20);

impl Node {
    pub(crate) fn rooms(&self, now: Duration) -> Vec<EniRoom> {
        let slots_per_eni = self.policy().slots_per_eni();
        let ds = lock(&self.ds);
        let cooldown = ds.cooldown();
        ds.enis()
            .map(|e| {
                let prefixes = e.prefixes().count();
                let ips = e.ip_count();
                let secondaries = ips.saturating_sub(prefixes * PREFIX_SIZE as usize);
                if e.excluded_for_pods {
                    // Custom networking's primary ENI: full as far as the pool is concerned, never drained.
                    return EniRoom {
                        eni_id: e.id.clone(),
                        device_number: e.device_number,
                        ips: u32::try_from(e.assigned_count()).unwrap_or(u32::MAX),
                        slots: slots_per_eni,
                        is_primary: e.is_primary,
                        assigned: u32::try_from(e.assigned_count()).unwrap_or(u32::MAX),
                        age: now.saturating_sub(e.attached_at),
                        ..EniRoom::default()
                    };
                }
                EniRoom {
                    eni_id: e.id.clone(),
                    device_number: e.device_number,
                    ips: u32::try_from(ips).unwrap_or(u32::MAX),
                    slots: u32::try_from(prefixes + secondaries).unwrap_or(u32::MAX),
                    is_primary: e.is_primary,
                    assigned: u32::try_from(e.assigned_count()).unwrap_or(u32::MAX),
                    cooling: u32::try_from(e.cooldown_count(now, cooldown)).unwrap_or(u32::MAX),
                    releasable_ips: e.releasable_ips(now, cooldown),
                    releasable_prefixes: e.releasable_prefixes(now, cooldown),
                    age: now.saturating_sub(e.attached_at),
                }
            })
            .collect()
    }

    /// What the policy needs beyond the counts: waiting ADDs, the release hysteresis' floor (sampling the need
    /// now), and whether the shrink interval has passed.
    pub(super) fn outlook(&self, now: Duration, stats: &PoolStats) -> Outlook {
        let waiting = u32::try_from(self.adds.len()).unwrap_or(u32::MAX);
        let need = self.policy().need(stats, waiting);
        let freeze_enis = self.enis_frozen();
        let mut st = lock(&self.status);
        st.high_water.record(now, need);
        Outlook {
            waiting,
            keep: st.high_water.peak(now),
            may_shrink: st
                .last_shrink
                .is_none_or(|t| now.saturating_sub(t) >= SHRINK_INTERVAL),
            node_max_pods: self.node_cap.get(),
            freeze_enis,
            prefix_fallback: st.fallback.is_some_and(|f| now < f.retry_at),
        }
    }

    /// How the node gets addresses now (see the module docs).
    pub fn address_mode(&self) -> AddressMode {
        if !self.policy().prefix_delegation {
            AddressMode::SecondaryIp
        } else if lock(&self.status).fallback.is_some() {
            AddressMode::PrefixFallback
        } else {
            AddressMode::Prefix
        }
    }

    /// Carries out a growth or shrink step in EC2.
    async fn carry_out(&self, decision: &Decision) -> Result<(), Ec2Error> {
        match decision {
            Decision::Hold | Decision::AtEniLimit { .. } | Decision::EniChangesPaused { .. } => {
                Ok(())
            }
            Decision::AssignIps { eni_id, count } => {
                self.assign(eni_id, IpRequest::Secondary(*count)).await
            }
            Decision::AssignPrefixes { eni_id, count } => {
                self.assign(eni_id, IpRequest::Prefixes(*count)).await
            }
            // Custom networking without a usable ENIConfig: no ENI, anywhere (see super::custom_net); the problem
            // stays until a placement succeeds (or the ENIConfig watch clears it).
            Decision::AttachEni { request } => match self.placement().await {
                Ok(at) => {
                    self.set_eni_config_blocked(None);
                    self.attach_eni(*request, at).await
                }
                Err(problem) => {
                    self.set_eni_config_blocked(Some(problem));
                    Ok(())
                }
            },
            Decision::ReleaseIps { eni_id, ips } => self.release(eni_id, ips, &[]).await,
            Decision::ReleasePrefixes { eni_id, prefixes } => {
                self.release(eni_id, &[], prefixes).await
            }
            Decision::FreeEni { eni_id } => self.free_eni(eni_id).await,
        }
    }

    /// A growth step with the prefix fallback: prefixes refused for want of a free /28 are replaced at once by
    /// secondary IPs (see the module docs). Returns the decision carried out.
    async fn grow_with_fallback(&self, decision: Decision) -> (Decision, Result<(), Ec2Error>) {
        let wants_prefixes = matches!(
            decision,
            Decision::AssignPrefixes { .. }
                | Decision::AttachEni {
                    request: IpRequest::Prefixes(_)
                }
        );
        let result = self.carry_out(&decision).await;
        let now = self.deps.clock.now();
        match &result {
            Ok(()) if wants_prefixes => {
                if let Some(f) = lock(&self.status).fallback.take() {
                    tracing::info!(
                        fell_back_for = ?now.saturating_sub(f.since),
                        "the subnet has free /28 blocks again: back to prefix delegation"
                    );
                }
            }
            Err(e) if wants_prefixes && no_free_cidr_block(e) => {
                {
                    let mut st = lock(&self.status);
                    if st.fallback.is_none() {
                        tracing::warn!(error = %e,
                            "no free /28 in the subnet: falling back to secondary IPs until prefixes are free again");
                    }
                    st.fallback = Some(Fallback {
                        since: st.fallback.map_or(now, |f| f.since),
                        retry_at: now + PREFIX_RETRY_INTERVAL,
                    });
                }
                let again = self.next_decision();
                if matches!(
                    again,
                    Decision::AssignIps { .. }
                        | Decision::AttachEni {
                            request: IpRequest::Secondary(_)
                        }
                ) {
                    let res = self.carry_out(&again).await;
                    return (again, res);
                }
                return (again, Ok(()));
            }
            _ => {}
        }
        (decision, result)
    }

    /// What the pool would do now (no EC2 call).
    pub fn next_decision(&self) -> Decision {
        let now = self.deps.clock.now();
        let stats = self.stats();
        let outlook = self.outlook(now, &stats);
        decide(&self.policy(), &stats, &self.rooms(now), &outlook)
    }

    /// Addresses the release hysteresis keeps now (the peak need over `AWS_CNI_POOL_RELEASE_DELAY`).
    pub fn pool_floor(&self) -> u32 {
        let now = self.deps.clock.now();
        lock(&self.status).high_water.peak(now)
    }

    /// Whether growth by AssignPrivateIpAddresses can move to a new ENI (see [`Node::reroute_throttled`]).
    fn may_reroute(&self) -> bool {
        let create = ec2_api::Api::CreateNetworkInterface.name();
        let enis = u32::try_from(self.stats().enis).unwrap_or(u32::MAX);
        enis < self.policy().max_enis && self.ec2.hold(create).is_zero()
    }

    /// Growth by AssignPrivateIpAddresses while EC2 throttles that API goes to another API that serves: a new ENI
    /// created with the same addresses (CreateNetworkInterface carries them), when an ENI slot is left and
    /// CreateNetworkInterface is not throttled too; as the anchor does when its Assign fails.
    fn reroute_throttled(&self, decision: Decision, throttled: bool) -> Decision {
        let (count, prefixes) = match &decision {
            Decision::AssignIps { count, .. } => (*count, false),
            Decision::AssignPrefixes { count, .. } => (*count, true),
            _ => return decision,
        };
        let assign = ec2_api::Api::AssignPrivateIpAddresses.name();
        let assign_shut = throttled || !self.ec2.hold(assign).is_zero();
        if !assign_shut || !self.may_reroute() {
            return decision;
        }
        let request = self.new_eni_request(count, prefixes);
        tracing::info!(
            ?request,
            "AssignPrivateIpAddresses is throttled: growing with a new ENI instead"
        );
        Decision::AttachEni { request }
    }

    /// The request of a new ENI that brings what an Assign of `count` would.
    fn new_eni_request(&self, count: u32, prefixes: bool) -> IpRequest {
        let count = count.min(self.policy().slots_per_eni()).max(1);
        if prefixes {
            IpRequest::Prefixes(count)
        } else {
            IpRequest::Secondary(count)
        }
    }

    /// Whether the cluster's EC2 schedule ([`crate::schedule`]) would make a call of `api` wait
    /// [`crate::schedule::CONGESTED_WAIT`] or more now (one read of the schedule; noted as congestion, so
    /// warm-only growth then waits as after a throttle).
    async fn schedule_congested(&self, api: ec2_api::Api) -> bool {
        self.ec2.schedule_peek(&[api]).await.is_some_and(|w| {
            w.first()
                .is_some_and(|d| *d >= crate::schedule::CONGESTED_WAIT)
        })
    }

    /// Growth by AssignPrivateIpAddresses for waiting pods goes to a new ENI when the cluster's EC2 schedule
    /// has a CreateNetworkInterface slot sooner (one read of the schedule): the two APIs' buckets together serve
    /// the cluster, as [`Node::reroute_throttled`] does after a throttle.
    async fn reroute_to_earlier_slot(&self, decision: Decision) -> Decision {
        let (count, prefixes) = match &decision {
            Decision::AssignIps { count, .. } => (*count, false),
            Decision::AssignPrefixes { count, .. } => (*count, true),
            _ => return decision,
        };
        if !self.may_reroute() {
            return decision;
        }
        let assign = ec2_api::Api::AssignPrivateIpAddresses;
        let create = ec2_api::Api::CreateNetworkInterface;
        let Some(waits) = self.ec2.schedule_peek(&[assign, create]).await else {
            return decision;
        };
        let (Some(a), Some(c)) = (waits.first(), waits.get(1)) else {
            return decision;
        };
        if *c + EARLIER_SLOT_MARGIN >= *a {
            return decision;
        }
        let request = self.new_eni_request(count, prefixes);
        tracing::debug!(?request, assign_wait = ?a, create_wait = ?c,
            "the cluster's EC2 schedule has a CreateNetworkInterface slot sooner: growing with a new ENI");
        Decision::AttachEni { request }
    }

    /// [`Node::grow_with_fallback`] whose calls fail at once when EC2 throttles them
    /// ([`crate::ratelimit::FAIL_FAST_ON_THROTTLE`]) instead of waiting at the gate to retry: for a caller with
    /// something better to do than wait (another API, or nothing for now).
    async fn grow_failing_fast(&self, decision: Decision) -> (Decision, Result<(), Ec2Error>) {
        crate::ratelimit::FAIL_FAST_ON_THROTTLE
            .scope(true, self.grow_with_fallback(decision))
            .await
    }

    /// Whether growth has two APIs to choose from: an ENI slot is left, so addresses an Assign would bring can
    /// come with a new ENI instead (and the other way round).
    fn two_lanes(&self) -> bool {
        let enis = u32::try_from(self.stats().enis).unwrap_or(u32::MAX);
        enis < self.policy().max_enis
    }

    /// How long a growth step throttled on `api` waits before the next: with two lanes, until the first of
    /// AssignPrivateIpAddresses' and CreateNetworkInterface's gates opens (the next step takes that one).
    fn throttled_wait(&self, api: &str) -> Duration {
        let hold = self.ec2.hold(api);
        let lanes = [
            ec2_api::Api::AssignPrivateIpAddresses.name(),
            ec2_api::Api::CreateNetworkInterface.name(),
        ];
        if lanes.contains(&api) && self.two_lanes() {
            lanes.iter().map(|l| self.ec2.hold(l)).min().unwrap_or(hold)
        } else {
            hold
        }
    }

    /// Carries out a growth step (`rerouted`: an Assign the caller turned into a new ENI because Assign's gate
    /// is shut). With two lanes ([`Node::two_lanes`]) no call waits at its gate: an Assign that EC2 throttles
    /// while CreateNetworkInterface's gate is open creates the ENI in the same step, and a throttle of that one
    /// ends the step; the pool task comes back when the first of the two gates opens and takes that API. So a
    /// node throttled on one API is not stuck behind its gate while the other's tokens go unused.
    async fn grow_rerouted(
        &self,
        decision: Decision,
        rerouted: bool,
    ) -> (Decision, Result<(), Ec2Error>) {
        let assigns = matches!(
            decision,
            Decision::AssignIps { .. } | Decision::AssignPrefixes { .. }
        );
        if rerouted {
            return self.grow_failing_fast(decision).await;
        }
        if !assigns || !self.two_lanes() {
            return self.grow_with_fallback(decision).await;
        }
        let (done, res) = self.grow_failing_fast(decision.clone()).await;
        match res {
            Err(Ec2Error::Throttled { .. }) => {
                let again = self.reroute_throttled(done, true);
                if matches!(again, Decision::AttachEni { .. }) {
                    self.grow_failing_fast(again).await
                } else {
                    (again, res)
                }
            }
            res => (done, res),
        }
    }

    /// Whether pods want addresses the pool does not have: more ADDs wait than addresses are free, or none is
    /// free and an ADD failed for want of one less than [`DEMAND_MEMORY`] ago (a runtime that retries instead of
    /// waiting). An ADD retried while addresses are free gets one: that is not demand for growth.
    fn has_demand(&self, now: Duration) -> bool {
        let available = self.stats().available;
        let unmet = lock(&self.status)
            .unmet_add_at
            .is_some_and(|t| now.saturating_sub(t) < DEMAND_MEMORY);
        self.adds.len() > available || (unmet && available == 0)
    }

    /// Whether warm-only growth by `api` waits now: its gate is shut, EC2 throttled it (or the cluster's EC2
    /// schedule made a call of it wait, [`crate::ratelimit::Pacer::since_congested`]) less than
    /// [`WARM_WAIT_AFTER_THROTTLE`] (or the current warm backoff) ago, or a throttled warm attempt's wait runs.
    fn warm_waits(&self, api: ec2_api::Api, now: Duration) -> bool {
        let hold = lock(&self.status).warm_hold;
        let quiet = WARM_BACKOFF.ceiling(hold.throttles);
        now < hold.until
            || !self.ec2.hold(api.name()).is_zero()
            || self
                .ec2
                .since_congested(api.name())
                .is_some_and(|since| since < quiet)
    }

    /// Carries out a growth step that only serves a warm target: a throttled call fails at once (no wait at
    /// the gate, no other API) and warm-only growth then waits, doubling per throttle up to [`WARM_WAIT_MAX`].
    async fn grow_warm(&self, decision: Decision) -> (Decision, Result<(), Ec2Error>) {
        let (done, res) = self.grow_failing_fast(decision).await;
        let now = self.deps.clock.now();
        let mut st = lock(&self.status);
        match &res {
            Err(Ec2Error::Throttled { .. }) => {
                let throttles = st.warm_hold.throttles.saturating_add(1);
                st.warm_hold = WarmHold {
                    until: now + WARM_BACKOFF.delay(throttles),
                    throttles,
                };
            }
            Ok(()) => st.warm_hold = WarmHold::default(),
            Err(_) => {}
        }
        (done, res)
    }

    /// Decides and carries out one pool step. Returns what was decided. Waiting ADDs are woken afterwards,
    /// whatever happened (new addresses, or an error that may mean none are coming).
    pub async fn pool_step(&self) -> Result<Decision, Ec2Error> {
        let res = self.pool_step_inner().await;
        self.adds.poke();
        res
    }

    pub(super) async fn pool_step_inner(&self) -> Result<Decision, Ec2Error> {
        if self.config.ipv6 {
            // IPv6 mode has its /80 from startup and no pool (see `super::ipv6`).
            return Ok(Decision::Hold);
        }
        let _actor = self.actor.lock().await;
        self.refresh_node_view().await;
        let now = self.deps.clock.now();
        let first = self.next_decision();
        // Demand first: growth no ADD waits for (the free addresses cover every waiting ADD) is the warm target
        // only; while its API is throttled it waits and leaves the account's tokens to nodes with waiting pods
        // (and never moves to another API).
        let warm_only = growth_api(&first).is_some() && !self.has_demand(now);
        let first_attaches = matches!(first, Decision::AttachEni { .. });
        let mut decision = if warm_only {
            match growth_api(&first) {
                Some(api) if self.warm_waits(api, now) => Decision::Hold,
                Some(api) if self.schedule_congested(api).await => Decision::Hold,
                _ => first,
            }
        } else {
            let d = self.reroute_throttled(first, false);
            self.reroute_to_earlier_slot(d).await
        };
        let rerouted =
            !warm_only && matches!(decision, Decision::AttachEni { .. }) && !first_attaches;
        if matches!(decision, Decision::AttachEni { .. }) && self.setup_pending_any() {
            // An attached ENI waits for its host setup (reconcile finishes it): no second one in its place.
            decision = Decision::Hold;
        }
        let grows = matches!(
            decision,
            Decision::AssignIps { .. }
                | Decision::AssignPrefixes { .. }
                | Decision::AttachEni { .. }
        );
        let blocked = lock(&self.status)
            .grow_blocked_until
            .is_some_and(|t| now < t);
        let result = if self.config.disable_provisioning || (grows && blocked) {
            if grows && blocked {
                decision = Decision::Hold;
            }
            Ok(())
        } else if grows && warm_only {
            let (done, res) = self.grow_warm(decision).await;
            decision = done;
            res
        } else if grows {
            let (done, res) = self.grow_rerouted(decision, rerouted).await;
            decision = done;
            res
        } else {
            self.carry_out(&decision).await
        };
        // Custom networking without a usable ENIConfig: no ENI was attached anywhere (see `carry_out`).
        if matches!(decision, Decision::AttachEni { .. }) && self.eni_config_blocked().is_some() {
            decision = Decision::Hold;
        }
        // EC2 refusing another ENI (AttachmentLimitExceeded, or no free device index) is the ENI limit, not an
        // EC2 failure: stop asking and say so (see `foreign`).
        let result = match result {
            Err(Ec2Error::EniLimitExceeded { .. }) => {
                self.hit_eni_limit();
                decision = Decision::AtEniLimit { short: 0 };
                Ok(())
            }
            other => other,
        };
        let now = self.deps.clock.now();
        let mut st = lock(&self.status);
        if !blocked || !grows {
            st.last_decision = Some(decision.clone());
        }
        if decision.is_action() && !self.config.disable_provisioning && result.is_ok() {
            st.last_action = Some(now);
            if matches!(
                decision,
                Decision::ReleaseIps { .. }
                    | Decision::ReleasePrefixes { .. }
                    | Decision::FreeEni { .. }
            ) {
                st.last_shrink = Some(now);
            }
        }
        match result {
            Ok(()) => {
                if !(grows && blocked) {
                    st.last_error = None;
                }
                Ok(decision)
            }
            Err(e) => {
                match e {
                    Ec2Error::SubnetExhausted { .. } => {
                        st.grow_blocked_until = Some(now + SUBNET_EXHAUSTED_BACKOFF);
                        self.deps.cluster.warning_event(
                            crate::kube_api::REASON_SUBNET_EXHAUSTED,
                            &format!("{e}: new pods on this node may get no address"),
                        );
                    }
                    Ec2Error::NotFound { .. } => st.reconcile_wanted = true,
                    Ec2Error::Unauthorized { .. } => self.deps.cluster.warning_event(
                        crate::kube_api::REASON_MISSING_IAM,
                        &format!("{e}: ipamd cannot change the node's addresses"),
                    ),
                    _ => {}
                }
                st.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Runs pool steps until the pool holds its target (or cannot grow). Used before serving.
    pub async fn fill(&self) -> Result<(), Ec2Error> {
        for _ in 0..64 {
            match self.pool_step().await? {
                d if !d.is_action() => return Ok(()),
                _ => {}
            }
        }
        Ok(())
    }

    /// The pool task: wakes on every ADD/DEL (after [`POOL_DEBOUNCE`]) and every `interval`, grows or shrinks the pool, backs off on EC2
    /// errors with jitter, reconciles with IMDS/EC2 every minute and looks for leaked ENIs every hour (see
    /// [`crate::engine::reconcile`]). Returns when `shutdown` fires.
    pub async fn run_pool(self: Arc<Self>, interval: Duration, shutdown: Arc<Notify>) {
        let mut failures: u32 = 0;
        let mut timers = Timers::new(self.deps.clock.now());
        loop {
            let mut delay = None;
            for _ in 0..16 {
                match self.pool_step().await {
                    Ok(d) if !d.is_action() => {
                        failures = 0;
                        break;
                    }
                    Ok(_) => failures = 0,
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        let wait = match &e {
                            // The API's throttle gate already paces every caller on this node (and PacedEc2 retried
                            // through it): come back when it opens, no backoff of our own on top.
                            Ec2Error::Throttled { api } => {
                                self.throttled_wait(api).max(Duration::from_secs(1))
                            }
                            _ => crate::ratelimit::Backoff {
                                base: Duration::from_secs(1),
                                cap: Duration::from_secs(60),
                            }
                            .delay(failures),
                        };
                        tracing::warn!(error = %e, retry_in = ?wait, "pool step failed");
                        delay = Some(wait);
                        break;
                    }
                }
            }
            timers.run_due(&self).await;
            // Reconcile may have added addresses or found ENIs gone: let waiting ADDs look again.
            self.adds.poke();
            let wait = delay.unwrap_or(interval);
            let woken = tokio::select! {
                () = shutdown.notified() => return,
                () = self.wake.notified(), if delay.is_none() => true,
                () = self.deps.clock.sleep(wait) => false,
            };
            if woken {
                // Let a burst of ADDs gather: one decision and one EC2 call for all of them.
                tokio::select! {
                    () = shutdown.notified() => return,
                    () = self.deps.clock.sleep(POOL_DEBOUNCE) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{AddressMode, PREFIX_RETRY_INTERVAL};
    use crate::config::Config;
    use crate::core::datastore::{IpamKey, PodMeta};
    use crate::engine::{Node, NodeDeps};
    use ec2_api::clock::ManualClock;
    use ec2_sim::{SimEc2, SIM_SUBNET_ID};

    /// An m5.xlarge node on a manual clock, unthrottled, whose primary ENI's 14 addresses all hold pods: its
    /// next growth is an ENI.
    async fn primary_eni_full() -> (Arc<Node>, SimEc2, ManualClock) {
        let (sim, clock) = ec2_sim::on_manual_clock("m5.xlarge", |s| s.throttle = None).await;
        let n = Node::start(NodeDeps::sim(&sim, &clock), Config::default(), None)
            .await
            .expect("init");
        n.fill().await.expect("fill: 14 IPs on the primary ENI");
        for i in 0..14 {
            n.add(&key(i), &PodMeta::default()).expect("ip");
        }
        (n, sim, clock)
    }

    async fn pd_node() -> (Arc<Node>, SimEc2, ManualClock) {
        let (sim, clock) = ec2_sim::on_manual_clock("m5.xlarge", |s| s.throttle = None).await;
        let deps = NodeDeps::sim(&sim, &clock);
        let config = Config {
            prefix_delegation: true,
            warm_prefix_target: 1,
            pool_release_delay: Duration::ZERO,
            ..Config::default()
        };
        let n = Node::start(deps, config, None).await.expect("init");
        (n, sim, clock)
    }

    fn key(i: usize) -> IpamKey {
        IpamKey {
            network_name: "aws-cni".into(),
            container_id: format!("c{i}"),
            if_name: "eth0".into(),
        }
    }

    fn secondaries(n: &Node) -> usize {
        n.datastore()
            .enis()
            .map(|e| e.ip_count() - e.prefixes().count() * 16)
            .sum()
    }

    /// ADDs pods `from..to`, filling the pool when one finds no address (the clock moves on between fills so
    /// the client-side pacer's buckets refill).
    async fn add_pods(n: &Node, clock: &ManualClock, from: usize, to: usize) {
        for i in from..to {
            if n.add(&key(i), &PodMeta::default()).is_err() {
                clock.advance(Duration::from_secs(10));
                n.fill().await.expect("fill grows instead of failing");
                n.add(&key(i), &PodMeta::default())
                    .unwrap_or_else(|e| panic!("pod {i}: {}", e.message));
            }
        }
    }

    #[tokio::test]
    async fn no_free_28_falls_back_to_secondary_ips_and_returns_to_prefixes() {
        let run = async {
            let (n, sim, clock) = pd_node().await;
            n.fill().await.expect("fill");
            assert_eq!(n.address_mode(), AddressMode::Prefix);
            assert_eq!(n.stats().total, 16, "one /28");
            sim.fragment_subnet(Some(SIM_SUBNET_ID));
            // 40 pods: the first 16 on the prefix, the rest on secondary IPs the fallback brings.
            add_pods(&n, &clock, 0, 40).await;
            assert_eq!(n.address_mode(), AddressMode::PrefixFallback);
            assert!(secondaries(&n) >= 24, "{:?}", n.datastore());
            assert_eq!(n.snapshot().address_mode, "prefix-fallback-secondary-ip");
            let calls = sim.calls();
            assert!(
                calls.get("CreateNetworkInterface").copied().unwrap_or(0) >= 1,
                "the primary ENI's slots ran out: a new ENI with secondary IPs: {calls:?}"
            );
            let (last, err) = n.last_decision();
            assert!(err.is_none(), "{err:?} after {last:?}");
            // Every address the pods hold is one EC2 has on the node.
            let on_ec2: std::collections::BTreeSet<_> = sim
                .all_enis()
                .iter()
                .flat_map(|e| {
                    let mut v = e.secondary_ips.clone();
                    v.extend(e.ipv4_prefixes.iter().flat_map(|p| p.iter()));
                    v
                })
                .collect();
            for (_, _, a) in n.datastore().assignments() {
                assert!(on_ec2.contains(&a.ip), "{}", a.ip);
            }
            // The subnet heals; after the retry interval growth takes prefixes again.
            sim.defragment_subnet(None);
            clock.advance(PREFIX_RETRY_INTERVAL + Duration::from_secs(1));
            add_pods(&n, &clock, 40, 60).await;
            assert_eq!(n.address_mode(), AddressMode::Prefix);
            assert!(
                n.datastore()
                    .enis()
                    .map(|e| e.prefixes().count())
                    .sum::<usize>()
                    >= 2,
                "prefixes again: {:?}",
                n.datastore()
            );
            // Pods leave; once cooled down, the free secondary IPs go back and the pool is prefixes again.
            for i in 0..60 {
                n.del(&key(i));
            }
            clock.advance(Duration::from_secs(31));
            for _ in 0..60 {
                clock.advance(super::SHRINK_INTERVAL);
                n.pool_step().await.expect("shrink");
            }
            assert_eq!(secondaries(&n), 0, "{:?}", n.datastore());
            assert!(n.stats().total >= 16);
        };
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("the test waits on the manual clock");
    }

    /// Demand first: after EC2 throttled CreateNetworkInterface, growth that only serves the warm target (the
    /// free addresses cover every waiting ADD) waits and sends nothing; growth for waiting pods goes on; once the
    /// API has been quiet for [`super::WARM_WAIT_AFTER_THROTTLE`] the warm target is kept again.
    #[tokio::test]
    async fn warm_only_growth_waits_while_its_api_is_throttled_and_demand_does_not() {
        let (sim, clock) = ec2_sim::on_manual_clock("m5.xlarge", |s| s.throttle = None).await;
        let deps = NodeDeps::sim(&sim, &clock);
        let config = Config {
            pool_release_delay: Duration::ZERO,
            ..Config::default()
        };
        let n = Node::start(deps, config, None).await.expect("init");
        n.fill().await.expect("fill: 14 IPs on the primary ENI");
        assert_eq!(n.stats().total, 14);
        // 14 pods take every address: the warm target (one ENI's worth) wants a new ENI, no ADD waits.
        for i in 0..14 {
            n.add(&key(i), &PodMeta::default()).expect("ip");
        }
        sim.inject_faults(ec2_sim::Fault::Throttle, Some("CreateNetworkInterface"), 1);
        let creates = |sim: &SimEc2| {
            sim.calls()
                .get("CreateNetworkInterface")
                .copied()
                .unwrap_or(0)
        };
        // The warm-only create is throttled once and fails at once (no retry at the gate, no other API).
        let err = n.pool_step().await.expect_err("throttled");
        assert!(matches!(err, ec2_api::Ec2Error::Throttled { .. }), "{err}");
        assert_eq!(creates(&sim), 1);
        // While the API was throttled recently, warm-only growth holds and calls nothing.
        for _ in 0..5 {
            clock.advance(Duration::from_secs(30));
            let d = n.pool_step().await.expect("hold");
            assert_eq!(d, crate::core::pool::Decision::Hold);
        }
        assert_eq!(creates(&sim), 1, "{:?}", sim.calls());
        assert_eq!(n.stats().enis, 1);
        // A waiting ADD is demand: it gets its ENI now, throttle or not.
        let waiter = {
            let n = Arc::clone(&n);
            tokio::spawn(async move {
                n.add_durable_within(&key(100), &PodMeta::default(), Duration::from_secs(60))
                    .await
                    .is_ok()
            })
        };
        while n.adds_waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let d = n.pool_step().await.expect("demand growth");
        assert!(
            matches!(d, crate::core::pool::Decision::AttachEni { .. }),
            "{d:?}"
        );
        assert!(
            waiter.await.expect("join"),
            "the waiting ADD got an address"
        );
        assert_eq!(creates(&sim), 2);
        // The API quiet for long enough: the warm target is kept again (with 13 free of 28, one more ENI).
        for i in 101..114 {
            n.add(&key(i), &PodMeta::default()).expect("ip");
        }
        clock.advance(super::WARM_WAIT_AFTER_THROTTLE + super::WARM_WAIT_AFTER_THROTTLE);
        n.fill().await.expect("warm growth");
        assert_eq!(creates(&sim), 3, "{:?}", sim.calls());
    }

    /// A CreateNetworkInterface that EC2 throttles costs no DescribeInstances: the free device index is asked
    /// once the ENI exists, so a node sends one DescribeInstances per ENI it creates however often its creates
    /// are throttled (a cluster's cold start throttled these Describes with the creates).
    #[tokio::test]
    async fn a_throttled_create_costs_no_describe_instances() {
        let (n, sim, clock) = primary_eni_full().await;
        let count = |api: &str| sim.calls().get(api).copied().unwrap_or(0);
        sim.inject_faults(ec2_sim::Fault::Throttle, Some("CreateNetworkInterface"), 1);
        n.pool_step().await.expect_err("throttled");
        assert_eq!(count("CreateNetworkInterface"), 1);
        assert_eq!(
            count("DescribeInstances"),
            0,
            "a throttled create asked for a device index: {:?}",
            sim.calls()
        );
        clock.advance(super::WARM_WAIT_MAX + super::WARM_WAIT_MAX);
        n.fill().await.expect("warm growth");
        assert_eq!(n.stats().enis, 2);
        assert_eq!(count("CreateNetworkInterface"), 2);
        assert_eq!(count("DescribeInstances"), 1, "{:?}", sim.calls());
        assert_eq!(count("AttachNetworkInterface"), 1);
    }

    /// Two lanes: with an ENI slot left, growth for waiting pods waits at no gate. An Assign EC2 throttles moves
    /// to a new ENI in the same step, a throttle of that ends the step, and the pool task comes back when the
    /// first of the two gates opens, rather than queueing behind CreateNetworkInterface's gate while Assign's
    /// tokens go unused.
    #[tokio::test]
    async fn throttled_growth_for_waiting_pods_waits_at_neither_gate_and_takes_the_first_that_opens(
    ) {
        let (n, sim, clock) = pd_node().await;
        n.fill().await.expect("fill");
        for i in 0..16 {
            n.add(&key(i), &PodMeta::default()).expect("prefix");
        }
        let count = |api: &str| sim.calls().get(api).copied().unwrap_or(0);
        let assigns = count("AssignPrivateIpAddresses");
        let wait_for_an_address = |i: usize| {
            let n = Arc::clone(&n);
            tokio::spawn(async move {
                n.add_durable_within(&key(i), &PodMeta::default(), Duration::from_secs(600))
                    .await
                    .is_ok()
            })
        };
        let first = wait_for_an_address(100);
        while n.adds_waiting() == 0 {
            tokio::task::yield_now().await;
        }
        sim.inject_faults(
            ec2_sim::Fault::Throttle,
            Some("AssignPrivateIpAddresses"),
            1,
        );
        sim.inject_faults(ec2_sim::Fault::Throttle, Some("CreateNetworkInterface"), 1);
        let err = n.pool_step().await.expect_err("both lanes throttled");
        assert!(matches!(err, ec2_api::Ec2Error::Throttled { .. }), "{err}");
        assert_eq!(count("AssignPrivateIpAddresses"), assigns + 1);
        assert_eq!(
            count("CreateNetworkInterface"),
            1,
            "the create waited at its gate to retry: {:?}",
            sim.calls()
        );
        // The pool task comes back when the first gate opens.
        let wait = n.throttled_wait(ec2_api::Api::CreateNetworkInterface.name());
        let assign_hold = n.ec2.hold(ec2_api::Api::AssignPrivateIpAddresses.name());
        let create_hold = n.ec2.hold(ec2_api::Api::CreateNetworkInterface.name());
        assert_eq!(wait, assign_hold.min(create_hold));
        // The ADD told of the failure is retried by the runtime, and waits again.
        let _ = first.await;
        let again = wait_for_an_address(101);
        while n.adds_waiting() == 0 {
            tokio::task::yield_now().await;
        }
        clock.advance(wait + Duration::from_millis(1));
        n.pool_step().await.expect("the open lane serves");
        assert!(again.await.expect("join"), "the waiting ADD got an address");
    }

    /// Warm-only growth still holds twenty minutes after its API was throttled: an account saturated by a cold
    /// start stays so for longer than ten minutes, and a warm ENI then takes a token from a node whose pods wait.
    #[tokio::test]
    async fn warm_only_growth_still_waits_twenty_minutes_after_a_throttle() {
        let (n, sim, clock) = primary_eni_full().await;
        let creates = || {
            sim.calls()
                .get("CreateNetworkInterface")
                .copied()
                .unwrap_or(0)
        };
        sim.inject_faults(ec2_sim::Fault::Throttle, Some("CreateNetworkInterface"), 1);
        n.pool_step().await.expect_err("throttled");
        assert_eq!(creates(), 1);
        for _ in 0..4 {
            clock.advance(Duration::from_secs(300));
            let d = n.pool_step().await.expect("hold");
            assert_eq!(d, crate::core::pool::Decision::Hold);
        }
        assert_eq!(creates(), 1, "{:?}", sim.calls());
    }

    #[tokio::test]
    async fn an_add_failing_in_the_fallback_says_so() {
        let (n, sim, _clock) = pd_node().await;
        n.fill().await.expect("fill");
        sim.fragment_subnet(None);
        for i in 0..16 {
            n.add(&key(i), &PodMeta::default()).expect("prefix");
        }
        n.pool_step().await.expect("fallback step");
        assert_eq!(n.address_mode(), AddressMode::PrefixFallback);
        // Drain what the fallback brought; the next ADD finds nothing and the failure names the fallback.
        let mut i = 16;
        while n.add(&key(i), &PodMeta::default()).is_ok() {
            i += 1;
        }
        let err = n
            .add(&key(999), &PodMeta::default())
            .expect_err("none free");
        assert!(
            err.message.contains("fell back to secondary IPs")
                && err.message.contains("InsufficientCidrBlocks"),
            "{}",
            err.message
        );
    }

    /// A node on a manual clock whose cluster EC2 schedule (crate::schedule) has each of `booked` reserved
    /// `ahead` beyond its bucket's tolerance, as if other nodes had taken every slot until then.
    async fn node_with_booked_schedule(
        booked: &[ec2_api::Api],
        ahead: Duration,
    ) -> (
        SimEc2,
        ec2_api::clock::ManualClock,
        crate::schedule::MemorySchedule,
        Arc<Node>,
    ) {
        use crate::ratelimit::{PacingConfig, SharedSchedule};
        use crate::schedule::{Limit, MemorySchedule, Share};
        use ec2_api::clock::Clock;
        let (sim, clock) = ec2_sim::on_manual_clock("m5.xlarge", |s| s.throttle = None).await;
        let deps = NodeDeps::sim(&sim, &clock);
        let facts = crate::engine::NodeFacts::discover(deps.imds.as_ref())
            .await
            .expect("facts");
        let lease = MemorySchedule::new(Arc::new(clock.clone()), Duration::from_millis(5));
        for api in booked {
            let l = Limit::of(*api, Share::default());
            let tolerance = Duration::from_secs_f64(f64::from(l.burst - 1) / l.per_second);
            lease.set_tat(
                api.name(),
                (clock.wall() + tolerance + ahead).as_micros() as u64,
            );
        }
        let pacing = PacingConfig {
            schedule: SharedSchedule(Arc::new(lease.clone())),
            ..PacingConfig::default()
        };
        let n = Node::init_with(deps, facts, Config::default(), None, pacing)
            .await
            .expect("init");
        (sim, clock, lease, n)
    }

    /// The cluster's EC2 schedule (crate::schedule) with the next slot of Assign and Create a minute ahead: the
    /// warm fill does not queue behind it (the node notes the congestion and serves with what it has); a pod's
    /// demand takes its slot, waits for it, and only then calls EC2.
    #[tokio::test]
    async fn a_congested_cluster_schedule_holds_warm_growth_and_demand_waits_for_its_slot() {
        use ec2_api::clock::Clock;
        let ahead = Duration::from_secs(60);
        let (sim, clock, lease, n) = node_with_booked_schedule(
            &[
                ec2_api::Api::AssignPrivateIpAddresses,
                ec2_api::Api::CreateNetworkInterface,
            ],
            ahead,
        )
        .await;
        let start = clock.now();
        n.fill().await.expect("fill");
        assert_eq!(n.stats().total, 0, "the warm fill held");
        assert_eq!(sim.calls().get("AssignPrivateIpAddresses"), None);
        assert_eq!(lease.stats().writes, 0, "no slot taken for the warm target");
        assert!(n.ec2.since_congested("AssignPrivateIpAddresses").is_some());
        assert!(clock.now() - start < Duration::from_secs(1));
        // A pod finds no address: demand. Its growth takes the slot and waits for it.
        assert!(n.add(&key(0), &PodMeta::default()).is_err());
        let before = lease.tat("AssignPrivateIpAddresses").expect("tat");
        n.pool_step().await.expect("grow");
        assert!(
            clock.now() - start >= ahead - Duration::from_millis(100),
            "sent at the slot: {:?}",
            clock.now() - start
        );
        assert_eq!(sim.calls().get("AssignPrivateIpAddresses"), Some(&1));
        assert!(lease.tat("AssignPrivateIpAddresses").expect("tat") > before);
        n.add(&key(0), &PodMeta::default())
            .expect("an address after the slot");
    }

    /// Growth for a waiting pod takes the API whose slot in the cluster's EC2 schedule comes first: with
    /// AssignPrivateIpAddresses booked a minute ahead and CreateNetworkInterface free, a new ENI brings the
    /// addresses at once.
    #[tokio::test]
    async fn demand_growth_takes_the_api_with_the_earlier_slot() {
        use ec2_api::clock::Clock;
        let (sim, clock, lease, n) = node_with_booked_schedule(
            &[ec2_api::Api::AssignPrivateIpAddresses],
            Duration::from_secs(60),
        )
        .await;
        let start = clock.now();
        assert!(n.add(&key(0), &PodMeta::default()).is_err());
        n.pool_step().await.expect("grow");
        assert_eq!(sim.calls().get("AssignPrivateIpAddresses"), None);
        assert_eq!(sim.calls().get("CreateNetworkInterface"), Some(&1));
        assert!(clock.now() - start < Duration::from_secs(10));
        assert!(lease.tat("CreateNetworkInterface").is_some());
        n.add(&key(0), &PodMeta::default())
            .expect("an address on the new ENI");
    }
}
