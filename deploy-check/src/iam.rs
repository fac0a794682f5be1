//! deploy/iam-policy.json against the EC2 calls ipamd makes.
//!
//! The calls are `ec2_api::Api`, the one list of EC2 actions that every `ec2_api::Ec2` method maps to (the
//! layer that forwards the trait cannot be written without a variant per call), so a new call without its
//! permission in the policy fails the check instead of shipping. `CreateTags` is also what tagging at ENI
//! creation needs (`TagSpecifications` needs `ec2:CreateTags` on the new network interface).

use std::collections::BTreeSet;

use ec2_api::Api;
use serde::{Deserialize, Serialize};

/// The IAM actions the EC2 calls need: one per [`Api`].
pub fn needed_actions() -> BTreeSet<String> {
    Api::ALL.iter().map(|a| a.iam_action()).collect()
}

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

/// Problems of `policy` given the `needed` actions ([`needed_actions`]): missing actions, actions nothing
/// needs, wildcards, statements that are not Allow, CreateTags not limited to network interfaces.
pub fn policy_problems(policy: &Policy, needed: &BTreeSet<String>) -> Vec<String> {
    let mut p = Vec::new();
    if policy.version != "2012-10-17" {
        p.push(format!("Version must be 2012-10-17, is {}", policy.version));
    }
    let needed: BTreeSet<&str> = needed.iter().map(String::as_str).collect();
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
