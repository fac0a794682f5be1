//! Fixtures for the aws backend's tests: an EC2 client on a [`Moto`] built the way the daemon builds its own,
//! a VPC with a subnet and a security group, an instance, and [`NodeView`]: what moto says about an instance
//! and its attached ENIs, read with the plain SDK (not through the code under test), for the IMDS test server,
//! the ENI fabric and the tests' own checks.

use std::collections::BTreeMap;

use ec2_aws::aws_sdk_ec2::config::Credentials;
use ec2_aws::aws_sdk_ec2::types::{Filter, InstanceType};
use ec2_aws::aws_sdk_ec2::Client;
use ec2_aws::{AwsEc2, AwsOptions};

use crate::moto::{Moto, ACCESS_KEY, REGION, SECRET_KEY};

/// A runtime for tests that are not `async` themselves.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Our `Ec2` implementation on `moto`: the production construction (timeouts, retries, buckets, user agent,
/// endpoint override), with moto's dummy credentials instead of the default chain.
pub async fn ec2_on(moto: &Moto) -> AwsEc2 {
    ec2_at(&moto.endpoint()).await
}

/// Like [`ec2_on`] for any endpoint (e.g. one where nothing listens). Never consults the default credential
/// chain, whose instance-profile step would try the real IMDS address.
pub async fn ec2_at(endpoint: &str) -> AwsEc2 {
    let opts = AwsOptions {
        endpoint: Some(endpoint.to_string()),
        ..AwsOptions::default()
    };
    let sdk = ec2_aws::ec2::loader(REGION, &opts)
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "moto"))
        .load()
        .await;
    AwsEc2::new(&sdk, &opts)
}

/// A VPC with one subnet and one security group.
#[derive(Debug, Clone)]
pub struct Vpc {
    pub vpc_id: String,
    pub cidr: String,
    pub subnet_id: String,
    pub subnet_cidr: String,
    pub az: String,
    pub sg_id: String,
}

/// Creates a [`Vpc`] (`vpc_cidr`, one subnet `subnet_cidr` in us-east-1a).
pub async fn create_vpc(sdk: &Client, vpc_cidr: &str, subnet_cidr: &str) -> Vpc {
    let vpc_id = sdk
        .create_vpc()
        .cidr_block(vpc_cidr)
        .send()
        .await
        .expect("CreateVpc")
        .vpc()
        .and_then(|v| v.vpc_id())
        .expect("vpc id")
        .to_string();
    let az = format!("{REGION}a");
    let subnet_id = sdk
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block(subnet_cidr)
        .availability_zone(&az)
        .send()
        .await
        .expect("CreateSubnet")
        .subnet()
        .and_then(|s| s.subnet_id())
        .expect("subnet id")
        .to_string();
    let sg_id = sdk
        .create_security_group()
        .group_name(format!("nodes-{vpc_id}"))
        .description("aws-cni test nodes")
        .vpc_id(&vpc_id)
        .send()
        .await
        .expect("CreateSecurityGroup")
        .group_id()
        .expect("group id")
        .to_string();
    Vpc {
        vpc_id,
        cidr: vpc_cidr.into(),
        subnet_id,
        subnet_cidr: subnet_cidr.into(),
        az,
        sg_id,
    }
}

/// Launches one instance of `instance_type` in the VPC's subnet; returns its ID.
pub async fn run_instance(sdk: &Client, vpc: &Vpc, instance_type: &str) -> String {
    let out = sdk
        .run_instances()
        .image_id("ami-12c6146b")
        .min_count(1)
        .max_count(1)
        .instance_type(InstanceType::from(instance_type))
        .subnet_id(&vpc.subnet_id)
        .security_group_ids(&vpc.sg_id)
        .send()
        .await
        .expect("RunInstances");
    out.instances()
        .first()
        .and_then(|i| i.instance_id())
        .expect("instance id")
        .to_string()
}

/// One attached ENI as moto describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniView {
    pub eni_id: String,
    /// Lower case.
    pub mac: String,
    pub device_index: u32,
    pub network_card: u32,
    pub subnet_id: String,
    pub subnet_cidr: String,
    pub vpc_id: String,
    pub vpc_cidrs: Vec<String>,
    /// The primary IP first.
    pub ipv4s: Vec<String>,
    pub security_groups: Vec<String>,
}

/// An instance and its attached ENIs, by MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub instance_id: String,
    pub instance_type: String,
    pub az: String,
    pub region: String,
    pub local_ipv4: String,
    pub primary_mac: String,
    pub enis: BTreeMap<String, EniView>,
}

