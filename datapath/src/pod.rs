//! A pod's network, as the anchor builds it (veth pair, /32, routes, rules 512 and 1536), set up and torn down.
//!
//! ```text
//!  pod netns                                  host (node) netns
//!  eth0  <podIP>/32                           eniXXXXXXXXXXX (random local MAC, no address)
//!   169.254.1.1/32 dev eth0 scope link         <podIP>/32 dev eniXXX scope link      (main)
//!   default via 169.254.1.1 dev eth0           rule 512:  to <podIP> lookup main
//!   neigh 169.254.1.1 lladdr <host MAC> PERM   rule 1536: from <podIP> lookup <ENI table>  (secondary ENIs)
//! ```
//!
//! The veth is created from the host namespace with its peer placed directly in the pod namespace, so no link is
//! ever moved between namespaces (moves serialise on the rtnl lock and made concurrent ADDs slow in the anchor).
//! The pod answers ARP for nothing: its only neighbour is the static gateway entry, and the host routes to it by
//! /32, so no proxy ARP and no address on the host side are needed.
//!
//! Teardown never stops at the first failure: it attempts every step and returns every error, so a DEL or GC
//! leaves as little behind as the kernel allows and reports exactly what it could not remove.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;

pub mod v6;

use crate::netlink::VethSpec;
use crate::{
    random_mac, IpFamily, LinkInfo, MacAddr, Netlink, NetlinkError, RouteSpec, RuleSpec,
    FROM_POD_RULE_PRIORITY, MAIN_TABLE, TO_POD_RULE_PRIORITY,
};

/// The pod-side gateway for the first interface (the anchor's value).
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// What to build for one pod interface.
#[derive(Debug, Clone)]
pub struct PodNetwork<'a> {
    /// Host-side veth name (see [`crate::host_veth_name`]).
    pub host_veth: &'a str,
    /// Interface name inside the pod (CNI_IFNAME).
    pub container_ifname: &'a str,
    /// The pod's VPC address.
    pub ip: Ipv4Addr,
    /// Route table of the ENI that owns `ip` ([`MAIN_TABLE`] for the primary ENI).
    pub table: u32,
    /// MTU of both veth ends.
    pub mtu: u32,
}

/// What [`setup`] built, for the CNI result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLinks {
    pub host_mac: MacAddr,
    pub container_mac: Option<MacAddr>,
    pub container_index: u32,
}

/// The host rules that belong to a pod IP: `to ip lookup main` (512) and, for secondary ENIs,
/// `from ip lookup table` (1536), each for the address alone (`/32`, `/128`).
pub fn pod_rules<A: IpFamily>(ip: A, table: u32) -> Vec<RuleSpec<A>> {
    let mut rules = vec![RuleSpec {
        priority: TO_POD_RULE_PRIORITY,
        src: None,
        dst: Some((ip, A::HOST_PREFIX)),
        fwmark: None,
        table: MAIN_TABLE,
    }];
    if table != MAIN_TABLE {
        rules.push(RuleSpec {
            priority: FROM_POD_RULE_PRIORITY,
            src: Some((ip, A::HOST_PREFIX)),
            dst: None,
            fwmark: None,
            table,
        });
    }
    rules
}

/// The host route to a pod: `ip/32` (`/128`) `dev <host veth> scope link` in main.
pub fn host_route<A: IpFamily>(ip: A, host_veth_index: Option<u32>) -> RouteSpec<A> {
    RouteSpec {
        dst: ip,
        prefix_len: A::HOST_PREFIX,
        gateway: None,
        oif: host_veth_index,
        table: MAIN_TABLE,
        scope_link: true,
    }
}

