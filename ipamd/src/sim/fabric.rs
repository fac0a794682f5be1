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
//! The fabric namespace has no name: it exists while ipamd holds it. If ipamd dies, the kernel removes the fabric
//! and with it both ends of every ENI veth, so the simulated node never leaves links behind on the machine.

use std::fs::File;
use std::net::Ipv4Addr;

use datapath::{MacAddr, Netlink, NetlinkError, VethSpec};
use futures::future::BoxFuture;
use ipnetwork::Ipv4Network;

use super::{NicHotplug, SimNic};

const BRIDGE: &str = "vpc";

/// "The internet" as seen from the simulated VPC: a documentation address (TEST-NET-2) held by the fabric.
pub const INTERNET_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

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

/// The subnet's router address: network + 1, as in a VPC.
pub fn subnet_gateway(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1))
}

impl NetnsFabric {
    /// Builds the fabric for `subnet`. The node side is the caller's current namespace.
    pub async fn new(subnet: Ipv4Network, mtu: u32) -> Result<NetnsFabric, NetlinkError> {
        let fabric_ns = datapath::new_anonymous_netns()?;
        let fabric = Netlink::connect_file(&fabric_ns)?;
        let node = Netlink::connect(None)?;
        fabric.create_bridge(BRIDGE, mtu).await?;
        let bridge = fabric
            .link_by_name(BRIDGE)
            .await?
            .ok_or_else(|| NetlinkError::LinkNotFound(BRIDGE.into()))?;
        fabric
            .add_address(bridge.index, subnet_gateway(subnet).into(), subnet.prefix())
            .await?;
        fabric
            .add_address(bridge.index, INTERNET_HOST.into(), 32)
            .await?;
        fabric.set_up(bridge.index).await?;
        if let Some(lo) = fabric.link_by_name("lo").await? {
            fabric.set_up(lo.index).await?;
        }
        // The node "boots" like an EKS AMI: forwarding on (pods' traffic is routed through the node), loopback up.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|source| {
            NetlinkError::NetnsOpen {
                path: "/proc/sys/net/ipv4/ip_forward".into(),
                source,
            }
        })?;
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

    async fn plug_nic(&self, nic: &SimNic) -> Result<(), NetlinkError> {
        let (name, peer) = link_names(nic);
        if let Some(existing) = self.node.link_by_name(&name).await? {
            if existing.mac != Some(nic.mac) {
                return Err(NetlinkError::Conflict(format!(
                    "plug ENI as {name}: a link of that name already exists in the node namespace; \
                     the simulator needs a namespace of its own"
                )));
            }
            return Ok(());
        }
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
        Ok(())
    }

    async fn unplug_nic(&self, nic: &SimNic) -> Result<(), NetlinkError> {
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
}
