//! CNI ADD: ask ipamd for an IP, build the pod's network, tell the network policy agent when ipamd's reply names
//! a policy mode ([`crate::netpol`]), report it. A failed ADD (the agent's failure included) undoes what it did
//! and gives the IP back (DelNetwork with Reason "SetupNSFailed", as the anchor).

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use aws_cni_proto::{AddNetworkReply, AddNetworkRequest, FailureReason};
use cni_types::{CniEnv, CniResult, Interface, IpConfig};
use datapath::Netlink;

use crate::client::{self, rpc_error};
use crate::conf::PluginConf;
use crate::error::PluginError;
use crate::identity::PodIdentity;

/// ipamd's answer to this ADD, on its way from the thread that asks (see [`ask`]).
pub struct Asking {
    answer: tokio::sync::oneshot::Receiver<Result<AddNetworkReply, PluginError>>,
    /// The pod's MTU, checked before ipamd was asked.
    mtu: u32,
    /// The deadline of every call to ipamd.
    timeout: Duration,
}

impl Asking {
    async fn answer(self) -> Result<AddNetworkReply, PluginError> {
        self.answer.await.unwrap_or_else(|_| {
            Err(PluginError::Setup(
                "the thread asking ipamd for an address ended without an answer".into(),
            ))
        })
    }
}

/// Starts asking ipamd for this ADD's address on a thread of its own (called inside the caller's runtime, which
/// [`add`] then uses to build the veth pair and, on failure, to give the address back).
///
/// The plugin's two halves of an ADD are independent until the address is known: ipamd chooses it (gRPC connect,
/// AddNetwork, ipamd's durable checkpoint) while the plugin builds the pod's veth pair, which needs none. Run on
/// one thread they only interleave at await points, and each stretches the other (the veth pair's netlink work is
/// the kernel's CPU time in this thread); on a thread each, they overlap for real. The asking thread has its own
/// current-thread runtime and ends with the call: its gRPC channel is not used again (a failed ADD's
/// `DelNetwork` connects anew, see [`give_back`]). The deadline travels as `grpc-timeout`, so ipamd, which may
/// wait for an address on its way, answers before it. Whatever can refuse the ADD without ipamd is checked
/// before it is asked, so a refused ADD holds no address.
pub fn ask(env: &CniEnv, conf: &PluginConf, timeout: Duration) -> Result<Asking, PluginError> {
    let (container_id, ifname, netns) = attachment(env)?;
    if !netns.exists() {
        return Err(PluginError::NetnsMissing(netns.display().to_string()));
    }
    let mtu = conf.pod_mtu()?;
    let pod = PodIdentity::from_env(env);
    let request = AddNetworkRequest {
        client_version: env!("CARGO_PKG_VERSION").into(),
        k8s_pod_name: pod.name,
        k8s_pod_namespace: pod.namespace,
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
    };
    let socket = conf.socket();
    let (tx, answer) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ipamd-ask".into())
        .spawn(move || {
            let answer = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(PluginError::Runtime)
                .and_then(|rt| {
                    crate::spans::mark("ask_runtime");
                    rt.block_on(add_network(&socket, request, timeout))
                });
            crate::spans::mark("reply");
            // The receiver is gone only when the ADD already failed: nobody to tell.
            let _ = tx.send(answer);
        })
        .map_err(PluginError::Runtime)?;
    Ok(Asking {
        answer,
        mtu,
        timeout,
    })
}

async fn add_network(
    socket: &Path,
    request: AddNetworkRequest,
    timeout: Duration,
) -> Result<AddNetworkReply, PluginError> {
    let mut ipamd = client::connect(socket, timeout).await?;
    crate::spans::mark("connect");
    let mut request = tonic::Request::new(request);
    request.set_timeout(timeout);
    Ok(ipamd
        .add_network(request)
        .await
        .map_err(|s| rpc_error(socket, "AddNetwork", timeout, s))?
        .into_inner())
}

/// Runs ADD with ipamd already being asked ([`ask`]) and returns the result to print.
pub async fn add(
    env: &CniEnv,
    conf: &PluginConf,
    asking: Asking,
) -> Result<CniResult, PluginError> {
    let (container_id, ifname, netns) = attachment(env)?;
    let pod = PodIdentity::from_env(env);
    let host_veth = pod.host_veth(&conf.veth_prefix);
    let (mtu, timeout) = (asking.mtu, asking.timeout);
    let host = match Netlink::connect(None) {
        Ok(h) => h,
        Err(e) => {
            if let Ok(reply) = asking.answer().await {
                if let Ok((ip, _)) = assigned_address(&reply) {
                    give_back(env, conf, ip, timeout).await;
                }
            }
            return Err(PluginError::Setup(e.to_string()));
        }
    };
    crate::spans::mark("netlink_connect");
    // The veth pair needs no address: it is built while ipamd chooses one, and removed again when ipamd gives
    // none. See `datapath::pod::create_pod_veth`.
    let built = datapath::pod::create_pod_veth(&host, netns, &host_veth, ifname, mtu).await;
    crate::spans::mark("veth");
    let asked = asking.answer().await;
    crate::spans::mark("rpc");
    let reply = match asked {
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
            undo(&host, env, conf, &host_veth, netns, ip, timeout).await;
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
        undo(&host, env, conf, &host_veth, netns, ip, timeout).await;
        return Err(e.into());
    }
    Ok(result)
}

/// Undoes a failed ADD after ipamd gave it an address: tears down what was built, then gives the address back.
async fn undo(
    host: &Netlink,
    env: &CniEnv,
    conf: &PluginConf,
    host_veth: &str,
    netns: &Path,
    ip: IpAddr,
    timeout: Duration,
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
    give_back(env, conf, ip, timeout).await;
}

/// Gives a failed ADD's address back to ipamd (DelNetwork, Reason "SetupNSFailed", as the anchor), over a new
/// connection: the asking thread's went with it. When that fails too, ipamd's reconciliation reclaims it.
async fn give_back(env: &CniEnv, conf: &PluginConf, ip: IpAddr, timeout: Duration) {
    let socket = conf.socket();
    // The failed ADD's veth was deleted (or never built): nothing to hand over.
    let request = client::del_request(env, conf, "SetupNSFailed");
    let res = match client::connect(&socket, timeout).await {
        Ok(mut ipamd) => ipamd
            .del_network(request)
            .await
            .map(|_| ())
            .map_err(|s| rpc_error(&socket, "DelNetwork", timeout, s).to_string()),
        Err(e) => Err(e.to_string()),
    };
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

/// The attachment ADD works on: `CNI_CONTAINERID`, `CNI_IFNAME`, `CNI_NETNS`.
fn attachment(env: &CniEnv) -> Result<(&String, &String, &std::path::PathBuf), PluginError> {
    match (&env.container_id, &env.ifname, &env.netns) {
        (Some(c), Some(i), Some(n)) => Ok((c, i, n)),
        // CniEnv::from_lookup already requires these for ADD; a clear error rather than a panic if that changes.
        _ => Err(PluginError::Cni(cni_types::CniError::invalid_env(
            "ADD needs CNI_CONTAINERID, CNI_NETNS and CNI_IFNAME",
        ))),
    }
}
