//! The simulated VPC's wire: ENIs as real links in the node's namespace.
//!
//! ```text
//!   node netns (where ipamd runs)              fabric netns (anonymous, owned by ipamd)
//!   eth0  mac=ENI0 MAC, primary IP/prefix ─veth─ nic0 ┐
//!   eth1  mac=ENI1 MAC                      ─veth─ nic1 ├─ bridge "vpc"  <subnet gateway>/prefix
//!   ...                                                 ┘   neigh <secondary IP> lladdr <ENI MAC> (permanent)
//! ```
//!
//! Attaching an ENI creates `eth<device index>` in the node namespace with the ENI's MAC, its peer created
//! directly in the fabric and enslaved to the bridge. The bridge holds the subnet's gateway address (the VPC
//! router), so traffic a pod sends through its ENI's route table really leaves through that ENI and reaches the
//! "VPC". Secondary IPs get permanent neighbour entries in the fabric, standing in for EC2's binding of an address
//! to an ENI (the node does not answer ARP for pod addresses).
//!
//! The bridge also holds [`INTERNET_HOST`], an address outside every VPC CIDR standing in for the internet, and
//! the node's primary interface gets a default route to the VPC router (as DHCP gives a real node), so traffic
//! to non-VPC destinations leaves through the primary ENI and can be checked for SNAT.
//!
//! **Other instances of the VPC.** The fabric is the VPC router: it forwards (both families) and holds the router
//! of [`PEER_SUBNET`], a subnet of the VPC that no ENI of the simulated node uses. A tool puts a peer "instance"
//! there by creating a namespace of its own, a veth whose one end is on the bridge and whose other end has an
//! address of that subnet, and a default route via its router (`.1`); ipamd never touches it.
//!
//! **IPv6** ([`NetnsFabric::enable_ipv6`], with the VPC's IPv6 /56): the bridge holds the router (`::1/64`) of
//! every dual-stack subnet of a plugged ENI and of the VPC's peer subnet ([`peer_subnet_v6`], the /56's last
//! /64); the primary interface gets the ENI's IPv6 address and a default route to its subnet's router (DHCPv6
//! and router advertisements on a real node); each /80 prefix assigned to an ENI (`AssignIpv6Addresses`) is
//! routed to the ENI's IPv6 address, standing in for EC2's routing of a delegated prefix to its ENI:
//!
//! ```text
//!   fabric: <prefix>/80 via <ENI IPv6> dev vpc      node: default via <subnet6>::1 dev eth0
//! ```
//!
//! By default ([`NetnsFabric::new`]) the fabric namespace has no name: it exists while ipamd holds it. If ipamd
//! dies, the kernel removes the fabric and with it both ends of every ENI veth, so the simulated node never leaves
//! links behind on the machine. With [`NetnsFabric::in_netns`] (`ipamd run --sim-fabric-netns PATH`) the fabric
//! lives in a named namespace its owner (a test, a demo) created and removes: it outlives ipamd as a real
//! instance's NICs outlive a crashed daemon, and a restarted ipamd finds the bridge, its ENI links and their
//! bound addresses where they were. [`NicHotplug::restore`] then makes the links and bindings match the saved
//! EC2 state exactly: missing ones are plugged, ENI links of detached ENIs and bindings of released addresses
//! (left by a crash between EC2's change and the hotplug's) are removed.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use datapath::{subnet_gateway, MacAddr, Netlink, NetlinkError, Route6Spec, VethSpec};
use futures::future::BoxFuture;
use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::hotplug::{NicHotplug, SimNic};

const BRIDGE: &str = "vpc";

/// "The internet" as seen from the simulated VPC: a documentation address (TEST-NET-2) held by the fabric.
pub const INTERNET_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// A subnet of the default VPC (10.0.0.0/16) that no ENI of the simulated node uses: where other instances of
/// the VPC live (see the module docs). Its router is `.1`, on the fabric's bridge.
pub const PEER_SUBNET: Ipv4Network =
    match Ipv4Network::new_checked(Ipv4Addr::new(10, 0, 255, 0), 24) {
        Some(n) => n,
        None => panic!("a valid /24"),
    };

/// The IPv6 subnet of other instances of the VPC: the last /64 of the VPC's IPv6 CIDR (a /56 on EC2).
pub fn peer_subnet_v6(vpc: Ipv6Network) -> Ipv6Network {
    let host_bits = 128 - u32::from(vpc.prefix().min(64));
    let last = u128::from(vpc.network()) | ((u128::MAX >> (128 - host_bits)) & !(u128::MAX >> 64));
    Ipv6Network::new(Ipv6Addr::from(last), 64).unwrap_or(vpc)
}

