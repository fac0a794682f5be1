//! CNI DEL: give the IP back and remove the pod's network, in every situation runtimes produce.
//!
//! - ipamd answers: it tells us the IP it released; we remove that IP's rules and route at once (so the address
//!   can be reused), and the veth either ourselves or, when ipamd took it, ipamd's reaper in the background.
//! - ipamd answers that it held nothing for the container: nothing is removed (below), success.
//! - ipamd is down or errs: tear down what prevResult names and the kernel confirms, and succeed anyway (as the
//!   anchor); the IP stays assigned in ipamd until its reconcile finds the pod's veth gone (`ipamd::reconcile`).
//!   A pod must never hang in Terminating because the daemon restarts.
//! - containerd's second DEL (no netns, no prevResult) and repeated DELs: nothing left to remove, success.
//!
//! The veth. Deleting a veth pair costs the kernel RCU grace periods (about 30 ms, up to 80 ms) against well
//! under a millisecond for everything else, so DEL offers it to ipamd: before DelNetwork we look up the host veth
//! (name and interface index) and send it with our network namespace's identity (tags 100+ of
//! `DelNetworkRequest`). When the reply says `VethDeferred`, ipamd's reaper deletes the link by that index later
//! (see `ipamd::reaper`), and we leave the pod end alone too if it is that veth's peer (deleting either end
//! removes the pair). Any other reply (the anchor's ipamd, ipamd refusing because its queue is full or it runs in
//! another namespace, ipamd unreachable or failing) means we delete the veth ourselves, exactly as without the
//! offer. A veth still present after DEL returns is therefore expected for a moment; a re-ADD of the pod replaces
//! it (see `datapath::pod::setup`) and the reaper never deletes the new one.
//!
//! What DEL removes is only what it can tie to this container (`datapath::pod::teardown_owned`):
//! - ipamd's answer decides the address. When ipamd answers that it held nothing for (network, container,
//!   ifname), DEL removes nothing at all: the host veth name comes from the pod's name, which every sandbox of a
//!   pod shares, so a repeated DEL of an old sandbox (containerd's second DEL, kubelet's sandbox GC) would
//!   otherwise cut off the pod's new sandbox; and a prevResult may name another pod's address or interface.
//! - prevResult is used only when ipamd cannot be asked, and then only as far as the kernel confirms it (below).
//!   A malformed prevResult is logged and ignored, never a reason to keep the address.
//! - The host veth goes only when it is a veth of the pod name pattern (prefix + 11 hex) and is either the peer
//!   of `CNI_IFNAME` in `CNI_NETNS` or the link the host route to the address goes through. It is offered to
//!   ipamd's reaper only in the first case, the only one known before DelNetwork.
//! - Routes and rules: the route only through that veth, the rules only when no route to the address is left,
//!   so a DEL does not take the routing of a pod the address was handed to meanwhile.
//!
//! With ipamd unreachable and a prevResult that names another live pod's address and veth, the kernel confirms
//! the lie (the route does go through that veth): DEL cannot tell, exactly as the anchor's cannot. That needs a
//! caller with the runtime's privileges.
//!
//! Teardown keeps going past failures and reports all of them.

use std::net::IpAddr;
use std::time::Duration;

use cni_types::CniEnv;
use datapath::pod::v6::OwnedTeardown6;
use datapath::pod::{self, OwnedTeardown};
use datapath::{LinkInfo, Netlink, NetnsId};

use crate::client::{self, rpc_error};
use crate::conf::PluginConf;
use crate::error::PluginError;
use crate::identity::PodIdentity;

