//! The node: datastore + EC2 + IMDS + host networking, and the pool task that keeps IPs ready.
//!
//! Request path (ADD/DEL) and pool path never block each other: an ADD takes the datastore lock for a few
//! microseconds and never calls EC2 or IMDS. The pool task alone talks to EC2, one step at a time
//! ([`crate::pool::decide`]), and only takes the datastore lock to read counts or to apply what EC2 returned.
//!
//! An ADD that finds no usable address **waits** for one when one is on its way (see [`Node::add_durable`]): an
//! address in cooldown whose cooldown ends within the wait bound (`AWS_CNI_ADD_WAIT_SECONDS`), or a pool that is
//! growing (below max-pods, an ENI slot or room left, provisioning allowed, no subnet-full error). Waiting ADDs
//! queue first come first served ([`AddQueue`]); every DEL, every pool step and every reconcile pass wakes them,
//! and each sleeps on the engine's [`Clock`] until the next cooldown ends, so virtual-time tests and benchmarks
//! see the same behaviour. They also count as demand: the pool task, which lets a burst of ADDs gather for
//! [`POOL_DEBOUNCE`] before it decides, asks EC2 for every waiting ADD plus the warm target in one call. When
//! nothing is coming, or the bound passes, the ADD fails with the specific reason (cooldown, max-pods, ENI limit,
//! subnet exhausted, throttled, ...). The anchor fails at once, and kubelet then backs off for seconds.
//!
//! Release hysteresis (`AWS_CNI_POOL_RELEASE_DELAY`): every pool step samples the pool's need into a
//! [`crate::pool::HighWater`], and nothing is given back below its peak over the delay (see [`crate::pool`]).
//!
//! Pool steps, reconciliation and the leaked-ENI cleanup are serialised (one EC2 actor per node), and every EC2
//! call goes through [`crate::ratelimit::PacedEc2`]: a client-side token bucket, jittered retries, a count by API.
//!
//! ENI lifecycle (the anchor's EC2 calls, parameters and tags):
//! - **attach**: DescribeInstances for a free device index on network card 0 (none: no ENI is created);
//!   CreateNetworkInterface in the chosen subnet with description `aws-K8S-<instance>`, the tags
//!   (`instance_id`, `createdAt`, the cluster tags with `CLUSTER_NAME`, `ADDITIONAL_ENI_TAGS`) and its first
//!   addresses already assigned; AttachNetworkInterface (failure: the new ENI is deleted at once);
//!   DeleteOnTermination (failure: the ENI is detached and deleted); wait for IMDS to show it (bounded: IMDS lags);
//!   host setup (table, routes, rule, MTU); only then are its addresses handed out.
//! - **free**: only an ENI the policy picked (never the primary, never with pods or IPs in cooldown): out of the
//!   datastore first (no ADD can take its IPs meanwhile), host teardown, DetachNetworkInterface, then
//!   DeleteNetworkInterface retried while EC2 still sees it in use; NotFound counts as done.
//! - Shrinking is rate-limited (one release per 30 s, anchor `decreaseIPPoolInterval`), and addresses given back
//!   are remembered for 60 s so a lagging IMDS or EC2 view cannot bring them back (see [`crate::reconcile`]).
//! - After `InsufficientFreeAddressesInSubnet`/`InsufficientCidrBlocks` the pool does not try to grow for 120 s.
//!
//! Startup follows the anchor's order: read the node and its ENIs from IMDS, confirm their addresses with one
//! DescribeNetworkInterfaces for all of them (IMDS may lag: EC2 is the truth, anchor #3887; no address known
//! only from IMDS is ever handed out, so startup waits for EC2 rather than fall back to IMDS: throttling and
//! other transient errors are retried in-process for as long as they last, with jittered backoff capped at a
//! minute, and only a permanent error such as a missing IAM permission stops the daemon), apply the node-wide host
//! settings (fwmark rule, SNAT), configure each ENI on the host, restore the checkpoint's assignments onto the
//! addresses EC2 confirmed (see [`crate::reconcile`] for the recovery order), then fill the pool before serving.
//!
//! Durability: [`Node::add_durable`] and [`Node::del_durable`] (what the gRPC service calls) return only once
//! the change is in the checkpoint ([`crate::checkpoint`], group commit); [`Node::add`] and [`Node::del`] change
//! memory only and leave the write to the background flusher ([`Node::run_checkpointer`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aws_cni_proto::FailureReason;
use datapath::MacAddr;
use instance_limits::max_pods::{compute, CniVersion, MaxPodsOptions, DEFAULT_CNI_VERSION};
use ipnetwork::Ipv4Network;
use tokio::sync::Notify;

use crate::checkpoint::{Checkpoint, CheckpointEntry, CheckpointError};
use crate::clock::Clock;
use crate::config::Config;
use crate::datastore::{
    Allocation, AssignError, AssignmentRecord, Datastore, Eni, IpamKey, PodMeta, PoolStats,
};
use crate::ec2::{
    CreateEniRequest, Ec2, Ec2Error, EniDescription, IpRequest, SubnetFilter,
    ENI_DESCRIPTION_PREFIX, TAG_CLUSTER_NAME, TAG_CREATED_AT, TAG_ENI_OWNER, TAG_ENI_OWNER_VALUE,
    TAG_INSTANCE_ID, TAG_NO_MANAGE,
};
use crate::host::snat::SnatPlan;
use crate::host::{HostNetError, HostNetwork, HostPlan};
use crate::imds::{Imds, ImdsError, NodeMetadata};
use crate::pool::{decide, Decision, EniRoom, HighWater, Outlook, PoolPolicy, PREFIX_SIZE};
use crate::ratelimit::{CallCounts, PacedEc2, PacingConfig};

