//! The plugin's side of network policy: telling the policy agent (`aws-eks-nodeagent`, served on
//! `/var/run/aws-node/npa.sock`, `npaSocket` in the netconf overrides it) about every pod, as the anchor's plugin
//! does, whenever ipamd's reply carries a `NetworkPolicyMode` (ipamd's `NETWORK_POLICY_ENFORCING_MODE`). An empty
//! mode means no agent on this node: no call at all.
//!
//! **ADD** (after the pod's network is up): `EnforceNpToPod` with the pod's name and namespace, the mode and the
//! number of interfaces. In strict mode the agent attaches a default-deny program before it answers; in standard
//! mode it starts the pod default-allow. If the agent cannot be reached (connecting takes at most
//! [`CONNECT_TIMEOUT`], as the anchor), does not answer within the call deadline ([`DEFAULT_ENFORCE_TIMEOUT`],
//! `npaTimeoutMs` in the netconf; the anchor has none, so a wedged agent hangs the runtime), errs or says
//! `Success=false`, the ADD fails in both modes, as the anchor's, so a pod never runs without its policies. Unlike
//! the anchor, which leaves the pod's network and address in place until the runtime's DEL, the ADD is undone at
//! once (veth, routes, rules, and the address given back to ipamd).
//!
//! **DEL** (after the pod's network is gone): `DeletePodNp` with the pod's name and namespace, all of it (connect
//! and call) within [`DELETE_TIMEOUT`]. Whatever happens (no agent, a hung agent, an error), the DEL succeeds and
//! the failure is logged. A missed `DeletePodNp` leaves only the agent's bookkeeping for the pod behind (its eBPF
//! programs hang off the pod's host veth, which goes with the pod), while a failed DEL would keep the pod in
//! Terminating. The anchor returns a DEL error when the agent cannot be reached, so a node
//! whose agent is gone strands every deleted pod.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_cni_proto::{DeleteNpRequest, EnforceNpRequest, NpBackendClient};

use crate::conf::PluginConf;
use crate::identity::PodIdentity;

/// How long connecting to the agent may take (the anchor's 2 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default deadline of `EnforceNpToPod` once connected.
pub const DEFAULT_ENFORCE_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of the whole `DeletePodNp` exchange, connecting included.
pub const DELETE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the agent did not confirm a call.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("network policy agent unreachable at {path}: {reason}")]
    Unreachable { path: PathBuf, reason: String },
    #[error("network policy agent at {path} did not answer {call} within {timeout:?}")]
    Timeout {
        path: PathBuf,
        call: &'static str,
        timeout: Duration,
    },
    #[error("network policy agent at {path} failed {call}: {status}")]
    Rpc {
        path: PathBuf,
        call: &'static str,
        status: String,
    },
    #[error("network policy agent at {path} answered {call} with Success=false")]
    Refused { path: PathBuf, call: &'static str },
}

impl PolicyError {
    /// Whether retrying soon may succeed (the agent is starting, restarting or busy).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            PolicyError::Unreachable { .. } | PolicyError::Timeout { .. }
        )
    }
}

/// The agent's socket.
pub fn socket(conf: &PluginConf) -> PathBuf {
    conf.npa_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(aws_cni_proto::DEFAULT_NPA_SOCKET))
}

async fn connect(
    path: &Path,
    call_timeout: Duration,
) -> Result<NpBackendClient<tonic::transport::Channel>, PolicyError> {
    aws_cni_proto::unix_channel_with(path, CONNECT_TIMEOUT, call_timeout)
        .await
        .map(NpBackendClient::new)
        .map_err(|e| PolicyError::Unreachable {
            path: path.to_owned(),
            reason: aws_cni_proto::error_chain(&e),
        })
}

fn rpc_error(path: &Path, call: &'static str, timeout: Duration, s: &tonic::Status) -> PolicyError {
    match s.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => PolicyError::Timeout {
            path: path.to_owned(),
            call,
            timeout,
        },
        tonic::Code::Unavailable => PolicyError::Unreachable {
            path: path.to_owned(),
            reason: s.message().to_string(),
        },
        _ => PolicyError::Rpc {
            path: path.to_owned(),
            call,
            status: format!("{:?}: {}", s.code(), s.message()),
        },
    }
}

