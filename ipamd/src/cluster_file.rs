//! A development source of cluster objects: [`FileCluster`], a [`Cluster`] read from a JSON file
//! (`ipamd run --cluster-objects FILE`), for nodes with no API server (the simulator, the demo, the tests).
//! It is not a Kubernetes client and never talks to one.
//!
//! The file holds this node's object and the `ENIConfig` objects, in the shapes `kubectl get -o json` prints
//! (only the fields ipamd reads; everything else is ignored):
//!
//! ```json
//! {
//!   "node": {
//!     "metadata": {"labels": {"topology.kubernetes.io/zone": "us-west-2a"},
//!                  "annotations": {"k8s.amazonaws.com/eniConfig": "pods-a"}},
//!     "spec": {"unschedulable": false},
//!     "status": {"capacity": {"pods": "110"}}
//!   },
//!   "eniConfigs": [
//!     {"metadata": {"name": "pods-a"},
//!      "spec": {"subnet": "subnet-1", "subnets": ["subnet-2"], "securityGroups": ["sg-1"]}}
//!   ]
//! }
//! ```
//!
//! `node` absent or `null`: the node is not known (as before a watch has synced). The file is read again
//! whenever it changed (its bytes are compared on every read; it is small and read only off the ADD path), so
//! editing it is how a test or the demo changes labels or ENIConfigs while ipamd runs. A file that cannot be
//! read or parsed at startup stops ipamd with an error naming it; later, a bad edit is logged and the last good
//! content is kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::kube::{Cluster, ClusterNode, EniConfig, EniConfigSpec};
use crate::sync::lock;

/// Why the file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterFileError {
    #[error("cluster objects file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cluster objects file {path}: not the expected JSON: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileObjects {
    #[serde(default)]
    node: Option<NodeObject>,
    #[serde(default)]
    eni_configs: Vec<EniConfigObject>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct NodeObject {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: NodeSpec,
    #[serde(default)]
    status: NodeStatus,
}

#[derive(Debug, Default, serde::Deserialize)]
struct NodeSpec {
    #[serde(default)]
    unschedulable: bool,
}

#[derive(Debug, Default, serde::Deserialize)]
struct NodeStatus {
    #[serde(default)]
    capacity: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, serde::Deserialize)]
struct EniConfigObject {
    metadata: Meta,
    #[serde(default)]
    spec: EniConfigSpec,
}

/// What the file says, as the engine asks for it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Objects {
    node: Option<ClusterNode>,
    eni_configs: BTreeMap<String, EniConfig>,
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Objects, ClusterFileError> {
    let f: FileObjects =
        serde_json::from_slice(bytes).map_err(|source| ClusterFileError::Parse {
            path: path.to_owned(),
            source,
        })?;
    let node = f.node.map(|n| ClusterNode {
        labels: n.metadata.labels,
        annotations: n.metadata.annotations,
        // A Kubernetes quantity: "110" (or a bare number in a hand-written file).
        capacity_pods: n.status.capacity.get("pods").and_then(|v| match v {
            serde_json::Value::String(s) => s.trim().parse().ok(),
            serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            _ => None,
        }),
        unschedulable: n.spec.unschedulable,
    });
    let eni_configs = f
        .eni_configs
        .into_iter()
        .map(|o| {
            let cfg = EniConfig::from_spec(&o.metadata.name, &o.spec);
            (cfg.name.clone(), cfg)
        })
        .collect();
    Ok(Objects { node, eni_configs })
}

/// See the module docs.
#[derive(Debug)]
pub struct FileCluster {
    path: PathBuf,
    /// The bytes last read and what they said (the last good content).
    cache: Mutex<(Vec<u8>, Objects)>,
}

impl FileCluster {
    /// Reads `path` now: it must exist and parse.
    pub fn open(path: &Path) -> Result<FileCluster, ClusterFileError> {
        let bytes = std::fs::read(path).map_err(|source| ClusterFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let objects = parse(path, &bytes)?;
        tracing::info!(path = %path.display(), node_known = objects.node.is_some(),
            eni_configs = objects.eni_configs.len(),
            "cluster objects from a file (development source, not the Kubernetes API)");
        Ok(FileCluster {
            path: path.to_owned(),
            cache: Mutex::new((bytes, objects)),
        })
    }

    /// The objects, read again if the file changed.
    fn objects(&self) -> Objects {
        let mut cache = lock(&self.cache);
        match std::fs::read(&self.path) {
            Ok(bytes) if bytes != cache.0 => match parse(&self.path, &bytes) {
                Ok(objects) => {
                    tracing::info!(path = %self.path.display(), "cluster objects file changed; re-read");
                    *cache = (bytes, objects);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster objects file changed but cannot be used; keeping the last good content");
                    cache.0 = bytes;
                }
            },
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e,
                    "cannot read the cluster objects file; keeping the last good content")
            }
        }
        cache.1.clone()
    }
}

#[async_trait]
impl Cluster for FileCluster {
    async fn node(&self) -> Option<ClusterNode> {
        self.objects().node
    }

    async fn eni_config(&self, name: &str) -> Option<EniConfig> {
        self.objects().eni_configs.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, v: serde_json::Value) {
        std::fs::write(path, v.to_string()).expect("write");
    }

    #[tokio::test]
    async fn the_file_speaks_kubectls_shapes_and_is_reread_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("awscni-clusterfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("objects.json");
        write(
            &path,
            serde_json::json!({
                "node": {
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "us-west-2a"}},
                    "spec": {"unschedulable": true},
                    "status": {"capacity": {"pods": "17", "cpu": "2"}}
                },
                "eniConfigs": [{
                    "apiVersion": "crd.k8s.amazonaws.com/v1alpha1", "kind": "ENIConfig",
                    "metadata": {"name": "us-west-2a"},
                    "spec": {"subnet": "subnet-1", "securityGroups": ["sg-1"]}
                }]
            }),
        );
        let c = FileCluster::open(&path).expect("open");
        let node = c.node().await.expect("node");
        assert_eq!(node.labels["topology.kubernetes.io/zone"], "us-west-2a");
        assert_eq!(node.capacity_pods, Some(17));
        assert!(node.unschedulable);
        let cfg = c.eni_config("us-west-2a").await.expect("eniconfig");
        assert_eq!(cfg.subnets, ["subnet-1"]);
        assert_eq!(cfg.security_groups, ["sg-1"]);
        assert_eq!(c.eni_config("other").await, None);

        // Edited while in use: the node is gone, the ENIConfig lists two subnets.
        write(
            &path,
            serde_json::json!({"eniConfigs": [{"metadata": {"name": "us-west-2a"},
                "spec": {"subnet": "subnet-1", "subnets": ["subnet-2"]}}]}),
        );
        assert_eq!(c.node().await, None);
        assert_eq!(
            c.eni_config("us-west-2a").await.expect("cfg").subnets,
            ["subnet-1", "subnet-2"]
        );
        // A bad edit keeps the last good content.
        std::fs::write(&path, "{not json").expect("write");
        assert!(c.eni_config("us-west-2a").await.is_some());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn an_unusable_file_at_startup_names_itself() {
        let err = FileCluster::open(Path::new("/nonexistent/objects.json")).expect_err("missing");
        assert!(
            err.to_string().contains("/nonexistent/objects.json"),
            "{err}"
        );
        let dir =
            std::env::temp_dir().join(format!("awscni-clusterfile-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("bad.json");
        std::fs::write(&path, r#"{"eniConfigs": [{"spec": {}}]}"#).expect("write");
        let err = FileCluster::open(&path).expect_err("no metadata");
        assert!(err.to_string().contains("bad.json"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
