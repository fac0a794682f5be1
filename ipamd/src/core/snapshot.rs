//! A plain copy of the pool's state for whoever reports on it (the metrics registry, status pages): produced by
//! the engine ([`crate::engine::Node::snapshot`]) under its lock in one go, read without touching the engine.

use std::net::Ipv4Addr;

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
    /// How the node gets addresses now (`secondary-ip`, `prefix`, `prefix-fallback-secondary-ip`).
    pub address_mode: &'static str,
    /// Live reloads of the pool knobs applied and refused, since startup.
    pub reloads_applied: u64,
    pub reloads_refused: u64,
}

/// One ENI at that moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EniSnapshot {
    pub id: String,
    /// Every address on it, and whether a pod holds it.
    pub addresses: Vec<(Ipv4Addr, bool)>,
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
