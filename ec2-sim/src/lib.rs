//! `ec2-sim`: an EC2 account with one instance, behind the same [`Ec2`] and [`Imds`] traits as AWS.
//!
//! It is faithful where the daemon's correctness depends on it, and moto is not:
//! - **Limits** of the instance type from the compiled-in table: ENIs per network card (multi-card types attach
//!   on every card), IPv4 addresses per ENI (primary + secondaries + /28 prefixes share the slots, as on EC2),
//!   device indexes that must be free; prefix delegation only on Nitro types.
//! - **Subnets** with a finite set of free addresses (AWS reserves the first four and the last); /28 prefixes need
//!   an aligned, wholly free block, so a subnet fragmented by other tenants ([`SimSpec::taken`]) answers
//!   `InsufficientCidrBlocks` while it still has free addresses; [`SimEc2::fragment_subnet`] fragments a subnet
//!   on request (and [`SimEc2::defragment_subnet`] lifts it; under `ipamd run --backend sim` the file
//!   [`run::fragment_file`] beside the state does both: present = fragmented). Extra subnets (with tags, for subnet discovery)
//!   can be added.
//! - **A changing VPC**: [`SimEc2::set_vpc_secondary_cidrs`] associates CIDR blocks with the VPC and
//!   [`SimEc2::set_primary_security_groups`] changes the primary ENI's security groups, and IMDS serves the new
//!   values at once (`vpc-ipv4-cidr-blocks`, `security-group-ids`); under `ipamd run --backend sim` the file
//!   [`run::vpc_file`] beside the state does both (see [`vpc`]). ModifyNetworkInterfaceAttribute with `Groups`
//!   replaces an ENI's security groups.
//! - **Eventual consistency**: IMDS shows each ENI change [`SimSpec::imds_lag`] after EC2 made it.
//! - **Attach latency**: an ENI stays `attaching` (and its NIC absent) for [`SimSpec::attach_latency`].
//! - **Throttling**: a token bucket per API, like EC2's request-rate limits (mutating and non-mutating actions have
//!   different sizes), answering `RequestLimitExceeded`; [`SimEc2::throttle_for`] makes every call fail for a while.
//! - **Idempotency**: CreateNetworkInterface with a `ClientToken` is done once: the same token with the same
//!   parameters returns the ENI the first call made (so a retry after a timeout that EC2 had applied makes no
//!   second ENI), with other parameters it is `IdempotentParameterMismatch`, as on EC2.
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
//! Throttling buckets, injected faults and pending IMDS lag are not persisted. [`run`] is how `ipamd run
//! --backend sim` places the state and the fabric (by default both outlive ipamd).

mod ec2;
pub mod fabric;
mod faults;
mod hotplug;
mod imds;
mod persist;
pub mod run;
mod spec;
mod state;
#[cfg(test)]
mod tests;
pub mod vpc;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ec2_api::clock::Clock;
use ec2_api::{Api, EniDescription, IpRequest};
use instance_limits::InstanceLimits;

pub use hotplug::{NicHotplug, NoHotplug, SimNic};
pub use spec::{Fault, ForeignEni, SimError, SimSpec, SimSubnet, ThrottleSpec, SIM_SUBNET_ID};

