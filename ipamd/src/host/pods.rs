//! The host side of pods, as restart recovery sees it.
//!
//! A pod's host side is its veth (named from its namespace and name, [`datapath::host_veth_name`]), rule 512
//! `to <ip> lookup main`, rule 1536 `from <ip> lookup <ENI table>` (secondary ENIs only) and the `/32` route to
//! the veth. The plugin creates and removes them ([`datapath::pod`]); ipamd only looks for the veth of a pod it
//! restored from the checkpoint, and removes the rules and route of one whose veth is gone (the plugin's DEL
//! came while ipamd was down), so that the address can be handed out again.
//!
//! When an address goes back to the pool, the flows conntrack still holds for it are deleted
//! ([`FlowReaper`], in batches): a new pod given the address must not inherit the old pod's NAT and marks.

use std::net::Ipv4Addr;

use datapath::pod::PodTeardown;
use datapath::{Netlink, NetlinkError};

/// Whether the link `name` exists in `nl`'s namespace.
pub(super) async fn veth_exists(nl: &Netlink, name: &str) -> Result<bool, NetlinkError> {
    Ok(nl.link_by_name(name).await?.is_some())
}

/// Removes rules 512/1536 and the host route of the pod address `ip` (not the veth); returns every failure.
pub(super) async fn remove_routing(nl: &Netlink, ip: Ipv4Addr) -> Vec<NetlinkError> {
    datapath::pod::teardown(
        nl,
        &PodTeardown {
            ip: Some(ip),
            ..PodTeardown::default()
        },
    )
    .await
}

/// Deletes released addresses' conntrack flows in the background, in batches: the worker waits until releases
/// pause for [`FLOW_QUIET`] (at most [`FLOW_BATCH_MAX`] after the first), then one dump of the table serves every
/// address released meanwhile. So a burst of DELs costs one dump, run between DELs rather than against each one,
/// and DEL never waits for it. The address's cooldown (`IP_COOLDOWN_PERIOD`, 30 s by default) must outlast
/// [`FLOW_BATCH_MAX`], or a reused address could lose its new pod's first flows.
pub(super) const FLOW_QUIET: std::time::Duration = std::time::Duration::from_millis(200);
/// See [`FlowReaper`].
pub(super) const FLOW_BATCH_MAX: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Default)]
pub(super) struct FlowReaper {
    pending: std::sync::Mutex<std::collections::BTreeSet<Ipv4Addr>>,
    wake: tokio::sync::Notify,
    started: std::sync::atomic::AtomicBool,
}

impl FlowReaper {
    /// Queues `ip`; starts the worker on first use (nothing happens outside a tokio runtime).
    pub(super) fn queue(
        self: &std::sync::Arc<Self>,
        ip: Ipv4Addr,
        clock: &std::sync::Arc<dyn ec2_api::clock::Clock>,
    ) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(ip);
        if !self.started.swap(true, std::sync::atomic::Ordering::AcqRel) {
            rt.spawn(std::sync::Arc::clone(self).run(std::sync::Arc::clone(clock)));
        }
        self.wake.notify_one();
    }

    async fn run(self: std::sync::Arc<Self>, clock: std::sync::Arc<dyn ec2_api::clock::Clock>) {
        loop {
            self.wake.notified().await;
            let first = clock.now();
            while clock.now().saturating_sub(first) < FLOW_BATCH_MAX {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = clock.sleep(FLOW_QUIET) => break,
                }
            }
            let batch = std::mem::take(
                &mut *self
                    .pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            if batch.is_empty() {
                continue;
            }
            let ips = batch.clone();
            let res = tokio::task::spawn_blocking(move || {
                datapath::conntrack::Conntrack::open()?
                    .delete_flows_where(|f| ips.iter().any(|ip| f.involves(*ip)))
            })
            .await;
            match res {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(addresses = ?batch, flows = n,
                    "deleted the conntrack flows of released addresses"),
                Ok(Err(e)) => tracing::warn!(addresses = ?batch, error = %e,
                    "could not delete the conntrack flows of released addresses"),
                Err(e) => tracing::warn!(error = %e, "conntrack worker failed"),
            }
        }
    }
}
