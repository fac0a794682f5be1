//! SNAT and connmark rules for pod traffic leaving the VPC, through nftables or iptables.
//!
//! Pods have VPC addresses. Traffic to the VPC keeps them; traffic anywhere else must leave from the node's primary
//! IP (an internet or NAT gateway only translates the primary ENI's primary IP). With `AWS_VPC_K8S_CNI_EXTERNALSNAT`
//! unset the node does it itself:
//!
//! ```text
//!   nat POSTROUTING  -m comment "AWS SNAT CHAIN" -j AWS-SNAT-CHAIN-0
//!   AWS-SNAT-CHAIN-0:   -d <each VPC CIDR> RETURN; -d <each excluded CIDR> RETURN;
//!                       ! -o vlan+ -m addrtype ! --dst-type LOCAL -j SNAT --to-source <primary IP> [--random-fully]
//!   nat PREROUTING   -i <veth prefix>+ -j AWS-CONNMARK-CHAIN-0        (new connections from pods)
//!   AWS-CONNMARK-CHAIN-0: -d <VPC / excluded CIDRs> RETURN; CONNMARK --set-xmark <mark>/<mark>
//!   nat PREROUTING   CONNMARK --restore-mark --mask <mark>
//!   mangle PREROUTING -i <veth prefix>+ CONNMARK --restore-mark --mask <mark>     (every later packet of those connections)
//!   mangle PREROUTING -i <primary> -m addrtype --dst-type LOCAL --limit-iface-in CONNMARK --set-xmark <mark>
//!                                                                        (NodePort support)
//!   rule 1024: fwmark <mark>/<mark> lookup main                          (host::eni, netlink)
//! ```
//!
//! So a pod on a secondary ENI that talks to the internet is routed by the fwmark rule through the main table and
//! eth0 (not its ENI's table, whose gateway would drop a foreign source), and SNATed to the primary IP on the way
//! out; its VPC traffic still leaves through its own ENI (rule 1536).
//!
//! Applying is idempotent and converges from any state: the two chains are rewritten whole in one
//! `iptables-restore --noflush` transaction when `iptables -S` shows other rules than the plan's (never when
//! nothing changed), each jump is added only if `iptables -C` does not find it, and chains
//! of older layouts (`AWS-SNAT-CHAIN-1..n`, `AWS-CONNMARK-CHAIN-1..n`) are removed. Turning SNAT off removes the
//! jumps and the chains again.
//!
//! That is the iptables layout (the anchor's). The native nftables backend ([`nft`]) programs the same job in a
//! table of its own, with the connmark chain ordered after kube-proxy's DNAT and skipping local destinations, so
//! a pod on a secondary ENI that calls a ClusterIP is marked by the backend pod's address, not the ClusterIP's.
//! Which backend runs is decided once at startup from what kube-proxy uses ([`detect`]); the others' leftovers
//! are then removed ([`backend::Backends`]).
//!
//! Layers, one file each: [`plan`] (what the rules are: pure), [`apply`](mod@apply) (converging iptables to a
//! plan), [`iptables`] (the [`Iptables`] trait and the real [`CommandIptables`]), [`nft`] (the nftables table,
//! the [`Nft`] trait and [`CommandNft`]), [`backend`] (the [`SnatBackend`] trait over both) and [`detect`]. The
//! in-memory model with iptables' semantics for the commands used (`RecordingIptables`, for tests without root)
//! is with the host's other doubles in `crate::host::fakes`; `RecordingNft` is in [`nft`].

pub mod apply;
pub mod backend;
pub mod detect;
pub mod iptables;
pub mod nft;
pub mod plan;

pub use apply::apply;
pub use backend::{BackendKind, Backends, IptablesBackend, SnatBackend};
pub use iptables::{CommandIptables, Iptables, SnatError};
pub use nft::{CommandNft, Nft, NftBackend};
pub use plan::{split_rule, SnatPlan, CONNMARK_CHAIN, SNAT_CHAIN};

/// Test helpers shared by the layers' tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::fs::File;
    use std::os::fd::AsRawFd;

    use super::SnatPlan;
    use crate::config::RandomizeSnat;

    /// A node's plan: primary 10.0.0.4 on eth0, VPC 10.0.0.0/16, 192.168.0.0/16 excluded, mark 0x80, NodePort
    /// support, the default veth prefix.
    pub(crate) fn plan() -> SnatPlan {
        SnatPlan {
            primary_ip: "10.0.0.4".parse().expect("ip"),
            primary_if: "eth0".into(),
            vpc_cidrs: vec!["10.0.0.0/16".parse().expect("cidr")],
            exclude_cidrs: vec!["192.168.0.0/16".parse().expect("cidr")],
            external_snat: false,
            randomize: RandomizeSnat::Prng,
            connmark: 0x80,
            node_port_support: true,
            veth_prefix: String::new(),
        }
    }

    /// A throwaway network namespace (gone when the file is dropped) and its path, when running as root with
    /// `nft` installed; `None` (the caller skips) otherwise.
    pub(crate) fn scratch_netns_with_nft() -> Option<(File, String)> {
        let nft = std::process::Command::new("nft").arg("--version").output();
        if !nix::unistd::geteuid().is_root() || nft.is_err() {
            eprintln!("skipped: needs root and nft");
            return None;
        }
        let ns = datapath::new_anonymous_netns().expect("netns");
        let path = format!("/proc/{}/fd/{}", std::process::id(), ns.as_raw_fd());
        Some((ns, path))
    }
}
