//! Admission: ADD and DEL, the requests the plugin makes through the gRPC service.
//!
//! An ADD takes the datastore lock for a few microseconds and never calls EC2 or IMDS. One that finds no usable
//! address **waits** for one when one is on its way (see [`Node::add_durable`]): an address in cooldown whose
//! cooldown ends within the wait bound (`AWS_CNI_ADD_WAIT_SECONDS`), or a pool that is growing (below max-pods, an
//! ENI slot or room left, provisioning allowed, no subnet-full error). Waiting ADDs queue first come first served
//! (`AddQueue`); every DEL, every pool step and every reconcile pass wakes them, and each sleeps on the
//! engine's clock until the next cooldown ends, so virtual-time tests and benchmarks see the same behaviour. They
//! also count as demand: the pool task ([`super::pool_task`]) asks EC2 for every waiting ADD plus the warm target
//! in one call. When nothing is coming, or the bound passes, the ADD fails with the specific reason (cooldown,
//! max-pods, ENI limit, subnet exhausted, throttled, ...): `Node::explain`. The anchor fails at once, and
//! kubelet then backs off for seconds.
//!
//! Durability: [`Node::add_durable`] and [`Node::del_durable`] (what the gRPC service calls) return only once
//! the change is in the checkpoint ([`super::checkpoint`], group commit); [`Node::add`] and [`Node::del`] change
//! memory only and leave the write to the background flusher ([`Node::run_checkpointer`]).

use std::sync::Mutex;
use std::time::Duration;

use aws_cni_proto::FailureReason;

use super::checkpoint::CheckpointError;
use super::{AddQueue, Node};
use crate::core::datastore::{Allocation, AssignError, Datastore, IpamKey, PodMeta, PoolStats};
use crate::core::family::IpVersion;
use crate::core::pool::Decision;
use crate::sync::lock;
use ec2_api::Ec2Error;

/// A waiting ADD answers this long before the caller's gRPC deadline (`grpc-timeout`), leaving room for the
/// checkpoint write and the reply.
pub const ADD_DEADLINE_MARGIN: Duration = Duration::from_secs(1);

/// Why an ADD got no IP: a reason code the plugin maps to a CNI error, and a sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddFailure {
    pub reason: FailureReason,
    pub message: String,
}

/// Where an ADD's time went inside the engine: the assignment (the datastore lock, and any wait for an address
/// on its way) and the checkpoint's group commit until the assignment is durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddSpans {
    pub assign: Duration,
    pub durable: Duration,
}

/// Leaves the queue however the waiting ADD ends (served, failed, or its request dropped by a gone client).
struct Ticket<'a> {
    queue: &'a AddQueue,
    id: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.queue.leave(self.id);
    }
}

impl Node {
    /// Assigns an IP to `key` (or returns the one it holds). Never waits on EC2. The checkpoint is written in
    /// the background; see [`Node::add_durable`].
    pub fn add(&self, key: &IpamKey, meta: &PodMeta) -> Result<Allocation, AddFailure> {
        self.assign_now(key, meta).map(|(a, _, _)| a)
    }

    pub(super) fn assign_now(
        &self,
        key: &IpamKey,
        meta: &PodMeta,
    ) -> Result<(Allocation, bool, u64), AddFailure> {
        self.try_assign(key, meta).map_err(|e| self.explain(e))
    }

    /// [`Node::add`] that waits up to `AWS_CNI_ADD_WAIT_SECONDS` for an address on its way (see the module
    /// docs), and returns only once the assignment is in the checkpoint. If it cannot be written, the address is
    /// taken back (it never reached the pod) and the ADD fails with `INTERNAL`.
    pub async fn add_durable(
        &self,
        key: &IpamKey,
        meta: &PodMeta,
    ) -> Result<Allocation, AddFailure> {
        self.add_durable_within(key, meta, self.knobs().add_wait)
            .await
    }

    /// [`Node::add_durable`] waiting at most `bound` for an address (the gRPC service passes the smaller of
    /// the configured bound and the caller's deadline); a zero bound fails at once, as the anchor does.
    pub async fn add_durable_within(
        &self,
        key: &IpamKey,
        meta: &PodMeta,
        bound: Duration,
    ) -> Result<Allocation, AddFailure> {
        self.add_durable_timed(key, meta, bound, &mut AddSpans::default())
            .await
    }

