//! A netlink handle pinned to one network namespace, with the idempotent operations the CNI needs.
//!
//! Routes, rules and neighbours are written once for both address families: [`RouteSpec<A>`], [`RuleSpec<A>`] and
//! the methods that take or list them are generic over [`IpFamily`] ([`Ipv4Addr`] or [`Ipv6Addr`], the default
//! being IPv4, so `RouteSpec` is an IPv4 route). The IPv6-only address operations (no duplicate address detection,
//! link scope) are in [`v6`].
//!
//! **Dumps are consistent or an error.** Every list (links, addresses, routes, rules, neighbours) is a netlink
//! dump, which the kernel answers in several datagrams. When the table changes between two of them (a pod's ADD
//! running beside GC, CHECK, reconcile or startup), the kernel marks the answer `NLM_F_DUMP_INTR`: it may miss
//! or repeat entries. rtnetlink's request builders drop the header that carries the flag, so dumps go through
//! [`Netlink::dump`], which reads the header of every message, starts over when one is flagged, and gives up
//! with [`NetlinkError::DumpInterrupted`] after [`DUMP_ATTEMPTS`] interrupted answers rather than return a
//! partial table (GC and reconcile delete what a list does not show). netlink-proto does not pass `NLMSG_DONE`
//! on, so an interruption the kernel flags on `NLMSG_DONE` alone is not seen.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::{Stream, StreamExt, TryStreamExt};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourState};
use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol, RouteScope};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use rtnetlink::{AddressAddRequest, Handle, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use crate::error::{EEXIST, ENOENT, ESRCH};
use crate::names::MacAddr;
use crate::netns::{in_netns, in_netns_file};
use crate::NetlinkError;

mod family;
mod v6;
pub use family::IpFamily;

/// An IPv6 route ([`RouteSpec`] in its IPv6 family).
pub type Route6Spec = RouteSpec<Ipv6Addr>;
/// An IPv6 policy rule ([`RuleSpec`] in its IPv6 family).
pub type Rule6Spec = RuleSpec<Ipv6Addr>;

/// What we need to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    pub up: bool,
    /// `IFLA_LINK`: for a veth, the index of its peer (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// The link's kind is `veth` (`IFLA_INFO_KIND`).
    pub is_veth: bool,
}

/// A route: `dst/prefix_len [via gateway] [dev oif] table T [scope link]`, IPv4 unless `A` says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec<A: IpFamily = Ipv4Addr> {
    pub dst: A,
    pub prefix_len: u8,
    pub gateway: Option<A>,
    pub oif: Option<u32>,
    pub table: u32,
    /// `scope link` (as written; IPv6 routes read back without it, see [`IpFamily::SCOPE_READ_BACK`]).
    pub scope_link: bool,
}

impl<A: IpFamily> RouteSpec<A> {
    /// The message for a delete: protocol and scope act as wildcards unless we know them, as `ip route del`
    /// does (the kernel matches routes it added itself, protocol `kernel`, only this way).
    fn delete_message(&self) -> RouteMessage {
        let mut m = self.message();
        m.header.protocol = RouteProtocol::Unspec;
        if !self.scope_link {
            m.header.scope = RouteScope::NoWhere;
        }
        m
    }

    fn message(&self) -> RouteMessage {
        // rtnetlink's builder: the defaults of a new static unicast route, in `A`'s family.
        let mut b = RouteMessageBuilder::<IpAddr>::new();
        let m = b.get_mut();
        m.header.address_family = A::FAMILY;
        m.header.destination_prefix_length = self.prefix_len;
        m.attributes
            .push(RouteAttribute::Destination(self.dst.route_address()));
        let mut b = b.table_id(self.table);
        if let Some(gw) = self.gateway {
            b.get_mut()
                .attributes
                .push(RouteAttribute::Gateway(gw.route_address()));
        }
        if let Some(oif) = self.oif {
            b = b.output_interface(oif);
        }
        if self.scope_link {
            b = b.scope(RouteScope::Link);
        }
        b.build()
    }

