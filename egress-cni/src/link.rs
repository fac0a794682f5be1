//! The egress interface: a second veth pair per pod, `v4if0` (IPv6 pods) or `v6if0` (IPv4 pods), in the same
//! routed style as the pod's own interface.
//!
//! ```text
//!  IPv6 pod, IPv4 way out                           host
//!   v4if0 169.254.172.N/32                           vethXXXXXXXXXXX  169.254.172.1/32 scope link
//!    169.254.172.1 dev v4if0 scope link               169.254.172.N/32 dev vethXXX scope link
//!    default via 169.254.172.1 dev v4if0              net.ipv4.ip_forward=1
//!    neigh 169.254.172.1 lladdr <host MAC> PERMANENT  nat: -s 169.254.172.N -j CNI-E4-… (SNAT to nodeIP)
//!
//!  IPv4 pod, IPv6 way out (ENABLE_V6_EGRESS)
//!   eth0 disable_ipv6=1 (as the anchor: IPv6 only through v6if0)
//!   v6if0 fd00::ac:N/128 (nodad)                     vethXXXXXXXXXXX (link-local only, accept_dad=0)
//!    fe80::1 dev v6if0, default via fe80::1           fd00::ac:N/128 dev vethXXX
//!    neigh fe80::1 lladdr <host MAC> PERMANENT        nat: -s fd00::ac:N -j CNI-E6-… (SNAT66 to nodeIP)
//! ```
//!
//! The anchor gives the IPv4 interface the whole /22 and reshapes the connected route, and the IPv6 one a /118
//! routed to the host veth's link-local address after a DAD wait; here both get a host address and a static
//! neighbour entry for their gateway, so there is nothing to resolve and nothing to wait for. The host end is
//! named from the attachment (`veth` + 11 hex of SHA-1 of container ID and interface), so DEL and GC find it
//! without the pod's namespace.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use datapath::pod::v6::{host_veth_settings, POD_GATEWAY6};
use datapath::sysctl::{self, ipv6_conf};
use datapath::{
    random_mac, MacAddr, Netlink, NetlinkError, Route6Spec, RouteSpec, VethSpec, MAIN_TABLE,
};
use sha1::{Digest, Sha1};

