//! Every environment variable of the anchor's `aws-node` DaemonSet (aws/amazon-vpc-cni-k8s), and what this ipamd
//! does with it.
//!
//! A user swaps our image into an existing `aws-node` DaemonSet, so its env arrives unchanged. A variable whose
//! meaning we do not implement must never be ignored silently when it asks for a behaviour we do not have: a pod
//! network that looks fine but puts pods in the wrong subnet, skips their security groups or hands IPv4 addresses
//! to an IPv6 cluster is worse than a daemon that refuses to start and says why. So each anchor variable has one
//! [`Stance`]:
//!
//! * [`Stance::Read`]: implemented, by ipamd, its installer or the plugin's conflist;
//! * [`Stance::Refused`]: not implemented; startup stops with an error naming the variable and what would go
//!   wrong, unless the value asks for the anchor's default behaviour (which is ours);
//! * [`Stance::Ignored`]: not read, and harmless whatever its value (why is written next to it).
//!
//! [`refuse_unsupported`] is the check `ipamd run` makes before it touches the node. The table is kept complete by
//! a test that reads the anchor's variable list.

use super::env::{parse_bool, EnvSource};
use super::ConfigError;

/// What this ipamd does with one anchor variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stance {
    /// Implemented; the string says by whom.
    Read(&'static str),
    /// Not implemented: any value but `default` stops startup with `why`.
    Refused {
        /// The value that asks for the anchor's default behaviour.
        default: Default,
        /// What would go wrong if ipamd ran anyway.
        why: &'static str,
    },
    /// Not read, harmless whatever its value; the string says why.
    Ignored(&'static str),
}

/// The value of a refused variable that means "the anchor's default", which ipamd does implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    /// A boolean (read as [`parse_bool`] reads it; unset or empty is the default).
    Bool(bool),
    /// Unset or empty.
    Empty,
}

