//! Warm-pool policy: given the node's counts, what to ask EC2 for next, or what to give back.
//!
//! The policy is a pure function ([`decide`]) so it can be tested exhaustively; the daemon's pool task calls it
//! in a loop and carries out one step at a time (see `node.rs`). It follows the anchor (anchor-facts §3.4) with
//! its units: an *address* is a secondary IP, or one of the sixteen of a /28 prefix in prefix-delegation mode
//! (PD); a *slot* is what EC2 counts against an ENI's IPv4 limit (one per secondary IP or per prefix).
//!
//! ```text
//!   short (addresses the pool lacks):
//!     IP targets set (WARM_IP_TARGET / MINIMUM_IP_TARGET):  max(WARM_IP - available, MINIMUM_IP - total, 0)
//!     PD, WARM_PREFIX_TARGET:                               16 x WARM_PREFIX - available
//!     otherwise (WARM_ENI_TARGET, default 1):               WARM_ENI x addresses_per_eni - available
//!     (a target of 0 with nothing available still asks for one, as the anchor does)
//!   never past max-pods (anchor #2793): nothing once total >= max-pods; secondary IPs capped at
//!     max-pods - total; in PD a /28 is indivisible, so the last prefix may overshoot by less than 16.
//!
//!   short > 0   fill the lowest ENI with a free slot     one AssignPrivateIpAddresses (N IPs or N prefixes)
//!               else attach a new ENI with its addresses one CreateNetworkInterface (addresses pre-assigned)
//!               else the node is at its ENI limit
//!   otherwise, at most once per shrink interval (the engine says when):
//!     excess = max(total - max-pods,                                 shrinking respects max-pods too
//!                  min(available - WARM_IP, total - MINIMUM_IP)       only with IP targets
//!                  16 x (free prefixes - WARM_PREFIX))                PD without IP targets
//!     excess > 0  give back free, cooled-down IPs (or whole free prefixes), highest device first
//!     else        free one ENI: not the primary, attached >= 1 min, no pod, no IP in cooldown, and the pool
//!                 without it is still not short (for WARM_ENI_TARGET this is the anchor's
//!                 available >= (WARM_ENI + 1) x addresses_per_eni)
//! ```
//!
//! `available` excludes IPs in cooldown (the anchor counts them, #2896, so its pool stops growing while ADDs fail).
//! With only WARM_ENI_TARGET the pool never gives back single IPs (as the anchor), only whole ENIs.

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnetwork::Ipv4Network;

use crate::datastore::PoolStats;
use crate::ec2::IpRequest;

/// Addresses in a /28.
pub const PREFIX_SIZE: u32 = 16;

/// An ENI younger than this is never freed (anchor `minENILifeTime`).
pub const MIN_ENI_LIFETIME: Duration = Duration::from_secs(60);

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

/// One ENI as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EniRoom {
    pub eni_id: String,
    pub device_number: u32,
    /// Addresses on it.
    pub ips: u32,
    /// EC2 slots used besides the primary IP (secondary IPs + prefixes).
    pub slots: u32,
    pub is_primary: bool,
    /// Addresses held by pods.
    pub assigned: u32,
    /// Addresses in cooldown.
    pub cooling: u32,
    /// Free, cooled-down secondary IPs.
    pub releasable_ips: Vec<Ipv4Addr>,
    /// Prefixes with nothing held or cooling.
    pub releasable_prefixes: Vec<Ipv4Network>,
    /// Time since it was attached.
    pub age: Duration,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The pool is where it should be.
    Hold,
    /// Add `count` secondary IPs to an ENI.
    AssignIps { eni_id: String, count: u32 },
    /// Add `count` /28 prefixes to an ENI.
    AssignPrefixes { eni_id: String, count: u32 },
    /// Create and attach an ENI with these addresses.
    AttachEni { request: IpRequest },
    /// More addresses are wanted but every ENI is full and no ENI slot is left.
    AtEniLimit { short: u32 },
    /// Give secondary IPs back to EC2.
    ReleaseIps { eni_id: String, ips: Vec<Ipv4Addr> },
    /// Give prefixes back to EC2.
    ReleasePrefixes {
        eni_id: String,
        prefixes: Vec<Ipv4Network>,
    },
    /// Detach and delete an ENI.
    FreeEni { eni_id: String },
}

