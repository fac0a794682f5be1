//! The `sim` backend: an EC2 account with one instance, behind the same [`Ec2`] and [`Imds`] traits as AWS.
//!
//! It is faithful where the daemon's correctness depends on it, and moto is not:
//! - **Limits** of the instance type from the compiled-in table: ENIs per network card (multi-card types attach
//!   on every card), IPv4 addresses per ENI (primary + secondaries + /28 prefixes share the slots, as on EC2),
//!   device indexes that must be free; prefix delegation only on Nitro types.
//! - **Subnets** with a finite set of free addresses (AWS reserves the first four and the last); /28 prefixes need
//!   an aligned, wholly free block, so a subnet fragmented by other tenants ([`SimSpec::taken`]) answers
//!   `InsufficientCidrBlocks` while it still has free addresses. Extra subnets (with tags, for subnet discovery)
//!   can be added.
//! - **Eventual consistency**: IMDS shows each ENI change [`SimSpec::imds_lag`] after EC2 made it.
//! - **Attach latency**: an ENI stays `attaching` (and its NIC absent) for [`SimSpec::attach_latency`].
//! - **Throttling**: a token bucket per API, like EC2's request-rate limits (mutating and non-mutating actions have
//!   different sizes), answering `RequestLimitExceeded`; [`SimEc2::throttle_for`] makes every call fail for a while.
//! - **Faults**: [`SimEc2::inject_faults`] makes the next N calls (of one API or any) fail with a 5xx, time out
//!   before or after EC2 applied them (the ambiguous case a client must reconcile), or be throttled.
//!
//! Time comes from [`SimSpec::clock`], so under virtual time latencies, lags and bucket refills cost nothing.
//! Every call is counted by API ([`SimEc2::calls`]), failed ones included, as EC2 would see them.
//!
//! ENIs become real links through a [`NicHotplug`]: attaching an ENI plugs a NIC with the ENI's MAC into the node's
//! namespace, as the hypervisor would (see [`fabric`]).
//!
//! **Persistence.** With [`SimSpec::state_file`], EC2's state outlives ipamd as the real EC2 does: it is written
//! after every call (atomically: temp file, fsync, rename, fsync of the directory) before the call returns, and
//! loaded when ipamd starts again. So an ipamd killed with SIGKILL restarts on the same instance, ENIs and
//! addresses, and a change EC2 made but whose answer ipamd never got is there too. On load, an attachment
//! interrupted by the crash completes (as EC2 would finish it), IMDS shows the state at once, and the NICs are
//! plugged again through [`NicHotplug::restore`] (a fabric in a namespace that outlived ipamd keeps its links;
//! stale ones are removed). The file is also what tools (the demo, tests) read to see what "EC2" holds.
//! Throttling buckets, injected faults and pending IMDS lag are not persisted.

pub mod fabric;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use instance_limits::InstanceLimits;
use ipnetwork::Ipv4Network;

use crate::clock::{Clock, SystemClock};
use crate::ec2::{
    Assigned, CreateEniRequest, Ec2, Ec2Error, EniDescription, EniFilter, InstanceDescription,
    InstanceTypeInfo, IpRequest, SubnetDescription, SubnetFilter,
};
use crate::imds::{Imds, ImdsEni, ImdsError, NodeMetadata};
use crate::ratelimit::TokenBucket;

/// A NIC as the hypervisor presents it to the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimNic {
    pub device_index: u32,
    pub network_card: u32,
    pub mac: datapath::MacAddr,
    pub primary_ip: Ipv4Addr,
    pub subnet: Ipv4Network,
    pub is_primary: bool,
}

/// Makes attached ENIs visible to the node (links in its namespace) and routes the VPC's traffic to them.
pub trait NicHotplug: Send + Sync + 'static {
    /// A NIC was attached.
    fn plug(&self, nic: SimNic) -> BoxFuture<'_, Result<(), String>>;
    /// A NIC was detached.
    fn unplug(&self, nic: SimNic) -> BoxFuture<'_, Result<(), String>>;
    /// The VPC now delivers `ips` to the NIC with `mac` (secondary IPs assigned) or no longer does.
    fn bind_ips(
        &self,
        mac: datapath::MacAddr,
        ips: Vec<Ipv4Addr>,
        bound: bool,
    ) -> BoxFuture<'_, Result<(), String>>;
    /// After a restart from saved state: exactly these NICs are attached, with these addresses bound. The
    /// default plugs and binds each; a hotplug that keeps state across restarts also removes what is stale.
    fn restore(&self, nics: Vec<(SimNic, Vec<Ipv4Addr>)>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            for (nic, ips) in nics {
                let mac = nic.mac;
                self.plug(nic).await?;
                if !ips.is_empty() {
                    self.bind_ips(mac, ips, true).await?;
                }
            }
            Ok(())
        })
    }
}

/// A hotplug that does nothing: for tests of the daemon's logic without a kernel.
#[derive(Debug, Default)]
pub struct NoHotplug;

impl NicHotplug for NoHotplug {
    fn plug(&self, _nic: SimNic) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
    fn unplug(&self, _nic: SimNic) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
    fn bind_ips(
        &self,
        _mac: datapath::MacAddr,
        _ips: Vec<Ipv4Addr>,
        _bound: bool,
    ) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// Why the simulator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("unknown instance type {0:?} (not in the instance-limits table{1})")]
    UnknownInstanceType(String, String),
    #[error("invalid subnet {0}: {1}")]
    Subnet(String, String),
    #[error("cannot plug the primary ENI into the node: {0}")]
    Plug(String),
    #[error("simulator state {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("simulator state {path}: cannot plug the saved ENIs back: {reason}")]
    Restore { path: PathBuf, reason: String },
}

/// An extra subnet of the VPC (same availability zone), e.g. one tagged `kubernetes.io/role/cni`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSubnet {
    pub cidr: Ipv4Network,
    pub tags: BTreeMap<String, String>,
}

/// EC2's request-rate buckets: `(capacity, refill per second)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleSpec {
    /// Create/Attach/Modify/Assign/Unassign/Detach/Delete/CreateTags.
    pub mutating: (u32, f64),
    /// Describe*.
    pub non_mutating: (u32, f64),
}

impl Default for ThrottleSpec {
    /// EC2's documented defaults for an account: mutating 200 tokens refilled at 5/s, non-mutating 100 at 20/s.
    fn default() -> Self {
        ThrottleSpec {
            mutating: (200, 5.0),
            non_mutating: (100, 20.0),
        }
    }
}

/// A failure to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 500 `InternalError`; nothing applied.
    ServerError,
    /// 503 `Unavailable`; nothing applied.
    Unavailable,
    /// No answer within the client's timeout; nothing applied.
    Timeout,
    /// No answer within the client's timeout, but EC2 did apply the call.
    TimeoutAfterApply,
    /// `RequestLimitExceeded`.
    Throttle,
    /// `UnauthorizedOperation`: the IAM policy lacks the permission; nothing applied.
    Unauthorized,
}

/// Simulator settings.
#[derive(Clone)]
pub struct SimSpec {
    pub instance_type: String,
    pub vpc_cidr: Ipv4Network,
    pub subnet_cidr: Ipv4Network,
    pub availability_zone: String,
    /// Where to write the JSON snapshot after every change.
    pub state_file: Option<PathBuf>,
    /// More subnets in the VPC and AZ.
    pub extra_subnets: Vec<SimSubnet>,
    /// Addresses of the node subnet held by other tenants (fragmentation).
    pub taken: Vec<Ipv4Addr>,
    /// How long IMDS lags behind EC2.
    pub imds_lag: Duration,
    /// How long an attachment takes.
    pub attach_latency: Duration,
    /// How long a timed-out call takes to fail.
    pub timeout: Duration,
    /// How long every call takes before EC2 acts on it (a real call takes tens to hundreds of milliseconds).
    pub api_latency: Duration,
    /// Server-side throttling; `None` = unlimited.
    pub throttle: Option<ThrottleSpec>,
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SimSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimSpec")
            .field("instance_type", &self.instance_type)
            .field("subnet_cidr", &self.subnet_cidr)
            .field("imds_lag", &self.imds_lag)
            .field("attach_latency", &self.attach_latency)
            .field("throttle", &self.throttle)
            .finish_non_exhaustive()
    }
}

