//! Netlink operations shared by `aws-cni` and `ipamd`.
//!
//! Everything that touches the kernel's routing state goes through [`Netlink`], a handle bound to one network
//! namespace for its whole life. Binding happens once, when the socket is created: [`Netlink::connect`] opens the
//! socket on a short-lived helper thread that has entered the target namespace, so no caller's thread (and no tokio
//! worker) ever runs inside a foreign namespace. Afterwards the socket keeps talking to the namespace it was born in.
//!
//! Operations are idempotent in the way CNI and a restarting daemon need: adding something that already exists
//! with the same content succeeds, deleting something that is already gone succeeds. Errors carry the operation
//! and the kernel's errno, so callers can tell "not there" from "not allowed".
//!
//! The pod plumbing itself (veth whose host end is created directly in the host namespace, the /32, the
//! 169.254.1.1 gateway and its permanent neighbour, host route and policy rules) is composed from these primitives
//! in [`pod`], so the plugin and the daemon's cleanup paths share one definition of "a pod's network".
//!
//! IPv6 pods (`ENABLE_IPv6`) get the same plumbing in their family ([`pod::v6`]: /128, `fe80::1`, static ND),
//! from the same family-generic [`Netlink`] operations (over [`IpFamily`]) and the per-namespace [`sysctl`]s.
//!
//! [`conntrack`] deletes the tracked flows of an address (ctnetlink), for addresses going back to the pool.

pub mod conntrack;
mod error;
mod names;
mod netlink;
mod netns;
pub mod pod;
pub mod sysctl;

pub use error::NetlinkError;
pub use names::{host_veth_name, is_pod_veth_name, random_mac, subnet_gateway, MacAddr};
pub use netlink::{
    IpFamily, LinkInfo, Netlink, Route6Spec, RouteSpec, Rule6Spec, RuleInfo, RuleSpec, VethSpec,
};
pub use netns::{
    create_named_netns, current_netns_id, delete_named_netns, enter_netns, in_netns, in_netns_file,
    is_initial_netns, is_own_or_initial_netns, new_anonymous_netns, NetnsId, NETNS_RUN_DIR,
};

/// The main routing table.
pub const MAIN_TABLE: u32 = 254;
/// Priority of `to <podIP> lookup main` (the anchor's value; Calico and others rely on it).
pub const TO_POD_RULE_PRIORITY: u32 = 512;
/// Priority of `from <podIP> lookup <ENI table>` for pods on secondary ENIs.
pub const FROM_POD_RULE_PRIORITY: u32 = 1536;
/// Priority of `from <secondary ENI primary IP> lookup <ENI table>`.
pub const ENI_PRIMARY_IP_RULE_PRIORITY: u32 = 32765;