/// Minimum time between two shrinking steps (anchor `decreaseIPPoolInterval`).
pub const SHRINK_INTERVAL: Duration = Duration::from_secs(30);
/// How long given-back addresses are not re-added from a stale view (anchor `ipReconcileCooldown`).
pub const RELEASED_MEMORY: Duration = Duration::from_secs(60);
/// No growth this long after the subnet ran out (anchor `insufficientCidrErrorCooldown`).
pub const SUBNET_EXHAUSTED_BACKOFF: Duration = Duration::from_secs(120);
/// How long the pool task lets a burst of ADDs and DELs gather after being woken, so the burst is one decision
/// (and one EC2 call) rather than one per request.
pub const POOL_DEBOUNCE: Duration = Duration::from_millis(20);
/// A waiting ADD answers this long before the caller's gRPC deadline (`grpc-timeout`), leaving room for the
/// checkpoint write and the reply.
pub const ADD_DEADLINE_MARGIN: Duration = Duration::from_secs(1);
/// Subnet tag that makes a subnet a candidate for new ENIs (subnet discovery).
pub const TAG_CNI_SUBNET: &str = "kubernetes.io/role/cni";

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("reading instance metadata: {0}")]
    Imds(#[from] ImdsError),
    #[error("instance type {0:?} is not in the instance-limits table")]
    UnknownInstanceType(String),
    #[error("instance type {instance_type}: cannot compute max-pods: {reason}")]
    MaxPods {
        instance_type: String,
        reason: String,
    },
    #[error("ENI {eni} from IMDS has an invalid MAC {mac:?}")]
    BadMac { eni: String, mac: String },
    #[error(transparent)]
    HostNet(#[from] HostNetError),
    #[error("datastore: {0}")]
    Datastore(#[from] crate::datastore::DatastoreError),
    /// EC2 refused to describe the node's ENIs with an error retrying cannot fix (transient ones are retried
    /// for as long as they last).
    #[error(
        "EC2 cannot confirm the node's ENIs: {last} (attempt {attempts}; not retried: the error is permanent); \
         addresses known only from IMDS are never handed out"
    )]
    Unverified { attempts: u32, last: Ec2Error },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// The wait between startup attempts to confirm the node's ENIs with EC2 (1, 2, 4, ... s, equal jitter, at
/// most a minute); retried for as long as the failure is transient.
pub const STARTUP_RETRY: crate::ratelimit::Backoff = crate::ratelimit::Backoff {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(60),
};

/// What a restarting node restores and how it checks it (see [`crate::reconcile`]). The default restores
/// nothing and keeps assignments in memory only.
#[derive(Clone)]
pub struct Recovery {
    /// Where assignments are persisted; `None`: memory only.
    pub checkpoint: Option<Arc<Checkpoint>>,
    /// The assignments read from the checkpoint at startup.
    pub entries: Vec<CheckpointEntry>,
    /// The host's pod veths and rules; `None`: no host checks (tests without a kernel).
    pub pods: Option<Arc<dyn HostNetwork>>,
    /// Host veth prefix (`AWS_VPC_K8S_CNI_VETHPREFIX`), to find a restored pod's veth.
    pub veth_prefix: String,
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            checkpoint: None,
            entries: Vec::new(),
            pods: None,
            veth_prefix: "eni".into(),
        }
    }
}

impl std::fmt::Debug for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovery")
            .field("checkpoint", &self.checkpoint)
            .field("entries", &self.entries.len())
            .field("pods", &self.pods.is_some())
            .field("veth_prefix", &self.veth_prefix)
            .finish()
    }
}

/// Restored assignments not yet confirmed by the host (see [`crate::reconcile`]).
#[derive(Debug, Default)]
pub(crate) struct RecoveryState {
    /// Restored keys whose veth has not been seen (or not seen late enough to be sure).
    pub(crate) unconfirmed: BTreeSet<IpamKey>,
    /// When the socket opened (monotonic).
    pub(crate) serving_since: Option<Duration>,
    /// Restored assignments released because their pod is gone.
    pub(crate) released: u64,
    /// When the pool task last checked unconfirmed pods.
    pub(crate) last_check: Option<Duration>,
}

/// Why an ADD got no IP: a reason code the plugin maps to a CNI error, and a sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddFailure {
    pub reason: FailureReason,
    pub message: String,
}

/// Outside worlds the node talks to.
#[derive(Clone)]
pub struct NodeDeps {
    pub ec2: Arc<dyn Ec2>,
    pub imds: Arc<dyn Imds>,
    pub hostnet: Arc<dyn HostNetwork>,
    pub clock: Arc<dyn Clock>,
}

#[derive(Debug, Default)]
pub(crate) struct PoolStatus {
    /// The last EC2 failure of the pool task, cleared by the next success.
    pub(crate) last_error: Option<Ec2Error>,
    /// What the pool task decided last (for status pages and logs).
    pub(crate) last_decision: Option<Decision>,
    /// When the pool last gave something back.
    pub(crate) last_shrink: Option<Duration>,
    /// When the pool last changed anything in EC2.
    pub(crate) last_action: Option<Duration>,
    /// No growth before this time (subnet exhausted).
    pub(crate) grow_blocked_until: Option<Duration>,
    /// Addresses (and prefix bases) given back, and when.
    pub(crate) released: HashMap<Ipv4Addr, Duration>,
    /// Addresses pods lost because EC2 no longer had them.
    pub(crate) force_removed: u64,
    /// EC2 said an ENI or address we hold does not exist: reconcile at the next chance.
    pub(crate) reconcile_wanted: bool,
    /// The pool's need over the release delay (release hysteresis); created with the node.
    pub(crate) high_water: HighWater,
}

/// ADDs waiting for an address, served first come first served: only the oldest waiter takes an address, and a
/// new ADD does not overtake anyone already waiting. `event` fires whenever an address may have become usable
/// or the pool's prospects changed (a DEL, a pool step, a reconcile pass, a waiter served or giving up).
#[derive(Debug, Default)]
pub(crate) struct AddQueue {
    state: Mutex<QueueState>,
    pub(crate) event: Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    next_ticket: u64,
    waiting: VecDeque<u64>,
}

impl AddQueue {
    /// ADDs waiting now.
    pub(crate) fn len(&self) -> usize {
        lock(&self.state).waiting.len()
    }

    fn join(&self) -> u64 {
        let mut st = lock(&self.state);
        let t = st.next_ticket;
        st.next_ticket += 1;
        st.waiting.push_back(t);
        t
    }

    fn is_first(&self, ticket: u64) -> bool {
        lock(&self.state).waiting.front() == Some(&ticket)
    }

    fn leave(&self, ticket: u64) {
        lock(&self.state).waiting.retain(|t| *t != ticket);
        // The next in line may now go (or re-check its prospects).
        self.event.notify_waiters();
    }

    /// Wakes every waiter to look again.
    pub(crate) fn poke(&self) {
        self.event.notify_waiters();
    }
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

/// Counters of the engine's work, for tests, status and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineCounters {
    /// EC2 calls by API (sent, retried, paced).
    pub ec2: CallCounts,
    /// Addresses pods lost because EC2 no longer had them (reconcile).
    pub force_removed: u64,
}

