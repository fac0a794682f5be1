//! EC2: the calls, their request and response types, and classified errors.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use async_trait::async_trait;
use ipnetwork::{Ipv4Network, Ipv6Network};

/// Tag naming the instance an ENI was created for (leak cleanup looks for it).
pub const TAG_INSTANCE_ID: &str = "node.k8s.amazonaws.com/instance_id";
/// Tag with the ENI's creation time (RFC 3339), for the leak cleanup's age check.
pub const TAG_CREATED_AT: &str = "node.k8s.amazonaws.com/createdAt";
/// Tag that marks an ENI the daemon must not manage.
pub const TAG_NO_MANAGE: &str = "node.k8s.amazonaws.com/no_manage";
/// Cluster tag set on created ENIs when `CLUSTER_NAME` is set.
pub const TAG_CLUSTER_NAME: &str = "cluster.k8s.amazonaws.com/name";
/// Owner tag set with the cluster tag (the VPC resource controller cleans ENIs carrying it).
pub const TAG_ENI_OWNER: &str = "eks:eni:owner";
/// Value of [`TAG_ENI_OWNER`].
pub const TAG_ENI_OWNER_VALUE: &str = "amazon-vpc-cni";
/// Description prefix of the ENIs we create: `aws-K8S-<instance-id>`.
pub const ENI_DESCRIPTION_PREFIX: &str = "aws-K8S-";

/// An ENI as EC2 describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EniDescription {
    pub id: String,
    /// `aa:bb:cc:dd:ee:ff`, lower case.
    pub mac: String,
    pub primary_ip: Ipv4Addr,
    /// Secondary private IPv4 addresses (not the primary).
    pub secondary_ips: Vec<Ipv4Addr>,
    /// Delegated IPv4 prefixes (/28), prefix delegation mode.
    #[serde(default)]
    pub ipv4_prefixes: Vec<Ipv4Network>,
    /// IPv6 addresses of the ENI (`Ipv6Addresses`, not from prefixes).
    #[serde(default)]
    pub ipv6_addresses: Vec<Ipv6Addr>,
    /// Delegated IPv6 prefixes (/80), IPv6 mode (`Ipv6Prefixes`).
    #[serde(default)]
    pub ipv6_prefixes: Vec<Ipv6Network>,
    pub subnet_id: String,
    pub subnet_cidr: Ipv4Network,
    /// The subnet's IPv6 CIDR (`None`: an IPv4-only subnet).
    #[serde(default)]
    pub subnet_ipv6_cidr: Option<Ipv6Network>,
    #[serde(default)]
    pub vpc_id: String,
    /// Set while attached.
    pub device_index: Option<u32>,
    /// Network card of the attachment (0 on single-card types).
    #[serde(default)]
    pub network_card_index: u32,
    pub attachment_id: Option<String>,
    /// The instance it is attached to.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// `available`, `in-use`, `attaching`, `detaching`.
    pub status: String,
    /// `interface`, `trunk`, `efa`, `efa-only`, ...
    #[serde(default = "default_interface_type")]
    pub interface_type: String,
    pub description: String,
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub delete_on_termination: bool,
}

fn default_interface_type() -> String {
    "interface".into()
}

/// How many addresses to ask for: secondary IPs, or /28 prefixes (prefix delegation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum IpRequest {
    /// `SecondaryPrivateIpAddressCount`.
    Secondary(u32),
    /// `Ipv4PrefixCount`.
    Prefixes(u32),
}

impl IpRequest {
    /// The count, whatever the kind.
    pub fn count(&self) -> u32 {
        match self {
            IpRequest::Secondary(n) | IpRequest::Prefixes(n) => *n,
        }
    }
}

/// What an assignment added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assigned {
    pub ips: Vec<Ipv4Addr>,
    pub prefixes: Vec<Ipv4Network>,
}

/// CreateNetworkInterface parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateEniRequest {
    pub subnet_id: String,
    pub description: String,
    pub security_groups: Vec<String>,
    pub tags: BTreeMap<String, String>,
    /// Addresses assigned at creation (besides the primary IP).
    pub ips: IpRequest,
}

