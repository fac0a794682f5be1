//! Address families: what kind of address the node hands to pods, and what it asks EC2 for to get them.
//!
//! The pool policy and the engine ask the [`Family`] in force instead of assuming IPv4: how many addresses one
//! EC2 "slot" brings ([`Family::per_slot`]: a secondary IP is one, a delegated /28 is sixteen), and which
//! request grows an ENI ([`Family::request`]). The datastore is generic over the [`IpVersion`] (the address and
//! prefix types, and how a prefix splits into addresses); [`V4`] is the one implemented.
//!
//! | family | pods get | EC2 grows an ENI by | slot |
//! |---|---|---|---|
//! | [`Family::V4Secondary`] | one secondary IPv4 each | `AssignPrivateIpAddresses` (N addresses) | 1 address |
//! | [`Family::V4Prefix`] | one address of a /28 each | `AssignPrivateIpAddresses` (N /28 prefixes) | 16 addresses |
//! | [`Family::V6Prefix`] | one address of a /80 each | `AssignIpv6Addresses` (`Ipv6PrefixCount`) | 2^48 addresses |
//!
//! IPv6 is the anchor's IPv6 mode: one /80 per node on the primary ENI, assigned once at startup, no warm pool
//! and no secondary ENIs (the engine's `ipv6` room). Its [`IpVersion`], [`V6`], is *lazy*
//! ([`IpVersion::LAZY`]): a datastore never expands a /80 (2^48 addresses) into slots; it carves the next
//! address when a pod needs one ([`IpVersion::carve`]) and keeps only the addresses pods hold or held.

use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};

use ec2_api::IpRequest;

/// The address types of one IP version, as the datastore keys on them: it is generic over this trait
/// (`Datastore<V: IpVersion = V4>`), so a second version is a second implementation, not an edit of every
/// signature.
pub trait IpVersion:
    Copy + Debug + Default + PartialEq + Eq + Hash + Send + Sync + 'static
{
    /// One address handed to a pod.
    type Addr: Copy + Ord + Hash + Debug + Display + Send + Sync + 'static;
    /// A delegated prefix (or an ENI's subnet).
    type Prefix: Copy + Ord + Hash + Debug + Display + Send + Sync + 'static;
    /// Addresses in one delegated prefix (saturated at `u32::MAX` for a lazy version).
    const PREFIX_SIZE: u32;
    /// Whether a delegated prefix is too large to expand into slots: addresses are carved one by one as pods
    /// take them ([`IpVersion::carve`]), and [`IpVersion::prefix_addresses`] is never called on it.
    const LAZY: bool = false;
    /// Every address of a delegated prefix, lowest first.
    fn prefix_addresses(prefix: Self::Prefix) -> impl Iterator<Item = Self::Addr>;
    /// The first address of a prefix (how a given-back prefix is remembered).
    fn prefix_base(prefix: Self::Prefix) -> Self::Addr;
    /// Whether `addr` lies in `prefix`.
    fn prefix_contains(prefix: Self::Prefix, addr: Self::Addr) -> bool;
    /// The lowest address of `prefix` after its base for which `taken` is false (`None`: none left). Lazy
    /// versions only; eager ones expand their prefixes instead.
    fn carve(prefix: Self::Prefix, taken: &dyn Fn(Self::Addr) -> bool) -> Option<Self::Addr>;
    /// Addresses of `prefix` that can be carved (all but the base), saturated at `u64::MAX`.
    fn carvable(prefix: Self::Prefix) -> u64;
}

/// IPv4: addresses are `Ipv4Addr`, delegated prefixes /28s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct V4;

impl IpVersion for V4 {
    type Addr = Ipv4Addr;
    type Prefix = Ipv4Network;
    const PREFIX_SIZE: u32 = 16;

    fn prefix_addresses(prefix: Ipv4Network) -> impl Iterator<Item = Ipv4Addr> {
        prefix.iter()
    }

    fn prefix_base(prefix: Ipv4Network) -> Ipv4Addr {
        prefix.network()
    }

    fn prefix_contains(prefix: Ipv4Network, addr: Ipv4Addr) -> bool {
        prefix.contains(addr)
    }

    fn carve(prefix: Ipv4Network, taken: &dyn Fn(Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
        prefix.iter().skip(1).find(|a| !taken(*a))
    }

    fn carvable(prefix: Ipv4Network) -> u64 {
        u64::from(prefix.size()).saturating_sub(1)
    }
}

/// IPv6: addresses are `Ipv6Addr`, delegated prefixes /80s, carved lazily (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct V6;

impl IpVersion for V6 {
    type Addr = Ipv6Addr;
    type Prefix = Ipv6Network;
    const PREFIX_SIZE: u32 = u32::MAX;
    const LAZY: bool = true;

