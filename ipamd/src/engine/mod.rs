//! The engine: the node's addresses joined to the outside worlds (EC2, IMDS, the host, the clock).
//!
//! ```text
//!   gRPC ADD/DEL ─▶ admission ──▶ datastore (core) ◀── pool_task ──▶ enis ──▶ EC2 (paced)
//!                      │                 ▲                │                └─▶ host (ENI setup)
//!                      └─ checkpoint ◀───┘                └─▶ reconcile, leak_gc (timers)
//!   startup: init (this file) ─▶ recovery ─▶ fill ─▶ socket ─▶ recovery::start_serving
//! ```
//!
//! This file holds the [`Node`] and the state it is made of; each room holds one idea's behaviour as an
//! `impl Node` block and imports only from here and the pure core ([`crate::core`]):
//! - [`admission`]: ADD and DEL, waiting ADDs, and why an ADD failed;
//! - [`pool_task`]: the one EC2 actor, one policy step at a time;
//! - [`enis`]: the ENI lifecycle (assign, release, attach, free) and where a new ENI goes ([`enis::placement`]);
//! - [`custom_net`]: custom networking, where the node's `ENIConfig` sends new ENIs, or why it cannot;
//! - [`reconcile`]: the datastore, the host and EC2 kept in agreement; [`leak_gc`]: ENIs a crash left behind;
//!   [`refresh`]: the VPC's CIDR blocks and the primary ENI's security groups re-read and applied on change;
//! - [`recovery`]: a restart's checkpoint put back, checked against EC2 and the host;
//! - [`checkpoint`]: the assignments on disk (the anchor's file format, group-committed writes);
//!   [`persist`]: the engine's side of it (durable ADD/DEL, the background flusher);
//! - [`ipv6`]: IPv6 mode (one /80 on the primary ENI, its own datastore, no pool).
//!
//! The request path and the pool path never block each other: an ADD takes the datastore lock for a few
//! microseconds and never calls EC2 or IMDS; only the pool task (and reconcile, serialised with it) talks to EC2.
//!
//! Startup follows the anchor. What the daemon read once (the node from IMDS, the instance type's limits) comes
//! in as [`NodeFacts`]; [`Node::init_recovering`] then reads the node's ENIs from IMDS, confirms their addresses
//! with one DescribeNetworkInterfaces for all of them (IMDS may lag: EC2 is the truth, anchor #3887; no address
//! known only from IMDS is ever handed out, so startup waits for EC2 rather than fall back to IMDS: throttling
//! and other transient errors are retried in-process for as long as they last, with jittered backoff capped at a
//! minute, and only a permanent error such as a missing IAM permission stops the daemon), applies the node-wide
//! host settings (fwmark rule, SNAT), configures each ENI on the host, and restores the checkpoint's assignments
//! onto the addresses EC2 confirmed (see [`recovery`] for the order); the daemon then fills the pool before
//! serving.

pub mod admission;
pub mod checkpoint;
pub mod custom_net;
pub mod enis;
pub mod foreign;
pub mod ipv6;
pub mod leak_gc;
pub mod persist;
pub mod pool_task;
#[cfg(test)]
mod real_node_tests;
pub mod reconcile;
pub mod recovery;
pub mod refresh;
pub mod subnets;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datapath::MacAddr;
use instance_limits::InstanceLimits;
use tokio::sync::Notify;

