//! The address operations of [`Netlink`] that only the IPv6 paths need: an address without duplicate address
//! detection ([`crate::pod::v6`]) and an address with scope link (the egress plugin). Routes, rules and
//! neighbours are family-generic and live with the IPv4 ones (see [`super::IpFamily`]).

use std::net::{IpAddr, Ipv6Addr};

use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressScope};

use super::Netlink;
use crate::NetlinkError;

impl Netlink {
    /// Adds `ip/prefix_len` to a link with `IFA_F_NODAD`: usable at once, no tentative phase (the anchor instead
    /// polls up to 10 s for duplicate address detection to end). Already present is fine.
    pub async fn add_address6_nodad(
        &self,
        index: u32,
        ip: Ipv6Addr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let mut req = self.handle.address().add(index, IpAddr::V6(ip), prefix_len);
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        let what = format!("add address {ip}/{prefix_len} nodad to link {index}");
        Self::add_address_request(req, what).await
    }

    /// Adds `ip/prefix_len` with scope link (either family): an address a link answers for that is never picked as
    /// the source of traffic leaving through other links (the egress plugin's gateway on host veths, as the
    /// anchor's). Already present is fine.
    pub async fn add_address_link_scope(
        &self,
        index: u32,
        ip: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let mut req = self.handle.address().add(index, ip, prefix_len);
        req.message_mut().header.scope = AddressScope::Link;
        let what = format!("add address {ip}/{prefix_len} scope link to link {index}");
        Self::add_address_request(req, what).await
    }
}