/// The anchor's variables, by name.
pub const ANCHOR_VARIABLES: &[(&str, Stance)] = &[
    ("WARM_ENI_TARGET", Stance::Read("ipamd")),
    ("WARM_IP_TARGET", Stance::Read("ipamd")),
    ("MINIMUM_IP_TARGET", Stance::Read("ipamd")),
    ("WARM_PREFIX_TARGET", Stance::Read("ipamd")),
    ("ENABLE_PREFIX_DELEGATION", Stance::Read("ipamd")),
    ("MAX_ENI", Stance::Read("ipamd")),
    ("IP_COOLDOWN_PERIOD", Stance::Read("ipamd")),
    ("DISABLE_NETWORK_RESOURCE_PROVISIONING", Stance::Read("ipamd")),
    ("DISABLE_LEAKED_ENI_CLEANUP", Stance::Read("ipamd")),
    ("ENABLE_SUBNET_DISCOVERY", Stance::Read("ipamd")),
    ("MANAGE_UNTAGGED_ENI", Stance::Read("ipamd")),
    ("AWS_VPC_K8S_CNI_EXTERNALSNAT", Stance::Read("ipamd")),
    ("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", Stance::Read("ipamd")),
    ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", Stance::Read("ipamd")),
    ("AWS_VPC_K8S_CNI_CONNMARK", Stance::Read("ipamd")),
    ("AWS_VPC_CNI_NODE_PORT_SUPPORT", Stance::Read("ipamd")),
    ("AWS_VPC_ENI_MTU", Stance::Read("ipamd and the installer")),
    ("POD_MTU", Stance::Read("ipamd and the installer")),
    ("AWS_VPC_K8S_CNI_VETHPREFIX", Stance::Read("ipamd and the installer")),
    ("CLUSTER_NAME", Stance::Read("ipamd")),
    ("ADDITIONAL_ENI_TAGS", Stance::Read("ipamd")),
    ("AWS_EC2_ENDPOINT", Stance::Read("ipamd's aws backend")),
    ("HTTP_TIMEOUT", Stance::Read("ipamd's aws backend")),
    ("AWS_VPC_K8S_CNI_BACKING_STORE", Stance::Read("ipamd")),
    ("AWS_VPC_K8S_CNI_LOGLEVEL", Stance::Read("ipamd")),
    ("AWS_VPC_K8S_CNI_LOG_FILE", Stance::Read("ipamd")),
    ("AWS_VPC_K8S_PLUGIN_LOG_LEVEL", Stance::Read("the installer (conflist)")),
    ("AWS_VPC_K8S_PLUGIN_LOG_FILE", Stance::Read("the installer (conflist)")),
    ("INTROSPECTION_BIND_ADDRESS", Stance::Read("ipamd")),
    ("DISABLE_INTROSPECTION", Stance::Read("ipamd")),
    ("DISABLE_METRICS", Stance::Read("ipamd")),
    ("HOST_CNI_BIN_PATH", Stance::Read("the installer")),
    ("HOST_CNI_CONFDIR_PATH", Stance::Read("the installer")),
    ("POD_SECURITY_GROUP_ENFORCING_MODE", Stance::Read("the installer (conflist)")),
    ("DISABLE_TCP_EARLY_DEMUX", Stance::Read("the installer (sysctl)")),
    ("DISABLE_POD_V6", Stance::Read("the installer (conflist)")),
    ("ENABLE_BANDWIDTH_PLUGIN", Stance::Read("the installer (conflist)")),
    ("NETWORK_POLICY_ENFORCING_MODE", Stance::Read("ipamd (policy agent contract)")),
    ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", Stance::Read("ipamd")),
    ("ENI_CONFIG_ANNOTATION_DEF", Stance::Read("ipamd (custom networking)")),
    ("ENI_CONFIG_LABEL_DEF", Stance::Read("ipamd (custom networking)")),
    ("ENABLE_IPv6", Stance::Read("ipamd and the installer")),
    ("ENABLE_IPv4", Stance::Read("ipamd")),
    ("ENABLE_V6_EGRESS", Stance::Read("the installer (sysctls, conflist)")),
    ("ENABLE_V4_EGRESS", Stance::Read("the installer (conflist)")),
    (
        "AWS_VPC_K8S_EGRESS_V4_PLUGIN_LOG_FILE",
        Stance::Read("the installer (conflist)"),
    ),
    (
        "AWS_VPC_K8S_EGRESS_V6_PLUGIN_LOG_FILE",
        Stance::Read("the installer (conflist)"),
    ),
    ("ANNOTATE_POD_IP", Stance::Read("ipamd (Kubernetes API)")),
    ("AWS_MANAGE_ENIS_NON_SCHEDULABLE", Stance::Read("ipamd (Kubernetes API)")),
    ("CLUSTER_ENDPOINT", Stance::Read("ipamd (Kubernetes API)")),
    ("MY_NODE_NAME", Stance::Read("ipamd (Kubernetes API)")),
    ("MY_POD_NAME", Stance::Read("ipamd (Kubernetes API: events)")),
    (
        "ENABLE_POD_ENI",
        Stance::Refused {
            default: Default::Bool(false),
            why: "security groups for pods are not supported yet: the AWS control plane reads this variable from \
                  the aws-node DaemonSet and would start wiring branch ENIs to pods our plugin cannot set up",
        },
    ),
    (
        "ENABLE_MULTI_NIC",
        Stance::Refused {
            default: Default::Bool(false),
            why: "network cards other than 0 are not managed: multi-homed pods would get only one interface",
        },
    ),
    (
        "ENABLE_IMDS_ONLY_MODE",
        Stance::Refused {
            default: Default::Bool(false),
            why: "IMDS-only mode is not supported: ipamd would still call EC2 (to describe, create and clean up \
                  ENIs) where the operator asked for no EC2 calls at all",
        },
    ),
    (
        "AWS_EXTERNAL_SERVICE_CIDRS",
        Stance::Refused {
            default: Default::Empty,
            why: "external service CIDRs are not supported yet: no rule 1535 sends them through the main table, so \
                  traffic from pods on secondary ENIs to those CIDRs would leave through the pod's ENI",
        },
    ),
    (
        "VPC_CNI_VERSION",
        Stance::Ignored("the EC2 user agent carries this build's own version"),
    ),
    (
        "AWS_VPC_K8S_CNI_CONFIGURE_RPFILTER",
        Stance::Ignored("deprecated no-op in the anchor"),
    ),
    (
        "ENABLE_NFTABLES",
        Stance::Ignored("deprecated in the anchor (the backend is detected)"),
    ),
];

/// What ipamd does with `name`, if it is an anchor variable.
pub fn stance(name: &str) -> Option<Stance> {
    ANCHOR_VARIABLES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
}

