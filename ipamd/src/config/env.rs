//! Reading the daemon's [`Config`] from the environment, with the anchor's variable names and defaults.
//!
//! All reads go through [`EnvSource`], so tests pass a map and nothing deep in the daemon reads `std::env`.
//! Every invalid value stops startup with an error that names the variable and the value. Booleans are read by
//! one parser, [`parse_bool`] (`true`/`1`/`yes`, `false`/`0`/`no`, any case; empty is unset), which the
//! installer and the daemon's endpoint switches use as well.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `WARM_ENI_TARGET` | 1 | free ENIs' worth of IPs to keep (ignored when an IP target is set) |
//! | `WARM_IP_TARGET` | unset | free IPs to keep |
//! | `MINIMUM_IP_TARGET` | unset | floor on total IPs |
//! | `WARM_PREFIX_TARGET` | unset | free /28 prefixes to keep (prefix delegation) |
//! | `ENABLE_PREFIX_DELEGATION` | false | /28 prefixes instead of secondary IPs (Nitro only) |
//! | `MAX_ENI` | unset (-1) | cap on ENIs below the instance limit |
//! | `IP_COOLDOWN_PERIOD` | 30 | seconds before a released IP is handed out again |
//! | `DISABLE_NETWORK_RESOURCE_PROVISIONING` | false | never change anything in EC2 |
//! | `AWS_VPC_K8S_CNI_EXTERNALSNAT` | false | no SNAT/connmark rules on the node |
//! | `AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS` | "" | comma list of IPv4 CIDRs not SNATed |
//! | `AWS_VPC_K8S_CNI_RANDOMIZESNAT` | prng | `prng` (--random-fully), `hashrandom` (--random), `none` |
//! | `AWS_VPC_K8S_CNI_CONNMARK` | 0x80 | the connmark/fwmark bit of non-VPC pod traffic |
//! | `AWS_VPC_CNI_NODE_PORT_SUPPORT` | true | mark NodePort traffic so replies leave through the primary ENI |
//! | `AWS_VPC_ENI_MTU` | 9001 | ENI MTU (576-9001) |
//! | `POD_MTU` | `AWS_VPC_ENI_MTU` | pod veth MTU (576-9001) |
//! | `MANAGE_UNTAGGED_ENI` | true | false: ENIs without this instance's `instance_id` tag are left alone |
//! | `ENABLE_SUBNET_DISCOVERY` | true | new ENIs go to the subnet with most free IPs among the node's and those tagged `kubernetes.io/role/cni` |
//! | `CLUSTER_NAME` | "" | cluster tag on new ENIs, and leak-cleanup filter |
//! | `ADDITIONAL_ENI_TAGS` | {} | JSON object of extra ENI tags (keys containing `k8s.amazonaws.com` dropped) |
//! | `DISABLE_LEAKED_ENI_CLEANUP` | false | no periodic deletion of this instance's leaked ENIs |
//! | `AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG` | false | custom networking: new ENIs in the subnet and security groups of the node's `ENIConfig`; the primary ENI carries no pods |
//! | `ENI_CONFIG_ANNOTATION_DEF` | `k8s.amazonaws.com/eniConfig` | node annotation naming the `ENIConfig` |
//! | `ENI_CONFIG_LABEL_DEF` | `k8s.amazonaws.com/eniConfig` | node label naming the `ENIConfig` (after the label `vpc.amazonaws.com/externalEniConfig` and the annotation; else `default`) |
//! | `ENABLE_IPv6` / `ENABLE_IPv4` | false / true | the pods' address family: exactly one is true; IPv6 needs `ENABLE_PREFIX_DELEGATION=true` (one /80 on the primary ENI) |
//! | `ANNOTATE_POD_IP` | false | annotate pods with `vpc.amazonaws.com/pod-ips` after ADD (needs the Kubernetes API) |
//! | `AWS_MANAGE_ENIS_NON_SCHEDULABLE` | false | attach/free ENIs on a cordoned node too |
//!
//! Ours (prefix `AWS_CNI_`, no anchor equivalent):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `AWS_CNI_POOL_RELEASE_DELAY` | 300 | seconds the pool keeps what it needed before giving it back (release hysteresis, see `pool.rs`); 0 = the anchor's behaviour |
//! | `AWS_CNI_ADD_WAIT_SECONDS` | 8 | how long an ADD waits for an address that is on its way (cooldown ending, pool growing) before it fails; 0 = fail at once, as the anchor |
//! | `AWS_CNI_EC2_CLUSTER_SCHEDULE` | true | every node's EC2 calls take slots in one cluster-wide schedule on the Kubernetes API (read by `crate::schedule::ScheduleSettings`) |
//! | `AWS_CNI_EC2_SCHEDULE_RATE_SHARE` / `..._BURST_SHARE` | 0.97 / 0.9 | the schedule's share of EC2's default refill rate and bucket size per API |

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ipnetwork::Ipv4Network;

