//! How attached ENIs reach the node: the hypervisor's side of a NIC, as a trait the simulator calls.

use std::net::{Ipv4Addr, Ipv6Addr};

use futures::future::BoxFuture;
use ipnetwork::{Ipv4Network, Ipv6Network};

/// A NIC as the hypervisor presents it to the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimNic {
    pub device_index: u32,
    pub network_card: u32,
    pub mac: datapath::MacAddr,
    pub primary_ip: Ipv4Addr,
    pub subnet: Ipv4Network,
    pub is_primary: bool,
    /// The ENI's own IPv6 address (its first `Ipv6Addresses`; `None` in an IPv4-only subnet).
    pub ipv6: Option<Ipv6Addr>,
    /// The subnet's IPv6 /64 (`None`: an IPv4-only subnet).
    pub subnet_ipv6: Option<Ipv6Network>,
    /// The /80 prefixes the VPC routes to this ENI (`AssignIpv6Addresses` with `Ipv6PrefixCount`).
    pub ipv6_prefixes: Vec<Ipv6Network>,
}

impl SimNic {
    /// The NIC of an attached ENI (`None` while detached or with an unparsable MAC).
    pub fn of(eni: &ec2_api::EniDescription) -> Option<SimNic> {
        Some(SimNic {
            device_index: eni.device_index?,
            network_card: eni.network_card_index,
            mac: datapath::MacAddr::parse(&eni.mac)?,
            primary_ip: eni.primary_ip,
            subnet: eni.subnet_cidr,
            is_primary: eni.device_index == Some(0) && eni.network_card_index == 0,
            ipv6: eni.ipv6_addresses.first().copied(),
            subnet_ipv6: eni.subnet_ipv6_cidr,
            ipv6_prefixes: eni.ipv6_prefixes.clone(),
        })
    }
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
    /// The VPC now routes `prefixes` (IPv6 /80s just assigned) to `nic`. The default does nothing (a hotplug
    /// without IPv6 routing). Prefixes already on the NIC when it is plugged or restored come in
    /// [`SimNic::ipv6_prefixes`].
    fn route_ipv6_prefixes(
        &self,
        nic: SimNic,
        prefixes: Vec<Ipv6Network>,
    ) -> BoxFuture<'_, Result<(), String>> {
        let _ = (nic, prefixes);
        Box::pin(async { Ok(()) })
    }
    /// After a restart from saved state: exactly these NICs are attached, with these addresses bound (and their
    /// [`SimNic::ipv6_prefixes`] routed). The default plugs and binds each; a hotplug that keeps state across
    /// restarts also removes what is stale.
    fn restore(&self, nics: Vec<(SimNic, Vec<Ipv4Addr>)>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            for (nic, ips) in nics {
                let mac = nic.mac;
                let prefixes = nic.ipv6_prefixes.clone();
                self.plug(nic.clone()).await?;
                if !prefixes.is_empty() {
                    self.route_ipv6_prefixes(nic, prefixes).await?;
                }
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
