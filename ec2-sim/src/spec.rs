//! What to simulate: the instance type, VPC and subnets, latencies, EC2's rate limits, and where state lives.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ec2_api::clock::{Clock, SystemClock};
use ipnetwork::{Ipv4Network, Ipv6Network};

/// Why the simulator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("unknown instance type {0:?} (not in the instance-limits table{1})")]
    UnknownInstanceType(String, String),
    #[error("invalid subnet {0}: {1}")]
    Subnet(String, String),
    #[error("cannot plug the primary ENI into the node: {0}")]
    Plug(String),
    #[error("simulator state {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("simulator state {path}: cannot plug the saved ENIs back: {reason}")]
    Restore { path: PathBuf, reason: String },
    #[error("invalid simulator setting: {0}")]
    Setting(String),
    #[error("building the simulated VPC: {0}")]
    Fabric(#[source] datapath::NetlinkError),
}

/// An extra subnet of the VPC, e.g. one tagged `kubernetes.io/role/cni`, or one for custom networking's
/// ENIConfigs (possibly in another availability zone, where an ENI cannot be attached to the instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimSubnet {
    pub cidr: Ipv4Network,
    pub tags: BTreeMap<String, String>,
    /// Its availability zone; `None`: the instance's.
    pub availability_zone: Option<String>,
}

/// An ENI another component attached to the instance before ipamd started: the VPC resource controller's trunk
/// ENI, an EFA ENI, a user's ENI (Multus), untagged or tagged `node.k8s.amazonaws.com/no_manage=true`. It takes
/// an ENI slot on network card 0 like any other, as on EC2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignEni {
    /// EC2's `InterfaceType`: `interface`, `trunk`, `efa`, `efa-only`.
    pub interface_type: String,
    pub tags: BTreeMap<String, String>,
}

impl std::str::FromStr for ForeignEni {
    type Err = String;

    /// `trunk`, `efa`, `efa-only`, `untagged` (a plain ENI without tags) or `no_manage` (a plain ENI tagged
    /// `node.k8s.amazonaws.com/no_manage=true`).
    fn from_str(s: &str) -> Result<ForeignEni, String> {
        let (interface_type, tags) = match s {
            "trunk" | "efa" | "efa-only" => (s, BTreeMap::new()),
            "untagged" => ("interface", BTreeMap::new()),
            "no_manage" => (
                "interface",
                BTreeMap::from([(ec2_api::TAG_NO_MANAGE.to_string(), "true".to_string())]),
            ),
            other => {
                return Err(format!(
                    "unknown foreign ENI kind {other:?} (trunk, efa, efa-only, untagged, no_manage)"
                ))
            }
        };
        Ok(ForeignEni {
            interface_type: interface_type.to_string(),
            tags,
        })
    }
}

/// EC2's request-rate buckets: `(capacity, refill per second)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottleSpec {
    /// Create/Attach/Modify/Assign/Unassign/Detach/Delete/CreateTags.
    pub mutating: (u32, f64),
    /// Describe*.
    pub non_mutating: (u32, f64),
}

impl Default for ThrottleSpec {
    /// EC2's documented defaults for an account: mutating 200 tokens refilled at 5/s, non-mutating 100 at 20/s.
    fn default() -> Self {
        ThrottleSpec {
            mutating: ec2_api::api::MUTATING_BUCKET,
            non_mutating: ec2_api::api::NON_MUTATING_BUCKET,
        }
    }
}

/// A failure to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 500 `InternalError`; nothing applied.
    ServerError,
    /// 503 `Unavailable`; nothing applied.
    Unavailable,
    /// No answer within the client's timeout; nothing applied.
    Timeout,
    /// No answer within the client's timeout, but EC2 did apply the call.
    TimeoutAfterApply,
    /// `RequestLimitExceeded`.
    Throttle,
    /// `UnauthorizedOperation`: the IAM policy lacks the permission; nothing applied.
    Unauthorized,
    /// `AttachmentLimitExceeded`: EC2 allows fewer ENIs than the instance-type table says; nothing applied.
    AttachmentLimit,
}