/// The router of an IPv6 subnet: its first address after the network (`::1`), as [`subnet_gateway`] for IPv4.
pub fn subnet_gateway6(subnet: Ipv6Network) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet.network()).wrapping_add(1))
}

/// See the module docs.
pub struct NetnsFabric {
    node: Netlink,
    fabric: Netlink,
    fabric_ns: File,
    bridge_index: u32,
    mtu: u32,
}

impl std::fmt::Debug for NetnsFabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetnsFabric")
            .field("bridge_index", &self.bridge_index)
            .finish_non_exhaustive()
    }
}

impl NetnsFabric {
    /// Builds the fabric for `subnet` in a new anonymous namespace. The node side is the caller's current
    /// namespace.
    pub async fn new(subnet: Ipv4Network, mtu: u32) -> Result<NetnsFabric, NetlinkError> {
        NetnsFabric::build(datapath::new_anonymous_netns()?, subnet, mtu).await
    }

    /// Builds the fabric in the existing namespace at `path` (e.g. `/run/netns/NAME`), or finds it there from an
    /// earlier run.
    pub async fn in_netns(
        path: &Path,
        subnet: Ipv4Network,
        mtu: u32,
    ) -> Result<NetnsFabric, NetlinkError> {
        let ns = File::open(path).map_err(|source| NetlinkError::NetnsOpen {
            path: path.to_owned(),
            source,
        })?;
        NetnsFabric::build(ns, subnet, mtu).await
    }

    /// Builds the fabric in the named namespace `/run/netns/<name>`, created if missing and then kept: it
    /// outlives ipamd until someone deletes it (`ip netns del <name>`). `fresh` first deletes one left by an
    /// earlier simulated instance, so a new instance starts on an empty wire.
    pub async fn named(
        name: &str,
        fresh: bool,
        subnet: Ipv4Network,
        mtu: u32,
    ) -> Result<NetnsFabric, NetlinkError> {
        let path = Path::new(datapath::NETNS_RUN_DIR).join(name);
        if fresh && path.exists() {
            datapath::delete_named_netns(name)?;
        }
        if !path.exists() {
            datapath::create_named_netns(name)?;
        }
        NetnsFabric::in_netns(&path, subnet, mtu).await
    }

