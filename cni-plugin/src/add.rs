//! CNI ADD: ask ipamd for an IP, build the pod's network, tell the network policy agent when ipamd's reply names
//! a policy mode ([`crate::netpol`]), report it. A failed ADD (the agent's failure included) undoes what it did
//! and gives the IP back (DelNetwork with Reason "SetupNSFailed", as the anchor).

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use aws_cni_proto::{AddNetworkRequest, DelNetworkRequest, FailureReason};
use cni_types::{CniEnv, CniResult, Interface, IpConfig};
use datapath::Netlink;

use crate::client::{self, rpc_error};
use crate::conf::PluginConf;
use crate::error::PluginError;
use crate::identity::PodIdentity;

/// Runs ADD and returns the result to print.
pub async fn add(
    env: &CniEnv,
    conf: &PluginConf,
    timeout: Duration,
) -> Result<CniResult, PluginError> {
    let (container_id, ifname, netns) = match (&env.container_id, &env.ifname, &env.netns) {
        (Some(c), Some(i), Some(n)) => (c, i, n),
        _ => unreachable_env()?,
    };
    if !netns.exists() {
        return Err(PluginError::NetnsMissing(netns.display().to_string()));
    }
    let pod = PodIdentity::from_env(env);
    let socket = conf.socket();
    let host_veth = pod.host_veth(&conf.veth_prefix);
    let mtu = conf.pod_mtu()?;
    let host = Netlink::connect(None).map_err(|e| PluginError::Setup(e.to_string()))?;
    crate::spans::mark("netlink_connect");
    // The deadline travels as `grpc-timeout`: ipamd, which may wait for an address on its way, answers before it.
    let mut request = tonic::Request::new(AddNetworkRequest {
        client_version: env!("CARGO_PKG_VERSION").into(),
        k8s_pod_name: pod.name.clone(),
        k8s_pod_namespace: pod.namespace.clone(),
        k8s_pod_infra_container_id: env
            .args
            .pod_infra_container_id
            .clone()
            .unwrap_or_else(|| container_id.clone()),
        container_id: container_id.clone(),
        if_name: ifname.clone(),
        network_name: conf.net.name.clone(),
        netns: netns.display().to_string(),
        requires_multi_nic_attachment: false,
    });
    request.set_timeout(timeout);
    // The veth pair needs no address: it is built while ipamd chooses one (the request goes out first), and
    // removed again when ipamd gives none. See `datapath::pod::create_pod_veth`.
    let ask = async {
        let mut ipamd = client::connect(&socket, timeout).await?;
        crate::spans::mark("connect");
        let reply = ipamd
            .add_network(request)
            .await
            .map_err(|s| rpc_error(&socket, "AddNetwork", timeout, s))?
            .into_inner();
        Ok::<_, PluginError>((ipamd, reply))
    };
    let build = async {
        let veth = datapath::pod::create_pod_veth(&host, netns, &host_veth, ifname, mtu).await;
        crate::spans::mark("veth");
        veth
    };
    let (asked, built) = tokio::join!(ask, build);
    crate::spans::mark("rpc");
    let (mut ipamd, reply) = match asked {
        Ok(r) => r,
        Err(e) => {
            discard(&host, built.as_ref().ok()).await;
            return Err(e);
        }
    };
    let assigned = assigned_address(&reply);
    let (ip, meta) = match assigned {
        Ok(a) => a,
        Err(e) => {
            discard(&host, built.as_ref().ok()).await;
            return Err(e);
        }
    };
    let table = u32::try_from(meta.route_table_id).unwrap_or(datapath::MAIN_TABLE);
    let spec = crate::family::Plumbing {
        host_veth: &host_veth,
        container_ifname: ifname,
        ip,
        table,
        mtu,
    };
    let finished = match built {
        Ok(veth) => crate::family::finish(&host, &veth, &spec).await,
        Err(e) => Err(e),
    };
    let links = match finished {
        Ok(l) => {
            crate::spans::mark("setup");
            l
        }
        Err(e) => {
            undo(&host, &mut ipamd, env, conf, &host_veth, netns, ip).await;
            return Err(PluginError::Setup(e.to_string()));
        }
    };
    tracing::info!(
        container = %container_id,
        pod = %format!("{}/{}", pod.namespace, pod.name),
        %ip, table, veth = %host_veth, eni = %reply.eniid, "ADD done"
    );
    crate::spans::mark("log_write");

    let mut result = CniResult::default();
    let mut host_if = Interface::new(host_veth.clone());
    host_if.mac = Some(links.host_mac.to_string());
    let mut pod_if = Interface::new(ifname.clone());
    pod_if.mac = links.container_mac.map(|m| m.to_string());
    pod_if.sandbox = Some(netns.display().to_string());
    result.interfaces = vec![host_if, pod_if];
    // The anchor's marker interface, for Kubernetes pods only: the anchor's DEL reads the device number from its
    // `sandbox` when ipamd is down, so a rollback to aws-node can still tear down pods we created. Unlike the
    // anchor we leave out its `mac` ("0", a VLAN ID, not a MAC). Runtimes outside Kubernetes (podman) treat every
    // interface with a sandbox as a container interface and reject the result over it, and never need a rollback.
    if env.args.pod_namespace.is_some() {
        let mut marker = Interface::new(format!("dummy{}", &host_veth[conf.veth_prefix.len()..]));
        marker.sandbox = Some(meta.device_number.to_string());
        result.interfaces.push(marker);
    }
    result.ips = vec![IpConfig {
        address: cni_types::ipnetwork::IpNetwork::new(ip, crate::family::host_prefix(ip))
            .map_err(|e| PluginError::Setup(e.to_string()))?,
        gateway: None,
        interface: Some(1),
    }];
    // The policy agent, when ipamd says there is one: a pod it could not secure is undone (see crate::netpol).
    if let Err(e) = crate::netpol::enforce(conf, &pod, &reply.network_policy_mode, 1).await {
        undo(&host, &mut ipamd, env, conf, &host_veth, netns, ip).await;
        return Err(e.into());
    }
    Ok(result)
}

