//! The host side of pods, as restart recovery sees it.
//!
//! A pod's host side is its veth (named from its namespace and name, [`datapath::host_veth_name`]), rule 512
//! `to <ip> lookup main`, rule 1536 `from <ip> lookup <ENI table>` (secondary ENIs only) and the `/32` route to
//! the veth. The plugin creates and removes them ([`datapath::pod`]); ipamd only looks for the veth of a pod it
//! restored from the checkpoint, and removes the rules and route of one whose veth is gone (the plugin's DEL
//! came while ipamd was down), so that the address can be handed out again.
//!
//! When an address goes back to the pool, the flows conntrack still holds for it are deleted
//! ([`forget_flows`]): a new pod given the address must not inherit the old pod's NAT and marks.

use std::net::Ipv4Addr;

use datapath::pod::PodTeardown;
use datapath::{Netlink, NetlinkError};

/// Whether the link `name` exists in `nl`'s namespace.
pub(super) async fn veth_exists(nl: &Netlink, name: &str) -> Result<bool, NetlinkError> {
    Ok(nl.link_by_name(name).await?.is_some())
}

/// Removes rules 512/1536 and the host route of the pod address `ip` (not the veth); returns every failure.
pub(super) async fn remove_routing(nl: &Netlink, ip: Ipv4Addr) -> Vec<NetlinkError> {
    datapath::pod::teardown(
        nl,
        &PodTeardown {
            ip: Some(ip),
            ..PodTeardown::default()
        },
    )
    .await
}

/// Deletes every conntrack flow of `ip` in the daemon's namespace (over ctnetlink, on a blocking thread); returns
/// how many were deleted.
pub(super) async fn forget_flows(
    ip: Ipv4Addr,
) -> Result<usize, datapath::conntrack::ConntrackError> {
    tokio::task::spawn_blocking(move || datapath::conntrack::Conntrack::open()?.delete_flows_of(ip))
        .await
        .map_err(|e| {
            datapath::conntrack::ConntrackError::Socket(std::io::Error::other(e.to_string()))
        })?
}
