//! CNI GC (spec 1.1.0): release everything that belongs to no valid attachment.
//!
//! 1. ipamd releases every address of this network whose (container ID, ifname) is not in
//!    `cni.dev/valid-attachments` (atomically, in the daemon: `rpc.IpamdControl/Gc`).
//! 2. The host is swept for what those pods left: 512/1536 rules and host /32 routes whose address ipamd no longer
//!    holds (for any network), and the host veths those routes point to.
//!
//! Safe against concurrent ADDs of other pods: an ADD gets its address from ipamd before it programs anything, so
//! every address an in-flight ADD is programming is held and never swept; a veth with no route yet is left alone.
//! Every step is attempted; every failure is reported (error 112) after all of them ran.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use aws_cni_proto::{Attachment, GcRequest, ListAllocationsRequest};
use cni_types::CniError;
use datapath::pod::{self, PodTeardown};
use datapath::Netlink;

use crate::client::{self, rpc_error};
use crate::conf::PluginConf;
use crate::error::PluginError;

/// Runs GC.
pub async fn gc(conf: &PluginConf, timeout: Duration) -> Result<(), PluginError> {
    let Some(valid) = &conf.net.valid_attachments else {
        return Err(PluginError::Cni(CniError::invalid_config(
            "GC needs cni.dev/valid-attachments (refusing to treat a missing list as \"nothing is valid\")",
        )));
    };
    let socket = conf.socket();
    let mut ipamd = client::connect_control(&socket, timeout).await?;
    let reply = ipamd
        .gc(GcRequest {
            network_name: conf.net.name.clone(),
            valid: valid
                .iter()
                .map(|a| Attachment {
                    container_id: a.container_id.clone(),
                    if_name: a.ifname.clone(),
                })
                .collect(),
        })
        .await
        .map_err(|s| rpc_error(&socket, "Gc", timeout, s))?
        .into_inner();
    // Everything ipamd still holds, in every network: never sweep those.
    let allocations = ipamd
        .list_allocations(ListAllocationsRequest::default())
        .await
        .map_err(|s| rpc_error(&socket, "ListAllocations", timeout, s))?
        .into_inner()
        .allocations;
    let held: HashSet<Ipv4Addr> = allocations
        .iter()
        .filter_map(|a| a.i_pv4_addr.parse().ok())
        .collect();
    // IPv6 pods (ENABLE_IPv6): swept by crate::gc6 below.
    let held6 = crate::gc6::v6_of(&allocations);

    let host = Netlink::connect(None).map_err(|e| PluginError::Teardown(e.to_string()))?;
    let mut errors = Vec::new();
    let mut stale: HashSet<Ipv4Addr> = reply
        .released
        .iter()
        .filter_map(|a| a.i_pv4_addr.parse().ok())
        .collect();
    match host.rules::<Ipv4Addr>().await {
        Ok(rules) => {
            for r in rules {
                let ip = match (r.priority, r.src, r.dst) {
                    (datapath::TO_POD_RULE_PRIORITY, None, Some((ip, 32))) => ip,
                    (datapath::FROM_POD_RULE_PRIORITY, Some((ip, 32)), None) => ip,
                    _ => continue,
                };
                if !held.contains(&ip) {
                    stale.insert(ip);
                }
            }
        }
        Err(e) => errors.push(e.to_string()),
    }
    // Host /32 routes to our veths whose address ipamd does not hold; remember the veths.
    let mut stale_veths = Vec::new();
    match (
        host.routes::<Ipv4Addr>(datapath::MAIN_TABLE).await,
        host.links().await,
    ) {
        (Ok(routes), Ok(links)) => {
            for r in routes.iter().filter(|r| r.prefix_len == 32 && r.scope_link) {
                let Some(link) = links.iter().find(|l| Some(l.index) == r.oif) else {
                    continue;
                };
                if is_pod_veth(&link.name, &conf.veth_prefix) && !held.contains(&r.dst) {
                    stale.insert(r.dst);
                    stale_veths.push((r.dst, link.name.clone()));
                }
            }
        }
        (Err(e), _) | (_, Err(e)) => errors.push(e.to_string()),
    }
    for ip in &stale {
        let veth = stale_veths
            .iter()
            .find(|(v, _)| v == ip)
            .map(|(_, n)| n.as_str());
        for e in pod::teardown(
            &host,
            &PodTeardown {
                host_veth: veth,
                netns_path: None,
                container_ifname: None,
                ip: Some(*ip),
            },
        )
        .await
        {
            errors.push(format!("{ip}: {e}"));
        }
    }
    let swept6 = crate::gc6::sweep6(
        &host,
        &held6,
        crate::gc6::v6_of(&reply.released),
        &conf.veth_prefix,
        &mut errors,
    )
    .await;
    tracing::info!(
        swept6,
        released = reply.released.len(),
        kept = reply.kept.len(),
        swept = stale.len(),
        errors = errors.len(),
        "GC done"
    );
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PluginError::Teardown(errors.join("; ")))
    }
}

fn is_pod_veth(name: &str, prefix: &str) -> bool {
    datapath::is_pod_veth_name(name, prefix)
}

#[cfg(test)]
mod tests {
    use super::is_pod_veth;

    #[test]
    fn only_hash_named_veths_are_pod_veths() {
        assert!(is_pod_veth("enic440f455693", "eni"));
        assert!(!is_pod_veth("eni0", "eni"));
        assert!(!is_pod_veth("eth0", "eni"));
        assert!(!is_pod_veth("enic440f45569", "eni"));
        assert!(!is_pod_veth("eniC440F455693", "eni"));
    }
}