use super::{Config, ConfigError, RandomizeSnat};

/// Where configuration values come from.
pub trait EnvSource {
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

/// An [`EnvSource`] over a function (`|k| std::env::var(k).ok()`, a test's map lookup).
#[derive(Debug, Clone, Copy)]
pub struct EnvFn<F>(pub F);

impl<F: Fn(&str) -> Option<String>> EnvSource for EnvFn<F> {
    fn get(&self, key: &str) -> Option<String> {
        (self.0)(key)
    }
}

impl EnvSource for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

pub const ENV_WARM_ENI_TARGET: &str = "WARM_ENI_TARGET";
pub const ENV_WARM_IP_TARGET: &str = "WARM_IP_TARGET";
pub const ENV_MINIMUM_IP_TARGET: &str = "MINIMUM_IP_TARGET";
pub const ENV_MAX_ENI: &str = "MAX_ENI";
pub const ENV_IP_COOLDOWN_PERIOD: &str = "IP_COOLDOWN_PERIOD";
pub const ENV_ENI_MTU: &str = "AWS_VPC_ENI_MTU";
pub const ENV_POD_MTU: &str = "POD_MTU";
pub const ENV_DISABLE_NETWORK_RESOURCE_PROVISIONING: &str = "DISABLE_NETWORK_RESOURCE_PROVISIONING";
pub const ENV_WARM_PREFIX_TARGET: &str = "WARM_PREFIX_TARGET";
pub const ENV_ENABLE_PREFIX_DELEGATION: &str = "ENABLE_PREFIX_DELEGATION";
pub const ENV_EXTERNAL_SNAT: &str = "AWS_VPC_K8S_CNI_EXTERNALSNAT";
pub const ENV_EXCLUDE_SNAT_CIDRS: &str = "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS";
pub const ENV_RANDOMIZE_SNAT: &str = "AWS_VPC_K8S_CNI_RANDOMIZESNAT";
pub const ENV_CONNMARK: &str = "AWS_VPC_K8S_CNI_CONNMARK";
pub const ENV_NODE_PORT_SUPPORT: &str = "AWS_VPC_CNI_NODE_PORT_SUPPORT";
pub const ENV_ENABLE_SUBNET_DISCOVERY: &str = "ENABLE_SUBNET_DISCOVERY";
/// `MANAGE_UNTAGGED_ENI`.
pub const ENV_MANAGE_UNTAGGED_ENI: &str = "MANAGE_UNTAGGED_ENI";
pub const ENV_CLUSTER_NAME: &str = "CLUSTER_NAME";
pub const ENV_ANNOTATE_POD_IP: &str = "ANNOTATE_POD_IP";
pub const ENV_MANAGE_ENIS_NON_SCHEDULABLE: &str = "AWS_MANAGE_ENIS_NON_SCHEDULABLE";
pub const ENV_ADDITIONAL_ENI_TAGS: &str = "ADDITIONAL_ENI_TAGS";
pub const ENV_DISABLE_LEAKED_ENI_CLEANUP: &str = "DISABLE_LEAKED_ENI_CLEANUP";
pub const ENV_CUSTOM_NETWORK_CFG: &str = "AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG";
pub const ENV_ENI_CONFIG_ANNOTATION_DEF: &str = "ENI_CONFIG_ANNOTATION_DEF";
pub const ENV_ENI_CONFIG_LABEL_DEF: &str = "ENI_CONFIG_LABEL_DEF";
pub const ENV_POOL_RELEASE_DELAY: &str = "AWS_CNI_POOL_RELEASE_DELAY";
pub const ENV_ADD_WAIT_SECONDS: &str = "AWS_CNI_ADD_WAIT_SECONDS";
pub const ENV_ENABLE_IPV6: &str = "ENABLE_IPv6";
pub const ENV_ENABLE_IPV4: &str = "ENABLE_IPv4";

/// The pods' address family from `ENABLE_IPv6` and `ENABLE_IPv4`, with the anchor's valid combinations
/// (`isConfigValid`): IPv4 only (the default) or IPv6 only, the latter with prefix delegation. Dual-stack and
/// neither are refused, as the anchor refuses them; the error names the variables.
fn parse_family(env: &dyn EnvSource, prefix_delegation: bool) -> Result<bool, ConfigError> {
    let v6 = parse_bool(env, ENV_ENABLE_IPV6)?.unwrap_or(false);
    let v4 = parse_bool(env, ENV_ENABLE_IPV4)?.unwrap_or(true);
    let shown = |var: &str, d: &str| env.get(var).unwrap_or_else(|| d.to_string());
    match (v4, v6) {
        (true, false) => Ok(false),
        (false, true) if prefix_delegation => Ok(true),
        (false, true) => Err(invalid(
            ENV_ENABLE_PREFIX_DELEGATION,
            &shown(ENV_ENABLE_PREFIX_DELEGATION, "false"),
            "ENABLE_IPv6=true needs ENABLE_PREFIX_DELEGATION=true: IPv6 pods get addresses of a /80 prefix on \
             the primary ENI, as in the anchor",
        )),
        (true, true) => Err(invalid(
            ENV_ENABLE_IPV6,
            &shown(ENV_ENABLE_IPV6, "false"),
            "ENABLE_IPv6=true with ENABLE_IPv4=true (dual-stack pods) is not supported, as in the anchor: set \
             ENABLE_IPv4=false for an IPv6 cluster",
        )),
        (false, false) => Err(invalid(
            ENV_ENABLE_IPV4,
            &shown(ENV_ENABLE_IPV4, "true"),
            "ENABLE_IPv4=false with ENABLE_IPv6 false or unset leaves pods with no address family: set \
             ENABLE_IPv6=true for an IPv6 cluster",
        )),
    }
}

fn invalid(var: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError {
        var,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_cidrs(env: &dyn EnvSource, var: &'static str) -> Result<Vec<Ipv4Network>, ConfigError> {
    let Some(v) = env.get(var) else {
        return Ok(Vec::new());
    };
    v.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<Ipv4Network>()
                .map_err(|_| invalid(var, &v, &format!("{c:?} is not an IPv4 CIDR")))
        })
        .collect()
}

fn parse_randomize(env: &dyn EnvSource) -> Result<RandomizeSnat, ConfigError> {
    match env.get(ENV_RANDOMIZE_SNAT) {
        None => Ok(RandomizeSnat::Prng),
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" | "prng" => Ok(RandomizeSnat::Prng),
            "hashrandom" => Ok(RandomizeSnat::HashRandom),
            "none" => Ok(RandomizeSnat::None),
            _ => Err(invalid(
                ENV_RANDOMIZE_SNAT,
                &v,
                "expected prng, hashrandom or none",
            )),
        },
    }
}