impl SimSpec {
    /// The defaults the demo and tests use: VPC 10.0.0.0/16, node subnet 10.0.0.0/20, EC2's throttling, no lag.
    pub fn new(instance_type: &str) -> SimSpec {
        SimSpec {
            instance_type: instance_type.to_string(),
            vpc_cidr: Ipv4Network::new(Ipv4Addr::new(10, 0, 0, 0), 16)
                .unwrap_or_else(|_| unreachable_net()),
            subnet_cidr: Ipv4Network::new(Ipv4Addr::new(10, 0, 0, 0), 20)
                .unwrap_or_else(|_| unreachable_net()),
            availability_zone: "us-west-2a".into(),
            state_file: None,
            extra_subnets: Vec::new(),
            taken: Vec::new(),
            imds_lag: Duration::ZERO,
            attach_latency: Duration::ZERO,
            timeout: Duration::from_secs(10),
            api_latency: Duration::ZERO,
            throttle: Some(ThrottleSpec::default()),
            clock: Arc::new(SystemClock::default()),
        }
    }
}

fn unreachable_net() -> Ipv4Network {
    // Only reached if ipnetwork rejected a literal /16 or /20, which it does not.
    Ipv4Network::from(Ipv4Addr::UNSPECIFIED)
}

/// The node's subnet ID in the simulator.
pub const SIM_SUBNET_ID: &str = "subnet-0sim0000000000001";

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SubnetState {
    id: String,
    cidr: Ipv4Network,
    tags: BTreeMap<String, String>,
    /// Recomputed on load: every address of the subnet but the reserved ones, other tenants' and the ENIs'.
    #[serde(skip)]
    free: BTreeSet<Ipv4Addr>,
    free_count: usize,
}

/// Every API name the simulator counts (call counters are keyed by `&'static str`).
const API_NAMES: &[&str] = &[
    "AssignPrivateIpAddresses",
    "AttachNetworkInterface",
    "CreateNetworkInterface",
    "CreateTags",
    "DeleteNetworkInterface",
    "DescribeInstanceTypes",
    "DescribeInstances",
    "DescribeNetworkInterfaces",
    "DescribeSubnets",
    "DetachNetworkInterface",
    "ModifyNetworkInterfaceAttribute",
    "UnassignPrivateIpAddresses",
];

fn load_calls<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<&'static str, u64>, D::Error> {
    let raw: BTreeMap<String, u64> = serde::Deserialize::deserialize(d)?;
    Ok(raw
        .into_iter()
        .filter_map(|(k, v)| API_NAMES.iter().find(|n| **n == k).map(|n| (*n, v)))
        .collect())
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SimState {
    instance_id: String,
    instance_type: String,
    subnet_id: String,
    subnet_cidr: Ipv4Network,
    vpc_id: String,
    vpc_cidr: Ipv4Network,
    security_groups: Vec<String>,
    availability_zone: String,
    /// `(card index, max ENIs)`.
    network_cards: Vec<(u32, u32)>,
    ipv4_per_eni: u32,
    prefix_delegation: bool,
    subnets: BTreeMap<String, SubnetState>,
    enis: BTreeMap<String, EniDescription>,
    next_id: u64,
    #[serde(deserialize_with = "load_calls")]
    calls: BTreeMap<&'static str, u64>,
    imds_reads: u64,
    #[serde(skip)]
    imds_view: BTreeMap<String, ImdsEni>,
    #[serde(skip)]
    imds_pending: VecDeque<(Duration, String, Option<ImdsEni>)>,
    #[serde(skip)]
    buckets: BTreeMap<&'static str, TokenBucket>,
    #[serde(skip)]
    throttled_until: Duration,
    #[serde(skip)]
    faults: Vec<(Option<String>, Fault, u32)>,
}

/// The simulated account. Cheap to clone (shared state).
#[derive(Clone)]
pub struct SimEc2 {
    state: Arc<Mutex<SimState>>,
    hotplug: Arc<dyn NicHotplug>,
    state_file: Option<PathBuf>,
    /// Serialises writes of the state file (serialisation and write together, so writes land in order).
    file_lock: Arc<Mutex<()>>,
    clock: Arc<dyn Clock>,
    imds_lag: Duration,
    attach_latency: Duration,
    timeout: Duration,
    api_latency: Duration,
    throttle: Option<ThrottleSpec>,
}

impl std::fmt::Debug for SimEc2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimEc2").finish_non_exhaustive()
    }
}

fn is_mutating(api: &str) -> bool {
    !api.starts_with("Describe")
}

fn subnet_free(cidr: Ipv4Network, taken: &[Ipv4Addr]) -> BTreeSet<Ipv4Addr> {
    // AWS reserves the network address, the next three (router, DNS, future) and the broadcast address.
    let all: Vec<Ipv4Addr> = cidr.iter().collect();
    all.iter()
        .skip(4)
        .take(all.len().saturating_sub(5))
        .filter(|ip| !taken.contains(ip))
        .copied()
        .collect()
}