/// See the module docs.
pub struct Node {
    pub(crate) deps: NodeDeps,
    pub(crate) ec2: Arc<PacedEc2>,
    pub(crate) config: Config,
    pub(crate) meta: NodeMetadata,
    pub(crate) subnet_id: String,
    pub(crate) policy: PoolPolicy,
    pub(crate) ds: Mutex<Datastore>,
    pub(crate) status: Mutex<PoolStatus>,
    pub(crate) wake: Notify,
    /// Serialises everything that calls EC2.
    pub(crate) actor: tokio::sync::Mutex<()>,
    /// The checkpoint writer, if assignments are persisted.
    pub(crate) checkpoint: Option<Arc<Checkpoint>>,
    /// Wakes the background checkpoint flusher.
    pub(crate) flush: Notify,
    pub(crate) recovery: Mutex<RecoveryState>,
    pub(crate) pods: Option<Arc<dyn HostNetwork>>,
    pub(crate) veth_prefix: String,
    /// ADDs waiting for an address.
    pub(crate) adds: AddQueue,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("instance", &self.meta.instance_id)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Datastore operations do not panic; if one ever did, keep the data rather than poison every request.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn mac_of(eni: &EniDescription) -> Result<MacAddr, NodeError> {
    MacAddr::parse(&eni.mac).ok_or_else(|| NodeError::BadMac {
        eni: eni.id.clone(),
        mac: eni.mac.clone(),
    })
}

/// The policy for an instance type and configuration.
pub fn policy_for(
    limits: &instance_limits::InstanceLimits,
    config: &Config,
    max_pods_override: Option<u32>,
) -> Result<PoolPolicy, String> {
    let pd = config.prefix_delegation && limits.supports_prefix_delegation();
    let max_enis = config.max_eni.map_or(limits.enis, |m| m.min(limits.enis));
    let max_pods = match max_pods_override {
        Some(n) => n,
        None => {
            let version: CniVersion = DEFAULT_CNI_VERSION
                .parse()
                .map_err(|e: instance_limits::max_pods::MaxPodsError| e.to_string())?;
            let mut opts = MaxPodsOptions::new(version);
            opts.cni_max_eni = config.max_eni;
            opts.prefix_delegation = pd;
            // Secondary IPs: the ENI-derived limit, as eni-max-pods.txt. PD: the calculator's 110/250 cap,
            // as kubelet would be configured (the uncapped PD number is far above what a node runs).
            opts.show_max_allowed = !pd;
            compute(limits, &opts).map_err(|e| e.to_string())?.max_pods
        }
    };
    let slots = limits.ipv4_per_eni.saturating_sub(1);
    Ok(PoolPolicy {
        warm_eni_target: config.warm_eni_target,
        warm_ip_target: config.warm_ip_target,
        minimum_ip_target: config.minimum_ip_target,
        warm_prefix_target: config.warm_prefix_target,
        prefix_delegation: pd,
        ips_per_eni: if pd { slots * PREFIX_SIZE } else { slots },
        max_enis,
        max_pods,
    })
}

impl Node {
    /// Discovers the node and its ENIs and loads them. Calls EC2 once (DescribeNetworkInterfaces).
    pub async fn init(
        deps: NodeDeps,
        config: Config,
        max_pods_override: Option<u32>,
    ) -> Result<Arc<Node>, NodeError> {
        Node::init_with(deps, config, max_pods_override, PacingConfig::default()).await
    }

    /// [`Node::init`] with explicit client-side pacing.
    pub async fn init_with(
        deps: NodeDeps,
        config: Config,
        max_pods_override: Option<u32>,
        pacing: PacingConfig,
    ) -> Result<Arc<Node>, NodeError> {
        Node::init_recovering(deps, config, max_pods_override, pacing, Recovery::default()).await
    }

    /// [`Node::init_with`] that also restores the assignments of `recovery` (verified against EC2) and persists
    /// every later change to its checkpoint.
    pub async fn init_recovering(
        deps: NodeDeps,
        config: Config,
        max_pods_override: Option<u32>,
        pacing: PacingConfig,
        recovery: Recovery,
    ) -> Result<Arc<Node>, NodeError> {
        let meta = deps.imds.node().await?;
        let limits = instance_limits::lookup(&meta.instance_type)
            .ok_or_else(|| NodeError::UnknownInstanceType(meta.instance_type.clone()))?;
        if config.prefix_delegation && !limits.supports_prefix_delegation() {
            tracing::warn!(
                instance_type = %meta.instance_type,
                "ENABLE_PREFIX_DELEGATION=true but the instance type is not Nitro: using secondary IPs"
            );
        }
        let policy = policy_for(limits, &config, max_pods_override).map_err(|reason| {
            NodeError::MaxPods {
                instance_type: meta.instance_type.clone(),
                reason,
            }
        })?;
        let ec2 = Arc::new(PacedEc2::new(
            Arc::clone(&deps.ec2),
            Arc::clone(&deps.clock),
            pacing,
        ));
        let primary_mac = MacAddr::parse(&meta.primary_mac).ok_or_else(|| NodeError::BadMac {
            eni: "primary".into(),
            mac: meta.primary_mac.clone(),
        })?;
        let node = Arc::new(Node {
            subnet_id: meta.subnet_id.clone(),
            deps,
            ec2,
            policy,
            ds: Mutex::new(Datastore::new(config.ip_cooldown)),
            status: Mutex::new(PoolStatus {
                high_water: HighWater::new(config.pool_release_delay),
                ..PoolStatus::default()
            }),
            adds: AddQueue::default(),
            wake: Notify::new(),
            actor: tokio::sync::Mutex::new(()),
            checkpoint: recovery.checkpoint.clone(),
            flush: Notify::new(),
            recovery: Mutex::new(RecoveryState::default()),
            pods: recovery.pods.clone(),
            veth_prefix: recovery.veth_prefix.clone(),
            meta,
            config,
        });
        node.deps
            .hostnet
            .setup_host(&node.host_plan(primary_mac))
            .await?;

        let imds_enis: Vec<_> = node
            .deps
            .imds
            .enis()
            .await?
            .into_iter()
            .filter(|e| e.network_card == 0)
            .collect();
        // EC2 is the truth about addresses and tags; IMDS only says what is attached (and may lag). No address
        // known only from IMDS is handed out (anchor #3887): without EC2's answer the node does not start.
        let ids: Vec<String> = imds_enis.iter().map(|e| e.eni_id.clone()).collect();
        let described = node.describe_at_startup(&ids).await?;
        let now = node.deps.clock.now();
        for ie in imds_enis {
            let mac = MacAddr::parse(&ie.mac).ok_or_else(|| NodeError::BadMac {
                eni: ie.eni_id.clone(),
                mac: ie.mac.clone(),
            })?;
            let Some(primary_ip) = ie.ipv4s.first() else {
                continue;
            };
            let (ips, prefixes) = match described.get(&ie.eni_id) {
                // IMDS lags: EC2 may already have detached it (never the primary, which cannot be).
                Some(Some(d))
                    if ie.device_number != 0
                        && (d.status == "available"
                            || d.instance_id
                                .as_deref()
                                .is_some_and(|i| i != node.meta.instance_id)) =>
                {
                    tracing::warn!(eni = %ie.eni_id, "ENI in IMDS is no longer attached per EC2: ignored");
                    continue;
                }
                Some(Some(d)) => {
                    if ie.device_number != 0
                        && d.tags.get(TAG_NO_MANAGE).map(String::as_str) == Some("true")
                    {
                        tracing::info!(eni = %ie.eni_id, "ENI tagged no_manage: left alone");
                        continue;
                    }
                    (d.secondary_ips.clone(), d.ipv4_prefixes.clone())
                }
                // EC2 no longer has it (detached or deleted; IMDS lags): nothing on it is usable.
                Some(None) | None => {
                    tracing::warn!(eni = %ie.eni_id, "ENI in IMDS but not in EC2: ignored");
                    continue;
                }
            };
            let mut eni = Eni::new(
                &ie.eni_id,
                mac,
                ie.device_number,
                *primary_ip,
                ie.subnet_cidr,
            );
            eni.attached_at = now;
            node.deps
                .hostnet
                .setup_eni(&eni, node.config.eni_mtu)
                .await?;
            let mut ds = lock(&node.ds);
            ds.add_eni(eni);
            ds.add_ips(&ie.eni_id, &ips)?;
            ds.add_prefixes(&ie.eni_id, &prefixes)?;
        }
        node.restore(recovery.entries).await?;
        tracing::info!(
            instance = %node.meta.instance_id,
            instance_type = %node.meta.instance_type,
            max_enis = node.policy.max_enis,
            ips_per_eni = node.policy.ips_per_eni,
            prefix_delegation = node.policy.prefix_delegation,
            max_pods = node.policy.max_pods,
            enis = node.stats().enis,
            "node initialised"
        );
        Ok(node)
    }

