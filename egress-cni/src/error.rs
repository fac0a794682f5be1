//! Every way `egress-cni` fails, and the CNI error each becomes.
//!
//! Spec codes where one fits (4 env, 7 config, 11 try again later); ours, numbered as `aws-cni`'s:
//!
//! | code | meaning |
//! |------|---------|
//! | 110 | building the egress interface or its SNAT rules failed |
//! | 111 | the pod's network namespace does not exist |
//! | 112 | DEL or GC could not remove everything |
//! | 113 | CHECK found the egress path different from what ADD built |
//! | 115 | the egress range has no free address |
//! | 116 | the egress address state could not be read or written |

use cni_types::{codes, CniError};

use crate::alloc::AllocError;

pub const SETUP_FAILED: u32 = 110;
pub const NETNS_MISSING: u32 = 111;
pub const TEARDOWN_INCOMPLETE: u32 = 112;
pub const DRIFT: u32 = 113;
pub const RANGE_EXHAUSTED: u32 = 115;
pub const STATE_FAILED: u32 = 116;

/// An egress plugin failure.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error("network namespace {0} does not exist")]
    NetnsMissing(String),
    #[error(transparent)]
    Alloc(#[from] AllocError),
    #[error("setting up the egress interface: {0}")]
    Setup(String),
    #[error("egress teardown left something behind: {0}")]
    Teardown(String),
    #[error("the egress path differs from what ADD built: {}", .0.join("; "))]
    Drift(Vec<String>),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl EgressError {
    /// The CNI error for the runtime.
    pub fn to_cni(&self) -> CniError {
        let code = match self {
            EgressError::Cni(e) => return e.clone(),
            EgressError::NetnsMissing(_) => NETNS_MISSING,
            EgressError::Alloc(AllocError::Exhausted(_)) => RANGE_EXHAUSTED,
            EgressError::Alloc(AllocError::Lock { .. }) => codes::TRY_AGAIN_LATER,
            EgressError::Alloc(AllocError::Io { .. }) => STATE_FAILED,
            EgressError::Setup(_) => SETUP_FAILED,
            EgressError::Teardown(_) => TEARDOWN_INCOMPLETE,
            EgressError::Drift(_) => DRIFT,
            EgressError::Runtime(_) => codes::IO,
        };
        CniError::new(code, self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exhausted_range_has_its_own_code_and_names_the_range() {
        let e = EgressError::Alloc(AllocError::Exhausted(
            "169.254.172.0/22".parse().expect("net"),
        ))
        .to_cni();
        assert_eq!(e.code, RANGE_EXHAUSTED);
        assert!(e.msg.contains("169.254.172.0/22"), "{}", e.msg);
    }
}
