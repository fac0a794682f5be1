//! The `aws` backend of ipamd: [`ec2_api::Ec2`] on aws-sdk-ec2 and [`ec2_api::Imds`] on IMDSv2.
//!
//! ```text
//!  ipamd ──Arc<dyn Ec2>──▶ AwsEc2 ──▶ aws-sdk-ec2 (1 attempt) ──▶ BucketedConnector ──▶ hyper/rustls ──▶ EC2
//!    │                     (errors.rs: EC2 code → Ec2Error)       (bucket.rs: per-API token bucket)
//!    └──Arc<dyn Imds>──▶ AwsImds ──▶ aws-config IMDS client (token PUT, TTL, retries) ──▶ 169.254.169.254
//! ```
//!
//! * [`ec2`]: every call of the trait, with pagination and the anchor's parameters.
//! * [`errors`]: the mapping from EC2 error codes to [`ec2_api::Ec2Error`] classes.
//! * [`bucket`] and [`http`]: the client-side rate limit that every HTTP request passes (on `ec2_api`'s
//!   token bucket and clock).
//! * [`imds`]: the node and its ENIs from IMDSv2, with the eventual-consistency retries.
//! * [`options`]: `AWS_EC2_ENDPOINT`, `HTTP_TIMEOUT`, who retries (the caller by default under ipamd, or
//!   the SDK); the user agent (`app/aws-cni-<version>`).
//! * [`limits`]: `ipamd gen-limits` and the DescribeInstanceTypes fallback for unknown instance types.
//!
//! Startup ([`connect`]) follows the anchor: IMDS first, for the region and the
//! instance; then the EC2 client for that region with credentials from the default chain (environment, IRSA
//! web identity, profile, container or instance role); then the instance type's limits, from the compiled-in
//! table or DescribeInstanceTypes.
//!
//! This crate is the only one that depends on the AWS SDK, whose build is long and memory hungry; ipamd pulls
//! it in only with its `aws` feature.

pub mod bucket;
pub mod ec2;
pub mod errors;
pub mod http;
pub mod imds;
pub mod limits;
pub mod options;

pub use aws_sdk_ec2;
pub use ec2::AwsEc2;
pub use imds::AwsImds;
pub use limits::{GenLimitsArgs, GenLimitsError};
pub use options::AwsOptions;

use ec2_api::{Imds, ImdsError, NodeMetadata};

/// The backend, connected.
#[derive(Debug, Clone)]
pub struct AwsBackend {
    pub ec2: AwsEc2,
    pub imds: AwsImds,
    /// The node as IMDS described it at startup.
    pub node: NodeMetadata,
    /// The instance type's limits (compiled-in or learned from DescribeInstanceTypes).
    pub limits: &'static instance_limits::InstanceLimits,
}

/// Why the backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Options(#[from] options::OptionsError),
    #[error("instance metadata: {0}")]
    Imds(#[from] ImdsError),
    #[error("instance limits: {0}")]
    Limits(#[from] limits::FallbackError),
}

/// Connects the backend; `get` reads the environment (see [`options`]) over `base` (e.g.
/// [`AwsOptions::caller_retries`]).
pub async fn connect(
    base: AwsOptions,
    get: impl Fn(&str) -> Option<String>,
) -> Result<AwsBackend, BackendError> {
    let opts = AwsOptions::from_env_over(base, get)?;
    let imds = AwsImds::from_env();
    let node = imds.node().await?;
    tracing::info!(
        instance = %node.instance_id,
        instance_type = %node.instance_type,
        region = %node.region,
        endpoint = opts.endpoint.as_deref().unwrap_or("(regional)"),
        "aws backend: instance metadata read"
    );
    let ec2 = AwsEc2::connect(&node.region, &opts).await;
    let limits = limits::limits_or_describe(&ec2, &node.instance_type).await?;
    Ok(AwsBackend {
        ec2,
        imds,
        node,
        limits,
    })
}

#[cfg(test)]
mod sdk_tests;