    /// The route a dumped message describes, when it is a route of `A`'s family.
    fn from_message(m: &RouteMessage) -> Option<RouteSpec<A>> {
        if m.header.address_family != A::FAMILY {
            return None;
        }
        let mut spec = RouteSpec {
            dst: A::UNSPECIFIED,
            prefix_len: m.header.destination_prefix_length,
            gateway: None,
            oif: None,
            table: u32::from(m.header.table),
            scope_link: m.header.scope == RouteScope::Link,
        };
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(ip) => {
                    spec.dst = A::from_route_address(ip).unwrap_or(A::UNSPECIFIED)
                }
                RouteAttribute::Gateway(ip) => spec.gateway = A::from_route_address(ip),
                RouteAttribute::Oif(i) => spec.oif = Some(*i),
                RouteAttribute::Table(t) => spec.table = *t,
                _ => {}
            }
        }
        Some(spec)
    }
}

/// A policy rule `[from src] [to dst] [fwmark m/mask] lookup table priority p`, IPv4 unless `A` says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec<A: IpFamily = Ipv4Addr> {
    pub priority: u32,
    pub src: Option<(A, u8)>,
    pub dst: Option<(A, u8)>,
    pub fwmark: Option<(u32, u32)>,
    pub table: u32,
}

/// A rule as read back from the kernel.
pub type RuleInfo<A = Ipv4Addr> = RuleSpec<A>;

impl<A: IpFamily> RuleSpec<A> {
    fn message(&self) -> RuleMessage {
        let mut m = RuleMessage::default();
        m.header.family = A::FAMILY;
        m.header.action = RuleAction::ToTable;
        if self.table <= 255 {
            m.header.table = self.table as u8;
        } else {
            m.header.table = 252; // RT_TABLE_COMPAT; the real id is in the attribute
        }
        m.attributes.push(RuleAttribute::Table(self.table));
        m.attributes.push(RuleAttribute::Priority(self.priority));
        if let Some((ip, len)) = self.src {
            m.header.src_len = len;
            m.attributes.push(RuleAttribute::Source(ip.into()));
        }
        if let Some((ip, len)) = self.dst {
            m.header.dst_len = len;
            m.attributes.push(RuleAttribute::Destination(ip.into()));
        }
        if let Some((mark, mask)) = self.fwmark {
            m.attributes.push(RuleAttribute::FwMark(mark));
            m.attributes.push(RuleAttribute::FwMask(mask));
        }
        m
    }

    fn from_message(m: &RuleMessage) -> Option<RuleSpec<A>> {
        if m.header.family != A::FAMILY || m.header.action != RuleAction::ToTable {
            return None;
        }
        let mut spec = RuleSpec {
            priority: 0,
            src: None,
            dst: None,
            fwmark: None,
            table: u32::from(m.header.table),
        };
        let mut mark = None;
        let mut mask = u32::MAX;
        for a in &m.attributes {
            match a {
                RuleAttribute::Priority(p) => spec.priority = *p,
                RuleAttribute::Table(t) => spec.table = *t,
                RuleAttribute::Source(ip) => {
                    spec.src = A::from_ip(*ip).map(|ip| (ip, m.header.src_len))
                }
                RuleAttribute::Destination(ip) => {
                    spec.dst = A::from_ip(*ip).map(|ip| (ip, m.header.dst_len))
                }
                RuleAttribute::FwMark(v) => mark = Some(*v),
                RuleAttribute::FwMask(v) => mask = *v,
                _ => {}
            }
        }
        spec.fwmark = mark.map(|m| (m, mask));
        Some(spec)
    }
}

/// The two ends of a veth pair to create. The peer is created directly in `peer_netns` (never moved), which
/// avoids the rtnl-lock serialisation of moving links between namespaces.
#[derive(Debug)]
pub struct VethSpec<'a> {
    pub name: &'a str,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    pub peer_name: &'a str,
    pub peer_mac: Option<MacAddr>,
    pub peer_netns: Option<&'a File>,
}

