//! The instance metadata service as the daemon uses it: at startup the instance (ID, type, region, primary MAC
//! and IP, security groups) and the ENIs attached (per MAC: device number, subnet, addresses), as the anchor.
//!
//! IMDS is eventually consistent with EC2: right after an attach or an IP assignment it may still show the old
//! state. Callers therefore treat it as a hint to be confirmed, never as the truth about what EC2 has assigned.

use std::net::{Ipv4Addr, Ipv6Addr};

use async_trait::async_trait;
use ipnetwork::{Ipv4Network, Ipv6Network};

/// The node, from IMDS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMetadata {
    pub instance_id: String,
    pub instance_type: String,
    pub availability_zone: String,
    pub primary_mac: String,
    pub local_ipv4: Ipv4Addr,
    pub vpc_cidrs: Vec<Ipv4Network>,
    /// `placement/region` (or derived from the availability zone).
    pub region: String,
    /// The primary ENI's `vpc-id`.
    pub vpc_id: String,
    /// The primary ENI's `subnet-id`.
    pub subnet_id: String,
    /// `security-group-ids` of the primary ENI.
    pub security_groups: Vec<String>,
}

/// One attached ENI, from `network/interfaces/macs/<mac>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsEni {
    pub mac: String,
    pub eni_id: String,
    pub device_number: u32,
    pub subnet_id: String,
    pub subnet_cidr: Ipv4Network,
    /// `local-ipv4s`: the first is the ENI's primary IP.
    pub ipv4s: Vec<Ipv4Addr>,
    /// `ipv4-prefix`: delegated /28 prefixes.
    pub ipv4_prefixes: Vec<Ipv4Network>,
    /// `network-card` (0 when IMDS has no such field).
    pub network_card: u32,
    /// `subnet-ipv6-cidr-blocks` (empty for an IPv4-only subnet or when IMDS has no such field).
    pub subnet_ipv6_cidrs: Vec<Ipv6Network>,
    /// `ipv6s`: the ENI's IPv6 addresses.
    pub ipv6s: Vec<Ipv6Addr>,
    /// `ipv6-prefix`: delegated /80 prefixes (IPv6 mode).
    pub ipv6_prefixes: Vec<Ipv6Network>,
}

/// An IMDS failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImdsError {
    #[error("IMDS path {path}: {message}")]
    Request { path: String, message: String },
    #[error("IMDS path {path}: cannot parse {value:?}")]
    Parse { path: String, value: String },
}

/// The IMDS reads the daemon makes.
#[async_trait]
pub trait Imds: Send + Sync + 'static {
    async fn node(&self) -> Result<NodeMetadata, ImdsError>;
    async fn enis(&self) -> Result<Vec<ImdsEni>, ImdsError>;
}
