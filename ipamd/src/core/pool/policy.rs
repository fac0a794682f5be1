//! The pool's knobs and limits ([`PoolPolicy`], from the configuration and the instance type: [`policy_for`]),
//! and the counts they imply: how many addresses the pool is short, needs, or holds in excess.

use instance_limits::max_pods::{compute, CniVersion, MaxPodsOptions, DEFAULT_CNI_VERSION};

use crate::config::Config;
use crate::core::datastore::PoolStats;
use crate::core::family::Family;

/// Addresses in a /28 (IPv4 prefix delegation).
pub const PREFIX_SIZE: u32 = Family::V4Prefix.per_slot();

/// The knobs and limits the policy needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolPolicy {
    pub warm_eni_target: u32,
    pub warm_ip_target: u32,
    pub minimum_ip_target: u32,
    /// Free /28 prefixes to keep (PD without IP targets).
    pub warm_prefix_target: u32,
    /// Addresses come as /28 prefixes.
    pub prefix_delegation: bool,
    /// Addresses one ENI can hold besides its primary IP: IPv4 per ENI - 1, times 16 in PD.
    pub ips_per_eni: u32,
    /// ENIs the node may have (instance limit on the default card, lowered by MAX_ENI).
    pub max_enis: u32,
    /// Addresses the node may hold in total (the anchor compares total IPs with max-pods directly).
    pub max_pods: u32,
}

pub(super) fn u(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl PoolPolicy {
    /// Whether WARM_IP_TARGET or MINIMUM_IP_TARGET is in force (they override the ENI/prefix targets).
    pub fn uses_ip_targets(&self) -> bool {
        self.warm_ip_target > 0 || self.minimum_ip_target > 0
    }

    /// This policy with max-pods lowered to `node_max_pods` (the node object's `status.capacity.pods`) when
    /// that is lower: the effective max-pods is min(ENI math, capacity.pods).
    pub fn capped(&self, node_max_pods: Option<u32>) -> PoolPolicy {
        PoolPolicy {
            max_pods: node_max_pods.map_or(self.max_pods, |cap| cap.min(self.max_pods)),
            ..*self
        }
    }

    /// The address family in force: what a slot is and what EC2 is asked for.
    pub fn family(&self) -> Family {
        Family::v4(self.prefix_delegation)
    }

    /// EC2 slots per ENI besides the primary IP.
    pub fn slots_per_eni(&self) -> u32 {
        self.ips_per_eni / self.per_slot()
    }

    /// Addresses one slot brings.
    pub fn per_slot(&self) -> u32 {
        self.family().per_slot()
    }

    /// Free addresses the targets ask for (WARM_IP_TARGET, 16 x WARM_PREFIX_TARGET or WARM_ENI_TARGET ENIs'
    /// worth).
    fn warm_addresses(&self) -> u32 {
        if self.uses_ip_targets() {
            self.warm_ip_target
        } else if self.prefix_delegation {
            self.warm_prefix_target.saturating_mul(self.per_slot())
        } else {
            self.warm_eni_target.saturating_mul(self.ips_per_eni)
        }
    }

    pub(super) fn raw_short(&self, total: u32, available: u32, waiting: u32) -> u32 {
        let want = self.warm_addresses().saturating_add(waiting);
        if self.uses_ip_targets() {
            want.saturating_sub(available)
                .max(self.minimum_ip_target.saturating_sub(total))
        } else if want == 0 && available == 0 {
            1 // a target of 0 still keeps one address ready, as the anchor does
        } else {
            want.saturating_sub(available)
        }
    }

    /// How many addresses the pool is short of its target with `waiting` ADDs waiting (0 = none), within
    /// max-pods.
    pub fn shortage(&self, s: &PoolStats, waiting: u32) -> u32 {
        let total = u(s.total);
        if total >= self.max_pods {
            return 0;
        }
        let short = self.raw_short(total, u(s.available), waiting);
        if self.prefix_delegation {
            short
        } else {
            short.min(self.max_pods - total)
        }
    }

    /// The addresses the pool should hold right now to be on target: those held or cooling, one per waiting
    /// ADD, and the warm target (at least MINIMUM_IP_TARGET; whole prefixes in PD), never above max-pods. The
    /// engine's release hysteresis keeps the peak of this over its window (see the module docs).
    pub fn need(&self, s: &PoolStats, waiting: u32) -> u32 {
        let busy = u(s.total.saturating_sub(s.available));
        let mut need = busy
            .saturating_add(waiting)
            .saturating_add(self.warm_addresses());
        if self.uses_ip_targets() {
            need = need.max(self.minimum_ip_target);
        }
        if self.prefix_delegation {
            need = need
                .div_ceil(self.per_slot())
                .saturating_mul(self.per_slot());
        }
        need.min(self.max_pods)
    }

    /// Addresses above what the pool should hold, never taking it below `keep` except to get back under max-pods
    /// (see the module docs).
    pub fn excess(&self, s: &PoolStats, keep: u32) -> u32 {
        let total = u(s.total);
        let available = u(s.available);
        let over_max_pods = total.saturating_sub(self.max_pods);
        let over_target = if self.uses_ip_targets() {
            available
                .saturating_sub(self.warm_ip_target)
                .min(total.saturating_sub(self.minimum_ip_target))
        } else if self.prefix_delegation {
            u(s.free_prefixes)
                .saturating_sub(self.warm_prefix_target)
                .saturating_mul(self.per_slot())
        } else {
            0
        };
        over_max_pods.max(over_target.min(total.saturating_sub(keep)))
    }
}

/// The policy for an instance type and configuration.
pub fn policy_for(
    limits: &instance_limits::InstanceLimits,
    config: &Config,
    max_pods_override: Option<u32>,
) -> Result<PoolPolicy, String> {
    let pd = config.prefix_delegation && limits.supports_prefix_delegation();
    let max_enis = config.max_eni.map_or(limits.enis, |m| m.min(limits.enis));
    let max_pods = match max_pods_override {
        Some(n) => n,
        None => {
            let version: CniVersion = DEFAULT_CNI_VERSION
                .parse()
                .map_err(|e: instance_limits::max_pods::MaxPodsError| e.to_string())?;
            let mut opts = MaxPodsOptions::new(version);
            opts.cni_max_eni = config.max_eni;
            opts.prefix_delegation = pd;
            // Custom networking: the primary ENI carries no pods (`ipamd max-pods --cni-custom-networking-enabled`).
            opts.custom_networking = config.custom_networking.is_some();
            // Secondary IPs: the ENI-derived limit, as eni-max-pods.txt. PD: the calculator's 110/250 cap,
            // as kubelet would be configured (the uncapped PD number is far above what a node runs).
            opts.show_max_allowed = !pd;
            compute(limits, &opts).map_err(|e| e.to_string())?.max_pods
        }
    };
    let slots = limits.ipv4_per_eni.saturating_sub(1);
    Ok(PoolPolicy {
        warm_eni_target: config.warm_eni_target,
        warm_ip_target: config.warm_ip_target,
        minimum_ip_target: config.minimum_ip_target,
        warm_prefix_target: config.warm_prefix_target,
        prefix_delegation: pd,
        ips_per_eni: slots * Family::v4(pd).per_slot(),
        max_enis,
        max_pods,
    })
}
