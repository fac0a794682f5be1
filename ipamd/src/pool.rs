//! Warm-pool policy: given the node's counts, what to ask EC2 for next.
//!
//! The policy is a pure function ([`decide`]) so it can be tested exhaustively; the daemon's pool task calls it
//! in a loop and carries out one step at a time (see `node.rs`).
//!
//! ```text
//!   IP targets set (WARM_IP_TARGET / MINIMUM_IP_TARGET):
//!       short = max(WARM_IP - available, MINIMUM_IP - total, 0)
//!   otherwise (WARM_ENI_TARGET, default 1):
//!       short = WARM_ENI x ips_per_eni - available        (when positive)
//!   short = min(short, max_pods - total)                  never grow past max-pods (anchor #2793)
//!   short > 0:  fill the lowest ENI that has room         one AssignPrivateIpAddresses
//!               else attach a new ENI with its IPs        one CreateNetworkInterface (IPs pre-assigned)
//!               else the node is at its ENI limit
//! ```
//!
//! `available` excludes IPs in cooldown (the anchor counts them, #2896, so its pool stops growing while ADDs fail).

use crate::datastore::PoolStats;

/// The knobs and limits the policy needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolPolicy {
    pub warm_eni_target: u32,
    pub warm_ip_target: u32,
    pub minimum_ip_target: u32,
    /// Secondary IPs one ENI can hold (IPv4 per ENI - 1).
    pub ips_per_eni: u32,
    /// ENIs the node may have (instance limit, lowered by MAX_ENI).
    pub max_enis: u32,
    /// Addresses the node may hold in total (kubelet max-pods minus host-network pods does not apply here: the
    /// anchor compares total IPs with max-pods directly).
    pub max_pods: u32,
}

/// One ENI as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniRoom {
    pub eni_id: String,
    pub device_number: u32,
    pub ips: u32,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The pool is where it should be.
    Hold,
    /// Add `count` secondary IPs to an ENI.
    AssignIps { eni_id: String, count: u32 },
    /// Create and attach an ENI with `ips` secondary IPs.
    AttachEni { ips: u32 },
    /// More IPs are wanted but every ENI is full and no ENI slot is left.
    AtEniLimit { short: u32 },
}

impl PoolPolicy {
    fn uses_ip_targets(&self) -> bool {
        self.warm_ip_target > 0 || self.minimum_ip_target > 0
    }

    /// How many IPs the pool is short of its target (0 = none), capped by max-pods.
    pub fn shortage(&self, s: &PoolStats) -> u32 {
        let total = u32::try_from(s.total).unwrap_or(u32::MAX);
        let available = u32::try_from(s.available).unwrap_or(u32::MAX);
        let short = if self.uses_ip_targets() {
            self.warm_ip_target
                .saturating_sub(available)
                .max(self.minimum_ip_target.saturating_sub(total))
        } else {
            let want = self.warm_eni_target.saturating_mul(self.ips_per_eni);
            if want == 0 && available == 0 {
                1 // WARM_ENI_TARGET=0 still keeps one IP ready, as the anchor does
            } else {
                want.saturating_sub(available)
            }
        };
        short.min(self.max_pods.saturating_sub(total))
    }
}

