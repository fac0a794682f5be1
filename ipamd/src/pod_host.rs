//! The host's view of pods, for checking restored assignments after a restart (see
//! [`crate::engine::recovery`]): whether a pod's host veth exists, and removing a gone pod's routing.

use std::net::Ipv4Addr;

use async_trait::async_trait;
use datapath::pod::PodTeardown;
use datapath::{Netlink, NetlinkError};

/// The host's view of pods, for checking restored assignments.
#[async_trait]
pub trait PodHost: Send + Sync + 'static {
    /// Whether the host-side veth `name` exists.
    async fn veth_exists(&self, name: &str) -> Result<bool, NetlinkError>;
    /// Removes what a pod with `ip` had on the host: rules 512/1536 and the /32 route. Returns every failure.
    async fn remove_pod_routing(&self, ip: Ipv4Addr) -> Vec<NetlinkError>;
}

/// [`PodHost`] over netlink in the daemon's namespace.
#[derive(Debug, Clone)]
pub struct NetlinkPodHost {
    nl: Netlink,
}

impl NetlinkPodHost {
    pub fn new(nl: Netlink) -> NetlinkPodHost {
        NetlinkPodHost { nl }
    }
}

#[async_trait]
impl PodHost for NetlinkPodHost {
    async fn veth_exists(&self, name: &str) -> Result<bool, NetlinkError> {
        Ok(self.nl.link_by_name(name).await?.is_some())
    }

    async fn remove_pod_routing(&self, ip: Ipv4Addr) -> Vec<NetlinkError> {
        datapath::pod::teardown(
            &self.nl,
            &PodTeardown {
                ip: Some(ip),
                ..PodTeardown::default()
            },
        )
        .await
    }
}

#[cfg(any(test, feature = "fakes"))]
/// A [`PodHost`] double: the veths that exist, and the addresses whose routing was removed.
#[derive(Debug, Clone, Default)]
pub struct FakePodHost {
    pub veths: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
    pub removed: std::sync::Arc<std::sync::Mutex<Vec<Ipv4Addr>>>,
}

#[cfg(any(test, feature = "fakes"))]
#[async_trait]
impl PodHost for FakePodHost {
    async fn veth_exists(&self, name: &str) -> Result<bool, NetlinkError> {
        Ok(crate::sync::lock(&self.veths).contains(name))
    }

    async fn remove_pod_routing(&self, ip: Ipv4Addr) -> Vec<NetlinkError> {
        crate::sync::lock(&self.removed).push(ip);
        Vec::new()
    }
}
