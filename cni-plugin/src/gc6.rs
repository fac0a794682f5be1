//! GC's sweep of IPv6 pods' host state ([`crate::gc`] does IPv4): IPv6 rules 512/1536 and host /128 routes to
//! pod veths whose address ipamd no longer holds, and those veths. Same safety argument as the IPv4 sweep: an
//! in-flight ADD's address is already held, and a veth without a route is left alone.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr};

use aws_cni_proto::Allocation;
use datapath::pod::v6::{teardown6, PodTeardown6};
use datapath::Netlink;

/// IPv6 addresses among ipamd's allocations.
pub fn v6_of(allocations: &[Allocation]) -> HashSet<Ipv6Addr> {
    allocations
        .iter()
        .filter_map(crate::family::allocation_address)
        .filter_map(|ip| match ip {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(_) => None,
        })
        .collect()
}

/// Sweeps what no held address explains; `released` are the addresses ipamd just released. Returns how many
/// addresses were swept; failures go to `errors`.
pub async fn sweep6(
    host: &Netlink,
    held: &HashSet<Ipv6Addr>,
    released: HashSet<Ipv6Addr>,
    veth_prefix: &str,
    errors: &mut Vec<String>,
) -> usize {
    let mut stale = released;
    stale.retain(|ip| !held.contains(ip));
    match host.rules::<Ipv6Addr>().await {
        Ok(rules) => {
            for r in rules {
                let ip = match (r.priority, r.src, r.dst) {
                    (datapath::TO_POD_RULE_PRIORITY, None, Some((ip, 128))) => ip,
                    (datapath::FROM_POD_RULE_PRIORITY, Some((ip, 128)), None) => ip,
                    _ => continue,
                };
                if !held.contains(&ip) {
                    stale.insert(ip);
                }
            }
        }
        Err(e) => errors.push(e.to_string()),
    }
    let mut stale_veths = Vec::new();
    match (
        host.routes::<Ipv6Addr>(datapath::MAIN_TABLE).await,
        host.links().await,
    ) {
        (Ok(routes), Ok(links)) => {
            for r in routes.iter().filter(|r| r.prefix_len == 128) {
                let Some(link) = links.iter().find(|l| Some(l.index) == r.oif) else {
                    continue;
                };
                if datapath::is_pod_veth_name(&link.name, veth_prefix) && !held.contains(&r.dst) {
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
        for e in teardown6(
            host,
            &PodTeardown6 {
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
    stale.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ipv6_allocations_are_held_here() {
        let a = |ip: &str| Allocation {
            i_pv4_addr: ip.into(),
            ..Default::default()
        };
        let held = v6_of(&[a("10.0.0.5"), a("2001:db8::5"), a("")]);
        assert_eq!(held.len(), 1);
        assert!(held.contains(&"2001:db8::5".parse().expect("ip")));
    }
}