/// Runs DEL.
pub async fn del(env: &CniEnv, conf: &PluginConf, timeout: Duration) -> Result<(), PluginError> {
    let pod = PodIdentity::from_env(env);
    let prev = match conf.net.prev_result() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e.msg, "DEL: prevResult unreadable; ignored");
            None
        }
    };
    // The pod's one address, IPv4 or IPv6 (crate::family).
    let prev_ip: Option<IpAddr> = prev
        .as_ref()
        .and_then(|r| r.ips.first().map(|c| c.address.ip()));
    let prev_veth = prev.as_ref().and_then(|r| {
        r.interfaces
            .iter()
            .find(|i| i.sandbox.is_none() && datapath::is_pod_veth_name(&i.name, &conf.veth_prefix))
            .map(|i| i.name.clone())
    });

    let host_veth = prev_veth.unwrap_or_else(|| pod.host_veth(&conf.veth_prefix));
    // A netlink failure must not keep the IP from being returned: it is reported after DelNetwork.
    let host = Netlink::connect(None);
    // The connection to ipamd is opened while the kernel is asked about the veth (independent requests).
    let socket = conf.socket();
    let look = async {
        // The host veth as it is now: only a veth of the pod name pattern is a candidate.
        let looked_up = async {
            match &host {
                Ok(host) => host.link_by_name(&host_veth).await,
                Err(_) => Ok(None),
            }
        };
        let (looked_up, pod_end) = tokio::join!(
            looked_up,
            pod::find_pod_end(env.netns.as_deref(), env.ifname.as_deref())
        );
        let host_link = match looked_up {
            Ok(link) => link.filter(|l| l.is_veth),
            Err(e) => {
                tracing::warn!(veth = %host_veth, error = %e, "cannot look up the host veth");
                None
            }
        };
        let pod_end = match pod_end {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look at the pod's interface");
                None
            }
        };
        (host_link, pod_end)
    };
    let (connected, (host_link, pod_end)) = tokio::join!(client::connect(&socket, timeout), look);
    // Offered to ipamd's reaper only when it is this container's pair: its peer is CNI_IFNAME in CNI_NETNS.
    let peer_tied = host_link.as_ref().filter(|h| {
        pod_end
            .as_ref()
            .is_some_and(|p| pod::is_peer_of(&p.link, h))
    });
    let offer = match (peer_tied, datapath::current_netns_id()) {
        (Some(link), Ok(netns)) => Some((link, netns)),
        (Some(_), Err(e)) => {
            tracing::warn!(error = %e, "cannot identify our network namespace; deleting the veth here");
            None
        }
        (None, _) => None,
    };

    let released = match connected {
        Ok(ipamd) => release(ipamd, env, conf, timeout, offer).await,
        Err(e) => Err(e.into()),
    };
    let (ip, deferred, policy_mode): (Option<IpAddr>, bool, &str) = match &released {
        // Nothing held for this container (a repeated or stale DEL): nothing on the host is ours, and the policy
        // agent is not told either, since the pod's name may belong to a newer sandbox whose policies are live.
        Ok(r) if r.ip.is_none() => {
            tracing::info!(
                container = ?env.container_id,
                "DEL done: ipamd holds no address for this container, so nothing here is its to remove"
            );
            return Ok(());
        }
        Ok(r) => (r.ip, r.veth_deferred, &r.policy_mode),
        Err(e) => {
            tracing::warn!(error = %e, "DelNetwork failed; tearing down what prevResult names and the kernel confirms");
            (prev_ip, false, "")
        }
    };
    let host = host.map_err(|e| PluginError::Teardown(e.to_string()))?;
    let errors = match ip {
        Some(IpAddr::V6(ip)) => {
            pod::v6::teardown_owned6(
                &host,
                &OwnedTeardown6 {
                    ip: Some(ip),
                    host_veth: host_link.as_ref(),
                    pod_end: pod_end.as_ref(),
                    veth_deferred: deferred,
                },
            )
            .await
        }
        ip => {
            pod::teardown_owned(
                &host,
                &OwnedTeardown {
                    ip: ip.and_then(|ip| match ip {
                        IpAddr::V4(ip) => Some(ip),
                        IpAddr::V6(_) => None,
                    }),
                    host_veth: host_link.as_ref(),
                    pod_end: pod_end.as_ref(),
                    veth_deferred: deferred,
                },
            )
            .await
        }
    };
    tracing::info!(
        container = ?env.container_id,
        ip = ?ip,
        veth = %host_veth,
        veth_deferred = deferred,
        errors = errors.len(),
        "DEL done"
    );
    // The policy agent, when ipamd says there is one; never fails the DEL (see crate::netpol).
    crate::netpol::delete(conf, &pod, policy_mode).await;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PluginError::Teardown(
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        ))
    }
}

/// What ipamd said to a DEL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Released {
    /// The IP it released, either family (None if it held none for this container).
    ip: Option<IpAddr>,
    /// It took the offered host veth: its reaper deletes it.
    veth_deferred: bool,
    /// ipamd's `NetworkPolicyMode` (empty: no policy agent).
    policy_mode: String,
}

/// Asks ipamd to release the container's IP, offering it the host veth (`offer`: the link and the namespace we
/// found it in).
async fn release(
    mut ipamd: aws_cni_proto::CniBackendClient<tonic::transport::Channel>,
    env: &CniEnv,
    conf: &PluginConf,
    timeout: Duration,
    offer: Option<(&LinkInfo, NetnsId)>,
) -> Result<Released, PluginError> {
    let socket = conf.socket();
    let mut request = client::del_request(env, conf, "PodDeleted");
    if let Some((link, netns)) = offer {
        request.host_veth_name = link.name.clone();
        request.host_veth_if_index = link.index;
        request.host_netns_dev = netns.dev;
        request.host_netns_ino = netns.ino;
    }
    let reply = ipamd
        .del_network(request)
        .await
        .map_err(|s| rpc_error(&socket, "DelNetwork", timeout, s))?
        .into_inner();
    if !reply.success {
        return Err(PluginError::Teardown(format!(
            "ipamd refused DelNetwork: {}",
            reply.failure_message
        )));
    }
    Ok(Released {
        ip: crate::family::released_address(reply.ip_allocation_metadata.first()),
        // Only an offered veth can have been taken.
        veth_deferred: offer.is_some() && reply.veth_deferred,
        policy_mode: reply.network_policy_mode,
    })
}