/// The next step for the pool. `enis` lists the attached ENIs the daemon may add IPs to.
pub fn decide(policy: &PoolPolicy, stats: &PoolStats, enis: &[EniRoom]) -> Decision {
    let short = policy.shortage(stats);
    if short == 0 {
        return Decision::Hold;
    }
    let total = u32::try_from(stats.total).unwrap_or(u32::MAX);
    let headroom = policy.max_pods.saturating_sub(total);
    let mut sorted: Vec<&EniRoom> = enis.iter().collect();
    sorted.sort_by_key(|e| e.device_number);
    if let Some(eni) = sorted.iter().find(|e| e.ips < policy.ips_per_eni) {
        let room = policy.ips_per_eni - eni.ips;
        // With IP targets ask for exactly the shortage; with ENI targets fill the ENI (one call, fewer later).
        let want = if policy.uses_ip_targets() {
            short
        } else {
            room
        };
        return Decision::AssignIps {
            eni_id: eni.eni_id.clone(),
            count: want.min(room).min(headroom).max(1),
        };
    }
    if u32::try_from(enis.len()).unwrap_or(u32::MAX) < policy.max_enis {
        let want = if policy.uses_ip_targets() {
            short
        } else {
            policy.ips_per_eni
        };
        return Decision::AttachEni {
            ips: want.min(policy.ips_per_eni).min(headroom).max(1),
        };
    }
    Decision::AtEniLimit { short }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives the policy to a fixed point the way the daemon does, with `pods` assigned, and returns
    /// (ENIs, total IPs).
    fn settle(policy: PoolPolicy, pods: u32) -> (u32, u32) {
        let mut enis = vec![EniRoom {
            eni_id: "eni-0".into(),
            device_number: 0,
            ips: 0,
        }];
        // Pods arrive one by one, as in the anchor's documented examples.
        for assigned in 0..=pods {
            for _ in 0..100 {
                let total: u32 = enis.iter().map(|e| e.ips).sum();
                let stats = PoolStats {
                    total: total as usize,
                    assigned: assigned.min(total) as usize,
                    cooldown: 0,
                    available: total.saturating_sub(assigned) as usize,
                    enis: enis.len(),
                };
                match decide(&policy, &stats, &enis) {
                    Decision::Hold | Decision::AtEniLimit { .. } => break,
                    Decision::AssignIps { eni_id, count } => {
                        let e = enis.iter_mut().find(|e| e.eni_id == eni_id).expect("eni");
                        e.ips += count;
                    }
                    Decision::AttachEni { ips } => {
                        let n = u32::try_from(enis.len()).expect("small");
                        enis.push(EniRoom {
                            eni_id: format!("eni-{n}"),
                            device_number: n,
                            ips,
                        });
                    }
                }
            }
        }
        (
            u32::try_from(enis.len()).expect("small"),
            enis.iter().map(|e| e.ips).sum(),
        )
    }

    fn policy(ipv4_per_eni: u32, max_enis: u32) -> PoolPolicy {
        PoolPolicy {
            warm_eni_target: 1,
            warm_ip_target: 0,
            minimum_ip_target: 0,
            ips_per_eni: ipv4_per_eni - 1,
            max_enis,
            max_pods: max_enis * (ipv4_per_eni - 1) + 2,
        }
    }

    #[test]
    fn anchor_doc_t3_small_warm_eni_target_1() {
        // t3.small: 3 ENIs x 4 IPv4. 0 pods -> 1 ENI / 3 IPs; 5 pods -> 3 ENIs / 9 IPs.
        assert_eq!(settle(policy(4, 3), 0), (1, 3));
        assert_eq!(settle(policy(4, 3), 5), (3, 9));
    }

    #[test]
    fn anchor_doc_p3dn_warm_ip_5_minimum_10() {
        // p3dn.24xlarge: 15 ENIs x 50 IPv4; WARM_IP_TARGET=5, MINIMUM_IP_TARGET=10.
        let p = PoolPolicy {
            warm_ip_target: 5,
            minimum_ip_target: 10,
            ..policy(50, 15)
        };
        assert_eq!(settle(p, 0), (1, 10));
        assert_eq!(settle(p, 45), (2, 50));
    }

    #[test]
    fn never_grows_past_max_pods() {
        let p = PoolPolicy {
            max_pods: 20,
            ..policy(10, 3)
        };
        for pods in 0..=20 {
            let (_, total) = settle(p, pods);
            assert!(total <= 20, "{pods} pods -> {total} IPs > max-pods 20");
        }
    }

    #[test]
    fn cooldown_ips_are_not_available() {
        let p = policy(10, 3);
        let stats = PoolStats {
            total: 9,
            assigned: 0,
            cooldown: 9,
            available: 0,
            enis: 1,
        };
        let enis = [EniRoom {
            eni_id: "eni-0".into(),
            device_number: 0,
            ips: 9,
        }];
        assert_eq!(decide(&p, &stats, &enis), Decision::AttachEni { ips: 9 });
    }

    #[test]
    fn at_eni_limit_reports_shortage() {
        let p = policy(2, 1);
        let stats = PoolStats {
            total: 1,
            assigned: 1,
            cooldown: 0,
            available: 0,
            enis: 1,
        };
        let enis = [EniRoom {
            eni_id: "eni-0".into(),
            device_number: 0,
            ips: 1,
        }];
        assert_eq!(decide(&p, &stats, &enis), Decision::AtEniLimit { short: 1 });
    }
}