use self::checkpoint::{Checkpoint, CheckpointEntry, CheckpointError};
use crate::config::Config;
use crate::core::datastore::{Datastore, Eni, IpamKey, PoolStats};
use crate::core::family::V6;
use crate::core::pool::{policy_for, Decision, HighWater, PoolPolicy};
use crate::core::snapshot::{EniSnapshot, PoolSnapshot, SnatReport};
use crate::host::snat::SnatPlan;
use crate::host::{HostNetError, HostNetwork, HostPlan};
use crate::kube::{ApiStatus, Cluster};
use crate::ratelimit::{CallCounts, PacedEc2, Pacer, PacingConfig};
use crate::sync::lock;
use ec2_api::clock::Clock;
use ec2_api::{Ec2, Ec2Error};
use ec2_api::{Imds, ImdsError, NodeMetadata};

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
    Datastore(#[from] crate::core::datastore::DatastoreError),
    /// EC2 refused to describe the node's ENIs with an error retrying cannot fix (transient ones are retried
    /// for as long as they last).
    #[error(
        "EC2 cannot confirm the node's ENIs: {last} (attempt {attempts}; not retried: the error is permanent); \
         addresses known only from IMDS are never handed out"
    )]
    Unverified { attempts: u32, last: Ec2Error },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Ipv6(ipv6::Ipv6Error),
}

/// Outside worlds the node talks to.
#[derive(Clone)]
pub struct NodeDeps {
    pub ec2: Arc<dyn Ec2>,
    pub imds: Arc<dyn Imds>,
    pub hostnet: Arc<dyn HostNetwork>,
    pub clock: Arc<dyn Clock>,
    /// The Kubernetes API ([`crate::kube::NoCluster`] when none is configured).
    pub cluster: Arc<dyn Cluster>,
}

#[cfg(test)]
impl NodeDeps {
    /// A node's outside worlds in the engine's tests: `sim` as EC2 and IMDS, a fake host network, `clock`, no
    /// Kubernetes API.
    pub(crate) fn sim(sim: &ec2_sim::SimEc2, clock: &ec2_api::clock::ManualClock) -> NodeDeps {
        NodeDeps {
            ec2: Arc::new(sim.clone()),
            imds: Arc::new(sim.clone()),
            hostnet: Arc::new(crate::host::fakes::FakeHost::default()),
            clock: Arc::new(clock.clone()),
            cluster: Arc::new(crate::kube::NoCluster),
        }
    }
}

/// What the daemon learns about its instance once, at startup, and passes in: the node as IMDS described it and
/// its instance type's limits (the compiled-in table, or DescribeInstanceTypes for a type newer than the table).
/// The engine never reads either again.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub meta: NodeMetadata,
    pub limits: InstanceLimits,
}

impl NodeFacts {
    /// Reads the node from IMDS once and finds its limits in the compiled-in table (the simulated backend and
    /// tests; the AWS backend gets both from `ec2_aws::connect`, with its DescribeInstanceTypes fallback).
    pub async fn discover(imds: &dyn Imds) -> Result<NodeFacts, NodeError> {
        let meta = imds.node().await?;
        let limits = *instance_limits::lookup(&meta.instance_type)
            .ok_or_else(|| NodeError::UnknownInstanceType(meta.instance_type.clone()))?;
        Ok(NodeFacts { meta, limits })
    }
}

/// What a restarting node restores and how it checks it (see [`recovery`]). The default restores
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

/// Restored assignments not yet confirmed by the host (see [`recovery`]).
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
    /// Pods' rules and routes drift repair changed.
    pub(crate) routing_repairs: u64,
    /// EC2 said an ENI or address we hold does not exist: reconcile at the next chance.
    pub(crate) reconcile_wanted: bool,
    /// The pool's need over the release delay (release hysteresis); created with the node.
    pub(crate) high_water: HighWater,
    /// The node object's `spec.unschedulable`, from the cluster cache.
    pub(crate) cordoned: bool,
    /// Prefix mode growing with secondary IPs for want of a free /28 (see [`pool_task`]).
    pub(crate) fallback: Option<pool_task::Fallback>,
    /// Warm-only growth held back while its API is throttled (see [`pool_task`]).
    pub(crate) warm_hold: pool_task::WarmHold,
    /// When an ADD last failed for want of an address (demand the pool may not see as a waiting ADD).
    pub(crate) unmet_add_at: Option<Duration>,
    /// Subnet discovery's last answer and when it came (see [`enis::SUBNET_CACHE_TTL`]).
    pub(crate) subnet_cache: Option<(Duration, Vec<ec2_api::SubnetDescription>)>,
    /// Live reloads of the pool knobs applied and refused (see [`crate::reload`]).
    pub(crate) reloads_applied: u64,
    pub(crate) reloads_refused: u64,
}

