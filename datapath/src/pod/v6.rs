//! A pod's network in IPv6 (`ENABLE_IPv6=true`), as the anchor builds it, with duplicate address detection off
//! where it would only delay the pod.
//!
//! ```text
//!  pod netns                                     host (node) netns
//!  eth0  <podIP>/128 (nodad)                     eniXXXXXXXXXXX (random local MAC, only its link-local)
//!   fe80::1/128 dev eth0 scope link               <podIP>/128 dev eniXXX scope link        (main)
//!   default via fe80::1 dev eth0                  rule 512:  to <podIP>/128 lookup main     (IPv6)
//!   neigh fe80::1 lladdr <host MAC> PERMANENT     rule 1536: from <podIP>/128 lookup <ENI table> (secondary ENIs)
//!  sysctls: eth0, lo disable_ipv6=0;              sysctls on the veth before up: accept_ra=0,
//!           eth0 accept_dad=0                     accept_redirects=1, forwarding=0, accept_dad=0
//! ```
//!
//! Like the anchor, the host veth gets no address of its own: the pod reaches `fe80::1` through the permanent
//! neighbour entry (static ND), and the host reaches the pod by its /128 route and ordinary neighbour discovery
//! on the veth. The node must forward IPv6 (`net/ipv6/conf/all/forwarding=1`, which the anchor's init container
//! and `ipamd` set in IPv6 mode).
//!
//! Where the anchor polls up to 10 s for the pod address to leave its tentative state, the address here is added
//! with `IFA_F_NODAD` and `accept_dad=0` is set on both veth ends before they go up, so the pod address and both
//! link-local addresses are usable the moment ADD returns. DAD protects against a duplicate on a shared link; a
//! veth has exactly two ends, both ours.
//!
//! Teardown is the IPv4 side's, generic over the family ([`super::teardown_family`],
//! [`super::teardown_owned_family`]): every step attempted, every failure returned, and a DEL removes only what
//! the kernel ties to its container.

use std::net::Ipv6Addr;
use std::path::Path;

use crate::sysctl::{self, ipv6_conf};
use crate::{Netlink, NetlinkError, Route6Spec, Rule6Spec};

use super::{PodLinks, PodVeth};

/// The pod-side gateway for the first interface (the anchor's value).
pub const POD_GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// What to build for one IPv6 pod interface.
#[derive(Debug, Clone)]
pub struct PodNetwork6<'a> {
    /// Host-side veth name (see [`crate::host_veth_name`]).
    pub host_veth: &'a str,
    /// Interface name inside the pod (CNI_IFNAME).
    pub container_ifname: &'a str,
    /// The pod's address (from the node's /80 prefix).
    pub ip: Ipv6Addr,
    /// Route table of the ENI that owns `ip` ([`MAIN_TABLE`] for the primary ENI, the only one in IPv6 mode).
    pub table: u32,
    /// MTU of both veth ends.
    pub mtu: u32,
}

/// The host rules of an IPv6 pod address: `to ip/128 lookup main` (512) and, off the primary ENI,
/// `from ip/128 lookup table` (1536) ([`super::pod_rules`]).
pub fn pod_rules6(ip: Ipv6Addr, table: u32) -> Vec<Rule6Spec> {
    super::pod_rules(ip, table)
}

/// True for the 512/1536 rules that [`setup6`] installs for `ip` ([`super::is_pod_rule`]).
pub fn is_pod_rule6(rule: &Rule6Spec, ip: Ipv6Addr) -> bool {
    super::is_pod_rule(rule, ip)
}

/// The host route to a pod: `ip/128 dev <host veth> scope link` in main ([`super::host_route`]).
pub fn host_route6(ip: Ipv6Addr, host_veth_index: Option<u32>) -> Route6Spec {
    super::host_route(ip, host_veth_index)
}

/// The IPv6 settings of a host veth, written before it goes up: the anchor's three, plus `accept_dad=0` so its
/// link-local address (the source of its neighbour solicitations to the pod) is usable at once.
pub fn host_veth_settings(name: &str) -> Vec<sysctl::Setting> {
    vec![
        (ipv6_conf(name, "accept_ra"), "0"),
        (ipv6_conf(name, "accept_redirects"), "1"),
        (ipv6_conf(name, "forwarding"), "0"),
        (ipv6_conf(name, "accept_dad"), "0"),
    ]
}

/// The IPv6 settings inside the pod, written before its interface goes up: IPv6 on (a runtime or the node's
/// defaults may have turned it off) on the interface and on `lo`, and no duplicate address detection on the
/// interface.
pub fn pod_settings(ifname: &str) -> Vec<sysctl::Setting> {
    vec![
        (ipv6_conf(ifname, "disable_ipv6"), "0"),
        (ipv6_conf("lo", "disable_ipv6"), "0"),
        (ipv6_conf(ifname, "accept_dad"), "0"),
    ]
}

