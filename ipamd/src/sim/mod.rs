//! The `sim` backend: an EC2 account with one instance, behind the same [`Ec2`] and [`Imds`] traits as AWS.
//!
//! It is faithful where the daemon's correctness depends on it and moto is not: the instance type's ENI limit
//! (default network card) and IPv4-per-ENI limit from the compiled-in limits table, a subnet with a finite set
//! of free addresses (AWS reserves the first four and the last), device indexes that must be free to attach, and
//! error codes named as EC2 names them. Every call is counted by API so tests can assert EC2 discipline.
//!
//! ENIs become real links through a [`NicHotplug`]: attaching an ENI plugs a NIC with the ENI's MAC into the node's
//! namespace, as the hypervisor would (see [`fabric`]). The state is also written, after every change, to a JSON
//! snapshot when a path is given, so tools (the demo, tests) can see what "EC2" holds.

pub mod fabric;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use futures::future::BoxFuture;
use instance_limits::InstanceLimits;
use ipnetwork::Ipv4Network;

use crate::ec2::{
    Assigned, CreateEniRequest, Ec2, Ec2Error, EniDescription, EniFilter, InstanceDescription,
    InstanceTypeInfo, IpRequest, SubnetDescription, SubnetFilter,
};
use crate::imds::{Imds, ImdsEni, ImdsError, NodeMetadata};

/// A NIC as the hypervisor presents it to the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimNic {
    pub device_index: u32,
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
}

/// Simulator settings.
#[derive(Debug, Clone)]
pub struct SimSpec {
    pub instance_type: String,
    pub vpc_cidr: Ipv4Network,
    pub subnet_cidr: Ipv4Network,
    pub availability_zone: String,
    /// Where to write the JSON snapshot after every change.
    pub state_file: Option<PathBuf>,
}

impl SimSpec {
    /// The defaults the demo and tests use: VPC 10.0.0.0/16, node subnet 10.0.0.0/20.
    pub fn new(instance_type: &str) -> SimSpec {
        SimSpec {
            instance_type: instance_type.to_string(),
            vpc_cidr: Ipv4Network::new(Ipv4Addr::new(10, 0, 0, 0), 16)
                .unwrap_or_else(|_| unreachable_net()),
            subnet_cidr: Ipv4Network::new(Ipv4Addr::new(10, 0, 0, 0), 20)
                .unwrap_or_else(|_| unreachable_net()),
            availability_zone: "us-west-2a".into(),
            state_file: None,
        }
    }
}

fn unreachable_net() -> Ipv4Network {
    // Only reached if ipnetwork rejected a literal /16 or /20, which it does not.
    Ipv4Network::from(Ipv4Addr::UNSPECIFIED)
}

#[derive(Debug, Clone, serde::Serialize)]
struct SimState {
    instance_id: String,
    instance_type: String,
    subnet_id: String,
    subnet_cidr: Ipv4Network,
    vpc_id: String,
    vpc_cidr: Ipv4Network,
    security_groups: Vec<String>,
    subnet_tags: BTreeMap<String, String>,
    availability_zone: String,
    max_enis: u32,
    ipv4_per_eni: u32,
    free: BTreeSet<Ipv4Addr>,
    enis: BTreeMap<String, EniDescription>,
    next_id: u64,
    calls: BTreeMap<&'static str, u64>,
}

/// The simulated account. Cheap to clone (shared state).
#[derive(Clone)]
pub struct SimEc2 {
    state: Arc<Mutex<SimState>>,
    hotplug: Arc<dyn NicHotplug>,
    state_file: Option<PathBuf>,
}

impl std::fmt::Debug for SimEc2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimEc2").finish_non_exhaustive()
    }
}

