//! The Kubernetes API as an outside world: what the engine may ask the cluster, behind the [`Cluster`] trait.
//!
//! Without an API configured, [`NoCluster`] answers "not known" to everything, and every decision falls back to
//! what the instance itself says (IMDS). The seam exists for custom networking (an `ENIConfig` per node
//! or availability zone: the subnet and security groups for the node's secondary ENIs), which the ENI lifecycle
//! takes as an input of its pure [`crate::engine::enis::placement`], and for the node-aware pool (the node's
//! `capacity.pods` caps it, a cordon pauses ENI changes). The real client's watch and cache live behind the trait,
//! so the engine never waits on the API server for more than a cached read.
//!
//! The real client is [`crate::kube_api::KubeCluster`] (kube-rs watch caches); besides the reads it carries the
//! few writes the daemon makes (pod IP annotations, Warning events), each queued and retried off the request path,
//! and its own state ([`ApiStatus`]) for `ipamd status` and readiness.
//!
//! Names follow the anchor: the node says which `ENIConfig` applies with the annotation or label
//! [`ENI_CONFIG_KEY`] (`k8s.amazonaws.com/eniConfig`).

use std::collections::BTreeMap;

use async_trait::async_trait;

/// The node annotation (checked first) or label naming the `ENIConfig` that applies to the node.
pub const ENI_CONFIG_KEY: &str = "k8s.amazonaws.com/eniConfig";

/// This node as the API server sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterNode {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `status.capacity.pods`, when set.
    pub capacity_pods: Option<u32>,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
}

impl ClusterNode {
    /// The name of the `ENIConfig` that applies to this node: the annotation, else the label
    /// ([`ENI_CONFIG_KEY`]); `None` when neither is set or it is empty.
    pub fn eni_config_name(&self) -> Option<&str> {
        self.annotations
            .get(ENI_CONFIG_KEY)
            .or_else(|| self.labels.get(ENI_CONFIG_KEY))
            .map(String::as_str)
            .filter(|n| !n.is_empty())
    }
}

/// One `ENIConfig` (custom networking): where the node's secondary ENIs go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EniConfig {
    pub name: String,
    /// `spec.subnet`, and any further subnets the newer CRD lists; the first one is used.
    pub subnets: Vec<String>,
    /// `spec.securityGroups`; empty: the primary ENI's security groups.
    pub security_groups: Vec<String>,
}

/// The API client's own state, for `ipamd status` and readiness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiStatus {
    /// A client is configured (KUBECONFIG, the pod's service account, or CLUSTER_ENDPOINT).
    pub configured: bool,
    /// The node cache (and the ENIConfig cache) have completed their first list since startup.
    pub synced: bool,
    /// The settings that need the API (e.g. `ANNOTATE_POD_IP`); non-empty: new pods wait for the first sync.
    pub required_by: Vec<String>,
    /// One line: what the client is doing or why it is waiting (the last error while the API is away).
    pub detail: String,
}

impl ApiStatus {
    /// Whether ADDs of pods ipamd does not already know must wait: the API is needed and not synced yet.
    pub fn blocks_new_pods(&self) -> bool {
        !self.required_by.is_empty() && !self.synced
    }

    /// One line for status pages.
    pub fn describe(&self) -> String {
        if !self.configured {
            return "not configured".into();
        }
        let needed = if self.required_by.is_empty() {
            String::new()
        } else {
            format!(" (needed by {})", self.required_by.join(", "))
        };
        let state = if self.synced {
            "synced"
        } else {
            "waiting for the first sync"
        };
        if self.detail.is_empty() {
            format!("{state}{needed}")
        } else {
            format!("{state}{needed}: {}", self.detail)
        }
    }
}

/// What the engine may ask the cluster. Answers come from a cache: `None` means "not known" (no API
/// configured, object absent, or not synced yet), and the caller falls back to the instance's own view.
#[async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// This node's object.
    async fn node(&self) -> Option<ClusterNode>;
    /// The `ENIConfig` named `name`.
    async fn eni_config(&self, name: &str) -> Option<EniConfig>;

    /// The client's state (default: no API configured).
    fn api_status(&self) -> ApiStatus {
        ApiStatus::default()
    }

    /// A pod got `ip` (ADD): with `ANNOTATE_POD_IP` the client annotates it (queued, never on the ADD path).
    fn pod_ip_assigned(&self, _namespace: &str, _name: &str, _ip: &str) {}

    /// A pod gave `ip` back (DEL): the annotation is cleared if it still holds `ip` (queued).
    fn pod_ip_released(&self, _namespace: &str, _name: &str, _ip: &str) {}

    /// A Warning event on the aws-node pod (rate-limited by the client), e.g. `MissingIAMPermissions`.
    fn warning_event(&self, _reason: &str, _message: &str) {}
}

