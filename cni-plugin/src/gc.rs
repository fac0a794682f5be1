//! CNI GC (spec 1.1.0): release everything that belongs to no valid attachment.
//!
//! 1. ipamd releases every address of this network whose (container ID, ifname) is not in
//!    `cni.dev/valid-attachments` (atomically, in the daemon: `rpc.IpamdControl/Gc`).
//! 2. The host is swept for what those pods left, in each family ([`sweep`], generic over [`IpFamily`]): 512/1536
//!    rules and host /32 (/128) routes whose address ipamd no longer holds (for any network), and the host veths
//!    those routes point to.
//!
//! Safe against concurrent ADDs of other pods: an ADD gets its address from ipamd before it programs any address,
//! route or rule (only its veth pair is built while ipamd answers), so every address an in-flight ADD is
//! programming is held and never swept (an address ipamd released here and gave
//! to such an ADD before the list of held ones was taken is held too); a veth with no route yet is left alone.
//! Every step is attempted; every failure is reported (error 112) after all of them ran.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use aws_cni_proto::{Allocation, Attachment, GcRequest, ListAllocationsRequest};
use cni_types::CniError;
use datapath::{IpFamily, Netlink, FROM_POD_RULE_PRIORITY, MAIN_TABLE, TO_POD_RULE_PRIORITY};

use crate::client::{self, rpc_error};
use crate::conf::PluginConf;
use crate::error::PluginError;
use crate::family::allocation_address;

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

    let host = Netlink::connect(None).map_err(|e| PluginError::Teardown(e.to_string()))?;
    let mut errors = Vec::new();
    let swept = sweep::<Ipv4Addr>(&host, &allocations, &reply.released, conf, &mut errors).await;
    // IPv6 pods (ENABLE_IPv6).
    let swept6 = sweep::<Ipv6Addr>(&host, &allocations, &reply.released, conf, &mut errors).await;
    tracing::info!(
        swept6,
        released = reply.released.len(),
        kept = reply.kept.len(),
        swept,
        errors = errors.len(),
        "GC done"
    );
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PluginError::Teardown(errors.join("; ")))
    }
}

/// The addresses of `A`'s family among ipamd's allocations.
fn addresses_of<A: IpFamily>(allocations: &[Allocation]) -> HashSet<A> {
    allocations
        .iter()
        .filter_map(allocation_address)
        .filter_map(A::from_ip)
        .collect()
}

/// Sweeps the host of what no address ipamd holds (`held`) explains, in `A`'s family; `released` are the
/// allocations ipamd just released. Returns how many addresses were swept; failures go to `errors`.
async fn sweep<A: IpFamily>(
    host: &Netlink,
    held: &[Allocation],
    released: &[Allocation],
    conf: &PluginConf,
    errors: &mut Vec<String>,
) -> usize {
    let held: HashSet<A> = addresses_of(held);
    let mut stale: HashSet<A> = addresses_of(released);
    stale.retain(|ip| !held.contains(ip));
    let pod_prefix = A::HOST_PREFIX;
    match host.rules::<A>().await {
        Ok(rules) => {
            for r in rules {
                let ip = match (r.priority, r.src, r.dst) {
                    (TO_POD_RULE_PRIORITY, None, Some((ip, len))) if len == pod_prefix => ip,
                    (FROM_POD_RULE_PRIORITY, Some((ip, len)), None) if len == pod_prefix => ip,
                    _ => continue,
                };
                if !held.contains(&ip) {
                    stale.insert(ip);
                }
            }
        }
        Err(e) => errors.push(e.to_string()),
    }
    // Host routes to our veths whose address ipamd does not hold (`scope link`, where the family reads it back);
    // remember the veths.
    let mut stale_veths = Vec::new();
    match (host.routes::<A>(MAIN_TABLE).await, host.links().await) {
        (Ok(routes), Ok(links)) => {
            for r in routes
                .iter()
                .filter(|r| r.prefix_len == pod_prefix && (r.scope_link || !A::SCOPE_READ_BACK))
            {
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
        for e in crate::family::teardown(host, veth, None, None, Some((*ip).into())).await {
            errors.push(format!("{ip}: {e}"));
        }
    }
    stale.len()
}

fn is_pod_veth(name: &str, prefix: &str) -> bool {
    datapath::is_pod_veth_name(name, prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hash_named_veths_are_pod_veths() {
        assert!(is_pod_veth("enic440f455693", "eni"));
        assert!(!is_pod_veth("eni0", "eni"));
        assert!(!is_pod_veth("eth0", "eni"));
        assert!(!is_pod_veth("enic440f45569", "eni"));
        assert!(!is_pod_veth("eniC440F455693", "eni"));
    }

    #[test]
    fn each_sweep_holds_only_its_familys_allocations() {
        // ipamd's IPv6 mode puts the address in the IPv4 field's place or its own (see family.rs).
        let a = |v4: &str, v6: &str| Allocation {
            i_pv4_addr: v4.into(),
            i_pv6_addr: v6.into(),
            ..Default::default()
        };
        let allocs = [
            a("10.0.0.5", ""),
            a("2001:db8::5", ""),
            a("", "2001:db8::6"),
            a("", ""),
        ];
        let v4: HashSet<Ipv4Addr> = addresses_of(&allocs);
        assert_eq!(v4, HashSet::from(["10.0.0.5".parse().expect("ip")]));
        let v6: HashSet<Ipv6Addr> = addresses_of(&allocs);
        assert_eq!(
            v6,
            HashSet::from([
                "2001:db8::5".parse().expect("ip"),
                "2001:db8::6".parse().expect("ip")
            ])
        );
    }
}
