//! The instance-limits table from DescribeInstanceTypes: `ipamd gen-limits`, and the daemon's fallback for an
//! instance type the compiled-in table does not know.
//!
//! Both go through the [`Ec2`] trait, so the same code runs against EC2, moto or the simulator. The rows are
//! built with the rules of the table format (instance-limits crate docs; [`crate::ec2::instance_type_from_sdk`]
//! applies them to the API's answer) and laid out by [`instance_limits::format::render`], so the output is the
//! committed `instance-limits/data/instance-limits.tsv` byte for byte when the API answers the same.

use std::path::PathBuf;
use std::time::Duration;

use ec2_api::{Ec2, Ec2Error, InstanceTypeInfo};
use instance_limits::format::{render, FormatError, Row};
use instance_limits::InstanceLimits;

use crate::ec2::AwsEc2;
use crate::options::{AwsOptions, MIN_HTTP_TIMEOUT};

/// `ipamd gen-limits`: page through DescribeInstanceTypes and write the instance-limits table.
#[derive(Debug, Clone, clap::Args)]
pub struct GenLimitsArgs {
    /// EC2 API endpoint URL (a regional EC2 endpoint, or a local moto server such as http://127.0.0.1:5000).
    /// Credentials come from the usual AWS_* variables / profile / instance role.
    #[arg(long)]
    pub endpoint: String,
    /// Write the table to this file (atomically); standard output when absent or '-'.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Region to sign the requests for.
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Seconds per HTTP attempt. The full catalogue is one large answer (moto takes several seconds to
    /// build it), so this is longer than the daemon's `HTTP_TIMEOUT`.
    #[arg(long, default_value_t = 120)]
    pub http_timeout: u64,
}

/// Why the table could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum GenLimitsError {
    #[error("DescribeInstanceTypes: {0}")]
    Ec2(#[from] Ec2Error),
    #[error("the answer does not make a valid table: {0}")]
    Format(#[from] FormatError),
    #[error("the answer listed no instance types")]
    Empty,
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why the limits of an unknown instance type could not be learned.
#[derive(Debug, thiserror::Error)]
pub enum FallbackError {
    #[error("DescribeInstanceTypes({instance_type}): {source}")]
    Ec2 {
        instance_type: String,
        source: Ec2Error,
    },
    #[error("DescribeInstanceTypes did not describe {0}")]
    Missing(String),
    #[error("DescribeInstanceTypes({instance_type}) gave unusable limits: {reason}")]
    Invalid {
        instance_type: String,
        reason: String,
    },
}

/// One table row.
pub fn row(info: &InstanceTypeInfo) -> Row {
    Row {
        instance_type: info.instance_type.clone(),
        enis: info.enis,
        default_network_card_index: info.default_network_card_index,
        network_cards: info.network_cards.clone(),
        ipv4_per_eni: info.ipv4_per_eni,
        ipv6_per_eni: info.ipv6_per_eni,
        hypervisor: info.hypervisor.clone(),
        bare_metal: info.bare_metal,
        vcpus: info.vcpus,
    }
}

/// Every instance type `ec2` knows, as the table's text.
pub async fn generate(ec2: &dyn Ec2) -> Result<(String, usize), GenLimitsError> {
    let infos = ec2.describe_instance_types(&[]).await?;
    if infos.is_empty() {
        return Err(GenLimitsError::Empty);
    }
    let rows: Vec<Row> = infos.iter().map(row).collect();
    let text = render(&rows)?;
    let count = text.lines().count().saturating_sub(1);
    Ok((text, count))
}

/// `ipamd gen-limits`; returns the number of instance types written.
pub async fn run(args: &GenLimitsArgs) -> Result<usize, GenLimitsError> {
    let opts = AwsOptions {
        endpoint: Some(args.endpoint.clone()),
        http_timeout: Duration::from_secs(args.http_timeout).max(MIN_HTTP_TIMEOUT),
        ..AwsOptions::default()
    };
    let ec2 = AwsEc2::connect(&args.region, &opts).await;
    let (text, count) = generate(&ec2).await?;
    match args.out.as_deref() {
        None => print!("{text}"),
        Some(p) if p.as_os_str() == "-" => print!("{text}"),
        Some(path) => {
            let err = |source| GenLimitsError::Write {
                path: path.to_owned(),
                source,
            };
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            std::fs::write(&tmp, &text).map_err(err)?;
            std::fs::rename(&tmp, path).map_err(err)?;
        }
    }
    Ok(count)
}

/// The limits of `instance_type`: the compiled-in table, else one DescribeInstanceTypes call whose answer is
/// added to the table for the rest of the process (the anchor's runtime fallback).
pub async fn limits_or_describe(
    ec2: &dyn Ec2,
    instance_type: &str,
) -> Result<&'static InstanceLimits, FallbackError> {
    if let Some(l) = instance_limits::lookup(instance_type) {
        return Ok(l);
    }
    tracing::warn!(
        instance_type,
        "instance type not in the compiled-in limits table; asking DescribeInstanceTypes"
    );
    let infos = ec2
        .describe_instance_types(&[instance_type.to_string()])
        .await
        .map_err(|source| FallbackError::Ec2 {
            instance_type: instance_type.to_string(),
            source,
        })?;
    let info = infos
        .iter()
        .find(|i| i.instance_type == instance_type)
        .ok_or_else(|| FallbackError::Missing(instance_type.to_string()))?;
    let learned = instance_limits::learn(&row(info)).map_err(|reason| FallbackError::Invalid {
        instance_type: instance_type.to_string(),
        reason,
    })?;
    tracing::info!(
        instance_type,
        enis = learned.enis,
        ipv4_per_eni = learned.ipv4_per_eni,
        "learned instance limits from DescribeInstanceTypes"
    );
    Ok(learned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_the_info_field_for_field() {
        let info = InstanceTypeInfo {
            instance_type: "zz9.plural".into(),
            enis: 4,
            default_network_card_index: 0,
            network_cards: vec![(0, 4), (1, 4)],
            ipv4_per_eni: 15,
            ipv6_per_eni: 15,
            hypervisor: "nitro".into(),
            bare_metal: false,
            vcpus: 8,
        };
        assert_eq!(
            row(&info).to_line(),
            "zz9.plural\t4\t0\t0:4,1:4\t15\t15\tnitro\tfalse\t8"
        );
    }
}
