//! Subnet discovery as the anchor does it (awsutils.go `getVpcSubnets`/`createENI`), as a pure ordering of
//! candidate subnets, and the retry over them when EC2 says the first is exhausted.
//!
//! [`candidates`]: the subnets of the node's VPC and availability zone a new ENI may go to, best first:
//! - a subnet tagged `kubernetes.io/role/cni` with any value but `0` qualifies, and so does the node's own subnet
//!   untagged; `kubernetes.io/role/cni=0` excludes a subnet, **the node's own included**;
//! - a subnet carrying any `cni.networking.k8s.aws/cluster/<name>` tag is for those clusters only: it qualifies
//!   only when `CLUSTER_NAME` is one of them (without `CLUSTER_NAME`, never);
//! - ordered by free addresses, most first (the node's subnet first on a tie).
//!
//! [`Node::create_in_next_subnet`] is the retry: when CreateNetworkInterface in the subnet placement chose answers
//! `InsufficientFreeAddressesInSubnet`/`InsufficientCidrBlocks` (a fragmented subnet can have most free addresses
//! and no free /28), the other candidates are tried in order, each with its own `ClientToken` (other parameters),
//! before the pool backs off. `enis::attach_eni` calls it only for a placement subnet discovery made (not an
//! ENIConfig's); a placement that returns the whole candidate list could call it directly.

use std::collections::BTreeMap;

use super::enis::TAG_CNI_SUBNET;
use super::Node;
use ec2_api::SubnetFilter;
use ec2_api::{CreateEniRequest, Ec2, Ec2Error, EniDescription, NodeMetadata, SubnetDescription};

/// Prefix of the subnet tags that reserve a subnet for named clusters.
pub const TAG_CNI_CLUSTER_PREFIX: &str = "cni.networking.k8s.aws/cluster/";

fn cluster_allows(tags: &BTreeMap<String, String>, cluster_name: &str) -> bool {
    let mut reserved = tags
        .keys()
        .filter_map(|k| k.strip_prefix(TAG_CNI_CLUSTER_PREFIX))
        .peekable();
    reserved.peek().is_none() || (!cluster_name.is_empty() && reserved.any(|c| c == cluster_name))
}

/// The candidate subnet IDs, best first (see the module docs).
pub fn candidates(
    node: &NodeMetadata,
    subnets: &[SubnetDescription],
    cluster_name: &str,
) -> Vec<String> {
    let mut ok: Vec<&SubnetDescription> = subnets
        .iter()
        .filter(|s| s.vpc_id.is_empty() || s.vpc_id == node.vpc_id)
        .filter(|s| match s.tags.get(TAG_CNI_SUBNET) {
            Some(v) => v != "0",
            None => s.id == node.subnet_id,
        })
        .filter(|s| cluster_allows(&s.tags, cluster_name))
        .collect();
    ok.sort_by_key(|s| {
        (
            std::cmp::Reverse(s.available_ip_count),
            s.id != node.subnet_id,
            s.id.clone(),
        )
    });
    ok.into_iter().map(|s| s.id.clone()).collect()
}

impl Node {
    /// CreateNetworkInterface in the discovery candidates after `exhausted` (the subnet that answered
    /// exhausted), in order; the first success wins. Returns the last exhaustion when every one is exhausted,
    /// and any other error at once.
    pub(crate) async fn create_in_next_subnet(
        &self,
        req: &CreateEniRequest,
        client_token: &str,
        exhausted: Ec2Error,
    ) -> Result<EniDescription, Ec2Error> {
        let filter = SubnetFilter {
            ids: Vec::new(),
            vpc_id: Some(self.meta.vpc_id.clone()),
            availability_zone: Some(self.meta.availability_zone.clone()),
        };
        let subnets = match self.ec2.describe_subnets(&filter).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list other subnets after an exhausted one");
                return Err(exhausted);
            }
        };
        let mut last = exhausted;
        for (i, subnet) in candidates(&self.meta, &subnets, &self.config.cluster_name)
            .into_iter()
            .filter(|s| *s != req.subnet_id)
            .enumerate()
        {
            tracing::info!(subnet = %subnet, after = %req.subnet_id, "subnet exhausted: trying the next candidate");
            let next = CreateEniRequest {
                subnet_id: subnet,
                ..req.clone()
            };
            let token = format!("{client_token}-{}", i + 1);
            match self
                .ec2
                .create_network_interface_with_token(next, &token)
                .await
            {
                Ok(eni) => return Ok(eni),
                Err(e @ Ec2Error::SubnetExhausted { .. }) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeMetadata {
        NodeMetadata {
            instance_id: "i-1".into(),
            instance_type: "m5.large".into(),
            availability_zone: "us-east-1a".into(),
            primary_mac: "02:00:00:00:00:01".into(),
            local_ipv4: "10.0.0.10".parse().expect("ip"),
            vpc_cidrs: vec![],
            region: "us-east-1".into(),
            vpc_id: "vpc-1".into(),
            subnet_id: "subnet-node".into(),
            security_groups: vec![],
        }
    }

    fn subnet(id: &str, free: u64, tags: &[(&str, &str)]) -> SubnetDescription {
        SubnetDescription {
            id: id.into(),
            cidr: "10.0.0.0/24".parse().expect("cidr"),
            availability_zone: "us-east-1a".into(),
            vpc_id: "vpc-1".into(),
            available_ip_count: free,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn candidates_follow_the_anchors_tags_and_free_addresses() {
        let subnets = [
            subnet("subnet-node", 50, &[]),
            subnet("subnet-a", 200, &[(TAG_CNI_SUBNET, "1")]),
            subnet("subnet-b", 100, &[(TAG_CNI_SUBNET, "")]),
            subnet("subnet-untagged", 900, &[]),
            subnet("subnet-off", 800, &[(TAG_CNI_SUBNET, "0")]),
            subnet(
                "subnet-blue",
                700,
                &[
                    (TAG_CNI_SUBNET, "1"),
                    ("cni.networking.k8s.aws/cluster/blue", "1"),
                ],
            ),
        ];
        assert_eq!(
            candidates(&node(), &subnets, "green"),
            vec!["subnet-a", "subnet-b", "subnet-node"]
        );
        assert_eq!(
            candidates(&node(), &subnets, "blue"),
            vec!["subnet-blue", "subnet-a", "subnet-b", "subnet-node"]
        );
        assert_eq!(
            candidates(&node(), &subnets, ""),
            vec!["subnet-a", "subnet-b", "subnet-node"]
        );
    }

    #[test]
    fn role_cni_0_excludes_even_the_nodes_subnet() {
        let subnets = [
            subnet("subnet-node", 500, &[(TAG_CNI_SUBNET, "0")]),
            subnet("subnet-a", 20, &[(TAG_CNI_SUBNET, "1")]),
        ];
        assert_eq!(candidates(&node(), &subnets, ""), vec!["subnet-a"]);
        assert!(candidates(&node(), &subnets[..1], "").is_empty());
    }
}