/// The host end's name for an attachment: `veth` + 11 hex of SHA-1("<container ID>/<CNI_IFNAME>/<egress if>").
pub fn host_veth_name(container_id: &str, ifname: &str, egress_if: &str) -> String {
    let digest = Sha1::digest(format!("{container_id}/{ifname}/{egress_if}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("veth{}", &hex[..11])
}

/// What to build.
#[derive(Debug, Clone)]
pub struct EgressLink<'a> {
    pub host_veth: &'a str,
    /// `v4if0` or `v6if0`.
    pub egress_if: &'a str,
    /// The pod's own interface (CNI_IFNAME): IPv6 is turned off on it for IPv6 egress, as the anchor.
    pub pod_if: &'a str,
    pub ip: IpAddr,
    /// The range's gateway (IPv4 egress: carried by the host end).
    pub gateway: IpAddr,
    pub mtu: u32,
}

/// What was built, for the result.
#[derive(Debug, Clone)]
pub struct Built {
    pub host_mac: MacAddr,
    pub pod_mac: Option<MacAddr>,
}

/// Builds the egress interface (see the module docs). On error the caller runs [`teardown`].
pub async fn setup(
    host: &Netlink,
    netns_path: &Path,
    spec: &EgressLink<'_>,
) -> Result<Built, NetlinkError> {
    let netns = File::open(netns_path).map_err(|source| NetlinkError::NetnsOpen {
        path: netns_path.to_owned(),
        source,
    })?;
    let pod = Netlink::connect_file(&netns)?;
    host.delete_link_by_name(spec.host_veth).await?;
    let host_mac = random_mac();
    host.create_veth(&VethSpec {
        name: spec.host_veth,
        mac: Some(host_mac),
        mtu: spec.mtu,
        peer_name: spec.egress_if,
        peer_mac: None,
        peer_netns: Some(&netns),
    })
    .await?;
    if spec.ip.is_ipv6() {
        sysctl::set(
            Some(&netns),
            &[
                (ipv6_conf(spec.pod_if, "disable_ipv6"), "1"),
                (ipv6_conf(spec.egress_if, "disable_ipv6"), "0"),
                (ipv6_conf("lo", "disable_ipv6"), "0"),
                (ipv6_conf(spec.egress_if, "accept_dad"), "0"),
            ],
        )?;
    }
    let eth = pod
        .link_by_name(spec.egress_if)
        .await?
        .ok_or_else(|| NetlinkError::LinkNotFound(spec.egress_if.to_string()))?;
    pod.set_up(eth.index).await?;
    let veth = host
        .link_by_name(spec.host_veth)
        .await?
        .ok_or_else(|| NetlinkError::LinkNotFound(spec.host_veth.to_string()))?;
    match (spec.ip, spec.gateway) {
        (IpAddr::V4(ip), IpAddr::V4(gw)) => {
            pod.add_address(eth.index, IpAddr::V4(ip), 32).await?;
            pod.replace_route(&link_route4(gw, eth.index)).await?;
            pod.replace_route(&RouteSpec {
                dst: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                gateway: Some(gw),
                oif: Some(eth.index),
                table: MAIN_TABLE,
                scope_link: false,
            })
            .await?;
            pod.replace_permanent_neighbour(eth.index, gw, host_mac)
                .await?;
            host.set_up(veth.index).await?;
            host.add_address_link_scope(veth.index, IpAddr::V4(gw), 32)
                .await?;
            host.replace_route(&link_route4(ip, veth.index)).await?;
            sysctl::set(None, &[("net/ipv4/ip_forward".into(), "1")])?;
        }
        (IpAddr::V6(ip), _) => {
            pod.add_address6_nodad(eth.index, ip, 128).await?;
            pod.replace_route(&link_route6(POD_GATEWAY6, eth.index))
                .await?;
            pod.replace_route(&Route6Spec {
                dst: Ipv6Addr::UNSPECIFIED,
                prefix_len: 0,
                gateway: Some(POD_GATEWAY6),
                oif: Some(eth.index),
                table: MAIN_TABLE,
                scope_link: false,
            })
            .await?;
            pod.replace_permanent_neighbour(eth.index, POD_GATEWAY6, host_mac)
                .await?;
            sysctl::set(None, &host_veth_settings(spec.host_veth))?;
            host.set_up(veth.index).await?;
            host.replace_route(&link_route6(ip, veth.index)).await?;
        }
        (IpAddr::V4(_), IpAddr::V6(_)) => {
            return Err(NetlinkError::Conflict(
                "an IPv4 egress address with an IPv6 gateway".into(),
            ))
        }
    }
    Ok(Built {
        host_mac,
        pod_mac: eth.mac,
    })
}

fn link_route4(dst: Ipv4Addr, oif: u32) -> RouteSpec {
    RouteSpec {
        dst,
        prefix_len: 32,
        gateway: None,
        oif: Some(oif),
        table: MAIN_TABLE,
        scope_link: true,
    }
}

fn link_route6(dst: Ipv6Addr, oif: u32) -> Route6Spec {
    Route6Spec {
        dst,
        prefix_len: 128,
        gateway: None,
        oif: Some(oif),
        table: MAIN_TABLE,
        scope_link: true,
    }
}

/// Removes the egress pair (either end removes both) and the host route to `ip` (which goes with the link, but
/// may outlive a half-built ADD). Missing things are fine; returns every failure.
pub async fn teardown(
    host: &Netlink,
    netns_path: Option<&Path>,
    egress_if: &str,
    host_veth: &str,
    ip: Option<IpAddr>,
) -> Vec<NetlinkError> {
    let mut errors = Vec::new();
    if let Some(path) = netns_path.filter(|p| p.exists()) {
        match Netlink::connect(Some(path)) {
            Ok(pod) => {
                if let Err(e) = pod.delete_link_by_name(egress_if).await {
                    errors.push(e);
                }
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => errors.push(e),
        }
    }
    if let Err(e) = host.delete_link_by_name(host_veth).await {
        errors.push(e);
    }
    let gone = match ip {
        Some(IpAddr::V4(ip)) => {
            host.delete_route(&RouteSpec {
                oif: None,
                ..link_route4(ip, 0)
            })
            .await
        }
        Some(IpAddr::V6(ip)) => {
            host.delete_route(&Route6Spec {
                oif: None,
                ..link_route6(ip, 0)
            })
            .await
        }
        None => Ok(()),
    };
    if let Err(e) = gone {
        errors.push(e);
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_per_attachment_and_fit_ifnamsiz() {
        let a = host_veth_name("c1", "eth0", "v4if0");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
        assert_ne!(a, host_veth_name("c2", "eth0", "v4if0"));
        assert_eq!(a, host_veth_name("c1", "eth0", "v4if0"));
    }
}