impl NodeView {
    pub fn primary(&self) -> &EniView {
        self.enis
            .get(&self.primary_mac)
            .expect("primary ENI in the view")
    }
}

/// Reads [`NodeView`] from moto: DescribeInstances, DescribeNetworkInterfaces (attached to the instance),
/// DescribeSubnets, DescribeVpcs.
pub async fn node_view(sdk: &Client, instance_id: &str) -> Result<NodeView, String> {
    let err = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    let out = sdk
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .map_err(|e| {
            err(
                "DescribeInstances",
                &ec2_aws::aws_sdk_ec2::error::DisplayErrorContext(e),
            )
        })?;
    let inst = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .next()
        .ok_or_else(|| format!("no instance {instance_id}"))?;
    let az = inst
        .placement()
        .and_then(|p| p.availability_zone())
        .unwrap_or_default()
        .to_string();
    let enis = sdk
        .describe_network_interfaces()
        .filters(
            Filter::builder()
                .name("attachment.instance-id")
                .values(instance_id)
                .build(),
        )
        .send()
        .await
        .map_err(|e| {
            err(
                "DescribeNetworkInterfaces",
                &ec2_aws::aws_sdk_ec2::error::DisplayErrorContext(e),
            )
        })?;
    let mut subnet_ids: Vec<String> = enis
        .network_interfaces()
        .iter()
        .filter_map(|n| n.subnet_id().map(str::to_string))
        .collect();
    subnet_ids.sort();
    subnet_ids.dedup();
    let subnets = sdk
        .describe_subnets()
        .set_subnet_ids(Some(subnet_ids))
        .send()
        .await
        .map_err(|e| {
            err(
                "DescribeSubnets",
                &ec2_aws::aws_sdk_ec2::error::DisplayErrorContext(e),
            )
        })?;
    let subnet_cidr: BTreeMap<String, String> = subnets
        .subnets()
        .iter()
        .filter_map(|s| Some((s.subnet_id()?.to_string(), s.cidr_block()?.to_string())))
        .collect();
    let vpc_id = inst.vpc_id().unwrap_or_default().to_string();
    let vpcs = sdk
        .describe_vpcs()
        .vpc_ids(&vpc_id)
        .send()
        .await
        .map_err(|e| {
            err(
                "DescribeVpcs",
                &ec2_aws::aws_sdk_ec2::error::DisplayErrorContext(e),
            )
        })?;
    let vpc_cidrs: Vec<String> = vpcs
        .vpcs()
        .iter()
        .flat_map(|v| v.cidr_block_association_set())
        .filter_map(|a| a.cidr_block().map(str::to_string))
        .collect();
    let mut view = NodeView {
        instance_id: instance_id.to_string(),
        instance_type: inst
            .instance_type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        region: az
            .trim_end_matches(|c: char| c.is_ascii_lowercase())
            .to_string(),
        az,
        local_ipv4: inst.private_ip_address().unwrap_or_default().to_string(),
        primary_mac: String::new(),
        enis: BTreeMap::new(),
    };
    for n in enis.network_interfaces() {
        let Some(att) = n.attachment() else { continue };
        if att.status().map(|s| s.as_str()) == Some("detached") {
            continue;
        }
        let mac = n.mac_address().unwrap_or_default().to_ascii_lowercase();
        let primary = n.private_ip_address().unwrap_or_default().to_string();
        let mut ipv4s = vec![primary.clone()];
        ipv4s.extend(
            n.private_ip_addresses()
                .iter()
                .filter_map(|a| a.private_ip_address())
                .filter(|ip| *ip != primary)
                .map(str::to_string),
        );
        let subnet_id = n.subnet_id().unwrap_or_default().to_string();
        let device_index = u32::try_from(att.device_index().unwrap_or(0)).unwrap_or(0);
        if device_index == 0 {
            view.primary_mac = mac.clone();
        }
        view.enis.insert(
            mac.clone(),
            EniView {
                eni_id: n.network_interface_id().unwrap_or_default().to_string(),
                mac,
                device_index,
                network_card: u32::try_from(att.network_card_index().unwrap_or(0)).unwrap_or(0),
                subnet_cidr: subnet_cidr.get(&subnet_id).cloned().unwrap_or_default(),
                subnet_id,
                vpc_id: n.vpc_id().unwrap_or_default().to_string(),
                vpc_cidrs: vpc_cidrs.clone(),
                ipv4s,
                security_groups: n
                    .groups()
                    .iter()
                    .filter_map(|g| g.group_id().map(str::to_string))
                    .collect(),
            },
        );
    }
    if view.primary_mac.is_empty() {
        return Err(format!("{instance_id} has no ENI at device index 0"));
    }
    Ok(view)
}