/// A pod's veth pair, built before its address is known: the first phase of [`setup`] (and of
/// [`v6::setup6`]), which the plugin runs while ipamd is still choosing the address, then finishes with
/// [`finish`] (IPv4) or [`v6::finish6`] (IPv6) once it has one, or removes with [`PodVeth::discard`] when the ADD
/// fails before that.
///
/// What it holds: the host end, down, with its IPv6 settings written and a random MAC; the pod end (named
/// `CNI_IFNAME`, down, created directly in the pod namespace); `lo` in the pod up; a netlink socket in the pod
/// namespace. Nothing in it depends on the address or the family, so neither phase repeats the other's work.
#[derive(Debug)]
pub struct PodVeth {
    /// The pod namespace, held open.
    pub netns: File,
    /// A netlink socket in the pod namespace.
    pub pod: Netlink,
    /// The host end as created (name, index).
    pub host: LinkInfo,
    /// The host end's MAC (the pod's gateway neighbour entry names it).
    pub host_mac: MacAddr,
    /// The pod end as created (index, MAC).
    pub eth: LinkInfo,
}

impl PodVeth {
    /// Deletes the pair (by the host end's index, so a newer link of the same name is never hit), for an ADD
    /// that fails before [`finish`]. Deleting either end removes both.
    pub async fn discard(&self, host: &Netlink) -> Result<(), NetlinkError> {
        host.delete_link_by_index(self.host.index).await.map(|_| ())
    }
}

/// Phase one of a pod's network: the veth pair and `lo` (see [`PodVeth`]). On error the caller runs
/// [`teardown`] (or [`v6::teardown6`]), which is safe on a partial setup.
///
/// The socket in the pod namespace is opened by the calling thread, which enters the namespace for that moment
/// ([`Netlink::connect_file_here`]): this runs once per pod in the plugin's one short process, where a helper
/// thread's start and end cost more than the socket. Not for a daemon's worker threads.
pub async fn create_pod_veth(
    host: &Netlink,
    netns_path: &Path,
    host_veth: &str,
    container_ifname: &str,
    mtu: u32,
) -> Result<PodVeth, NetlinkError> {
    let netns = File::open(netns_path).map_err(|source| NetlinkError::NetnsOpen {
        path: netns_path.to_owned(),
        source,
    })?;
    let pod = Netlink::connect_file_here(&netns)?;

    // A host veth of the same name is a leftover of an earlier sandbox of the same pod (a crash, or a DEL whose
    // veth ipamd's reaper has not deleted yet): delete it (by the index found under that name) and build anew.
    // Racing the reaper is harmless: whichever deletes the old link first wins, the other finds it gone, and the
    // reaper deletes only the old link's index, never the new link that reuses its name.
    host.delete_link_by_name(host_veth).await?;

    let host_mac = random_mac();
    host.create_veth(&VethSpec {
        name: host_veth,
        mac: Some(host_mac),
        mtu,
        peer_name: container_ifname,
        peer_mac: None,
        peer_netns: Some(&netns),
    })
    .await?;

    // The three requests are independent: sent at once, answered in order.
    let (eth, lo, veth) = futures::join!(
        pod.link_by_name(container_ifname),
        pod.set_up_by_name("lo"),
        host.link_by_name(host_veth),
    );
    let found = (|| {
        let eth = eth?.ok_or_else(|| NetlinkError::LinkNotFound(container_ifname.to_string()))?;
        let veth = veth?.ok_or_else(|| NetlinkError::LinkNotFound(host_veth.to_string()))?;
        // A namespace without `lo` (none that a runtime makes) is no reason to fail.
        match lo {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok((eth, veth)),
        }
    })();
    let (eth, veth) = match found {
        Ok(f) => f,
        Err(e) => {
            // Leave nothing of this call behind: the pair just created goes (with either end).
            let _ = host.delete_link_by_name(host_veth).await;
            return Err(e);
        }
    };
    host_veth_sysctls(host_veth);
    Ok(PodVeth {
        netns,
        pod,
        host: veth,
        host_mac,
        eth,
    })
}

/// Phase two of an IPv4 pod's network, once its address is known: the pod end up with its /32, the gateway
/// route, the default route and the static gateway neighbour; the host end up with the /32 route and the rules.
/// Each side's requests are sent at once (the kernel answers them in order). On error the caller runs
/// [`teardown`].
pub async fn finish(
    host: &Netlink,
    veth: &PodVeth,
    spec: &PodNetwork<'_>,
) -> Result<PodLinks, NetlinkError> {
    let address = veth.pod.add_address(veth.eth.index, spec.ip.into(), 32);
    let route = host_route(spec.ip, Some(veth.host.index));
    program(
        host,
        veth,
        address,
        POD_GATEWAY,
        route,
        pod_rules(spec.ip, spec.table),
    )
    .await
}