/// The node object's `status.capacity.pods`, from the cluster cache (see [`Node::refresh_node_view`]), or none
/// known. An atomic rather than a [`PoolStatus`] field: [`Node::policy`] reads it, and callers hold a status
/// guard around that call (a second `lock(&self.status)` there would deadlock).
#[derive(Debug)]
pub(crate) struct NodeCap(AtomicU64);

impl NodeCap {
    /// No cap known (`status.capacity.pods` is a u32: this is none of its values).
    const NONE: u64 = u64::MAX;

    pub(crate) fn get(&self) -> Option<u32> {
        u32::try_from(self.0.load(Ordering::Relaxed)).ok()
    }

    pub(crate) fn set(&self, cap: Option<u32>) {
        self.0
            .store(cap.map_or(Self::NONE, u64::from), Ordering::Relaxed);
    }
}

impl Default for NodeCap {
    fn default() -> Self {
        NodeCap(AtomicU64::new(Self::NONE))
    }
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
    /// The pool policy; its knobs change on a live reload ([`crate::reload`]).
    pub(crate) policy: Mutex<PoolPolicy>,
    /// The live pool knobs in force ([`crate::reload`]).
    pub(crate) knobs: Mutex<crate::reload::PoolKnobs>,
    pub(crate) ds: Mutex<Datastore>,
    /// IPv6 mode's datastore (empty otherwise; see [`ipv6`]). Locked after `ds` when both are.
    pub(crate) ds6: Mutex<Datastore<V6>>,
    pub(crate) status: Mutex<PoolStatus>,
    /// The node object's `status.capacity.pods` (see [`NodeCap`]).
    pub(crate) node_cap: NodeCap,
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
    /// Custom networking's state (see [`custom_net`]).
    pub(crate) custom_net: Mutex<custom_net::CustomNetState>,
    /// The instance's ENI slots not in the datastore: ENIs left alone (trunk, EFA, no_manage, ...), ours still
    /// waiting for host setup, and the limit EC2 enforced ([`foreign`]).
    pub(crate) foreign: Mutex<foreign::Slots>,
    /// The VPC's CIDR blocks and the primary ENI's security groups in force ([`refresh`]).
    pub(crate) vpc: Mutex<refresh::VpcView>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("instance", &self.meta.instance_id)
            .field("policy", &self.policy())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// The cluster's EC2 schedule as this node's pacer sees it ([`crate::schedule`]).
    pub fn ec2_schedule(&self) -> crate::ratelimit::ScheduleStatus {
        self.ec2.schedule_status()
    }

    /// Loads the node's ENIs (from IMDS, confirmed by EC2: one DescribeNetworkInterfaces) for the node `facts`
    /// describes.
    pub async fn init(
        deps: NodeDeps,
        facts: NodeFacts,
        config: Config,
        max_pods_override: Option<u32>,
    ) -> Result<Arc<Node>, NodeError> {
        Node::init_with(
            deps,
            facts,
            config,
            max_pods_override,
            PacingConfig::default(),
        )
        .await
    }

    /// [`Node::init`] with explicit client-side pacing.
    pub async fn init_with(
        deps: NodeDeps,
        facts: NodeFacts,
        config: Config,
        max_pods_override: Option<u32>,
        pacing: PacingConfig,
    ) -> Result<Arc<Node>, NodeError> {
        Node::init_recovering(
            deps,
            facts,
            config,
            max_pods_override,
            pacing,
            Recovery::default(),
        )
        .await
    }

