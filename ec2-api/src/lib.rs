//! The outside world ipamd depends on most: EC2 and the instance metadata service, as traits, and time.
//!
//! Two implementations of the traits exist: `ec2-sim` (a faithful simulator with real links) and `ec2-aws`
//! (aws-sdk-ec2 + IMDSv2), each in its own crate, so the SDK's long build and the simulator stay out of
//! everything that does not need them. The daemon holds `Arc<dyn Ec2>` and `Arc<dyn Imds>`.
//!
//! Only the calls the anchor makes are here, with the same batching: one `AssignPrivateIpAddresses` for many
//! IPs or prefixes, an ENI created with its first IPs already assigned. Errors are classified ([`Ec2Error`]) so
//! the pool engine can tell "wait" (throttled), "stop" (unauthorized), "try elsewhere" (subnet exhausted) and
//! "gone" (not found) apart, and logs name EC2's own error codes.
//!
//! - [`api`]: each EC2 action named once ([`Api`]: name, IAM action, mutating or not);
//! - [`layer`]: the one way to wrap an [`Ec2`] (pacing, metrics, retry models): an [`Ec2Layer`] and
//!   [`Layered`];
//! - [`clock`]: time as an outside world; [`bucket`]: the token bucket on it, EC2's rate model and ours.

pub mod api;
pub mod bucket;
pub mod clock;
pub mod ec2;
pub mod imds;
pub mod layer;

pub use api::Api;
pub use ec2::*;
pub use imds::*;
pub use layer::{Ec2Layer, Layered};
