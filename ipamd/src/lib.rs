//! `ipamd`: the per-node IP address management daemon of the AWS VPC CNI, in Rust.
//!
//! ```text
//!   kubelet ─▶ runtime ─exec─▶ aws-cni ──gRPC over /var/run/aws-node/ipamd.sock──▶ ipamd
//!                                 │                                               │
//!                                 └─ netlink: veth, /32, routes, rules            ├─ datastore (ENIs, IPs, pods)
//!                                                                                 ├─ pool task ──▶ EC2 (trait)
//!                                                                                 ├─ IMDS (trait)
//!                                                                                 └─ host ENI networking (netlink)
//! ```
//!
//! Modules, from the inside out: [`core`] (no I/O: the [`core::datastore`] of who holds which address, generic
//! over the [`core::family`] of addresses; the warm-pool policy [`core::pool`] as a pure function; the
//! [`core::snapshot`] that reporting reads), [`engine`] (the core joined to the outside worlds, one room per idea:
//! admission of ADD/DEL, the pool task, the ENI lifecycle, reconcile, leak cleanup, restart recovery, the
//! checkpoint), the outside worlds as traits (EC2, IMDS and the clock through the `ec2_api` traits, [`host`] (the
//! host's network: ENIs, pods' leftovers, links, SNAT), [`kube`]; every EC2 call paced by [`ratelimit`] and
//! recorded by [`metered`], both layers on `ec2_api::Layered`), [`serve`] (the `rpc.CNIBackend` service, which
//! hands DEL's veth deletions to the [`reaper`], and the HTTP endpoints), [`netpol`] (what the network policy
//! agent needs from ipamd), [`metrics`] (fed a [`core::snapshot::PoolSnapshot`]), [`config`] (the settings, and
//! reading them from the environment), [`cmd`] (the daemon's commands: `run` on the aws backend `ec2-aws` or, with
//! the `sim` feature, the simulator `ec2-sim`; `install`, `status`, `health`, `demo`). Every outside world is a
//! trait with a real implementation and a test double, so the daemon's logic is tested without AWS or root; the
//! doubles ([`host`]'s `fakes`, [`kube`]'s fake cluster) are compiled only for tests and with the `fakes` feature.

pub mod cluster_file;
pub mod cmd;
pub mod config;
pub mod control;
pub mod core;
pub mod engine;
pub mod host;
pub mod kube;
pub mod kube_api;
pub mod logging;
pub mod metered;
pub mod metrics;
pub mod netpol;
pub mod ratelimit;
pub mod reaper;
pub mod reload;
#[cfg(test)]
mod scenarios;
pub mod schedule;
pub mod schedule_lease;
pub mod serve;
pub mod sync;