/// What phase two does the same way in both families once the pod's address request is made: on the pod side
/// the interface up, `address`, the gateway's host route, the default route via `gateway` and the gateway's
/// permanent neighbour (the host end's MAC); on the host side the veth up, the pod's host `route` and its
/// `rules`. Each side's requests are sent at once (the kernel answers them in order).
pub(crate) async fn program<A: crate::IpFamily>(
    host: &Netlink,
    veth: &PodVeth,
    address: impl std::future::Future<Output = Result<(), NetlinkError>>,
    gateway: A,
    route: RouteSpec<A>,
    rules: Vec<RuleSpec<A>>,
) -> Result<PodLinks, NetlinkError> {
    let pod = &veth.pod;
    let eth = veth.eth.index;
    let gw_route = RouteSpec {
        dst: gateway,
        prefix_len: A::HOST_PREFIX,
        gateway: None,
        oif: Some(eth),
        table: MAIN_TABLE,
        scope_link: true,
    };
    let default_route = RouteSpec {
        dst: A::UNSPECIFIED,
        prefix_len: 0,
        gateway: Some(gateway),
        oif: Some(eth),
        table: MAIN_TABLE,
        scope_link: false,
    };
    let pod_side = async {
        futures::try_join!(
            pod.set_up(eth),
            address,
            pod.replace_route(&gw_route),
            pod.replace_route(&default_route),
            pod.replace_permanent_neighbour(eth, gateway, veth.host_mac),
        )
        .map(|_| ())
    };
    let host_side = async {
        futures::try_join!(
            host.set_up(veth.host.index),
            host.replace_route(&route),
            futures::future::try_join_all(rules.iter().map(|r| host.add_rule(r))),
        )
        .map(|_| ())
    };
    futures::try_join!(pod_side, host_side)?;
    Ok(PodLinks {
        host_mac: veth.host_mac,
        container_mac: veth.eth.mac,
        container_index: eth,
    })
}

/// Builds the pod's network ([`create_pod_veth`], then [`finish`]). On error the caller is expected to run
/// [`teardown`] (which is safe on a partial setup).
pub async fn setup(
    host: &Netlink,
    netns_path: &Path,
    spec: &PodNetwork<'_>,
) -> Result<PodLinks, NetlinkError> {
    let veth = create_pod_veth(
        host,
        netns_path,
        spec.host_veth,
        spec.container_ifname,
        spec.mtu,
    )
    .await?;
    finish(host, &veth, spec).await
}

/// IPv6 settings of the host veth, applied before it goes up (as the anchor): no router advertisements, accept
/// redirects, no forwarding; each written only where the veth's inherited value differs ([`crate::sysctl`]).
/// Best effort: a kernel without IPv6 has no such files, and nothing IPv4 depends on them.
fn host_veth_sysctls(name: &str) {
    for (key, value) in [
        ("accept_ra", "0"),
        ("accept_redirects", "1"),
        ("forwarding", "0"),
    ] {
        if let Err(e) = crate::sysctl::ensure(&crate::sysctl::ipv6_conf(name, key), value) {
            tracing::debug!(error = %e, "ipv6 sysctl not applied");
        }
    }
}

/// What to remove for a pod, of the family of `A` (`PodTeardown` for IPv4, [`v6::PodTeardown6`] for IPv6).
/// Every field is optional because DEL often knows little (containerd's second DEL has neither netns nor
/// prevResult).
#[derive(Debug, Clone)]
pub struct PodTeardown<'a, A: IpFamily = Ipv4Addr> {
    pub host_veth: Option<&'a str>,
    pub netns_path: Option<&'a Path>,
    pub container_ifname: Option<&'a str>,
    pub ip: Option<A>,
}

// By hand: a derived `Default` would ask for `A: Default`, which the address types are not.
impl<A: IpFamily> Default for PodTeardown<'_, A> {
    fn default() -> Self {
        PodTeardown {
            host_veth: None,
            netns_path: None,
            container_ifname: None,
            ip: None,
        }
    }
}