impl Decision {
    /// Whether carrying it out changes anything in EC2.
    pub fn is_action(&self) -> bool {
        !matches!(self, Decision::Hold | Decision::AtEniLimit { .. })
    }
}

fn u(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl PoolPolicy {
    /// Whether WARM_IP_TARGET or MINIMUM_IP_TARGET is in force (they override the ENI/prefix targets).
    pub fn uses_ip_targets(&self) -> bool {
        self.warm_ip_target > 0 || self.minimum_ip_target > 0
    }

    /// EC2 slots per ENI besides the primary IP.
    pub fn slots_per_eni(&self) -> u32 {
        if self.prefix_delegation {
            self.ips_per_eni / PREFIX_SIZE
        } else {
            self.ips_per_eni
        }
    }

    /// Addresses one slot brings.
    fn per_slot(&self) -> u32 {
        if self.prefix_delegation {
            PREFIX_SIZE
        } else {
            1
        }
    }

    fn raw_short(&self, total: u32, available: u32) -> u32 {
        let target = |want: u32| {
            if want == 0 && available == 0 {
                1 // a target of 0 still keeps one address ready, as the anchor does
            } else {
                want.saturating_sub(available)
            }
        };
        if self.uses_ip_targets() {
            self.warm_ip_target
                .saturating_sub(available)
                .max(self.minimum_ip_target.saturating_sub(total))
        } else if self.prefix_delegation {
            target(self.warm_prefix_target.saturating_mul(PREFIX_SIZE))
        } else {
            target(self.warm_eni_target.saturating_mul(self.ips_per_eni))
        }
    }

    /// How many addresses the pool is short of its target (0 = none), within max-pods.
    pub fn shortage(&self, s: &PoolStats) -> u32 {
        let total = u(s.total);
        if total >= self.max_pods {
            return 0;
        }
        let short = self.raw_short(total, u(s.available));
        if self.prefix_delegation {
            short
        } else {
            short.min(self.max_pods - total)
        }
    }

    /// Addresses above what the pool should hold (see the module docs).
    pub fn excess(&self, s: &PoolStats) -> u32 {
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
                .saturating_mul(PREFIX_SIZE)
        } else {
            0
        };
        over_max_pods.max(over_target)
    }
}

fn grow(policy: &PoolPolicy, stats: &PoolStats, enis: &[&EniRoom], short: u32) -> Decision {
    let total = u(stats.total);
    let headroom = policy.max_pods.saturating_sub(total);
    let per_slot = policy.per_slot();
    // Slots wanted: addresses rounded up to whole slots, never more than max-pods allows (rounded up in PD).
    let wanted = short.div_ceil(per_slot).max(1);
    let allowed = headroom.div_ceil(per_slot).max(1);
    let slots_per_eni = policy.slots_per_eni();
    if let Some(eni) = enis.iter().find(|e| e.slots < slots_per_eni) {
        let room = slots_per_eni - eni.slots;
        // With IP targets ask for what is short; with ENI targets fill the ENI (one call now, fewer later).
        let want = if policy.uses_ip_targets() || policy.prefix_delegation {
            wanted
        } else {
            room
        };
        let count = want.min(room).min(allowed).max(1);
        let eni_id = eni.eni_id.clone();
        return if policy.prefix_delegation {
            Decision::AssignPrefixes { eni_id, count }
        } else {
            Decision::AssignIps { eni_id, count }
        };
    }
    if u(enis.len()) < policy.max_enis {
        let want = if policy.uses_ip_targets() || policy.prefix_delegation {
            wanted
        } else {
            slots_per_eni
        };
        let count = want.min(slots_per_eni).min(allowed).max(1);
        let request = if policy.prefix_delegation {
            IpRequest::Prefixes(count)
        } else {
            IpRequest::Secondary(count)
        };
        return Decision::AttachEni { request };
    }
    Decision::AtEniLimit { short }
}

