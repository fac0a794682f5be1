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
//! Modules, from the inside out: [`datastore`] (who holds which IP; no I/O), [`checkpoint`] (the datastore's
//! assignments on disk, in the anchor's format, group-committed), [`pool`] (the warm-pool policy as a
//! pure function), [`node`] (the two joined to the outside worlds: [`ec2`], [`imds`], [`hostnet`] with [`snat`],
//! [`clock`]; every EC2 call paced by [`ratelimit`]; [`reconcile`] keeps datastore, host and EC2 in agreement),
//! [`rpc`] (the `rpc.CNIBackend` service, which hands DEL's veth deletions to the [`reaper`]), [`daemon`] (`ipamd run`), [`sim`] (the EC2 simulator behind the same
//! traits, with ENIs as real links), [`demo`] (`ipamd demo`). Every outside world is a trait with a real
//! implementation and a test double, so the daemon's logic is tested without AWS or root.

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
