//! ipamd's side of network policy: what the anchor's policy agent (`aws-eks-nodeagent`,
//! aws-network-policy-agent) needs from the daemon.
//!
//! The agent runs next to ipamd in the `aws-node` pod and enforces Kubernetes NetworkPolicy with eBPF. Two things
//! tie it to ipamd, both as in the anchor:
//!
//! - **Its configuration.** At startup the agent calls `rpc.ConfigServerBackend/GetNetworkPolicyConfigs` on
//!   ipamd's socket and refuses to run without an answer. [`ConfigServer`] answers with the enforcing mode, whether
//!   multi-NIC pods are enabled, the node's IP, the instance ID and the region (the agent no longer asks IMDS).
//! - **The mode in every Add/DelNetwork reply.** [`WithPolicyMode`] wraps the `rpc.CNIBackend` service and copies
//!   the mode into `NetworkPolicyMode` of every successful AddNetwork reply and every DelNetwork reply, exactly
//!   where the anchor's ipamd fills it. The plugin calls the agent (`EnforceNpToPod` on ADD, `DeletePodNp` on DEL)
//!   only when that field is non-empty, so with `NETWORK_POLICY_ENFORCING_MODE` unset no policy call is ever made
//!   (a node without the agent container).
//!
//! `NETWORK_POLICY_ENFORCING_MODE` accepts `standard` and `strict` (any case, as the anchor; forwarded in lower
//! case). The anchor's ipamd also accepts `none`, which its agent then refuses on every pod, failing every ADD;
//! ours refuses `none`, an empty value and anything else at startup, naming the variable. Unset it to turn network
//! policy off.

use aws_cni_proto::{
    AddNetworkReply, AddNetworkRequest, CniBackend, ConfigServerBackend, DelNetworkReply,
    DelNetworkRequest, NetworkPolicyAgentConfigReply,
};
use tonic::{Request, Response, Status};

use crate::config::{ConfigError, EnvSource};
use ec2_api::NodeMetadata;

/// The variable, with the anchor's name.
pub const ENV_NETWORK_POLICY_ENFORCING_MODE: &str = "NETWORK_POLICY_ENFORCING_MODE";

/// How the agent treats a new pod until its policies are in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyMode {
    /// Default allow until the pod's policies are applied.
    Standard,
    /// Default deny until the pod's policies are applied.
    Strict,
}

impl PolicyMode {
    /// The mode as it goes on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Standard => "standard",
            PolicyMode::Strict => "strict",
        }
    }

    /// `NETWORK_POLICY_ENFORCING_MODE`: `None` when unset (no policy agent on this node).
    pub fn from_env(env: &dyn EnvSource) -> Result<Option<PolicyMode>, ConfigError> {
        let Some(value) = env.get(ENV_NETWORK_POLICY_ENFORCING_MODE) else {
            return Ok(None);
        };
        match value.trim().to_ascii_lowercase().as_str() {
            "standard" => Ok(Some(PolicyMode::Standard)),
            "strict" => Ok(Some(PolicyMode::Strict)),
            _ => Err(ConfigError {
                var: ENV_NETWORK_POLICY_ENFORCING_MODE,
                value,
                reason:
                    "expected standard or strict (the network policy agent accepts nothing else); \
                         unset it on nodes without the agent"
                        .into(),
            }),
        }
    }
}

/// The value of `NetworkPolicyMode` in replies: empty when unset.
fn wire(mode: Option<PolicyMode>) -> String {
    mode.map(PolicyMode::as_str).unwrap_or_default().to_string()
}

/// `rpc.ConfigServerBackend`: the agent's configuration, fixed once the node is known.
#[derive(Debug, Clone)]
pub struct ConfigServer {
    reply: NetworkPolicyAgentConfigReply,
}

impl ConfigServer {
    /// The answer for this node. ipamd manages IPv4 pods on network card 0 only: NodeIPv6 stays empty (the
    /// anchor fills it only in IPv6 mode) and MultiNICEnabled is false.
    pub fn new(mode: Option<PolicyMode>, node: &NodeMetadata) -> ConfigServer {
        ConfigServer {
            reply: NetworkPolicyAgentConfigReply {
                network_policy_mode: wire(mode),
                multi_nic_enabled: false,
                node_i_pv4: node.local_ipv4.to_string(),
                node_i_pv6: String::new(),
                instance_id: node.instance_id.clone(),
                region: node.region.clone(),
            },
        }
    }
}

impl ConfigServer {
    /// In IPv6 mode: the node's IPv6 address in `NodeIPv6`, as the anchor fills it there.
    pub fn with_node_ipv6(mut self, ip: Option<std::net::Ipv6Addr>) -> ConfigServer {
        if let Some(ip) = ip {
            self.reply.node_i_pv6 = ip.to_string();
        }
        self
    }
}

#[tonic::async_trait]
impl ConfigServerBackend for ConfigServer {
    async fn get_network_policy_configs(
        &self,
        _request: Request<()>,
    ) -> Result<Response<NetworkPolicyAgentConfigReply>, Status> {
        let r = &self.reply;
        tracing::info!(mode = %r.network_policy_mode, multi_nic = r.multi_nic_enabled, node_ipv4 = %r.node_i_pv4,
            instance = %r.instance_id, region = %r.region, "GetNetworkPolicyConfigs");
        Ok(Response::new(self.reply.clone()))
    }
}