fn parse_mark(env: &dyn EnvSource) -> Result<u32, ConfigError> {
    let Some(v) = env.get(ENV_CONNMARK) else {
        return Ok(0x80);
    };
    let t = v.trim();
    if t.is_empty() {
        return Ok(0x80);
    }
    let n = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => t.parse::<u32>(),
    };
    match n {
        Ok(m) if m != 0 => Ok(m),
        _ => Err(invalid(
            ENV_CONNMARK,
            &v,
            "expected a non-zero mark (decimal or 0x hex)",
        )),
    }
}

fn parse_tags(env: &dyn EnvSource) -> Result<BTreeMap<String, String>, ConfigError> {
    let Some(v) = env.get(ENV_ADDITIONAL_ENI_TAGS) else {
        return Ok(BTreeMap::new());
    };
    if v.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let tags: BTreeMap<String, String> = serde_json::from_str(&v).map_err(|e| {
        invalid(
            ENV_ADDITIONAL_ENI_TAGS,
            &v,
            &format!("expected a JSON object of strings: {e}"),
        )
    })?;
    Ok(tags
        .into_iter()
        .filter(|(k, _)| {
            let reserved = k.contains("k8s.amazonaws.com");
            if reserved {
                tracing::warn!(key = %k, "ADDITIONAL_ENI_TAGS: dropping a reserved key");
            }
            !reserved
        })
        .collect())
}

