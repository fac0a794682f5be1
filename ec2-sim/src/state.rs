//! The account's state: subnets with their free addresses, ENIs, counters; and the pure rules that change it
//! (taking addresses and /28 blocks, creating an ENI).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ec2_api::bucket::TokenBucket;
use ec2_api::{Ec2Error, EniDescription, ImdsEni, IpRequest};
use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::spec::Fault;
use crate::Api;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct SubnetState {
    pub(crate) id: String,
    pub(crate) cidr: Ipv4Network,
    /// The subnet's IPv6 /64, if it has one.
    #[serde(default)]
    pub(crate) ipv6_cidr: Option<Ipv6Network>,
    /// /80 prefixes (and single IPv6 addresses, from the first /80) handed out so far: the next one's index.
    #[serde(default)]
    pub(crate) next_v6: u64,
    pub(crate) tags: BTreeMap<String, String>,
    /// `None`: the instance's zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) availability_zone: Option<String>,
    /// Recomputed on load: every address of the subnet but the reserved ones, other tenants' and the ENIs'.
    #[serde(skip)]
    pub(crate) free: BTreeSet<Ipv4Addr>,
    pub(crate) free_count: usize,
    /// Fragmented on request ([`crate::SimEc2::fragment_subnet`]): other tenants take one address of every
    /// wholly free /28 before each prefix request, so single addresses stay free but no aligned block does.
    #[serde(default)]
    pub(crate) fragmented: bool,
    /// The addresses those tenants hold (given back when the fragmentation is lifted).
    #[serde(default)]
    pub(crate) tenants: BTreeSet<Ipv4Addr>,
}

impl SubnetState {
    /// Other tenants take one address (the ninth) of every wholly free aligned /28.
    pub(crate) fn fragment_free_blocks(&mut self) {
        let base = u32::from(self.cidr.network());
        let blocks = 1u64 << (28u8.saturating_sub(self.cidr.prefix()));
        for b in 0..blocks {
            let start = base + u32::try_from(b * 16).unwrap_or(u32::MAX);
            if (0..16).all(|i| self.free.contains(&Ipv4Addr::from(start + i))) {
                let ip = Ipv4Addr::from(start + 8);
                self.free.remove(&ip);
                self.tenants.insert(ip);
            }
        }
    }
}

fn load_calls<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<&'static str, u64>, D::Error> {
    let raw: BTreeMap<String, u64> = serde::Deserialize::deserialize(d)?;
    Ok(raw
        .into_iter()
        .filter_map(|(k, v)| Api::from_name(&k).map(|a| (a.name(), v)))
        .collect())
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct SimState {
    pub(crate) instance_id: String,
    pub(crate) instance_type: String,
    pub(crate) subnet_id: String,
    pub(crate) subnet_cidr: Ipv4Network,
    pub(crate) vpc_id: String,
    pub(crate) vpc_cidr: Ipv4Network,
    /// CIDR blocks associated with the VPC after its creation ([`crate::SimEc2::set_vpc_secondary_cidrs`]).
    #[serde(default)]
    pub(crate) vpc_secondary_cidrs: Vec<Ipv4Network>,
    /// The primary ENI's security groups (IMDS `security-group-ids`).
    pub(crate) security_groups: Vec<String>,
    pub(crate) availability_zone: String,
    /// `(card index, max ENIs)`.
    pub(crate) network_cards: Vec<(u32, u32)>,
    pub(crate) ipv4_per_eni: u32,
    pub(crate) prefix_delegation: bool,
    pub(crate) subnets: BTreeMap<String, SubnetState>,
    pub(crate) enis: BTreeMap<String, EniDescription>,
    /// The security groups of each ENI (as CreateNetworkInterface set them; the primary ENI's are the
    /// instance's).
    #[serde(default)]
    pub(crate) eni_security_groups: BTreeMap<String, Vec<String>>,
    pub(crate) next_id: u64,
    /// `ClientToken` of every CreateNetworkInterface that had one: the request's parameters and the ENI made.
    #[serde(default)]
    pub(crate) client_tokens: BTreeMap<String, (String, String)>,
    /// Other instances of the account (other nodes), by ID, with their state (`running`, `terminated`).
    #[serde(default)]
    pub(crate) other_instances: BTreeMap<String, String>,
    #[serde(deserialize_with = "load_calls")]
    pub(crate) calls: BTreeMap<&'static str, u64>,
    pub(crate) imds_reads: u64,
    #[serde(skip)]
    pub(crate) imds_view: BTreeMap<String, ImdsEni>,
    #[serde(skip)]
    pub(crate) imds_pending: VecDeque<(Duration, String, Option<ImdsEni>)>,
    #[serde(skip)]
    pub(crate) buckets: BTreeMap<&'static str, TokenBucket>,
    #[serde(skip)]
    pub(crate) throttled_until: Duration,
    #[serde(skip)]
    pub(crate) faults: Vec<(Option<String>, Fault, u32)>,
}