/// Removes everything [`setup`] made for an IPv4 pod ([`teardown_family`]).
pub async fn teardown(host: &Netlink, what: &PodTeardown<'_>) -> Vec<NetlinkError> {
    teardown_family(host, what).await
}

/// Removes everything [`setup`] or [`v6::setup6`] made for a pod: host rules (512/1536, whatever their table),
/// the host route to the address, the veth pair. Attempts every step and returns every failure (empty = clean).
/// Missing objects are not errors.
pub async fn teardown_family<A: IpFamily>(
    host: &Netlink,
    what: &PodTeardown<'_, A>,
) -> Vec<NetlinkError> {
    let mut errors = Vec::new();

    if let Some(ip) = what.ip {
        delete_pod_rules(host, ip, &mut errors).await;
        if let Err(e) = host.delete_route(&host_route(ip, None)).await {
            errors.push(e);
        }
    }

    // Deleting either end of a veth removes the pair. Prefer the pod end when the netns is still there, since
    // that works even when we cannot compute the host name.
    if let (Some(path), Some(ifname)) = (what.netns_path, what.container_ifname) {
        if path.exists() {
            match Netlink::connect(Some(path)) {
                Ok(pod) => {
                    if let Err(e) = pod.delete_link_by_name(ifname).await {
                        errors.push(e);
                    }
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => errors.push(e),
            }
        }
    }
    if let Some(name) = what.host_veth {
        if let Err(e) = host.delete_link_by_name(name).await {
            errors.push(e);
        }
    }
    errors
}

/// The pod end for a DEL that handed the deletion of the host veth `host` (as looked up in the host namespace)
/// to someone else, ipamd's reaper: deleting either end removes the pair, so the interface `ifname` in the pod's
/// namespace is left alone when it is `host`'s peer (each end names the other's index). Anything else of that
/// name (an interface of another pair) is deleted, as [`teardown`] would. A missing namespace or interface is not
/// an error. Returns every failure.
pub async fn teardown_pod_end_except_peer(
    netns_path: Option<&Path>,
    ifname: Option<&str>,
    host: &LinkInfo,
) -> Vec<NetlinkError> {
    let end = match find_pod_end(netns_path, ifname).await {
        Ok(Some(end)) => end,
        Ok(None) => return Vec::new(),
        Err(e) => return vec![e],
    };
    if is_peer_of(&end.link, host) {
        return Vec::new();
    }
    match end.netns.delete_link_by_index(end.link.index).await {
        Ok(_) => Vec::new(),
        Err(e) => vec![e],
    }
}

/// A pod's end of its veth pair as a DEL finds it: the interface `CNI_IFNAME` in `CNI_NETNS`, and a socket in
/// that namespace.
#[derive(Debug, Clone)]
pub struct PodEnd {
    pub netns: Netlink,
    pub link: LinkInfo,
}

/// Looks up the interface `ifname` in the namespace at `netns_path`. `None` when either is not given or gone.
pub async fn find_pod_end(
    netns_path: Option<&Path>,
    ifname: Option<&str>,
) -> Result<Option<PodEnd>, NetlinkError> {
    let (Some(path), Some(ifname)) = (netns_path, ifname) else {
        return Ok(None);
    };
    if !path.exists() {
        return Ok(None);
    }
    let netns = match Netlink::connect(Some(path)) {
        Ok(n) => n,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(netns
        .link_by_name(ifname)
        .await?
        .map(|link| PodEnd { netns, link }))
}

/// What a DEL may remove, each item still to be tied to the container by the kernel's state before it goes
/// (`OwnedTeardown` for IPv4, [`v6::OwnedTeardown6`] for IPv6).
#[derive(Debug, Clone)]
pub struct OwnedTeardown<'a, A: IpFamily = Ipv4Addr> {
    /// The pod's address: ipamd's answer (or, with ipamd unreachable, prevResult's).
    pub ip: Option<A>,
    /// The host veth found under the pod's veth name (already checked to be a veth of that name pattern).
    pub host_veth: Option<&'a LinkInfo>,
    /// The interface `CNI_IFNAME` in `CNI_NETNS`.
    pub pod_end: Option<&'a PodEnd>,
    /// ipamd's reaper deletes `host_veth` (so its peer is left alone too).
    pub veth_deferred: bool,
}

// By hand, as for [`PodTeardown`].
impl<A: IpFamily> Default for OwnedTeardown<'_, A> {
    fn default() -> Self {
        OwnedTeardown {
            ip: None,
            host_veth: None,
            pod_end: None,
            veth_deferred: false,
        }
    }
}