    /// [`Node::add_durable_within`] that also reports where the time went ([`AddSpans`], for the gRPC service's
    /// log line).
    pub async fn add_durable_timed(
        &self,
        key: &IpamKey,
        meta: &PodMeta,
        bound: Duration,
        spans: &mut AddSpans,
    ) -> Result<Allocation, AddFailure> {
        let started = self.deps.clock.now();
        let (alloc, fresh, generation) = self.assign_waiting(key, meta, bound).await?;
        let assigned = self.deps.clock.now();
        spans.assign = assigned.saturating_sub(started);
        let durable = self
            .make_durable(&self.ds, key, &alloc, fresh, generation)
            .await;
        spans.durable = self.deps.clock.now().saturating_sub(assigned);
        durable.map(|()| alloc)
    }

    /// Assigns an address to `key`, waiting up to `bound` for one on its way: first come first served behind
    /// the ADDs already waiting, woken by DELs, pool steps and reconcile passes, and sleeping on the clock until
    /// the next cooldown ends. Fails with the specific reason when nothing is coming or the bound passes.
    pub(super) async fn assign_waiting(
        &self,
        key: &IpamKey,
        meta: &PodMeta,
        bound: Duration,
    ) -> Result<(Allocation, bool, u64), AddFailure> {
        if bound.is_zero() || self.adds.len() == 0 {
            match self.try_assign(key, meta) {
                Ok(r) => return Ok(r),
                Err(e) if bound.is_zero() => return Err(self.explain(e)),
                Err(_) => {}
            }
        }
        let started = self.deps.clock.now();
        let deadline = started + bound;
        let ticket = Ticket {
            queue: &self.adds,
            id: self.adds.join(),
        };
        // The pool counts waiting ADDs as demand: let it see this one.
        self.wake.notify_one();
        loop {
            let notified = self.adds.event.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.deps.clock.now();
            if self.adds.is_first(ticket.id) {
                match self.try_assign(key, meta) {
                    Ok(r) => {
                        if now > started {
                            tracing::debug!(
                                container = %key.container_id,
                                waited = ?now.saturating_sub(started),
                                "ADD got an address after waiting"
                            );
                        }
                        return Ok(r);
                    }
                    Err(e) => {
                        if now >= deadline || !self.address_coming(now, deadline) {
                            return Err(self.explain(e));
                        }
                    }
                }
            } else if now >= deadline {
                let in_cooldown = self.stats().cooldown;
                return Err(self.explain(AssignError::NoFreeIp { in_cooldown }));
            }
            let until = lock(&self.ds)
                .next_cooldown_end(now)
                .map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                () = &mut notified => {}
                () = self.deps.clock.sleep(until.saturating_sub(now)) => {}
            }
        }
    }

    /// One assignment attempt, no waiting; wakes the pool (the pool may now be below target).
    pub(super) fn try_assign(
        &self,
        key: &IpamKey,
        meta: &PodMeta,
    ) -> Result<(Allocation, bool, u64), AssignError> {
        let res = self.assign_in(&self.ds, key, meta);
        self.wake.notify_one();
        res
    }

    /// Whether an address can reach a waiting ADD by `deadline`: a cooldown ends by then, or the pool can grow.
    pub(super) fn address_coming(&self, now: Duration, deadline: Duration) -> bool {
        if lock(&self.ds)
            .next_cooldown_end(now)
            .is_some_and(|t| t <= deadline)
        {
            return true;
        }
        let blocked = self.growth_blocked(&self.stats(), now);
        // Missing IAM permissions do not fix themselves within seconds.
        let unauthorized = matches!(
            lock(&self.status).last_error,
            Some(Ec2Error::Unauthorized { .. })
        );
        !blocked && !unauthorized
    }

    /// Whether the pool cannot get more addresses now: max-pods reached, every ENI attached and full,
    /// provisioning disabled, the subnet out of addresses (within its backoff), or a new ENI needed and custom
    /// networking has no usable ENIConfig.
    pub(super) fn growth_blocked(&self, stats: &PoolStats, now: Duration) -> bool {
        let total = u32::try_from(stats.total).unwrap_or(u32::MAX);
        let at_eni_limit = self.at_eni_limit(stats, now);
        let max_pods = self.policy().max_pods;
        let status = lock(&self.status);
        let subnet_exhausted = matches!(status.last_error, Some(Ec2Error::SubnetExhausted { .. }))
            && status.grow_blocked_until.is_some_and(|t| now < t);
        drop(status);
        total >= max_pods
            || at_eni_limit
            || self.config.disable_provisioning
            || subnet_exhausted
            || self.eni_config_blocked().is_some()
    }

    /// Whether the node is at its ENI limit: every ENI slot used and every ENI full (known without waiting for
    /// the pool task's verdict), or the pool task's last decision said so.
    fn at_eni_limit(&self, stats: &PoolStats, now: Duration) -> bool {
        let slots = self.policy().slots_per_eni();
        let all_full = u32::try_from(stats.enis).unwrap_or(u32::MAX) >= self.policy().max_enis
            && self.rooms(now).iter().all(|r| r.slots >= slots);
        all_full
            || matches!(
                lock(&self.status).last_decision,
                Some(Decision::AtEniLimit { .. })
            )
    }

    /// Releases the IP of `key`; `None` when it held none (repeated DEL). The checkpoint is written in the
    /// background; see [`Node::del_durable`].
    pub fn del(&self, key: &IpamKey) -> Option<Allocation> {
        self.release_now(key).0
    }

    pub(super) fn release_now(&self, key: &IpamKey) -> (Option<Allocation>, u64) {
        let res = self.release_in(&self.ds, key);
        self.wake.notify_one();
        if let Some(a) = &res.0 {
            // The address's old flows must not steer its next pod's traffic (queued: the DEL does not wait).
            self.deps.hostnet.forget_flows(a.ip);
            // With no cooldown the address is usable now; else waiters re-plan around its cooldown's end.
            self.adds.poke();
        }
        res
    }

    /// [`Node::del`] that returns only once the release is in the checkpoint. The address is released in memory
    /// even if the write fails (the error says so); the next write records it.
    pub async fn del_durable(&self, key: &IpamKey) -> Result<Option<Allocation>, CheckpointError> {
        self.released_durably(self.release_now(key)).await
    }

    /// ADDs waiting for an address now.
    pub fn adds_waiting(&self) -> usize {
        self.adds.len()
    }

    pub(super) fn explain(&self, err: AssignError) -> AddFailure {
        let AssignError::NoFreeIp { in_cooldown } = err;
        let stats = self.stats();
        let now = self.deps.clock.now();
        let at_eni_limit = self.at_eni_limit(&stats, now);
        let cannot_grow = self.growth_blocked(&stats, now);
        let eni_config = self.eni_config_blocked();
        let policy = self.policy();
        let max_pods = policy.max_pods;
        let mode = self.address_mode();
        let cooldown_secs = lock(&self.ds).cooldown().as_secs();
        let mut status = lock(&self.status);
        // An ADD went without an address: demand, which growth serves even while EC2 throttles (see pool_task).
        status.unmet_add_at = Some(now);
        let total = u32::try_from(stats.total).unwrap_or(u32::MAX);
        let (reason, message) = if in_cooldown > 0 && cannot_grow {
            (
                FailureReason::AllFreeIpsInCooldown,
                format!(
                    "all {in_cooldown} free address(es) are in their {cooldown_secs}s reuse cooldown and the node \
                     cannot get more ({total} addresses, max-pods {}, {} of {} ENIs)",
                    max_pods, stats.enis, policy.max_enis
                ),
            )
        } else if total >= max_pods {
            (
                FailureReason::MaxPodsReached,
                format!(
                    "node holds {total} addresses, its max-pods limit ({max_pods}), all assigned"
                ),
            )
        } else if at_eni_limit {
            (
                FailureReason::NodeAtEniLimit,
                format!(
                    "all {} ENIs of this instance type are attached and full ({total} addresses, {} assigned){}",
                    policy.max_enis,
                    stats.assigned,
                    self.foreign_slots_note()
                ),
            )
        } else if let Some(problem) = eni_config {
            (
                FailureReason::EniConfigInvalid,
                format!(
                    "no free IP and custom networking cannot attach a new ENI: {problem} (pods never fall back \
                     to the node's subnet; fix the ENIConfig or the node's label or annotation)"
                ),
            )
        } else if let Some(e) = &status.last_error {
            let reason = match e {
                Ec2Error::Throttled { .. } => FailureReason::Ec2Throttled,
                Ec2Error::SubnetExhausted { .. } => FailureReason::SubnetExhausted,
                _ => FailureReason::Ec2Error,
            };
            (reason, format!("no free IP and the pool cannot grow: {e}"))
        } else if let Some((api, hold)) = self.ec2.throttling() {
            // The pool task is waiting at the API's throttle gate (PacedEc2 retries it): say so.
            (
                FailureReason::Ec2Throttled,
                format!(
                    "no free IP and the pool cannot grow yet: EC2 is throttling {api} (RequestLimitExceeded); \
                     this node asks again within {}s",
                    hold.as_secs().max(1)
                ),
            )
        } else if let Some((api, wait)) = self.ec2.schedule_wait() {
            // The pool's call waits for its slot in the cluster's EC2 schedule (crate::schedule).
            (
                FailureReason::NoFreeIpPoolGrowing,
                format!(
                    "no free IP yet; the pool is growing: its {api} call waits {}s for its slot in the cluster's \
                     EC2 schedule",
                    wait.as_secs().max(1)
                ),
            )
        } else if self.config.disable_provisioning {
            (
                FailureReason::NoFreeIpPoolGrowing,
                "no free IP and DISABLE_NETWORK_RESOURCE_PROVISIONING=true: ipamd will not ask EC2 for more"
                    .to_string(),
            )
        } else if in_cooldown > 0 {
            (
                FailureReason::AllFreeIpsInCooldown,
                format!(
                    "all {in_cooldown} free address(es) are in their {cooldown_secs}s reuse cooldown; the pool \
                     is growing"
                ),
            )
        } else {
            (
                FailureReason::NoFreeIpPoolGrowing,
                format!("no free IP yet ({total} addresses, all assigned); the pool is growing"),
            )
        };
        let message = if mode == super::pool_task::AddressMode::PrefixFallback {
            format!(
                "{message} [prefix delegation fell back to secondary IPs: the subnet has no free /28 \
                 (InsufficientCidrBlocks)]"
            )
        } else {
            message
        };
        AddFailure { reason, message }
    }
}

