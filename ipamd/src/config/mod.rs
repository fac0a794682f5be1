//! The daemon's configuration: [`Config`], plain data with the anchor's defaults, which the engine reads and
//! tests build directly. Where its values come from is [`env`](mod@env) (the environment, with the anchor's variable
//! names; the table of variables is there).

use std::collections::BTreeMap;
use std::time::Duration;

use ipnetwork::Ipv4Network;

pub mod anchor_vars;
pub mod env;

pub use env::*;

/// Default of `AWS_CNI_POOL_RELEASE_DELAY`: as long as Kubernetes' HPA scale-down stabilisation window, so a
/// workload that scales down and back up within five minutes finds its addresses still there.
pub const DEFAULT_POOL_RELEASE_DELAY: Duration = Duration::from_secs(300);
/// Default of `AWS_CNI_ADD_WAIT_SECONDS`: below the plugin's 10 s deadline for an ipamd call, with room for the
/// checkpoint write and the plugin's own work.
pub const DEFAULT_ADD_WAIT: Duration = Duration::from_secs(8);

/// How the SNAT rule picks source ports (`AWS_VPC_K8S_CNI_RANDOMIZESNAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RandomizeSnat {
    /// `--random-fully` (the default, `prng`).
    Prng,
    /// `--random` (`hashrandom`).
    HashRandom,
    /// Neither (`none`).
    None,
}

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {var}={value:?}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub reason: String,
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Free ENIs' worth of IPs to keep ready (ignored when an IP target is set).
    pub warm_eni_target: u32,
    /// Free IPs to keep ready; 0 = unset.
    pub warm_ip_target: u32,
    /// Floor on the total number of IPs; 0 = unset.
    pub minimum_ip_target: u32,
    /// Cap on ENIs below the instance limit; `None` = instance limit.
    pub max_eni: Option<u32>,
    /// How long a released IP is kept out of circulation.
    pub ip_cooldown: Duration,
    /// MTU of the ENIs.
    pub eni_mtu: u32,
    /// MTU of pod veths (reported to the plugin through the conflist; kept here for validation).
    pub pod_mtu: u32,
    /// Never call EC2 to change anything.
    pub disable_provisioning: bool,
    /// Free /28 prefixes to keep (prefix delegation); 0 = unset.
    pub warm_prefix_target: u32,
    /// Ask EC2 for /28 prefixes instead of secondary IPs.
    pub prefix_delegation: bool,
    /// Someone else (a NAT gateway) translates pod traffic: no SNAT or connmark rules here.
    pub external_snat: bool,
    /// Destinations whose traffic keeps the pod's address.
    pub exclude_snat_cidrs: Vec<Ipv4Network>,
    pub randomize_snat: RandomizeSnat,
    /// The connmark/fwmark bit.
    pub connmark: u32,
    pub node_port_support: bool,
    pub subnet_discovery: bool,
    /// `MANAGE_UNTAGGED_ENI`: ENIs without this instance's `instance_id` tag are ours to manage (anchor default);
    /// false leaves them alone (Multus and other components' ENIs).
    pub manage_untagged_eni: bool,
    /// `CLUSTER_NAME`; empty = unset.
    pub cluster_name: String,
    /// `ADDITIONAL_ENI_TAGS`, reserved keys dropped.
    pub additional_eni_tags: BTreeMap<String, String>,
    pub disable_leaked_eni_cleanup: bool,
    /// Release hysteresis: the pool gives back nothing it needed within this long (`AWS_CNI_POOL_RELEASE_DELAY`).
    pub pool_release_delay: Duration,
    /// How long an ADD waits for an address on its way before failing (`AWS_CNI_ADD_WAIT_SECONDS`).
    pub add_wait: Duration,
    /// Custom networking (`AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true`): which node annotation and label name the
    /// node's `ENIConfig`; `None` when off.
    pub custom_networking: Option<crate::kube::EniConfigKeys>,
    /// IPv6 mode (`ENABLE_IPv6=true`, `ENABLE_IPv4=false`): pods get addresses of one /80 on the primary ENI.
    pub ipv6: bool,
    /// `ANNOTATE_POD_IP`: write `vpc.amazonaws.com/pod-ips` on pods (needs the Kubernetes API).
    pub annotate_pod_ip: bool,
    /// `AWS_MANAGE_ENIS_NON_SCHEDULABLE`: attach and free ENIs on a cordoned node too (default false: not).
    pub manage_enis_non_schedulable: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            warm_eni_target: 1,
            warm_ip_target: 0,
            minimum_ip_target: 0,
            max_eni: None,
            ip_cooldown: Duration::from_secs(30),
            eni_mtu: 9001,
            pod_mtu: 9001,
            disable_provisioning: false,
            warm_prefix_target: 0,
            prefix_delegation: false,
            external_snat: false,
            exclude_snat_cidrs: Vec::new(),
            randomize_snat: RandomizeSnat::Prng,
            connmark: 0x80,
            node_port_support: true,
            subnet_discovery: true,
            manage_untagged_eni: true,
            cluster_name: String::new(),
            additional_eni_tags: BTreeMap::new(),
            disable_leaked_eni_cleanup: false,
            pool_release_delay: DEFAULT_POOL_RELEASE_DELAY,
            add_wait: DEFAULT_ADD_WAIT,
            custom_networking: None,
            ipv6: false,
            annotate_pod_ip: false,
            manage_enis_non_schedulable: false,
        }
    }
}