fn parse_u32(env: &dyn EnvSource, var: &'static str) -> Result<Option<u32>, ConfigError> {
    match env.get(var) {
        None => Ok(None),
        Some(v) if v.trim().is_empty() => Ok(None),
        Some(v) => v.trim().parse::<u32>().map(Some).map_err(|_| ConfigError {
            var,
            value: v.clone(),
            reason: "expected a non-negative integer".into(),
        }),
    }
}

/// A boolean variable: `true`/`1`/`yes` or `false`/`0`/`no`, any case, blanks around ignored; unset or empty is
/// `None`; anything else is an error naming the variable.
pub fn parse_bool(env: &dyn EnvSource, var: &'static str) -> Result<Option<bool>, ConfigError> {
    match env.get(var) {
        None => Ok(None),
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "true" | "1" | "yes" => Ok(Some(true)),
            "false" | "0" | "no" => Ok(Some(false)),
            _ => Err(ConfigError {
                var,
                value: v.clone(),
                reason: "expected true or false".into(),
            }),
        },
    }
}

/// Custom networking: `None` unless `AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG` is true; then the annotation and label
/// keys naming the node's `ENIConfig` (unset or empty: the anchor's default, `k8s.amazonaws.com/eniConfig`).
fn parse_custom_networking(
    env: &dyn EnvSource,
) -> Result<Option<crate::kube::EniConfigKeys>, ConfigError> {
    if !parse_bool(env, ENV_CUSTOM_NETWORK_CFG)?.unwrap_or(false) {
        return Ok(None);
    }
    let mut keys = crate::kube::EniConfigKeys::default();
    for (var, slot) in [
        (ENV_ENI_CONFIG_ANNOTATION_DEF, &mut keys.annotation),
        (ENV_ENI_CONFIG_LABEL_DEF, &mut keys.label),
    ] {
        let v = env.get(var).unwrap_or_default();
        let t = v.trim();
        if t.is_empty() {
            continue;
        }
        if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(var, &v, "expected a label or annotation key"));
        }
        *slot = t.to_string();
    }
    Ok(Some(keys))
}

fn check_mtu(var: &'static str, mtu: u32) -> Result<u32, ConfigError> {
    if (576..=9001).contains(&mtu) {
        Ok(mtu)
    } else {
        Err(ConfigError {
            var,
            value: mtu.to_string(),
            reason: "IPv4 MTU must be between 576 and 9001".into(),
        })
    }
}