async fn undo(
    host: &Netlink,
    ipamd: &mut aws_cni_proto::CniBackendClient<tonic::transport::Channel>,
    env: &CniEnv,
    conf: &PluginConf,
    host_veth: &str,
    netns: &Path,
    ip: IpAddr,
) {
    let errors = crate::family::teardown(
        host,
        Some(host_veth),
        Some(netns),
        env.ifname.as_deref(),
        Some(ip),
    )
    .await;
    for e in errors {
        tracing::error!(error = %e, "undoing a failed ADD");
    }
    let pod = PodIdentity::from_env(env);
    let res = ipamd
        .del_network(DelNetworkRequest {
            client_version: env!("CARGO_PKG_VERSION").into(),
            k8s_pod_name: pod.name,
            k8s_pod_namespace: pod.namespace,
            k8s_pod_infra_container_id: env.args.pod_infra_container_id.clone().unwrap_or_default(),
            reason: "SetupNSFailed".into(),
            container_id: env.container_id.clone().unwrap_or_default(),
            if_name: env.ifname.clone().unwrap_or_default(),
            network_name: conf.net.name.clone(),
            k8s_pod_uid: env.args.pod_uid.clone().unwrap_or_default(),
            // The failed ADD's veth was deleted above: nothing to hand over.
            ..Default::default()
        })
        .await;
    if let Err(e) = res {
        tracing::error!(error = %e, %ip, "could not return the IP after a failed ADD; ipamd will reclaim it");
    }
}

/// The address of a successful AddNetwork reply, with its metadata; ipamd's refusal as the error.
fn assigned_address(
    reply: &aws_cni_proto::AddNetworkReply,
) -> Result<(IpAddr, &aws_cni_proto::IpAllocationMetadata), PluginError> {
    if !reply.success {
        return Err(PluginError::NoIp {
            reason: FailureReason::try_from(reply.failure_reason)
                .unwrap_or(FailureReason::FailureUnspecified),
            message: if reply.failure_message.is_empty() {
                "ipamd gave no reason".into()
            } else {
                reply.failure_message.clone()
            },
        });
    }
    let Some(meta) = reply.ip_allocation_metadata.first() else {
        return Err(PluginError::NoIp {
            reason: FailureReason::Internal,
            message: "ipamd reported success but returned no address".into(),
        });
    };
    // IPv4 or IPv6 (ENABLE_IPv6): ipamd's reply decides, see crate::family.
    Ok((crate::family::reply_address(meta)?, meta))
}

/// Removes the veth pair built while ipamd was asked, for an ADD that got no address (nothing else was built).
async fn discard(host: &Netlink, veth: Option<&datapath::pod::PodVeth>) {
    if let Some(veth) = veth {
        if let Err(e) = veth.discard(host).await {
            tracing::error!(error = %e, veth = %veth.host.name, "removing the veth of an ADD that got no address");
        }
    }
}

fn unreachable_env<T>() -> Result<T, PluginError> {
    // CniEnv::from_lookup already requires these for ADD; keep a clear error rather than a panic if that changes.
    Err(PluginError::Cni(cni_types::CniError::invalid_env(
        "ADD needs CNI_CONTAINERID, CNI_NETNS and CNI_IFNAME",
    )))
}