/// A DescribeNetworkInterfaces filter (all set fields must match; tag filters are `tag:<key>=<value>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EniFilter {
    pub vpc_id: Option<String>,
    pub status: Option<String>,
    pub attachment_instance_id: Option<String>,
    /// `tag-key` filters: the tag must exist.
    pub tag_keys: Vec<String>,
    /// `tag:<key>` filters: the tag must have this value.
    pub tags: BTreeMap<String, String>,
}

/// DescribeInstances, reduced to what ENI attachment needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceDescription {
    pub instance_id: String,
    pub instance_type: String,
    pub subnet_id: String,
    pub vpc_id: String,
    pub security_groups: Vec<String>,
    /// `(network card index, device index)` of every attached ENI.
    pub attachments: Vec<(u32, u32)>,
    /// `pending`, `running`, `stopping`, `stopped`, `shutting-down`, `terminated`.
    pub state: String,
}

/// A subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetDescription {
    pub id: String,
    pub cidr: Ipv4Network,
    pub availability_zone: String,
    pub vpc_id: String,
    pub available_ip_count: u64,
    pub tags: BTreeMap<String, String>,
}

/// A DescribeSubnets filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubnetFilter {
    pub ids: Vec<String>,
    pub vpc_id: Option<String>,
    pub availability_zone: Option<String>,
}

/// Networking facts of an instance type, as DescribeInstanceTypes reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceTypeInfo {
    pub instance_type: String,
    /// ENIs on the default network card.
    pub enis: u32,
    pub default_network_card_index: u32,
    /// `(card index, max ENIs)`.
    pub network_cards: Vec<(u32, u32)>,
    pub ipv4_per_eni: u32,
    pub ipv6_per_eni: u32,
    /// `nitro`, `xen` or `unknown`.
    pub hypervisor: String,
    pub bare_metal: bool,
    pub vcpus: u32,
}

/// An EC2 failure, classified so the pool engine can tell "wait" from "stop" from "try elsewhere".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ec2Error {
    /// RequestLimitExceeded (server side) or our own client-side budget said no.
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
    #[error(
        "{api}: not authorized (UnauthorizedOperation): the node's IAM role lacks the action ec2:{api}; check \
         the node's IAM policy (deploy/iam-policy.json lists every action ipamd calls)"
    )]
    Unauthorized { api: &'static str },
    /// No usable AWS credentials: none found, or the provider refused them (an IRSA role whose trust policy does
    /// not admit the service account, STS AccessDenied, an expired web identity token). Permanent: retrying
    /// cannot fix it.
    #[error(
        "{api}: no usable AWS credentials (not an EC2 problem; check the IAM role for the service account or the \
         instance profile, and its trust policy): {message}"
    )]
    Credentials { api: &'static str, message: String },
    /// The call did not complete in time (network, endpoint down).
    #[error("{api}: timed out: {message}")]
    Timeout { api: &'static str, message: String },
    /// 5xx and anything else.
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
            Ec2Error::Credentials { .. } => "CredentialsError",
            Ec2Error::Timeout { .. } => "Timeout",
        }
    }

    /// The API that failed.
    pub fn api(&self) -> &'static str {
        match self {
            Ec2Error::Throttled { api }
            | Ec2Error::SubnetExhausted { api, .. }
            | Ec2Error::EniLimitExceeded { api }
            | Ec2Error::IpLimitExceeded { api, .. }
            | Ec2Error::NotFound { api, .. }
            | Ec2Error::Unauthorized { api }
            | Ec2Error::Credentials { api, .. }
            | Ec2Error::Timeout { api, .. }
            | Ec2Error::Other { api, .. } => api,
        }
    }

    /// Worth retrying later (throttling, timeouts, 5xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            Ec2Error::Throttled { .. } | Ec2Error::Timeout { .. } => true,
            Ec2Error::Other { code, .. } => {
                code.starts_with("Internal")
                    || code.contains("Unavailable")
                    || code.starts_with('5')
            }
            _ => false,
        }
    }
}

