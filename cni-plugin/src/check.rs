//! CNI CHECK: is the pod's network still what ADD built? Compares the live kernel state and ipamd's record with
//! prevResult, and names every discrepancy it finds (not just the first), so an operator sees the whole drift.
//!
//! Checked: ipamd still holds the address for (network, container, ifname); in the pod, the interface exists and is
//! up with the host-prefix address (/32, /128), the link route to the gateway (169.254.1.1, `fe80::1`), the
//! default route through it and the permanent neighbour entry (static ARP, static ND) pointing at the host veth's
//! MAC; on the host, the veth exists and is up, the host-prefix route points to it, rule 512 and (for secondary
//! ENIs) rule 1536 to the ENI's table exist.
//!
//! One implementation for both families, generic over [`PodFamily`] ([`datapath::pod`] and [`datapath::pod::v6`]
//! build the same shapes in their family); the pod's family is its address's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use aws_cni_proto::ListAllocationsRequest;
use cni_types::{CniEnv, CniError, CniResult};
use datapath::{
    IpFamily, Netlink, NetlinkError, FROM_POD_RULE_PRIORITY, MAIN_TABLE, TO_POD_RULE_PRIORITY,
};

use crate::client::{self, rpc_error};
use crate::conf::PluginConf;
use crate::error::PluginError;
use crate::family::{allocation_address, PodFamily};
use crate::identity::PodIdentity;

/// What CHECK knows of the attachment.
struct Attachment<'a> {
    container_id: &'a str,
    ifname: &'a str,
    netns: &'a Path,
}

fn setup_err(e: NetlinkError) -> PluginError {
    PluginError::Setup(e.to_string())
}

/// Runs CHECK.
pub async fn check(env: &CniEnv, conf: &PluginConf, timeout: Duration) -> Result<(), PluginError> {
    let prev = conf.net.prev_result()?.ok_or_else(|| {
        PluginError::Cni(CniError::invalid_config(
            "CHECK needs prevResult (the result of ADD)",
        ))
    })?;
    let (Some(container_id), Some(ifname), Some(netns)) =
        (&env.container_id, &env.ifname, &env.netns)
    else {
        return Err(PluginError::Cni(CniError::invalid_env(
            "CHECK needs CNI_CONTAINERID, CNI_NETNS and CNI_IFNAME",
        )));
    };
    if !netns.exists() {
        return Err(PluginError::NetnsMissing(netns.display().to_string()));
    }
    let at = Attachment {
        container_id,
        ifname,
        netns,
    };
    // An IPv6 pod (ENABLE_IPv6) has its address first; otherwise the pod's IPv4 address.
    if let Some(IpAddr::V6(ip)) = prev.ips.first().map(|c| c.address.ip()) {
        return check_in::<Ipv6Addr>(env, conf, timeout, &prev, ip, at).await;
    }
    let ip = prev
        .ips
        .iter()
        .find_map(|c| Ipv4Addr::from_ip(c.address.ip()))
        .ok_or_else(|| {
            PluginError::Cni(CniError::invalid_config("prevResult has no IPv4 address"))
        })?;
    check_in::<Ipv4Addr>(env, conf, timeout, &prev, ip, at).await
}

