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
//! assignments on disk, in the anchor's format, group-committed), [`pool`] (the warm-pool policy as a pure function),
//! [`node`] (the two joined to the outside worlds: [`ec2`], [`imds`], [`host`] (the host's network: ENIs, pods'
//! leftovers, links, SNAT), [`clock`]; every EC2 call paced by [`ratelimit`]; [`reconcile`] keeps datastore, host and
//! EC2 in agreement), [`serve`] (the `rpc.CNIBackend` service, which hands DEL's veth deletions to the [`reaper`],
//! and the HTTP endpoints), [`netpol`] (what the network policy agent needs from ipamd), [`config`] (the settings,
//! and reading them from the environment), [`cmd`] (the daemon's commands: `run`, `install`, `status`, `health`,
//! `demo`), [`sim`] (the EC2 simulator behind the same traits, with ENIs as real links). Every outside world is a
//! trait with a real implementation and a test double, so the daemon's logic is tested without AWS or root; the
//! doubles of the host ([`host`]'s `fakes`) are compiled only for tests and with the `fakes` feature.

pub mod checkpoint;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod control;
pub mod datastore;
pub mod ec2;
pub mod host;
pub mod imds;
pub mod logging;
pub mod metrics;
pub mod netpol;
pub mod node;
pub mod pool;
pub mod ratelimit;
pub mod reaper;
pub mod reconcile;
#[cfg(test)]
mod scenarios;
pub mod serve;
pub mod sim;