impl Config {
    /// Reads and validates every variable this daemon understands.
    pub fn from_env(env: &dyn EnvSource) -> Result<Config, ConfigError> {
        super::anchor_vars::refuse_unsupported(env)?;
        let d = Config::default();
        let max_eni = match env.get(ENV_MAX_ENI) {
            None => None,
            Some(v) => match v.trim().parse::<i64>() {
                Ok(n) if n < 1 => None, // the anchor treats -1 (and anything below 1) as "unset"
                Ok(n) => Some(u32::try_from(n).map_err(|_| ConfigError {
                    var: ENV_MAX_ENI,
                    value: v.clone(),
                    reason: "too large".into(),
                })?),
                Err(_) => {
                    return Err(ConfigError {
                        var: ENV_MAX_ENI,
                        value: v,
                        reason: "expected an integer".into(),
                    })
                }
            },
        };
        let eni_mtu = check_mtu(
            ENV_ENI_MTU,
            parse_u32(env, ENV_ENI_MTU)?.unwrap_or(d.eni_mtu),
        )?;
        let pod_mtu = check_mtu(ENV_POD_MTU, parse_u32(env, ENV_POD_MTU)?.unwrap_or(eni_mtu))?;
        let prefix_delegation = parse_bool(env, ENV_ENABLE_PREFIX_DELEGATION)?.unwrap_or(false);
        let warm_prefix_target = parse_u32(env, ENV_WARM_PREFIX_TARGET)?.unwrap_or(0);
        let warm_ip_target = parse_u32(env, ENV_WARM_IP_TARGET)?.unwrap_or(0);
        let minimum_ip_target = parse_u32(env, ENV_MINIMUM_IP_TARGET)?.unwrap_or(0);
        if prefix_delegation
            && warm_prefix_target == 0
            && warm_ip_target == 0
            && minimum_ip_target == 0
        {
            return Err(invalid(
                ENV_WARM_PREFIX_TARGET,
                &env.get(ENV_WARM_PREFIX_TARGET).unwrap_or_default(),
                "ENABLE_PREFIX_DELEGATION=true needs WARM_PREFIX_TARGET, WARM_IP_TARGET or MINIMUM_IP_TARGET \
                 above 0",
            ));
        }
        let ipv6 = parse_family(env, prefix_delegation)?;
        let cluster_name = env
            .get(ENV_CLUSTER_NAME)
            .unwrap_or_default()
            .trim()
            .to_string();
        Ok(Config {
            warm_prefix_target,
            prefix_delegation,
            external_snat: parse_bool(env, ENV_EXTERNAL_SNAT)?.unwrap_or(false),
            exclude_snat_cidrs: parse_cidrs(env, ENV_EXCLUDE_SNAT_CIDRS)?,
            randomize_snat: parse_randomize(env)?,
            connmark: parse_mark(env)?,
            node_port_support: parse_bool(env, ENV_NODE_PORT_SUPPORT)?.unwrap_or(true),
            subnet_discovery: parse_bool(env, ENV_ENABLE_SUBNET_DISCOVERY)?.unwrap_or(true),
            manage_untagged_eni: parse_bool(env, ENV_MANAGE_UNTAGGED_ENI)?.unwrap_or(true),
            cluster_name,
            additional_eni_tags: parse_tags(env)?,
            disable_leaked_eni_cleanup: parse_bool(env, ENV_DISABLE_LEAKED_ENI_CLEANUP)?
                .unwrap_or(false),
            warm_eni_target: parse_u32(env, ENV_WARM_ENI_TARGET)?.unwrap_or(d.warm_eni_target),
            warm_ip_target,
            minimum_ip_target,
            max_eni,
            ip_cooldown: Duration::from_secs(u64::from(
                parse_u32(env, ENV_IP_COOLDOWN_PERIOD)?.unwrap_or(30),
            )),
            eni_mtu,
            pod_mtu,
            disable_provisioning: parse_bool(env, ENV_DISABLE_NETWORK_RESOURCE_PROVISIONING)?
                .unwrap_or(false),
            annotate_pod_ip: parse_bool(env, ENV_ANNOTATE_POD_IP)?.unwrap_or(false),
            manage_enis_non_schedulable: parse_bool(env, ENV_MANAGE_ENIS_NON_SCHEDULABLE)?
                .unwrap_or(false),
            pool_release_delay: parse_u32(env, ENV_POOL_RELEASE_DELAY)?
                .map_or(d.pool_release_delay, |s| Duration::from_secs(u64::from(s))),
            add_wait: parse_u32(env, ENV_ADD_WAIT_SECONDS)?
                .map_or(d.add_wait, |s| Duration::from_secs(u64::from(s))),
            custom_networking: parse_custom_networking(env)?,
            ipv6,
        })
    }
}

