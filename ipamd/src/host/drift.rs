//! Drift repair for pods' host routing: other software on the node (network managers, cleanup scripts) may delete
//! a pod's rules 512 (`to <ip> lookup main`), 1536 (`from <ip> lookup <ENI table>`) or its `/32` route to the host
//! veth, or leave such rules behind for an address no pod holds any more.
//!
//! [`repair`] makes the host match the datastore, for addresses of our pool only (rules and routes of addresses
//! that are not ours are never touched):
//! - every assigned address whose host veth exists gets its rules ([`datapath::pod::pod_rules`]) and its route
//!   ([`datapath::pod::host_route`]) back if they are missing; an assigned address whose veth is not (yet, or any
//!   more) there is left to the plugin and to restart recovery;
//! - a pool address no pod holds loses its 512/1536 rules and any `/32` route through a veth of ours.
//!
//! Adding is idempotent and the plugin's own ADD/DEL tolerate what this does in between, so it can run at any time.
//! Every change is counted ([`repairs_total`], exported as a metric).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use datapath::pod::{host_route, is_pod_rule, pod_rules};
use datapath::{Netlink, NetlinkError, MAIN_TABLE};

use crate::core::datastore::Datastore;

/// An assigned address as drift repair needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRoute {
    pub ip: Ipv4Addr,
    pub route_table: u32,
    /// The pod's host veth.
    pub veth: String,
}

/// What one repair pass changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repairs {
    pub rules_added: usize,
    pub rules_removed: usize,
    pub routes_added: usize,
    pub routes_removed: usize,
}

impl Repairs {
    /// Every change.
    pub fn total(&self) -> usize {
        self.rules_added + self.rules_removed + self.routes_added + self.routes_removed
    }
}

/// The assigned addresses (with their veths) and every address of the pool, from the datastore.
pub fn pod_routes(ds: &Datastore, veth_prefix: &str) -> (Vec<PodRoute>, BTreeSet<Ipv4Addr>) {
    let pods = ds
        .assignments()
        .into_iter()
        .filter(|(_, meta, _)| !meta.name.is_empty())
        .map(|(_, meta, a)| PodRoute {
            ip: a.ip,
            route_table: a.route_table,
            veth: datapath::host_veth_name(veth_prefix, &meta.namespace, &meta.name, 0),
        })
        .collect();
    let pool = ds.enis().flat_map(|e| e.ips()).collect();
    (pods, pool)
}

/// Brings pods' rules and routes in `nl`'s namespace to `pods` (see the module docs). `veth_prefix` names our
/// veths, for routes to remove.
pub async fn repair(
    nl: &Netlink,
    pods: &[PodRoute],
    pool: &BTreeSet<Ipv4Addr>,
    veth_prefix: &str,
) -> Result<Repairs, NetlinkError> {
    let mut done = Repairs::default();
    let links: BTreeMap<String, u32> = nl
        .links()
        .await?
        .into_iter()
        .map(|l| (l.name, l.index))
        .collect();
    let ours: BTreeSet<u32> = links
        .iter()
        .filter(|(n, _)| n.starts_with(veth_prefix))
        .map(|(_, i)| *i)
        .collect();
    let assigned: BTreeSet<Ipv4Addr> = pods.iter().map(|p| p.ip).collect();
    let rules = nl.rules().await?;
    let routes = nl.routes::<Ipv4Addr>(MAIN_TABLE).await?;

    for p in pods {
        let Some(&index) = links.get(&p.veth) else {
            continue;
        };
        for want in pod_rules(p.ip, p.route_table) {
            if !rules.contains(&want) {
                nl.add_rule(&want).await?;
                done.rules_added += 1;
            }
        }
        let want = host_route(p.ip, Some(index));
        if !routes
            .iter()
            .any(|r| r.dst == p.ip && r.prefix_len == 32 && r.oif == Some(index))
        {
            nl.replace_route(&want).await?;
            done.routes_added += 1;
        }
    }
    for ip in pool.iter().filter(|ip| !assigned.contains(ip)) {
        for r in rules.iter().filter(|r| is_pod_rule(r, *ip)) {
            nl.delete_rule(r).await?;
            done.rules_removed += 1;
        }
        for r in routes.iter().filter(|r| {
            r.dst == *ip && r.prefix_len == 32 && r.oif.is_some_and(|i| ours.contains(&i))
        }) {
            nl.delete_route(r).await?;
            done.routes_removed += 1;
        }
    }
    if done.total() > 0 {
        tracing::warn!(
            ?done,
            "repaired pods' host rules and routes changed behind ipamd's back"
        );
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A namespace with two pod veths (one pod on a secondary ENI) whose rules and route are deleted, and a
    /// stale rule for a pool address no pod holds: one pass repairs all, a second finds nothing.
    #[tokio::test]
    async fn missing_rules_and_routes_come_back_and_stale_ones_go() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let ns = datapath::new_anonymous_netns().expect("netns");
        let nl = Netlink::connect_file(&ns).expect("netlink");
        for (name, peer) in [("enia", "pa"), ("enib", "pb")] {
            crate::host::test_veth(&nl, name, peer, None).await;
        }
        let a: Ipv4Addr = "10.0.0.10".parse().expect("ip");
        let b: Ipv4Addr = "10.0.0.20".parse().expect("ip");
        let freed: Ipv4Addr = "10.0.0.30".parse().expect("ip");
        let pods = vec![
            PodRoute {
                ip: a,
                route_table: MAIN_TABLE,
                veth: "enia".into(),
            },
            PodRoute {
                ip: b,
                route_table: 3,
                veth: "enib".into(),
            },
        ];
        let pool: BTreeSet<Ipv4Addr> = [a, b, freed].into();
        for r in pod_rules(freed, 2) {
            nl.add_rule(&r).await.expect("stale rule");
        }
        let done = repair(&nl, &pods, &pool, "eni").await.expect("repair");
        assert_eq!(
            done,
            Repairs {
                rules_added: 3,
                rules_removed: 2,
                routes_added: 2,
                routes_removed: 0
            }
        );
        let rules = nl.rules().await.expect("rules");
        for want in pod_rules(b, 3) {
            assert!(rules.contains(&want), "{want:?} in {rules:?}");
        }
        assert!(!rules.iter().any(|r| is_pod_rule(r, freed)));
        assert_eq!(
            repair(&nl, &pods, &pool, "eni").await.expect("again"),
            Repairs::default()
        );
        // Behind our back: rule 1536 of b and a's route go; the pool address gets a route through our veth.
        nl.delete_rule(&pod_rules(b, 3)[1]).await.expect("del");
        let ia = nl.link_by_name("enia").await.expect("l").expect("a").index;
        nl.delete_route(&host_route(a, Some(ia)))
            .await
            .expect("del");
        nl.replace_route(&host_route(freed, Some(ia)))
            .await
            .expect("stale route");
        let done = repair(&nl, &pods, &pool, "eni").await.expect("repair");
        assert_eq!(
            done,
            Repairs {
                rules_added: 1,
                rules_removed: 0,
                routes_added: 1,
                routes_removed: 1
            }
        );
    }
}
