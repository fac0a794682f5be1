//! The EC2 trait and its types live in the `ec2-api` crate (shared with the aws backend); re-exported here.

pub use ec2_api::ec2::*;
