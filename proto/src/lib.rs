//! The gRPC contract between `aws-cni` and `ipamd`.
//!
//! `proto/rpc.proto` is wire-compatible with the AWS VPC CNI's `rpc.CNIBackend` (package `rpc`, same field
//! numbers and types), so our plugin can talk to the anchor's daemon and the anchor's plugin to ours. Our
//! additions (typed failure reasons; the host veth a DEL hands to ipamd to delete in the background) use
//! tags >= 100, which older peers skip as unknown fields.
//!
//! The network policy agent's contract is the anchor's too: `rpc.NPBackend` (served by the agent on
//! [`DEFAULT_NPA_SOCKET`], called by the plugin) and `rpc.ConfigServerBackend` (served by ipamd, called by the agent).
//!
//! Next to it `ipamd` serves `rpc.IpamdControl` (ours: pool status, allocation listing and garbage collection, for
//! CNI 1.1 STATUS/GC, CHECK and `ipamd status`) and the standard `grpc.health.v1` (through `tonic-health`).

#![allow(clippy::doc_markdown)]

pub mod authority;

/// Generated types and stubs for package `rpc`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod rpc {
    tonic::include_proto!("rpc");
}

pub use rpc::cni_backend_client::CniBackendClient;
pub use rpc::cni_backend_server::{CniBackend, CniBackendServer};
pub use rpc::config_server_backend_client::ConfigServerBackendClient;
pub use rpc::config_server_backend_server::{ConfigServerBackend, ConfigServerBackendServer};
pub use rpc::ipamd_control_client::IpamdControlClient;
pub use rpc::ipamd_control_server::{IpamdControl, IpamdControlServer};
pub use rpc::np_backend_client::NpBackendClient;
pub use rpc::np_backend_server::{NpBackend, NpBackendServer};
pub use rpc::{
    AddNetworkReply, AddNetworkRequest, Allocation, Attachment, DelNetworkReply, DelNetworkRequest,
    DeleteNpReply, DeleteNpRequest, EnforceNpReply, EnforceNpRequest, EniStatus, FailureReason,
    GcReply, GcRequest, IpAllocationMetadata, ListAllocationsReply, ListAllocationsRequest,
    NetworkPolicyAgentConfigReply, PoolCounts, StatusReply, StatusRequest,
};

/// The anchor's socket path; kept so the two binaries can be swapped for the anchor's.
pub const DEFAULT_IPAMD_SOCKET: &str = "/var/run/aws-node/ipamd.sock";

/// Where the network policy agent (`aws-eks-nodeagent`) serves `rpc.NPBackend`, as in the anchor.
pub const DEFAULT_NPA_SOCKET: &str = "/var/run/aws-node/npa.sock";

/// The health service name the anchor registers (and liveness probes ask for).
pub const HEALTH_SERVICE_NAME: &str = "grpc.health.v1.aws-node";

/// A gRPC channel to a server on a Unix socket (ipamd), with `timeout` for connecting and for every call.
///
/// The URI is required by the HTTP/2 layer but never resolved: the connector always dials `path`.
pub async fn unix_channel(
    path: &std::path::Path,
    timeout: std::time::Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    unix_channel_with(path, timeout, timeout).await
}

/// A gRPC channel to a server on a Unix socket with separate deadlines for connecting and for every call (the
/// policy agent: connecting must fail fast when it is gone, enforcing a pod's policies may take longer).
pub async fn unix_channel_with(
    path: &std::path::Path,
    connect_timeout: std::time::Duration,
    call_timeout: std::time::Duration,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let socket = path.to_owned();
    tonic::transport::Endpoint::from_static("http://ipamd.local")
        .connect_timeout(connect_timeout)
        .timeout(call_timeout)
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
}

/// The error and its sources on one line ("a: b: c"), for messages that must name the root cause.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out = format!("{out}: {s_text}");
        }
        src = s.source();
    }
    out
}