    fn prefix_addresses(prefix: Ipv6Network) -> impl Iterator<Item = Ipv6Addr> {
        // Never expanded by the datastore (LAZY); bounded here so a mistaken caller cannot run for ever.
        prefix.iter().take(1 << 16)
    }

    fn prefix_base(prefix: Ipv6Network) -> Ipv6Addr {
        prefix.network()
    }

    fn prefix_contains(prefix: Ipv6Network, addr: Ipv6Addr) -> bool {
        prefix.contains(addr)
    }

    fn carve(prefix: Ipv6Network, taken: &dyn Fn(Ipv6Addr) -> bool) -> Option<Ipv6Addr> {
        let base = u128::from(prefix.network());
        let host_bits = 128 - u32::from(prefix.prefix());
        let last: u128 = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        // Callers hold few addresses of a prefix (one per pod): the scan ends within that many steps.
        (1..=last)
            .map(|i| Ipv6Addr::from(base | i))
            .find(|a| !taken(*a))
    }

    fn carvable(prefix: Ipv6Network) -> u64 {
        let host_bits = 128 - u32::from(prefix.prefix());
        if host_bits >= 64 {
            u64::MAX
        } else {
            (1u64 << host_bits) - 1
        }
    }
}

/// How the node gets its pods' addresses (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4, one secondary IP per pod (the default).
    V4Secondary,
    /// IPv4 prefix delegation (`ENABLE_PREFIX_DELEGATION`): /28 prefixes, sixteen pods each.
    V4Prefix,
    /// IPv6 (`ENABLE_IPv6=true`): one /80 on the primary ENI, one address of it per pod.
    V6Prefix,
}

impl Family {
    /// The IPv4 family for the prefix-delegation setting in force.
    pub const fn v4(prefix_delegation: bool) -> Family {
        if prefix_delegation {
            Family::V4Prefix
        } else {
            Family::V4Secondary
        }
    }

    /// Addresses one EC2 slot brings (one per secondary IP; sixteen per /28).
    pub const fn per_slot(self) -> u32 {
        match self {
            Family::V4Secondary => 1,
            Family::V4Prefix => V4::PREFIX_SIZE,
            Family::V6Prefix => V6::PREFIX_SIZE,
        }
    }

    /// Whether addresses come (and are given back) as whole prefixes.
    pub const fn uses_prefixes(self) -> bool {
        matches!(self, Family::V4Prefix | Family::V6Prefix)
    }

    /// What to ask EC2 for to grow by `slots` slots through `AssignPrivateIpAddresses`; `None` for IPv6, whose
    /// one /80 comes from `AssignIpv6Addresses` (`Ipv6PrefixCount`) at startup.
    pub const fn request(self, slots: u32) -> IpRequest {
        match self {
            Family::V4Secondary => IpRequest::Secondary(slots),
            Family::V4Prefix | Family::V6Prefix => IpRequest::Prefixes(slots),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v4_families_ask_ec2_for_addresses_or_prefixes() {
        assert_eq!(Family::v4(false), Family::V4Secondary);
        assert_eq!(Family::v4(true), Family::V4Prefix);
        assert_eq!(Family::V4Secondary.request(3), IpRequest::Secondary(3));
        assert_eq!(Family::V4Prefix.request(2), IpRequest::Prefixes(2));
        // A /28 holds sixteen addresses.
        let p: Ipv4Network = "10.0.0.16/28".parse().expect("cidr");
        assert_eq!(V4::prefix_addresses(p).count(), V4::PREFIX_SIZE as usize);
        assert_eq!(V4::prefix_base(p), Ipv4Addr::new(10, 0, 0, 16));
        assert_eq!(p.size(), Family::V4Prefix.per_slot());
        assert_eq!(Family::V4Secondary.per_slot(), 1);
    }

    #[test]
    fn a_v6_prefix_is_carved_address_by_address_from_its_base_plus_one() {
        let p: Ipv6Network = "2600:1f14:ab:c800:1::/80".parse().expect("cidr");
        const { assert!(V6::LAZY && !V4::LAZY) };
        let first = V6::carve(p, &|_| false).expect("free");
        assert_eq!(
            first,
            "2600:1f14:ab:c800:1::1".parse::<Ipv6Addr>().expect("ip")
        );
        let taken = [first, "2600:1f14:ab:c800:1::2".parse().expect("ip")];
        let next = V6::carve(p, &|a| taken.contains(&a)).expect("free");
        assert_eq!(
            next,
            "2600:1f14:ab:c800:1::3".parse::<Ipv6Addr>().expect("ip")
        );
        assert!(V6::prefix_contains(p, next));
        assert!(!V6::prefix_contains(
            p,
            "2600:1f14:ab:c800:2::1".parse().expect("ip")
        ));
        assert_eq!(V6::carvable(p), (1u64 << 48) - 1);
        assert!(Family::V6Prefix.uses_prefixes());
    }
}
