//! The EC2 actions the daemon calls, named once.
//!
//! Every [`crate::Ec2`] method is one EC2 action (`list_network_interfaces` and `describe_network_interfaces`
//! are both `DescribeNetworkInterfaces`). The action's name labels metrics, call counts and errors
//! ([`crate::Ec2Error::api`]); its IAM action is what the node's role must allow (`deploy-check` compares
//! [`Api::ALL`] with `deploy/iam-policy.json`); whether it mutates picks EC2's request-rate class (mutating
//! actions draw from smaller buckets than `Describe*`).
//!
//! Adding an EC2 call: a method on [`crate::Ec2`], its forward in [`crate::layer::Layered`], a variant here,
//! and the backends (`ec2-aws`, `ec2-sim`).

/// EC2's default request-rate bucket of an account for each mutating action: 200 tokens refilled at 5 per second.
pub const MUTATING_BUCKET: (u32, f64) = (200, 5.0);

/// EC2's default request-rate bucket of an account for each `Describe*` action: 100 tokens refilled at 20 per
/// second.
pub const NON_MUTATING_BUCKET: (u32, f64) = (100, 20.0);

/// One EC2 action (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Api {
    CreateNetworkInterface,
    AttachNetworkInterface,
    ModifyNetworkInterfaceAttribute,
    AssignPrivateIpAddresses,
    UnassignPrivateIpAddresses,
    AssignIpv6Addresses,
    DetachNetworkInterface,
    DeleteNetworkInterface,
    DescribeNetworkInterfaces,
    DescribeInstances,
    DescribeSubnets,
    CreateTags,
    DescribeInstanceTypes,
}

impl Api {
    /// Every action, in the order of the [`crate::Ec2`] trait.
    pub const ALL: [Api; 13] = [
        Api::CreateNetworkInterface,
        Api::AttachNetworkInterface,
        Api::ModifyNetworkInterfaceAttribute,
        Api::AssignPrivateIpAddresses,
        Api::UnassignPrivateIpAddresses,
        Api::AssignIpv6Addresses,
        Api::DetachNetworkInterface,
        Api::DeleteNetworkInterface,
        Api::DescribeNetworkInterfaces,
        Api::DescribeInstances,
        Api::DescribeSubnets,
        Api::CreateTags,
        Api::DescribeInstanceTypes,
    ];

    /// The action's name as EC2 spells it (`Action=` of the query protocol).
    pub const fn name(self) -> &'static str {
        match self {
            Api::CreateNetworkInterface => "CreateNetworkInterface",
            Api::AttachNetworkInterface => "AttachNetworkInterface",
            Api::ModifyNetworkInterfaceAttribute => "ModifyNetworkInterfaceAttribute",
            Api::AssignPrivateIpAddresses => "AssignPrivateIpAddresses",
            Api::UnassignPrivateIpAddresses => "UnassignPrivateIpAddresses",
            Api::AssignIpv6Addresses => "AssignIpv6Addresses",
            Api::DetachNetworkInterface => "DetachNetworkInterface",
            Api::DeleteNetworkInterface => "DeleteNetworkInterface",
            Api::DescribeNetworkInterfaces => "DescribeNetworkInterfaces",
            Api::DescribeInstances => "DescribeInstances",
            Api::DescribeSubnets => "DescribeSubnets",
            Api::CreateTags => "CreateTags",
            Api::DescribeInstanceTypes => "DescribeInstanceTypes",
        }
    }

    /// The IAM action the node's role needs for it.
    pub fn iam_action(self) -> String {
        format!("ec2:{}", self.name())
    }

    /// Whether it changes anything (EC2 rate-limits mutating actions apart from `Describe*`).
    pub const fn is_mutating(self) -> bool {
        !matches!(
            self,
            Api::DescribeNetworkInterfaces
                | Api::DescribeInstances
                | Api::DescribeSubnets
                | Api::DescribeInstanceTypes
        )
    }

    /// EC2's documented default request-rate bucket of an account for this action, `(capacity, refill per
    /// second)`: [`MUTATING_BUCKET`] or [`NON_MUTATING_BUCKET`]. The simulator's throttling and the cluster's
    /// EC2 schedule (ipamd) both take their sizes from here.
    pub const fn account_bucket(self) -> (u32, f64) {
        if self.is_mutating() {
            MUTATING_BUCKET
        } else {
            NON_MUTATING_BUCKET
        }
    }

    /// The action called `name`, if it is one of ours.
    pub fn from_name(name: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl std::fmt::Display for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        let names: std::collections::BTreeSet<&str> = Api::ALL.iter().map(|a| a.name()).collect();
        assert_eq!(names.len(), Api::ALL.len());
        for a in Api::ALL {
            assert_eq!(Api::from_name(a.name()), Some(a));
            assert_eq!(a.iam_action(), format!("ec2:{a}"));
            // EC2's rate classes: Describe* apart from the rest.
            assert_eq!(a.is_mutating(), !a.name().starts_with("Describe"), "{a}");
        }
        assert_eq!(Api::from_name("RunInstances"), None);
    }
}
