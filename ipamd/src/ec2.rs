//! The EC2 API as the daemon uses it: one trait, a real implementation per backend (`sim` today, `aws` on
//! aws-sdk-ec2 in its own crate), and typed errors the pool engine can act on.
//!
//! Only the calls the anchor makes (anchor-facts §3.2) are here, with the same batching: one
//! `AssignPrivateIpAddresses` for many IPs, an ENI created with its first IPs already assigned.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use async_trait::async_trait;
use datapath::MacAddr;
use ipnetwork::Ipv4Network;

/// Tag naming the instance an ENI was created for (leak cleanup looks for it).
pub const TAG_INSTANCE_ID: &str = "node.k8s.amazonaws.com/instance_id";
/// Tag with the ENI's creation time (RFC 3339), for the leak cleanup's age check.
pub const TAG_CREATED_AT: &str = "node.k8s.amazonaws.com/createdAt";
/// Tag that marks an ENI the daemon must not manage.
pub const TAG_NO_MANAGE: &str = "node.k8s.amazonaws.com/no_manage";
/// Description prefix of the ENIs we create: `aws-K8S-<instance-id>`.
pub const ENI_DESCRIPTION_PREFIX: &str = "aws-K8S-";

/// An ENI as EC2 describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EniDescription {
    pub id: String,
    pub mac: String,
    pub primary_ip: Ipv4Addr,
    pub secondary_ips: Vec<Ipv4Addr>,
    pub subnet_id: String,
    pub subnet_cidr: Ipv4Network,
    pub device_index: Option<u32>,
    pub attachment_id: Option<String>,
    pub status: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
}

impl EniDescription {
    /// The MAC, parsed.
    pub fn mac_addr(&self) -> Option<MacAddr> {
        MacAddr::parse(&self.mac)
    }
}

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateEniRequest {
    pub subnet_id: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    pub secondary_ip_count: u32,
}

/// An EC2 failure, classified so the pool engine can tell "wait" from "stop" from "try elsewhere".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ec2Error {
    /// RequestLimitExceeded: the account's token bucket for this API is empty.
    #[error("{api}: EC2 is throttling requests (RequestLimitExceeded)")]
    Throttled { api: &'static str },
    /// InsufficientFreeAddressesInSubnet / InsufficientCidrBlocks.
    #[error("{api}: subnet {subnet} has no free addresses ({code})")]
    SubnetExhausted {
        api: &'static str,
        subnet: String,
        code: String,
    },
    /// AttachmentLimitExceeded: no free ENI slot on the instance.
    #[error("{api}: the instance has no free network interface slot (AttachmentLimitExceeded)")]
    EniLimitExceeded { api: &'static str },
    /// PrivateIpAddressLimitExceeded: the ENI is full.
    #[error("{api}: ENI {eni} cannot take more addresses (PrivateIpAddressLimitExceeded)")]
    IpLimitExceeded { api: &'static str, eni: String },
    /// InvalidNetworkInterfaceID.NotFound and friends.
    #[error("{api}: {what} not found")]
    NotFound { api: &'static str, what: String },
    /// UnauthorizedOperation: the node's IAM role lacks a permission.
    #[error("{api}: not authorized (UnauthorizedOperation); check the node's IAM policy")]
    Unauthorized { api: &'static str },
    /// 5xx, timeouts, anything else.
    #[error("{api}: {code}: {message}")]
    Other {
        api: &'static str,
        code: String,
        message: String,
    },
}

impl Ec2Error {
    /// The EC2 error code (as EC2 spells it).
    pub fn code(&self) -> &str {
        match self {
            Ec2Error::Throttled { .. } => "RequestLimitExceeded",
            Ec2Error::SubnetExhausted { code, .. } | Ec2Error::Other { code, .. } => code,
            Ec2Error::EniLimitExceeded { .. } => "AttachmentLimitExceeded",
            Ec2Error::IpLimitExceeded { .. } => "PrivateIpAddressLimitExceeded",
            Ec2Error::NotFound { .. } => "InvalidNetworkInterfaceID.NotFound",
            Ec2Error::Unauthorized { .. } => "UnauthorizedOperation",
        }
    }
}

/// The EC2 calls the daemon makes.
#[async_trait]
pub trait Ec2: Send + Sync + 'static {
    /// CreateNetworkInterface with `secondary_ip_count` IPs assigned at creation.
    async fn create_network_interface(
        &self,
        req: CreateEniRequest,
    ) -> Result<EniDescription, Ec2Error>;
    /// AttachNetworkInterface; returns the attachment ID.
    async fn attach_network_interface(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
    ) -> Result<String, Ec2Error>;
    /// ModifyNetworkInterfaceAttribute(DeleteOnTermination=true) for an attachment.
    async fn set_delete_on_termination(
        &self,
        eni_id: &str,
        attachment_id: &str,
    ) -> Result<(), Ec2Error>;
    /// AssignPrivateIpAddresses(SecondaryPrivateIpAddressCount=count); returns only the new IPs.
    async fn assign_private_ips(&self, eni_id: &str, count: u32)
        -> Result<Vec<Ipv4Addr>, Ec2Error>;
    /// UnassignPrivateIpAddresses.
    async fn unassign_private_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<(), Ec2Error>;
    /// DetachNetworkInterface.
    async fn detach_network_interface(&self, attachment_id: &str) -> Result<(), Ec2Error>;
    /// DeleteNetworkInterface.
    async fn delete_network_interface(&self, eni_id: &str) -> Result<(), Ec2Error>;
    /// DescribeNetworkInterfaces by ID.
    async fn describe_network_interfaces(
        &self,
        ids: &[String],
    ) -> Result<Vec<EniDescription>, Ec2Error>;
}
