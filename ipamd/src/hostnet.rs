//! Host networking for ENIs (anchor-facts §2.3, §3.6): what makes a secondary ENI usable by pods.
//!
//! For a secondary ENI on device N (route table N+1):
//! - find its link by MAC (retrying: the kernel may not have finished hot-plugging it), set the MTU, bring it up;
//! - give it the ENI's primary IP, and remove the connected subnet route the kernel then adds to main (it would
//!   steer the whole subnet out of this ENI);
//! - table N+1: `<gw>/32 dev ethN scope link` and `default via <gw> dev ethN`, gw = subnet base + 1;
//! - rule 32765: `from <ENI primary IP> lookup N+1`.
//!
//! The primary ENI only gets its MTU. Everything is idempotent, so a restarted daemon simply re-applies it.
//! SNAT and connmark rules come with the pool engine's issue.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datapath::{MacAddr, Netlink, NetlinkError, RouteSpec, RuleSpec, ENI_PRIMARY_IP_RULE_PRIORITY};

use crate::datastore::Eni;
use crate::sim::fabric::subnet_gateway;

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
}

/// The host-side effects of ENIs.
#[async_trait]
pub trait HostNetwork: Send + Sync + 'static {
    /// Makes `eni` usable: link, MTU, address, route table, rule. Idempotent.
    async fn setup_eni(&self, eni: &Eni, mtu: u32) -> Result<(), HostNetError>;
}

/// The real thing, over netlink in the daemon's namespace.
#[derive(Debug, Clone)]
pub struct NetlinkHostNetwork {
    nl: Netlink,
    link_wait: Duration,
}

impl NetlinkHostNetwork {
    pub fn new(nl: Netlink) -> NetlinkHostNetwork {
        NetlinkHostNetwork {
            nl,
            link_wait: Duration::from_millis(200),
        }
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
        self.nl
            .add_rule(&RuleSpec {
                priority: ENI_PRIMARY_IP_RULE_PRIORITY,
                src: Some((eni.primary_ip, 32)),
                dst: None,
                fwmark: None,
                table: eni.route_table,
            })
            .await
            .map_err(wrap)?;
        Ok(())
    }
}

/// A double that records which ENIs were set up (for tests of the daemon's logic without a kernel).
#[derive(Debug, Default, Clone)]
pub struct RecordingHostNetwork {
    pub setups: Arc<std::sync::Mutex<Vec<String>>>,
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
}