impl SimEc2 {
    /// Builds the account, launches the instance and plugs its primary ENI; or, when [`SimSpec::state_file`]
    /// exists, loads the account from it and plugs its attached ENIs back (see the module docs).
    pub async fn launch(spec: SimSpec, hotplug: Arc<dyn NicHotplug>) -> Result<SimEc2, SimError> {
        if let Some(path) = spec.state_file.clone() {
            match std::fs::read(&path) {
                Ok(bytes) => return SimEc2::resume(spec, hotplug, &path, &bytes).await,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(SimError::State {
                        path,
                        reason: e.to_string(),
                    })
                }
            }
        }
        let limits: &InstanceLimits =
            instance_limits::lookup(&spec.instance_type).ok_or_else(|| {
                let near = instance_limits::suggest(&spec.instance_type, 3);
                let hint = if near.is_empty() {
                    String::new()
                } else {
                    format!("; did you mean {}?", near.join(", "))
                };
                SimError::UnknownInstanceType(spec.instance_type.clone(), hint)
            })?;
        let mut subnets = BTreeMap::new();
        let all_subnets = std::iter::once((spec.subnet_cidr, BTreeMap::new()))
            .chain(spec.extra_subnets.iter().map(|s| (s.cidr, s.tags.clone())));
        for (i, (cidr, tags)) in all_subnets.enumerate() {
            if !spec.vpc_cidr.contains(cidr.network()) || cidr.prefix() > 28 {
                return Err(SimError::Subnet(
                    cidr.to_string(),
                    format!("must be a /28 or larger inside the VPC {}", spec.vpc_cidr),
                ));
            }
            let id = format!("subnet-0sim{:013}", i + 1);
            let free = subnet_free(cidr, &spec.taken);
            subnets.insert(
                id.clone(),
                SubnetState {
                    id,
                    cidr,
                    tags,
                    free_count: free.len(),
                    free,
                },
            );
        }
        let mut network_cards: Vec<(u32, u32)> = limits
            .network_cards
            .iter()
            .map(|c| (c.index, c.max_enis))
            .collect();
        if network_cards.is_empty() {
            network_cards.push((0, limits.enis));
        }
        let mut state = SimState {
            instance_id: "i-0a1b2c3d4e5f60718".into(),
            instance_type: spec.instance_type.clone(),
            subnet_id: SIM_SUBNET_ID.into(),
            subnet_cidr: spec.subnet_cidr,
            vpc_id: "vpc-0sim00000000000001".into(),
            vpc_cidr: spec.vpc_cidr,
            security_groups: vec!["sg-0sim00000000000001".into()],
            availability_zone: spec.availability_zone.clone(),
            network_cards,
            ipv4_per_eni: limits.ipv4_per_eni,
            prefix_delegation: limits.supports_prefix_delegation(),
            subnets,
            enis: BTreeMap::new(),
            next_id: 1,
            calls: BTreeMap::new(),
            imds_reads: 0,
            imds_view: BTreeMap::new(),
            imds_pending: VecDeque::new(),
            buckets: BTreeMap::new(),
            throttled_until: Duration::ZERO,
            faults: Vec::new(),
        };
        let primary = new_eni(
            &mut state,
            SIM_SUBNET_ID,
            "primary network interface".into(),
            BTreeMap::new(),
            IpRequest::Secondary(0),
        )
        .map_err(|e| SimError::Plug(e.to_string()))?;
        let primary_id = primary.id.clone();
        state.enis.insert(primary_id.clone(), primary);
        let instance_id = state.instance_id.clone();
        if let Some(eni) = state.enis.get_mut(&primary_id) {
            eni.device_index = Some(0);
            eni.attachment_id = Some("eni-attach-primary".into());
            eni.instance_id = Some(instance_id);
            eni.status = "in-use".into();
            eni.delete_on_termination = true;
        }
        let sim = SimEc2 {
            state: Arc::new(Mutex::new(state)),
            hotplug,
            state_file: spec.state_file,
            file_lock: Arc::new(Mutex::new(())),
            clock: spec.clock,
            imds_lag: Duration::ZERO,
            attach_latency: spec.attach_latency,
            timeout: spec.timeout,
            api_latency: spec.api_latency,
            throttle: spec.throttle,
        };
        // The primary ENI is visible at boot; later changes lag.
        sim.publish(&primary_id);
        let sim = SimEc2 {
            imds_lag: spec.imds_lag,
            ..sim
        };
        let nic = sim
            .nic_of(&primary_id)
            .ok_or_else(|| SimError::Plug("primary ENI vanished".into()))?;
        sim.hotplug.plug(nic).await.map_err(SimError::Plug)?;
        sim.snapshot();
        Ok(sim)
    }

    /// The account as saved in `bytes` (see the module docs).
    async fn resume(
        spec: SimSpec,
        hotplug: Arc<dyn NicHotplug>,
        path: &std::path::Path,
        bytes: &[u8],
    ) -> Result<SimEc2, SimError> {
        let bad = |reason: String| SimError::State {
            path: path.to_owned(),
            reason,
        };
        let mut state: SimState =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("cannot parse it: {e}")))?;
        if state.instance_type != spec.instance_type {
            return Err(bad(format!(
                "it is the state of a {} instance, not {}",
                state.instance_type, spec.instance_type
            )));
        }
        // Free addresses: everything but the reserved ones, other tenants' and what ENIs hold.
        let mut used: BTreeSet<Ipv4Addr> = BTreeSet::new();
        for e in state.enis.values() {
            used.insert(e.primary_ip);
            used.extend(addresses(&e.secondary_ips, &e.ipv4_prefixes));
        }
        for sub in state.subnets.values_mut() {
            sub.free = subnet_free(sub.cidr, &spec.taken)
                .into_iter()
                .filter(|ip| !used.contains(ip))
                .collect();
            sub.free_count = sub.free.len();
        }
        // An attachment the crash interrupted completes, as EC2 would have completed it.
        for e in state.enis.values_mut() {
            if e.status == "attaching" {
                e.status = "in-use".into();
            }
        }
        state.imds_view = state
            .enis
            .values()
            .filter_map(|e| imds_eni_of(e).map(|v| (e.id.clone(), v)))
            .collect();
        let nics: Vec<(SimNic, Vec<Ipv4Addr>)> = state
            .enis
            .values()
            .filter(|e| e.status == "in-use")
            .filter_map(|e| {
                Some((
                    SimNic {
                        device_index: e.device_index?,
                        network_card: e.network_card_index,
                        mac: mac_of(e)?,
                        primary_ip: e.primary_ip,
                        subnet: e.subnet_cidr,
                        is_primary: e.device_index == Some(0) && e.network_card_index == 0,
                    },
                    addresses(&e.secondary_ips, &e.ipv4_prefixes),
                ))
            })
            .collect();
        let enis = nics.len();
        let sim = SimEc2 {
            state: Arc::new(Mutex::new(state)),
            hotplug,
            state_file: spec.state_file,
            file_lock: Arc::new(Mutex::new(())),
            clock: spec.clock,
            imds_lag: spec.imds_lag,
            attach_latency: spec.attach_latency,
            timeout: spec.timeout,
            api_latency: spec.api_latency,
            throttle: spec.throttle,
        };
        sim.hotplug
            .restore(nics)
            .await
            .map_err(|reason| SimError::Restore {
                path: path.to_owned(),
                reason,
            })?;
        sim.snapshot();
        tracing::info!(path = %path.display(), enis, "simulated EC2 resumed from its saved state");
        Ok(sim)
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock would be a simulator bug; keep serving rather than cascade it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts the call and applies throttling and injected faults. `Ok(Some(fault))` is a fault to apply after
    /// the call ran (a timeout after EC2 applied it).
    async fn gate(&self, api: &'static str) -> Result<Option<Fault>, Ec2Error> {
        if !self.api_latency.is_zero() {
            self.clock.sleep(self.api_latency).await;
        }
        let now = self.clock.now();
        let fault = {
            let mut st = self.lock();
            *st.calls.entry(api).or_default() += 1;
            if now < st.throttled_until {
                return Err(Ec2Error::Throttled { api });
            }
            if let Some(t) = self.throttle {
                let (cap, rate) = if is_mutating(api) {
                    t.mutating
                } else {
                    t.non_mutating
                };
                let bucket = st
                    .buckets
                    .entry(api)
                    .or_insert_with(|| TokenBucket::new(cap, rate, now));
                if bucket.try_take(now).is_err() {
                    return Err(Ec2Error::Throttled { api });
                }
            }
            let pos = st
                .faults
                .iter()
                .position(|(a, _, n)| *n > 0 && a.as_deref().is_none_or(|a| a == api));
            match pos {
                Some(i) => {
                    let f = st.faults[i].1;
                    st.faults[i].2 -= 1;
                    if st.faults[i].2 == 0 {
                        st.faults.remove(i);
                    }
                    Some(f)
                }
                None => None,
            }
        };
        match fault {
            None => Ok(None),
            Some(Fault::ServerError) => Err(Ec2Error::Other {
                api,
                code: "InternalError".into(),
                message: "An internal error has occurred (injected)".into(),
            }),
            Some(Fault::Unavailable) => Err(Ec2Error::Other {
                api,
                code: "Unavailable".into(),
                message: "The service is unavailable (injected)".into(),
            }),
            Some(Fault::Throttle) => Err(Ec2Error::Throttled { api }),
            Some(Fault::Unauthorized) => Err(Ec2Error::Unauthorized { api }),
            Some(Fault::Timeout) => {
                self.clock.sleep(self.timeout).await;
                Err(Ec2Error::Timeout {
                    api,
                    message: "no response (injected)".into(),
                })
            }
            Some(Fault::TimeoutAfterApply) => Ok(Some(Fault::TimeoutAfterApply)),
        }
    }

    async fn finish<T>(
        &self,
        api: &'static str,
        post: Option<Fault>,
        res: Result<T, Ec2Error>,
    ) -> Result<T, Ec2Error> {
        self.snapshot();
        match (post, res) {
            (Some(Fault::TimeoutAfterApply), Ok(_)) => {
                self.clock.sleep(self.timeout).await;
                Err(Ec2Error::Timeout {
                    api,
                    message: "no response (injected; the call was applied)".into(),
                })
            }
            (_, res) => res,
        }
    }

    /// Makes the next `count` calls of `api` (or of any API) fail with `fault`.
    pub fn inject_faults(&self, fault: Fault, api: Option<&str>, count: u32) {
        self.lock()
            .faults
            .push((api.map(str::to_string), fault, count));
    }

    /// Every call is throttled for `d` from now (a burst of other clients on the account).
    pub fn throttle_for(&self, d: Duration) {
        let now = self.clock.now();
        let mut st = self.lock();
        st.throttled_until = now + d;
        for b in st.buckets.values_mut() {
            b.drain(now);
        }
    }

    /// Calls made so far, by API name (failed calls included).
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.lock().calls.clone()
    }

    /// IMDS reads made so far.
    pub fn imds_reads(&self) -> u64 {
        self.lock().imds_reads
    }

    /// The instance's ID.
    pub fn instance_id(&self) -> String {
        self.lock().instance_id.clone()
    }

    /// Every ENI in the account.
    pub fn all_enis(&self) -> Vec<EniDescription> {
        self.lock().enis.values().cloned().collect()
    }

    /// Free addresses in a subnet.
    pub fn free_addresses(&self, subnet_id: &str) -> usize {
        self.lock()
            .subnets
            .get(subnet_id)
            .map_or(0, |s| s.free.len())
    }

    fn nic_of(&self, eni_id: &str) -> Option<SimNic> {
        let st = self.lock();
        let eni = st.enis.get(eni_id)?;
        Some(SimNic {
            device_index: eni.device_index?,
            network_card: eni.network_card_index,
            mac: mac_of(eni)?,
            primary_ip: eni.primary_ip,
            subnet: eni.subnet_cidr,
            is_primary: eni.device_index == Some(0) && eni.network_card_index == 0,
        })
    }

    /// Schedules IMDS to show the ENI's current state (or its absence) after the lag.
    fn publish(&self, eni_id: &str) {
        let due = self.clock.now() + self.imds_lag;
        let mut st = self.lock();
        let view = st.enis.get(eni_id).and_then(imds_eni_of);
        st.imds_pending.push_back((due, eni_id.to_string(), view));
        if self.imds_lag.is_zero() {
            apply_imds(&mut st, due);
        }
    }

    fn snapshot(&self) {
        let Some(path) = &self.state_file else {
            return;
        };
        // One writer at a time, serialising under the same lock, so the file always holds the latest state.
        let _file = self.file_lock.lock().unwrap_or_else(|p| p.into_inner());
        let json = {
            let mut st = self.lock();
            for s in st.subnets.values_mut() {
                s.free_count = s.free.len();
            }
            serde_json::to_vec_pretty(&*st)
        };
        let json = match json {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "cannot serialise simulator state");
                return;
            }
        };
        if let Err(e) = crate::checkpoint::write_atomic(path, &json) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write simulator state");
        }
    }
}

