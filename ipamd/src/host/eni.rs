//! Host networking for ENIs: what makes a secondary ENI usable by pods.
//!
//! For a secondary ENI on device N (route table N+1):
//! - find its link by MAC (retrying: the kernel may not have finished hot-plugging it), set the MTU, bring it up;
//! - give it the ENI's primary IP, and remove the connected subnet route the kernel then adds to main (it would
//!   steer the whole subnet out of this ENI);
//! - table N+1: `<gw>/32 dev ethN scope link` and `default via <gw> dev ethN`, gw = subnet base + 1 (the VPC
//!   router);
//! - rule 32765: `from <ENI primary IP> lookup N+1`.
//!
//! The primary ENI only gets its MTU. Removing an ENI ([`HostNetwork::teardown_eni`]) deletes its rule and
//! empties its table. Node-wide ([`HostNetwork::setup_host`]): the primary ENI's MTU, rule 1024
//! `fwmark <mark>/<mark> lookup main` (non-VPC pod traffic leaves through the primary ENI) and the SNAT/connmark
//! iptables rules of [`crate::host::snat`]. Everything is idempotent, so a restarted daemon, or the reconcile
//! timer repairing drift, simply re-applies it. (This is the anchor's host layout, rule priorities included:
//! other tools on the node rely on them.)

use datapath::{MacAddr, NetlinkError, RouteSpec, RuleSpec, ENI_PRIMARY_IP_RULE_PRIORITY};

use super::snat::{SnatError, SnatPlan};
#[cfg(doc)]
use super::HostNetwork;
use super::NetlinkHost;
use crate::core::datastore::Eni;

/// Priority of the rule sending connmarked (non-VPC) pod traffic to the main table.
pub const FWMARK_RULE_PRIORITY: u32 = 1024;

/// Node-wide host settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPlan {
    pub primary_mac: MacAddr,
    pub mtu: u32,
    /// SNAT settings; `primary_if` is filled in by the implementation from `primary_mac`.
    pub snat: SnatPlan,
}

/// A failure to configure an ENI on the host.
#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    #[error("no link with MAC {mac} appeared for ENI {eni} after {tries} tries")]
    LinkNotFound {
        eni: String,
        mac: MacAddr,
        tries: u32,
    },
    #[error("configuring ENI {eni}: {source}")]
    Netlink {
        eni: String,
        #[source]
        source: NetlinkError,
    },
    #[error("SNAT rules: {0}")]
    Snat(#[from] SnatError),
}

fn eni_rule(eni: &Eni) -> RuleSpec {
    RuleSpec {
        priority: ENI_PRIMARY_IP_RULE_PRIORITY,
        src: Some((eni.primary_ip, 32)),
        dst: None,
        fwmark: None,
        table: eni.route_table,
    }
}

fn fwmark_rule(mark: u32) -> RuleSpec {
    RuleSpec {
        priority: FWMARK_RULE_PRIORITY,
        src: None,
        dst: None,
        fwmark: Some((mark, mark)),
        table: datapath::MAIN_TABLE,
    }
}

impl NetlinkHost {
    pub(super) async fn configure_eni(&self, eni: &Eni, mtu: u32) -> Result<(), HostNetError> {
        let wrap = |source| HostNetError::Netlink {
            eni: eni.id.clone(),
            source,
        };
        const TRIES: u32 = 10;
        let mut link = None;
        for attempt in 0..TRIES {
            link = self.nl.link_by_mac(eni.mac).await.map_err(wrap)?;
            if link.is_some() {
                break;
            }
            self.clock.sleep(self.link_wait * (attempt + 1)).await;
        }
        let link = link.ok_or_else(|| HostNetError::LinkNotFound {
            eni: eni.id.clone(),
            mac: eni.mac,
            tries: TRIES,
        })?;
        if link.mtu != mtu {
            self.nl.set_mtu(link.index, mtu).await.map_err(wrap)?;
        }
        if !link.up {
            self.nl.set_up(link.index).await.map_err(wrap)?;
        }
        if eni.is_primary {
            return Ok(());
        }
        self.nl
            .add_address(link.index, eni.primary_ip.into(), eni.subnet.prefix())
            .await
            .map_err(wrap)?;
        self.nl
            .delete_route(&RouteSpec {
                dst: eni.subnet.network(),
                prefix_len: eni.subnet.prefix(),
                gateway: None,
                oif: Some(link.index),
                table: datapath::MAIN_TABLE,
                scope_link: true,
            })
            .await
            .map_err(wrap)?;
        let gw = datapath::subnet_gateway(eni.subnet);
        self.nl
            .replace_route(&RouteSpec {
                dst: gw,
                prefix_len: 32,
                gateway: None,
                oif: Some(link.index),
                table: eni.route_table,
                scope_link: true,
            })
            .await
            .map_err(wrap)?;
        self.nl
            .replace_route(&RouteSpec {
                dst: std::net::Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                gateway: Some(gw),
                oif: Some(link.index),
                table: eni.route_table,
                scope_link: false,
            })
            .await
            .map_err(wrap)?;
        self.nl.add_rule(&eni_rule(eni)).await.map_err(wrap)?;
        Ok(())
    }

    pub(super) async fn unconfigure_eni(&self, eni: &Eni) -> Result<(), HostNetError> {
        let wrap = |source| HostNetError::Netlink {
            eni: eni.id.clone(),
            source,
        };
        if eni.is_primary || eni.route_table == datapath::MAIN_TABLE {
            return Ok(());
        }
        self.nl.delete_rule(&eni_rule(eni)).await.map_err(wrap)?;
        for route in self
            .nl
            .routes::<std::net::Ipv4Addr>(eni.route_table)
            .await
            .map_err(wrap)?
        {
            self.nl.delete_route(&route).await.map_err(wrap)?;
        }
        Ok(())
    }

