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
//! `InsufficientFreeAddressesInSubnet`/`InsufficientCidrBlocks` the pool does not try to grow for
//! [`SUBNET_EXHAUSTED_BACKOFF`].

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

/// How long the pool task lets a burst of ADDs and DELs gather after being woken, so the burst is one decision
/// (and one EC2 call) rather than one per request.
pub const POOL_DEBOUNCE: Duration = Duration::from_millis(20);

impl Node {
    pub(crate) fn rooms(&self, now: Duration) -> Vec<EniRoom> {
        let slots_per_eni = self.policy.slots_per_eni();
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
            node_max_pods: st.node_max_pods,
            freeze_enis,
        }
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
        let mut decision = self.next_decision();
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
        let mut eni_config_blocked = None;
        let result = if self.config.disable_provisioning || (grows && blocked) {
            if grows && blocked {
                decision = Decision::Hold;
            }
            Ok(())
        } else {
            match &decision {
                Decision::Hold
                | Decision::AtEniLimit { .. }
                | Decision::EniChangesPaused { .. } => Ok(()),
                Decision::AssignIps { eni_id, count } => {
                    self.assign(eni_id, IpRequest::Secondary(*count)).await
                }
                Decision::AssignPrefixes { eni_id, count } => {
                    self.assign(eni_id, IpRequest::Prefixes(*count)).await
                }
                // Custom networking without a usable ENIConfig: no ENI, anywhere (see super::custom_net).
                Decision::AttachEni { request } => match self.placement().await {
                    Ok(at) => self.attach_eni(*request, at).await,
                    Err(problem) => {
                        eni_config_blocked = Some(problem);
                        Ok(())
                    }
                },
                Decision::ReleaseIps { eni_id, ips } => self.release(eni_id, ips, &[]).await,
                Decision::ReleasePrefixes { eni_id, prefixes } => {
                    self.release(eni_id, &[], prefixes).await
                }
                Decision::FreeEni { eni_id } => self.free_eni(eni_id).await,
            }
        };
        if eni_config_blocked.is_some() {
            decision = Decision::Hold;
        }
        self.set_eni_config_blocked(eni_config_blocked);
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
                                self.ec2.hold(api).max(Duration::from_secs(1))
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