/// The ENIConfig that applies to this node, if the cluster knows one.
pub async fn node_eni_config(cluster: &dyn Cluster) -> Option<EniConfig> {
    let node = cluster.node().await?;
    let name = node.eni_config_name()?;
    cluster.eni_config(name).await
}

/// No Kubernetes API configured: nothing is known, every decision uses the instance's own view.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCluster;

#[async_trait]
impl Cluster for NoCluster {
    async fn node(&self) -> Option<ClusterNode> {
        None
    }

    async fn eni_config(&self, _name: &str) -> Option<EniConfig> {
        None
    }
}

/// A [`Cluster`] double: the node object and the `ENIConfig`s it holds, changeable while in use.
#[cfg(any(test, feature = "fakes"))]
#[derive(Debug, Clone, Default)]
pub struct FakeCluster {
    pub node: std::sync::Arc<std::sync::Mutex<Option<ClusterNode>>>,
    pub eni_configs: std::sync::Arc<std::sync::Mutex<BTreeMap<String, EniConfig>>>,
    /// What [`Cluster::api_status`] answers.
    pub status: std::sync::Arc<std::sync::Mutex<ApiStatus>>,
    /// Every call of the write methods, in order: `("assigned"|"released"|"event", a, b)`.
    pub writes: std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>,
}

#[cfg(any(test, feature = "fakes"))]
#[async_trait]
impl Cluster for FakeCluster {
    async fn node(&self) -> Option<ClusterNode> {
        crate::sync::lock(&self.node).clone()
    }

    async fn eni_config(&self, name: &str) -> Option<EniConfig> {
        crate::sync::lock(&self.eni_configs).get(name).cloned()
    }

    fn api_status(&self) -> ApiStatus {
        crate::sync::lock(&self.status).clone()
    }

    fn pod_ip_assigned(&self, namespace: &str, name: &str, ip: &str) {
        crate::sync::lock(&self.writes).push((
            "assigned".into(),
            format!("{namespace}/{name}"),
            ip.into(),
        ));
    }

    fn pod_ip_released(&self, namespace: &str, name: &str, ip: &str) {
        crate::sync::lock(&self.writes).push((
            "released".into(),
            format!("{namespace}/{name}"),
            ip.into(),
        ));
    }

    fn warning_event(&self, reason: &str, message: &str) {
        crate::sync::lock(&self.writes).push(("event".into(), reason.into(), message.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_with(annotation: Option<&str>, label: Option<&str>) -> ClusterNode {
        let mut n = ClusterNode::default();
        if let Some(a) = annotation {
            n.annotations.insert(ENI_CONFIG_KEY.into(), a.into());
        }
        if let Some(l) = label {
            n.labels.insert(ENI_CONFIG_KEY.into(), l.into());
        }
        n
    }

    #[test]
    fn the_annotation_wins_over_the_label_and_empty_means_none() {
        assert_eq!(node_with(Some("a"), Some("b")).eni_config_name(), Some("a"));
        assert_eq!(node_with(None, Some("b")).eni_config_name(), Some("b"));
        assert_eq!(node_with(Some(""), None).eni_config_name(), None);
        assert_eq!(node_with(None, None).eni_config_name(), None);
    }

    #[tokio::test]
    async fn no_cluster_knows_nothing_and_the_fake_answers_what_it_holds() {
        assert_eq!(node_eni_config(&NoCluster).await, None);
        let fake = FakeCluster::default();
        assert_eq!(node_eni_config(&fake).await, None, "no node object yet");
        *crate::sync::lock(&fake.node) = Some(node_with(Some("us-east-1a"), None));
        assert_eq!(node_eni_config(&fake).await, None, "named but absent");
        let cfg = EniConfig {
            name: "us-east-1a".into(),
            subnets: vec!["subnet-pods".into()],
            security_groups: vec!["sg-pods".into()],
        };
        crate::sync::lock(&fake.eni_configs).insert(cfg.name.clone(), cfg.clone());
        assert_eq!(node_eni_config(&fake).await, Some(cfg));
    }
}
