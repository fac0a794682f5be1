//! CNI DEL: give the IP back and remove the pod's network, in every situation runtimes produce.
//!
//! - ipamd answers: it tells us the IP it released; we remove that IP's rules and route and the veth.
//! - ipamd is down or errs: tear down from prevResult and succeed anyway (as the anchor); the IP stays assigned
//!   in ipamd until its reconciliation finds the pod gone. A pod must never hang in Terminating because the
//!   daemon restarts.
//! - containerd's second DEL (no netns, no prevResult) and repeated DELs: nothing left to remove, success.
//!
//! Teardown keeps going past failures and reports all of them.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use aws_cni_proto::DelNetworkRequest;
use cni_types::CniEnv;
use datapath::pod::{self, PodTeardown};
use datapath::Netlink;

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

    let released = release(env, conf, &pod, timeout).await;
    let ip: Option<Ipv4Addr> = match &released {
        Ok(ip) => ip.or(prev_ip),
        Err(e) => {
            tracing::warn!(error = %e, "DelNetwork failed; tearing down from prevResult");
            prev_ip
        }
    };

    let host_veth = prev_veth.unwrap_or_else(|| pod.host_veth(&conf.veth_prefix));
    let host = Netlink::connect(None).map_err(|e| PluginError::Teardown(e.to_string()))?;
    let errors = pod::teardown(
        &host,
        &PodTeardown {
            host_veth: Some(&host_veth),
            netns_path: env.netns.as_deref(),
            container_ifname: env.ifname.as_deref(),
            ip,
        },
    )
    .await;
    tracing::info!(
        container = ?env.container_id,
        ip = ?ip,
        veth = %host_veth,
        errors = errors.len(),
        "DEL done"
    );
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

/// Returns the IP ipamd released (None if it held none for this container).
async fn release(
    env: &CniEnv,
    conf: &PluginConf,
    pod: &PodIdentity,
    timeout: Duration,
) -> Result<Option<Ipv4Addr>, PluginError> {
    let socket = conf.socket();
    let mut ipamd = client::connect(&socket, timeout).await?;
    let reply = ipamd
        .del_network(DelNetworkRequest {
            client_version: env!("CARGO_PKG_VERSION").into(),
            k8s_pod_name: pod.name.clone(),
            k8s_pod_namespace: pod.namespace.clone(),
            k8s_pod_infra_container_id: env.args.pod_infra_container_id.clone().unwrap_or_default(),
            reason: "PodDeleted".into(),
            container_id: env.container_id.clone().unwrap_or_default(),
            if_name: env.ifname.clone().unwrap_or_default(),
            network_name: conf.net.name.clone(),
            k8s_pod_uid: env.args.pod_uid.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| rpc_error(&socket, "DelNetwork", timeout, s))?
        .into_inner();
    if !reply.success {
        return Err(PluginError::Teardown(format!(
            "ipamd refused DelNetwork: {}",
            reply.failure_message
        )));
    }
    Ok(reply
        .ip_allocation_metadata
        .first()
        .and_then(|m| m.i_pv4_addr.parse().ok()))
}