impl SimEc2 {
    /// Builds the account, launches the instance and plugs its primary ENI.
    pub async fn launch(spec: SimSpec, hotplug: Arc<dyn NicHotplug>) -> Result<SimEc2, SimError> {
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
        if !spec.vpc_cidr.contains(spec.subnet_cidr.network()) || spec.subnet_cidr.prefix() > 28 {
            return Err(SimError::Subnet(
                spec.subnet_cidr.to_string(),
                format!("must be a /28 or larger inside the VPC {}", spec.vpc_cidr),
            ));
        }
        // AWS reserves the network address, the next three (router, DNS, future) and the broadcast address.
        let all: Vec<Ipv4Addr> = spec.subnet_cidr.iter().collect();
        let free: BTreeSet<Ipv4Addr> = all
            .iter()
            .skip(4)
            .take(all.len().saturating_sub(5))
            .copied()
            .collect();
        let mut state = SimState {
            instance_id: "i-0a1b2c3d4e5f60718".into(),
            instance_type: spec.instance_type.clone(),
            subnet_id: "subnet-0sim0000000000001".into(),
            subnet_cidr: spec.subnet_cidr,
            vpc_id: "vpc-0sim00000000000001".into(),
            vpc_cidr: spec.vpc_cidr,
            security_groups: vec!["sg-0sim00000000000001".into()],
            subnet_tags: BTreeMap::new(),
            availability_zone: spec.availability_zone.clone(),
            max_enis: limits.enis,
            ipv4_per_eni: limits.ipv4_per_eni,
            free,
            enis: BTreeMap::new(),
            next_id: 1,
            calls: BTreeMap::new(),
        };
        let primary = new_eni(
            &mut state,
            "primary network interface".into(),
            BTreeMap::new(),
            0,
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
        };
        let nic = sim
            .nic_of(&primary_id)
            .ok_or_else(|| SimError::Plug("primary ENI vanished".into()))?;
        sim.hotplug.plug(nic).await.map_err(SimError::Plug)?;
        sim.snapshot();
        Ok(sim)
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock would be a simulator bug; keep serving rather than cascade it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, api: &'static str) {
        *self.lock().calls.entry(api).or_default() += 1;
    }

    /// Calls made so far, by API name.
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.lock().calls.clone()
    }

    /// The instance's ID.
    pub fn instance_id(&self) -> String {
        self.lock().instance_id.clone()
    }

    /// Every ENI in the account.
    pub fn all_enis(&self) -> Vec<EniDescription> {
        self.lock().enis.values().cloned().collect()
    }

    fn nic_of(&self, eni_id: &str) -> Option<SimNic> {
        let st = self.lock();
        let eni = st.enis.get(eni_id)?;
        Some(SimNic {
            device_index: eni.device_index?,
            mac: mac_of(eni)?,
            primary_ip: eni.primary_ip,
            subnet: st.subnet_cidr,
            is_primary: eni.device_index == Some(0),
        })
    }

    fn snapshot(&self) {
        let Some(path) = &self.state_file else {
            return;
        };
        let json = match serde_json::to_vec_pretty(&*self.lock()) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "cannot serialise simulator state");
                return;
            }
        };
        let tmp = path.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, path)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write simulator state");
        }
    }
}

fn take_ips(st: &mut SimState, n: u32, api: &'static str) -> Result<Vec<Ipv4Addr>, Ec2Error> {
    if st.free.len() < n as usize {
        return Err(Ec2Error::SubnetExhausted {
            api,
            subnet: st.subnet_id.clone(),
            code: "InsufficientFreeAddressesInSubnet".into(),
        });
    }
    let ips: Vec<Ipv4Addr> = st.free.iter().take(n as usize).copied().collect();
    for ip in &ips {
        st.free.remove(ip);
    }
    Ok(ips)
}