fn imds_eni_of(e: &EniDescription) -> Option<ImdsEni> {
    if e.status != "in-use" {
        return None;
    }
    let device_number = e.device_index?;
    let mut ipv4s = vec![e.primary_ip];
    ipv4s.extend(e.secondary_ips.iter().copied());
    Some(ImdsEni {
        mac: e.mac.clone(),
        eni_id: e.id.clone(),
        device_number,
        subnet_id: e.subnet_id.clone(),
        subnet_cidr: e.subnet_cidr,
        ipv4s,
        ipv4_prefixes: e.ipv4_prefixes.clone(),
        network_card: e.network_card_index,
    })
}

fn apply_imds(st: &mut SimState, now: Duration) {
    while st
        .imds_pending
        .front()
        .is_some_and(|(due, _, _)| *due <= now)
    {
        if let Some((_, id, view)) = st.imds_pending.pop_front() {
            match view {
                Some(v) => {
                    st.imds_view.insert(id, v);
                }
                None => {
                    st.imds_view.remove(&id);
                }
            }
        }
    }
}

fn exhausted(subnet: &str, api: &'static str, code: &str) -> Ec2Error {
    Ec2Error::SubnetExhausted {
        api,
        subnet: subnet.to_string(),
        code: code.into(),
    }
}

fn take_ips(
    st: &mut SimState,
    subnet: &str,
    n: u32,
    api: &'static str,
) -> Result<Vec<Ipv4Addr>, Ec2Error> {
    let have = st.subnets.get(subnet).map_or(0, |s| s.free.len());
    if have < n as usize {
        return Err(exhausted(subnet, api, "InsufficientFreeAddressesInSubnet"));
    }
    let Some(s) = st.subnets.get_mut(subnet) else {
        return Err(exhausted(subnet, api, "InvalidSubnetID.NotFound"));
    };
    let ips: Vec<Ipv4Addr> = s.free.iter().take(n as usize).copied().collect();
    for ip in &ips {
        s.free.remove(ip);
    }
    Ok(ips)
}

/// Takes `n` aligned /28 blocks whose 16 addresses are all free.
fn take_prefixes(
    st: &mut SimState,
    subnet: &str,
    n: u32,
    api: &'static str,
) -> Result<Vec<Ipv4Network>, Ec2Error> {
    let Some(s) = st.subnets.get(subnet) else {
        return Err(exhausted(subnet, api, "InvalidSubnetID.NotFound"));
    };
    let base = u32::from(s.cidr.network());
    let blocks = 1u64 << (28u8.saturating_sub(s.cidr.prefix()));
    let mut found = Vec::new();
    for b in 0..blocks {
        if found.len() == n as usize {
            break;
        }
        let start = base + u32::try_from(b * 16).unwrap_or(u32::MAX);
        if (0..16).all(|i| s.free.contains(&Ipv4Addr::from(start + i))) {
            if let Ok(p) = Ipv4Network::new(Ipv4Addr::from(start), 28) {
                found.push(p);
            }
        }
    }
    if found.len() < n as usize {
        return Err(exhausted(subnet, api, "InsufficientCidrBlocks"));
    }
    if let Some(s) = st.subnets.get_mut(subnet) {
        for p in &found {
            for ip in p.iter() {
                s.free.remove(&ip);
            }
        }
    }
    Ok(found)
}

fn release(st: &mut SimState, subnet: &str, ips: impl IntoIterator<Item = Ipv4Addr>) {
    if let Some(s) = st.subnets.get_mut(subnet) {
        s.free.extend(ips);
    }
}

fn unsupported_pd(api: &'static str) -> Ec2Error {
    Ec2Error::Other {
        api,
        code: "InvalidParameterValue".into(),
        message: "prefix delegation is supported on Nitro instance types only".into(),
    }
}

fn new_eni(
    st: &mut SimState,
    subnet_id: &str,
    description: String,
    tags: BTreeMap<String, String>,
    req: IpRequest,
) -> Result<EniDescription, Ec2Error> {
    let api = "CreateNetworkInterface";
    let Some(subnet_cidr) = st.subnets.get(subnet_id).map(|s| s.cidr) else {
        return Err(Ec2Error::Other {
            api,
            code: "InvalidSubnetID.NotFound".into(),
            message: format!("subnet {subnet_id} does not exist"),
        });
    };
    if req.count() + 1 > st.ipv4_per_eni {
        return Err(Ec2Error::IpLimitExceeded {
            api,
            eni: "(new)".into(),
        });
    }
    let (secondary, prefixes) = match req {
        IpRequest::Secondary(n) => (n, 0),
        IpRequest::Prefixes(n) => {
            if !st.prefix_delegation && n > 0 {
                return Err(unsupported_pd(api));
            }
            (0, n)
        }
    };
    // Prefixes first: they need whole free blocks, which single addresses would break up.
    let pfx = take_prefixes(st, subnet_id, prefixes, api)?;
    let mut ips = match take_ips(st, subnet_id, secondary + 1, api) {
        Ok(ips) => ips,
        Err(e) => {
            let back: Vec<Ipv4Addr> = pfx.iter().flat_map(|p| p.iter()).collect();
            release(st, subnet_id, back);
            return Err(e);
        }
    };
    let primary_ip = ips.remove(0);
    let n = st.next_id;
    st.next_id += 1;
    // 0e:xx: locally administered unicast, like EC2's MACs; derived from the counter so runs are reproducible.
    let b = n.to_be_bytes();
    let mac = format!("0e:5a:{:02x}:{:02x}:{:02x}:{:02x}", b[4], b[5], b[6], b[7]);
    Ok(EniDescription {
        id: format!("eni-0{n:016x}"),
        mac,
        primary_ip,
        secondary_ips: ips,
        ipv4_prefixes: pfx,
        subnet_id: subnet_id.to_string(),
        subnet_cidr,
        vpc_id: st.vpc_id.clone(),
        device_index: None,
        network_card_index: 0,
        attachment_id: None,
        instance_id: None,
        status: "available".into(),
        interface_type: "interface".into(),
        description,
        tags,
        delete_on_termination: false,
    })
}

