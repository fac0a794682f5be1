//! The gRPC contract between `aws-cni` and `ipamd`.
//!
//! `proto/rpc.proto` is wire-compatible with the AWS VPC CNI's `rpc.CNIBackend` (package `rpc`, same field
//! numbers and types), so our plugin can talk to the anchor's daemon and the anchor's plugin to ours. Our
//! additions (typed failure reasons) use tags >= 100, which older peers skip as unknown fields.
//!
//! Next to it `ipamd` serves `rpc.IpamdControl` (ours: pool status, allocation listing and garbage collection, for
//! CNI 1.1 STATUS/GC, CHECK and `ipamd status`) and the standard `grpc.health.v1` (through `tonic-health`).

#![allow(clippy::doc_markdown)]

/// Generated types and stubs for package `rpc`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod rpc {
    tonic::include_proto!("rpc");
}

pub use rpc::cni_backend_client::CniBackendClient;
pub use rpc::cni_backend_server::{CniBackend, CniBackendServer};
pub use rpc::ipamd_control_client::IpamdControlClient;
pub use rpc::ipamd_control_server::{IpamdControl, IpamdControlServer};
pub use rpc::{
    AddNetworkReply, AddNetworkRequest, Allocation, Attachment, DelNetworkReply, DelNetworkRequest,
    FailureReason, GcReply, GcRequest, IpAllocationMetadata, ListAllocationsReply,
    ListAllocationsRequest, PoolCounts, StatusReply, StatusRequest,
};

/// The anchor's socket path; kept so the two binaries can be swapped for the anchor's.
pub const DEFAULT_IPAMD_SOCKET: &str = "/var/run/aws-node/ipamd.sock";

/// The health service name the anchor registers (and liveness probes ask for).
pub const HEALTH_SERVICE_NAME: &str = "grpc.health.v1.aws-node";