    /// [`Node::init_with`] that also restores the assignments of `recovery` (verified against EC2) and persists
    /// every later change to its checkpoint.
    pub async fn init_recovering(
        deps: NodeDeps,
        facts: NodeFacts,
        config: Config,
        max_pods_override: Option<u32>,
        pacing: PacingConfig,
        recovery: Recovery,
    ) -> Result<Arc<Node>, NodeError> {
        let NodeFacts { meta, limits } = facts;
        let limits = &limits;
        if config.ipv6 && !limits.supports_prefix_delegation() {
            return Err(ipv6::Ipv6Error::NotNitro {
                instance_type: meta.instance_type.clone(),
            }
            .into());
        }
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
            Pacer::new(Arc::clone(&deps.clock), pacing),
            Arc::clone(&deps.ec2),
        ));
        let primary_mac = MacAddr::parse(&meta.primary_mac).ok_or_else(|| NodeError::BadMac {
            eni: "primary".into(),
            mac: meta.primary_mac.clone(),
        })?;
        let node = Arc::new(Node {
            deps,
            ec2,
            policy: Mutex::new(policy),
            knobs: Mutex::new(crate::reload::PoolKnobs::of(&config)),
            ds: Mutex::new(Datastore::new(config.ip_cooldown)),
            ds6: Mutex::new(Datastore::<V6>::of(config.ip_cooldown)),
            status: Mutex::new(PoolStatus {
                high_water: HighWater::new(config.pool_release_delay),
                ..PoolStatus::default()
            }),
            node_cap: NodeCap::default(),
            adds: AddQueue::default(),
            custom_net: Mutex::new(custom_net::CustomNetState::default()),
            foreign: Mutex::default(),
            vpc: Mutex::new(refresh::VpcView::of(&meta)),
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

        let imds_enis = node.imds_enis().await?;
        // EC2 is the truth about addresses and tags; IMDS only says what is attached (and may lag). No address
        // known only from IMDS is handed out (anchor #3887): without EC2's answer the node does not start.
        // A fresh node (IMDS: the primary ENI alone, without secondary addresses; nothing checkpointed) has
        // nothing for EC2 to confirm: its pool starts empty and every address comes from EC2's answers.
        let fresh = recovery::nothing_to_confirm(&imds_enis, &recovery.entries, node.config.ipv6);
        let described = if fresh {
            tracing::info!("fresh node: the primary ENI alone, no addresses to confirm with EC2");
            HashMap::new()
        } else {
            let ids: Vec<String> = imds_enis.iter().map(|e| e.eni_id.clone()).collect();
            node.describe_at_startup(&ids).await?
        };
        let now = node.deps.clock.now();
        let mut adopted = Vec::new();
        for ie in imds_enis {
            let mac = MacAddr::parse(&ie.mac).ok_or_else(|| NodeError::BadMac {
                eni: ie.eni_id.clone(),
                mac: ie.mac.clone(),
            })?;
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
                    if node.leave_alone(d, ie.device_number) {
                        continue;
                    }
                    if ie.device_number != 0 {
                        adopted.push(d.clone());
                    }
                    (d.secondary_ips.clone(), d.ipv4_prefixes.clone())
                }
                // A fresh node's primary ENI: no secondary addresses to load.
                None if fresh => (Vec::new(), Vec::new()),
                // EC2 no longer has it (detached or deleted; IMDS lags): nothing on it is usable.
                Some(None) | None => {
                    tracing::warn!(eni = %ie.eni_id, "ENI in IMDS but not in EC2: ignored");
                    continue;
                }
            };
            // An ENI without IPv4 (IMDS has not caught up) is not usable yet; reconcile adopts it later.
            let Some(primary_ip) = ie.ipv4s.first() else {
                continue;
            };
            let mut eni = Eni::new(
                &ie.eni_id,
                mac,
                ie.device_number,
                *primary_ip,
                ie.subnet_cidr,
            );
            eni.attached_at = now;
            // Custom networking: pods get addresses only on ENIs in the ENIConfig's subnet.
            eni.excluded_for_pods = eni.is_primary && node.config.custom_networking.is_some();
            if node.config.ipv6 {
                // IPv6 mode uses the primary ENI only (as the anchor), and only its /80.
                if ie.device_number == 0 {
                    node.deps
                        .hostnet
                        .setup_eni(&eni, node.config.eni_mtu)
                        .await?;
                    let d = described.get(&ie.eni_id).and_then(Option::as_ref);
                    node.init_ipv6(&ie, mac, d).await?;
                }
                continue;
            }
            node.deps
                .hostnet
                .setup_eni(&eni, node.config.eni_mtu)
                .await?;
            node.load_eni(eni, &ips, &prefixes)?;
        }
        // ENIs found attached: DeleteOnTermination and this instance's tag where missing (see `leak_gc`).
        for d in &adopted {
            node.finish_adoption(d).await;
        }
        node.restore(recovery.entries).await?;
        tracing::info!(
            instance = %node.meta.instance_id,
            instance_type = %node.meta.instance_type,
            max_enis = policy.max_enis,
            ips_per_eni = policy.ips_per_eni,
            prefix_delegation = policy.prefix_delegation,
            max_pods = policy.max_pods,
            enis = node.stats().enis,
            "node initialised"
        );
        Ok(node)
    }

    pub(crate) fn host_plan(&self, primary_mac: MacAddr) -> HostPlan {
        // IPv6 mode: no SNAT, connmark or fwmark rule (IPv6 pods keep their address, as in the anchor).
        let v6 = self.config.ipv6;
        HostPlan {
            primary_mac,
            mtu: self.config.eni_mtu,
            snat: SnatPlan {
                primary_ip: self.meta.local_ipv4,
                primary_if: String::new(),
                vpc_cidrs: self.vpc_cidr_blocks(),
                exclude_cidrs: self.config.exclude_snat_cidrs.clone(),
                external_snat: self.config.external_snat || v6,
                randomize: self.config.randomize_snat,
                connmark: self.config.connmark,
                node_port_support: self.config.node_port_support && !v6,
                veth_prefix: self.veth_prefix.clone(),
            },
        }
    }

    /// The node's metadata as read at startup.
    pub fn metadata(&self) -> &NodeMetadata {
        &self.meta
    }

    /// The pool policy in force: the ENI slots left by ENIs ipamd does not manage ([`Node::slot_policy`]), and
    /// max-pods the lower of the ENI math's and the node object's `status.capacity.pods` (when the Kubernetes API
    /// has said it).
    ///
    /// Takes no lock of its own beyond the policy's and the foreign slots' (leaf locks): safe to call with a
    /// [`PoolStatus`] guard held.
    pub fn policy(&self) -> PoolPolicy {
        self.slot_policy().capped(self.node_cap.get())
    }

    /// Reads this node's object from the cluster cache (never the API server itself) into the pool's inputs:
    /// the capacity cap and the cordon.
    pub async fn refresh_node_view(&self) {
        let node = self.deps.cluster.node().await;
        self.node_cap
            .set(node.as_ref().and_then(|n| n.capacity_pods));
        lock(&self.status).cordoned = node.is_some_and(|n| n.unschedulable);
    }

    /// Whether ENIs may not be attached or freed now: the node is cordoned and `AWS_MANAGE_ENIS_NON_SCHEDULABLE`
    /// is false (the anchor's default).
    pub fn enis_frozen(&self) -> bool {
        !self.config.manage_enis_non_schedulable && lock(&self.status).cordoned
    }

    /// The policy of the instance type and the live knobs, before the node's own limits ([`Node::policy`]).
    pub(crate) fn base_policy(&self) -> PoolPolicy {
        *lock(&self.policy)
    }

    /// The live pool knobs in force (see [`crate::reload`]).
    pub fn knobs(&self) -> crate::reload::PoolKnobs {
        *lock(&self.knobs)
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Current counts (of the IPv6 datastore in IPv6 mode).
    pub fn stats(&self) -> PoolStats {
        if self.config.ipv6 {
            return lock(&self.ds6).stats(self.deps.clock.now());
        }
        lock(&self.ds).stats(self.deps.clock.now())
    }

    /// Whether `key` holds an address (a pod ipamd already knows).
    pub fn knows(&self, key: &IpamKey) -> bool {
        lock(&self.ds).lookup(key).is_some()
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

    /// A plain copy of the pool for reporting (metrics, status), taken under the datastore lock in one go.
    pub fn snapshot(&self) -> PoolSnapshot {
        let now = self.deps.clock.now();
        let (stats, enis) = {
            let ds = lock(&self.ds);
            let held: BTreeSet<Ipv4Addr> =
                ds.assignments().into_iter().map(|(_, _, a)| a.ip).collect();
            let mut enis: Vec<EniSnapshot> = ds
                .enis()
                .map(|e| EniSnapshot {
                    id: e.id.clone(),
                    addresses: e
                        .ips()
                        .map(|ip| (IpAddr::V4(ip), held.contains(&ip)))
                        .collect(),
                    assigned: e.assigned_count(),
                    cooldown: e.cooldown_count(now, ds.cooldown()),
                    prefixes: e.prefixes().count(),
                })
                .collect();
            let mut stats = ds.stats(now);
            if self.config.ipv6 {
                // IPv6 mode: the carved addresses of the /80 (the rest of it is free and not listed).
                let ds6 = lock(&self.ds6);
                let held6: BTreeSet<_> = ds6
                    .assignments()
                    .into_iter()
                    .map(|(_, _, a)| a.ip)
                    .collect();
                enis = ds6
                    .enis()
                    .map(|e| EniSnapshot {
                        id: e.id.clone(),
                        addresses: e
                            .ips()
                            .map(|ip| (IpAddr::V6(ip), held6.contains(&ip)))
                            .collect(),
                        assigned: e.assigned_count(),
                        cooldown: e.cooldown_count(now, ds6.cooldown()),
                        prefixes: e.prefixes().count(),
                    })
                    .collect();
                stats = ds6.stats(now);
            }
            (stats, enis)
        };
        let policy = self.policy();
        let address_mode = self.address_mode().as_str();
        // One guard, taken here: a `lock` inside the literal below would live to its end.
        let (force_removed, routing_repairs, reloads_applied, reloads_refused) = {
            let st = lock(&self.status);
            (
                st.force_removed,
                st.routing_repairs,
                st.reloads_applied,
                st.reloads_refused,
            )
        };
        PoolSnapshot {
            max_enis: policy.max_enis,
            ips_per_eni: policy.ips_per_eni,
            stats,
            enis,
            keep: self.pool_floor(),
            adds_waiting: self.adds_waiting(),
            connmark: !self.config.external_snat || self.config.node_port_support,
            force_removed,
            routing_repairs,
            snat: self.deps.hostnet.snat_report(),
            eni_config: self.eni_config_status(),
            address_mode,
            reloads_applied,
            reloads_refused,
        }
    }

    /// The SNAT/connmark backend the host chose, and why.
    pub fn snat_report(&self) -> Option<SnatReport> {
        self.deps.hostnet.snat_report()
    }

    /// The daemon's clock (for timing requests).
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.deps.clock
    }

    /// The Kubernetes API client's state (whether settings that need it hold new pods, and why).
    pub fn api_status(&self) -> ApiStatus {
        self.deps.cluster.api_status()
    }

    /// A pod got `ip` (ADD): passed to the cluster, which annotates the pod with `ANNOTATE_POD_IP` (queued).
    pub fn pod_ip_assigned(&self, namespace: &str, name: &str, ip: &str) {
        self.deps.cluster.pod_ip_assigned(namespace, name, ip);
    }

    /// A pod gave `ip` back (DEL): passed to the cluster, which clears the annotation if it still holds `ip`.
    pub fn pod_ip_released(&self, namespace: &str, name: &str, ip: &str) {
        self.deps.cluster.pod_ip_released(namespace, name, ip);
    }

    /// The last pool decision and EC2 error (for status pages).
    pub fn last_decision(&self) -> (Option<Decision>, Option<Ec2Error>) {
        let st = lock(&self.status);
        (st.last_decision.clone(), st.last_error.clone())
    }

    /// The VPC CIDRs reported to the plugin (read at startup and by the [`refresh`], never per ADD).
    pub fn vpc_cidrs(&self) -> Vec<String> {
        self.vpc_cidr_blocks()
            .iter()
            .map(|c| c.to_string())
            .collect()
    }

    /// The IP of the node's primary ENI.
    pub fn primary_ip(&self) -> Ipv4Addr {
        self.meta.local_ipv4
    }
}