/// [`teardown_owned_family`] for an IPv4 address.
pub async fn teardown_owned(host: &Netlink, what: &OwnedTeardown<'_>) -> Vec<NetlinkError> {
    teardown_owned_family(host, what).await
}

/// Removes what can be tied to one container, and nothing else:
///
/// - the host veth, when it is the peer of the pod end in the container's namespace, or when the host route to
///   `ip` goes through it;
/// - the route to `ip`, only through that veth (with its interface index), so a route that now leads to another
///   pod's veth (the address was handed to a new pod meanwhile) stays;
/// - the rules 512/1536 of `ip`, only when no route to `ip` is left afterwards (a new holder of the address
///   builds its route before its rules, so a route to another link means the rules are that pod's);
/// - the pod end, when it carries `ip` or is the peer of the tied host veth.
///
/// Attempts every step, returns every failure; missing objects are not errors.
pub async fn teardown_owned_family<A: IpFamily>(
    host: &Netlink,
    what: &OwnedTeardown<'_, A>,
) -> Vec<NetlinkError> {
    let mut errors = Vec::new();
    // The two first questions go to different sockets (the host's, the pod's) and are asked at once; two dumps
    // are never in flight on one socket (the kernel refuses a second with EBUSY).
    let pod_addresses = async {
        match (what.ip, what.pod_end) {
            (Some(_), Some(p)) => Some(p.netns.addresses(p.link.index).await),
            _ => None,
        }
    };
    let route_found = async {
        match what.ip {
            Some(ip) => Some(route_to(host, ip).await),
            None => None,
        }
    };
    let (route_found, pod_addresses) = futures::join!(route_found, pod_addresses);
    let host_route_oif = match route_found {
        Some(found) => match found {
            Ok(r) => r,
            Err(e) => {
                // Without the route we cannot tell whose the rules are: leave them, report it.
                errors.push(e);
                return errors;
            }
        },
        None => None,
    };
    let peer_tied = match (what.host_veth, what.pod_end) {
        (Some(h), Some(p)) => is_peer_of(&p.link, h),
        _ => false,
    };
    let tied = what.host_veth.filter(|h| {
        peer_tied || (host_route_oif.is_some() && host_route_oif == Some(Some(h.index)))
    });

    if let Some(ip) = what.ip {
        let route_is_ours = match host_route_oif {
            None => false,
            Some(oif) => tied.is_some_and(|h| oif == Some(h.index)),
        };
        if route_is_ours {
            if let Some(h) = tied {
                if let Err(e) = host.delete_route(&host_route(ip, Some(h.index))).await {
                    errors.push(e);
                }
            }
        }
        match route_to(host, ip).await {
            // Nothing routes to the address any more: its rules are ours (or stale), remove them.
            Ok(None) => {
                delete_pod_rules(host, ip, &mut errors).await;
                // A new holder of the address may have built its route (and then its rules) between the check
                // and the deletion: give it back its `to` rule, which is the same for every pod. (Its `from` rule
                // names its ENI's table, which only its own ADD knows; that window is one netlink round trip,
                // and needs a reuse cooldown of 0.)
                match route_to(host, ip).await {
                    Ok(Some(_)) => {
                        if let Err(e) = host.add_rule(&pod_rules(ip, MAIN_TABLE)[0]).await {
                            errors.push(e);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => errors.push(e),
                }
            }
            Ok(Some(oif)) => tracing::info!(
                %ip, ?oif,
                "the host route to this address leads to another link: its rules and route are left alone"
            ),
            Err(e) => errors.push(e),
        }
    }

    let mut pair_gone = false;
    if let Some(p) = what.pod_end {
        let carries_ip = match (what.ip, pod_addresses) {
            (Some(ip), Some(found)) => match found {
                Ok(addrs) => addrs
                    .iter()
                    .any(|(a, len)| *a == ip.into() && *len == A::HOST_PREFIX),
                Err(e) => {
                    errors.push(e);
                    false
                }
            },
            _ => false,
        };
        let reaped_with_host = what.veth_deferred && peer_tied;
        if (carries_ip || peer_tied) && !reaped_with_host {
            match p.netns.delete_link_by_index(p.link.index).await {
                // Deleting either end removes the pair.
                Ok(_) if peer_tied => pair_gone = true,
                Ok(_) => {}
                Err(e) => errors.push(e),
            }
        }
    }
    if let Some(h) = tied {
        if !what.veth_deferred && !pair_gone {
            if let Err(e) = host.delete_link_by_index(h.index).await {
                errors.push(e);
            }
        }
    }
    errors
}

/// Deletes the 512/1536 rules of `ip`, adding every failure to `errors`.
async fn delete_pod_rules<A: IpFamily>(host: &Netlink, ip: A, errors: &mut Vec<NetlinkError>) {
    match host.rules::<A>().await {
        Ok(rules) => {
            for rule in rules.iter().filter(|r| is_pod_rule(r, ip)) {
                if let Err(e) = host.delete_rule(rule).await {
                    errors.push(e);
                }
            }
        }
        Err(e) => errors.push(e),
    }
}

/// The output interface of the main table's `/32` (`/128`) route to `ip`: `None` when there is none,
/// `Some(None)` for a route without one.
async fn route_to<A: IpFamily>(host: &Netlink, ip: A) -> Result<Option<Option<u32>>, NetlinkError> {
    Ok(host
        .routes::<A>(MAIN_TABLE)
        .await?
        .into_iter()
        .find(|r| r.dst == ip && r.prefix_len == A::HOST_PREFIX)
        .map(|r| r.oif))
}

/// True when `a` and `b` are the two ends of one veth pair (in their own namespaces).
pub fn is_peer_of(a: &LinkInfo, b: &LinkInfo) -> bool {
    a.peer_index == Some(b.index) && b.peer_index == Some(a.index)
}

/// True for the 512/1536 rules that [`setup`] (or [`v6::setup6`]) installs for `ip`.
pub fn is_pod_rule<A: IpFamily>(rule: &RuleSpec<A>, ip: A) -> bool {
    let own = Some((ip, A::HOST_PREFIX));
    (rule.priority == TO_POD_RULE_PRIORITY && rule.dst == own && rule.src.is_none())
        || (rule.priority == FROM_POD_RULE_PRIORITY && rule.src == own && rule.dst.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, peer_index: Option<u32>) -> LinkInfo {
        LinkInfo {
            index,
            name: format!("l{index}"),
            mac: None,
            mtu: 1500,
            up: true,
            peer_index,
            is_veth: true,
        }
    }

    #[test]
    fn peers_name_each_other() {
        // Host end 40 in the node, pod end 2 in the pod: each names the other.
        assert!(is_peer_of(&link(2, Some(40)), &link(40, Some(2))));
        assert!(is_peer_of(&link(40, Some(2)), &link(2, Some(40))));
        // A leftover eth0 of another pair, or a link with no peer, is not.
        assert!(!is_peer_of(&link(2, Some(41)), &link(40, Some(2))));
        assert!(!is_peer_of(&link(3, Some(40)), &link(40, Some(2))));
        assert!(!is_peer_of(&link(2, None), &link(40, Some(2))));
    }

    #[test]
    fn primary_eni_pod_gets_only_the_to_rule() {
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        let rules = pod_rules(ip, MAIN_TABLE);
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].priority, 512);
        assert_eq!(rules[0].dst, Some((ip, 32)));
        assert_eq!(rules[0].table, 254);
    }

    #[test]
    fn secondary_eni_pod_gets_from_rule_to_eni_table() {
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        let rules = pod_rules(ip, 3);
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1].priority, 1536);
        assert_eq!(rules[1].src, Some((ip, 32)));
        assert_eq!(rules[1].table, 3);
        assert!(rules.iter().all(|r| is_pod_rule(r, ip)));
        assert!(!rules
            .iter()
            .any(|r| is_pod_rule(r, Ipv4Addr::new(10, 0, 0, 6))));
    }
}