use imds::{apply_imds, imds_eni_of};
use state::{new_eni, subnet_free, SimState, SubnetState};

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
    fragment_file: Option<PathBuf>,
    vpc_file: Option<PathBuf>,
    /// The content of `vpc_file` last applied (a file is applied again only when it changed).
    vpc_file_seen: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for SimEc2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimEc2").finish_non_exhaustive()
    }
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
        let all_subnets = std::iter::once((spec.subnet_cidr, BTreeMap::new(), None)).chain(
            spec.extra_subnets
                .iter()
                .map(|s| (s.cidr, s.tags.clone(), s.availability_zone.clone())),
        );
        for (i, (cidr, tags, availability_zone)) in all_subnets.enumerate() {
            // The node subnet is dual-stack when the spec says so; extra subnets are IPv4 only.
            let ipv6_cidr = if i == 0 { spec.subnet_ipv6_cidr } else { None };
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
                    ipv6_cidr,
                    next_v6: 0,
                    tags,
                    availability_zone,
                    free_count: free.len(),
                    free,
                    fragmented: false,
                    tenants: Default::default(),
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
            vpc_secondary_cidrs: Vec::new(),
            security_groups: vec!["sg-0sim00000000000001".into()],
            availability_zone: spec.availability_zone.clone(),
            network_cards,
            ipv4_per_eni: limits.ipv4_per_eni,
            prefix_delegation: limits.supports_prefix_delegation(),
            subnets,
            enis: BTreeMap::new(),
            eni_security_groups: BTreeMap::new(),
            next_id: 1,
            client_tokens: BTreeMap::new(),
            other_instances: BTreeMap::new(),
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
        let groups = state.security_groups.clone();
        state.eni_security_groups.insert(primary_id.clone(), groups);
        // Other components' ENIs have security groups of their own (here: the instance's at launch).
        let foreign_groups = state.security_groups.clone();
        let instance_id = state.instance_id.clone();
        if let Some(eni) = state.enis.get_mut(&primary_id) {
            eni.device_index = Some(0);
            eni.attachment_id = Some("eni-attach-primary".into());
            eni.instance_id = Some(instance_id);
            eni.status = "in-use".into();
            eni.delete_on_termination = true;
        }
        let mut attached = vec![primary_id.clone()];
        for (i, f) in spec.foreign_enis.iter().enumerate() {
            let mut eni = new_eni(
                &mut state,
                SIM_SUBNET_ID,
                format!("{} interface of another component", f.interface_type),
                f.tags.clone(),
                IpRequest::Secondary(0),
            )
            .map_err(|e| SimError::Plug(e.to_string()))?;
            let device = u32::try_from(i + 1).unwrap_or(u32::MAX);
            eni.interface_type = f.interface_type.clone();
            eni.device_index = Some(device);
            eni.attachment_id = Some(format!("eni-attach-{}", eni.id.trim_start_matches("eni-")));
            eni.instance_id = Some(state.instance_id.clone());
            eni.status = "in-use".into();
            eni.delete_on_termination = true;
            attached.push(eni.id.clone());
            state
                .eni_security_groups
                .insert(eni.id.clone(), foreign_groups.clone());
            state.enis.insert(eni.id.clone(), eni);
        }
        let on_card0 = state
            .network_cards
            .iter()
            .find(|(c, _)| *c == 0)
            .map_or(0, |c| c.1);
        if attached.len() > on_card0 as usize {
            return Err(SimError::Setting(format!(
                "{} ENIs do not fit the {on_card0} slots of {}",
                attached.len(),
                spec.instance_type
            )));
        }
        let imds_lag = spec.imds_lag;
        let sim = SimEc2::assemble(state, spec, hotplug);
        // The primary ENI is visible at boot; later changes lag.
        let sim = SimEc2 {
            imds_lag: Duration::ZERO,
            ..sim
        };
        for id in &attached {
            sim.publish(id);
        }
        let sim = SimEc2 { imds_lag, ..sim };
        for id in &attached {
            let nic = sim
                .nic_of(id)
                .ok_or_else(|| SimError::Plug(format!("ENI {id} vanished")))?;
            sim.hotplug.plug(nic).await.map_err(SimError::Plug)?;
        }
        sim.snapshot();
        Ok(sim)
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock would be a simulator bug; keep serving rather than cascade it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Another instance (node) of the account in `state` (`running`, `terminated`); DescribeInstances shows it.
    pub fn add_instance(&self, instance_id: &str, state: &str) {
        self.lock()
            .other_instances
            .insert(instance_id.to_string(), state.to_string());
    }

    /// Every ENI in the account.
    pub fn all_enis(&self) -> Vec<EniDescription> {
        self.lock().enis.values().cloned().collect()
    }

    /// The security groups of an ENI (empty for one EC2 does not have).
    pub fn security_groups_of(&self, eni_id: &str) -> Vec<String> {
        self.lock()
            .eni_security_groups
            .get(eni_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Every subnet of the VPC: `(id, CIDR, availability zone)`.
    pub fn subnets(&self) -> Vec<(String, ipnetwork::Ipv4Network, String)> {
        let st = self.lock();
        st.subnets
            .values()
            .map(|s| {
                let zone = s
                    .availability_zone
                    .clone()
                    .unwrap_or_else(|| st.availability_zone.clone());
                (s.id.clone(), s.cidr, zone)
            })
            .collect()
    }

    /// Free addresses in a subnet.
    pub fn free_addresses(&self, subnet_id: &str) -> usize {
        self.lock()
            .subnets
            .get(subnet_id)
            .map_or(0, |s| s.free.len())
    }

    /// Fragments `subnet_id` (every subnet when `None`) as other tenants would: from now until
    /// [`SimEc2::defragment_subnet`], before every prefix request they take one address of each wholly free
    /// aligned /28, so prefix requests answer `InsufficientCidrBlocks` while single addresses stay free.
    /// Returns the addresses the tenants took now.
    pub fn fragment_subnet(&self, subnet_id: Option<&str>) -> usize {
        let taken = {
            let mut st = self.lock();
            let mut taken = 0;
            for s in st.subnets.values_mut() {
                if subnet_id.is_none_or(|id| id == s.id) {
                    let before = s.tenants.len();
                    s.fragmented = true;
                    s.fragment_free_blocks();
                    taken += s.tenants.len() - before;
                }
            }
            taken
        };
        self.snapshot();
        taken
    }

    /// Lifts [`SimEc2::fragment_subnet`]: the tenants give their addresses back, so aligned /28s are free again.
    pub fn defragment_subnet(&self, subnet_id: Option<&str>) {
        {
            let mut st = self.lock();
            for s in st.subnets.values_mut() {
                if subnet_id.is_none_or(|id| id == s.id) {
                    s.fragmented = false;
                    let back = std::mem::take(&mut s.tenants);
                    s.free.extend(back);
                }
            }
        }
        self.snapshot();
    }

    /// Whether any subnet is fragmented on request.
    pub fn is_fragmented(&self) -> bool {
        self.lock().subnets.values().any(|s| s.fragmented)
    }

    fn nic_of(&self, eni_id: &str) -> Option<SimNic> {
        self.lock().enis.get(eni_id).and_then(SimNic::of)
    }

    /// The account around `state`, with the settings of `spec`.
    fn assemble(state: SimState, spec: SimSpec, hotplug: Arc<dyn NicHotplug>) -> SimEc2 {
        SimEc2 {
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
            fragment_file: spec.fragment_file,
            vpc_file: spec.vpc_file,
            vpc_file_seen: Arc::default(),
        }
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
}

/// For tests: a simulated `instance_type` on a [`ManualClock`](ec2_api::clock::ManualClock) (returned too), with
/// its spec adjusted by `tune` before the launch.
#[cfg(any(test, feature = "fakes"))]
#[allow(clippy::expect_used)]
pub async fn on_manual_clock(
    instance_type: &str,
    tune: impl FnOnce(&mut SimSpec),
) -> (SimEc2, ec2_api::clock::ManualClock) {
    let clock = ec2_api::clock::ManualClock::default();
    let mut spec = SimSpec::new(instance_type);
    spec.clock = Arc::new(clock.clone());
    tune(&mut spec);
    let sim = SimEc2::launch(spec, Arc::new(NoHotplug))
        .await
        .expect("sim");
    (sim, clock)
}
