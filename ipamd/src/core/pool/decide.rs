//! The step: [`decide()`] takes the policy, the counts, each ENI's room and the [`Outlook`], and says what to do
//! next (see the module docs of [`crate::core::pool`] for the formulas).

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnetwork::Ipv4Network;

use super::policy::{u, PoolPolicy};
use crate::core::datastore::PoolStats;
use crate::core::family::Family;
use ec2_api::IpRequest;

/// An ENI younger than this is never freed (anchor `minENILifeTime`).
pub const MIN_ENI_LIFETIME: Duration = Duration::from_secs(60);

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

/// What the engine knows beyond the datastore's counts (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outlook {
    /// ADD requests waiting for an address now: each needs one on top of the warm target.
    pub waiting: u32,
    /// Addresses to keep: the highest [`PoolPolicy::need`] of the release window (0: no hysteresis).
    pub keep: u32,
    /// The shrink interval since the last release has passed.
    pub may_shrink: bool,
    /// The node object's `status.capacity.pods` (what kubelet will run), when known: the pool never holds
    /// addresses for more pods than this (anchor #2793); the effective max-pods is the lower of it and the ENI
    /// math's.
    pub node_max_pods: Option<u32>,
    /// No ENI may be attached or freed now (a cordoned node without `AWS_MANAGE_ENIS_NON_SCHEDULABLE`);
    /// addresses on the attached ENIs still come and go.
    pub freeze_enis: bool,
    /// Prefix mode, but the subnet has no free /28 (`InsufficientCidrBlocks`): grow with secondary IPs instead
    /// (on an ENI with free slots, or a new ENI), and give nothing back that the fallback brought.
    pub prefix_fallback: bool,
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
    /// More addresses are wanted, every ENI is full, and a new ENI may not be attached now (cordoned node).
    EniChangesPaused { short: u32 },
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
        !matches!(
            self,
            Decision::Hold | Decision::AtEniLimit { .. } | Decision::EniChangesPaused { .. }
        )
    }
}

fn grow(
    policy: &PoolPolicy,
    stats: &PoolStats,
    enis: &[&EniRoom],
    short: u32,
    freeze_enis: bool,
    family: Family,
) -> Decision {
    let total = u(stats.total);
    let headroom = policy.max_pods.saturating_sub(total);
    let per_slot = family.per_slot();
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
        return if family.uses_prefixes() {
            Decision::AssignPrefixes { eni_id, count }
        } else {
            Decision::AssignIps { eni_id, count }
        };
    }
    if u(enis.len()) < policy.max_enis {
        if freeze_enis {
            return Decision::EniChangesPaused { short };
        }
        let want = if policy.uses_ip_targets() || policy.prefix_delegation {
            wanted
        } else {
            slots_per_eni
        };
        let count = want.min(slots_per_eni).min(allowed).max(1);
        return Decision::AttachEni {
            request: family.request(count),
        };
    }
    Decision::AtEniLimit { short }
}

