//! Address families: what kind of address the node hands to pods, and what it asks EC2 for to get them.
//!
//! The pool policy and the engine ask the [`Family`] in force instead of assuming IPv4: how many addresses one
//! EC2 "slot" brings ([`Family::per_slot`]: a secondary IP is one, a delegated /28 is sixteen), and which
//! request grows an ENI ([`Family::request`]). The datastore names its address types through this module
//! ([`Addr`], [`Prefix`]) rather than spelling `Ipv4Addr` itself.
//!
//! | family | pods get | EC2 grows an ENI by | slot |
//! |---|---|---|---|
//! | [`Family::V4Secondary`] | one secondary IPv4 each | `AssignPrivateIpAddresses` (N addresses) | 1 address |
//! | [`Family::V4Prefix`] | one address of a /28 each | `AssignPrivateIpAddresses` (N /28 prefixes) | 16 addresses |
//!
//! Adding IPv6 (the anchor's IPv6 mode: one /80 per node on the primary ENI, assigned once at startup, no warm
//! pool and no secondary ENIs) means: a `V6Prefix` variant here (its slot is a whole /80, its request
//! `AssignIpv6Addresses` with a prefix count); [`Addr`]/[`Prefix`] becoming the family's own types (the
//! datastore keyed by `IpAddr`, or generic over the family, with a /80's addresses materialised as pods take
//! them rather than all at once); and a policy whose `decide` holds once the node has its prefix. The
//! checkpoint already carries an `ipv6` field per allocation.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::ec2::IpRequest;

/// An address the datastore hands out (today: IPv4).
pub type Addr = Ipv4Addr;
/// A delegated prefix the datastore splits into addresses (today: an IPv4 /28).
pub type Prefix = Ipv4Network;

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
            Family::V4Prefix => 16,
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
        let p: Prefix = "10.0.0.16/28".parse().expect("cidr");
        assert_eq!(p.size(), Family::V4Prefix.per_slot());
        assert_eq!(Family::V4Secondary.per_slot(), 1);
    }
}
