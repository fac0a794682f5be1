//! Host networking for ENIs (anchor-facts §2.3, §3.6): what makes a secondary ENI usable by pods.
//!
//! For a secondary ENI on device N (route table N+1):
//! - find its link by MAC (retrying: the kernel may not have finished hot-plugging it), set the MTU, bring it up;
//! - give it the ENI's primary IP, and remove the connected subnet route the kernel then adds to main (it would
//!   steer the whole subnet out of this ENI);
//! - table N+1: `<gw>/32 dev ethN scope link` and `default via <gw> dev ethN`, gw = subnet base + 1;
//! - rule 32765: `from <ENI primary IP> lookup N+1`.
//!
//! The primary ENI only gets its MTU. Removing an ENI ([`HostNetwork::teardown_eni`]) deletes its rule and
//! empties its table. Node-wide ([`HostNetwork::setup_host`]): the primary ENI's MTU, rule 1024
//! `fwmark <mark>/<mark> lookup main` (non-VPC pod traffic leaves through the primary ENI) and the SNAT/connmark
//! iptables rules of [`crate::snat`]. Everything is idempotent, so a restarted daemon, or the reconcile timer
//! repairing drift, simply re-applies it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datapath::{MacAddr, Netlink, NetlinkError, RouteSpec, RuleSpec, ENI_PRIMARY_IP_RULE_PRIORITY};

use crate::datastore::Eni;
use crate::sim::fabric::subnet_gateway;
use crate::snat::{CommandIptables, Iptables, RecordingIptables, SnatError, SnatPlan};

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

/// The host-side effects of ENIs.
#[async_trait]
pub trait HostNetwork: Send + Sync + 'static {
    /// Makes `eni` usable: link, MTU, address, route table, rule. Idempotent.
    async fn setup_eni(&self, eni: &Eni, mtu: u32) -> Result<(), HostNetError>;
    /// Undoes [`HostNetwork::setup_eni`] for an ENI being removed: its rule and its table. Idempotent.
    async fn teardown_eni(&self, _eni: &Eni) -> Result<(), HostNetError> {
        Ok(())
    }
    /// Node-wide settings: primary MTU, fwmark rule, SNAT/connmark. Idempotent.
    async fn setup_host(&self, _plan: &HostPlan) -> Result<(), HostNetError> {
        Ok(())
    }
}

/// The real thing, over netlink in the daemon's namespace.
#[derive(Debug, Clone)]
pub struct NetlinkHostNetwork {
    nl: Netlink,
    link_wait: Duration,
    iptables: Arc<dyn Iptables>,
}

impl NetlinkHostNetwork {
    /// Netlink in the daemon's namespace and the machine's `iptables`.
    pub fn new(nl: Netlink) -> NetlinkHostNetwork {
        NetlinkHostNetwork {
            nl,
            link_wait: Duration::from_millis(200),
            iptables: Arc::new(CommandIptables::default()),
        }
    }

    /// Uses another iptables (a double, or other binaries).
    pub fn with_iptables(mut self, iptables: Arc<dyn Iptables>) -> NetlinkHostNetwork {
        self.iptables = iptables;
        self
    }
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

#[async_trait]
impl HostNetwork for NetlinkHostNetwork {
    async fn setup_eni(&self, eni: &Eni, mtu: u32) -> Result<(), HostNetError> {
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
            tokio::time::sleep(self.link_wait * (attempt + 1)).await;
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
        let gw = subnet_gateway(eni.subnet);
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

    async fn teardown_eni(&self, eni: &Eni) -> Result<(), HostNetError> {
        let wrap = |source| HostNetError::Netlink {
            eni: eni.id.clone(),
            source,
        };
        if eni.is_primary || eni.route_table == datapath::MAIN_TABLE {
            return Ok(());
        }
        self.nl.delete_rule(&eni_rule(eni)).await.map_err(wrap)?;
        for route in self.nl.routes(eni.route_table).await.map_err(wrap)? {
            self.nl.delete_route(&route).await.map_err(wrap)?;
        }
        Ok(())
    }

    async fn setup_host(&self, plan: &HostPlan) -> Result<(), HostNetError> {
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
        let snat = SnatPlan {
            primary_if: link.name,
            ..plan.snat.clone()
        };
        crate::snat::apply(self.iptables.as_ref(), &snat).await?;
        Ok(())
    }
}

/// A double that records which ENIs were set up and torn down, and keeps SNAT rules in an in-memory iptables
/// (for tests of the daemon's logic without a kernel).
#[derive(Debug, Default, Clone)]
pub struct RecordingHostNetwork {
    pub setups: Arc<std::sync::Mutex<Vec<String>>>,
    pub teardowns: Arc<std::sync::Mutex<Vec<String>>>,
    pub iptables: RecordingIptables,
}

impl RecordingHostNetwork {
    /// ENIs set up (in order, repeats included).
    pub fn setups(&self) -> Vec<String> {
        self.setups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// ENIs torn down.
    pub fn teardowns(&self) -> Vec<String> {
        self.teardowns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait]
impl HostNetwork for RecordingHostNetwork {
    async fn setup_eni(&self, eni: &Eni, _mtu: u32) -> Result<(), HostNetError> {
        self.setups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(eni.id.clone());
        Ok(())
    }

    async fn teardown_eni(&self, eni: &Eni) -> Result<(), HostNetError> {
        self.teardowns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(eni.id.clone());
        Ok(())
    }

    async fn setup_host(&self, plan: &HostPlan) -> Result<(), HostNetError> {
        let snat = SnatPlan {
            primary_if: "eth0".into(),
            ..plan.snat.clone()
        };
        crate::snat::apply(&self.iptables, &snat).await?;
        Ok(())
    }
}