pub(crate) fn subnet_free(cidr: Ipv4Network, taken: &[Ipv4Addr]) -> BTreeSet<Ipv4Addr> {
    // AWS reserves the network address, the next three (router, DNS, future) and the broadcast address.
    let all: Vec<Ipv4Addr> = cidr.iter().collect();
    all.iter()
        .skip(4)
        .take(all.len().saturating_sub(5))
        .filter(|ip| !taken.contains(ip))
        .copied()
        .collect()
}

pub(crate) fn exhausted(subnet: &str, api: &'static str, code: &str) -> Ec2Error {
    Ec2Error::SubnetExhausted {
        api,
        subnet: subnet.to_string(),
        code: code.into(),
    }
}

pub(crate) fn take_ips(
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
pub(crate) fn take_prefixes(
    st: &mut SimState,
    subnet: &str,
    n: u32,
    api: &'static str,
) -> Result<Vec<Ipv4Network>, Ec2Error> {
    let Some(s) = st.subnets.get_mut(subnet) else {
        return Err(exhausted(subnet, api, "InvalidSubnetID.NotFound"));
    };
    if s.fragmented && n > 0 {
        s.fragment_free_blocks();
    }
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

pub(crate) fn release(st: &mut SimState, subnet: &str, ips: impl IntoIterator<Item = Ipv4Addr>) {
    if let Some(s) = st.subnets.get_mut(subnet) {
        s.free.extend(ips);
    }
}

pub(crate) fn unsupported_pd(api: &'static str) -> Ec2Error {
    Ec2Error::Other {
        api,
        code: "InvalidParameterValue".into(),
        message: "prefix delegation is supported on Nitro instance types only".into(),
    }
}

pub(crate) fn new_eni(
    st: &mut SimState,
    subnet_id: &str,
    description: String,
    tags: BTreeMap<String, String>,
    req: IpRequest,
) -> Result<EniDescription, Ec2Error> {
    let api = Api::CreateNetworkInterface.name();
    let subnet_ipv6_cidr = st.subnets.get(subnet_id).and_then(|s| s.ipv6_cidr);
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
    // In a dual-stack subnet the ENI gets an IPv6 address too (as EC2 does with auto-assign), from the subnet's
    // first /80, which is never delegated.
    let ipv6_addresses: Vec<Ipv6Addr> = take_ipv6_address(st, subnet_id).into_iter().collect();
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
        ipv6_addresses,
        ipv6_prefixes: Vec::new(),
        subnet_id: subnet_id.to_string(),
        subnet_cidr,
        subnet_ipv6_cidr,
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

pub(crate) fn mac_of(eni: &EniDescription) -> Option<datapath::MacAddr> {
    datapath::MacAddr::parse(&eni.mac)
}

pub(crate) fn not_found(api: &'static str, id: &str) -> Ec2Error {
    Ec2Error::NotFound {
        api,
        what: format!("network interface {id}"),
    }
}

pub(crate) fn addresses(ips: &[Ipv4Addr], prefixes: &[Ipv4Network]) -> Vec<Ipv4Addr> {
    let mut all = ips.to_vec();
    all.extend(prefixes.iter().flat_map(|p| p.iter()));
    all
}

/// The `index`-th /80 of a /64 (index 0 holds the subnet's single IPv6 addresses).
fn v6_block(cidr: Ipv6Network, index: u64) -> Option<Ipv6Network> {
    let base = u128::from(cidr.network());
    let block = base | (u128::from(index) << 48);
    Ipv6Network::new(Ipv6Addr::from(block), 80).ok()
}

/// One IPv6 address of the subnet for a new ENI (`None`: an IPv4-only subnet).
fn take_ipv6_address(st: &mut SimState, subnet: &str) -> Option<Ipv6Addr> {
    let n = st.next_id;
    let s = st.subnets.get(subnet)?;
    let cidr = s.ipv6_cidr?;
    let base = u128::from(cidr.network());
    // Host part from the ENI counter: unique per ENI, inside the first /80.
    Some(Ipv6Addr::from(base | 0x1000 | u128::from(n)))
}

/// Takes `n` /80 prefixes from the subnet's IPv6 CIDR (`AssignIpv6Addresses` with `Ipv6PrefixCount`).
pub(crate) fn take_ipv6_prefixes(
    st: &mut SimState,
    subnet: &str,
    n: u32,
    api: &'static str,
) -> Result<Vec<Ipv6Network>, Ec2Error> {
    let Some(s) = st.subnets.get_mut(subnet) else {
        return Err(exhausted(subnet, api, "InvalidSubnetID.NotFound"));
    };
    let Some(cidr) = s.ipv6_cidr else {
        return Err(Ec2Error::Other {
            api,
            code: "InvalidParameterValue".into(),
            message: format!("subnet {subnet} has no IPv6 CIDR block"),
        });
    };
    // A /64 holds 2^16 /80s; the first is kept for single addresses.
    let blocks = 1u64 << 80u8.saturating_sub(cidr.prefix()).min(63);
    let first = s.next_v6.max(1);
    if first + u64::from(n) > blocks {
        return Err(exhausted(subnet, api, "InsufficientCidrBlocks"));
    }
    let out: Vec<Ipv6Network> = (first..first + u64::from(n))
        .filter_map(|i| v6_block(cidr, i))
        .collect();
    s.next_v6 = first + u64::from(n);
    Ok(out)
}