/// The bookkeeping of an ADD and a DEL that is the same in both IP versions, on the datastore `ds` of either
/// (`ds` for IPv4, `ds6` for IPv6, see [`super::ipv6`]). What only IPv4 does around it (waking
/// the pool task and the waiting ADDs, forgetting a released address's conntrack flows) stays with its callers.
/// A generation is read after `ds` is unlocked ([`Node::generation`], which takes both datastores in the lock
/// order): it covers this change and perhaps later ones, which a checkpoint write waiting for it then covers too.
impl Node {
    /// Assigns an address of `ds` to `key` (or returns the one it holds), with whether it is new and the
    /// generation a checkpoint write must reach to hold it; a new one wakes the checkpoint flusher.
    pub(super) fn assign_in<V: IpVersion>(
        &self,
        ds: &Mutex<Datastore<V>>,
        key: &IpamKey,
        meta: &PodMeta,
    ) -> Result<(Allocation<V>, bool, u64), AssignError> {
        let now = self.deps.clock.now();
        let wall = self.deps.clock.wall();
        let res = lock(ds).assign_at(key, meta, now, wall);
        let generation = self.generation();
        if matches!(res, Ok((_, true))) {
            self.flush.notify_one();
        }
        res.map(|(a, fresh)| (a, fresh, generation))
    }