fn mac_of(eni: &EniDescription) -> Option<datapath::MacAddr> {
    datapath::MacAddr::parse(&eni.mac)
}

fn not_found(api: &'static str, id: &str) -> Ec2Error {
    Ec2Error::NotFound {
        api,
        what: format!("network interface {id}"),
    }
}

fn addresses(ips: &[Ipv4Addr], prefixes: &[Ipv4Network]) -> Vec<Ipv4Addr> {
    let mut all = ips.to_vec();
    all.extend(prefixes.iter().flat_map(|p| p.iter()));
    all
}

impl SimEc2 {
    async fn do_attach(
        &self,
        api: &'static str,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
        card: u32,
    ) -> Result<String, Ec2Error> {
        let attachment = {
            let mut st = self.lock();
            if instance_id != st.instance_id {
                return Err(Ec2Error::Other {
                    api,
                    code: "InvalidInstanceID.NotFound".into(),
                    message: format!("instance {instance_id} does not exist"),
                });
            }
            let Some(&(_, max)) = st.network_cards.iter().find(|(i, _)| *i == card) else {
                return Err(Ec2Error::Other {
                    api,
                    code: "InvalidParameterValue".into(),
                    message: format!("the instance type has no network card {card}"),
                });
            };
            let on_card = st
                .enis
                .values()
                .filter(|e| e.device_index.is_some() && e.network_card_index == card)
                .count();
            if on_card >= max as usize || device_index >= max.max(2) {
                return Err(Ec2Error::EniLimitExceeded { api });
            }
            if st
                .enis
                .values()
                .any(|e| e.device_index == Some(device_index) && e.network_card_index == card)
            {
                return Err(Ec2Error::Other {
                    api,
                    code: "InvalidParameterValue".into(),
                    message: format!("device index {device_index} is already in use"),
                });
            }
            let eni = st
                .enis
                .get_mut(eni_id)
                .ok_or_else(|| not_found(api, eni_id))?;
            if eni.device_index.is_some() {
                return Err(Ec2Error::Other {
                    api,
                    code: "InvalidNetworkInterface.InUse".into(),
                    message: format!("{eni_id} is already attached"),
                });
            }
            let attachment = format!("eni-attach-{}", eni_id.trim_start_matches("eni-"));
            eni.device_index = Some(device_index);
            eni.network_card_index = card;
            eni.attachment_id = Some(attachment.clone());
            eni.instance_id = Some(instance_id.to_string());
            eni.status = "attaching".into();
            attachment
        };
        self.snapshot();
        if !self.attach_latency.is_zero() {
            self.clock.sleep(self.attach_latency).await;
        }
        let bound = {
            let mut st = self.lock();
            match st.enis.get_mut(eni_id) {
                Some(e) if e.attachment_id.as_deref() == Some(attachment.as_str()) => {
                    e.status = "in-use".into();
                    addresses(&e.secondary_ips, &e.ipv4_prefixes)
                }
                // Detached or deleted while attaching.
                _ => return Ok(attachment),
            }
        };
        self.publish(eni_id);
        let nic = self.nic_of(eni_id).ok_or_else(|| not_found(api, eni_id))?;
        let mac = nic.mac;
        if let Err(e) = self.hotplug.plug(nic).await {
            tracing::warn!(error = %e, "simulated hotplug failed");
        }
        if !bound.is_empty() {
            if let Err(e) = self.hotplug.bind_ips(mac, bound, true).await {
                tracing::warn!(error = %e, "simulated VPC could not bind IPs");
            }
        }
        Ok(attachment)
    }

    async fn do_assign(
        &self,
        api: &'static str,
        eni_id: &str,
        req: IpRequest,
    ) -> Result<Assigned, Ec2Error> {
        let (got, mac, attached) = {
            let mut st = self.lock();
            let limit = st.ipv4_per_eni;
            let pd = st.prefix_delegation;
            let eni = st.enis.get(eni_id).ok_or_else(|| not_found(api, eni_id))?;
            let have = u32::try_from(eni.secondary_ips.len() + eni.ipv4_prefixes.len())
                .unwrap_or(u32::MAX)
                + 1;
            if have + req.count() > limit {
                return Err(Ec2Error::IpLimitExceeded {
                    api,
                    eni: eni_id.to_string(),
                });
            }
            let subnet = eni.subnet_id.clone();
            let got = match req {
                IpRequest::Secondary(n) => Assigned {
                    ips: take_ips(&mut st, &subnet, n, api)?,
                    prefixes: Vec::new(),
                },
                IpRequest::Prefixes(n) => {
                    if !pd {
                        return Err(unsupported_pd(api));
                    }
                    Assigned {
                        ips: Vec::new(),
                        prefixes: take_prefixes(&mut st, &subnet, n, api)?,
                    }
                }
            };
            let eni = st
                .enis
                .get_mut(eni_id)
                .ok_or_else(|| not_found(api, eni_id))?;
            eni.secondary_ips.extend(got.ips.iter().copied());
            eni.ipv4_prefixes.extend(got.prefixes.iter().copied());
            (got, mac_of(eni), eni.status == "in-use")
        };
        self.publish(eni_id);
        if let (Some(mac), true) = (mac, attached) {
            let all = addresses(&got.ips, &got.prefixes);
            if let Err(e) = self.hotplug.bind_ips(mac, all, true).await {
                tracing::warn!(error = %e, "simulated VPC could not bind IPs");
            }
        }
        Ok(got)
    }

    async fn do_unassign(
        &self,
        api: &'static str,
        eni_id: &str,
        ips: &[Ipv4Addr],
        prefixes: &[Ipv4Network],
    ) -> Result<(), Ec2Error> {
        let mac = {
            let mut st = self.lock();
            let eni = st
                .enis
                .get_mut(eni_id)
                .ok_or_else(|| not_found(api, eni_id))?;
            if let Some(bad) = ips.iter().find(|ip| !eni.secondary_ips.contains(ip)) {
                return Err(Ec2Error::Other {
                    api,
                    code: "InvalidParameterValue".into(),
                    message: format!("{bad} is not a secondary address of {eni_id}"),
                });
            }
            if let Some(bad) = prefixes.iter().find(|p| !eni.ipv4_prefixes.contains(p)) {
                return Err(Ec2Error::Other {
                    api,
                    code: "InvalidParameterValue".into(),
                    message: format!("{bad} is not a prefix of {eni_id}"),
                });
            }
            eni.secondary_ips.retain(|ip| !ips.contains(ip));
            eni.ipv4_prefixes.retain(|p| !prefixes.contains(p));
            let mac = mac_of(eni);
            let subnet = eni.subnet_id.clone();
            release(&mut st, &subnet, addresses(ips, prefixes));
            mac
        };
        self.publish(eni_id);
        if let Some(mac) = mac {
            let all = addresses(ips, prefixes);
            if let Err(e) = self.hotplug.bind_ips(mac, all, false).await {
                tracing::warn!(error = %e, "simulated VPC could not unbind IPs");
            }
        }
        Ok(())
    }

    async fn do_detach(&self, api: &'static str, attachment_id: &str) -> Result<(), Ec2Error> {
        let eni_id = {
            let st = self.lock();
            st.enis
                .values()
                .find(|e| e.attachment_id.as_deref() == Some(attachment_id))
                .map(|e| e.id.clone())
                .ok_or_else(|| Ec2Error::NotFound {
                    api,
                    what: format!("attachment {attachment_id}"),
                })?
        };
        let nic = self
            .nic_of(&eni_id)
            .ok_or_else(|| not_found(api, &eni_id))?;
        if nic.is_primary {
            return Err(Ec2Error::Other {
                api,
                code: "OperationNotPermitted".into(),
                message: "the primary network interface cannot be detached".into(),
            });
        }
        if let Err(e) = self.hotplug.unplug(nic).await {
            tracing::warn!(error = %e, "simulated unplug failed");
        }
        if let Some(eni) = self.lock().enis.get_mut(&eni_id) {
            eni.device_index = None;
            eni.attachment_id = None;
            eni.instance_id = None;
            eni.network_card_index = 0;
            eni.status = "available".into();
        }
        self.publish(&eni_id);
        Ok(())
    }