    async fn build(
        fabric_ns: File,
        subnet: Ipv4Network,
        mtu: u32,
    ) -> Result<NetnsFabric, NetlinkError> {
        let fabric = Netlink::connect_file(&fabric_ns)?;
        let node = Netlink::connect(None)?;
        // The VPC router forwards between its subnets (peers in PEER_SUBNET, the node's ENIs), and its links do
        // no duplicate address detection (a new link's link-local would be tentative for a second or two, the
        // router unable to resolve neighbours meanwhile). Set before the bridge exists, so it applies to every
        // link. Best effort: in a container (the DaemonSet's pod) /proc/sys is read-only, and nothing of the
        // node depends on it.
        let router = [
            ("net/ipv4/ip_forward".to_string(), "1"),
            ("net/ipv6/conf/all/forwarding".to_string(), "1"),
            ("net/ipv6/conf/default/accept_dad".to_string(), "0"),
            ("net/ipv6/conf/all/accept_dad".to_string(), "0"),
        ];
        if let Err(e) = datapath::sysctl::set(Some(&fabric_ns), &router) {
            tracing::warn!(error = %e, "the simulated VPC router does not forward between subnets");
        }
        let bridge = match fabric.link_by_name(BRIDGE).await? {
            Some(b) => b,
            None => {
                fabric.create_bridge(BRIDGE, mtu).await?;
                fabric
                    .link_by_name(BRIDGE)
                    .await?
                    .ok_or_else(|| NetlinkError::LinkNotFound(BRIDGE.into()))?
            }
        };
        fabric
            .add_address(bridge.index, subnet_gateway(subnet).into(), subnet.prefix())
            .await?;
        fabric
            .add_address(bridge.index, INTERNET_HOST.into(), 32)
            .await?;
        fabric
            .add_address(
                bridge.index,
                subnet_gateway(PEER_SUBNET).into(),
                PEER_SUBNET.prefix(),
            )
            .await?;
        fabric.set_up(bridge.index).await?;
        if let Some(lo) = fabric.link_by_name("lo").await? {
            fabric.set_up(lo.index).await?;
        }
        // The node "boots" like an EKS AMI: forwarding on (pods' traffic is routed through the node), loopback up.
        // Written only when off: a node booted by an earlier run already has it, and in a container (the
        // DaemonSet's pod) /proc/sys is read-only.
        let forwarding =
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
        if forwarding.trim() != "1" {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|source| {
                NetlinkError::NetnsOpen {
                    path: "/proc/sys/net/ipv4/ip_forward".into(),
                    source,
                }
            })?;
        }
        if let Some(lo) = node.link_by_name("lo").await? {
            node.set_up(lo.index).await?;
        }
        Ok(NetnsFabric {
            node,
            fabric,
            fabric_ns,
            bridge_index: bridge.index,
            mtu,
        })
    }

    /// Gives the VPC its IPv6 CIDR `vpc` (a /56): the router of its peer subnet ([`peer_subnet_v6`]) on the
    /// bridge. The routers of the ENIs' subnets come with their NICs.
    pub async fn enable_ipv6(&self, vpc: Ipv6Network) -> Result<(), NetlinkError> {
        let peers = peer_subnet_v6(vpc);
        self.fabric
            .add_address6_nodad(self.bridge_index, subnet_gateway6(peers), peers.prefix())
            .await
    }

    /// The route that stands for EC2's routing of `prefix` to the ENI whose IPv6 address is `via`.
    fn prefix_route(&self, prefix: Ipv6Network, via: Ipv6Addr) -> Route6Spec {
        Route6Spec {
            dst: prefix.network(),
            prefix_len: prefix.prefix(),
            gateway: Some(via),
            oif: Some(self.bridge_index),
            table: datapath::MAIN_TABLE,
            scope_link: false,
        }
    }

    async fn route_prefixes(
        &self,
        nic: &SimNic,
        prefixes: &[Ipv6Network],
    ) -> Result<(), NetlinkError> {
        let Some(via) = nic.ipv6 else {
            return Err(NetlinkError::Conflict(format!(
                "IPv6 prefixes for the ENI with MAC {} that has no IPv6 address",
                nic.mac
            )));
        };
        for p in prefixes {
            self.fabric
                .replace_route(&self.prefix_route(*p, via))
                .await?;
        }
        Ok(())
    }

    /// See [`NicHotplug::restore`].
    async fn restore_nics(&self, nics: &[(SimNic, Vec<Ipv4Addr>)]) -> Result<(), NetlinkError> {
        // /80 routes of prefixes no attached ENI holds any more (or held by another ENI now).
        let routed: Vec<Route6Spec> = nics
            .iter()
            .filter_map(|(n, _)| n.ipv6.map(|via| (n, via)))
            .flat_map(|(n, via)| n.ipv6_prefixes.iter().map(move |p| (*p, via)))
            .map(|(p, via)| self.prefix_route(p, via))
            .collect();
        // Without IPv6 in the fabric (a kernel booted without it) there is nothing to clean.
        for r in self
            .fabric
            .routes::<std::net::Ipv6Addr>(datapath::MAIN_TABLE)
            .await
            .unwrap_or_default()
        {
            if r.oif == Some(self.bridge_index)
                && r.gateway.is_some()
                && !routed.iter().any(|w| {
                    w.dst == r.dst && w.prefix_len == r.prefix_len && w.gateway == r.gateway
                })
            {
                self.fabric.delete_route(&r).await?;
            }
        }
        // ENI links in the node namespace that no attached ENI accounts for (or with another ENI's MAC).
        let wanted: Vec<(String, MacAddr)> =
            nics.iter().map(|(n, _)| (link_names(n).0, n.mac)).collect();
        for link in self.node.links().await? {
            if !is_eni_link_name(&link.name) {
                continue;
            }
            let ok = wanted
                .iter()
                .any(|(name, mac)| *name == link.name && link.mac == Some(*mac));
            if !ok {
                tracing::info!(link = %link.name, "removing the link of an ENI no longer attached");
                self.node.delete_link_by_name(&link.name).await?;
            }
        }
        for (nic, _) in nics {
            self.plug_nic(nic).await?;
        }
        // Bindings: exactly the attached ENIs' addresses.
        let bound: BTreeSet<Ipv4Addr> = nics
            .iter()
            .flat_map(|(_, ips)| ips.iter().copied())
            .collect();
        for (index, ip, _) in self.fabric.permanent_neighbours().await? {
            if index == self.bridge_index && !bound.contains(&ip) {
                self.fabric.delete_neighbour(self.bridge_index, ip).await?;
            }
        }
        for (nic, ips) in nics {
            self.bind(nic.mac, ips, true).await?;
        }
        Ok(())
    }

    /// Plugs a NIC, or completes one a crash left half plugged: every step is idempotent, so a NIC found in
    /// the node namespace (the fabric outlived ipamd) is checked and finished rather than recreated.
    async fn plug_nic(&self, nic: &SimNic) -> Result<(), NetlinkError> {
        let (name, peer) = link_names(nic);
        let mut exists = false;
        if let Some(existing) = self.node.link_by_name(&name).await? {
            if existing.mac != Some(nic.mac) {
                return Err(NetlinkError::Conflict(format!(
                    "plug ENI as {name}: a link of that name already exists in the node namespace; \
                     the simulator needs a namespace of its own"
                )));
            }
            exists = true;
            if self.fabric.link_by_name(&peer).await?.is_none() {
                // Its other end is not in this fabric (another fabric namespace than before): start over.
                self.node.delete_link_by_name(&name).await?;
                exists = false;
            }
        }
        if !exists {
            self.node
                .create_veth(&VethSpec {
                    name: &name,
                    mac: Some(nic.mac),
                    mtu: self.mtu,
                    peer_name: &peer,
                    peer_mac: None,
                    peer_netns: Some(&self.fabric_ns),
                })
                .await?;
        }
        let p = self
            .fabric
            .link_by_name(&peer)
            .await?
            .ok_or_else(|| NetlinkError::LinkNotFound(peer.clone()))?;
        self.fabric
            .set_controller_up(p.index, self.bridge_index)
            .await?;
        if nic.is_primary {
            // The instance configures its primary interface itself at boot (DHCP on a real node).
            let link = self
                .node
                .link_by_name(&name)
                .await?
                .ok_or_else(|| NetlinkError::LinkNotFound(name.clone()))?;
            self.node
                .add_address(link.index, nic.primary_ip.into(), nic.subnet.prefix())
                .await?;
            self.node.set_up(link.index).await?;
            self.node
                .replace_route(&datapath::RouteSpec {
                    dst: Ipv4Addr::UNSPECIFIED,
                    prefix_len: 0,
                    gateway: Some(subnet_gateway(nic.subnet)),
                    oif: Some(link.index),
                    table: datapath::MAIN_TABLE,
                    scope_link: false,
                })
                .await?;
            if let Err(e) = self.plug_primary_ipv6(nic, link.index).await {
                // A node namespace without IPv6 (a container, a kernel booted without it) is still an IPv4 node.
                tracing::warn!(error = %e, "the simulated node's primary interface has no IPv6");
            }
        } else {
            // ENIs of other subnets need their router on the VPC side too.
            self.fabric
                .add_address(
                    self.bridge_index,
                    subnet_gateway(nic.subnet).into(),
                    nic.subnet.prefix(),
                )
                .await?;
        }
        if let Err(e) = self.plug_fabric_ipv6(nic).await {
            tracing::warn!(error = %e, "the simulated VPC does not route IPv6 to this ENI");
        }
        Ok(())
    }

    /// The primary interface's IPv6 as DHCPv6 and router advertisements give it: the ENI's address and a default
    /// route to its subnet's router.
    async fn plug_primary_ipv6(&self, nic: &SimNic, index: u32) -> Result<(), NetlinkError> {
        let (Some(ip), Some(subnet6)) = (nic.ipv6, nic.subnet_ipv6) else {
            return Ok(());
        };
        self.node
            .add_address6_nodad(index, ip, subnet6.prefix())
            .await?;
        self.node
            .replace_route(&Route6Spec {
                dst: Ipv6Addr::UNSPECIFIED,
                prefix_len: 0,
                gateway: Some(subnet_gateway6(subnet6)),
                oif: Some(index),
                table: datapath::MAIN_TABLE,
                scope_link: false,
            })
            .await
    }

    /// The VPC side of an ENI's IPv6: its subnet's router on the bridge, its /80 prefixes routed to it.
    async fn plug_fabric_ipv6(&self, nic: &SimNic) -> Result<(), NetlinkError> {
        if let Some(subnet6) = nic.subnet_ipv6 {
            self.fabric
                .add_address6_nodad(
                    self.bridge_index,
                    subnet_gateway6(subnet6),
                    subnet6.prefix(),
                )
                .await?;
        }
        if !nic.ipv6_prefixes.is_empty() {
            self.route_prefixes(nic, &nic.ipv6_prefixes).await?;
        }
        Ok(())
    }

    async fn unplug_nic(&self, nic: &SimNic) -> Result<(), NetlinkError> {
        if let Some(via) = nic.ipv6 {
            for p in &nic.ipv6_prefixes {
                if let Err(e) = self.fabric.delete_route(&self.prefix_route(*p, via)).await {
                    tracing::warn!(error = %e, prefix = %p, "the simulated VPC keeps a route of a detached ENI");
                }
            }
        }
        self.node
            .delete_link_by_name(&link_names(nic).0)
            .await
            .map(|_| ())
    }

    async fn bind(&self, mac: MacAddr, ips: &[Ipv4Addr], bound: bool) -> Result<(), NetlinkError> {
        for ip in ips {
            if bound {
                self.fabric
                    .replace_permanent_neighbour(self.bridge_index, *ip, mac)
                    .await?;
            } else {
                self.fabric.delete_neighbour(self.bridge_index, *ip).await?;
            }
        }
        Ok(())
    }
}