/// Phase two of an IPv6 pod's network, once its address is known, on the veth pair of
/// [`super::create_pod_veth`] (phase one, shared with IPv4): the pod's settings while its interface is still
/// down, then the interface up with its /128 (no DAD), the gateway route, the default route and the static
/// gateway neighbour; the host end's settings, then up with the /128 route and the rules. Each side's requests
/// are sent at once (the kernel answers them in order). On error the caller runs [`teardown6`].
pub async fn finish6(
    host: &Netlink,
    veth: &PodVeth,
    spec: &PodNetwork6<'_>,
) -> Result<PodLinks, NetlinkError> {
    // Pod side: settings first (they exist as soon as the link does), then up, address, routes, static ND.
    sysctl::set(Some(&veth.netns), &pod_settings(spec.container_ifname))?;
    // Host side: all four settings before the link goes up (phase one wrote the IPv4 path's three).
    sysctl::set(None, &host_veth_settings(spec.host_veth))?;
    let address = veth.pod.add_address6_nodad(veth.eth.index, spec.ip, 128);
    let route = host_route6(spec.ip, Some(veth.host.index));
    let rules = pod_rules6(spec.ip, spec.table);
    super::program(host, veth, address, POD_GATEWAY6, route, rules).await
}

/// Builds an IPv6 pod's network ([`super::create_pod_veth`], then [`finish6`]). On error the caller runs
/// [`teardown6`] (safe on a partial setup).
pub async fn setup6(
    host: &Netlink,
    netns_path: &Path,
    spec: &PodNetwork6<'_>,
) -> Result<PodLinks, NetlinkError> {
    let veth = super::create_pod_veth(
        host,
        netns_path,
        spec.host_veth,
        spec.container_ifname,
        spec.mtu,
    )
    .await?;
    finish6(host, &veth, spec).await
}

/// What to remove for an IPv6 pod (see [`super::PodTeardown`]).
pub type PodTeardown6<'a> = super::PodTeardown<'a, Ipv6Addr>;

/// Removes everything [`setup6`] made: rules 512/1536 of the address, its host /128 route, the veth pair
/// ([`super::teardown_family`]). Attempts every step and returns every failure (empty = clean).
pub async fn teardown6(host: &Netlink, what: &PodTeardown6<'_>) -> Vec<NetlinkError> {
    super::teardown_family(host, what).await
}

/// What an IPv6 DEL may remove (see [`super::OwnedTeardown`]).
pub type OwnedTeardown6<'a> = super::OwnedTeardown<'a, Ipv6Addr>;

/// [`super::teardown_owned_family`] for an IPv6 address: the route only through the tied veth, the rules only
/// when no route to the address is left, the pod end only when it carries the address or is the tied veth's
/// peer.
pub async fn teardown_owned6(host: &Netlink, what: &OwnedTeardown6<'_>) -> Vec<NetlinkError> {
    super::teardown_owned_family(host, what).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAIN_TABLE;

    #[test]
    fn gateway_is_the_anchors() {
        assert_eq!(POD_GATEWAY6.to_string(), "fe80::1");
    }

    #[test]
    fn primary_eni_pod_gets_only_the_to_rule() {
        let ip: Ipv6Addr = "2001:db8:0:1:2::5".parse().expect("ip");
        let rules = pod_rules6(ip, MAIN_TABLE);
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].priority, 512);
        assert_eq!(rules[0].dst, Some((ip, 128)));
        assert!(is_pod_rule6(&rules[0], ip));
        assert!(!is_pod_rule6(
            &rules[0],
            "2001:db8:0:1:2::6".parse().expect("ip")
        ));
        let both = pod_rules6(ip, 3);
        assert_eq!(both[1].priority, 1536);
        assert_eq!(both[1].src, Some((ip, 128)));
        assert_eq!(both[1].table, 3);
    }

    #[test]
    fn dad_is_off_on_both_ends_and_ipv6_on_in_the_pod() {
        let host = host_veth_settings("eniabc");
        assert!(host.contains(&("net/ipv6/conf/eniabc/accept_dad".into(), "0")));
        assert!(host.contains(&("net/ipv6/conf/eniabc/accept_ra".into(), "0")));
        let pod = pod_settings("eth0");
        assert!(pod.contains(&("net/ipv6/conf/eth0/disable_ipv6".into(), "0")));
        assert!(pod.contains(&("net/ipv6/conf/lo/disable_ipv6".into(), "0")));
        assert!(pod.contains(&("net/ipv6/conf/eth0/accept_dad".into(), "0")));
    }
}