    /// The rest of a durable ADD once `alloc` is assigned to `key` in `ds` ([`Node::assign_in`]): waits until
    /// the checkpoint holds `generation`. If it cannot be written, a `fresh` assignment is taken back (it never
    /// reached the pod) and the ADD fails with `INTERNAL`; an assignment that a concurrent request for the same
    /// key changed meanwhile (a repeated ADD whose first write failed and was undone, or a DEL) fails with
    /// `NOT_READY`: only what is held is answered, and durably so.
    pub(super) async fn make_durable<V: IpVersion>(
        &self,
        ds: &Mutex<Datastore<V>>,
        key: &IpamKey,
        alloc: &Allocation<V>,
        fresh: bool,
        generation: u64,
    ) -> Result<(), AddFailure> {
        if let Err(e) = self.persist(generation).await {
            if fresh {
                lock(ds).unassign_unused(key, alloc.ip);
                self.flush.notify_one();
                self.adds.poke();
            }
            return Err(AddFailure {
                reason: FailureReason::Internal,
                message: format!("the assignment of {} could not be persisted: {e}", alloc.ip),
            });
        }
        if lock(ds).lookup(key).map(|a| a.ip) != Some(alloc.ip) {
            return Err(AddFailure {
                reason: FailureReason::NotReady,
                message: format!(
                    "the assignment of {} was undone by a concurrent request for the same container; retry",
                    alloc.ip
                ),
            });
        }
        Ok(())
    }

    /// Releases the address of `key` in `ds` (`None` when it held none), with the generation a checkpoint write
    /// must reach to hold the release; a release wakes the checkpoint flusher.
    pub(super) fn release_in<V: IpVersion>(
        &self,
        ds: &Mutex<Datastore<V>>,
        key: &IpamKey,
    ) -> (Option<Allocation<V>>, u64) {
        let released = lock(ds).unassign(key, self.deps.clock.now());
        if released.is_some() {
            self.flush.notify_one();
        }
        (released, self.generation())
    }

    /// The rest of a durable DEL once the address is released ([`Node::release_in`]): waits until the
    /// checkpoint holds `generation`. The address stays released in memory if the write fails (the error says
    /// so); the next write records it.
    pub(super) async fn released_durably<V: IpVersion>(
        &self,
        (released, generation): (Option<Allocation<V>>, u64),
    ) -> Result<Option<Allocation<V>>, CheckpointError> {
        self.persist(generation).await?;
        Ok(released)
    }
}