/// An environment for tests: the given pairs, nothing else.
/// `AWS_VPC_K8S_CNI_VETHPREFIX`: the host-side veth prefix of pods, one setting for the plugin (through the
/// conflist the installer writes), ipamd's restart recovery and veth reaper, and the SNAT/connmark rules, all read
/// and checked by this one function: trimmed, default `eni`, 1 to 4 of `[A-Za-z0-9_.-]`, not `eth`, `lo`, `vlan`.
pub fn veth_prefix(get: &dyn Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let var = "AWS_VPC_K8S_CNI_VETHPREFIX";
    let v = get(var)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "eni".into());
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if v.len() > 4 || !v.chars().all(allowed) {
        return Err(invalid(
            var,
            &v,
            "expected 1 to 4 of A-Z, a-z, 0-9, '_', '.', '-'",
        ));
    }
    if ["eth", "lo", "vlan"].contains(&v.as_str()) {
        return Err(invalid(
            var,
            &v,
            "eth, lo and vlan are reserved for other interfaces",
        ));
    }
    Ok(v)
}

#[cfg(test)]
pub(crate) fn env_map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::env_map as env;
    use super::*;

    #[test]
    fn ipv6_mode_takes_the_anchors_combination_and_refuses_the_others_naming_them() {
        assert!(!Config::from_env(&env(&[])).expect("defaults").ipv6);
        let ok = env(&[
            ("ENABLE_IPv6", "true"),
            ("ENABLE_IPv4", "false"),
            ("ENABLE_PREFIX_DELEGATION", "true"),
            ("WARM_PREFIX_TARGET", "1"),
        ]);
        assert!(Config::from_env(&ok).expect("IPv6 mode").ipv6);
        let no_pd = env(&[("ENABLE_IPv6", "true"), ("ENABLE_IPv4", "false")]);
        let e = Config::from_env(&no_pd).expect_err("needs PD");
        assert_eq!(e.var, "ENABLE_PREFIX_DELEGATION");
        assert!(e.to_string().contains("ENABLE_IPv6=true"), "{e}");
        let dual = env(&[
            ("ENABLE_IPv6", "true"),
            ("ENABLE_PREFIX_DELEGATION", "true"),
            ("WARM_PREFIX_TARGET", "1"),
        ]);
        let e = Config::from_env(&dual).expect_err("dual-stack");
        assert_eq!(e.var, "ENABLE_IPv6");
        assert!(e.to_string().contains("ENABLE_IPv4=true"), "{e}");
        let neither = env(&[("ENABLE_IPv4", "false")]);
        let e = Config::from_env(&neither).expect_err("no family");
        assert_eq!(e.var, "ENABLE_IPv4");
        assert!(e.to_string().contains("ENABLE_IPv6"), "{e}");
        let junk = env(&[("ENABLE_IPv6", "sure")]);
        assert_eq!(
            Config::from_env(&junk).expect_err("junk").var,
            "ENABLE_IPv6"
        );
    }

    #[test]
    fn defaults_are_the_anchors() {
        let c = Config::from_env(&env(&[])).expect("defaults");
        assert_eq!(c.warm_eni_target, 1);
        assert_eq!(c.ip_cooldown, Duration::from_secs(30));
        assert_eq!(c.eni_mtu, 9001);
        assert_eq!(c.pod_mtu, 9001);
        assert_eq!(c.max_eni, None);
        assert_eq!(c.pool_release_delay, Duration::from_secs(300));
        assert_eq!(c.add_wait, Duration::from_secs(8));
    }

    #[test]
    fn our_pool_knobs_are_read_and_zero_restores_the_anchor() {
        let c = Config::from_env(&env(&[
            ("AWS_CNI_POOL_RELEASE_DELAY", "0"),
            ("AWS_CNI_ADD_WAIT_SECONDS", "0"),
        ]))
        .expect("valid");
        assert_eq!(c.pool_release_delay, Duration::ZERO);
        assert_eq!(c.add_wait, Duration::ZERO);
        let c = Config::from_env(&env(&[
            ("AWS_CNI_POOL_RELEASE_DELAY", "900"),
            ("AWS_CNI_ADD_WAIT_SECONDS", "4"),
        ]))
        .expect("valid");
        assert_eq!(c.pool_release_delay, Duration::from_secs(900));
        assert_eq!(c.add_wait, Duration::from_secs(4));
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let e = Config::from_env(&env(&[("WARM_IP_TARGET", "five")])).expect_err("invalid");
        assert_eq!(e.var, "WARM_IP_TARGET");
        assert!(e.to_string().contains("five"));
        let e = Config::from_env(&env(&[("AWS_VPC_ENI_MTU", "100")])).expect_err("mtu");
        assert_eq!(e.var, "AWS_VPC_ENI_MTU");
    }

    #[test]
    fn every_knob_is_read_with_its_anchor_name() {
        let c = Config::from_env(&env(&[
            ("WARM_PREFIX_TARGET", "2"),
            ("ENABLE_PREFIX_DELEGATION", "true"),
            ("AWS_VPC_K8S_CNI_EXTERNALSNAT", "true"),
            (
                "AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS",
                "192.168.0.0/16, 172.16.0.0/12",
            ),
            ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "hashrandom"),
            ("AWS_VPC_K8S_CNI_CONNMARK", "0x40"),
            ("ENABLE_SUBNET_DISCOVERY", "false"),
            ("CLUSTER_NAME", "prod"),
            (
                "ADDITIONAL_ENI_TAGS",
                r#"{"team":"net","node.k8s.amazonaws.com/instance_id":"x"}"#,
            ),
            ("DISABLE_LEAKED_ENI_CLEANUP", "true"),
            ("DISABLE_NETWORK_RESOURCE_PROVISIONING", "true"),
        ]))
        .expect("valid");
        assert_eq!(c.warm_prefix_target, 2);
        assert!(c.prefix_delegation && c.external_snat && c.disable_provisioning);
        assert_eq!(c.exclude_snat_cidrs.len(), 2);
        assert_eq!(c.randomize_snat, RandomizeSnat::HashRandom);
        assert_eq!(c.connmark, 0x40);
        assert!(!c.subnet_discovery);
        assert_eq!(c.cluster_name, "prod");
        assert_eq!(c.additional_eni_tags.len(), 1, "reserved key dropped");
        assert!(c.disable_leaked_eni_cleanup);
        let d = Config::default();
        assert!(d.subnet_discovery && d.node_port_support && !d.external_snat);
        assert_eq!(d.randomize_snat, RandomizeSnat::Prng);
    }

    #[test]
    fn custom_networking_reads_its_keys_with_the_anchors_defaults() {
        let off = Config::from_env(&env(&[("ENI_CONFIG_LABEL_DEF", "x")])).expect("off");
        assert_eq!(off.custom_networking, None);
        let on =
            Config::from_env(&env(&[("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true")])).expect("on");
        assert_eq!(
            on.custom_networking,
            Some(crate::kube::EniConfigKeys {
                annotation: "k8s.amazonaws.com/eniConfig".into(),
                label: "k8s.amazonaws.com/eniConfig".into(),
            })
        );
        let zone = Config::from_env(&env(&[
            ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true"),
            ("ENI_CONFIG_LABEL_DEF", "topology.kubernetes.io/zone"),
            ("ENI_CONFIG_ANNOTATION_DEF", " "),
        ]))
        .expect("zone");
        let keys = zone.custom_networking.expect("on");
        assert_eq!(keys.label, "topology.kubernetes.io/zone");
        assert_eq!(keys.annotation, "k8s.amazonaws.com/eniConfig");
        let bad = Config::from_env(&env(&[
            ("AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG", "true"),
            ("ENI_CONFIG_LABEL_DEF", "two words"),
        ]))
        .expect_err("bad key");
        assert_eq!(bad.var, "ENI_CONFIG_LABEL_DEF");
    }

    #[test]
    fn each_bad_knob_is_named() {
        for (var, value) in [
            ("WARM_PREFIX_TARGET", "x"),
            ("ENABLE_PREFIX_DELEGATION", "maybe"),
            ("AWS_VPC_K8S_CNI_EXTERNALSNAT", "2"),
            ("AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS", "10.0.0.0/33"),
            ("AWS_VPC_K8S_CNI_RANDOMIZESNAT", "fully"),
            ("AWS_VPC_K8S_CNI_CONNMARK", "0xzz"),
            ("ENABLE_SUBNET_DISCOVERY", "yes please"),
            ("ADDITIONAL_ENI_TAGS", "team=net"),
            ("DISABLE_LEAKED_ENI_CLEANUP", "nope"),
            ("IP_COOLDOWN_PERIOD", "-1"),
            ("POD_MTU", "10000"),
            ("MAX_ENI", "two"),
            ("AWS_CNI_POOL_RELEASE_DELAY", "5m"),
            ("AWS_CNI_ADD_WAIT_SECONDS", "-3"),
        ] {
            let e = Config::from_env(&env(&[(var, value)])).expect_err(var);
            assert_eq!(e.var, var, "{e}");
        }
        // Prefix delegation with nothing to keep warm is refused, as the anchor does.
        let e = Config::from_env(&env(&[("ENABLE_PREFIX_DELEGATION", "true")])).expect_err("pd");
        assert_eq!(e.var, "WARM_PREFIX_TARGET");
    }

    #[test]
    fn pod_mtu_follows_eni_mtu_and_max_eni_minus_one_is_unset() {
        let c = Config::from_env(&env(&[("AWS_VPC_ENI_MTU", "1500"), ("MAX_ENI", "-1")]))
            .expect("valid");
        assert_eq!(c.pod_mtu, 1500);
        assert_eq!(c.max_eni, None);
        let c = Config::from_env(&env(&[("MAX_ENI", "2")])).expect("valid");
        assert_eq!(c.max_eni, Some(2));
    }
}

#[cfg(test)]
mod veth_prefix_tests {
    use super::veth_prefix;

    fn read(v: Option<&str>) -> Result<String, String> {
        let v = v.map(str::to_string);
        veth_prefix(&|_| v.clone()).map_err(|e| e.to_string())
    }

    #[test]
    fn the_veth_prefix_is_read_once_trimmed_defaulted_and_checked() {
        assert_eq!(read(None).as_deref(), Ok("eni"));
        assert_eq!(read(Some("")).as_deref(), Ok("eni"));
        assert_eq!(read(Some(" cali ")).as_deref(), Ok("cali"));
        for bad in ["toolong", "eth", "lo", "vlan", "a\"b"] {
            let err = read(Some(bad)).expect_err(bad);
            assert!(err.contains("AWS_VPC_K8S_CNI_VETHPREFIX"), "{err}");
        }
    }
}