    async fn do_delete(&self, api: &'static str, eni_id: &str) -> Result<(), Ec2Error> {
        let mut st = self.lock();
        let eni = st.enis.get(eni_id).ok_or_else(|| not_found(api, eni_id))?;
        if eni.device_index.is_some() {
            return Err(Ec2Error::Other {
                api,
                code: "InvalidNetworkInterface.InUse".into(),
                message: format!("{eni_id} is attached"),
            });
        }
        let subnet = eni.subnet_id.clone();
        let mut released = addresses(&eni.secondary_ips, &eni.ipv4_prefixes);
        released.push(eni.primary_ip);
        release(&mut st, &subnet, released);
        st.enis.remove(eni_id);
        Ok(())
    }
}

#[async_trait]
impl Ec2 for SimEc2 {
    async fn create_network_interface(
        &self,
        req: CreateEniRequest,
    ) -> Result<EniDescription, Ec2Error> {
        let api = "CreateNetworkInterface";
        let post = self.gate(api).await?;
        let res = {
            let mut st = self.lock();
            new_eni(&mut st, &req.subnet_id, req.description, req.tags, req.ips).inspect(|eni| {
                st.enis.insert(eni.id.clone(), eni.clone());
            })
        };
        self.finish(api, post, res).await
    }

    async fn attach_network_interface(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
        network_card_index: u32,
    ) -> Result<String, Ec2Error> {
        let api = "AttachNetworkInterface";
        let post = self.gate(api).await?;
        let res = self
            .do_attach(api, eni_id, instance_id, device_index, network_card_index)
            .await;
        self.finish(api, post, res).await
    }

    async fn set_delete_on_termination(
        &self,
        eni_id: &str,
        _attachment_id: &str,
    ) -> Result<(), Ec2Error> {
        let api = "ModifyNetworkInterfaceAttribute";
        let post = self.gate(api).await?;
        let res = {
            let mut st = self.lock();
            st.enis
                .get_mut(eni_id)
                .ok_or_else(|| not_found(api, eni_id))
                .map(|eni| eni.delete_on_termination = true)
        };
        self.finish(api, post, res).await
    }

    async fn assign_private_ips(&self, eni_id: &str, req: IpRequest) -> Result<Assigned, Ec2Error> {
        let api = "AssignPrivateIpAddresses";
        let post = self.gate(api).await?;
        let res = self.do_assign(api, eni_id, req).await;
        self.finish(api, post, res).await
    }

    async fn unassign_private_ips(
        &self,
        eni_id: &str,
        ips: &[Ipv4Addr],
        prefixes: &[Ipv4Network],
    ) -> Result<(), Ec2Error> {
        let api = "UnassignPrivateIpAddresses";
        let post = self.gate(api).await?;
        let res = self.do_unassign(api, eni_id, ips, prefixes).await;
        self.finish(api, post, res).await
    }

    async fn detach_network_interface(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        let api = "DetachNetworkInterface";
        let post = self.gate(api).await?;
        let res = self.do_detach(api, attachment_id).await;
        self.finish(api, post, res).await
    }

    async fn delete_network_interface(&self, eni_id: &str) -> Result<(), Ec2Error> {
        let api = "DeleteNetworkInterface";
        let post = self.gate(api).await?;
        let res = self.do_delete(api, eni_id).await;
        self.finish(api, post, res).await
    }

    async fn describe_network_interfaces(
        &self,
        ids: &[String],
    ) -> Result<Vec<EniDescription>, Ec2Error> {
        let api = "DescribeNetworkInterfaces";
        let post = self.gate(api).await?;
        let res = {
            let st = self.lock();
            ids.iter()
                .map(|id| st.enis.get(id).cloned().ok_or_else(|| not_found(api, id)))
                .collect()
        };
        self.finish(api, post, res).await
    }

    async fn list_network_interfaces(
        &self,
        filter: &EniFilter,
    ) -> Result<Vec<EniDescription>, Ec2Error> {
        let api = "DescribeNetworkInterfaces";
        let post = self.gate(api).await?;
        let res = {
            let st = self.lock();
            Ok(st
                .enis
                .values()
                .filter(|e| {
                    filter.vpc_id.as_ref().is_none_or(|v| *v == e.vpc_id)
                        && filter.status.as_ref().is_none_or(|s| *s == e.status)
                        && filter
                            .attachment_instance_id
                            .as_ref()
                            .is_none_or(|i| e.instance_id.as_ref() == Some(i))
                        && filter.tag_keys.iter().all(|k| e.tags.contains_key(k))
                        && filter.tags.iter().all(|(k, v)| e.tags.get(k) == Some(v))
                })
                .cloned()
                .collect())
        };
        self.finish(api, post, res).await
    }

    async fn describe_instance(&self, instance_id: &str) -> Result<InstanceDescription, Ec2Error> {
        let api = "DescribeInstances";
        let post = self.gate(api).await?;
        let res = {
            let st = self.lock();
            if instance_id != st.instance_id {
                Err(Ec2Error::NotFound {
                    api,
                    what: format!("instance {instance_id}"),
                })
            } else {
                Ok(InstanceDescription {
                    instance_id: st.instance_id.clone(),
                    instance_type: st.instance_type.clone(),
                    subnet_id: st.subnet_id.clone(),
                    vpc_id: st.vpc_id.clone(),
                    security_groups: st.security_groups.clone(),
                    attachments: st
                        .enis
                        .values()
                        .filter_map(|e| e.device_index.map(|d| (e.network_card_index, d)))
                        .collect(),
                })
            }
        };
        self.finish(api, post, res).await
    }

    async fn describe_subnets(
        &self,
        filter: &SubnetFilter,
    ) -> Result<Vec<SubnetDescription>, Ec2Error> {
        let api = "DescribeSubnets";
        let post = self.gate(api).await?;
        let res = {
            let st = self.lock();
            Ok(st
                .subnets
                .values()
                .map(|s| SubnetDescription {
                    id: s.id.clone(),
                    cidr: s.cidr,
                    availability_zone: st.availability_zone.clone(),
                    vpc_id: st.vpc_id.clone(),
                    available_ip_count: s.free.len() as u64,
                    tags: s.tags.clone(),
                })
                .filter(|s| {
                    (filter.ids.is_empty() || filter.ids.contains(&s.id))
                        && filter.vpc_id.as_ref().is_none_or(|v| *v == s.vpc_id)
                        && filter
                            .availability_zone
                            .as_ref()
                            .is_none_or(|z| *z == s.availability_zone)
                })
                .collect())
        };
        self.finish(api, post, res).await
    }

    async fn create_tags(
        &self,
        resource_id: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), Ec2Error> {
        let api = "CreateTags";
        let post = self.gate(api).await?;
        let res = {
            let mut st = self.lock();
            st.enis
                .get_mut(resource_id)
                .ok_or_else(|| not_found(api, resource_id))
                .map(|eni| {
                    eni.tags
                        .extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())))
                })
        };
        self.finish(api, post, res).await
    }

    async fn describe_instance_types(
        &self,
        types: &[String],
    ) -> Result<Vec<InstanceTypeInfo>, Ec2Error> {
        let api = "DescribeInstanceTypes";
        let post = self.gate(api).await?;
        let pick: Result<Vec<&InstanceLimits>, Ec2Error> = if types.is_empty() {
            Ok(instance_limits::all().iter().collect())
        } else {
            types
                .iter()
                .map(|t| {
                    instance_limits::lookup(t).ok_or_else(|| Ec2Error::Other {
                        api,
                        code: "InvalidInstanceType".into(),
                        message: format!("the instance type {t:?} does not exist"),
                    })
                })
                .collect()
        };
        let res = pick.map(|pick| {
            pick.into_iter()
                .map(|l| InstanceTypeInfo {
                    instance_type: l.instance_type.to_string(),
                    enis: l.enis,
                    default_network_card_index: l.default_network_card_index,
                    network_cards: l
                        .network_cards
                        .iter()
                        .map(|c| (c.index, c.max_enis))
                        .collect(),
                    ipv4_per_eni: l.ipv4_per_eni,
                    ipv6_per_eni: l.ipv6_per_eni,
                    hypervisor: l.hypervisor.as_str().to_string(),
                    bare_metal: l.bare_metal,
                    vcpus: l.vcpus,
                })
                .collect()
        });
        self.finish(api, post, res).await
    }
}

