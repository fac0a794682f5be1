//! deploy/iam-policy.json against the EC2 calls ipamd makes.
//!
//! The calls are the methods of the `ec2_api::Ec2` trait (ec2-api/src/ec2.rs), read from the source so that a new
//! method without a row in [`ACTIONS`] fails the check instead of shipping a policy that lacks its permission.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::CheckError;

/// Trait method → IAM action. `CreateTags` covers both `create_tags` and the tags set at ENI creation
/// (`TagSpecifications` needs `ec2:CreateTags` on the new network interface).
pub const ACTIONS: [(&str, &str); 14] = [
    ("create_network_interface", "ec2:CreateNetworkInterface"),
    ("create_network_interface", "ec2:CreateTags"),
    ("attach_network_interface", "ec2:AttachNetworkInterface"),
    (
        "set_delete_on_termination",
        "ec2:ModifyNetworkInterfaceAttribute",
    ),
    ("assign_private_ips", "ec2:AssignPrivateIpAddresses"),
    ("unassign_private_ips", "ec2:UnassignPrivateIpAddresses"),
    ("detach_network_interface", "ec2:DetachNetworkInterface"),
    ("delete_network_interface", "ec2:DeleteNetworkInterface"),
    (
        "describe_network_interfaces",
        "ec2:DescribeNetworkInterfaces",
    ),
    ("list_network_interfaces", "ec2:DescribeNetworkInterfaces"),
    ("describe_instance", "ec2:DescribeInstances"),
    ("describe_subnets", "ec2:DescribeSubnets"),
    ("create_tags", "ec2:CreateTags"),
    ("describe_instance_types", "ec2:DescribeInstanceTypes"),
];

/// An IAM policy document, strictly (the fields deploy/ uses).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(rename = "Version")]
    pub version: String,
    #[serde(rename = "Statement")]
    pub statement: Vec<Statement>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    #[serde(rename = "Sid")]
    pub sid: String,
    #[serde(rename = "Effect")]
    pub effect: String,
    #[serde(rename = "Action")]
    pub action: Vec<String>,
    #[serde(rename = "Resource")]
    pub resource: String,
}

/// The `async fn` names of `pub trait Ec2` in ec2.rs's text.
pub fn ec2_trait_methods(src: &str) -> Result<Vec<String>, CheckError> {
    let start = src
        .find("pub trait Ec2")
        .ok_or_else(|| CheckError::invalid("ec2-api/src/ec2.rs", "no `pub trait Ec2`"))?;
    let body = &src[start..];
    // The trait ends at the first line that is exactly "}".
    let end = body
        .find("\n}")
        .ok_or_else(|| CheckError::invalid("ec2-api/src/ec2.rs", "unterminated trait"))?;
    let methods: Vec<String> = body[..end]
        .split("async fn ")
        .skip(1)
        .filter_map(|s| s.split(['(', '<']).next())
        .map(|s| s.trim().to_string())
        .collect();
    if methods.is_empty() {
        return Err(CheckError::invalid(
            "ec2-api/src/ec2.rs",
            "no async fn in trait Ec2",
        ));
    }
    Ok(methods)
}

/// Problems of `policy` given the trait's methods: unmapped methods, missing actions, actions nothing needs,
/// statements that are not Allow.
pub fn policy_problems(policy: &Policy, methods: &[String]) -> Vec<String> {
    let mut p = Vec::new();
    if policy.version != "2012-10-17" {
        p.push(format!("Version must be 2012-10-17, is {}", policy.version));
    }
    let mut needed = BTreeSet::new();
    for m in methods {
        let acts: Vec<&str> = ACTIONS
            .iter()
            .filter(|(meth, _)| meth == m)
            .map(|(_, a)| *a)
            .collect();
        if acts.is_empty() {
            p.push(format!(
                "Ec2::{m} has no IAM action in deploy-check's table: add it there and to deploy/iam-policy.json"
            ));
        }
        needed.extend(acts);
    }
    let mut granted = BTreeSet::new();
    for s in &policy.statement {
        if s.effect != "Allow" {
            p.push(format!("statement {} is not Allow", s.sid));
        }
        for a in &s.action {
            if a.contains('*') {
                p.push(format!("statement {}: wildcard action {a}", s.sid));
            }
            if !granted.insert(a.as_str()) {
                p.push(format!("{a} is granted twice"));
            }
        }
        let tag_only = s.action.iter().all(|a| a == "ec2:CreateTags");
        if tag_only && s.resource != "arn:aws:ec2:*:*:network-interface/*" {
            p.push(format!(
                "statement {}: CreateTags must be limited to network interfaces",
                s.sid
            ));
        }
        if !tag_only && s.action.iter().any(|a| a == "ec2:CreateTags") {
            p.push(format!(
                "statement {}: CreateTags belongs in its own statement limited to network interfaces",
                s.sid
            ));
        }
    }
    for a in needed.difference(&granted) {
        p.push(format!("{a} is needed but not granted"));
    }
    for a in granted.difference(&needed) {
        p.push(format!("{a} is granted but no EC2 call needs it"));
    }
    p
}