fn shrink(policy: &PoolPolicy, stats: &PoolStats, enis: &[&EniRoom]) -> Option<Decision> {
    let excess = policy.excess(stats);
    if excess > 0 {
        // Highest device first: draining the newest ENIs lets them be freed later.
        for eni in enis.iter().rev() {
            if policy.prefix_delegation {
                let n = (excess / PREFIX_SIZE) as usize;
                if n > 0 && !eni.releasable_prefixes.is_empty() {
                    return Some(Decision::ReleasePrefixes {
                        eni_id: eni.eni_id.clone(),
                        prefixes: eni.releasable_prefixes.iter().take(n).copied().collect(),
                    });
                }
            }
            if !eni.releasable_ips.is_empty() {
                return Some(Decision::ReleaseIps {
                    eni_id: eni.eni_id.clone(),
                    ips: eni
                        .releasable_ips
                        .iter()
                        .rev()
                        .take(excess as usize)
                        .copied()
                        .collect(),
                });
            }
        }
    }
    // Free one ENI whose addresses the pool does not need.
    for eni in enis.iter().rev() {
        if eni.is_primary || eni.assigned > 0 || eni.cooling > 0 || eni.age < MIN_ENI_LIFETIME {
            continue;
        }
        let without = PoolStats {
            total: stats.total.saturating_sub(eni.ips as usize),
            available: stats.available.saturating_sub(eni.ips as usize),
            enis: stats.enis.saturating_sub(1),
            ..*stats
        };
        if policy.raw_short(u(without.total), u(without.available)) == 0 {
            return Some(Decision::FreeEni {
                eni_id: eni.eni_id.clone(),
            });
        }
    }
    None
}

