//! The Kubernetes API as an outside world: what the engine may ask the cluster, behind the [`Cluster`] trait.
//!
//! Answers come from a cache (the real client's watches, or the development file of [`crate::cluster_file`]); the
//! engine never waits on the API server for more than a cached read, and never on the ADD path. Without an API
//! configured, [`NoCluster`] answers "not known" to everything, and every decision falls back to what the instance
//! itself says (IMDS). Besides custom networking (below), the node object drives the node-aware pool (its
//! `capacity.pods` caps it, a cordon pauses ENI changes).
//!
//! The real client is [`crate::kube_api::KubeCluster`] (kube-rs watch caches); besides the reads it carries the
//! few writes the daemon makes (pod IP annotations, Warning events), each queued and retried off the request path,
//! and its own state ([`ApiStatus`]) for `ipamd status` and readiness.
//!
//! Custom networking (`AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true`) is what the node and `ENIConfig` objects are read
//! for: the node names its `ENIConfig` ([`ClusterNode::eni_config_name`], the anchor's order: the label
//! [`EXTERNAL_ENI_CONFIG_LABEL`], the annotation named by `ENI_CONFIG_ANNOTATION_DEF`, the label named by
//! `ENI_CONFIG_LABEL_DEF`, else [`DEFAULT_ENI_CONFIG`]), and the `ENIConfig` ([`EniConfig`], read from the CRD's
//! `spec` with [`EniConfigSpec`]) says where the node's new ENIs go. The engine's room
//! [`crate::engine::custom_net`] turns the two into a subnet and security groups, or a problem it reports.

use std::collections::BTreeMap;

use async_trait::async_trait;

/// The anchor's default for both `ENI_CONFIG_ANNOTATION_DEF` and `ENI_CONFIG_LABEL_DEF`: the node annotation or
/// label naming the `ENIConfig` that applies to the node.
pub const ENI_CONFIG_KEY: &str = "k8s.amazonaws.com/eniConfig";

/// A node label that, when present, names the `ENIConfig` whatever else the node says (the anchor's
/// `externalEniConfigLabel`, for ENIConfigs managed out of band).
pub const EXTERNAL_ENI_CONFIG_LABEL: &str = "vpc.amazonaws.com/externalEniConfig";

/// The `ENIConfig` a node uses when it names none.
pub const DEFAULT_ENI_CONFIG: &str = "default";

/// Which node annotation and label name the node's `ENIConfig` (`ENI_CONFIG_ANNOTATION_DEF`,
/// `ENI_CONFIG_LABEL_DEF`; both default to [`ENI_CONFIG_KEY`], as in the anchor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniConfigKeys {
    pub annotation: String,
    pub label: String,
}

impl Default for EniConfigKeys {
    fn default() -> Self {
        EniConfigKeys {
            annotation: ENI_CONFIG_KEY.into(),
            label: ENI_CONFIG_KEY.into(),
        }
    }
}

/// Where the node's `ENIConfig` name came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EniConfigSource {
    /// The label [`EXTERNAL_ENI_CONFIG_LABEL`].
    ExternalLabel,
    /// The annotation of this key (`ENI_CONFIG_ANNOTATION_DEF`).
    Annotation(String),
    /// The label of this key (`ENI_CONFIG_LABEL_DEF`).
    Label(String),
    /// Nothing named one: [`DEFAULT_ENI_CONFIG`].
    Default,
}

impl std::fmt::Display for EniConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EniConfigSource::ExternalLabel => {
                write!(f, "from node label {EXTERNAL_ENI_CONFIG_LABEL}")
            }
            EniConfigSource::Annotation(k) => write!(f, "from node annotation {k}"),
            EniConfigSource::Label(k) => write!(f, "from node label {k}"),
            EniConfigSource::Default => {
                write!(f, "the default: no node label or annotation names one")
            }
        }
    }
}

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
    /// The name of the `ENIConfig` that applies to this node, and where it came from, in the anchor's order: the
    /// label [`EXTERNAL_ENI_CONFIG_LABEL`], the annotation `keys.annotation`, the label `keys.label`, else
    /// [`DEFAULT_ENI_CONFIG`]. As in the anchor, a key that is present decides even with an empty value (which
    /// names no ENIConfig, and is reported as such rather than skipped).
    pub fn eni_config_name(&self, keys: &EniConfigKeys) -> (String, EniConfigSource) {
        if let Some(v) = self.labels.get(EXTERNAL_ENI_CONFIG_LABEL) {
            return (v.clone(), EniConfigSource::ExternalLabel);
        }
        if let Some(v) = self.annotations.get(&keys.annotation) {
            return (
                v.clone(),
                EniConfigSource::Annotation(keys.annotation.clone()),
            );
        }
        if let Some(v) = self.labels.get(&keys.label) {
            return (v.clone(), EniConfigSource::Label(keys.label.clone()));
        }
        (DEFAULT_ENI_CONFIG.to_string(), EniConfigSource::Default)
    }
}

/// The `spec` of an `ENIConfig` object (`crd.k8s.amazonaws.com/v1alpha1`) as it is written: the anchor's
/// `subnet` and `securityGroups`, and (ours, beyond the anchor) `subnets`, several candidate subnets of which the
/// node takes the one in its availability zone with the most free addresses. Unknown fields are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EniConfigSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
}

/// One `ENIConfig` (custom networking): where the node's secondary ENIs go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EniConfig {
    pub name: String,
    /// The candidate subnets: `spec.subnet` first, then `spec.subnets` (duplicates and empty IDs dropped).
    pub subnets: Vec<String>,
    /// `spec.securityGroups`; empty: the primary ENI's security groups (as the anchor).
    pub security_groups: Vec<String>,
}

