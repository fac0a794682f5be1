//! A plain copy of the pool's state for whoever reports on it (the metrics registry, status pages): produced by
//! the engine ([`crate::engine::Node::snapshot`]) under its lock in one go, read without touching the engine.

use std::net::IpAddr;

use super::datastore::PoolStats;

/// The pool at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// ENIs the node may have.
    pub max_enis: u32,
    /// Addresses one ENI can hold besides its primary IP.
    pub ips_per_eni: u32,
    pub stats: PoolStats,
    /// Every ENI, ordered by ID.
    pub enis: Vec<EniSnapshot>,
    /// Addresses the release hysteresis keeps now.
    pub keep: u32,
    /// ADDs waiting for an address now.
    pub adds_waiting: usize,
    /// Whether connmark rules are programmed (ipamd does SNAT itself, or NodePort support is on).
    pub connmark: bool,
    /// Addresses pods lost because EC2 no longer had them, since startup.
    pub force_removed: u64,
    /// Pods' rules and routes drift repair put back or took away, since startup.
    pub routing_repairs: u64,
    /// The SNAT/connmark backend the host uses, when the host chose one.
    pub snat: Option<SnatReport>,
    /// Custom networking's state (`None` when it is off).
    pub eni_config: Option<EniConfigStatus>,
    /// How the node gets addresses now (`secondary-ip`, `prefix`, `prefix-fallback-secondary-ip`).
    pub address_mode: &'static str,
    /// Live reloads of the pool knobs applied and refused, since startup.
    pub reloads_applied: u64,
    pub reloads_refused: u64,
}

/// The SNAT/connmark backend chosen at startup, and why (for metrics and `ipamd status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnatReport {
    /// `nftables`, `iptables-nft` or `iptables-legacy`.
    pub backend: String,
    /// The anchor's coarser name for the same choice: `nftables` or `iptables`.
    pub family: String,
    /// Why this backend.
    pub reason: String,
}

/// One ENI at that moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EniSnapshot {
    pub id: String,
    /// Every address on it, and whether a pod holds it.
    pub addresses: Vec<(IpAddr, bool)>,
    pub assigned: usize,
    pub cooldown: usize,
    pub prefixes: usize,
}

impl EniSnapshot {
    /// Addresses on it.
    pub fn total(&self) -> usize {
        self.addresses.len()
    }
}

/// Custom networking at one moment: the node's `ENIConfig` and where new ENIs go, or why they cannot be placed
/// (`ipamd status`, metrics, `/v1/eni-configs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EniConfigStatus {
    /// The `ENIConfig` the node names (`None` while the node object is not known).
    pub name: Option<String>,
    /// Where the name came from (e.g. "node label topology.kubernetes.io/zone").
    pub source: String,
    /// Where the next ENI goes, from the last check that succeeded: subnet, its zone and free addresses.
    pub subnet: Option<String>,
    pub availability_zone: String,
    pub free_addresses: u64,
    /// The security groups the next ENI gets.
    pub security_groups: Vec<String>,
    /// Why no new ENI can be placed now (`None`: it can).
    pub problem: Option<String>,
    /// The problem in one word, for the metric's `cause` label (`node-unknown`, `missing`, `no-subnet`,
    /// `unknown-subnet`, `other-zone`, `ec2-error`).
    pub cause: String,
}
