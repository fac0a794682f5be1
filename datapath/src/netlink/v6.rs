//! The IPv6 half of [`Netlink`]: routes, policy rules, permanent neighbours and addresses without duplicate address
//! detection, as the IPv6 pod path ([`crate::pod::v6`]) and the egress plugin need them.
//!
//! Kept apart from the IPv4 types ([`crate::RouteSpec`], [`crate::RuleSpec`]) rather than widening them to
//! `IpAddr`: every IPv4 caller (plugin, ipamd's host room, drift repair) keeps its types, and an IPv6 route can
//! never be compared with an IPv4 one by mistake. Same rules as the IPv4 half: adds are idempotent, deletes of
//! something already gone succeed, dumps go through [`Netlink::dump`] (consistent or an error).

use std::net::{IpAddr, Ipv6Addr};

use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::RouteMessageBuilder;

use super::Netlink;
use crate::error::{EEXIST, ENOENT, ESRCH};
use crate::names::MacAddr;
use crate::NetlinkError;

/// An IPv6 route: `dst/prefix_len [via gateway] [dev oif] table T [scope link]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route6Spec {
    pub dst: Ipv6Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv6Addr>,
    pub oif: Option<u32>,
    pub table: u32,
    pub scope_link: bool,
}

impl Route6Spec {
    fn message(&self) -> RouteMessage {
        let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(self.dst, self.prefix_len)
            .table_id(self.table);
        if let Some(gw) = self.gateway {
            b = b.gateway(gw);
        }
        if let Some(oif) = self.oif {
            b = b.output_interface(oif);
        }
        if self.scope_link {
            b = b.scope(RouteScope::Link);
        }
        b.build()
    }

    /// As [`crate::RouteSpec`]'s: protocol (and scope, unless known) act as wildcards.
    fn delete_message(&self) -> RouteMessage {
        let mut m = self.message();
        m.header.protocol = RouteProtocol::Unspec;
        if !self.scope_link {
            m.header.scope = RouteScope::NoWhere;
        }
        m
    }
}

/// An IPv6 policy rule `[from src] [to dst] lookup table priority p`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule6Spec {
    pub priority: u32,
    pub src: Option<(Ipv6Addr, u8)>,
    pub dst: Option<(Ipv6Addr, u8)>,
    pub table: u32,
}

impl Rule6Spec {
    fn message(&self) -> RuleMessage {
        let mut m = RuleMessage::default();
        m.header.family = AddressFamily::Inet6;
        m.header.action = RuleAction::ToTable;
        m.header.table = if self.table <= 255 {
            self.table as u8
        } else {
            252
        };
        m.attributes.push(RuleAttribute::Table(self.table));
        m.attributes.push(RuleAttribute::Priority(self.priority));
        if let Some((ip, len)) = self.src {
            m.header.src_len = len;
            m.attributes.push(RuleAttribute::Source(IpAddr::V6(ip)));
        }
        if let Some((ip, len)) = self.dst {
            m.header.dst_len = len;
            m.attributes
                .push(RuleAttribute::Destination(IpAddr::V6(ip)));
        }
        m
    }

