//! Warm-pool policy: given the node's counts, what to ask EC2 for next, or what to give back.
//!
//! Three files: [`policy`] (the knobs and limits, and the counts they imply: shortage, need, excess),
//! [`high_water`] (the release hysteresis' sliding-window maximum) and [`decide()`] (the step).
//!
//! The policy is a pure function ([`decide()`]) so it can be tested exhaustively; the daemon's pool task calls it
//! in a loop and carries out one step at a time (see [`crate::engine::pool_task`]). It follows the anchor with
//! its units: an *address* is a secondary IP, or one of the sixteen of a /28 prefix in prefix-delegation mode
//! (PD); a *slot* is what EC2 counts against an ENI's IPv4 limit (one per secondary IP or per prefix). Besides
//! the counts it takes an [`Outlook`]: the ADDs waiting for an address, the recent peak of need (`keep`), and
//! whether a shrink step is due.
//!
//! ```text
//!   short (addresses the pool lacks; `waiting` = ADD requests waiting for an address):
//!     IP targets set (WARM_IP_TARGET / MINIMUM_IP_TARGET):  max(WARM_IP + waiting - available, MINIMUM_IP - total, 0)
//!     PD, WARM_PREFIX_TARGET:                               16 x WARM_PREFIX + waiting - available
//!     otherwise (WARM_ENI_TARGET, default 1):               WARM_ENI x addresses_per_eni + waiting - available
//!     (a target of 0 with nothing available still asks for one, as the anchor does)
//!   never past max-pods (anchor #2793): nothing once total >= max-pods; secondary IPs capped at
//!     max-pods - total; in PD a /28 is indivisible, so the last prefix may overshoot by less than 16.
//!
//!   short > 0   fill the lowest ENI with a free slot     one AssignPrivateIpAddresses (N IPs or N prefixes)
//!               else attach a new ENI with its addresses one CreateNetworkInterface (addresses pre-assigned)
//!               else the node is at its ENI limit
//!   otherwise, at most once per shrink interval (the engine says when):
//!     excess = max(total - max-pods,                                 shrinking respects max-pods too
//!                  min(over_target, total - keep))                   never below the recent peak of need
//!       over_target = min(available - WARM_IP, total - MINIMUM_IP)   only with IP targets
//!                     16 x (free prefixes - WARM_PREFIX)             PD without IP targets
//!     excess > 0  give back free, cooled-down IPs (or whole free prefixes), highest device first
//!     else        free one ENI: not the primary, attached >= 1 min, no pod, no IP in cooldown, the pool
//!                 without it still holds `keep` addresses and is not short (for WARM_ENI_TARGET this is the
//!                 anchor's available >= (WARM_ENI + 1) x addresses_per_eni)
//! ```
//!
//! `available` excludes IPs in cooldown (the anchor counts them, #2896, so its pool stops growing while ADDs fail).
//! With only WARM_ENI_TARGET the pool never gives back single IPs (as the anchor), only whole ENIs.
//!
//! **Coalesced growth.** A burst of ADDs is one EC2 call, not one per ADD: an ADD that finds no address waits
//! (see [`crate::engine::admission`]) and counts in `waiting`, so the step the pool takes asks for every waiting ADD
//! *plus* the warm target at once (within the ENI's room and max-pods), and the engine lets a burst gather for a
//! few milliseconds before it decides. With WARM_ENI_TARGET the pool already fills a whole ENI per call.
//!
//! **Release hysteresis** (`AWS_CNI_POOL_RELEASE_DELAY`, ours; default 300 s, 0 = the anchor's behaviour).
//! [`PoolPolicy::need`] is what the pool should hold right now (addresses held or cooling, plus waiting ADDs,
//! plus the warm target, or MINIMUM_IP_TARGET). The engine keeps the highest `need` seen over the last release
//! delay ([`HighWater`], a sliding-window maximum) and passes it as `keep`: nothing is given back, neither
//! addresses nor prefixes nor ENIs, that would take the pool below it. A node whose pods come in waves (a
//! Deployment scaled up and down, a batch job every few minutes, CI runners) therefore keeps the addresses of
//! its last wave instead of giving them back between waves and asking for them again — the anchor's ENI and
//! address thrash, one Create/Attach/Detach/Delete or Assign/Unassign per wave. The delay counts from the last
//! moment the addresses were needed, not from when they were obtained; once demand has stayed lower for the
//! whole delay, the pool shrinks by the anchor's rules (one step per 30 s shrink interval, MIN_ENI_LIFETIME,
//! cooldown). The trade-off: the subnet's addresses (and ENI slots) stay with a node up to the delay longer
//! after its pods are gone, which matters in a nearly full subnet shared by many nodes — lower the delay (or set
//! 0) there. It never makes the pool exceed max-pods: `keep` blocks shrinking, it never causes growth, and
//! addresses above max-pods are always given back.

pub mod decide;
pub mod high_water;
pub mod policy;

pub use decide::{decide, Decision, EniRoom, Outlook, MIN_ENI_LIFETIME};
pub use high_water::HighWater;
pub use policy::{policy_for, PoolPolicy, PREFIX_SIZE};
