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
//!
//! Adding IPv6 (the anchor's IPv6 mode: one /80 per node on the primary ENI, assigned once at startup, no warm
//! pool and no secondary ENIs) means: a `V6Prefix` variant here (its slot is a whole /80, its request
//! `AssignIpv6Addresses` with a prefix count); a `V6` [`IpVersion`] (`Ipv6Addr`, `Ipv6Network`), whose
//! `prefix_addresses` a datastore must not expand eagerly (a /80 holds 2^48 addresses: slots are made as pods
//! take them); and a policy whose `decide` holds once the node has its prefix. The checkpoint already carries an
//! `ipv6` field per allocation.

use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

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
    /// Addresses in one delegated prefix.
    const PREFIX_SIZE: u32;
    /// Every address of a delegated prefix, lowest first.
    fn prefix_addresses(prefix: Self::Prefix) -> impl Iterator<Item = Self::Addr>;
    /// The first address of a prefix (how a given-back prefix is remembered).
    fn prefix_base(prefix: Self::Prefix) -> Self::Addr;
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
}

/// How the node gets its pods' addresses (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4, one secondary IP per pod (the default).
    V4Secondary,
    /// IPv4 prefix delegation (`ENABLE_PREFIX_DELEGATION`): /28 prefixes, sixteen pods each.
    V4Prefix,
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
        }
    }

    /// Whether addresses come (and are given back) as whole prefixes.
    pub const fn uses_prefixes(self) -> bool {
        matches!(self, Family::V4Prefix)
    }

    /// What to ask EC2 for to grow by `slots` slots.
    pub const fn request(self, slots: u32) -> IpRequest {
        match self {
            Family::V4Secondary => IpRequest::Secondary(slots),
            Family::V4Prefix => IpRequest::Prefixes(slots),
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
}
