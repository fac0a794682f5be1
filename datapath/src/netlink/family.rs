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
}

/// The two families, side by side: `$ip` is the [`IpAddr`] variant, `$af` the name netlink gives the family (in
/// [`AddressFamily`], [`RouteAddress`] and [`NeighbourAddress`] alike).
macro_rules! family {
    ($t:ty, $ip:ident, $af:ident, host_prefix: $len:expr, scope_read_back: $scope:expr, dump_label: $label:expr) => {
        impl IpFamily for $t {
            const UNSPECIFIED: Self = <$t>::UNSPECIFIED;
            const HOST_PREFIX: u8 = $len;
            const SCOPE_READ_BACK: bool = $scope;

            fn from_ip(ip: IpAddr) -> Option<Self> {
                match ip {
                    IpAddr::$ip(ip) => Some(ip),
                    _ => None,
                }
            }
        }

        impl sealed::Spelling for $t {
            const FAMILY: AddressFamily = AddressFamily::$af;
            const DUMP_LABEL: &'static str = $label;

            fn route_address(self) -> RouteAddress {
                RouteAddress::$af(self)
            }
            fn from_route_address(a: &RouteAddress) -> Option<Self> {
                match a {
                    RouteAddress::$af(ip) => Some(*ip),
                    _ => None,
                }
            }
            fn from_neighbour_address(a: &NeighbourAddress) -> Option<Self> {
                match a {
                    NeighbourAddress::$af(ip) => Some(*ip),
                    _ => None,
                }
            }
        }
    };
}

family!(Ipv4Addr, V4, Inet, host_prefix: 32, scope_read_back: true, dump_label: "");
family!(Ipv6Addr, V6, Inet6, host_prefix: 128, scope_read_back: false, dump_label: "ipv6 ");

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