/// A netlink socket bound to one network namespace.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a socket in `netns` (a path like `/var/run/netns/x` or `/proc/PID/ns/net`), or in the caller's
    /// namespace when `None`. Must be called inside a tokio runtime: the connection task is spawned on it.
    pub fn connect(netns: Option<&Path>) -> Result<Netlink, NetlinkError> {
        match netns {
            None => Netlink::open(),
            Some(path) => {
                let rt = tokio::runtime::Handle::current();
                in_netns(path, move || {
                    let _guard = rt.enter();
                    Netlink::open()
                })
            }
        }
    }

    /// [`Netlink::connect`] for a namespace held open as a file (for example an anonymous one).
    pub fn connect_file(netns: &File) -> Result<Netlink, NetlinkError> {
        let rt = tokio::runtime::Handle::current();
        in_netns_file(netns, Path::new("(namespace fd)"), move || {
            let _guard = rt.enter();
            Netlink::open()
        })
    }

    /// [`Netlink::connect_file`] without a helper thread: the calling thread enters the namespace just to open
    /// the socket and comes back (see [`crate::netns::in_netns_file_here`] and its caveat).
    pub fn connect_file_here(netns: &File) -> Result<Netlink, NetlinkError> {
        crate::netns::in_netns_file_here(netns, Path::new("(namespace fd)"), Netlink::open)
    }

    /// Opens a socket in the calling thread's namespace and spawns its connection task on the current runtime
    /// (the socket stays in the namespace it was opened in, whichever thread drives it).
    fn open() -> Result<Netlink, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    // === dumps ===

    /// Sends `request` as a dump and collects the answer, starting over when the kernel flags it interrupted
    /// (see the module docs).
    async fn dump(
        &self,
        what: &str,
        request: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        retry_interrupted(what, DUMP_ATTEMPTS, || {
            let mut handle = self.handle.clone();
            let mut msg = NetlinkMessage::from(request.clone());
            msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
            async move {
                let answer = handle
                    .request(msg)
                    .map_err(|e| NetlinkError::request(what, e))?;
                collect_dump(what, answer).await
            }
        })
        .await
    }

    // === links ===

    /// All links of the namespace.
    pub async fn links(&self) -> Result<Vec<LinkInfo>, NetlinkError> {
        let msgs = self
            .dump(
                "list links",
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
            )
            .await?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_info(l)),
                _ => None,
            })
            .collect())
    }

    /// The link called `name`, if any.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        let req = self.handle.link().get().match_name(name.to_string());
        Self::one_link(format!("get link {name}"), req).await
    }

    /// The link with interface index `index`, if any.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, NetlinkError> {
        let req = self.handle.link().get().match_index(index);
        Self::one_link(format!("get link {index}"), req).await
    }

    /// Runs a link query for one link: `None` when the kernel says there is none.
    async fn one_link(
        what: String,
        req: rtnetlink::LinkGetRequest,
    ) -> Result<Option<LinkInfo>, NetlinkError> {
        let res: Result<Vec<LinkMessage>, _> = req.execute().try_collect().await;
        match res {
            Ok(msgs) => Ok(msgs.first().map(link_info)),
            Err(e) => {
                let err = NetlinkError::request(what, e);
                if err.is_not_found() {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// The link with hardware address `mac`, if any (how ipamd finds an ENI's interface).
    pub async fn link_by_mac(&self, mac: MacAddr) -> Result<Option<LinkInfo>, NetlinkError> {
        Ok(self.links().await?.into_iter().find(|l| l.mac == Some(mac)))
    }

    /// Creates a veth pair; see [`VethSpec`].
    pub async fn create_veth(&self, spec: &VethSpec<'_>) -> Result<(), NetlinkError> {
        let mut peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(spec.peer_name.to_string())
            .mtu(spec.mtu);
        if let Some(mac) = spec.peer_mac {
            peer = peer.address(mac.0.to_vec());
        }
        if let Some(ns) = spec.peer_netns {
            peer = peer.setns_by_fd(ns.as_raw_fd());
        }
        let mut b = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(spec.name.to_string())
            .mtu(spec.mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
        if let Some(mac) = spec.mac {
            b = b.address(mac.0.to_vec());
        }
        self.handle
            .link()
            .add(b.build())
            .execute()
            .await
            .map_err(|e| {
                NetlinkError::request(
                    format!("create veth {} (peer {})", spec.name, spec.peer_name),
                    e,
                )
            })
    }

    /// Creates a bridge (used by the simulator's VPC fabric). It gets a fixed random MAC: a bridge without one
    /// takes its lowest port's MAC, and every change of it flushes its neighbour table, permanent entries too.
    pub async fn create_bridge(&self, name: &str, mtu: u32) -> Result<(), NetlinkError> {
        let msg = rtnetlink::LinkBridge::new(name)
            .mtu(mtu)
            .address(crate::random_mac().0.to_vec())
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::request(format!("create bridge {name}"), e))
    }

    /// Enslaves a link to a bridge and brings it up.
    pub async fn set_controller_up(&self, index: u32, bridge: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index)
            .controller(bridge)
            .up()
            .build();
        self.handle.link().set(msg).execute().await.map_err(|e| {
            NetlinkError::request(format!("attach link {index} to bridge {bridge}"), e)
        })
    }

    /// Brings a link up.
    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::request(format!("set link {index} up"), e))
    }

    /// Brings the link called `name` up, without looking up its index first (one request instead of two).
    /// Up already is fine; a missing link is a not-found error.
    pub async fn set_up_by_name(&self, name: &str) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_name(name).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::request(format!("set link {name} up"), e))
    }

    /// Sets a link's MTU.
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::request(format!("set mtu {mtu} on link {index}"), e))
    }

    /// Deletes a link by name. Returns false when it was already gone.
    pub async fn delete_link_by_name(&self, name: &str) -> Result<bool, NetlinkError> {
        let Some(link) = self.link_by_name(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let err = NetlinkError::request(format!("delete link {name}"), e);
                if err.is_not_found() {
                    Ok(false)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Deletes the link with index `index` (exactly that link: indexes are not reused soon, so a link created
    /// later under the same name is never hit). Returns false when it was already gone.
    pub async fn delete_link_by_index(&self, index: u32) -> Result<bool, NetlinkError> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let err = NetlinkError::request(format!("delete link {index}"), e);
                if err.is_not_found() {
                    Ok(false)
                } else {
                    Err(err)
                }
            }
        }
    }

    // === addresses ===

    /// Adds `ip/prefix_len` to a link; already present is fine.
    pub async fn add_address(
        &self,
        index: u32,
        ip: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let req = self.handle.address().add(index, ip, prefix_len);
        Self::add_address_request(
            req,
            format!("add address {ip}/{prefix_len} to link {index}"),
        )
        .await
    }

    /// Runs an address add (`what` names it in errors); already present is fine.
    async fn add_address_request(req: AddressAddRequest, what: String) -> Result<(), NetlinkError> {
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = NetlinkError::request(what, e);
                if err.is_exists() {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    /// The addresses on a link.
    pub async fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8)>, NetlinkError> {
        let msgs = self
            .dump(
                &format!("list addresses of link {index}"),
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            )
            .await?;
        let mut out = Vec::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(m) = m else {
                continue;
            };
            if m.header.index != index {
                continue;
            }
            for a in &m.attributes {
                if let AddressAttribute::Address(ip) = a {
                    out.push((*ip, m.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    // === routes ===

    /// Adds or replaces a route.
    pub async fn replace_route<A: IpFamily>(
        &self,
        route: &RouteSpec<A>,
    ) -> Result<(), NetlinkError> {
        self.handle
            .route()
            .add(route.message())
            .replace()
            .execute()
            .await
            .map_err(|e| NetlinkError::request(format!("replace route {route:?}"), e))
    }

    /// Deletes a route; already gone is fine.
    pub async fn delete_route<A: IpFamily>(
        &self,
        route: &RouteSpec<A>,
    ) -> Result<(), NetlinkError> {
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

    /// The unicast routes of `table` in `A`'s family.
    pub async fn routes<A: IpFamily>(&self, table: u32) -> Result<Vec<RouteSpec<A>>, NetlinkError> {
        let mut req = RouteMessageBuilder::<IpAddr>::new().build();
        req.header.address_family = A::FAMILY;
        let msgs = self
            .dump(
                &format!("list {}routes", A::DUMP_LABEL),
                RouteNetlinkMessage::GetRoute(req),
            )
            .await?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => RouteSpec::from_message(r),
                _ => None,
            })
            .filter(|r| r.table == table)
            .collect())
    }

    // === rules ===

    /// Adds a rule; an identical existing rule is fine.
    pub async fn add_rule<A: IpFamily>(&self, rule: &RuleSpec<A>) -> Result<(), NetlinkError> {
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

    /// Deletes every rule equal to `rule` (the kernel deletes one per request). Already gone is fine.
    pub async fn delete_rule<A: IpFamily>(&self, rule: &RuleSpec<A>) -> Result<(), NetlinkError> {
        // Bounded: a rule can only have been added a handful of times.
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

    /// All `lookup` rules of `A`'s family.
    pub async fn rules<A: IpFamily>(&self) -> Result<Vec<RuleInfo<A>>, NetlinkError> {
        let mut req = RuleMessage::default();
        req.header.family = A::FAMILY;
        req.header.action = RuleAction::Unspec;
        let msgs = self
            .dump(
                &format!("list {}rules", A::DUMP_LABEL),
                RouteNetlinkMessage::GetRule(req),
            )
            .await?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(r) => RuleSpec::from_message(r),
                _ => None,
            })
            .collect())
    }

    // === neighbours ===

    /// Adds or replaces a permanent neighbour entry `ip lladdr mac` on a link (static ARP or ND).
    pub async fn replace_permanent_neighbour<A: IpFamily>(
        &self,
        index: u32,
        ip: A,
        mac: MacAddr,
    ) -> Result<(), NetlinkError> {
        self.handle
            .neighbours()
            .add(index, ip.into())
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

    /// Deletes the neighbour entry for `ip` on a link; already gone is fine.
    pub async fn delete_neighbour<A: IpFamily>(
        &self,
        index: u32,
        ip: A,
    ) -> Result<(), NetlinkError> {
        let mut req = self.handle.neighbours().add(index, ip.into());
        let msg = req.message_mut().clone();
        match self.handle.neighbours().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let err =
                    NetlinkError::request(format!("delete neighbour {ip} on link {index}"), e);
                if err.is_not_found() {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Permanent neighbour entries `(link index, ip, mac)` of `A`'s family.
    pub async fn permanent_neighbours<A: IpFamily>(
        &self,
    ) -> Result<Vec<(u32, A, Option<MacAddr>)>, NetlinkError> {
        let mut req = NeighbourMessage::default();
        req.header.family = A::FAMILY;
        let msgs = self
            .dump(
                &format!("list {}neighbours", A::DUMP_LABEL),
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
                    NeighbourAttribute::Destination(a) => ip = A::from_neighbour_address(a),
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

/// How many interrupted answers one dump may get before it fails.
pub const DUMP_ATTEMPTS: u32 = 5;

/// One answer to a dump: its messages, and whether any of them carried `NLM_F_DUMP_INTR`.
#[derive(Debug)]
struct DumpAnswer {
    messages: Vec<RouteNetlinkMessage>,
    interrupted: bool,
}

/// Reads one dump answer; an error message ends it with that error.
async fn collect_dump(
    what: &str,
    answer: impl Stream<Item = NetlinkMessage<RouteNetlinkMessage>>,
) -> Result<DumpAnswer, NetlinkError> {
    let mut answer = std::pin::pin!(answer);
    let mut out = DumpAnswer {
        messages: Vec::new(),
        interrupted: false,
    };
    while let Some(msg) = answer.next().await {
        out.interrupted |= msg.header.flags & NLM_F_DUMP_INTR != 0;
        match msg.payload {
            NetlinkPayload::InnerMessage(m) => out.messages.push(m),
            NetlinkPayload::Error(e) if e.code.is_some() => {
                return Err(NetlinkError::request(
                    what,
                    rtnetlink::Error::NetlinkError(e),
                ))
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Runs `attempt` until an answer is not interrupted, at most `attempts` times.
async fn retry_interrupted<F, Fut>(
    what: &str,
    attempts: u32,
    mut attempt: F,
) -> Result<Vec<RouteNetlinkMessage>, NetlinkError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<DumpAnswer, NetlinkError>>,
{
    for n in 1..=attempts {
        let answer = attempt().await?;
        if !answer.interrupted {
            return Ok(answer.messages);
        }
        tracing::debug!(what, attempt = n, "netlink dump interrupted; starting over");
    }
    Err(NetlinkError::DumpInterrupted {
        op: what.to_string(),
        attempts,
    })
}

fn link_info(m: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        peer_index: None,
        is_veth: false,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::LinkInfo(infos) => {
                info.is_veth = infos.iter().any(|i| {
                    matches!(
                        i,
                        netlink_packet_route::link::LinkInfo::Kind(InfoKind::Veth)
                    )
                })
            }
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::Address(b) => info.mac = MacAddr::from_slice(b),
            LinkAttribute::Mtu(v) => info.mtu = *v,
            LinkAttribute::Link(i) => info.peer_index = Some(*i),
            _ => {}
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::MAIN_TABLE;

    fn link(index: u32, flags: u16) -> NetlinkMessage<RouteNetlinkMessage> {
        let mut l = LinkMessage::default();
        l.header.index = index;
        let mut m = NetlinkMessage::from(RouteNetlinkMessage::NewLink(l));
        m.header.flags = flags;
        m
    }

    fn indexes(msgs: &[RouteNetlinkMessage]) -> Vec<u32> {
        msgs.iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_dump_flagged_interrupted_is_asked_again_until_it_is_consistent() {
        let tries = Cell::new(0u32);
        let got = retry_interrupted("list links", DUMP_ATTEMPTS, || {
            tries.set(tries.get() + 1);
            // The first two answers see a table changing under them (index 2 missing, then repeated).
            let answer = match tries.get() {
                1 => vec![link(1, 0), link(3, NLM_F_DUMP_INTR)],
                2 => vec![link(1, 0), link(2, 0), link(2, NLM_F_DUMP_INTR)],
                _ => vec![link(1, 0), link(2, 0), link(3, 0)],
            };
            collect_dump("list links", futures::stream::iter(answer))
        })
        .await
        .expect("third answer is consistent");
        assert_eq!(tries.get(), 3);
        assert_eq!(indexes(&got), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_dump_interrupted_every_time_fails_after_the_bound() {
        let tries = Cell::new(0u32);
        let err = retry_interrupted("list routes", 3, || {
            tries.set(tries.get() + 1);
            collect_dump(
                "list routes",
                futures::stream::iter(vec![link(1, NLM_F_DUMP_INTR)]),
            )
        })
        .await
        .expect_err("never consistent");
        assert_eq!(tries.get(), 3);
        assert!(
            matches!(&err, NetlinkError::DumpInterrupted { attempts: 3, op } if op == "list routes"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_error_in_a_dump_is_the_dumps_error() {
        let mut e = rtnetlink::packet_core::ErrorMessage::default();
        e.code = std::num::NonZeroI32::new(-1);
        let answer = vec![
            link(1, 0),
            NetlinkMessage::new(
                rtnetlink::packet_core::NetlinkHeader::default(),
                NetlinkPayload::Error(e),
            ),
        ];
        let err = collect_dump("list links", futures::stream::iter(answer))
            .await
            .expect_err("error");
        assert_eq!(err.errno(), Some(1));
    }

    /// Through the kernel: a dump in a fresh namespace answers the loopback link (needs root).
    #[tokio::test]
    async fn dumps_still_answer_through_the_kernel() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to create a network namespace");
            return;
        }
        let ns = crate::new_anonymous_netns().expect("netns");
        let nl = Netlink::connect_file(&ns).expect("netlink");
        let links = nl.links().await.expect("links");
        assert!(links.iter().any(|l| l.name == "lo"), "{links:?}");
        assert!(nl
            .rules::<Ipv4Addr>()
            .await
            .expect("rules")
            .iter()
            .any(|r| r.table == MAIN_TABLE));
        let lo = nl.link_by_name("lo").await.expect("lo").expect("lo");
        nl.set_up(lo.index).await.expect("up");
        let addrs = nl.addresses(lo.index).await.expect("addresses");
        assert!(
            addrs.contains(&(IpAddr::V4(Ipv4Addr::LOCALHOST), 8)),
            "{addrs:?}"
        );
        nl.routes::<Ipv4Addr>(MAIN_TABLE).await.expect("routes");
        nl.routes::<Ipv6Addr>(MAIN_TABLE)
            .await
            .expect("ipv6 routes");
        nl.permanent_neighbours::<Ipv4Addr>()
            .await
            .expect("neighbours");
        nl.permanent_neighbours::<Ipv6Addr>()
            .await
            .expect("ipv6 neighbours");
    }

    #[test]
    fn rules_of_either_family_read_back_as_written() {
        let v4 = RuleSpec::<Ipv4Addr> {
            priority: 1536,
            src: Some(("10.0.0.5".parse().expect("ip"), 32)),
            dst: None,
            fwmark: Some((0x80, 0x80)),
            table: 1000,
        };
        assert_eq!(RuleSpec::from_message(&v4.message()), Some(v4.clone()));
        let v6 = Rule6Spec {
            priority: 512,
            src: None,
            dst: Some(("2001:db8::5".parse().expect("ip"), 128)),
            fwmark: None,
            table: 254,
        };
        assert_eq!(Rule6Spec::from_message(&v6.message()), Some(v6.clone()));
        // A rule of one family is not a rule of the other.
        assert_eq!(Rule6Spec::from_message(&v4.message()), None);
        assert_eq!(RuleSpec::<Ipv4Addr>::from_message(&v6.message()), None);
    }

    #[test]
    fn routes_of_either_family_read_back_as_written() {
        let v4 = RouteSpec::<Ipv4Addr> {
            dst: "10.0.0.0".parse().expect("ip"),
            prefix_len: 24,
            gateway: Some("10.0.0.1".parse().expect("ip")),
            oif: Some(3),
            table: 1000,
            scope_link: false,
        };
        assert_eq!(RouteSpec::from_message(&v4.message()), Some(v4.clone()));
        let v6 = Route6Spec {
            dst: Ipv6Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: Some("fe80::1".parse().expect("ip")),
            oif: Some(2),
            table: MAIN_TABLE,
            scope_link: false,
        };
        assert_eq!(Route6Spec::from_message(&v6.message()), Some(v6.clone()));
        assert_eq!(Route6Spec::from_message(&v4.message()), None);
        assert_eq!(RouteSpec::<Ipv4Addr>::from_message(&v6.message()), None);
        // A delete leaves protocol, and scope unless it is link, to the kernel to match.
        let del = v4.delete_message();
        assert_eq!(del.header.protocol, RouteProtocol::Unspec);
        assert_eq!(del.header.scope, RouteScope::NoWhere);
    }
}
