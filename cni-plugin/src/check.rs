//! CNI CHECK: is the pod's network still what ADD built? Compares the live kernel state and ipamd's record with
//! prevResult, and names every discrepancy it finds (not just the first), so an operator sees the whole drift.
//!
//! Checked: ipamd still holds the address for (network, container, ifname); in the pod, the interface exists and is
//! up with the /32, the 169.254.1.1 link route, the default route and the permanent neighbour entry pointing at the
//! host veth's MAC; on the host, the veth exists and is up, the /32 route points to it, rule 512 and (for
//! secondary ENIs) rule 1536 to the ENI's table exist.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use aws_cni_proto::ListAllocationsRequest;
use cni_types::{CniEnv, CniError};
use datapath::pod::POD_GATEWAY;
use datapath::{Netlink, FROM_POD_RULE_PRIORITY, MAIN_TABLE, TO_POD_RULE_PRIORITY};

use crate::client::{self, rpc_error};
use crate::conf::PluginConf;
use crate::error::PluginError;
use crate::identity::PodIdentity;

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
    // An IPv6 pod (ENABLE_IPv6): the same checks in its family.
    if let Some(IpAddr::V6(ip)) = prev.ips.first().map(|c| c.address.ip()) {
        let at = crate::check6::Attachment {
            container_id,
            ifname,
            netns,
        };
        return crate::check6::check6(env, conf, timeout, &prev, ip, at).await;
    }
    let ip: Ipv4Addr = prev
        .ips
        .iter()
        .find_map(|c| match c.address.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        })
        .ok_or_else(|| {
            PluginError::Cni(CniError::invalid_config("prevResult has no IPv4 address"))
        })?;
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
            container_id: container_id.clone(),
        })
        .await
        .map_err(|s| rpc_error(&socket, "ListAllocations", timeout, s))?
        .into_inner()
        .allocations;
    let mut table = MAIN_TABLE;
    match allocations.iter().find(|a| &a.if_name == ifname) {
        None => problems.push(format!(
            "ipamd holds no address for container {container_id} interface {ifname}"
        )),
        Some(a) if a.i_pv4_addr != ip.to_string() => problems.push(format!(
            "ipamd holds {} for this container, prevResult says {ip}",
            a.i_pv4_addr
        )),
        Some(a) => table = u32::try_from(a.route_table_id).unwrap_or(MAIN_TABLE),
    }

    // Host side.
    let host = Netlink::connect(None).map_err(|e| PluginError::Setup(e.to_string()))?;
    let veth = host
        .link_by_name(&host_veth)
        .await
        .map_err(|e| PluginError::Setup(e.to_string()))?;
    match &veth {
        None => problems.push(format!("host veth {host_veth} is missing")),
        Some(l) if !l.up => problems.push(format!("host veth {host_veth} is down")),
        Some(_) => {}
    }
    let routes = host
        .routes::<Ipv4Addr>(MAIN_TABLE)
        .await
        .map_err(|e| PluginError::Setup(e.to_string()))?;
    let route_ok = routes.iter().any(|r| {
        r.dst == ip && r.prefix_len == 32 && veth.as_ref().is_some_and(|v| r.oif == Some(v.index))
    });
    if !route_ok {
        problems.push(format!("host route {ip}/32 dev {host_veth} is missing"));
    }
    let rules = host
        .rules::<Ipv4Addr>()
        .await
        .map_err(|e| PluginError::Setup(e.to_string()))?;
    if !rules.iter().any(|r| {
        r.priority == TO_POD_RULE_PRIORITY && r.dst == Some((ip, 32)) && r.table == MAIN_TABLE
    }) {
        problems.push(format!(
            "host rule {TO_POD_RULE_PRIORITY}: to {ip} lookup main is missing"
        ));
    }
    if table != MAIN_TABLE
        && !rules.iter().any(|r| {
            r.priority == FROM_POD_RULE_PRIORITY && r.src == Some((ip, 32)) && r.table == table
        })
    {
        problems.push(format!(
            "host rule {FROM_POD_RULE_PRIORITY}: from {ip} lookup {table} is missing"
        ));
    }

    // Pod side.
    let pod = Netlink::connect(Some(netns)).map_err(|e| PluginError::Setup(e.to_string()))?;
    match pod
        .link_by_name(ifname)
        .await
        .map_err(|e| PluginError::Setup(e.to_string()))?
    {
        None => problems.push(format!(
            "interface {ifname} is missing in {}",
            netns.display()
        )),
        Some(eth) => {
            if !eth.up {
                problems.push(format!("interface {ifname} is down"));
            }
            let addrs = pod
                .addresses(eth.index)
                .await
                .map_err(|e| PluginError::Setup(e.to_string()))?;
            if !addrs.contains(&(IpAddr::V4(ip), 32)) {
                problems.push(format!("address {ip}/32 is missing on {ifname}"));
            }
            let pod_routes = pod
                .routes::<Ipv4Addr>(MAIN_TABLE)
                .await
                .map_err(|e| PluginError::Setup(e.to_string()))?;
            if !pod_routes.iter().any(|r| {
                r.dst == POD_GATEWAY
                    && r.prefix_len == 32
                    && r.scope_link
                    && r.oif == Some(eth.index)
            }) {
                problems.push(format!(
                    "pod route {POD_GATEWAY} dev {ifname} scope link is missing"
                ));
            }
            if !pod_routes
                .iter()
                .any(|r| r.prefix_len == 0 && r.gateway == Some(POD_GATEWAY))
            {
                problems.push(format!("pod default route via {POD_GATEWAY} is missing"));
            }
            let neigh = pod
                .permanent_neighbours::<Ipv4Addr>()
                .await
                .map_err(|e| PluginError::Setup(e.to_string()))?;
            let want = veth.as_ref().and_then(|v| v.mac);
            if !neigh.iter().any(|(idx, n_ip, mac)| {
                *idx == eth.index && *n_ip == POD_GATEWAY && *mac == want && want.is_some()
            }) {
                problems.push(format!(
                    "permanent neighbour {POD_GATEWAY} -> host veth MAC is missing on {ifname}"
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
