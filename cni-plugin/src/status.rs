//! CNI STATUS (spec 1.1.0): success only when ipamd answers and an ADD would get an address now, or the pool can
//! still grow to give one. Otherwise error 50 with the reason (ipamd unreachable at PATH, max-pods reached, every
//! ENI full, all free addresses cooling down).

use std::time::Duration;

use aws_cni_proto::{FailureReason, StatusRequest};
use cni_types::{codes, CniError};

use crate::client::{self, rpc_error};
use crate::conf::PluginConf;
use crate::error::PluginError;

/// Runs STATUS.
pub async fn status(conf: &PluginConf, timeout: Duration) -> Result<(), PluginError> {
    let socket = conf.socket();
    let not_available = |msg: String| PluginError::Cni(CniError::new(codes::NOT_AVAILABLE, msg));
    let mut ipamd = match client::connect_control(&socket, timeout).await {
        Ok(c) => c,
        Err(e) => return Err(not_available(e.to_string())),
    };
    let reply = match ipamd.status(StatusRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            return Err(not_available(
                rpc_error(&socket, "Status", timeout, s).to_string(),
            ))
        }
    };
    if reply.ready {
        tracing::debug!(message = %reply.message, "STATUS: ready");
        return Ok(());
    }
    let reason = FailureReason::try_from(reply.reason).unwrap_or(FailureReason::FailureUnspecified);
    Err(PluginError::Cni(
        CniError::new(
            codes::NOT_AVAILABLE,
            format!("ipamd cannot assign addresses: {}", reply.message),
        )
        .with_details(reason.as_str_name()),
    ))
}
