//! The address family as a type parameter, so that routes, rules and neighbours have one implementation for
//! IPv4 and IPv6 ([`RouteSpec<A>`](crate::RouteSpec), [`RuleSpec<A>`](crate::RuleSpec),
//! [`Netlink::routes`](crate::Netlink::routes), ...).
//!
//! [`IpFamily`] is implemented by [`Ipv4Addr`] and [`Ipv6Addr`] and by nothing else (sealed): the address type *is*
//! the family, so an IPv6 route can never be compared with an IPv4 one by mistake, and an IPv4 caller's types
//! (`RouteSpec` is `RouteSpec<Ipv4Addr>`) did not change when IPv6 arrived. What differs between the families is
//! kept here, in one table: the netlink family, the host prefix length, how addresses are spelt in route and
//! neighbour attributes, and whether the kernel reads a route's scope back.

use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::neighbour::NeighbourAddress;
use netlink_packet_route::route::RouteAddress;
use netlink_packet_route::AddressFamily;

/// An IP address family: [`Ipv4Addr`] or [`Ipv6Addr`] (see the module docs).
pub trait IpFamily:
    Copy
    + Eq
    + Ord
    + Hash
    + fmt::Debug
    + fmt::Display
    + Into<IpAddr>
    + Send
    + Sync
    + 'static
    + sealed::Spelling
{
    /// The unspecified address (`0.0.0.0`, `::`): a default route's destination.
    const UNSPECIFIED: Self;
    /// The prefix length of one address (`/32`, `/128`): a pod's address and its host route.
    const HOST_PREFIX: u8;
    /// Whether a route's scope reads back as written. IPv4 keeps it; the kernel reports every IPv6 route as scope
    /// universe, so an IPv6 `scope link` route reads back with `scope_link: false`.
    const SCOPE_READ_BACK: bool;

    /// `ip` when it is of this family.
    fn from_ip(ip: IpAddr) -> Option<Self>;
}

impl IpFamily for Ipv4Addr {
    const UNSPECIFIED: Self = Ipv4Addr::UNSPECIFIED;
    const HOST_PREFIX: u8 = 32;
    const SCOPE_READ_BACK: bool = true;

    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        }
    }
}

impl IpFamily for Ipv6Addr {
    const UNSPECIFIED: Self = Ipv6Addr::UNSPECIFIED;
    const HOST_PREFIX: u8 = 128;
    const SCOPE_READ_BACK: bool = false;

    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(_) => None,
        }
    }
}

/// The netlink spelling of each family, visible only inside this crate (and the reason no other type can be an
/// [`IpFamily`]).
pub(crate) mod sealed {
    use super::*;

    pub trait Spelling {
        /// `AF_INET` / `AF_INET6`.
        const FAMILY: AddressFamily;
        /// How dumps of this family are named in errors and logs: "" for IPv4 (the historical names, "list
        /// routes"), "ipv6 " for IPv6.
        const DUMP_LABEL: &'static str;

        fn route_address(self) -> RouteAddress;
        fn from_route_address(a: &RouteAddress) -> Option<Self>
        where
            Self: Sized;
        fn from_neighbour_address(a: &NeighbourAddress) -> Option<Self>
        where
            Self: Sized;
    }

    impl Spelling for Ipv4Addr {
        const FAMILY: AddressFamily = AddressFamily::Inet;
        const DUMP_LABEL: &'static str = "";

        fn route_address(self) -> RouteAddress {
            RouteAddress::Inet(self)
        }
        fn from_route_address(a: &RouteAddress) -> Option<Self> {
            match a {
                RouteAddress::Inet(ip) => Some(*ip),
                _ => None,
            }
        }
        fn from_neighbour_address(a: &NeighbourAddress) -> Option<Self> {
            match a {
                NeighbourAddress::Inet(ip) => Some(*ip),
                _ => None,
            }
        }
    }

    impl Spelling for Ipv6Addr {
        const FAMILY: AddressFamily = AddressFamily::Inet6;
        const DUMP_LABEL: &'static str = "ipv6 ";

        fn route_address(self) -> RouteAddress {
            RouteAddress::Inet6(self)
        }
        fn from_route_address(a: &RouteAddress) -> Option<Self> {
            match a {
                RouteAddress::Inet6(ip) => Some(*ip),
                _ => None,
            }
        }
        fn from_neighbour_address(a: &NeighbourAddress) -> Option<Self> {
            match a {
                NeighbourAddress::Inet6(ip) => Some(*ip),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sealed::Spelling as _;
    use super::*;

    #[test]
    fn each_family_reads_only_its_own_addresses() {
        let v4: Ipv4Addr = "10.0.0.5".parse().expect("ip");
        let v6: Ipv6Addr = "2001:db8::5".parse().expect("ip");
        assert_eq!(Ipv4Addr::from_ip(v4.into()), Some(v4));
        assert_eq!(Ipv4Addr::from_ip(v6.into()), None);
        assert_eq!(Ipv6Addr::from_ip(v6.into()), Some(v6));
        assert_eq!(Ipv6Addr::from_ip(v4.into()), None);
        assert_eq!(Ipv4Addr::from_route_address(&v4.route_address()), Some(v4));
        assert_eq!(Ipv4Addr::from_route_address(&v6.route_address()), None);
        assert_eq!(
            Ipv6Addr::from_neighbour_address(&NeighbourAddress::Inet6(v6)),
            Some(v6)
        );
        assert_eq!(
            Ipv6Addr::from_neighbour_address(&NeighbourAddress::Inet(v4)),
            None
        );
    }
}