/// The next step for the pool. `enis` lists the attached ENIs the daemon manages; `may_shrink` is false while
/// the shrink interval since the last release has not passed.
pub fn decide(
    policy: &PoolPolicy,
    stats: &PoolStats,
    enis: &[EniRoom],
    may_shrink: bool,
) -> Decision {
    let mut sorted: Vec<&EniRoom> = enis.iter().collect();
    sorted.sort_by_key(|e| e.device_number);
    let short = policy.shortage(stats);
    if short > 0 {
        return grow(policy, stats, &sorted, short);
    }
    if may_shrink {
        if let Some(d) = shrink(policy, stats, &sorted) {
            return d;
        }
    }
    Decision::Hold
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy node: ENIs with addresses, pods assigned lowest device first, no cooldown.
    #[derive(Debug, Clone)]
    struct Toy {
        enis: Vec<EniRoom>,
        pods: u32,
    }

    impl Toy {
        fn new() -> Toy {
            Toy {
                enis: vec![EniRoom {
                    eni_id: "eni-0".into(),
                    device_number: 0,
                    is_primary: true,
                    ..EniRoom::default()
                }],
                pods: 0,
            }
        }

        fn view(&mut self, pd: bool) -> (PoolStats, Vec<EniRoom>) {
            let mut left = self.pods;
            let mut stats = PoolStats {
                enis: self.enis.len(),
                ..PoolStats::default()
            };
            for e in &mut self.enis {
                e.assigned = left.min(e.ips);
                left -= e.assigned;
                e.age = MIN_ENI_LIFETIME;
                let free = e.ips - e.assigned;
                stats.total += e.ips as usize;
                stats.assigned += e.assigned as usize;
                if pd {
                    let full_free = if e.assigned == 0 { e.slots } else { free / 16 };
                    stats.prefixes += e.slots as usize;
                    stats.free_prefixes += full_free as usize;
                    e.releasable_prefixes = (0..full_free)
                        .map(|i| {
                            Ipv4Network::new(
                                Ipv4Addr::new(10, e.device_number as u8, i as u8, 0),
                                28,
                            )
                            .expect("pfx")
                        })
                        .collect();
                } else {
                    e.releasable_ips = (0..free)
                        .map(|i| Ipv4Addr::new(10, e.device_number as u8, 0, i as u8))
                        .collect();
                }
            }
            stats.available = stats.total - stats.assigned;
            (stats, self.enis.clone())
        }

        /// Runs decisions to a fixed point; returns (ENIs, total addresses, slots).
        fn settle(&mut self, p: &PoolPolicy) -> (u32, u32, u32) {
            for _ in 0..200 {
                let (stats, enis) = self.view(p.prefix_delegation);
                match decide(p, &stats, &enis, true) {
                    Decision::Hold | Decision::AtEniLimit { .. } => break,
                    Decision::AssignIps { eni_id, count }
                    | Decision::AssignPrefixes { eni_id, count } => {
                        let per = p.per_slot();
                        let e = self
                            .enis
                            .iter_mut()
                            .find(|e| e.eni_id == eni_id)
                            .expect("eni");
                        e.slots += count;
                        e.ips += count * per;
                    }
                    Decision::AttachEni { request } => {
                        let n = u32::try_from(self.enis.len()).expect("small");
                        let per = p.per_slot();
                        self.enis.push(EniRoom {
                            eni_id: format!("eni-{n}"),
                            device_number: n,
                            slots: request.count(),
                            ips: request.count() * per,
                            ..EniRoom::default()
                        });
                    }
                    Decision::ReleaseIps { eni_id, ips } => {
                        let e = self
                            .enis
                            .iter_mut()
                            .find(|e| e.eni_id == eni_id)
                            .expect("eni");
                        e.slots -= u(ips.len());
                        e.ips -= u(ips.len());
                    }
                    Decision::ReleasePrefixes { eni_id, prefixes } => {
                        let e = self
                            .enis
                            .iter_mut()
                            .find(|e| e.eni_id == eni_id)
                            .expect("eni");
                        e.slots -= u(prefixes.len());
                        e.ips -= u(prefixes.len()) * 16;
                    }
                    Decision::FreeEni { eni_id } => self.enis.retain(|e| e.eni_id != eni_id),
                }
            }
            (
                u(self.enis.len()),
                self.enis.iter().map(|e| e.ips).sum(),
                self.enis.iter().map(|e| e.slots).sum(),
            )
        }
    }

    /// Pods arrive one by one, as in the anchor's documented examples, the pool settling after each.
    fn settle(policy: PoolPolicy, pods: u32) -> (u32, u32, u32) {
        let mut toy = Toy::new();
        let mut out = toy.settle(&policy);
        for n in 1..=pods {
            toy.pods = n;
            out = toy.settle(&policy);
        }
        out
    }

    fn policy(ipv4_per_eni: u32, max_enis: u32) -> PoolPolicy {
        PoolPolicy {
            warm_eni_target: 1,
            warm_ip_target: 0,
            minimum_ip_target: 0,
            warm_prefix_target: 0,
            prefix_delegation: false,
            ips_per_eni: ipv4_per_eni - 1,
            max_enis,
            max_pods: max_enis * (ipv4_per_eni - 1) + 2,
        }
    }

    #[test]
    fn anchor_doc_t3_small_warm_eni_target_1() {
        // t3.small: 3 ENIs x 4 IPv4. 0 pods -> 1 ENI / 3 IPs; 5 pods -> 3 ENIs / 9 IPs.
        assert_eq!(settle(policy(4, 3), 0).0..=settle(policy(4, 3), 0).1, 1..=3);
        let (enis, ips, _) = settle(policy(4, 3), 5);
        assert_eq!((enis, ips), (3, 9));
    }

    #[test]
    fn anchor_doc_p3dn_warm_ip_5_minimum_10() {
        // p3dn.24xlarge: 15 ENIs x 50 IPv4; WARM_IP_TARGET=5, MINIMUM_IP_TARGET=10.
        let p = PoolPolicy {
            warm_ip_target: 5,
            minimum_ip_target: 10,
            ..policy(50, 15)
        };
        let (enis, ips, _) = settle(p, 0);
        assert_eq!((enis, ips), (1, 10));
        let (enis, ips, _) = settle(p, 45);
        assert_eq!((enis, ips), (2, 50));
    }

    #[test]
    fn anchor_doc_prefix_delegation_t3_small_17_pods() {
        // t3.small in PD: 3 slots per ENI, 48 addresses; WARM_PREFIX_TARGET=1, 17 pods -> 3 prefixes.
        let p = PoolPolicy {
            prefix_delegation: true,
            warm_prefix_target: 1,
            ips_per_eni: 3 * 16,
            max_pods: 110,
            ..policy(4, 3)
        };
        assert_eq!(settle(p, 0).2, 1, "0 pods: one prefix");
        let (_, ips, prefixes) = settle(p, 17);
        assert_eq!((prefixes, ips), (3, 48));
    }

    #[test]
    fn minimum_ip_target_rounds_up_to_whole_prefixes() {
        let p = PoolPolicy {
            prefix_delegation: true,
            minimum_ip_target: 20,
            ips_per_eni: 3 * 16,
            max_pods: 110,
            ..policy(4, 3)
        };
        assert_eq!(settle(p, 0).2, 2);
    }

    #[test]
    fn never_grows_past_max_pods_and_shrinks_back_to_it() {
        for warm in [0, 1, 5] {
            let p = PoolPolicy {
                max_pods: 20,
                warm_ip_target: warm,
                ..policy(10, 3)
            };
            for pods in 0..=20 {
                let (_, total, _) = settle(p, pods);
                assert!(total <= 20, "{pods} pods -> {total} IPs > max-pods 20");
            }
        }
        // Max-pods lowered below what the node holds: the excess free IPs go back.
        let mut toy = Toy::new();
        toy.settle(&policy(10, 3));
        toy.pods = 20;
        let (_, before, _) = toy.settle(&policy(10, 3));
        assert!(before > 20);
        let (_, after, _) = toy.settle(&PoolPolicy {
            max_pods: 22,
            ..policy(10, 3)
        });
        assert_eq!(after, 22);
    }

    #[test]
    fn ip_targets_shrink_to_target_and_free_idle_enis() {
        let p = PoolPolicy {
            warm_ip_target: 2,
            ..policy(10, 3)
        };
        let mut toy = Toy::new();
        toy.pods = 20;
        let (enis, total, _) = toy.settle(&p);
        assert_eq!((enis, total), (3, 22));
        toy.pods = 3;
        let (enis, total, _) = toy.settle(&p);
        assert_eq!(
            (enis, total),
            (1, 5),
            "shrunk to 3 pods + 2 warm on the primary ENI"
        );
    }

    #[test]
    fn warm_eni_target_frees_whole_enis_only() {
        let p = policy(4, 3);
        let mut toy = Toy::new();
        toy.pods = 6;
        assert_eq!(toy.settle(&p).0, 3);
        toy.pods = 0;
        let (enis, total, _) = toy.settle(&p);
        // Back to the 0-pod shape: one ENI, which alone is one ENI's worth of free IPs.
        assert_eq!((enis, total), (1, 3));
    }

    #[test]
    fn free_eni_skips_primary_young_busy_and_cooling() {
        let p = PoolPolicy {
            warm_ip_target: 1,
            ..policy(4, 3)
        };
        let stats = PoolStats {
            total: 6,
            assigned: 0,
            cooldown: 0,
            available: 6,
            enis: 2,
            ..PoolStats::default()
        };
        let base = EniRoom {
            eni_id: "eni-1".into(),
            device_number: 1,
            ips: 3,
            slots: 3,
            age: MIN_ENI_LIFETIME,
            ..EniRoom::default()
        };
        let primary = EniRoom {
            eni_id: "eni-0".into(),
            is_primary: true,
            ips: 3,
            slots: 3,
            age: MIN_ENI_LIFETIME,
            ..EniRoom::default()
        };
        let free = |e: &EniRoom| decide(&p, &stats, &[primary.clone(), e.clone()], true);
        assert_eq!(
            free(&base),
            Decision::FreeEni {
                eni_id: "eni-1".into()
            }
        );
        for blocked in [
            EniRoom {
                age: Duration::from_secs(59),
                ..base.clone()
            },
            EniRoom {
                assigned: 1,
                ..base.clone()
            },
            EniRoom {
                cooling: 1,
                ..base.clone()
            },
        ] {
            assert_eq!(free(&blocked), Decision::Hold, "{blocked:?}");
        }
        assert_eq!(decide(&p, &stats, &[primary, base], false), Decision::Hold);
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
            ..PoolStats::default()
        };
        let enis = [EniRoom {
            eni_id: "eni-0".into(),
            ips: 9,
            slots: 9,
            is_primary: true,
            ..EniRoom::default()
        }];
        assert_eq!(
            decide(&p, &stats, &enis, true),
            Decision::AttachEni {
                request: IpRequest::Secondary(9)
            }
        );
    }

    #[test]
    fn at_eni_limit_reports_shortage() {
        let p = policy(2, 1);
        let stats = PoolStats {
            total: 1,
            assigned: 1,
            available: 0,
            enis: 1,
            ..PoolStats::default()
        };
        let enis = [EniRoom {
            eni_id: "eni-0".into(),
            ips: 1,
            slots: 1,
            assigned: 1,
            is_primary: true,
            ..EniRoom::default()
        }];
        assert_eq!(
            decide(&p, &stats, &enis, true),
            Decision::AtEniLimit { short: 1 }
        );
    }
}
