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
//! checkpoint), the outside worlds as traits ([`ec2`], [`imds`], [`hostnet`] with [`snat`], [`pod_host`],
//! [`kube`], [`clock`]; every EC2 call paced by [`ratelimit`]), [`rpc`] (the `rpc.CNIBackend` service, which hands
//! DEL's veth deletions to the [`reaper`]), [`metrics`] (fed a [`core::snapshot::PoolSnapshot`]), [`daemon`]
//! (`ipamd run`), [`sim`] (the EC2 simulator behind the same traits, with ENIs as real links), [`demo`]
//! (`ipamd demo`). Every outside world is a trait with a real implementation and a test double, so the daemon's
//! logic is tested without AWS or root.

pub mod clock;
pub mod config;
pub mod control;
pub mod core;
pub mod daemon;
pub mod demo;
pub mod ec2;
pub mod engine;
pub mod hostnet;
pub mod http;
pub mod imds;
pub mod install;
pub mod kube;
pub mod logging;
pub mod metrics;
pub mod pod_host;
pub mod probe;
pub mod ratelimit;
pub mod reaper;
pub mod rpc;
#[cfg(test)]
mod scenarios;
pub mod sim;
pub mod snat;
pub mod status_cmd;
pub mod sync;