/// `EnforceNpToPod` for a pod that got `interfaces` interfaces; nothing when `mode` is empty.
pub async fn enforce(
    conf: &PluginConf,
    pod: &PodIdentity,
    mode: &str,
    interfaces: usize,
) -> Result<(), PolicyError> {
    if mode.is_empty() {
        return Ok(());
    }
    let path = socket(conf);
    let timeout = conf
        .npa_timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_ENFORCE_TIMEOUT);
    let mut agent = connect(&path, timeout).await?;
    let mut request = tonic::Request::new(EnforceNpRequest {
        k8s_pod_name: pod.name.clone(),
        k8s_pod_namespace: pod.namespace.clone(),
        network_policy_mode: mode.to_string(),
        interface_count: i32::try_from(interfaces).unwrap_or(i32::MAX),
    });
    request.set_timeout(timeout);
    let reply = agent
        .enforce_np_to_pod(request)
        .await
        .map_err(|s| rpc_error(&path, "EnforceNpToPod", timeout, &s))?
        .into_inner();
    if !reply.success {
        return Err(PolicyError::Refused {
            path,
            call: "EnforceNpToPod",
        });
    }
    tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name), mode, "EnforceNpToPod done");
    Ok(())
}

/// `DeletePodNp`; nothing when `mode` is empty. Never fails: see the module docs.
pub async fn delete(conf: &PluginConf, pod: &PodIdentity, mode: &str) {
    if mode.is_empty() {
        return;
    }
    let path = socket(conf);
    let call = async {
        let mut agent = connect(&path, DELETE_TIMEOUT).await?;
        let mut request = tonic::Request::new(DeleteNpRequest {
            k8s_pod_name: pod.name.clone(),
            k8s_pod_namespace: pod.namespace.clone(),
        });
        request.set_timeout(DELETE_TIMEOUT);
        let reply = agent
            .delete_pod_np(request)
            .await
            .map_err(|s| rpc_error(&path, "DeletePodNp", DELETE_TIMEOUT, &s))?
            .into_inner();
        if reply.success {
            Ok(())
        } else {
            Err(PolicyError::Refused {
                path: path.clone(),
                call: "DeletePodNp",
            })
        }
    };
    let outcome = match tokio::time::timeout(DELETE_TIMEOUT, call).await {
        Ok(r) => r,
        Err(_) => Err(PolicyError::Timeout {
            path: path.clone(),
            call: "DeletePodNp",
            timeout: DELETE_TIMEOUT,
        }),
    };
    let pod_name = format!("{}/{}", pod.namespace, pod.name);
    match outcome {
        Ok(()) => tracing::info!(pod = %pod_name, "DeletePodNp done"),
        Err(e) => tracing::warn!(pod = %pod_name, error = %e,
            "DeletePodNp failed; the DEL succeeds anyway"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{PluginError, NETWORK_POLICY_FAILED};

    fn conf(extra: &str) -> PluginConf {
        PluginConf::parse(
            format!(r#"{{"cniVersion":"1.0.0","name":"aws-cni","type":"aws-cni"{extra}}}"#)
                .as_bytes(),
        )
        .expect("conf")
    }

    fn pod() -> PodIdentity {
        PodIdentity {
            namespace: "default".into(),
            name: "web".into(),
        }
    }

    #[test]
    fn the_socket_is_the_anchors_unless_the_netconf_moves_it() {
        assert_eq!(
            socket(&conf("")),
            PathBuf::from("/var/run/aws-node/npa.sock")
        );
        let c = conf(r#","npaSocket":"/tmp/npa.sock","npaTimeoutMs":500"#);
        assert_eq!(socket(&c), PathBuf::from("/tmp/npa.sock"));
        assert_eq!(c.npa_timeout_ms, Some(500));
    }

    #[tokio::test]
    async fn no_mode_no_call_and_an_absent_agent_is_a_transient_add_failure() {
        let dir = std::env::temp_dir().join(format!("npa-unit-{}", std::process::id()));
        let missing = dir.join("npa.sock");
        let c = conf(&format!(
            r#","npaSocket":{:?}"#,
            missing.display().to_string()
        ));
        // Empty mode: nothing is dialled, so the missing socket does not matter.
        assert!(enforce(&c, &pod(), "", 1).await.is_ok());
        delete(&c, &pod(), "").await;

        let e = enforce(&c, &pod(), "strict", 1)
            .await
            .expect_err("no agent");
        assert!(e.is_transient(), "{e}");
        let cni = PluginError::from(e).to_cni();
        assert_eq!(cni.code, 11);
        assert!(
            cni.msg.contains("failed to setup network policy") && cni.msg.contains("npa.sock"),
            "{}",
            cni.msg
        );
        // DEL never fails, agent or not.
        delete(&c, &pod(), "strict").await;
    }

    #[test]
    fn a_refusing_or_failing_agent_is_error_114() {
        for e in [
            PolicyError::Refused {
                path: "/x".into(),
                call: "EnforceNpToPod",
            },
            PolicyError::Rpc {
                path: "/x".into(),
                call: "EnforceNpToPod",
                status: "Internal: boom".into(),
            },
        ] {
            assert!(!e.is_transient());
            assert_eq!(PluginError::from(e).to_cni().code, NETWORK_POLICY_FAILED);
        }
    }
}
