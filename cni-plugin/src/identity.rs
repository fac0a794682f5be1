//! Who the pod is, from CNI_ARGS (kubelet runtimes) or the container ID (runtimes that pass no pod name).

use cni_types::CniEnv;

/// The pod's namespace and name, as used for the veth name hash and in ipamd's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
}

impl PodIdentity {
    /// `K8S_POD_NAMESPACE`/`K8S_POD_NAME` when present. podman passes only a name and no namespace; a runtime
    /// with neither gets the container ID as the name, so the veth name is still unique per sandbox.
    pub fn from_env(env: &CniEnv) -> PodIdentity {
        PodIdentity {
            namespace: env.args.pod_namespace.clone().unwrap_or_default(),
            name: env
                .args
                .pod_name
                .clone()
                .or_else(|| env.container_id.clone())
                .unwrap_or_default(),
        }
    }

    /// The host-side veth name (the anchor's hash).
    pub fn host_veth(&self, prefix: &str) -> String {
        datapath::host_veth_name(prefix, &self.namespace, &self.name, 0)
    }
}