/// IMDS as seen from the simulated instance: EC2's state as it was `imds_lag` ago.
#[async_trait]
impl Imds for SimEc2 {
    async fn node(&self) -> Result<NodeMetadata, ImdsError> {
        let mut st = self.lock();
        st.imds_reads += 1;
        let primary = st
            .enis
            .values()
            .find(|e| e.device_index == Some(0) && e.network_card_index == 0)
            .ok_or_else(|| ImdsError::Request {
                path: "mac".into(),
                message: "no primary interface".into(),
            })?;
        Ok(NodeMetadata {
            instance_id: st.instance_id.clone(),
            instance_type: st.instance_type.clone(),
            availability_zone: st.availability_zone.clone(),
            primary_mac: primary.mac.clone(),
            local_ipv4: primary.primary_ip,
            vpc_cidrs: vec![st.vpc_cidr],
            region: st
                .availability_zone
                .trim_end_matches(|c: char| c.is_ascii_alphabetic())
                .to_string(),
            vpc_id: st.vpc_id.clone(),
            subnet_id: st.subnet_id.clone(),
            security_groups: st.security_groups.clone(),
        })
    }

    async fn enis(&self) -> Result<Vec<ImdsEni>, ImdsError> {
        let now = self.clock.now();
        let mut st = self.lock();
        st.imds_reads += 1;
        apply_imds(&mut st, now);
        let mut out: Vec<ImdsEni> = st.imds_view.values().cloned().collect();
        out.sort_by_key(|e| (e.network_card, e.device_number));
        Ok(out)
    }
}