    fn from_message(m: &RuleMessage) -> Option<Rule6Spec> {
        if m.header.family != AddressFamily::Inet6 || m.header.action != RuleAction::ToTable {
            return None;
        }
        let mut spec = Rule6Spec {
            priority: 0,
            src: None,
            dst: None,
            table: u32::from(m.header.table),
        };
        for a in &m.attributes {
            match a {
                RuleAttribute::Priority(p) => spec.priority = *p,
                RuleAttribute::Table(t) => spec.table = *t,
                RuleAttribute::Source(IpAddr::V6(ip)) => spec.src = Some((*ip, m.header.src_len)),
                RuleAttribute::Destination(IpAddr::V6(ip)) => {
                    spec.dst = Some((*ip, m.header.dst_len))
                }
                _ => {}
            }
        }
        Some(spec)
    }
}

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
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = NetlinkError::request(
                    format!("add address {ip}/{prefix_len} nodad to link {index}"),
                    e,
                );
                if err.is_exists() {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
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
        req.message_mut().header.scope = netlink_packet_route::address::AddressScope::Link;
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = NetlinkError::request(
                    format!("add address {ip}/{prefix_len} scope link to link {index}"),
                    e,
                );
                if err.is_exists() {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Adds or replaces an IPv6 route.
    pub async fn replace_route6(&self, route: &Route6Spec) -> Result<(), NetlinkError> {
        self.handle
            .route()
            .add(route.message())
            .replace()
            .execute()
            .await
            .map_err(|e| NetlinkError::request(format!("replace route {route:?}"), e))
    }

    /// Deletes an IPv6 route; already gone is fine.
    pub async fn delete_route6(&self, route: &Route6Spec) -> Result<(), NetlinkError> {
        match self
            .handle
            .route()
            .del(route.delete_message())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = NetlinkError::request(format!("delete route {route:?}"), e);
                if err.is_not_found() {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    /// The IPv6 unicast routes of `table`.
    pub async fn routes6(&self, table: u32) -> Result<Vec<Route6Spec>, NetlinkError> {
        let req = RouteMessageBuilder::<Ipv6Addr>::new().build();
        let msgs = self
            .dump("list ipv6 routes", RouteNetlinkMessage::GetRoute(req))
            .await?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewRoute(m) = m else {
                continue;
            };
            if m.header.address_family != AddressFamily::Inet6 {
                continue;
            }
            let mut spec = Route6Spec {
                dst: Ipv6Addr::UNSPECIFIED,
                prefix_len: m.header.destination_prefix_length,
                gateway: None,
                oif: None,
                table: u32::from(m.header.table),
                scope_link: m.header.scope == RouteScope::Link,
            };
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet6(ip)) => spec.dst = *ip,
                    RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => spec.gateway = Some(*ip),
                    RouteAttribute::Oif(i) => spec.oif = Some(*i),
                    RouteAttribute::Table(t) => spec.table = *t,
                    _ => {}
                }
            }
            if spec.table == table {
                out.push(spec);
            }
        }
        Ok(out)
    }

    /// Adds an IPv6 rule; an identical existing rule is fine.
    pub async fn add_rule6(&self, rule: &Rule6Spec) -> Result<(), NetlinkError> {
        let mut req = self.handle.rule().add();
        *req.message_mut() = rule.message();
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = NetlinkError::request(format!("add rule {rule:?}"), e);
                if err.errno() == Some(EEXIST) {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Deletes every IPv6 rule equal to `rule`; already gone is fine.
    pub async fn delete_rule6(&self, rule: &Rule6Spec) -> Result<(), NetlinkError> {
        for _ in 0..16 {
            if let Err(e) = self.handle.rule().del(rule.message()).execute().await {
                let err = NetlinkError::request(format!("delete rule {rule:?}"), e);
                return match err.errno() {
                    Some(ENOENT | ESRCH) => Ok(()),
                    _ => Err(err),
                };
            }
        }
        Ok(())
    }

    /// All IPv6 `lookup` rules.
    pub async fn rules6(&self) -> Result<Vec<Rule6Spec>, NetlinkError> {
        let mut req = RuleMessage::default();
        req.header.family = AddressFamily::Inet6;
        let msgs = self
            .dump("list ipv6 rules", RouteNetlinkMessage::GetRule(req))
            .await?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(r) => Rule6Spec::from_message(r),
                _ => None,
            })
            .collect())
    }

    /// Adds or replaces a permanent IPv6 neighbour entry `ip lladdr mac` on a link (static ND).
    pub async fn replace_permanent_neighbour6(
        &self,
        index: u32,
        ip: Ipv6Addr,
        mac: MacAddr,
    ) -> Result<(), NetlinkError> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V6(ip))
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                NetlinkError::request(
                    format!("add neighbour {ip} lladdr {mac} on link {index}"),
                    e,
                )
            })
    }

    /// Permanent IPv6 neighbour entries `(link index, ip, mac)`.
    pub async fn permanent_neighbours6(
        &self,
    ) -> Result<Vec<(u32, Ipv6Addr, Option<MacAddr>)>, NetlinkError> {
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Inet6;
        let msgs = self
            .dump(
                "list ipv6 neighbours",
                RouteNetlinkMessage::GetNeighbour(req),
            )
            .await?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewNeighbour(m) = m else {
                continue;
            };
            if m.header.state != NeighbourState::Permanent {
                continue;
            }
            let mut ip = None;
            let mut mac = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => ip = Some(*a),
                    NeighbourAttribute::LinkLayerAddress(b) => mac = MacAddr::from_slice(b),
                    _ => {}
                }
            }
            if let Some(ip) = ip {
                out.push((m.header.ifindex, ip, mac));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_read_back_as_written() {
        let rule = Rule6Spec {
            priority: 512,
            src: None,
            dst: Some(("2001:db8::5".parse().expect("ip"), 128)),
            table: 254,
        };
        assert_eq!(Rule6Spec::from_message(&rule.message()), Some(rule));
    }

    #[test]
    fn an_ipv4_rule_is_not_an_ipv6_rule() {
        let mut m = RuleMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.action = RuleAction::ToTable;
        assert_eq!(Rule6Spec::from_message(&m), None);
    }
}