/// `eth<N>` or `nc<C>eth<N>`: the names [`link_names`] gives ENI links in the node namespace.
fn is_eni_link_name(name: &str) -> bool {
    let rest = match name.strip_prefix("nc") {
        Some(r) => match r.find("eth") {
            Some(i) if i > 0 && r[..i].bytes().all(|b| b.is_ascii_digit()) => &r[i + 3..],
            _ => return false,
        },
        None => match name.strip_prefix("eth") {
            Some(r) => r,
            None => return false,
        },
    };
    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
}

/// `eth<device>` on network card 0 (as the kernel names them on a Nitro instance), `nc<card>eth<device>` on
/// other cards; the fabric end is `nic<card>-<device>`.
fn link_names(nic: &SimNic) -> (String, String) {
    let name = if nic.network_card == 0 {
        format!("eth{}", nic.device_index)
    } else {
        format!("nc{}eth{}", nic.network_card, nic.device_index)
    };
    (
        name,
        format!("nic{}-{}", nic.network_card, nic.device_index),
    )
}

impl NicHotplug for NetnsFabric {
    fn plug(&self, nic: SimNic) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.plug_nic(&nic).await.map_err(|e| e.to_string()) })
    }

    fn unplug(&self, nic: SimNic) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.unplug_nic(&nic).await.map_err(|e| e.to_string()) })
    }

    fn bind_ips(
        &self,
        mac: MacAddr,
        ips: Vec<Ipv4Addr>,
        bound: bool,
    ) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.bind(mac, &ips, bound).await.map_err(|e| e.to_string()) })
    }

    fn route_ipv6_prefixes(
        &self,
        nic: SimNic,
        prefixes: Vec<Ipv6Network>,
    ) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.route_prefixes(&nic, &prefixes)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn restore(&self, nics: Vec<(SimNic, Vec<Ipv4Addr>)>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.restore_nics(&nics).await.map_err(|e| e.to_string()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_subnet_is_the_last_64_of_the_vpc_and_routers_are_the_first_address() {
        let vpc: Ipv6Network = "2600:1f14:ab:c800::/56".parse().expect("cidr");
        let peers = peer_subnet_v6(vpc);
        assert_eq!(peers.to_string(), "2600:1f14:ab:c8ff::/64");
        assert_eq!(subnet_gateway6(peers).to_string(), "2600:1f14:ab:c8ff::1");
        let node: Ipv6Network = "2600:1f14:ab:c800::/64".parse().expect("cidr");
        assert_ne!(peer_subnet_v6(vpc), node);
        assert_eq!(
            peer_subnet_v6("2001:db8::/64".parse().expect("cidr")).to_string(),
            "2001:db8::/64"
        );
        assert_eq!(PEER_SUBNET.to_string(), "10.0.255.0/24");
    }

    #[test]
    fn eni_link_names_are_recognised() {
        for n in ["eth0", "eth12", "nc1eth0", "nc12eth3"] {
            assert!(is_eni_link_name(n), "{n}");
        }
        for n in [
            "eth",
            "ethx",
            "eni1a2b3c",
            "lo",
            "nceth0",
            "nc1eth",
            "vpc",
            "xeth0",
        ] {
            assert!(!is_eni_link_name(n), "{n}");
        }
    }
}
