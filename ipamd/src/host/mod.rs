//! The node's host networking: the one seam between the daemon and the kernel of its own network namespace.
//!
//! ```text
//!   engine (ENI lifecycle, reconcile) ─┐
//!   restart recovery ──────────────────┼─▶ HostNetwork ─┬─▶ NetlinkHost ─▶ datapath::Netlink + iptables
//!   veth reaper ───────────────────────┘   (one trait)  └─▶ FakeHost (tests, `fakes` feature)
//! ```
//!
//! [`HostNetwork`] names everything ipamd does to the host, in three groups, one file each:
//! - [`eni`]: an ENI's link, address, route table and rule; node-wide settings (MTU, the fwmark rule, and the
//!   SNAT/connmark rules of [`snat`]);
//! - [`pods`]: what restart recovery needs: does a pod's host veth exist, and removing a gone pod's rules and
//!   route;
//! - [`links`]: what the veth reaper needs: a link's name by index, and deleting a link by index.
//!
//! [`NetlinkHost`] is the real implementation (one netlink socket in ipamd's namespace, and the machine's
//! iptables). The test double, `fakes::FakeHost`, records what was asked and keeps veths, links and iptables
//! rules in memory; it is compiled only for tests and with the `fakes` feature (which the bench enables), never
//! into the product.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datapath::{Netlink, NetlinkError};

use crate::core::datastore::Eni;
use crate::core::snapshot::SnatReport;
use ec2_api::clock::Clock;

pub mod drift;
pub mod eni;
#[cfg(any(test, feature = "fakes"))]
pub mod fakes;
pub mod links;
pub mod pods;
pub mod snat;

pub use eni::{HostNetError, HostPlan, FWMARK_RULE_PRIORITY};

/// Everything the daemon does to its host's network. Every method is idempotent.
#[async_trait]
pub trait HostNetwork: Send + Sync + 'static {
    // === ENIs ===

    /// Makes `eni` usable: link, MTU, address, route table, rule.
    async fn setup_eni(&self, eni: &Eni, mtu: u32) -> Result<(), HostNetError>;
    /// Undoes [`HostNetwork::setup_eni`] for an ENI being removed: its rule and its table.
    async fn teardown_eni(&self, eni: &Eni) -> Result<(), HostNetError>;
    /// Node-wide settings: primary MTU, fwmark rule, SNAT/connmark.
    async fn setup_host(&self, plan: &HostPlan) -> Result<(), HostNetError>;

    // === pods ===

    /// Whether the host-side veth `name` exists.
    async fn veth_exists(&self, name: &str) -> Result<bool, NetlinkError>;
    /// Removes what a pod with `ip` had on the host: rules 512/1536 and the /32 route. Returns every failure.
    async fn remove_pod_routing(&self, ip: Ipv4Addr) -> Vec<NetlinkError>;
    /// Drift repair: brings the rules and routes of `pods` back, and removes those of `pool` addresses no pod
    /// holds (see [`drift`]).
    async fn repair_pods(
        &self,
        pods: &[drift::PodRoute],
        pool: &std::collections::BTreeSet<Ipv4Addr>,
    ) -> Result<drift::Repairs, NetlinkError>;
    /// Has the conntrack flows of `ip` (an address going back to the pool) deleted, in the background: the
    /// caller (DEL) does not wait, and the address's cooldown covers the deletion.
    fn forget_flows(&self, ip: Ipv4Addr);

    // === links ===

    /// The name of the link with interface index `index`; `None` when there is none.
    async fn link_name(&self, index: u32) -> Result<Option<String>, NetlinkError>;
    /// Deletes the link with interface index `index`; `false` when it was already gone.
    async fn delete_link(&self, index: u32) -> Result<bool, NetlinkError>;

    // === reporting ===

    /// The SNAT/connmark backend chosen for this host, when one was chosen.
    fn snat_report(&self) -> Option<SnatReport> {
        None
    }
}

/// [`HostNetwork`] over netlink in the daemon's namespace and the machine's `iptables`; waits (for a hot-plugged
/// ENI's link to appear) on the daemon's clock.
#[derive(Clone)]
pub struct NetlinkHost {
    nl: Netlink,
    clock: Arc<dyn Clock>,
    link_wait: Duration,
    snat: Arc<snat::Backends>,
    /// Why the SNAT backend was chosen (startup detection), for reporting.
    snat_selection: Option<snat::backend::Selection>,
    /// The pods' host veth prefix, for SNAT plans that leave it empty.
    veth_prefix: String,
    flows: Arc<pods::FlowReaper>,
}

impl std::fmt::Debug for NetlinkHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetlinkHost")
            .field("nl", &self.nl)
            .field("link_wait", &self.link_wait)
            .field("snat", &self.snat)
            .field("veth_prefix", &self.veth_prefix)
            .finish_non_exhaustive()
    }
}

