//! `aws-cni-bench`: the benchmark suite behind `scripts/bench.sh` and `BENCHMARKS.md`.
//!
//! Two kinds of benchmark:
//! - [`real`]: wall-clock measurements on this machine's kernel, with the release `aws-cni` and `ipamd run
//!   --backend sim` against Debian's `ptp` + `host-local`, interleaved in one run so both see the same noise:
//!   pod setup latency, 30-pod bursts, churn throughput, memory, and the bare netlink floor.
//! - [`virt`]: the pool engines against the EC2 simulator in virtual time: EC2 calls per 1,000 pods under churn,
//!   ours against a model of the anchor's policy, and a 2,000-node cluster scale-up sharing one account's EC2
//!   rate limits.
//!
//! [`suite`] runs them and builds the [`report::Report`]; [`stats`] has the order statistics. Nothing here
//! asserts on timings: a benchmark reports, a test decides.

pub mod error;
pub mod real;
pub mod report;
pub mod stats;
pub mod suite;
pub mod time;
pub mod virt;