    pub(super) async fn configure_host(&self, plan: &HostPlan) -> Result<(), HostNetError> {
        let wrap = |source| HostNetError::Netlink {
            eni: "primary".into(),
            source,
        };
        let link = self
            .nl
            .link_by_mac(plan.primary_mac)
            .await
            .map_err(wrap)?
            .ok_or(HostNetError::LinkNotFound {
                eni: "primary".into(),
                mac: plan.primary_mac,
                tries: 1,
            })?;
        if link.mtu != plan.mtu {
            self.nl.set_mtu(link.index, plan.mtu).await.map_err(wrap)?;
        }
        let rule = fwmark_rule(plan.snat.connmark);
        if plan.snat.wants_fwmark_rule() {
            self.nl.add_rule(&rule).await.map_err(wrap)?;
        } else {
            self.nl.delete_rule(&rule).await.map_err(wrap)?;
        }
        let mut snat = SnatPlan {
            primary_if: link.name,
            ..plan.snat.clone()
        };
        if snat.veth_prefix.is_empty() {
            snat.veth_prefix.clone_from(&self.veth_prefix);
        }
        self.snat.apply(&snat).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    use super::*;
    use crate::config::RandomizeSnat;
    use crate::host::snat::CommandIptables;
    use crate::host::HostNetwork;
    use datapath::Netlink;
    use std::os::fd::AsRawFd;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// The real thing in a throwaway namespace (removed by the kernel when the test ends): ENI setup and
    /// teardown over netlink, node-wide rules and SNAT through the machine's iptables, each applied twice.
    #[tokio::test]
    async fn real_netlink_and_iptables_setup_is_idempotent_and_undone() {
        if !is_root() {
            eprintln!("skipped: needs root to create a network namespace");
            return;
        }
        let ns = datapath::new_anonymous_netns().expect("netns");
        let nl = Netlink::connect_file(&ns).expect("netlink");
        let ns_path = format!("/proc/{}/fd/{}", std::process::id(), ns.as_raw_fd());
        let primary_mac = MacAddr([0x0e, 0, 0, 0, 0, 1]);
        let eni_mac = MacAddr([0x0e, 0, 0, 0, 0, 2]);
        for (name, peer, mac) in [("eth0", "p0", primary_mac), ("eth1", "p1", eni_mac)] {
            crate::host::test_veth(&nl, name, peer, Some(mac)).await;
        }
        let host = NetlinkHost::new(nl.clone(), Arc::new(ec2_api::clock::SystemClock::default()))
            .with_iptables(Arc::new(CommandIptables::in_netns(&ns_path)));
        let subnet: ipnetwork::Ipv4Network = "10.0.0.0/20".parse().expect("cidr");
        let eni = Eni::new(
            "eni-1",
            eni_mac,
            1,
            "10.0.0.20".parse().expect("ip"),
            subnet,
        );
        let mut plan = HostPlan {
            primary_mac,
            mtu: 9001,
            snat: SnatPlan {
                primary_ip: "10.0.0.4".parse().expect("ip"),
                primary_if: String::new(),
                vpc_cidrs: vec!["10.0.0.0/16".parse().expect("cidr")],
                exclude_cidrs: Vec::new(),
                external_snat: false,
                randomize: RandomizeSnat::Prng,
                connmark: 0x80,
                node_port_support: true,
                veth_prefix: String::new(),
            },
        };
        let save = || {
            let out = std::process::Command::new("nsenter")
                .arg(format!("--net={ns_path}"))
                .args(["iptables", "-w", "5", "-t", "nat", "-S"])
                .output()
                .expect("iptables -S");
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        for _ in 0..2 {
            host.setup_host(&plan).await.expect("setup host");
            host.setup_eni(&eni, 9001).await.expect("setup eni");
        }
        let rules = nl.rules::<Ipv4Addr>().await.expect("rules");
        assert_eq!(
            rules
                .iter()
                .filter(|r| r.priority == 32765 && r.table == 2)
                .count(),
            1,
            "{rules:?}"
        );
        assert_eq!(
            rules
                .iter()
                .filter(|r| r.priority == FWMARK_RULE_PRIORITY && r.fwmark == Some((0x80, 0x80)))
                .count(),
            1
        );
        let table = nl.routes::<Ipv4Addr>(2).await.expect("routes");
        assert!(table
            .iter()
            .any(|r| r.prefix_len == 0 && r.gateway == Some("10.0.0.1".parse().expect("gw"))));
        let eth1 = nl.link_by_mac(eni_mac).await.expect("link").expect("eth1");
        assert_eq!((eth1.mtu, eth1.up), (9001, true));
        let nat = save();
        assert_eq!(nat.matches("-A POSTROUTING").count(), 1, "{nat}");
        assert!(nat.contains("--to-source 10.0.0.4"), "{nat}");
        host.setup_host(&plan).await.expect("again");
        assert_eq!(save(), nat, "re-applying changes nothing");

        host.teardown_eni(&eni).await.expect("teardown");
        host.teardown_eni(&eni).await.expect("teardown twice");
        assert!(nl.routes::<Ipv4Addr>(2).await.expect("routes").is_empty());
        assert!(!nl
            .rules::<Ipv4Addr>()
            .await
            .expect("rules")
            .iter()
            .any(|r| r.priority == 32765));

        plan.snat.external_snat = true;
        plan.snat.node_port_support = false;
        host.setup_host(&plan).await.expect("snat off");
        let nat = save();
        assert!(!nat.contains("AWS"), "{nat}");
        assert!(!nl
            .rules::<Ipv4Addr>()
            .await
            .expect("rules")
            .iter()
            .any(|r| r.priority == FWMARK_RULE_PRIORITY));
    }
}
