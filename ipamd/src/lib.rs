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
//! pure function), [`node`] (the two joined to the outside worlds: EC2 and IMDS through the `ec2_api` traits,
//! [`hostnet`] with [`snat`], the `ec2_api::clock`; every EC2 call paced by [`ratelimit`] and recorded by
//! [`metered`], both layers on `ec2_api::Layered`; [`reconcile`] keeps datastore, host and EC2 in agreement),
//! [`rpc`] (the `rpc.CNIBackend` service, which hands DEL's veth deletions to the [`reaper`]), [`daemon`]
//! (`ipamd run`, on the aws backend `ec2-aws` or, with the `sim` feature, the simulator `ec2-sim`), [`demo`]
//! (`ipamd demo`). Every outside world is a trait with a real implementation and a test double, so the
//! daemon's logic is tested without AWS or root.

pub mod checkpoint;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datastore;
pub mod demo;
pub mod hostnet;
pub mod http;
pub mod install;
pub mod logging;
pub mod metered;
pub mod metrics;
pub mod node;
pub mod pool;
pub mod probe;
pub mod ratelimit;
pub mod reaper;
pub mod reconcile;
pub mod rpc;
#[cfg(test)]
mod scenarios;
pub mod snat;
pub mod status_cmd;
