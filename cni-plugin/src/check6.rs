//! CHECK for an IPv6 pod: the same questions as [`crate::check`] asks of an IPv4 pod, in the IPv6 shapes
//! [`datapath::pod::v6`] builds (/128, `fe80::1` link route and default route, static ND entry, host /128 route,
//! IPv6 rules 512/1536). Every discrepancy is named.

use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::time::Duration;

use aws_cni_proto::ListAllocationsRequest;
use cni_types::{CniEnv, CniResult};
use datapath::pod::v6::POD_GATEWAY6;
use datapath::{Netlink, FROM_POD_RULE_PRIORITY, MAIN_TABLE, TO_POD_RULE_PRIORITY};

use crate::client::{self, rpc_error};
use crate::conf::PluginConf;
use crate::error::PluginError;
use crate::identity::PodIdentity;

/// What CHECK knows of the attachment.
pub struct Attachment<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub netns: &'a Path,
}

fn setup_err(e: datapath::NetlinkError) -> PluginError {
    PluginError::Setup(e.to_string())
}

/// Runs CHECK for the IPv6 address `ip` of prevResult.
pub async fn check6(
    env: &CniEnv,
    conf: &PluginConf,
    timeout: Duration,
    prev: &CniResult,
    ip: Ipv6Addr,
    at: Attachment<'_>,
) -> Result<(), PluginError> {
    let Attachment {
        container_id,
        ifname,
        netns,
    } = at;
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
        Some(a) if crate::family::allocation_address(a) != Some(IpAddr::V6(ip)) => {
            problems.push(format!(
                "ipamd holds {} for this container, prevResult says {ip}",
                a.i_pv4_addr
            ))
        }
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
    let routes = host
        .routes::<Ipv6Addr>(MAIN_TABLE)
        .await
        .map_err(setup_err)?;
    if !routes.iter().any(|r| {
        r.dst == ip && r.prefix_len == 128 && veth.as_ref().is_some_and(|v| r.oif == Some(v.index))
    }) {
        problems.push(format!("host route {ip}/128 dev {host_veth} is missing"));
    }
    let rules = host.rules::<Ipv6Addr>().await.map_err(setup_err)?;
    if !rules.iter().any(|r| {
        r.priority == TO_POD_RULE_PRIORITY && r.dst == Some((ip, 128)) && r.table == MAIN_TABLE
    }) {
        problems.push(format!(
            "host rule {TO_POD_RULE_PRIORITY}: to {ip} lookup main is missing"
        ));
    }
    if table != MAIN_TABLE
        && !rules.iter().any(|r| {
            r.priority == FROM_POD_RULE_PRIORITY && r.src == Some((ip, 128)) && r.table == table
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
            if !addrs.contains(&(IpAddr::V6(ip), 128)) {
                problems.push(format!("address {ip}/128 is missing on {ifname}"));
            }
            let pod_routes = pod
                .routes::<Ipv6Addr>(MAIN_TABLE)
                .await
                .map_err(setup_err)?;
            if !pod_routes
                .iter()
                .any(|r| r.dst == POD_GATEWAY6 && r.prefix_len == 128 && r.oif == Some(eth.index))
            {
                problems.push(format!("pod route {POD_GATEWAY6} dev {ifname} is missing"));
            }
            if !pod_routes.iter().any(|r| {
                r.prefix_len == 0 && r.gateway == Some(POD_GATEWAY6) && r.oif == Some(eth.index)
            }) {
                problems.push(format!("pod default route via {POD_GATEWAY6} is missing"));
            }
            let neigh = pod
                .permanent_neighbours::<Ipv6Addr>()
                .await
                .map_err(setup_err)?;
            let want = veth.as_ref().and_then(|v| v.mac);
            if !neigh.iter().any(|(idx, n_ip, mac)| {
                *idx == eth.index && *n_ip == POD_GATEWAY6 && *mac == want && want.is_some()
            }) {
                problems.push(format!(
                    "permanent neighbour {POD_GATEWAY6} -> host veth MAC is missing on {ifname}"
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
