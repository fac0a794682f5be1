//! CNI DEL: give the IP back and remove the pod's network, in every situation runtimes produce.
//!
//! - ipamd answers: it tells us the IP it released; we remove that IP's rules and route at once (so the address
//!   can be reused), and the veth either ourselves or, when ipamd took it, ipamd's reaper in the background.
//! - ipamd is down or errs: tear down from prevResult and succeed anyway (as the anchor); the IP stays assigned
//!   in ipamd until its reconciliation finds the pod gone. A pod must never hang in Terminating because the
//!   daemon restarts.
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
//! Teardown keeps going past failures and reports all of them.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use aws_cni_proto::DelNetworkRequest;
use cni_types::CniEnv;
use datapath::pod::{self, PodTeardown};
use datapath::{LinkInfo, Netlink, NetnsId};

use crate::client::{self, rpc_error};
use crate::conf::PluginConf;
use crate::error::PluginError;
use crate::identity::PodIdentity;

/// Runs DEL.
pub async fn del(env: &CniEnv, conf: &PluginConf, timeout: Duration) -> Result<(), PluginError> {
    let pod = PodIdentity::from_env(env);
    let prev = conf.net.prev_result()?;
    let prev_ip = prev.as_ref().and_then(|r| {
        r.ips.iter().find_map(|c| match c.address.ip() {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        })
    });
    let prev_veth = prev.as_ref().and_then(|r| {
        r.interfaces
            .iter()
            .find(|i| i.sandbox.is_none() && i.name.starts_with(&conf.veth_prefix))
            .map(|i| i.name.clone())
    });

    let host_veth = prev_veth.unwrap_or_else(|| pod.host_veth(&conf.veth_prefix));
    // A netlink failure must not keep the IP from being returned: it is reported after DelNetwork.
    let host = Netlink::connect(None);
    // The host veth as it is now, offered to ipamd. A failed lookup offers nothing: we delete it ourselves.
    let looked_up = match &host {
        Ok(host) => host.link_by_name(&host_veth).await,
        Err(_) => Ok(None),
    };
    let host_link = match looked_up {
        Ok(link) => link,
        Err(e) => {
            tracing::warn!(veth = %host_veth, error = %e, "cannot look up the host veth");
            None
        }
    };
    let offer = match (&host_link, datapath::current_netns_id()) {
        (Some(link), Ok(netns)) => Some((link, netns)),
        (Some(_), Err(e)) => {
            tracing::warn!(error = %e, "cannot identify our network namespace; deleting the veth here");
            None
        }
        (None, _) => None,
    };

    let released = release(env, conf, &pod, timeout, offer).await;
    let (ip, deferred, policy_mode): (Option<Ipv4Addr>, bool, &str) = match &released {
        Ok(r) => (r.ip.or(prev_ip), r.veth_deferred, &r.policy_mode),
        Err(e) => {
            tracing::warn!(error = %e, "DelNetwork failed; tearing down from prevResult");
            (prev_ip, false, "")
        }
    };
    let host = host.map_err(|e| PluginError::Teardown(e.to_string()))?;

    let errors = match host_link.as_ref().filter(|_| deferred) {
        // ipamd's reaper deletes the pair: only the rules and the route here, and the pod end only if it is not
        // that veth's peer.
        Some(link) => {
            let mut errors = pod::teardown(
                &host,
                &PodTeardown {
                    host_veth: None,
                    netns_path: None,
                    container_ifname: None,
                    ip,
                },
            )
            .await;
            errors.extend(
                pod::teardown_pod_end_except_peer(
                    env.netns.as_deref(),
                    env.ifname.as_deref(),
                    link,
                )
                .await,
            );
            errors
        }
        None => {
            pod::teardown(
                &host,
                &PodTeardown {
                    host_veth: Some(&host_veth),
                    netns_path: env.netns.as_deref(),
                    container_ifname: env.ifname.as_deref(),
                    ip,
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
    /// The IP it released (None if it held none for this container).
    ip: Option<Ipv4Addr>,
    /// It took the offered host veth: its reaper deletes it.
    veth_deferred: bool,
    /// ipamd's `NetworkPolicyMode` (empty: no policy agent).
    policy_mode: String,
}

/// Asks ipamd to release the container's IP, offering it the host veth (`offer`: the link and the namespace we
/// found it in).
async fn release(
    env: &CniEnv,
    conf: &PluginConf,
    pod: &PodIdentity,
    timeout: Duration,
    offer: Option<(&LinkInfo, NetnsId)>,
) -> Result<Released, PluginError> {
    let socket = conf.socket();
    let mut ipamd = client::connect(&socket, timeout).await?;
    let mut request = DelNetworkRequest {
        client_version: env!("CARGO_PKG_VERSION").into(),
        k8s_pod_name: pod.name.clone(),
        k8s_pod_namespace: pod.namespace.clone(),
        k8s_pod_infra_container_id: env.args.pod_infra_container_id.clone().unwrap_or_default(),
        reason: "PodDeleted".into(),
        container_id: env.container_id.clone().unwrap_or_default(),
        if_name: env.ifname.clone().unwrap_or_default(),
        network_name: conf.net.name.clone(),
        k8s_pod_uid: env.args.pod_uid.clone().unwrap_or_default(),
        ..Default::default()
    };
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
        ip: reply
            .ip_allocation_metadata
            .first()
            .and_then(|m| m.i_pv4_addr.parse().ok()),
        // Only an offered veth can have been taken.
        veth_deferred: offer.is_some() && reply.veth_deferred,
        policy_mode: reply.network_policy_mode,
    })
}