impl EniConfig {
    /// The `ENIConfig` named `name` with this `spec`.
    pub fn from_spec(name: &str, spec: &EniConfigSpec) -> EniConfig {
        let mut subnets: Vec<String> = Vec::new();
        for s in spec.subnet.iter().chain(spec.subnets.iter()) {
            let s = s.trim();
            if !s.is_empty() && !subnets.iter().any(|x| x == s) {
                subnets.push(s.to_string());
            }
        }
        EniConfig {
            name: name.to_string(),
            subnets,
            security_groups: spec
                .security_groups
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        }
    }
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
/// configured, object absent, or not synced yet).
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

/// No Kubernetes API configured: nothing is known. Decisions use the instance's own view, except custom
/// networking, which then places no ENI at all (it cannot know the node's `ENIConfig`).
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

    fn node(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ClusterNode {
        let map = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        ClusterNode {
            labels: map(labels),
            annotations: map(annotations),
            ..ClusterNode::default()
        }
    }

    fn zone_keys() -> EniConfigKeys {
        EniConfigKeys {
            label: "topology.kubernetes.io/zone".into(),
            ..EniConfigKeys::default()
        }
    }

    #[test]
    fn the_external_label_wins_then_the_annotation_then_the_label_then_default() {
        let keys = zone_keys();
        let zone = ("topology.kubernetes.io/zone", "us-east-1a");
        let ann = (ENI_CONFIG_KEY, "from-annotation");
        let ext = (EXTERNAL_ENI_CONFIG_LABEL, "external");
        assert_eq!(
            node(&[ext, zone], &[ann]).eni_config_name(&keys),
            ("external".into(), EniConfigSource::ExternalLabel)
        );
        assert_eq!(
            node(&[zone], &[ann]).eni_config_name(&keys),
            (
                "from-annotation".into(),
                EniConfigSource::Annotation(ENI_CONFIG_KEY.into())
            )
        );
        assert_eq!(
            node(&[zone], &[]).eni_config_name(&keys),
            (
                "us-east-1a".into(),
                EniConfigSource::Label("topology.kubernetes.io/zone".into())
            )
        );
        assert_eq!(
            node(&[], &[]).eni_config_name(&keys),
            ("default".into(), EniConfigSource::Default)
        );
        // The anchor's default keys: the annotation and label k8s.amazonaws.com/eniConfig.
        let d = EniConfigKeys::default();
        assert_eq!(
            node(&[(ENI_CONFIG_KEY, "by-label")], &[])
                .eni_config_name(&d)
                .0,
            "by-label"
        );
        assert_eq!(node(&[zone], &[]).eni_config_name(&d).0, "default");
        // The label of ENI_CONFIG_LABEL_DEF is not the annotation's key: an annotation with the label's key is
        // not read, and a label with the annotation's key is not either.
        assert_eq!(
            node(&[(ENI_CONFIG_KEY, "label")], &[zone])
                .eni_config_name(&keys)
                .0,
            "default"
        );
    }

    #[test]
    fn a_present_but_empty_key_decides_as_in_the_anchor() {
        let keys = zone_keys();
        let named = node(
            &[("topology.kubernetes.io/zone", "us-east-1a")],
            &[(ENI_CONFIG_KEY, "")],
        );
        assert_eq!(
            named.eni_config_name(&keys),
            (
                String::new(),
                EniConfigSource::Annotation(ENI_CONFIG_KEY.into())
            )
        );
    }

    #[test]
    fn the_spec_keeps_subnet_working_and_adds_subnets() {
        let spec: EniConfigSpec = serde_json::from_value(serde_json::json!({
            "subnet": "subnet-a",
            "subnets": ["subnet-b", "subnet-a", " ", "subnet-c"],
            "securityGroups": ["sg-1", ""],
            "somethingNew": true,
        }))
        .expect("spec");
        let cfg = EniConfig::from_spec("az1", &spec);
        assert_eq!(cfg.subnets, ["subnet-a", "subnet-b", "subnet-c"]);
        assert_eq!(cfg.security_groups, ["sg-1"]);
        let only_subnet: EniConfigSpec =
            serde_json::from_value(serde_json::json!({"subnet": "subnet-x"})).expect("spec");
        assert_eq!(
            EniConfig::from_spec("x", &only_subnet).subnets,
            ["subnet-x"]
        );
    }

    #[tokio::test]
    async fn no_cluster_knows_nothing_and_the_fake_answers_what_it_holds() {
        assert_eq!(NoCluster.node().await, None);
        assert_eq!(NoCluster.eni_config("default").await, None);
        let fake = FakeCluster::default();
        assert_eq!(fake.node().await, None, "no node object yet");
        let n = node(&[], &[(ENI_CONFIG_KEY, "us-east-1a")]);
        *crate::sync::lock(&fake.node) = Some(n.clone());
        assert_eq!(fake.node().await, Some(n));
        assert_eq!(
            fake.eni_config("us-east-1a").await,
            None,
            "named but absent"
        );
        let cfg = EniConfig {
            name: "us-east-1a".into(),
            subnets: vec!["subnet-pods".into()],
            security_groups: vec!["sg-pods".into()],
        };
        crate::sync::lock(&fake.eni_configs).insert(cfg.name.clone(), cfg.clone());
        assert_eq!(fake.eni_config("us-east-1a").await, Some(cfg));
    }
}