/// For tests: a simulated `instance_type` on a [`crate::clock::ManualClock`] (returned too), with its spec
/// adjusted by `tune` before the launch.
#[cfg(test)]
pub(crate) async fn on_manual_clock(
    instance_type: &str,
    tune: impl FnOnce(&mut SimSpec),
) -> (SimEc2, crate::clock::ManualClock) {
    let clock = crate::clock::ManualClock::default();
    let mut spec = SimSpec::new(instance_type);
    spec.clock = Arc::new(clock.clone());
    tune(&mut spec);
    let sim = SimEc2::launch(spec, Arc::new(NoHotplug))
        .await
        .expect("sim");
    (sim, clock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    async fn sim(t: &str) -> SimEc2 {
        SimEc2::launch(SimSpec::new(t), Arc::new(NoHotplug))
            .await
            .expect("launch")
    }

    fn req(ips: IpRequest) -> CreateEniRequest {
        CreateEniRequest {
            subnet_id: SIM_SUBNET_ID.into(),
            description: "aws-K8S-test".into(),
            tags: BTreeMap::new(),
            security_groups: Vec::new(),
            ips,
        }
    }

    #[tokio::test]
    async fn enforces_eni_and_ip_limits_of_the_instance_type() {
        let s = sim("m5.large").await; // 3 ENIs x 10 IPv4
        let iid = s.instance_id();
        let sec = |n| req(IpRequest::Secondary(n));
        assert!(matches!(
            s.create_network_interface(sec(10)).await,
            Err(Ec2Error::IpLimitExceeded { .. })
        ));
        let a = s.create_network_interface(sec(9)).await.expect("eni a");
        let b = s.create_network_interface(sec(0)).await.expect("eni b");
        let c = s.create_network_interface(sec(0)).await.expect("eni c");
        s.attach_network_interface(&a.id, &iid, 1, 0)
            .await
            .expect("attach a");
        assert!(
            s.attach_network_interface(&b.id, &iid, 1, 0).await.is_err(),
            "index in use"
        );
        s.attach_network_interface(&b.id, &iid, 2, 0)
            .await
            .expect("attach b");
        assert!(matches!(
            s.attach_network_interface(&c.id, &iid, 3, 0).await,
            Err(Ec2Error::EniLimitExceeded { .. })
        ));
        assert!(matches!(
            s.assign_private_ips(&a.id, IpRequest::Secondary(1)).await,
            Err(Ec2Error::IpLimitExceeded { .. })
        ));
        let got = s
            .assign_private_ips(&b.id, IpRequest::Secondary(9))
            .await
            .expect("assign");
        assert_eq!(got.ips.len(), 9);
        let enis = s.enis().await.expect("imds");
        assert_eq!(enis.len(), 3);
        assert_eq!(enis[2].ipv4s.len(), 10);
        assert_eq!(s.calls().get("AttachNetworkInterface"), Some(&4));
    }

    #[tokio::test]
    async fn multi_card_types_attach_on_every_card() {
        let limits = instance_limits::all()
            .iter()
            .find(|l| l.network_cards.len() > 1)
            .expect("a multi-card type");
        let s = sim(limits.instance_type).await;
        let iid = s.instance_id();
        let card1 = limits.network_cards[1];
        let e = s
            .create_network_interface(req(IpRequest::Secondary(0)))
            .await
            .expect("eni");
        s.attach_network_interface(&e.id, &iid, 0, card1.index)
            .await
            .expect("device 0 on card 1");
        let imds = s.enis().await.expect("imds");
        assert!(imds
            .iter()
            .any(|i| i.network_card == card1.index && i.eni_id == e.id));
        let bad = s
            .create_network_interface(req(IpRequest::Secondary(0)))
            .await
            .expect("eni");
        assert!(s
            .attach_network_interface(&bad.id, &iid, 1, 999)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn subnet_runs_out() {
        let mut spec = SimSpec::new("m5.large");
        spec.subnet_cidr = "10.0.0.0/28".parse().expect("cidr"); // 16 - 5 reserved = 11 usable
        let s = SimEc2::launch(spec, Arc::new(NoHotplug))
            .await
            .expect("launch");
        let primary = s.enis().await.expect("imds")[0].eni_id.clone();
        s.assign_private_ips(&primary, IpRequest::Secondary(9))
            .await
            .expect("9 fit");
        let err = s
            .assign_private_ips(&primary, IpRequest::Secondary(0))
            .await
            .map(|v| v.ips.len());
        assert_eq!(err, Ok(0));
        assert!(matches!(
            s.create_network_interface(req(IpRequest::Secondary(1)))
                .await,
            Err(Ec2Error::SubnetExhausted { .. })
        ));
    }

    #[tokio::test]
    async fn prefixes_need_whole_free_blocks() {
        let mut spec = SimSpec::new("m5.large");
        spec.subnet_cidr = "10.0.0.0/26".parse().expect("cidr"); // 4 blocks of 16
                                                                 // Other tenants hold one address in the third block; the first holds the reserved addresses.
        spec.taken = vec!["10.0.0.40".parse().expect("ip")];
        let s = SimEc2::launch(spec, Arc::new(NoHotplug))
            .await
            .expect("launch");
        let primary = s.enis().await.expect("imds")[0].eni_id.clone();
        let got = s
            .assign_private_ips(&primary, IpRequest::Prefixes(1))
            .await
            .expect("one block free");
        assert_eq!(got.prefixes, vec!["10.0.0.16/28".parse().expect("pfx")]);
        let err = s
            .assign_private_ips(&primary, IpRequest::Prefixes(2))
            .await
            .expect_err("fragmented");
        assert_eq!(err.code(), "InsufficientCidrBlocks");
        assert!(
            s.free_addresses(SIM_SUBNET_ID) > 16,
            "free addresses remain"
        );
        let imds = s.enis().await.expect("imds");
        assert_eq!(imds[0].ipv4_prefixes, got.prefixes);
        s.unassign_private_ips(&primary, &[], &got.prefixes)
            .await
            .expect("unassign prefix");
        assert!(s.enis().await.expect("imds")[0].ipv4_prefixes.is_empty());
    }

    #[tokio::test]
    async fn prefix_delegation_needs_nitro() {
        let s = sim("m4.large").await; // Xen
        let primary = s.enis().await.expect("imds")[0].eni_id.clone();
        let err = s
            .assign_private_ips(&primary, IpRequest::Prefixes(1))
            .await
            .expect_err("xen");
        assert_eq!(err.code(), "InvalidParameterValue");
    }

    #[tokio::test]
    async fn imds_lags_behind_ec2() {
        let clock = ManualClock::default();
        let mut spec = SimSpec::new("m5.large");
        spec.clock = Arc::new(clock.clone());
        spec.imds_lag = Duration::from_secs(3);
        let s = SimEc2::launch(spec, Arc::new(NoHotplug))
            .await
            .expect("launch");
        let primary = s.enis().await.expect("imds")[0].clone();
        assert_eq!(primary.ipv4s.len(), 1, "primary visible at boot");
        s.assign_private_ips(&primary.eni_id, IpRequest::Secondary(4))
            .await
            .expect("assign");
        assert_eq!(s.enis().await.expect("imds")[0].ipv4s.len(), 1, "stale");
        clock.advance(Duration::from_secs(3));
        assert_eq!(s.enis().await.expect("imds")[0].ipv4s.len(), 5, "caught up");
    }

    #[tokio::test]
    async fn per_api_buckets_throttle_and_faults_fire() {
        let clock = ManualClock::default();
        let mut spec = SimSpec::new("m5.large");
        spec.clock = Arc::new(clock.clone());
        spec.throttle = Some(ThrottleSpec {
            mutating: (2, 1.0),
            non_mutating: (3, 1.0),
        });
        let s = SimEc2::launch(spec, Arc::new(NoHotplug))
            .await
            .expect("launch");
        let iid = s.instance_id();
        for _ in 0..3 {
            s.describe_instance(&iid).await.expect("within burst");
        }
        assert!(matches!(
            s.describe_instance(&iid).await,
            Err(Ec2Error::Throttled { .. })
        ));
        // Another API has its own bucket.
        s.describe_subnets(&SubnetFilter::default())
            .await
            .expect("own bucket");
        clock.advance(Duration::from_secs(1));
        s.describe_instance(&iid).await.expect("refilled");

        s.inject_faults(Fault::ServerError, Some("DescribeSubnets"), 1);
        let e = s
            .describe_subnets(&SubnetFilter::default())
            .await
            .expect_err("5xx");
        assert!(e.is_retryable());
        // A timeout after apply: the ENI exists although the caller saw a failure.
        s.inject_faults(Fault::TimeoutAfterApply, Some("CreateNetworkInterface"), 1);
        let before = s.all_enis().len();
        let e = s
            .create_network_interface(req(IpRequest::Secondary(1)))
            .await
            .expect_err("timeout");
        assert_eq!(e.code(), "Timeout");
        assert_eq!(s.all_enis().len(), before + 1);
        assert_eq!(s.calls().get("DescribeInstances"), Some(&5));
    }

    #[tokio::test]
    async fn unknown_instance_type_suggests_names() {
        let err = SimEc2::launch(SimSpec::new("m5.lrage"), Arc::new(NoHotplug))
            .await
            .expect_err("unknown");
        assert!(err.to_string().contains("m5.lrage"));
    }

    /// Records what a restart asks the hotplug to restore.
    #[derive(Default)]
    struct RecordingHotplug {
        restored: Mutex<Vec<(SimNic, Vec<Ipv4Addr>)>>,
    }

    impl NicHotplug for RecordingHotplug {
        fn plug(&self, _nic: SimNic) -> BoxFuture<'_, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }
        fn unplug(&self, _nic: SimNic) -> BoxFuture<'_, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }
        fn bind_ips(
            &self,
            _mac: datapath::MacAddr,
            _ips: Vec<Ipv4Addr>,
            _bound: bool,
        ) -> BoxFuture<'_, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }
        fn restore(&self, nics: Vec<(SimNic, Vec<Ipv4Addr>)>) -> BoxFuture<'_, Result<(), String>> {
            Box::pin(async move {
                self.restored
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(nics);
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn saved_state_survives_a_restart_and_interrupted_attaches_complete() {
        let dir = std::env::temp_dir().join(format!("ipamd-sim-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("sim.json");
        let mut spec = SimSpec::new("m5.large");
        spec.state_file = Some(path.clone());
        let s = SimEc2::launch(spec.clone(), Arc::new(NoHotplug))
            .await
            .expect("launch");
        let iid = s.instance_id();
        let eni = s
            .create_network_interface(req(IpRequest::Secondary(3)))
            .await
            .expect("create");
        s.attach_network_interface(&eni.id, &iid, 1, 0)
            .await
            .expect("attach");
        let primary = s
            .all_enis()
            .into_iter()
            .find(|e| e.device_index == Some(0))
            .expect("primary");
        let more = s
            .assign_private_ips(&primary.id, IpRequest::Secondary(2))
            .await
            .expect("assign");
        let spare = s
            .create_network_interface(req(IpRequest::Secondary(1)))
            .await
            .expect("create");
        let free = s.free_addresses(SIM_SUBNET_ID);
        let before = s.all_enis();
        drop(s);

        // The process died in the middle of attaching `spare`: the file says "attaching".
        let mut saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        saved["enis"][&spare.id]["status"] = "attaching".into();
        saved["enis"][&spare.id]["device_index"] = 2.into();
        saved["enis"][&spare.id]["attachment_id"] = "eni-attach-x".into();
        saved["enis"][&spare.id]["instance_id"] = iid.clone().into();
        std::fs::write(&path, serde_json::to_vec(&saved).expect("json")).expect("write");

        let hotplug = Arc::new(RecordingHotplug::default());
        let s = SimEc2::launch(spec.clone(), hotplug.clone())
            .await
            .expect("resume");
        assert_eq!(s.instance_id(), iid);
        assert_eq!(
            s.free_addresses(SIM_SUBNET_ID),
            free,
            "free addresses recomputed"
        );
        let after = s.all_enis();
        assert_eq!(after.len(), before.len());
        let spare_now = after.iter().find(|e| e.id == spare.id).expect("spare");
        assert_eq!(
            spare_now.status, "in-use",
            "the interrupted attach completed"
        );
        for e in &before {
            let now = after.iter().find(|x| x.id == e.id).expect("kept");
            assert_eq!(now.secondary_ips, e.secondary_ips);
        }
        // IMDS shows every attached ENI at once, and the NICs were handed back to the hotplug with their addresses.
        let imds = s.enis().await.expect("imds");
        assert_eq!(imds.len(), 3);
        let restored = hotplug
            .restored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        assert_eq!(restored.len(), 3);
        assert!(restored
            .iter()
            .any(|(n, ips)| n.is_primary && more.ips.iter().all(|ip| ips.contains(ip))));
        // New addresses never collide with saved ones.
        let got = s
            .assign_private_ips(&eni.id, IpRequest::Secondary(3))
            .await
            .expect("assign");
        let held: Vec<Ipv4Addr> = before
            .iter()
            .flat_map(|e| std::iter::once(e.primary_ip).chain(e.secondary_ips.iter().copied()))
            .collect();
        assert!(got.ips.iter().all(|ip| !held.contains(ip)));
        // A state of another instance type is refused, naming the file.
        let mut other = spec;
        other.instance_type = "c5.large".into();
        let err = SimEc2::launch(other, Arc::new(NoHotplug))
            .await
            .expect_err("wrong type");
        assert!(err.to_string().contains("sim.json"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