/// Simulator settings.
#[derive(Clone)]
pub struct SimSpec {
    pub instance_type: String,
    pub vpc_cidr: Ipv4Network,
    pub subnet_cidr: Ipv4Network,
    /// The node subnet's IPv6 CIDR (a /64, as EC2 gives subnets; `None`: an IPv4-only subnet). ENIs in it get an
    /// IPv6 address, and `AssignIpv6Addresses` carves /80 prefixes from it.
    pub subnet_ipv6_cidr: Option<Ipv6Network>,
    /// The VPC's IPv6 CIDR (a /56 holding the subnets' /64s; `None`: an IPv4-only VPC). The fabric routes it
    /// (see [`crate::fabric`]: the VPC's peer subnet is its last /64).
    pub vpc_ipv6_cidr: Option<Ipv6Network>,
    pub availability_zone: String,
    /// Where to write the JSON snapshot after every change.
    pub state_file: Option<PathBuf>,
    /// More subnets in the VPC and AZ.
    pub extra_subnets: Vec<SimSubnet>,
    /// Addresses of the node subnet held by other tenants (fragmentation).
    pub taken: Vec<Ipv4Addr>,
    /// How long IMDS lags behind EC2.
    pub imds_lag: Duration,
    /// How long an attachment takes.
    pub attach_latency: Duration,
    /// How long a timed-out call takes to fail.
    pub timeout: Duration,
    /// How long every call takes before EC2 acts on it (a real call takes tens to hundreds of milliseconds).
    pub api_latency: Duration,
    /// Server-side throttling; `None` = unlimited.
    pub throttle: Option<ThrottleSpec>,
    /// ENIs attached to the instance at launch besides the primary (device indexes 1, 2, ... of card 0).
    pub foreign_enis: Vec<ForeignEni>,
    /// A file whose presence fragments every subnet (checked at each call; removing it lifts the
    /// fragmentation): see [`crate::SimEc2::fragment_subnet`].
    pub fragment_file: Option<PathBuf>,
    /// A file that changes the VPC's CIDR blocks and the primary ENI's security groups while the instance runs
    /// (checked at each EC2 call and IMDS read): see [`crate::vpc`].
    pub vpc_file: Option<PathBuf>,
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SimSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimSpec")
            .field("instance_type", &self.instance_type)
            .field("subnet_cidr", &self.subnet_cidr)
            .field("imds_lag", &self.imds_lag)
            .field("attach_latency", &self.attach_latency)
            .field("throttle", &self.throttle)
            .finish_non_exhaustive()
    }
}

impl SimSpec {
    /// The defaults the demo and tests use: VPC 10.0.0.0/16 and 2600:1f14:ab:c800::/56, node subnet 10.0.0.0/20
    /// with the IPv6 /64 2600:1f14:ab:c800::/64 (dual-stack, as an EKS IPv6 cluster's subnets are), EC2's
    /// throttling, no lag.
    pub fn new(instance_type: &str) -> SimSpec {
        SimSpec {
            instance_type: instance_type.to_string(),
            vpc_cidr: Ipv4Network::new(Ipv4Addr::new(10, 0, 0, 0), 16)
                .unwrap_or_else(|_| unreachable_net()),
            subnet_cidr: Ipv4Network::new(Ipv4Addr::new(10, 0, 0, 0), 20)
                .unwrap_or_else(|_| unreachable_net()),
            subnet_ipv6_cidr: Ipv6Network::new(
                Ipv6Addr::new(0x2600, 0x1f14, 0xab, 0xc800, 0, 0, 0, 0),
                64,
            )
            .ok(),
            vpc_ipv6_cidr: Ipv6Network::new(
                Ipv6Addr::new(0x2600, 0x1f14, 0xab, 0xc800, 0, 0, 0, 0),
                56,
            )
            .ok(),
            availability_zone: "us-west-2a".into(),
            state_file: None,
            extra_subnets: Vec::new(),
            taken: Vec::new(),
            imds_lag: Duration::ZERO,
            attach_latency: Duration::ZERO,
            timeout: Duration::from_secs(10),
            api_latency: Duration::ZERO,
            throttle: Some(ThrottleSpec::default()),
            foreign_enis: Vec::new(),
            fragment_file: None,
            vpc_file: None,
            clock: Arc::new(SystemClock::default()),
        }
    }
}

fn unreachable_net() -> Ipv4Network {
    // Only reached if ipnetwork rejected a literal /16 or /20, which it does not.
    Ipv4Network::from(Ipv4Addr::UNSPECIFIED)
}

/// The node's subnet ID in the simulator.
pub const SIM_SUBNET_ID: &str = "subnet-0sim0000000000001";
