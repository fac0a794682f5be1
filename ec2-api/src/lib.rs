//! The outside world ipamd depends on most: EC2 and the instance metadata service, as traits.
//!
//! Two implementations exist: the `sim` backend inside ipamd (a faithful simulator with real links) and the `aws`
//! backend (aws-sdk-ec2 + IMDSv2) in its own crate, so the SDK's long build stays out of everything else.
//! Both are exercised against the same expectations; the daemon holds `Arc<dyn Ec2>` and `Arc<dyn Imds>`.
//!
//! Only the calls the anchor makes are here, with the same batching: one
//! `AssignPrivateIpAddresses` for many IPs or prefixes, an ENI created with its first IPs already assigned.
//! Errors are classified ([`Ec2Error`]) so the pool engine can tell "wait" (throttled), "stop" (unauthorized),
//! "try elsewhere" (subnet exhausted) and "gone" (not found) apart, and logs name EC2's own error codes.

pub mod ec2;
pub mod imds;

pub use ec2::*;
pub use imds::*;