#[cfg(test)]
impl Node {
    /// Starts a node the way the simulated backend does: its facts read once from the deps' IMDS, default
    /// pacing, nothing to restore.
    pub(crate) async fn start(
        deps: NodeDeps,
        config: Config,
        max_pods_override: Option<u32>,
    ) -> Result<Arc<Node>, NodeError> {
        let facts = NodeFacts::discover(deps.imds.as_ref()).await?;
        Node::init(deps, facts, config, max_pods_override).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::datastore::PodMeta;
    use crate::host::fakes::FakeHost;
    use aws_cni_proto::FailureReason;
    use ec2_api::clock::ManualClock;
    use ec2_sim::SimEc2;

    async fn node(instance_type: &str, config: Config) -> (Arc<Node>, SimEc2, ManualClock) {
        let (sim, clock) = ec2_sim::on_manual_clock(instance_type, |_| {}).await;
        let deps = NodeDeps::sim(&sim, &clock);
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

    /// `Node::policy()` reads the node object's capacity cap without the status lock: the pool task and ADD's
    /// failure report call it with a `PoolStatus` guard held, which twice deadlocked when the cap lived under that
    /// lock. The call runs on its own thread, bounded, so a regression fails instead of hanging.
    #[tokio::test]
    async fn policy_reads_the_node_cap_while_a_status_guard_is_held() {
        let (sim, clock) = ec2_sim::on_manual_clock("m5.large", |_| {}).await;
        let cluster = crate::kube::FakeCluster::default();
        *lock(&cluster.node) = Some(crate::kube::ClusterNode {
            capacity_pods: Some(5),
            ..Default::default()
        });
        let deps = NodeDeps {
            ec2: Arc::new(sim.clone()),
            imds: Arc::new(sim),
            hostnet: Arc::new(FakeHost::default()),
            clock: Arc::new(clock),
            cluster: Arc::new(cluster.clone()),
        };
        let n = Node::start(deps, Config::default(), None)
            .await
            .expect("init");
        n.refresh_node_view().await;
        assert!(
            n.slot_policy().max_pods > 5,
            "m5.large's ENI math allows more"
        );

        let policy_under_guard = |n: &Arc<Node>| {
            let _status = lock(&n.status);
            let (tx, rx) = std::sync::mpsc::channel();
            let node = Arc::clone(n);
            std::thread::spawn(move || {
                let _ = tx.send(node.policy());
            });
            rx.recv_timeout(Duration::from_secs(10))
                .expect("policy() waited for the status lock held by its caller")
        };
        assert_eq!(policy_under_guard(&n).max_pods, 5);

        // The cap follows the node object, and goes when the object no longer says it.
        *lock(&cluster.node) = Some(crate::kube::ClusterNode::default());
        n.refresh_node_view().await;
        assert_eq!(policy_under_guard(&n).max_pods, n.slot_policy().max_pods);
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
    async fn the_snapshot_is_what_the_datastore_and_the_policy_say() {
        let (n, _, _) = node("m5.large", Config::default()).await;
        n.fill().await.expect("fill");
        let held = n.add(&key(1), &PodMeta::default()).expect("ip");
        let snap = n.snapshot();
        assert_eq!(snap.stats, n.stats());
        assert_eq!(
            (snap.max_enis, snap.ips_per_eni),
            (n.policy().max_enis, n.policy().ips_per_eni)
        );
        assert_eq!(snap.enis.len(), 1);
        let eni = &snap.enis[0];
        assert_eq!((eni.total(), eni.assigned, eni.cooldown), (9, 1, 0));
        let marked: Vec<_> = eni
            .addresses
            .iter()
            .filter(|(_, h)| *h)
            .map(|(ip, _)| *ip)
            .collect();
        assert_eq!(marked, vec![IpAddr::V4(held.ip)]);
        assert_eq!((snap.adds_waiting, snap.force_removed), (0, 0));
        assert!(snap.connmark, "ipamd does SNAT itself by default");
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
        async fn enis(&self) -> Result<Vec<ec2_api::ImdsEni>, ImdsError> {
            let mut enis = self.inner.enis().await?;
            if let Some(primary) = enis.iter_mut().find(|e| e.device_number == 0) {
                primary.ipv4s.push(self.extra);
            }
            Ok(enis)
        }
    }

    async fn throttled_start(
        fault: ec2_sim::Fault,
        count: u32,
    ) -> (Result<Arc<Node>, NodeError>, SimEc2, ManualClock, Ipv4Addr) {
        let (sim, clock) = ec2_sim::on_manual_clock("m5.large", |s| s.throttle = None).await;
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
            cluster: Arc::new(crate::kube::NoCluster),
        };
        let n = Node::start(deps, Config::default(), None).await;
        (n, sim, clock, extra)
    }

    #[tokio::test]
    async fn startup_outlasts_throttling_in_process_and_serves_only_what_ec2_confirmed() {
        // 60 throttles in a row: ten times what the old 6-attempt startup survived.
        let (n, sim, clock, extra) = throttled_start(ec2_sim::Fault::Throttle, 60).await;
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
    async fn a_fresh_node_starts_without_calling_ec2_and_describes_only_what_imds_shows_beyond_the_primary(
    ) {
        // Fresh: IMDS shows the primary ENI alone with its primary address. Nothing for EC2 to confirm.
        let (n, sim, _) = node("m5.xlarge", Config::default()).await;
        assert!(
            sim.calls().is_empty(),
            "a fresh node's startup called EC2: {:?}",
            sim.calls()
        );
        assert_eq!(n.stats().enis, 1);
        assert_eq!(n.stats().available, 0, "nothing known before EC2 answers");
        n.fill().await.expect("fill");
        assert!(n.stats().available > 0);
        // Every address handed out is one EC2 assigned.
        let ec2_ips: Vec<Ipv4Addr> = sim
            .all_enis()
            .iter()
            .flat_map(|e| e.secondary_ips.clone())
            .collect();
        for i in 0..n.stats().available {
            let ip = n.add(&key(i), &PodMeta::default()).expect("ip").ip;
            assert!(ec2_ips.contains(&ip), "{ip} not assigned in EC2");
        }

        // Not fresh: a restart finds secondary addresses in IMDS and has EC2 confirm them, once.
        let before = sim.calls().get("DescribeNetworkInterfaces").copied();
        let clock = n.clock().clone();
        drop(n);
        let deps = NodeDeps {
            ec2: Arc::new(sim.clone()),
            imds: Arc::new(sim.clone()),
            hostnet: Arc::new(FakeHost::default()),
            clock,
            cluster: Arc::new(crate::kube::NoCluster),
        };
        let again = Node::start(deps, Config::default(), None)
            .await
            .expect("restart");
        assert_eq!(
            sim.calls().get("DescribeNetworkInterfaces").copied(),
            Some(before.unwrap_or(0) + 1)
        );
        assert!(again.stats().available > 0, "EC2's addresses loaded");
    }

    #[tokio::test]
    async fn startup_fails_fast_on_a_permanent_error() {
        let (n, sim, _, _) = throttled_start(ec2_sim::Fault::Unauthorized, 1).await;
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
