//! Every way the plugin fails, and the CNI error each becomes (code + a message that names the cause).
//!
//! Codes: the spec's where one fits (4 env, 6 decoding, 7 config, 11 try again later), ours from 100:
//!
//! | code | meaning |
//! |------|---------|
//! | 100 | ipamd refused for an unspecified reason |
//! | 101 | the node is at max-pods |
//! | 102 | the node has every ENI attached and full |
//! | 103 | the subnet has no free addresses |
//! | 104 | ipamd internal error |
//! | 105 | custom networking: the node's ENIConfig is missing or invalid (the message names it and the cause) |
//! | 110 | programming the pod's network failed |
//! | 111 | the pod's network namespace does not exist |
//! | 112 | DEL or GC could not remove everything |
//! | 113 | CHECK found the pod's network different from what ADD built |
//! | 114 | the network policy agent refused or failed the pod (11 when it is unreachable or does not answer) |

use aws_cni_proto::FailureReason;
use cni_types::{codes, CniError};

use crate::client::ClientError;

pub const IPAMD_REFUSED: u32 = 100;
pub const MAX_PODS_REACHED: u32 = 101;
pub const NODE_AT_ENI_LIMIT: u32 = 102;
pub const SUBNET_EXHAUSTED: u32 = 103;
pub const IPAMD_INTERNAL: u32 = 104;
pub const ENI_CONFIG_INVALID: u32 = 105;
pub const SETUP_FAILED: u32 = 110;
pub const NETNS_MISSING: u32 = 111;
pub const TEARDOWN_INCOMPLETE: u32 = 112;
pub const DRIFT: u32 = 113;
pub const NETWORK_POLICY_FAILED: u32 = 114;

/// A plugin failure.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(transparent)]
    Cni(#[from] CniError),
    #[error(transparent)]
    Ipamd(#[from] ClientError),
    #[error("ipamd could not assign an IP: {message}")]
    NoIp {
        reason: FailureReason,
        message: String,
    },
    #[error("network namespace {0} does not exist")]
    NetnsMissing(String),
    #[error("setting up the pod's network: {0}")]
    Setup(String),
    #[error("teardown left something behind: {0}")]
    Teardown(String),
    #[error("the pod's network differs from what ADD built: {}", .0.join("; "))]
    Drift(Vec<String>),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("failed to setup network policy: {0}")]
    NetworkPolicy(#[from] crate::netpol::PolicyError),
}

impl PluginError {
    /// The CNI error for the runtime.
    pub fn to_cni(&self) -> CniError {
        match self {
            PluginError::Cni(e) => e.clone(),
            PluginError::Ipamd(e) => CniError::new(codes::TRY_AGAIN_LATER, e.to_string()),
            PluginError::NoIp { reason, message } => {
                let code = match reason {
                    FailureReason::NoFreeIpPoolGrowing
                    | FailureReason::AllFreeIpsInCooldown
                    | FailureReason::Ec2Throttled
                    | FailureReason::Ec2Error
                    | FailureReason::NotReady => codes::TRY_AGAIN_LATER,
                    FailureReason::MaxPodsReached => MAX_PODS_REACHED,
                    FailureReason::NodeAtEniLimit => NODE_AT_ENI_LIMIT,
                    FailureReason::SubnetExhausted => SUBNET_EXHAUSTED,
                    FailureReason::InvalidRequest => codes::INVALID_CONFIG,
                    FailureReason::Internal => IPAMD_INTERNAL,
                    FailureReason::EniConfigInvalid => ENI_CONFIG_INVALID,
                    FailureReason::FailureUnspecified => IPAMD_REFUSED,
                };
                CniError::new(
                    code,
                    format!("failed to assign an IP address to container: {message}"),
                )
                .with_details(reason.as_str_name())
            }
            PluginError::NetnsMissing(_) => CniError::new(NETNS_MISSING, self.to_string()),
            PluginError::Setup(_) => CniError::new(SETUP_FAILED, self.to_string()),
            PluginError::Teardown(_) => CniError::new(TEARDOWN_INCOMPLETE, self.to_string()),
            PluginError::Drift(_) => CniError::new(DRIFT, self.to_string()),
            PluginError::Runtime(_) => CniError::new(codes::IO, self.to_string()),
            PluginError::NetworkPolicy(e) if e.is_transient() => {
                CniError::new(codes::TRY_AGAIN_LATER, self.to_string())
            }
            PluginError::NetworkPolicy(_) => CniError::new(NETWORK_POLICY_FAILED, self.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_shortage_is_try_again_later_and_names_the_cause() {
        let e = PluginError::NoIp {
            reason: FailureReason::AllFreeIpsInCooldown,
            message: "all 3 free address(es) are in their 30s reuse cooldown".into(),
        }
        .to_cni();
        assert_eq!(e.code, 11);
        assert!(e.msg.contains("cooldown"));
        assert_eq!(e.details, "ALL_FREE_IPS_IN_COOLDOWN");
    }

    #[test]
    fn hard_limits_have_their_own_codes() {
        let code = |reason| {
            PluginError::NoIp {
                reason,
                message: String::new(),
            }
            .to_cni()
            .code
        };
        assert_eq!(code(FailureReason::MaxPodsReached), 101);
        assert_eq!(code(FailureReason::NodeAtEniLimit), 102);
        assert_eq!(code(FailureReason::SubnetExhausted), 103);
        assert_eq!(code(FailureReason::EniConfigInvalid), 105);
    }
}