/// Stops startup when a variable asks for a behaviour this ipamd does not have: the error names the variable, its
/// value and what would go wrong. Returns the first such variable in table order.
pub fn refuse_unsupported(env: &dyn EnvSource) -> Result<(), ConfigError> {
    for (name, stance) in ANCHOR_VARIABLES {
        let Stance::Refused { default, why } = *stance else {
            continue;
        };
        let Some(value) = env.get(name) else {
            continue;
        };
        let is_default = match default {
            Default::Empty => value.trim().is_empty(),
            Default::Bool(d) => parse_bool(env, name)?.is_none_or(|b| b == d),
        };
        if !is_default {
            return Err(ConfigError {
                var: name,
                value,
                reason: format!("not supported by this ipamd: {why}"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    use super::*;
    use crate::config::env::env_map as env;

    #[test]
    fn defaults_and_unset_values_start() {
        assert_eq!(refuse_unsupported(&env(&[])), Ok(()));
        let defaults = env(&[
            ("ENABLE_POD_ENI", "false"),
            ("ENABLE_IPv6", "false"),
            ("ENABLE_IPv4", "true"),
            ("MANAGE_UNTAGGED_ENI", "true"),
            ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true"),
            ("AWS_EXTERNAL_SERVICE_CIDRS", " "),
            ("ENABLE_MULTI_NIC", ""),
            // Ignored and read variables are never refused, whatever their value.
            ("AWS_MANAGE_ENIS_NON_SCHEDULABLE", "true"),
            ("ENI_CONFIG_LABEL_DEF", "topology.kubernetes.io/zone"),
        ]);
        assert_eq!(refuse_unsupported(&defaults), Ok(()));
    }

    #[test]
    fn every_refused_variable_stops_startup_naming_itself_and_the_consequence() {
        for (name, stance) in ANCHOR_VARIABLES {
            let Stance::Refused { default, why } = stance else {
                continue;
            };
            let bad = match default {
                Default::Bool(d) => (!d).to_string(),
                Default::Empty => "10.100.0.0/16".to_string(),
            };
            let err = refuse_unsupported(&env(&[(name, &bad)])).expect_err(name);
            assert_eq!(err.var, *name);
            assert_eq!(err.value, bad);
            assert!(err.reason.contains(why), "{err}");
            assert!(
                err.to_string().contains(name) && err.to_string().contains("not supported"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_refused_boolean_that_is_not_a_boolean_is_an_invalid_value() {
        let err = refuse_unsupported(&env(&[("ENABLE_POD_ENI", "maybe")])).expect_err("invalid");
        assert_eq!(err.var, "ENABLE_POD_ENI");
        assert!(err.reason.contains("true or false"), "{err}");
    }

    /// The anchor's variable list, from its study beside the repository (`../shared/reference/anchor-facts.md`,
    /// section 3.7: a table whose first column names the variables). `AWS_CNI_ANCHOR_FACTS` points elsewhere.
    fn anchor_variable_list() -> BTreeSet<String> {
        let path = std::env::var_os("AWS_CNI_ANCHOR_FACTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../../shared/reference/anchor-facts.md")
            });
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (set AWS_CNI_ANCHOR_FACTS to the anchor study)",
                path.display()
            )
        });
        let section = text
            .split("### 3.7")
            .nth(1)
            .and_then(|s| s.split("\n### ").next())
            .expect("section 3.7 of the anchor study");
        let mut names = BTreeSet::new();
        for line in section.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.split('|').collect();
            let mut previous = String::new();
            // Every backticked name of the first column; the last row lists deprecated names in its third.
            let columns = if line.starts_with("| deprecated") {
                &cells[3..4]
            } else {
                &cells[1..2]
            };
            for name in columns.iter().flat_map(|c| c.split('`').skip(1).step_by(2)) {
                // `V4/V6` stands for two names; `_LOG_FILE` after `X_LOGLEVEL` is shorthand for `X_LOG_FILE`.
                let expanded: Vec<String> = if name.contains("V4/V6") {
                    vec![name.replace("V4/V6", "V4"), name.replace("V4/V6", "V6")]
                } else if let Some(rest) = name.strip_prefix('_') {
                    let parts: Vec<&str> = previous.split('_').collect();
                    (1..parts.len())
                        .rev()
                        .map(|n| format!("{}_{rest}", parts[..n].join("_")))
                        .filter(|candidate| stance(candidate).is_some())
                        .take(1)
                        .collect()
                } else {
                    vec![name.to_string()]
                };
                assert!(
                    !expanded.is_empty(),
                    "cannot expand {name} after {previous}"
                );
                previous = expanded[0].clone();
                names.extend(expanded);
            }
        }
        // The deprecated row does not start with a backtick.
        for line in section.lines().filter(|l| l.starts_with("| deprecated")) {
            names.extend(line.split('`').skip(1).step_by(2).map(str::to_string));
        }
        names
    }

    #[test]
    fn every_anchor_variable_has_a_stance() {
        let anchor = anchor_variable_list();
        assert!(anchor.len() > 40, "parsed too few names: {anchor:?}");
        let missing: Vec<_> = anchor.iter().filter(|n| stance(n).is_none()).collect();
        assert!(
            missing.is_empty(),
            "anchor variables with no stance: {missing:?}"
        );
    }

    #[test]
    fn the_readme_lists_every_refused_variable() {
        let readme =
            std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
                .expect("README.md");
        let section = readme
            .split("Refused settings")
            .nth(1)
            .expect("a 'Refused settings' section in the README");
        for (name, stance) in ANCHOR_VARIABLES {
            if matches!(stance, Stance::Refused { .. }) {
                assert!(section.contains(&format!("`{name}`")), "README: {name}");
            }
        }
    }
}
