//! The pod's address family, and the one place the plugin picks the IPv4 or the IPv6 plumbing.
//!
//! ipamd's reply says which: in IPv4 mode `IPAllocationMetadata.IPv4Addr` is set and `IPv6Addr` empty, in IPv6
//! mode (`ENABLE_IPv6=true`, the anchor's contract) the other way round. Both set would be a dual-stack pod,
//! which neither the anchor (#3615) nor this plugin builds yet: refused rather than half-built. ADD, DEL, CHECK
//! and GC ask this module and call [`datapath::pod`] (IPv4) or [`datapath::pod::v6`] (IPv6); CHECK and GC are
//! written once over [`PodFamily`] (the address type: [`Ipv4Addr`] or [`Ipv6Addr`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use aws_cni_proto::{Allocation, FailureReason, IpAllocationMetadata};
use datapath::pod::v6::{PodNetwork6, PodTeardown6};
use datapath::pod::{self, PodLinks, PodNetwork, PodTeardown};
use datapath::{IpFamily, Netlink, NetlinkError};

use crate::error::PluginError;

/// The address ipamd assigned, from an Add/DelNetwork reply's metadata.
pub fn reply_address(meta: &IpAllocationMetadata) -> Result<IpAddr, PluginError> {
    let bad = |what: &str, s: &str| PluginError::NoIp {
        reason: FailureReason::Internal,
        message: format!("ipamd returned an invalid {what} address {s:?}"),
    };
    match (meta.i_pv4_addr.is_empty(), meta.i_pv6_addr.is_empty()) {
        (false, true) => meta
            .i_pv4_addr
            .parse::<std::net::Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| bad("IPv4", &meta.i_pv4_addr)),
        (true, false) => meta
            .i_pv6_addr
            .parse::<std::net::Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| bad("IPv6", &meta.i_pv6_addr)),
        (false, false) => Err(PluginError::NoIp {
            reason: FailureReason::Internal,
            message: format!(
                "ipamd returned both {} and {} (a dual-stack pod, which this plugin does not build)",
                meta.i_pv4_addr, meta.i_pv6_addr
            ),
        }),
        (true, true) => Err(PluginError::NoIp {
            reason: FailureReason::Internal,
            message: "ipamd reported success but returned no address".into(),
        }),
    }
}

/// The address a DelNetwork reply names, either family; `None` when it names none.
pub fn released_address(meta: Option<&IpAllocationMetadata>) -> Option<IpAddr> {
    let meta = meta?;
    meta.i_pv4_addr
        .parse()
        .ok()
        .or_else(|| meta.i_pv6_addr.parse().ok())
}

/// The address of one of ipamd's allocations (`rpc.IpamdControl`), either family, so that CHECK and GC see IPv6
/// pods as held.
///
/// `IPv4Addr` (tag 4), else `IPv6Addr` (tag 10): ipamd's IPv6 mode leaves the IPv4 field empty.
pub fn allocation_address(a: &Allocation) -> Option<IpAddr> {
    a.i_pv4_addr
        .parse()
        .ok()
        .or_else(|| a.i_pv6_addr.parse().ok())
}

/// A pod's address family as datapath builds it: the netlink family plus the pod's gateway.
pub trait PodFamily: IpFamily {
    /// The gateway the pod's default route goes through (reached by a permanent neighbour entry).
    const POD_GATEWAY: Self;
}

impl PodFamily for Ipv4Addr {
    const POD_GATEWAY: Self = pod::POD_GATEWAY;
}

impl PodFamily for Ipv6Addr {
    const POD_GATEWAY: Self = pod::v6::POD_GATEWAY6;
}

/// The prefix length of a pod address (/32 or /128).
pub fn host_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// What to build, whatever the family.
#[derive(Debug, Clone)]
pub struct Plumbing<'a> {
    pub host_veth: &'a str,
    pub container_ifname: &'a str,
    pub ip: IpAddr,
    pub table: u32,
    pub mtu: u32,
}

/// Finishes, in `ip`'s family, the pod network whose veth pair [`datapath::pod::create_pod_veth`] built (the
/// second phase of `datapath::pod::setup`).
pub async fn finish(
    host: &Netlink,
    veth: &pod::PodVeth,
    p: &Plumbing<'_>,
) -> Result<PodLinks, NetlinkError> {
    match p.ip {
        IpAddr::V4(ip) => {
            pod::finish(
                host,
                veth,
                &PodNetwork {
                    host_veth: p.host_veth,
                    container_ifname: p.container_ifname,
                    ip,
                    table: p.table,
                    mtu: p.mtu,
                },
            )
            .await
        }
        IpAddr::V6(ip) => {
            pod::v6::finish6(
                host,
                veth,
                &PodNetwork6 {
                    host_veth: p.host_veth,
                    container_ifname: p.container_ifname,
                    ip,
                    table: p.table,
                    mtu: p.mtu,
                },
            )
            .await
        }
    }
}

/// Removes what [`setup`] built (safe on a partial setup); returns every failure.
pub async fn teardown(
    host: &Netlink,
    host_veth: Option<&str>,
    netns: Option<&Path>,
    ifname: Option<&str>,
    ip: Option<IpAddr>,
) -> Vec<NetlinkError> {
    match ip {
        Some(IpAddr::V6(ip)) => {
            pod::v6::teardown6(
                host,
                &PodTeardown6 {
                    host_veth,
                    netns_path: netns,
                    container_ifname: ifname,
                    ip: Some(ip),
                },
            )
            .await
        }
        ip => {
            pod::teardown(
                host,
                &PodTeardown {
                    host_veth,
                    netns_path: netns,
                    container_ifname: ifname,
                    ip: ip.and_then(|ip| match ip {
                        IpAddr::V4(ip) => Some(ip),
                        IpAddr::V6(_) => None,
                    }),
                },
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(v4: &str, v6: &str) -> IpAllocationMetadata {
        IpAllocationMetadata {
            i_pv4_addr: v4.into(),
            i_pv6_addr: v6.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_reply_picks_the_family() {
        assert_eq!(
            reply_address(&meta("10.0.0.5", "")).expect("v4"),
            "10.0.0.5".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(
            reply_address(&meta("", "2001:db8::5")).expect("v6"),
            "2001:db8::5".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn dual_stack_empty_and_garbage_are_refused_by_name() {
        let e = reply_address(&meta("10.0.0.5", "2001:db8::5")).expect_err("dual");
        assert!(e.to_string().contains("dual-stack"), "{e}");
        assert!(reply_address(&meta("", "")).is_err());
        let e = reply_address(&meta("", "2001:db8::zz")).expect_err("bad");
        assert!(e.to_string().contains("2001:db8::zz"), "{e}");
        // An IPv6 address in the IPv4 field is not an IPv4 address.
        assert!(reply_address(&meta("2001:db8::5", "")).is_err());
    }

    #[test]
    fn released_and_held_addresses_read_either_family() {
        assert_eq!(
            released_address(Some(&meta("", "2001:db8::5"))),
            Some("2001:db8::5".parse().expect("ip"))
        );
        assert_eq!(released_address(Some(&meta("", ""))), None);
        assert_eq!(released_address(None), None);
        let a = Allocation {
            i_pv4_addr: "2001:db8::7".into(),
            ..Default::default()
        };
        assert_eq!(
            allocation_address(&a),
            Some("2001:db8::7".parse().expect("ip"))
        );
        assert_eq!(host_prefix("2001:db8::7".parse().expect("ip")), 128);
    }
}