/// The EC2 calls the daemon makes (each is one [`crate::Api`]).
#[async_trait]
pub trait Ec2: Send + Sync + 'static {
    /// CreateNetworkInterface with addresses assigned at creation.
    async fn create_network_interface(
        &self,
        req: CreateEniRequest,
    ) -> Result<EniDescription, Ec2Error>;
    /// CreateNetworkInterface made idempotent with EC2's `ClientToken` (at most 64 ASCII characters): every retry
    /// of one logical create, ours or the SDK's, carries the same token, so a create that timed out after EC2 made
    /// the ENI returns that ENI when retried instead of making a second one. The same token with other parameters
    /// is `IdempotentParameterMismatch`.
    async fn create_network_interface_with_token(
        &self,
        req: CreateEniRequest,
        client_token: &str,
    ) -> Result<EniDescription, Ec2Error>;
    /// AttachNetworkInterface; returns the attachment ID.
    async fn attach_network_interface(
        &self,
        eni_id: &str,
        instance_id: &str,
        device_index: u32,
        network_card_index: u32,
    ) -> Result<String, Ec2Error>;
    /// ModifyNetworkInterfaceAttribute(Attachment.DeleteOnTermination=true).
    async fn set_delete_on_termination(
        &self,
        eni_id: &str,
        attachment_id: &str,
    ) -> Result<(), Ec2Error>;
    /// ModifyNetworkInterfaceAttribute(Groups=`groups`): replaces the ENI's security groups (the VPC refresh
    /// pushes the primary ENI's groups to the ENIs ipamd manages, as the anchor does).
    async fn set_security_groups(&self, eni_id: &str, groups: &[String]) -> Result<(), Ec2Error>;
    /// AssignPrivateIpAddresses; returns only what was added.
    async fn assign_private_ips(&self, eni_id: &str, req: IpRequest) -> Result<Assigned, Ec2Error>;
    /// UnassignPrivateIpAddresses (IPs and/or prefixes).
    async fn unassign_private_ips(
        &self,
        eni_id: &str,
        ips: &[Ipv4Addr],
        prefixes: &[Ipv4Network],
    ) -> Result<(), Ec2Error>;
    /// AssignIpv6Addresses with `Ipv6PrefixCount=count` (IPv6 mode: /80 prefixes); returns only the prefixes
    /// added.
    async fn assign_ipv6_prefixes(
        &self,
        eni_id: &str,
        count: u32,
    ) -> Result<Vec<Ipv6Network>, Ec2Error>;
    /// DetachNetworkInterface.
    async fn detach_network_interface(&self, attachment_id: &str) -> Result<(), Ec2Error>;
    /// DeleteNetworkInterface.
    async fn delete_network_interface(&self, eni_id: &str) -> Result<(), Ec2Error>;
    /// DescribeNetworkInterfaces by ID (IDs EC2 does not know are an error: NotFound).
    async fn describe_network_interfaces(
        &self,
        ids: &[String],
    ) -> Result<Vec<EniDescription>, Ec2Error>;
    /// DescribeNetworkInterfaces with filters, all pages.
    async fn list_network_interfaces(
        &self,
        filter: &EniFilter,
    ) -> Result<Vec<EniDescription>, Ec2Error>;
    /// DescribeInstances for one instance.
    async fn describe_instance(&self, instance_id: &str) -> Result<InstanceDescription, Ec2Error>;
    /// DescribeSubnets.
    async fn describe_subnets(
        &self,
        filter: &SubnetFilter,
    ) -> Result<Vec<SubnetDescription>, Ec2Error>;
    /// CreateTags on one resource.
    async fn create_tags(
        &self,
        resource_id: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), Ec2Error>;
    /// DescribeInstanceTypes for the given types (empty = every type, all pages).
    async fn describe_instance_types(
        &self,
        types: &[String],
    ) -> Result<Vec<InstanceTypeInfo>, Ec2Error>;
}
