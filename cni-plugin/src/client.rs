//! The gRPC client to ipamd over its Unix socket, with a deadline on every call (the anchor has none, so a hung
//! ipamd hangs the runtime's sandbox creation).

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_cni_proto::{CniBackendClient, DelNetworkRequest, IpamdControlClient};
use cni_types::CniEnv;
use tonic::transport::Channel;

use crate::conf::PluginConf;
use crate::identity::PodIdentity;

/// Why ipamd could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("ipamd unreachable at {path}: {reason}")]
    Unreachable { path: PathBuf, reason: String },
    #[error("ipamd at {path} did not answer {call} within {timeout:?}")]
    Timeout {
        path: PathBuf,
        call: &'static str,
        timeout: Duration,
    },
    #[error("ipamd at {path} failed {call}: {status}")]
    Rpc {
        path: PathBuf,
        call: &'static str,
        status: String,
    },
}

/// Connects to ipamd's CNIBackend. Fails fast (within `timeout`) when nobody listens.
pub async fn connect(
    path: &Path,
    timeout: Duration,
) -> Result<CniBackendClient<Channel>, ClientError> {
    Ok(CniBackendClient::new(channel(path, timeout).await?))
}

/// Connects to ipamd's IpamdControl service.
pub async fn connect_control(
    path: &Path,
    timeout: Duration,
) -> Result<IpamdControlClient<Channel>, ClientError> {
    Ok(IpamdControlClient::new(channel(path, timeout).await?))
}

async fn channel(path: &Path, timeout: Duration) -> Result<Channel, ClientError> {
    aws_cni_proto::unix_channel(path, timeout)
        .await
        .map_err(|e| ClientError::Unreachable {
            path: path.to_owned(),
            reason: aws_cni_proto::error_chain(&e),
        })
}

/// The DelNetwork request for this CNI call's container (`reason` as the anchor sends it: "PodDeleted" on DEL,
/// "SetupNSFailed" when a failed ADD gives its address back), offering no veth.
pub fn del_request(env: &CniEnv, conf: &PluginConf, reason: &str) -> DelNetworkRequest {
    let pod = PodIdentity::from_env(env);
    DelNetworkRequest {
        client_version: env!("CARGO_PKG_VERSION").into(),
        k8s_pod_name: pod.name,
        k8s_pod_namespace: pod.namespace,
        k8s_pod_infra_container_id: env.args.pod_infra_container_id.clone().unwrap_or_default(),
        reason: reason.into(),
        container_id: env.container_id.clone().unwrap_or_default(),
        if_name: env.ifname.clone().unwrap_or_default(),
        network_name: conf.net.name.clone(),
        k8s_pod_uid: env.args.pod_uid.clone().unwrap_or_default(),
        ..Default::default()
    }
}

/// Maps a tonic status to our error.
pub fn rpc_error(
    path: &Path,
    call: &'static str,
    timeout: Duration,
    s: tonic::Status,
) -> ClientError {
    match s.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => ClientError::Timeout {
            path: path.to_owned(),
            call,
            timeout,
        },
        tonic::Code::Unavailable => ClientError::Unreachable {
            path: path.to_owned(),
            reason: s.message().to_string(),
        },
        _ => ClientError::Rpc {
            path: path.to_owned(),
            call,
            status: format!("{:?}: {}", s.code(), s.message()),
        },
    }
}