impl NetlinkHost {
    /// Netlink in the daemon's namespace and the machine's `iptables`.
    pub fn new(nl: Netlink, clock: Arc<dyn Clock>) -> NetlinkHost {
        NetlinkHost {
            nl,
            clock,
            link_wait: Duration::from_millis(200),
            snat: Arc::new(snat::Backends::new(
                Arc::new(snat::IptablesBackend {
                    kind: snat::BackendKind::IptablesNft,
                    iptables: Arc::new(snat::CommandIptables::default()),
                }),
                Vec::new(),
            )),
            snat_selection: None,
            veth_prefix: String::new(),
            flows: Arc::default(),
        }
    }

    /// Uses another iptables (a double, or other binaries) as the only SNAT backend.
    pub fn with_iptables(self, iptables: Arc<dyn snat::Iptables>) -> NetlinkHost {
        self.with_snat(snat::Backends::new(
            Arc::new(snat::IptablesBackend {
                kind: snat::BackendKind::IptablesNft,
                iptables,
            }),
            Vec::new(),
        ))
    }

    /// Uses these SNAT backends (see [`snat::backend`]).
    pub fn with_snat(mut self, backends: snat::Backends) -> NetlinkHost {
        self.snat = Arc::new(backends);
        self
    }

    /// Records why the SNAT backend was chosen (reported by [`HostNetwork::snat_report`]).
    pub fn with_snat_selection(mut self, selection: snat::backend::Selection) -> NetlinkHost {
        self.snat_selection = Some(selection);
        self
    }

    /// The pods' host veth prefix, used by SNAT plans that leave theirs empty.
    pub fn with_veth_prefix(mut self, prefix: impl Into<String>) -> NetlinkHost {
        self.veth_prefix = prefix.into();
        self
    }

    /// The SNAT backend in use.
    pub fn snat_backend(&self) -> snat::BackendKind {
        self.snat.kind()
    }
}

#[async_trait]
impl HostNetwork for NetlinkHost {
    async fn setup_eni(&self, eni: &Eni, mtu: u32) -> Result<(), HostNetError> {
        self.configure_eni(eni, mtu).await
    }

    async fn teardown_eni(&self, eni: &Eni) -> Result<(), HostNetError> {
        self.unconfigure_eni(eni).await
    }

    async fn setup_host(&self, plan: &HostPlan) -> Result<(), HostNetError> {
        self.configure_host(plan).await
    }

    async fn veth_exists(&self, name: &str) -> Result<bool, NetlinkError> {
        pods::veth_exists(&self.nl, name).await
    }

    async fn remove_pod_routing(&self, ip: Ipv4Addr) -> Vec<NetlinkError> {
        pods::remove_routing(&self.nl, ip).await
    }

    async fn repair_pods(
        &self,
        pods: &[drift::PodRoute],
        pool: &std::collections::BTreeSet<Ipv4Addr>,
    ) -> Result<drift::Repairs, NetlinkError> {
        let prefix = if self.veth_prefix.is_empty() {
            snat::plan::DEFAULT_VETH_PREFIX
        } else {
            &self.veth_prefix
        };
        drift::repair(&self.nl, pods, pool, prefix).await
    }

    fn forget_flows(&self, ip: Ipv4Addr) {
        self.flows.queue(ip, &self.clock);
    }

    async fn link_name(&self, index: u32) -> Result<Option<String>, NetlinkError> {
        links::name_of(&self.nl, index).await
    }

    /// Deleting a veth keeps the sending thread inside the kernel for tens of milliseconds (`unregister_netdevice`
    /// waits for RCU grace periods), and netlink requests run in the sender's `sendmsg`. On the daemon's shared
    /// connection that thread is a runtime worker, which then serves no gRPC request meanwhile: the benchmark's ADD
    /// breakdown showed ADDs waiting about 40 ms between the plugin's request and ipamd's handler exactly then. So
    /// the delete runs on a blocking-pool thread with a netlink socket of its own (same namespace: the daemon's
    /// threads all live in it), and only this background call waits.
    async fn delete_link(&self, index: u32) -> Result<bool, NetlinkError> {
        let joined = tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(NetlinkError::Socket)?;
            rt.block_on(async {
                let nl = Netlink::connect(None)?;
                links::delete(&nl, index).await
            })
        })
        .await;
        joined.unwrap_or(Err(NetlinkError::HelperThread))
    }

    fn snat_report(&self) -> Option<SnatReport> {
        self.snat_selection.as_ref().map(|s| SnatReport {
            backend: s.kind.as_str().to_string(),
            family: match s.kind {
                snat::BackendKind::Nftables => "nftables",
                _ => "iptables",
            }
            .to_string(),
            reason: s.reason.clone(),
        })
    }
}

/// A veth pair `name`/`peer` in `nl`'s namespace, both ends up: the stand-in for an ENI or a pod's host veth in
/// the root-only tests of this module's rooms.
#[cfg(test)]
pub(crate) async fn test_veth(
    nl: &Netlink,
    name: &str,
    peer: &str,
    mac: Option<datapath::MacAddr>,
) {
    nl.create_veth(&datapath::VethSpec {
        name,
        mac,
        mtu: 1500,
        peer_name: peer,
        peer_mac: None,
        peer_netns: None,
    })
    .await
    .expect("veth");
    for end in [name, peer] {
        let l = nl.link_by_name(end).await.expect("link").expect("exists");
        nl.set_up(l.index).await.expect("up");
    }
}