/// CHECK of the pod address `ip` of prevResult, in its family.
async fn check_in<A: PodFamily>(
    env: &CniEnv,
    conf: &PluginConf,
    timeout: Duration,
    prev: &CniResult,
    ip: A,
    at: Attachment<'_>,
) -> Result<(), PluginError> {
    let Attachment {
        container_id,
        ifname,
        netns,
    } = at;
    let len = A::HOST_PREFIX;
    let gw = A::POD_GATEWAY;
    let host_veth = prev
        .interfaces
        .iter()
        .find(|i| i.sandbox.is_none() && i.name.starts_with(&conf.veth_prefix))
        .map(|i| i.name.clone())
        .unwrap_or_else(|| PodIdentity::from_env(env).host_veth(&conf.veth_prefix));
    let mut problems = Vec::new();

    // ipamd's record.
    let socket = conf.socket();
    let mut ipamd = client::connect_control(&socket, timeout).await?;
    let allocations = ipamd
        .list_allocations(ListAllocationsRequest {
            network_name: conf.net.name.clone(),
            container_id: container_id.to_string(),
        })
        .await
        .map_err(|s| rpc_error(&socket, "ListAllocations", timeout, s))?
        .into_inner()
        .allocations;
    let mut table = MAIN_TABLE;
    match allocations.iter().find(|a| a.if_name == ifname) {
        None => problems.push(format!(
            "ipamd holds no address for container {container_id} interface {ifname}"
        )),
        Some(a) if allocation_address(a) != Some(ip.into()) => problems.push(format!(
            "ipamd holds {} for this container, prevResult says {ip}",
            allocation_address(a).map_or_else(|| a.i_pv4_addr.clone(), |held| held.to_string())
        )),
        Some(a) => table = u32::try_from(a.route_table_id).unwrap_or(MAIN_TABLE),
    }

    // Host side.
    let host = Netlink::connect(None).map_err(setup_err)?;
    let veth = host.link_by_name(&host_veth).await.map_err(setup_err)?;
    match &veth {
        None => problems.push(format!("host veth {host_veth} is missing")),
        Some(l) if !l.up => problems.push(format!("host veth {host_veth} is down")),
        Some(_) => {}
    }
    let routes = host.routes::<A>(MAIN_TABLE).await.map_err(setup_err)?;
    if !routes.iter().any(|r| {
        r.dst == ip && r.prefix_len == len && veth.as_ref().is_some_and(|v| r.oif == Some(v.index))
    }) {
        problems.push(format!("host route {ip}/{len} dev {host_veth} is missing"));
    }
    let rules = host.rules::<A>().await.map_err(setup_err)?;
    if !rules.iter().any(|r| {
        r.priority == TO_POD_RULE_PRIORITY && r.dst == Some((ip, len)) && r.table == MAIN_TABLE
    }) {
        problems.push(format!(
            "host rule {TO_POD_RULE_PRIORITY}: to {ip} lookup main is missing"
        ));
    }
    if table != MAIN_TABLE
        && !rules.iter().any(|r| {
            r.priority == FROM_POD_RULE_PRIORITY && r.src == Some((ip, len)) && r.table == table
        })
    {
        problems.push(format!(
            "host rule {FROM_POD_RULE_PRIORITY}: from {ip} lookup {table} is missing"
        ));
    }

    // Pod side.
    let pod = Netlink::connect(Some(netns)).map_err(setup_err)?;
    match pod.link_by_name(ifname).await.map_err(setup_err)? {
        None => problems.push(format!(
            "interface {ifname} is missing in {}",
            netns.display()
        )),
        Some(eth) => {
            if !eth.up {
                problems.push(format!("interface {ifname} is down"));
            }
            let addrs = pod.addresses(eth.index).await.map_err(setup_err)?;
            if !addrs.contains(&(ip.into(), len)) {
                problems.push(format!("address {ip}/{len} is missing on {ifname}"));
            }
            let pod_routes = pod.routes::<A>(MAIN_TABLE).await.map_err(setup_err)?;
            // The link route is `scope link`, which only IPv4 reads back.
            if !pod_routes.iter().any(|r| {
                r.dst == gw
                    && r.prefix_len == len
                    && (r.scope_link || !A::SCOPE_READ_BACK)
                    && r.oif == Some(eth.index)
            }) {
                let scope = if A::SCOPE_READ_BACK {
                    " scope link"
                } else {
                    ""
                };
                problems.push(format!("pod route {gw} dev {ifname}{scope} is missing"));
            }
            if !pod_routes
                .iter()
                .any(|r| r.prefix_len == 0 && r.gateway == Some(gw) && r.oif == Some(eth.index))
            {
                problems.push(format!("pod default route via {gw} is missing"));
            }
            let neigh = pod.permanent_neighbours::<A>().await.map_err(setup_err)?;
            let want = veth.as_ref().and_then(|v| v.mac);
            if !neigh.iter().any(|(idx, n_ip, mac)| {
                *idx == eth.index && *n_ip == gw && *mac == want && want.is_some()
            }) {
                problems.push(format!(
                    "permanent neighbour {gw} -> host veth MAC is missing on {ifname}"
                ));
            }
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(PluginError::Drift(problems))
    }
}