/// A `rpc.CNIBackend` whose replies carry the policy mode (see the module docs).
#[derive(Debug, Clone)]
pub struct WithPolicyMode<S> {
    inner: S,
    mode: String,
}

impl<S> WithPolicyMode<S> {
    pub fn new(inner: S, mode: Option<PolicyMode>) -> WithPolicyMode<S> {
        WithPolicyMode {
            inner,
            mode: wire(mode),
        }
    }
}

#[tonic::async_trait]
impl<S: CniBackend> CniBackend for WithPolicyMode<S> {
    async fn add_network(
        &self,
        request: Request<AddNetworkRequest>,
    ) -> Result<Response<AddNetworkReply>, Status> {
        let mut reply = self.inner.add_network(request).await?;
        // The anchor sets it with the addresses, on success only.
        if reply.get_ref().success {
            reply.get_mut().network_policy_mode.clone_from(&self.mode);
        }
        Ok(reply)
    }

    async fn del_network(
        &self,
        request: Request<DelNetworkRequest>,
    ) -> Result<Response<DelNetworkReply>, Status> {
        let mut reply = self.inner.del_network(request).await?;
        reply.get_mut().network_policy_mode.clone_from(&self.mode);
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::Ipv4Addr;

    use super::*;

    fn env(v: Option<&str>) -> HashMap<String, String> {
        v.map(|v| (ENV_NETWORK_POLICY_ENFORCING_MODE.to_string(), v.to_string()))
            .into_iter()
            .collect()
    }

    #[test]
    fn mode_is_standard_or_strict_and_anything_else_names_the_variable() {
        assert_eq!(PolicyMode::from_env(&env(None)), Ok(None));
        assert_eq!(
            PolicyMode::from_env(&env(Some("standard"))),
            Ok(Some(PolicyMode::Standard))
        );
        assert_eq!(
            PolicyMode::from_env(&env(Some("Strict"))),
            Ok(Some(PolicyMode::Strict))
        );
        for bad in ["", "none", "deny", "standard,strict"] {
            let e = PolicyMode::from_env(&env(Some(bad))).expect_err(bad);
            assert_eq!(e.var, "NETWORK_POLICY_ENFORCING_MODE");
            assert!(
                e.to_string().contains("NETWORK_POLICY_ENFORCING_MODE"),
                "{e}"
            );
        }
    }

    /// Answers every call with a fixed success flag.
    struct Fixed(bool);

    #[tonic::async_trait]
    impl CniBackend for Fixed {
        async fn add_network(
            &self,
            _: Request<AddNetworkRequest>,
        ) -> Result<Response<AddNetworkReply>, Status> {
            Ok(Response::new(AddNetworkReply {
                success: self.0,
                ..Default::default()
            }))
        }
        async fn del_network(
            &self,
            _: Request<DelNetworkRequest>,
        ) -> Result<Response<DelNetworkReply>, Status> {
            Ok(Response::new(DelNetworkReply {
                success: self.0,
                ..Default::default()
            }))
        }
    }

    async fn modes(ok: bool, mode: Option<PolicyMode>) -> (String, String) {
        let svc = WithPolicyMode::new(Fixed(ok), mode);
        let add = svc
            .add_network(Request::new(AddNetworkRequest::default()))
            .await
            .expect("add")
            .into_inner();
        let del = svc
            .del_network(Request::new(DelNetworkRequest::default()))
            .await
            .expect("del")
            .into_inner();
        (add.network_policy_mode, del.network_policy_mode)
    }

    #[tokio::test]
    async fn replies_carry_the_mode_where_the_anchor_sets_it() {
        assert_eq!(
            modes(true, Some(PolicyMode::Strict)).await,
            ("strict".into(), "strict".into())
        );
        // A failed ADD has no pod to enforce on; a DEL reply always carries it.
        assert_eq!(
            modes(false, Some(PolicyMode::Standard)).await,
            (String::new(), "standard".into())
        );
        // Unset: empty everywhere, so the plugin makes no policy call.
        assert_eq!(modes(true, None).await, (String::new(), String::new()));
    }

    #[tokio::test]
    async fn config_reply_has_the_nodes_identity() {
        let node = NodeMetadata {
            instance_id: "i-0123456789abcdef0".into(),
            instance_type: "m5.large".into(),
            availability_zone: "us-west-2a".into(),
            primary_mac: "02:00:00:00:00:01".into(),
            local_ipv4: Ipv4Addr::new(10, 0, 1, 20),
            vpc_cidrs: Vec::new(),
            region: "us-west-2".into(),
            vpc_id: "vpc-1".into(),
            subnet_id: "subnet-1".into(),
            security_groups: Vec::new(),
        };
        let r = ConfigServer::new(Some(PolicyMode::Standard), &node)
            .get_network_policy_configs(Request::new(()))
            .await
            .expect("reply")
            .into_inner();
        assert_eq!(r.network_policy_mode, "standard");
        assert_eq!(r.node_i_pv4, "10.0.1.20");
        assert_eq!(r.node_i_pv6, "");
        assert_eq!(r.instance_id, "i-0123456789abcdef0");
        assert_eq!(r.region, "us-west-2");
        assert!(!r.multi_nic_enabled);
    }
}