    pub(crate) fn host_plan(&self, primary_mac: MacAddr) -> HostPlan {
        HostPlan {
            primary_mac,
            mtu: self.config.eni_mtu,
            snat: SnatPlan {
                primary_ip: self.meta.local_ipv4,
                primary_if: String::new(),
                vpc_cidrs: self.meta.vpc_cidrs.clone(),
                exclude_cidrs: self.config.exclude_snat_cidrs.clone(),
                external_snat: self.config.external_snat,
                randomize: self.config.randomize_snat,
                connmark: self.config.connmark,
                node_port_support: self.config.node_port_support,
                veth_prefix: self.veth_prefix.clone(),
            },
        }
    }

    /// The node's metadata as read at startup.
    pub fn metadata(&self) -> &NodeMetadata {
        &self.meta
    }

    /// The pool policy in force.
    pub fn policy(&self) -> PoolPolicy {
        self.policy
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Current counts.
    pub fn stats(&self) -> PoolStats {
        lock(&self.ds).stats(self.deps.clock.now())
    }

    /// A copy of the datastore (for status output and tests).
    pub fn datastore(&self) -> Datastore {
        lock(&self.ds).clone()
    }

    /// EC2 calls made by this node (by API) and other engine counters.
    pub fn counters(&self) -> EngineCounters {
        EngineCounters {
            ec2: self.ec2.counts(),
            force_removed: lock(&self.status).force_removed,
        }
    }

    /// The last pool decision and EC2 error (for status pages).
    pub fn last_decision(&self) -> (Option<Decision>, Option<Ec2Error>) {
        let st = lock(&self.status);
        (st.last_decision.clone(), st.last_error.clone())
    }

    /// Assigns an IP to `key` (or returns the one it holds). Never waits on EC2. The checkpoint is written in
    /// the background; see [`Node::add_durable`].
    pub fn add(&self, key: &IpamKey, meta: &PodMeta) -> Result<Allocation, AddFailure> {
        self.assign_now(key, meta).map(|(a, _, _)| a)
    }

    fn assign_now(
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
        self.add_durable_within(key, meta, self.config.add_wait)
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
        let (alloc, fresh, generation) = self.assign_waiting(key, meta, bound).await?;
        if let Err(e) = self.persist(generation).await {
            if fresh {
                lock(&self.ds).unassign_unused(key, alloc.ip);
                self.flush.notify_one();
                self.adds.poke();
            }
            return Err(AddFailure {
                reason: FailureReason::Internal,
                message: format!("the assignment of {} could not be persisted: {e}", alloc.ip),
            });
        }
        // A concurrent request for the same key (a repeated ADD whose first write failed and was undone, or a
        // DEL) may have changed it while we waited: answer only what is held, and durably so.
        if lock(&self.ds).lookup(key).map(|a| a.ip) != Some(alloc.ip) {
            return Err(AddFailure {
                reason: FailureReason::NotReady,
                message: format!(
                    "the assignment of {} was undone by a concurrent request for the same container; retry",
                    alloc.ip
                ),
            });
        }
        Ok(alloc)
    }

    /// Assigns an address to `key`, waiting up to `bound` for one on its way: first come first served behind
    /// the ADDs already waiting, woken by DELs, pool steps and reconcile passes, and sleeping on the clock until
    /// the next cooldown ends. Fails with the specific reason when nothing is coming or the bound passes.
    async fn assign_waiting(
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
    fn try_assign(
        &self,
        key: &IpamKey,
        meta: &PodMeta,
    ) -> Result<(Allocation, bool, u64), AssignError> {
        let now = self.deps.clock.now();
        let wall = self.deps.clock.wall();
        let res = {
            let mut ds = lock(&self.ds);
            ds.assign_at(key, meta, now, wall)
                .map(|(a, fresh)| (a, fresh, ds.generation()))
        };
        self.wake.notify_one();
        if matches!(res, Ok((_, true, _))) {
            self.flush.notify_one();
        }
        res
    }

    /// Whether an address can reach a waiting ADD by `deadline`: a cooldown ends by then, or the pool can grow.
    fn address_coming(&self, now: Duration, deadline: Duration) -> bool {
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
    /// provisioning disabled, or the subnet out of addresses (within its backoff).
    fn growth_blocked(&self, stats: &PoolStats, now: Duration) -> bool {
        let slots = self.policy.slots_per_eni();
        let total = u32::try_from(stats.total).unwrap_or(u32::MAX);
        let all_full = u32::try_from(stats.enis).unwrap_or(u32::MAX) >= self.policy.max_enis
            && self.rooms(now).iter().all(|r| r.slots >= slots);
        let status = lock(&self.status);
        let at_eni_limit =
            all_full || matches!(status.last_decision, Some(Decision::AtEniLimit { .. }));
        let subnet_exhausted = matches!(status.last_error, Some(Ec2Error::SubnetExhausted { .. }))
            && status.grow_blocked_until.is_some_and(|t| now < t);
        total >= self.policy.max_pods
            || at_eni_limit
            || self.config.disable_provisioning
            || subnet_exhausted
    }

    /// Releases the IP of `key`; `None` when it held none (repeated DEL). The checkpoint is written in the
    /// background; see [`Node::del_durable`].
    pub fn del(&self, key: &IpamKey) -> Option<Allocation> {
        self.release_now(key).0
    }

    fn release_now(&self, key: &IpamKey) -> (Option<Allocation>, u64) {
        let res = {
            let mut ds = lock(&self.ds);
            let r = ds.unassign(key, self.deps.clock.now());
            (r, ds.generation())
        };
        self.wake.notify_one();
        if let Some(a) = &res.0 {
            self.deps.hostnet.forget_flows(a.ip);
            self.flush.notify_one();
            // With no cooldown the address is usable now; else waiters re-plan around its cooldown's end.
            self.adds.poke();
        }
        res
    }

    /// [`Node::del`] that returns only once the release is in the checkpoint. The address is released in memory
    /// even if the write fails (the error says so); the next write records it.
    pub async fn del_durable(&self, key: &IpamKey) -> Result<Option<Allocation>, CheckpointError> {
        let (released, generation) = self.release_now(key);
        self.persist(generation).await?;
        Ok(released)
    }

    /// Returns once datastore generation `generation` is in the checkpoint (at once without a checkpoint).
    pub async fn persist(&self, generation: u64) -> Result<(), CheckpointError> {
        match &self.checkpoint {
            None => Ok(()),
            Some(cp) => cp.persist(generation, || self.checkpoint_snapshot()).await,
        }
    }

    /// Writes the current assignments to the checkpoint now (startup, shutdown).
    pub async fn flush_checkpoint(&self) -> Result<(), CheckpointError> {
        match &self.checkpoint {
            None => Ok(()),
            Some(cp) => cp.persist_now(|| self.checkpoint_snapshot()).await,
        }
    }

    fn checkpoint_snapshot(&self) -> (u64, Vec<AssignmentRecord>) {
        let ds = lock(&self.ds);
        (ds.generation(), ds.records())
    }

    /// The checkpoint writer, if any.
    pub fn checkpoint(&self) -> Option<&Arc<Checkpoint>> {
        self.checkpoint.as_ref()
    }

    /// Writes changes nobody waits for (GC, reconcile evictions, releases of restored pods) within a second, until
    /// `stop` turns true. Failures are logged and retried.
    pub async fn run_checkpointer(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(cp) = self.checkpoint.clone() else {
            return;
        };
        loop {
            if *stop.borrow() {
                return;
            }
            let generation = lock(&self.ds).generation();
            if generation > cp.durable_generation() {
                if let Err(e) = self.persist(generation).await {
                    tracing::error!(error = %e, "checkpoint write failed; retrying");
                }
            }
            tokio::select! {
                _ = stop.changed() => {}
                () = self.flush.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    fn explain(&self, err: AssignError) -> AddFailure {
        let AssignError::NoFreeIp { in_cooldown } = err;
        let stats = self.stats();
        let now = self.deps.clock.now();
        // Every ENI slot used and every ENI full: known without waiting for the pool task's verdict.
        let slots = self.policy.slots_per_eni();
        let all_full = u32::try_from(stats.enis).unwrap_or(u32::MAX) >= self.policy.max_enis
            && self.rooms(now).iter().all(|r| r.slots >= slots);
        let cannot_grow = self.growth_blocked(&stats, now);
        let status = lock(&self.status);
        let total = u32::try_from(stats.total).unwrap_or(u32::MAX);
        let at_eni_limit =
            all_full || matches!(status.last_decision, Some(Decision::AtEniLimit { .. }));
        let cooldown_secs = self.config.ip_cooldown.as_secs();
        let (reason, message) = if in_cooldown > 0 && cannot_grow {
            (
                FailureReason::AllFreeIpsInCooldown,
                format!(
                    "all {in_cooldown} free address(es) are in their {cooldown_secs}s reuse cooldown and the node \
                     cannot get more ({total} addresses, max-pods {}, {} of {} ENIs)",
                    self.policy.max_pods, stats.enis, self.policy.max_enis
                ),
            )
        } else if total >= self.policy.max_pods {
            (
                FailureReason::MaxPodsReached,
                format!(
                    "node holds {total} addresses, its max-pods limit ({}), all assigned",
                    self.policy.max_pods
                ),
            )
        } else if at_eni_limit {
            (
                FailureReason::NodeAtEniLimit,
                format!(
                    "all {} ENIs of this instance type are attached and full ({total} addresses, {} assigned)",
                    self.policy.max_enis, stats.assigned
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
        AddFailure { reason, message }
    }

    pub(crate) fn rooms(&self, now: Duration) -> Vec<EniRoom> {
        let ds = lock(&self.ds);
        let cooldown = ds.cooldown();
        ds.enis()
            .map(|e| {
                let prefixes = e.prefixes().count();
                let ips = e.ip_count();
                let secondaries = ips.saturating_sub(prefixes * PREFIX_SIZE as usize);
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
    fn outlook(&self, now: Duration, stats: &PoolStats) -> Outlook {
        let waiting = u32::try_from(self.adds.len()).unwrap_or(u32::MAX);
        let need = self.policy.need(stats, waiting);
        let mut st = lock(&self.status);
        st.high_water.record(now, need);
        Outlook {
            waiting,
            keep: st.high_water.peak(now),
            may_shrink: st
                .last_shrink
                .is_none_or(|t| now.saturating_sub(t) >= SHRINK_INTERVAL),
        }
    }

    /// What the pool would do now (no EC2 call).
    pub fn next_decision(&self) -> Decision {
        let now = self.deps.clock.now();
        let stats = self.stats();
        let outlook = self.outlook(now, &stats);
        decide(&self.policy, &stats, &self.rooms(now), &outlook)
    }

    /// Addresses the release hysteresis keeps now (the peak need over `AWS_CNI_POOL_RELEASE_DELAY`).
    pub fn pool_floor(&self) -> u32 {
        let now = self.deps.clock.now();
        lock(&self.status).high_water.peak(now)
    }

    /// ADDs waiting for an address now.
    pub fn adds_waiting(&self) -> usize {
        self.adds.len()
    }

    /// Decides and carries out one pool step. Returns what was decided. Waiting ADDs are woken afterwards,
    /// whatever happened (new addresses, or an error that may mean none are coming).
    pub async fn pool_step(&self) -> Result<Decision, Ec2Error> {
        let res = self.pool_step_inner().await;
        self.adds.poke();
        res
    }

    async fn pool_step_inner(&self) -> Result<Decision, Ec2Error> {
        let _actor = self.actor.lock().await;
        let now = self.deps.clock.now();
        let mut decision = self.next_decision();
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
        } else {
            match &decision {
                Decision::Hold | Decision::AtEniLimit { .. } => Ok(()),
                Decision::AssignIps { eni_id, count } => {
                    self.assign(eni_id, IpRequest::Secondary(*count)).await
                }
                Decision::AssignPrefixes { eni_id, count } => {
                    self.assign(eni_id, IpRequest::Prefixes(*count)).await
                }
                Decision::AttachEni { request } => self.attach_eni(*request).await,
                Decision::ReleaseIps { eni_id, ips } => self.release(eni_id, ips, &[]).await,
                Decision::ReleasePrefixes { eni_id, prefixes } => {
                    self.release(eni_id, &[], prefixes).await
                }
                Decision::FreeEni { eni_id } => self.free_eni(eni_id).await,
            }
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
                    }
                    Ec2Error::NotFound { .. } => st.reconcile_wanted = true,
                    _ => {}
                }
                st.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    async fn assign(&self, eni_id: &str, req: IpRequest) -> Result<(), Ec2Error> {
        let got = match self.ec2.assign_private_ips(eni_id, req).await {
            Ok(got) => got,
            Err(e @ Ec2Error::IpLimitExceeded { .. }) => {
                // Our view of the ENI is behind EC2's: re-read it.
                tracing::warn!(eni = eni_id, error = %e, "ENI fuller than we thought; re-reading it");
                self.resync_enis(&[eni_id.to_string()]).await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let mut ds = lock(&self.ds);
        let res = ds
            .add_ips(eni_id, &got.ips)
            .and_then(|a| ds.add_prefixes(eni_id, &got.prefixes).map(|b| a + b));
        match res {
            Ok(n) => tracing::info!(eni = eni_id, ?req, added = n, "assigned addresses"),
            Err(e) => {
                tracing::error!(eni = eni_id, error = %e, "EC2 returned addresses the datastore refused")
            }
        }
        Ok(())
    }

    /// Re-reads ENIs from EC2 and makes the datastore match (addresses only).
    pub(crate) async fn resync_enis(&self, ids: &[String]) -> Result<(), Ec2Error> {
        let described = self.ec2.describe_network_interfaces(ids).await?;
        let now = self.deps.clock.now();
        let mut st = lock(&self.status);
        st.released
            .retain(|_, t| now.saturating_sub(*t) < RELEASED_MEMORY);
        let released = st.released.clone();
        let skip = |ip: Ipv4Addr| released.contains_key(&ip);
        let mut ds = lock(&self.ds);
        for d in described {
            match ds.sync_eni(&d.id, &d.secondary_ips, &d.ipv4_prefixes, &skip) {
                Ok(r) => {
                    if !r.evicted.is_empty() {
                        tracing::warn!(eni = %d.id, pods = ?r.evicted, "EC2 no longer has addresses pods held");
                    }
                    st.force_removed += r.evicted.len() as u64;
                    if r.added + r.removed > 0 {
                        tracing::info!(eni = %d.id, added = r.added, removed = r.removed, "ENI addresses synced with EC2");
                    }
                }
                Err(e) => tracing::warn!(eni = %d.id, error = %e, "cannot sync ENI"),
            }
        }
        Ok(())
    }

    async fn release(
        &self,
        eni_id: &str,
        ips: &[Ipv4Addr],
        prefixes: &[Ipv4Network],
    ) -> Result<(), Ec2Error> {
        let now = self.deps.clock.now();
        // Out of the datastore first, so no ADD takes them while EC2 is asked.
        {
            let mut ds = lock(&self.ds);
            let res = ds
                .remove_ips(eni_id, ips, now)
                .and_then(|()| ds.remove_prefixes(eni_id, prefixes, now));
            if let Err(e) = res {
                tracing::debug!(eni = eni_id, error = %e, "release skipped: addresses changed");
                return Ok(());
            }
        }
        match self.ec2.unassign_private_ips(eni_id, ips, prefixes).await {
            Ok(()) => {
                let mut st = lock(&self.status);
                for ip in ips
                    .iter()
                    .copied()
                    .chain(prefixes.iter().map(|p| p.network()))
                {
                    st.released.insert(ip, now);
                }
                tracing::info!(
                    eni = eni_id,
                    ips = ips.len(),
                    prefixes = prefixes.len(),
                    "gave addresses back to EC2"
                );
                Ok(())
            }
            Err(e) => {
                // EC2 may or may not have applied it: let reconcile find out; until then, use them again.
                let mut ds = lock(&self.ds);
                if let Err(err) = ds
                    .add_ips(eni_id, ips)
                    .and_then(|_| ds.add_prefixes(eni_id, prefixes))
                {
                    tracing::warn!(eni = eni_id, error = %err, "cannot restore addresses after failed release");
                }
                Err(e)
            }
        }
    }

    /// The subnet for a new ENI: with subnet discovery the one with most free addresses among the node's subnet
    /// and the subnets tagged `kubernetes.io/role/cni` (value "0" excludes), else the node's subnet.
    async fn pick_subnet(&self) -> String {
        if !self.config.subnet_discovery {
            return self.subnet_id.clone();
        }
        let filter = SubnetFilter {
            ids: Vec::new(),
            vpc_id: Some(self.meta.vpc_id.clone()),
            availability_zone: Some(self.meta.availability_zone.clone()),
        };
        match self.ec2.describe_subnets(&filter).await {
            Ok(subnets) => subnets
                .into_iter()
                .filter(|s| match s.tags.get(TAG_CNI_SUBNET) {
                    Some(v) => v != "0",
                    None => s.id == self.subnet_id,
                })
                .max_by_key(|s| (s.available_ip_count, s.id == self.subnet_id))
                .map_or_else(|| self.subnet_id.clone(), |s| s.id),
            Err(e) => {
                tracing::warn!(error = %e, "subnet discovery failed; using the node's subnet");
                self.subnet_id.clone()
            }
        }
    }

    fn eni_tags(&self) -> BTreeMap<String, String> {
        let mut tags = self.config.additional_eni_tags.clone();
        tags.insert(TAG_INSTANCE_ID.to_string(), self.meta.instance_id.clone());
        tags.insert(
            TAG_CREATED_AT.to_string(),
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + self.deps.clock.wall())
                .to_string(),
        );
        if !self.config.cluster_name.is_empty() {
            tags.insert(
                TAG_CLUSTER_NAME.to_string(),
                self.config.cluster_name.clone(),
            );
            tags.insert(TAG_ENI_OWNER.to_string(), TAG_ENI_OWNER_VALUE.to_string());
        }
        tags
    }

    async fn attach_eni(&self, request: IpRequest) -> Result<(), Ec2Error> {
        let instance = self.ec2.describe_instance(&self.meta.instance_id).await?;
        let used: Vec<u32> = instance
            .attachments
            .iter()
            .filter(|(card, _)| *card == 0)
            .map(|(_, d)| *d)
            .collect();
        let Some(device_index) = (1..self.policy.max_enis.max(2)).find(|d| !used.contains(d))
        else {
            return Err(Ec2Error::EniLimitExceeded {
                api: "DescribeInstances",
            });
        };
        let subnet_id = self.pick_subnet().await;
        let eni = self
            .ec2
            .create_network_interface(CreateEniRequest {
                subnet_id,
                description: format!("{ENI_DESCRIPTION_PREFIX}{}", self.meta.instance_id),
                security_groups: self.meta.security_groups.clone(),
                tags: self.eni_tags(),
                ips: request,
            })
            .await?;
        let attachment = match self
            .ec2
            .attach_network_interface(&eni.id, &self.meta.instance_id, device_index, 0)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                // A created-but-unattached ENI is a leak waiting to happen: delete it now.
                if let Err(del) = self.ec2.delete_network_interface(&eni.id).await {
                    tracing::warn!(eni = %eni.id, error = %del, "could not delete ENI after failed attach; \
                        the leaked-ENI cleanup will retry");
                }
                return Err(e);
            }
        };
        if let Err(e) = self
            .ec2
            .set_delete_on_termination(&eni.id, &attachment)
            .await
        {
            tracing::warn!(eni = %eni.id, error = %e, "could not set DeleteOnTermination; freeing the ENI");
            self.detach_and_delete(&eni.id, Some(attachment)).await;
            return Err(e);
        }
        self.wait_for_imds(&eni.id).await;
        let mac = mac_of(&eni).map_err(|e| Ec2Error::Other {
            api: "CreateNetworkInterface",
            code: "InvalidMac".into(),
            message: e.to_string(),
        })?;
        let mut new = Eni::new(&eni.id, mac, device_index, eni.primary_ip, eni.subnet_cidr);
        new.attached_at = self.deps.clock.now();
        if let Err(e) = self.deps.hostnet.setup_eni(&new, self.config.eni_mtu).await {
            // Keep the ENI (EC2 has it attached) but do not hand out its IPs: pods on it would have no route.
            // Reconcile adopts it once the host side works.
            tracing::error!(eni = %eni.id, error = %e, "ENI attached but host setup failed; will retry");
            return Err(Ec2Error::Other {
                api: "AttachNetworkInterface",
                code: "HostSetupFailed".into(),
                message: e.to_string(),
            });
        }
        let mut ds = lock(&self.ds);
        ds.add_eni(new);
        if let Err(e) = ds
            .add_ips(&eni.id, &eni.secondary_ips)
            .and_then(|_| ds.add_prefixes(&eni.id, &eni.ipv4_prefixes))
        {
            tracing::error!(eni = %eni.id, error = %e, "datastore refused the new ENI's addresses");
        }
        tracing::info!(
            eni = %eni.id,
            device_index,
            subnet = %eni.subnet_id,
            ips = eni.secondary_ips.len(),
            prefixes = eni.ipv4_prefixes.len(),
            "attached ENI"
        );
        Ok(())
    }

    /// Waits (bounded, with backoff) until IMDS lists the ENI, as the anchor does after an attach.
    async fn wait_for_imds(&self, eni_id: &str) {
        let mut wait = Duration::from_millis(100);
        for _ in 0..12 {
            match self.deps.imds.enis().await {
                Ok(enis) if enis.iter().any(|e| e.eni_id == eni_id) => return,
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "IMDS read failed while waiting for an ENI"),
            }
            self.deps.clock.sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
        tracing::warn!(
            eni = eni_id,
            "IMDS does not show the new ENI yet; continuing with EC2's view"
        );
    }

    async fn free_eni(&self, eni_id: &str) -> Result<(), Ec2Error> {
        let now = self.deps.clock.now();
        let eni = {
            let mut ds = lock(&self.ds);
            let Some(eni) = ds.eni(eni_id).cloned() else {
                return Ok(());
            };
            if eni.is_primary {
                return Ok(());
            }
            if let Err(e) = ds.remove_eni(eni_id, now, false) {
                tracing::debug!(eni = eni_id, error = %e, "ENI no longer free; kept");
                return Ok(());
            }
            eni
        };
        if let Err(e) = self.deps.hostnet.teardown_eni(&eni).await {
            tracing::warn!(eni = eni_id, error = %e, "host teardown of the ENI failed");
        }
        {
            let mut st = lock(&self.status);
            for ip in eni.ips() {
                st.released.insert(ip, now);
            }
        }
        self.detach_and_delete(eni_id, None).await;
        tracing::info!(eni = eni_id, device = eni.device_number, "freed ENI");
        Ok(())
    }

    /// Detaches (if attached) and deletes an ENI, retrying as the anchor does. Failures are logged: a leftover
    /// ENI is found again by reconcile (still attached) or by the leaked-ENI cleanup (available).
    pub(crate) async fn detach_and_delete(&self, eni_id: &str, attachment: Option<String>) {
        let attachment = match attachment {
            Some(a) => Some(a),
            None => match self
                .ec2
                .describe_network_interfaces(&[eni_id.to_string()])
                .await
            {
                Ok(d) => d.into_iter().next().and_then(|d| d.attachment_id),
                Err(Ec2Error::NotFound { .. }) => return,
                Err(e) => {
                    tracing::warn!(eni = eni_id, error = %e, "cannot look up the ENI's attachment");
                    return;
                }
            },
        };
        if let Some(a) = attachment {
            if let Err(e) = self.ec2.detach_network_interface(&a).await {
                if !matches!(e, Ec2Error::NotFound { .. }) {
                    tracing::warn!(eni = eni_id, error = %e, "detach failed; reconcile will retry");
                    return;
                }
            }
            // The anchor waits for the detachment to settle before deleting.
            self.deps.clock.sleep(Duration::from_secs(2)).await;
        }
        let mut wait = Duration::from_millis(500);
        for _ in 0..6 {
            match self.ec2.delete_network_interface(eni_id).await {
                Ok(()) | Err(Ec2Error::NotFound { .. }) => return,
                Err(e) => {
                    tracing::debug!(eni = eni_id, error = %e, "delete failed; retrying");
                    self.deps.clock.sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
        tracing::warn!(
            eni = eni_id,
            "could not delete the ENI; the leaked-ENI cleanup will"
        );
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
    /// [`crate::reconcile`]). Returns when `shutdown` fires.
    pub async fn run_pool(self: Arc<Self>, interval: Duration, shutdown: Arc<Notify>) {
        let mut failures: u32 = 0;
        let mut timers = crate::reconcile::Timers::new(self.deps.clock.now());
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

    /// The VPC CIDRs reported to the plugin (read once at startup, never per ADD).
    pub fn vpc_cidrs(&self) -> Vec<String> {
        self.meta.vpc_cidrs.iter().map(|c| c.to_string()).collect()
    }

    /// The IP of the node's primary ENI.
    pub fn primary_ip(&self) -> Ipv4Addr {
        self.meta.local_ipv4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::host::fakes::FakeHost;
    use crate::sim::SimEc2;

    async fn node(instance_type: &str, config: Config) -> (Arc<Node>, SimEc2, ManualClock) {
        let (sim, clock) = crate::sim::on_manual_clock(instance_type, |_| {}).await;
        let deps = NodeDeps {
            ec2: Arc::new(sim.clone()),
            imds: Arc::new(sim.clone()),
            hostnet: Arc::new(FakeHost::default()),
            clock: Arc::new(clock.clone()),
        };
        let n = Node::init(deps, config, None).await.expect("init");
        (n, sim, clock)
    }

    fn key(i: usize) -> IpamKey {
        IpamKey {
            network_name: "aws-cni".into(),
            container_id: format!("c{i}"),
            if_name: "eth0".into(),
        }
    }

    #[tokio::test]
    async fn fill_then_add_never_calls_ec2_while_ips_are_free() {
        let (n, sim, _) = node("m5.large", Config::default()).await;
        n.fill().await.expect("fill");
        assert_eq!(n.stats().available, 9);
        let before = sim.calls();
        for i in 0..9 {
            n.add(&key(i), &PodMeta::default()).expect("free ip");
        }
        assert_eq!(sim.calls(), before, "ADD must not call EC2");
    }

    #[tokio::test]
    async fn m5_large_fills_to_27_ips_and_reports_eni_limit() {
        let (n, sim, _) = node("m5.large", Config::default()).await;
        let mut ips = std::collections::HashSet::new();
        for i in 0..27 {
            n.fill().await.expect("fill");
            let a = n.add(&key(i), &PodMeta::default()).expect("ip");
            assert!(ips.insert(a.ip));
        }
        n.fill().await.expect("fill");
        let err = n.add(&key(99), &PodMeta::default()).expect_err("full");
        assert_eq!(err.reason, FailureReason::NodeAtEniLimit, "{}", err.message);
        assert_eq!(n.stats().enis, 3);
        assert_eq!(sim.calls().get("CreateNetworkInterface"), Some(&2));
        // Batched: one AssignPrivateIpAddresses filled the primary ENI, the others came with their ENIs.
        assert_eq!(sim.calls().get("AssignPrivateIpAddresses"), Some(&1));
    }

    /// IMDS that claims one more secondary address on the primary ENI than EC2 has (a stale or wrong view).
    struct ImdsClaimingMore {
        inner: SimEc2,
        extra: Ipv4Addr,
    }

    #[async_trait::async_trait]
    impl Imds for ImdsClaimingMore {
        async fn node(&self) -> Result<NodeMetadata, ImdsError> {
            self.inner.node().await
        }
        async fn enis(&self) -> Result<Vec<crate::imds::ImdsEni>, ImdsError> {
            let mut enis = self.inner.enis().await?;
            if let Some(primary) = enis.iter_mut().find(|e| e.device_number == 0) {
                primary.ipv4s.push(self.extra);
            }
            Ok(enis)
        }
    }

    async fn throttled_start(
        fault: crate::sim::Fault,
        count: u32,
    ) -> (Result<Arc<Node>, NodeError>, SimEc2, ManualClock, Ipv4Addr) {
        let (sim, clock) = crate::sim::on_manual_clock("m5.large", |s| s.throttle = None).await;
        let extra = Ipv4Addr::new(10, 0, 15, 250);
        sim.inject_faults(fault, Some("DescribeNetworkInterfaces"), count);
        let deps = NodeDeps {
            ec2: Arc::new(sim.clone()),
            imds: Arc::new(ImdsClaimingMore {
                inner: sim.clone(),
                extra,
            }),
            hostnet: Arc::new(FakeHost::default()),
            clock: Arc::new(clock.clone()),
        };
        let n = Node::init(deps, Config::default(), None).await;
        (n, sim, clock, extra)
    }

    #[tokio::test]
    async fn startup_outlasts_throttling_in_process_and_serves_only_what_ec2_confirmed() {
        // 60 throttles in a row: ten times what the old 6-attempt startup survived.
        let (n, sim, clock, extra) = throttled_start(crate::sim::Fault::Throttle, 60).await;
        let n = n.expect("startup waits for EC2 instead of exiting");
        let c = n.counters().ec2;
        assert_eq!(c.throttled.get("DescribeNetworkInterfaces"), Some(&60));
        assert_eq!(c.sent.get("DescribeNetworkInterfaces"), Some(&61));
        assert_eq!(sim.calls().get("DescribeNetworkInterfaces"), Some(&61));
        assert!(
            clock.now() > Duration::from_secs(60),
            "it backed off between attempts: {:?}",
            clock.now()
        );
        // Nothing but DescribeNetworkInterfaces was asked while waiting.
        assert_eq!(sim.calls().len(), 1, "{:?}", sim.calls());
        // The address only IMDS claims is never handed out: the pool holds EC2's addresses only.
        let ds = n.datastore();
        assert!(
            ds.enis().all(|e| !e.ips().any(|ip| ip == extra)),
            "IMDS-only address in the datastore"
        );
        n.fill().await.expect("fill");
        let mut handed = Vec::new();
        for i in 0..n.stats().available {
            handed.push(n.add(&key(i), &PodMeta::default()).expect("ip").ip);
        }
        assert!(!handed.is_empty());
        assert!(!handed.contains(&extra));
    }

    #[tokio::test]
    async fn startup_fails_fast_on_a_permanent_error() {
        let (n, sim, _, _) = throttled_start(crate::sim::Fault::Unauthorized, 1).await;
        let err = n.expect_err("not authorized is not retried");
        assert!(
            matches!(
                &err,
                NodeError::Unverified {
                    attempts: 1,
                    last: Ec2Error::Unauthorized { .. }
                }
            ),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("not authorized") && msg.contains("IAM"),
            "{msg}"
        );
        assert_eq!(sim.calls().get("DescribeNetworkInterfaces"), Some(&1));
    }

    #[tokio::test]
    async fn cooldown_failure_is_named_and_lifts_after_the_period() {
        let cfg = Config {
            max_eni: Some(1),
            ..Config::default()
        };
        let (n, _, clock) = node("t3.nano", cfg).await; // 1 ENI allowed, 2 IPv4 per ENI -> 1 secondary IP
        n.fill().await.expect("fill");
        n.add(&key(1), &PodMeta::default()).expect("ip");
        n.del(&key(1));
        n.fill().await.expect("fill");
        let err = n.add(&key(2), &PodMeta::default()).expect_err("cooling");
        assert_eq!(
            err.reason,
            FailureReason::AllFreeIpsInCooldown,
            "{}",
            err.message
        );
        clock.advance(Duration::from_secs(31));
        n.add(&key(2), &PodMeta::default()).expect("after cooldown");
    }
}