fn new_eni(
    st: &mut SimState,
    description: String,
    tags: BTreeMap<String, String>,
    secondary: u32,
) -> Result<EniDescription, Ec2Error> {
    let api = "CreateNetworkInterface";
    if secondary + 1 > st.ipv4_per_eni {
        return Err(Ec2Error::IpLimitExceeded {
            api,
            eni: "(new)".into(),
        });
    }
    let mut ips = take_ips(st, secondary + 1, api)?;
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
        ipv4_prefixes: Vec::new(),
        subnet_id: st.subnet_id.clone(),
        subnet_cidr: st.subnet_cidr,
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

fn prefixes_unsupported(api: &'static str) -> Ec2Error {
    Ec2Error::Other {
        api,
        code: "UnsupportedOperation".into(),
        message: "prefix delegation is not simulated yet".into(),
    }
}

fn not_found(api: &'static str, id: &str) -> Ec2Error {
    Ec2Error::NotFound {
        api,
        what: format!("network interface {id}"),
    }
}

#[async_trait]
impl Ec2 for SimEc2 {
    async fn create_network_interface(
        &self,
        req: CreateEniRequest,
    ) -> Result<EniDescription, Ec2Error> {
        self.count("CreateNetworkInterface");
        let eni = {
            let mut st = self.lock();
            if req.subnet_id != st.subnet_id {
                return Err(Ec2Error::Other {
                    api: "CreateNetworkInterface",
                    code: "InvalidSubnetID.NotFound".into(),
                    message: format!("subnet {} does not exist", req.subnet_id),
                });
            }
            let secondary = match req.ips {
                IpRequest::Secondary(n) => n,
                IpRequest::Prefixes(_) => {
                    return Err(prefixes_unsupported("CreateNetworkInterface"))
                }
            };
            let eni = new_eni(&mut st, req.description, req.tags, secondary)?;
            st.enis.insert(eni.id.clone(), eni.clone());
            eni
        };
        self.snapshot();
        Ok(eni)
    }

    async fn attach_network_interface(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
        network_card_index: u32,
    ) -> Result<String, Ec2Error> {
        let api = "AttachNetworkInterface";
        self.count(api);
        if network_card_index != 0 {
            return Err(Ec2Error::Other {
                api,
                code: "InvalidParameterValue".into(),
                message: format!(
                    "the simulated instance has one network card, not {network_card_index}"
                ),
            });
        }
        let attachment = {
            let mut st = self.lock();
            if instance_id != st.instance_id {
                return Err(Ec2Error::Other {
                    api,
                    code: "InvalidInstanceID.NotFound".into(),
                    message: format!("instance {instance_id} does not exist"),
                });
            }
            let attached = st
                .enis
                .values()
                .filter(|e| e.device_index.is_some())
                .count();
            if attached >= st.max_enis as usize || device_index >= st.max_enis {
                return Err(Ec2Error::EniLimitExceeded { api });
            }
            if st
                .enis
                .values()
                .any(|e| e.device_index == Some(device_index))
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
            let attachment = format!("eni-attach-{}", &eni_id[4..]);
            eni.device_index = Some(device_index);
            eni.attachment_id = Some(attachment.clone());
            eni.instance_id = Some(instance_id.to_string());
            eni.status = "in-use".into();
            attachment
        };
        let nic = self.nic_of(eni_id).ok_or_else(|| not_found(api, eni_id))?;
        let secondary = self
            .lock()
            .enis
            .get(eni_id)
            .map(|e| e.secondary_ips.clone())
            .unwrap_or_default();
        let mac = nic.mac;
        if let Err(e) = self.hotplug.plug(nic).await {
            return Err(Ec2Error::Other {
                api,
                code: "InternalError".into(),
                message: format!("simulated hotplug failed: {e}"),
            });
        }
        if !secondary.is_empty() {
            if let Err(e) = self.hotplug.bind_ips(mac, secondary, true).await {
                tracing::warn!(error = %e, "simulated VPC could not bind IPs");
            }
        }
        self.snapshot();
        Ok(attachment)
    }

    async fn set_delete_on_termination(
        &self,
        eni_id: &str,
        _attachment_id: &str,
    ) -> Result<(), Ec2Error> {
        let api = "ModifyNetworkInterfaceAttribute";
        self.count(api);
        let mut st = self.lock();
        let eni = st
            .enis
            .get_mut(eni_id)
            .ok_or_else(|| not_found(api, eni_id))?;
        eni.delete_on_termination = true;
        Ok(())
    }

    async fn assign_private_ips(&self, eni_id: &str, req: IpRequest) -> Result<Assigned, Ec2Error> {
        let api = "AssignPrivateIpAddresses";
        self.count(api);
        let count = match req {
            IpRequest::Secondary(n) => n,
            IpRequest::Prefixes(_) => return Err(prefixes_unsupported(api)),
        };
        let (ips, mac, attached) = {
            let mut st = self.lock();
            let limit = st.ipv4_per_eni;
            let eni = st.enis.get(eni_id).ok_or_else(|| not_found(api, eni_id))?;
            let have = eni.secondary_ips.len() as u32 + 1;
            if have + count > limit {
                return Err(Ec2Error::IpLimitExceeded {
                    api,
                    eni: eni_id.to_string(),
                });
            }
            let ips = take_ips(&mut st, count, api)?;
            let eni = st
                .enis
                .get_mut(eni_id)
                .ok_or_else(|| not_found(api, eni_id))?;
            eni.secondary_ips.extend(ips.iter().copied());
            (ips, mac_of(eni), eni.device_index.is_some())
        };
        if let (Some(mac), true) = (mac, attached) {
            if let Err(e) = self.hotplug.bind_ips(mac, ips.clone(), true).await {
                tracing::warn!(error = %e, "simulated VPC could not bind IPs");
            }
        }
        self.snapshot();
        Ok(Assigned {
            ips,
            prefixes: Vec::new(),
        })
    }

    async fn unassign_private_ips(
        &self,
        eni_id: &str,
        ips: &[Ipv4Addr],
        prefixes: &[Ipv4Network],
    ) -> Result<(), Ec2Error> {
        let api = "UnassignPrivateIpAddresses";
        self.count(api);
        if !prefixes.is_empty() {
            return Err(prefixes_unsupported(api));
        }
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
            eni.secondary_ips.retain(|ip| !ips.contains(ip));
            let mac = mac_of(eni);
            st.free.extend(ips.iter().copied());
            mac
        };
        if let Some(mac) = mac {
            if let Err(e) = self.hotplug.bind_ips(mac, ips.to_vec(), false).await {
                tracing::warn!(error = %e, "simulated VPC could not unbind IPs");
            }
        }
        self.snapshot();
        Ok(())
    }

    async fn detach_network_interface(&self, attachment_id: &str) -> Result<(), Ec2Error> {
        let api = "DetachNetworkInterface";
        self.count(api);
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
            eni.status = "available".into();
        }
        self.snapshot();
        Ok(())
    }

    async fn delete_network_interface(&self, eni_id: &str) -> Result<(), Ec2Error> {
        let api = "DeleteNetworkInterface";
        self.count(api);
        {
            let mut st = self.lock();
            let eni = st.enis.get(eni_id).ok_or_else(|| not_found(api, eni_id))?;
            if eni.device_index.is_some() {
                return Err(Ec2Error::Other {
                    api,
                    code: "InvalidNetworkInterface.InUse".into(),
                    message: format!("{eni_id} is attached"),
                });
            }
            let mut released = eni.secondary_ips.clone();
            released.push(eni.primary_ip);
            st.free.extend(released);
            st.enis.remove(eni_id);
        }
        self.snapshot();
        Ok(())
    }

    async fn describe_network_interfaces(
        &self,
        ids: &[String],
    ) -> Result<Vec<EniDescription>, Ec2Error> {
        let api = "DescribeNetworkInterfaces";
        self.count(api);
        let st = self.lock();
        ids.iter()
            .map(|id| st.enis.get(id).cloned().ok_or_else(|| not_found(api, id)))
            .collect()
    }

    async fn list_network_interfaces(
        &self,
        filter: &EniFilter,
    ) -> Result<Vec<EniDescription>, Ec2Error> {
        self.count("DescribeNetworkInterfaces");
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
    }

    async fn describe_instance(&self, instance_id: &str) -> Result<InstanceDescription, Ec2Error> {
        let api = "DescribeInstances";
        self.count(api);
        let st = self.lock();
        if instance_id != st.instance_id {
            return Err(Ec2Error::NotFound {
                api,
                what: format!("instance {instance_id}"),
            });
        }
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

    async fn describe_subnets(
        &self,
        filter: &SubnetFilter,
    ) -> Result<Vec<SubnetDescription>, Ec2Error> {
        self.count("DescribeSubnets");
        let st = self.lock();
        let subnet = SubnetDescription {
            id: st.subnet_id.clone(),
            cidr: st.subnet_cidr,
            availability_zone: st.availability_zone.clone(),
            vpc_id: st.vpc_id.clone(),
            available_ip_count: st.free.len() as u64,
            tags: st.subnet_tags.clone(),
        };
        let matches = (filter.ids.is_empty() || filter.ids.contains(&subnet.id))
            && filter.vpc_id.as_ref().is_none_or(|v| *v == subnet.vpc_id)
            && filter
                .availability_zone
                .as_ref()
                .is_none_or(|z| *z == subnet.availability_zone);
        Ok(if matches { vec![subnet] } else { Vec::new() })
    }

    async fn create_tags(
        &self,
        resource_id: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), Ec2Error> {
        let api = "CreateTags";
        self.count(api);
        {
            let mut st = self.lock();
            let eni = st
                .enis
                .get_mut(resource_id)
                .ok_or_else(|| not_found(api, resource_id))?;
            eni.tags
                .extend(tags.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        self.snapshot();
        Ok(())
    }

    async fn describe_instance_types(
        &self,
        types: &[String],
    ) -> Result<Vec<InstanceTypeInfo>, Ec2Error> {
        let api = "DescribeInstanceTypes";
        self.count(api);
        let pick: Vec<&InstanceLimits> = if types.is_empty() {
            instance_limits::all().iter().collect()
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
                .collect::<Result<_, _>>()?
        };
        Ok(pick
            .into_iter()
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
            .collect())
    }
}

/// IMDS as seen from the simulated instance.
#[async_trait]
impl Imds for SimEc2 {
    async fn node(&self) -> Result<NodeMetadata, ImdsError> {
        let st = self.lock();
        let primary = st
            .enis
            .values()
            .find(|e| e.device_index == Some(0))
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
        let st = self.lock();
        let mut out: Vec<ImdsEni> = st
            .enis
            .values()
            .filter_map(|e| {
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
            })
            .collect();
        out.sort_by_key(|e| e.device_number);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sim(t: &str) -> SimEc2 {
        SimEc2::launch(SimSpec::new(t), Arc::new(NoHotplug))
            .await
            .expect("launch")
    }

    #[tokio::test]
    async fn enforces_eni_and_ip_limits_of_the_instance_type() {
        let s = sim("m5.large").await; // 3 ENIs x 10 IPv4
        let iid = s.instance_id();
        let req = |n| CreateEniRequest {
            subnet_id: "subnet-0sim0000000000001".into(),
            description: "aws-K8S-test".into(),
            tags: BTreeMap::new(),
            security_groups: Vec::new(),
            ips: IpRequest::Secondary(n),
        };
        assert!(matches!(
            s.create_network_interface(req(10)).await,
            Err(Ec2Error::IpLimitExceeded { .. })
        ));
        let a = s.create_network_interface(req(9)).await.expect("eni a");
        let b = s.create_network_interface(req(0)).await.expect("eni b");
        let c = s.create_network_interface(req(0)).await.expect("eni c");
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
        let req = CreateEniRequest {
            subnet_id: "subnet-0sim0000000000001".into(),
            description: String::new(),
            tags: BTreeMap::new(),
            security_groups: Vec::new(),
            ips: IpRequest::Secondary(1),
        };
        assert!(matches!(
            s.create_network_interface(req).await,
            Err(Ec2Error::SubnetExhausted { .. })
        ));
    }

    #[tokio::test]
    async fn unknown_instance_type_suggests_names() {
        let err = SimEc2::launch(SimSpec::new("m5.lrage"), Arc::new(NoHotplug))
            .await
            .expect_err("unknown");
        assert!(err.to_string().contains("m5.lrage"));
    }
}