fn shrink(
    policy: &PoolPolicy,
    stats: &PoolStats,
    enis: &[&EniRoom],
    keep: u32,
    freeze_enis: bool,
    prefix_fallback: bool,
) -> Option<Decision> {
    let excess = policy.excess(stats, keep);
    if excess > 0 {
        // Highest device first: draining the newest ENIs lets them be freed later.
        for eni in enis.iter().rev() {
            if policy.family().uses_prefixes() {
                let n = (excess / policy.per_slot()) as usize;
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
    // Back in prefix mode after a fallback: free secondary IPs the pool does not need without them go back, so
    // the node returns to whole prefixes.
    if policy.family().uses_prefixes() && !prefix_fallback {
        for eni in enis.iter().rev() {
            let n = u(eni.releasable_ips.len());
            if n == 0 {
                continue;
            }
            let total = u(stats.total).saturating_sub(n);
            let available = u(stats.available).saturating_sub(n);
            if total >= keep && policy.raw_short(total, available, 0) == 0 {
                return Some(Decision::ReleaseIps {
                    eni_id: eni.eni_id.clone(),
                    ips: eni.releasable_ips.clone(),
                });
            }
        }
    }
    // Free one ENI whose addresses the pool does not need (never on a frozen node).
    if freeze_enis {
        return None;
    }
    for eni in enis.iter().rev() {
        if eni.is_primary
            || eni.assigned > 0
            || eni.cooling > 0
            || eni.age < MIN_ENI_LIFETIME
            || u(stats.total).saturating_sub(eni.ips) < keep
        {
            continue;
        }
        let without = PoolStats {
            total: stats.total.saturating_sub(eni.ips as usize),
            available: stats.available.saturating_sub(eni.ips as usize),
            enis: stats.enis.saturating_sub(1),
            ..*stats
        };
        if policy.raw_short(u(without.total), u(without.available), 0) == 0 {
            return Some(Decision::FreeEni {
                eni_id: eni.eni_id.clone(),
            });
        }
    }
    None
}

/// The next step for the pool. `enis` lists the attached ENIs the daemon manages; `outlook` says how many ADDs
/// wait, what the release hysteresis keeps, and whether the shrink interval since the last release has passed.
pub fn decide(
    policy: &PoolPolicy,
    stats: &PoolStats,
    enis: &[EniRoom],
    outlook: &Outlook,
) -> Decision {
    let capped = policy.capped(outlook.node_max_pods);
    let policy = &capped;
    let mut sorted: Vec<&EniRoom> = enis.iter().collect();
    sorted.sort_by_key(|e| e.device_number);
    let short = policy.shortage(stats, outlook.waiting);
    if short > 0 {
        let family = if outlook.prefix_fallback && policy.family().uses_prefixes() {
            Family::V4Secondary
        } else {
            policy.family()
        };
        return grow(policy, stats, &sorted, short, outlook.freeze_enis, family);
    }
    if outlook.may_shrink {
        if let Some(d) = shrink(
            policy,
            stats,
            &sorted,
            outlook.keep,
            outlook.freeze_enis,
            outlook.prefix_fallback,
        ) {
            return d;
        }
    }
    Decision::Hold
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::pool::{HighWater, PREFIX_SIZE};

    /// No waiting ADD, no hysteresis, shrinking allowed: the anchor's policy.
    const SHRINK: Outlook = Outlook {
        waiting: 0,
        keep: 0,
        may_shrink: true,
        node_max_pods: None,
        freeze_enis: false,
        prefix_fallback: false,
    };

    /// The outlook every case starts from ([`SHRINK`]) with `change` applied, so a case states only what
    /// differs: `outlook(|o| o.waiting = 12)`.
    fn outlook(change: impl FnOnce(&mut Outlook)) -> Outlook {
        let mut o = SHRINK;
        change(&mut o);
        o
    }

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
            self.settle_with(p, |_| SHRINK);
            (
                u(self.enis.len()),
                self.enis.iter().map(|e| e.ips).sum(),
                self.enis.iter().map(|e| e.slots).sum(),
            )
        }

        /// Settles at `now` with the release hysteresis `hw` sampling the need at every step, as the engine
        /// does; returns the number of EC2 actions taken.
        fn settle_outlook(&mut self, p: &PoolPolicy, hw: &mut HighWater, now: Duration) -> u32 {
            self.settle_with(p, |stats| {
                hw.record(now, p.need(stats, 0));
                outlook(|o| o.keep = hw.peak(now))
            })
        }

        /// Runs decisions to a fixed point; returns the number of actions.
        fn settle_with(
            &mut self,
            p: &PoolPolicy,
            mut outlook: impl FnMut(&PoolStats) -> Outlook,
        ) -> u32 {
            let mut actions = 0;
            for _ in 0..200 {
                let (stats, enis) = self.view(p.prefix_delegation);
                let d = decide(p, &stats, &enis, &outlook(&stats));
                if d.is_action() {
                    actions += 1;
                }
                match d {
                    Decision::Hold
                    | Decision::AtEniLimit { .. }
                    | Decision::EniChangesPaused { .. } => break,
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
            actions
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

    fn room(id: &str, device: u32, ips: u32, assigned: u32, primary: bool) -> EniRoom {
        EniRoom {
            eni_id: id.into(),
            device_number: device,
            ips,
            slots: ips,
            is_primary: primary,
            assigned,
            age: Duration::from_secs(3600),
            ..EniRoom::default()
        }
    }

    #[test]
    fn the_nodes_capacity_pods_caps_growth_below_the_eni_math() {
        // m5.large-like: 3 ENIs x 10 IPv4, ENI math 29; kubelet runs at most 5 pods.
        let p = policy(10, 3);
        let stats = PoolStats {
            total: 3,
            available: 3,
            enis: 1,
            ..PoolStats::default()
        };
        let enis = [room("eni-0", 0, 3, 0, true)];
        let uncapped = decide(&p, &stats, &enis, &SHRINK);
        assert_eq!(
            uncapped,
            Decision::AssignIps {
                eni_id: "eni-0".into(),
                count: 6
            }
        );
        let capped = outlook(|o| o.node_max_pods = Some(5));
        assert_eq!(
            decide(&p, &stats, &enis, &capped),
            Decision::AssignIps {
                eni_id: "eni-0".into(),
                count: 2
            },
            "only up to capacity.pods"
        );
        let full = PoolStats {
            total: 5,
            available: 5,
            enis: 1,
            ..PoolStats::default()
        };
        assert_eq!(
            decide(&p, &full, &[room("eni-0", 0, 5, 0, true)], &capped),
            Decision::Hold
        );
        // A capacity above the ENI math changes nothing; one below what the pool holds gives addresses back.
        let high = outlook(|o| o.node_max_pods = Some(500));
        assert_eq!(decide(&p, &stats, &enis, &high), uncapped);
        let mut over = room("eni-0", 0, 5, 0, true);
        over.releasable_ips = (1..=5)
            .map(|i| std::net::Ipv4Addr::new(10, 0, 0, i))
            .collect();
        let low = outlook(|o| o.node_max_pods = Some(3));
        assert!(
            matches!(decide(&p, &full, &[over], &low), Decision::ReleaseIps { ref ips, .. } if ips.len() == 2)
        );
        assert_eq!(p.capped(Some(5)).max_pods, 5);
        assert_eq!(p.capped(None), p);
    }

    #[test]
    fn a_frozen_node_neither_attaches_nor_frees_enis_but_fills_the_ones_it_has() {
        let p = policy(4, 3);
        let frozen = outlook(|o| o.freeze_enis = true);
        // Room on the attached ENI: addresses still come.
        let stats = PoolStats {
            total: 1,
            available: 1,
            enis: 1,
            ..PoolStats::default()
        };
        assert!(matches!(
            decide(&p, &stats, &[room("eni-0", 0, 1, 0, true)], &frozen),
            Decision::AssignIps { .. }
        ));
        // Full ENIs: no new one while frozen; the same counts attach one when not.
        let full = PoolStats {
            total: 3,
            available: 0,
            assigned: 3,
            enis: 1,
            ..PoolStats::default()
        };
        let enis = [room("eni-0", 0, 3, 3, true)];
        assert_eq!(
            decide(&p, &full, &enis, &frozen),
            Decision::EniChangesPaused { short: 3 }
        );
        assert!(matches!(
            decide(&p, &full, &enis, &SHRINK),
            Decision::AttachEni { .. }
        ));
        assert!(!Decision::EniChangesPaused { short: 1 }.is_action());
        // An idle secondary ENI the pool does not need stays attached while frozen.
        let idle = PoolStats {
            total: 9,
            available: 9,
            enis: 3,
            ..PoolStats::default()
        };
        let three = [
            room("eni-0", 0, 3, 0, true),
            room("eni-1", 1, 3, 0, false),
            room("eni-2", 2, 3, 0, false),
        ];
        assert!(matches!(
            decide(&p, &idle, &three, &SHRINK),
            Decision::FreeEni { .. }
        ));
        assert_eq!(decide(&p, &idle, &three, &frozen), Decision::Hold);
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
        let free = |e: &EniRoom| decide(&p, &stats, &[primary.clone(), e.clone()], &SHRINK);
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
        assert_eq!(
            decide(
                &p,
                &stats,
                &[primary, base],
                &outlook(|o| o.may_shrink = false)
            ),
            Decision::Hold
        );
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
            decide(&p, &stats, &enis, &SHRINK),
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
            decide(&p, &stats, &enis, &SHRINK),
            Decision::AtEniLimit { short: 1 }
        );
    }

    fn stats(total: usize, assigned: usize, cooldown: usize) -> PoolStats {
        PoolStats {
            total,
            assigned,
            cooldown,
            available: total - assigned - cooldown,
            enis: 1,
            ..PoolStats::default()
        }
    }

    #[test]
    fn need_is_busy_plus_waiting_plus_warm_within_max_pods() {
        let ip = PoolPolicy {
            warm_ip_target: 5,
            minimum_ip_target: 10,
            ..policy(30, 4)
        };
        assert_eq!(ip.need(&stats(10, 0, 0), 0), 10, "MINIMUM_IP_TARGET floor");
        assert_eq!(ip.need(&stats(20, 8, 6), 0), 19, "held + cooling + warm");
        assert_eq!(ip.need(&stats(20, 8, 6), 3), 22, "+ waiting ADDs");
        assert_eq!(ip.need(&stats(120, 110, 6), 9), ip.max_pods, "capped");
        let eni = policy(10, 3);
        assert_eq!(
            eni.need(&stats(9, 4, 2), 0),
            15,
            "held + cooling + one ENI's worth"
        );
        let pd = PoolPolicy {
            prefix_delegation: true,
            warm_prefix_target: 1,
            ips_per_eni: 9 * 16,
            max_pods: 110,
            ..policy(10, 3)
        };
        assert_eq!(pd.need(&stats(32, 17, 0), 0), 48, "whole prefixes");
    }

    /// A node with one ENI (`eni-0`, primary) holding `ips` addresses of which `assigned` are held; `free` of
    /// the rest are releasable (the others cooling).
    fn one_eni(ips: u32, assigned: u32, cooling: u32) -> (PoolStats, Vec<EniRoom>) {
        let free = ips - assigned - cooling;
        let room = EniRoom {
            eni_id: "eni-0".into(),
            ips,
            slots: ips,
            is_primary: true,
            assigned,
            cooling,
            releasable_ips: (0..free)
                .map(|i| Ipv4Addr::new(10, 0, 1, u8::try_from(i).expect("small")))
                .collect(),
            age: MIN_ENI_LIFETIME,
            ..EniRoom::default()
        };
        (
            stats(ips as usize, assigned as usize, cooling as usize),
            vec![room],
        )
    }

    #[test]
    fn waiting_adds_and_the_warm_target_come_in_one_call() {
        let p = PoolPolicy {
            warm_ip_target: 5,
            minimum_ip_target: 10,
            ..policy(30, 4)
        };
        let (st, enis) = one_eni(10, 10, 0);
        let with = |waiting| decide(&p, &st, &enis, &outlook(|o| o.waiting = waiting));
        assert_eq!(
            with(0),
            Decision::AssignIps {
                eni_id: "eni-0".into(),
                count: 5
            }
        );
        assert_eq!(
            with(12),
            Decision::AssignIps {
                eni_id: "eni-0".into(),
                count: 17
            },
            "12 waiting ADDs + 5 warm in one AssignPrivateIpAddresses"
        );
        assert_eq!(
            with(40),
            Decision::AssignIps {
                eni_id: "eni-0".into(),
                count: 19
            },
            "no more than the ENI's room (29 - 10)"
        );
        // Within max-pods.
        let small = PoolPolicy { max_pods: 14, ..p };
        assert_eq!(
            decide(&small, &st, &enis, &outlook(|o| o.waiting = 12)),
            Decision::AssignIps {
                eni_id: "eni-0".into(),
                count: 4
            }
        );
        // PD: 20 waiting + one warm prefix = 36 addresses = 3 prefixes at once.
        let pd = PoolPolicy {
            prefix_delegation: true,
            warm_prefix_target: 1,
            warm_ip_target: 0,
            minimum_ip_target: 0,
            ips_per_eni: 29 * 16,
            max_pods: 250,
            ..policy(30, 4)
        };
        let (mut st, mut enis) = one_eni(16, 16, 0);
        enis[0].slots = 1;
        enis[0].releasable_ips.clear();
        st.prefixes = 1;
        assert_eq!(
            decide(&pd, &st, &enis, &outlook(|o| o.waiting = 20)),
            Decision::AssignPrefixes {
                eni_id: "eni-0".into(),
                count: 3
            }
        );
    }

    #[test]
    fn hysteresis_keeps_addresses_but_never_above_max_pods() {
        let p = PoolPolicy {
            warm_ip_target: 5,
            minimum_ip_target: 10,
            ..policy(30, 4)
        };
        // 29 addresses, 2 held: 19 above target (min(27 free - 5 warm, 29 - 10 minimum)).
        let (st, enis) = one_eni(29, 2, 0);
        let at = |keep| decide(&p, &st, &enis, &outlook(|o| o.keep = keep));
        match at(0) {
            Decision::ReleaseIps { ips, .. } => assert_eq!(ips.len(), 19),
            d => panic!("{d:?}"),
        }
        match at(20) {
            Decision::ReleaseIps { ips, .. } => assert_eq!(ips.len(), 9, "down to keep only"),
            d => panic!("{d:?}"),
        }
        assert_eq!(at(29), Decision::Hold);
        assert_eq!(at(40), Decision::Hold);
        // Above max-pods the excess goes whatever keep says.
        let low = PoolPolicy { max_pods: 25, ..p };
        match decide(&low, &st, &enis, &outlook(|o| o.keep = 29)) {
            Decision::ReleaseIps { ips, .. } => assert_eq!(ips.len(), 4),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn hysteresis_keeps_enis_and_prefixes() {
        // WARM_ENI_TARGET: an idle second ENI is freed without keep, kept with it.
        let p = policy(4, 3);
        let primary = EniRoom {
            eni_id: "eni-0".into(),
            is_primary: true,
            ips: 3,
            slots: 3,
            age: MIN_ENI_LIFETIME,
            ..EniRoom::default()
        };
        let idle = EniRoom {
            eni_id: "eni-1".into(),
            device_number: 1,
            ips: 3,
            slots: 3,
            age: MIN_ENI_LIFETIME,
            ..EniRoom::default()
        };
        let mut st = stats(9, 0, 0);
        st.enis = 3;
        let third = EniRoom {
            eni_id: "eni-2".into(),
            device_number: 2,
            ..idle.clone()
        };
        let enis = [primary, idle, third];
        let free = |keep| decide(&p, &st, &enis, &outlook(|o| o.keep = keep));
        assert_eq!(
            free(0),
            Decision::FreeEni {
                eni_id: "eni-2".into()
            }
        );
        assert_eq!(
            free(6),
            Decision::FreeEni {
                eni_id: "eni-2".into()
            },
            "6 addresses stay without it"
        );
        assert_eq!(free(7), Decision::Hold);
        // PD: two free prefixes above WARM_PREFIX_TARGET=1; keep 32 of the 48 addresses lets only one go.
        let pd = PoolPolicy {
            prefix_delegation: true,
            warm_prefix_target: 1,
            ips_per_eni: 3 * 16,
            max_pods: 110,
            ..policy(4, 3)
        };
        let pfx = |i: u8| Ipv4Network::new(Ipv4Addr::new(10, 0, i, 0), 28).expect("pfx");
        let room = EniRoom {
            eni_id: "eni-0".into(),
            is_primary: true,
            ips: 48,
            slots: 3,
            releasable_prefixes: vec![pfx(1), pfx(2), pfx(3)],
            age: MIN_ENI_LIFETIME,
            ..EniRoom::default()
        };
        let st = PoolStats {
            prefixes: 3,
            free_prefixes: 3,
            ..stats(48, 0, 0)
        };
        let release = |keep| match decide(
            &pd,
            &st,
            std::slice::from_ref(&room),
            &outlook(|o| o.keep = keep),
        ) {
            Decision::ReleasePrefixes { prefixes, .. } => prefixes.len(),
            Decision::Hold => 0,
            d => panic!("{d:?}"),
        };
        assert_eq!(release(0), 2);
        assert_eq!(release(32), 1);
        assert_eq!(release(48), 0);
    }

    /// Every policy shape against many node states: growth stays within the ENI's room, the ENI limit and
    /// max-pods; it covers every waiting ADD when room allows; shrinking never goes below `keep` (except to get
    /// under max-pods) and never frees a busy, young or primary ENI.
    #[test]
    fn decisions_respect_room_max_pods_and_keep_everywhere() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: u32| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            u32::try_from(x % u64::from(n.max(1))).expect("small")
        };
        let mut checked = 0;
        for ipv4 in [2u32, 4, 10, 30] {
            for max_enis in 1..=4u32 {
                for pd in [false, true] {
                    for (warm_eni, warm_ip, min_ip, warm_pfx) in [
                        (1, 0, 0, 0),
                        (0, 0, 0, 0),
                        (2, 0, 0, 0),
                        (0, 5, 10, 0),
                        (1, 3, 0, 0),
                        (0, 0, 7, 0),
                        (0, 0, 0, 1),
                        (0, 0, 0, 2),
                    ] {
                        if pd && warm_pfx == 0 && warm_ip == 0 && min_ip == 0 {
                            continue; // refused at startup
                        }
                        let slots_per_eni = ipv4 - 1;
                        let per = if pd { PREFIX_SIZE } else { 1 };
                        let p = PoolPolicy {
                            warm_eni_target: warm_eni,
                            warm_ip_target: warm_ip,
                            minimum_ip_target: min_ip,
                            warm_prefix_target: warm_pfx,
                            prefix_delegation: pd,
                            ips_per_eni: slots_per_eni * per,
                            max_enis,
                            max_pods: if pd {
                                110
                            } else {
                                max_enis * slots_per_eni + 2
                            },
                        };
                        for _ in 0..60 {
                            let n_enis = 1 + next(max_enis);
                            let mut enis = Vec::new();
                            let mut st = PoolStats {
                                enis: n_enis as usize,
                                ..PoolStats::default()
                            };
                            for d in 0..n_enis {
                                let slots = next(slots_per_eni + 1);
                                let ips = slots * per;
                                let assigned = next(ips + 1);
                                let cooling = next(ips - assigned + 1);
                                let free = ips - assigned - cooling;
                                let free_pfx = if pd && assigned + cooling == 0 {
                                    slots
                                } else {
                                    0
                                };
                                let dev = u8::try_from(d).expect("small");
                                enis.push(EniRoom {
                                    eni_id: format!("eni-{d}"),
                                    device_number: d,
                                    ips,
                                    slots,
                                    is_primary: d == 0,
                                    assigned,
                                    cooling,
                                    releasable_ips: if pd {
                                        Vec::new()
                                    } else {
                                        (0..free)
                                            .map(|i| {
                                                Ipv4Addr::new(
                                                    10,
                                                    dev,
                                                    0,
                                                    u8::try_from(i).expect("small"),
                                                )
                                            })
                                            .collect()
                                    },
                                    releasable_prefixes: (0..free_pfx)
                                        .map(|i| {
                                            Ipv4Network::new(
                                                Ipv4Addr::new(
                                                    10,
                                                    dev,
                                                    u8::try_from(i).expect("small"),
                                                    0,
                                                ),
                                                28,
                                            )
                                            .expect("pfx")
                                        })
                                        .collect(),
                                    age: Duration::from_secs(u64::from(next(120))),
                                });
                                st.total += ips as usize;
                                st.assigned += assigned as usize;
                                st.cooldown += cooling as usize;
                                st.prefixes += if pd { slots as usize } else { 0 };
                                st.free_prefixes += free_pfx as usize;
                            }
                            st.available = st.total - st.assigned - st.cooldown;
                            let total = u(st.total);
                            let outlook = outlook(|o| {
                                o.waiting = next(40);
                                o.keep = next(total + 20);
                                o.may_shrink = next(2) == 1;
                            });
                            let d = decide(&p, &st, &enis, &outlook);
                            checked += 1;
                            let ctx = format!("{p:?} {st:?} {outlook:?} -> {d:?}");
                            let headroom = p.max_pods.saturating_sub(total);
                            match &d {
                                Decision::AssignIps { eni_id, count }
                                | Decision::AssignPrefixes { eni_id, count } => {
                                    let e = enis.iter().find(|e| &e.eni_id == eni_id).expect("eni");
                                    assert!(
                                        *count >= 1 && e.slots + count <= slots_per_eni,
                                        "{ctx}"
                                    );
                                    assert!(total < p.max_pods, "{ctx}");
                                    if pd {
                                        assert!(
                                            count * PREFIX_SIZE < headroom + PREFIX_SIZE,
                                            "{ctx}"
                                        );
                                    } else {
                                        assert!(*count <= headroom, "{ctx}");
                                    }
                                    // Coalesced: with IP targets, every waiting ADD and the warm target in this call
                                    // when the ENI's room and max-pods allow.
                                    if p.uses_ip_targets() && !pd {
                                        let want = (warm_ip + outlook.waiting)
                                            .saturating_sub(u(st.available));
                                        let room = slots_per_eni - e.slots;
                                        assert!(*count >= want.min(room).min(headroom), "{ctx}");
                                    }
                                }
                                Decision::AttachEni { request } => {
                                    assert!(n_enis < max_enis, "{ctx}");
                                    assert!(enis.iter().all(|e| e.slots >= slots_per_eni), "{ctx}");
                                    let c = request.count();
                                    assert!(c >= 1 && c <= slots_per_eni, "{ctx}");
                                    if !pd {
                                        assert!(c <= headroom, "{ctx}");
                                    }
                                }
                                Decision::EniChangesPaused { .. } => {
                                    panic!("never frozen here: {ctx}")
                                }
                                Decision::AtEniLimit { .. } => {
                                    assert!(n_enis >= max_enis, "{ctx}");
                                }
                                Decision::ReleaseIps { eni_id, ips } => {
                                    assert!(
                                        outlook.may_shrink && p.shortage(&st, outlook.waiting) == 0,
                                        "{ctx}"
                                    );
                                    let e = enis.iter().find(|e| &e.eni_id == eni_id).expect("eni");
                                    assert!(
                                        ips.iter().all(|ip| e.releasable_ips.contains(ip)),
                                        "{ctx}"
                                    );
                                    let left = total - u(ips.len());
                                    assert!(left >= outlook.keep.min(p.max_pods), "{ctx}");
                                }
                                Decision::ReleasePrefixes { eni_id, prefixes } => {
                                    assert!(
                                        outlook.may_shrink && p.shortage(&st, outlook.waiting) == 0,
                                        "{ctx}"
                                    );
                                    let e = enis.iter().find(|e| &e.eni_id == eni_id).expect("eni");
                                    assert!(
                                        prefixes.iter().all(|x| e.releasable_prefixes.contains(x)),
                                        "{ctx}"
                                    );
                                    let left = total - u(prefixes.len()) * PREFIX_SIZE;
                                    assert!(left >= outlook.keep.min(p.max_pods), "{ctx}");
                                }
                                Decision::FreeEni { eni_id } => {
                                    assert!(
                                        outlook.may_shrink && p.shortage(&st, outlook.waiting) == 0,
                                        "{ctx}"
                                    );
                                    let e = enis.iter().find(|e| &e.eni_id == eni_id).expect("eni");
                                    assert!(
                                        !e.is_primary && e.assigned == 0 && e.cooling == 0,
                                        "{ctx}"
                                    );
                                    assert!(e.age >= MIN_ENI_LIFETIME, "{ctx}");
                                    assert!(total - e.ips >= outlook.keep, "{ctx}");
                                }
                                Decision::Hold => {
                                    assert_eq!(p.shortage(&st, outlook.waiting), 0, "{ctx}");
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 5_000, "{checked}");
    }

    /// Pod waves on the toy node (P pods for 150 s, then none for 120 s), the release hysteresis sampling the
    /// need at every step: with a delay longer than the gap the pool keeps its addresses and ENIs between waves
    /// (no EC2 call after the first wave); with 0 (the anchor) it gives them back and asks again every wave. After
    /// a quiet spell longer than the delay it shrinks back to the idle shape.
    #[test]
    fn waves_thrash_without_hysteresis_and_not_with_it() {
        fn run(
            p: PoolPolicy,
            delay: Duration,
            waves: u32,
            pods: u32,
        ) -> (Vec<u32>, Toy, HighWater, Duration) {
            let mut toy = Toy::new();
            let mut hw = HighWater::new(delay);
            let mut t = Duration::ZERO;
            toy.settle_outlook(&p, &mut hw, t);
            let mut per_wave = Vec::new();
            for _ in 0..waves {
                toy.pods = pods;
                let mut n = toy.settle_outlook(&p, &mut hw, t);
                t += Duration::from_secs(150);
                toy.pods = 0;
                n += toy.settle_outlook(&p, &mut hw, t);
                t += Duration::from_secs(120);
                n += toy.settle_outlook(&p, &mut hw, t);
                per_wave.push(n);
            }
            (per_wave, toy, hw, t)
        }
        let settings = [
            policy(10, 3),
            PoolPolicy {
                warm_ip_target: 5,
                minimum_ip_target: 10,
                ..policy(30, 8)
            },
            PoolPolicy {
                prefix_delegation: true,
                warm_prefix_target: 1,
                ips_per_eni: 9 * 16,
                max_pods: 110,
                ..policy(10, 3)
            },
        ];
        for p in settings {
            let pods = 20;
            let (anchor, ..) = run(p, Duration::ZERO, 4, pods);
            assert!(
                anchor.iter().all(|n| *n >= 2),
                "{p:?}: grows and shrinks every wave: {anchor:?}"
            );
            let (ours, mut toy, mut hw, t) = run(p, Duration::from_secs(300), 4, pods);
            assert!(ours[0] >= 1, "{p:?}: the first wave grows the pool");
            assert_eq!(
                &ours[1..],
                &[0, 0, 0],
                "{p:?}: no EC2 call after the first wave"
            );
            // Quiet for longer than the delay: back to the idle shape.
            let idle = {
                let mut fresh = Toy::new();
                fresh.settle(&p)
            };
            let mut later = t;
            for _ in 0..30 {
                later += Duration::from_secs(30);
                toy.settle_outlook(&p, &mut hw, later);
            }
            let (stats, _) = toy.view(p.prefix_delegation);
            assert_eq!(
                (u(toy.enis.len()), u(stats.total)),
                (idle.0, idle.1),
                "{p:?}: shrinks back once the delay has passed"
            );
        }
    }

    #[test]
    fn prefix_fallback_grows_with_secondary_ips_and_gives_them_back_once_prefixes_return() {
        // m5.large in PD: 9 slots per ENI; WARM_PREFIX_TARGET=1.
        let p = PoolPolicy {
            prefix_delegation: true,
            warm_prefix_target: 1,
            ips_per_eni: 9 * 16,
            max_pods: 110,
            ..policy(10, 3)
        };
        let mut toy = Toy::new();
        // One prefix on the primary ENI, 16 pods on it: short by 16.
        toy.enis[0].slots = 1;
        toy.enis[0].ips = 16;
        toy.pods = 16;
        let (stats, enis) = toy.view(true);
        let fallback = outlook(|o| o.prefix_fallback = true);
        assert_eq!(
            decide(&p, &stats, &enis, &fallback),
            Decision::AssignIps {
                eni_id: "eni-0".into(),
                count: 8
            },
            "the ENI's 8 free slots as secondary IPs"
        );
        assert_eq!(
            decide(&p, &stats, &enis, &SHRINK),
            Decision::AssignPrefixes {
                eni_id: "eni-0".into(),
                count: 1
            }
        );
        // A full ENI: a new one with secondary IPs (16 addresses short, 9 slots per ENI).
        toy.enis[0].slots = 9;
        toy.enis[0].ips = 16;
        let (stats, enis) = toy.view(true);
        assert_eq!(
            decide(&p, &stats, &enis, &fallback),
            Decision::AttachEni {
                request: IpRequest::Secondary(9)
            }
        );
        // Back in prefix mode with a prefix free and 8 free secondary IPs: the secondaries go back; in fallback
        // they stay.
        let mut room = EniRoom {
            eni_id: "eni-0".into(),
            is_primary: true,
            slots: 10,
            ips: 40,
            assigned: 16,
            releasable_ips: (0..8).map(|i| Ipv4Addr::new(10, 0, 9, i)).collect(),
            age: MIN_ENI_LIFETIME,
            ..EniRoom::default()
        };
        room.releasable_prefixes = vec!["10.0.1.0/28".parse().expect("pfx")];
        let stats = PoolStats {
            total: 40,
            assigned: 16,
            available: 24,
            enis: 1,
            prefixes: 2,
            free_prefixes: 1,
            ..PoolStats::default()
        };
        let enis = vec![room];
        match decide(&p, &stats, &enis, &SHRINK) {
            Decision::ReleaseIps { ips, .. } => assert_eq!(ips.len(), 8),
            d => panic!("expected the secondary IPs back, got {d:?}"),
        }
        assert_eq!(decide(&p, &stats, &enis, &fallback), Decision::Hold);
    }
}
