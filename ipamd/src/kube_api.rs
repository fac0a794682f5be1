//! The real Kubernetes API client behind [`crate::kube::Cluster`]: kube-rs watch caches for this node and the
//! `ENIConfig`s, and the daemon's few writes (pod IP annotations, Warning events) queued off the request path.
//!
//! ```text
//!   KUBECONFIG (development) | service account (in a pod) ─┬─ CLUSTER_ENDPOINT replaces the API host
//!                                                          ▼
//!   watcher(Node, fieldSelector=metadata.name=MY_NODE_NAME) ──▶ Cache.node        ◀── Cluster::node()
//!   watcher(ENIConfig crd.k8s.amazonaws.com/v1alpha1)        ──▶ Cache.eni_configs ◀── Cluster::eni_config()
//!   pod_ip_assigned/released ─▶ queue ─▶ annotation worker (merge patch, retried)
//!   warning_event             ─▶ rate limit ─▶ queue ─▶ POST events in MY_POD_NAMESPACE
//! ```
//!
//! **Reads never wait on the API server.** Each watcher lists, then watches (with bookmarks); the cache is
//! replaced atomically at the end of every list (`InitDone`), so a re-list after the API server said 410 Gone, or
//! after the connection dropped, refreshes it completely: objects deleted while the API was away disappear. A
//! failed list or watch is retried with jittered exponential backoff ([`RETRY_BASE`] to [`RETRY_CAP`]); while
//! the API is away the last known state stays in use and [`ApiStatus::detail`] says what failed.
//!
//! **Startup.** The API is optional unless a setting needs it (`ANNOTATE_POD_IP`): then new pods' ADDs and the
//! readiness probe wait for the first sync (ADDs and DELs of pods ipamd already knows never do), and
//! `ipamd status` says why. Without any configuration and no setting that needs it, the daemon runs with
//! [`crate::kube::NoCluster`].
//!
//! **Writes.** Annotation jobs go through an unbounded in-memory queue to one worker that retries each (conflicts,
//! 5xx, transport errors) with backoff for up to [`WRITE_ATTEMPTS`] attempts; a 404 (the pod is gone) ends a job.
//! Setting the annotation is a JSON merge patch; clearing it on DEL first reads the pod and patches with its
//! `resourceVersion`, so an annotation another ADD rewrote meanwhile is left alone (409 → read again). Warning
//! events are limited to one per reason per [`EVENT_INTERVAL`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::runtime::utils::Backoff;
use ::kube::runtime::watcher::{self, Event};
use ::kube::runtime::WatchStreamExt;
use ::kube::{Client, Config as KubeConfig};
use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Node as K8sNode, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use tokio::sync::mpsc;

use crate::config::EnvSource;
use crate::kube::{ApiStatus, Cluster, ClusterNode, EniConfig};
use crate::sync::lock;
use ec2_api::clock::Clock;

/// The node's name (downward API `spec.nodeName`, as the anchor's DaemonSet sets it).
pub const ENV_NODE_NAME: &str = "MY_NODE_NAME";
/// The aws-node pod's name (downward API), the object Warning events are about.
pub const ENV_POD_NAME: &str = "MY_POD_NAME";
/// The aws-node pod's namespace (ours; default `kube-system`).
pub const ENV_POD_NAMESPACE: &str = "MY_POD_NAMESPACE";
/// Replaces the API server's address (so ipamd does not depend on kube-proxy for the Service VIP).
pub const ENV_CLUSTER_ENDPOINT: &str = "CLUSTER_ENDPOINT";
/// A kubeconfig file (development, tests).
pub const ENV_KUBECONFIG: &str = "KUBECONFIG";
/// The pod annotation `ANNOTATE_POD_IP` writes.
pub const POD_IPS_ANNOTATION: &str = "vpc.amazonaws.com/pod-ips";
/// The reason of the Warning event for an EC2 `UnauthorizedOperation` (the anchor's).
pub const REASON_MISSING_IAM: &str = "MissingIAMPermissions";
/// The reason of the Warning event for a subnet with no free addresses.
pub const REASON_SUBNET_EXHAUSTED: &str = "InsufficientFreeAddressesInSubnet";

/// First retry delay of a failed watch or write.
pub const RETRY_BASE: Duration = Duration::from_millis(500);
/// Longest retry delay of a failed watch or write.
pub const RETRY_CAP: Duration = Duration::from_secs(10);
/// Attempts per annotation write before it is given up (logged).
pub const WRITE_ATTEMPTS: u32 = 12;
/// A watch error is reported this long after it happened: the watchers retry at least every [`RETRY_CAP`], so a
/// persisting failure repeats within it.
pub const ERROR_FRESH: Duration = Duration::from_secs(15);
/// How long startup waits for the first sync before filling the pool (the cap and the cordon come from it); after
/// that the daemon goes on with the instance's own view and the caches fill in the background.
pub const STARTUP_SYNC_WAIT: Duration = Duration::from_secs(10);
/// At most one Warning event per reason this often.
pub const EVENT_INTERVAL: Duration = Duration::from_secs(60);

/// Why the client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("{needed} needs the Kubernetes API, but none is configured: set KUBECONFIG, run in a pod with a \
             service account, or set CLUSTER_ENDPOINT")]
    NotConfigured { needed: String },
    #[error("MY_NODE_NAME is not set: the Kubernetes API client needs the node's name (the DaemonSet sets it \
             from spec.nodeName)")]
    NoNodeName,
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error("in-cluster configuration: {0}")]
    InCluster(String),
    #[error("CLUSTER_ENDPOINT {value:?} is not a URL: {message}")]
    Endpoint { value: String, message: String },
    #[error("building the Kubernetes client: {0}")]
    Client(String),
}

/// Where and how to reach the API, from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeSettings {
    pub node_name: String,
    pub kubeconfig: Option<PathBuf>,
    pub endpoint: Option<String>,
    /// The aws-node pod (for events); `None`: no events.
    pub pod_name: Option<String>,
    pub pod_namespace: String,
    /// `ANNOTATE_POD_IP`.
    pub annotate_pod_ip: bool,
    /// The settings that need the API (their variable names).
    pub required_by: Vec<String>,
}

fn non_empty(env: &dyn EnvSource, var: &str) -> Option<String> {
    env.get(var)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

impl KubeSettings {
    /// The settings, or `None` when no API is configured and nothing needs one. `required_by` names the
    /// settings in force that need the API; with any of them, a missing configuration is an error.
    pub fn from_env(
        env: &dyn EnvSource,
        annotate_pod_ip: bool,
        mut required_by: Vec<String>,
    ) -> Result<Option<KubeSettings>, KubeError> {
        if annotate_pod_ip {
            required_by.insert(0, "ANNOTATE_POD_IP".into());
        }
        let kubeconfig = non_empty(env, ENV_KUBECONFIG).map(PathBuf::from);
        let endpoint = non_empty(env, ENV_CLUSTER_ENDPOINT);
        let in_pod = non_empty(env, "KUBERNETES_SERVICE_HOST").is_some();
        if kubeconfig.is_none() && endpoint.is_none() && !in_pod {
            return match required_by.is_empty() {
                true => Ok(None),
                false => Err(KubeError::NotConfigured {
                    needed: required_by.join(", "),
                }),
            };
        }
        let Some(node_name) = non_empty(env, ENV_NODE_NAME) else {
            if required_by.is_empty() {
                tracing::warn!("a Kubernetes API is configured but MY_NODE_NAME is not set: running without it");
                return Ok(None);
            }
            return Err(KubeError::NoNodeName);
        };
        Ok(Some(KubeSettings {
            node_name,
            kubeconfig,
            endpoint,
            pod_name: non_empty(env, ENV_POD_NAME),
            pod_namespace: non_empty(env, ENV_POD_NAMESPACE)
                .unwrap_or_else(|| "kube-system".into()),
            annotate_pod_ip,
            required_by,
        }))
    }

    /// The client configuration: the kubeconfig when given, else the pod's service account; `CLUSTER_ENDPOINT`
    /// replaces the server's address either way.
    pub async fn client_config(&self) -> Result<KubeConfig, KubeError> {
        let mut config = match &self.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| KubeError::Kubeconfig {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                KubeConfig::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| KubeError::Kubeconfig {
                        path: path.clone(),
                        message: e.to_string(),
                    })?
            }
            None => match KubeConfig::incluster() {
                Ok(c) => c,
                // CLUSTER_ENDPOINT without the Service's env: the service account's files, any host.
                Err(_) if self.endpoint.is_some() => {
                    KubeConfig::incluster_dns().map_err(|e| KubeError::InCluster(e.to_string()))?
                }
                Err(e) => return Err(KubeError::InCluster(e.to_string())),
            },
        };
        if let Some(ep) = &self.endpoint {
            config.cluster_url =
                ep.parse()
                    .map_err(|e: http::uri::InvalidUri| KubeError::Endpoint {
                        value: ep.clone(),
                        message: e.to_string(),
                    })?;
        }
        Ok(config)
    }
}

/// What the watchers hold.
#[derive(Debug, Default)]
struct Cache {
    node: Option<ClusterNode>,
    eni_configs: BTreeMap<String, EniConfig>,
    node_synced: bool,
    eni_configs_synced: bool,
    /// The last watch error of each watcher and when (monotonic), cleared by its next successful list or event;
    /// a watch that reconnected quietly (no change to report) stops failing, so an error older than
    /// [`ERROR_FRESH`] is not reported.
    node_error: Option<(String, Duration)>,
    eni_config_error: Option<(String, Duration)>,
    /// Completed lists (first sync and every re-list), for status.
    lists: u64,
}

/// One queued annotation write.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PodJob {
    Set {
        namespace: String,
        name: String,
        ip: String,
    },
    Clear {
        namespace: String,
        name: String,
        ip: String,
    },
}

/// The real [`Cluster`]: see the module docs.
pub struct KubeCluster {
    settings: KubeSettings,
    client: Client,
    cache: Arc<Mutex<Cache>>,
    pods: Option<mpsc::UnboundedSender<PodJob>>,
    events: mpsc::UnboundedSender<(String, String)>,
    last_event: Mutex<HashMap<String, Duration>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCluster")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Jittered exponential backoff from [`RETRY_BASE`] to [`RETRY_CAP`], for the watchers.
#[derive(Debug, Clone, Default)]
struct RetryBackoff {
    failures: u32,
}

impl Iterator for RetryBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        Some(retry_delay(self.failures))
    }
}

impl Backoff for RetryBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }
}

fn retry_delay(failures: u32) -> Duration {
    crate::ratelimit::Backoff {
        base: RETRY_BASE,
        cap: RETRY_CAP,
    }
    .delay(failures)
}

/// The node object as the engine sees it.
pub fn cluster_node(n: &K8sNode) -> ClusterNode {
    let capacity_pods = n
        .status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("pods"))
        .and_then(|q| q.0.trim().parse::<u32>().ok());
    ClusterNode {
        labels: n.metadata.labels.clone().unwrap_or_default(),
        annotations: n.metadata.annotations.clone().unwrap_or_default(),
        capacity_pods,
        unschedulable: n
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false),
    }
}

/// An `ENIConfig` object: `spec.subnet` first, then any of `spec.subnets` (the newer CRD's list) not already
/// named; `spec.securityGroups`.
pub fn eni_config(o: &DynamicObject) -> Option<EniConfig> {
    let name = o.metadata.name.clone()?;
    let spec = o.data.get("spec");
    let strings = |key: &str| -> Vec<String> {
        spec.and_then(|s| s.get(key))
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut subnets: Vec<String> = spec
        .and_then(|s| s.get("subnet"))
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(|s| vec![s.to_string()])
        .unwrap_or_default();
    for s in strings("subnets") {
        if !subnets.contains(&s) {
            subnets.push(s);
        }
    }
    Some(EniConfig {
        name,
        subnets,
        security_groups: strings("securityGroups"),
    })
}

/// The `ENIConfig` resource (cluster-scoped).
pub fn eni_config_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("crd.k8s.amazonaws.com", "v1alpha1", "ENIConfig"),
        "eniconfigs",
    )
}

impl KubeCluster {
    /// Builds the client and starts the watchers and writers on the current runtime. Nothing here waits for the
    /// API server.
    pub async fn start(
        settings: KubeSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<KubeCluster>, KubeError> {
        // A rustls built with two providers (ring here, aws-lc-rs from aws-sdk-ec2) has no default: name one.
        // Already installed (by another client) is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = settings.client_config().await?;
        let client = Client::try_from(config).map_err(|e| KubeError::Client(e.to_string()))?;
        let cache = Arc::new(Mutex::new(Cache::default()));
        let pods = if settings.annotate_pod_ip {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(annotation_worker(client.clone(), rx));
            Some(tx)
        } else {
            None
        };
        let (events, events_rx) = mpsc::unbounded_channel();
        tokio::spawn(event_worker(
            client.clone(),
            settings.clone(),
            Arc::clone(&clock),
            events_rx,
        ));
        tokio::spawn(watch_node(
            client.clone(),
            settings.node_name.clone(),
            Arc::clone(&cache),
            Arc::clone(&clock),
        ));
        tokio::spawn(watch_eni_configs(
            client.clone(),
            Arc::clone(&cache),
            Arc::clone(&clock),
        ));
        tracing::info!(node = %settings.node_name, endpoint = ?settings.endpoint,
            kubeconfig = ?settings.kubeconfig, required_by = ?settings.required_by,
            "Kubernetes API client started (node and ENIConfig watches)");
        Ok(Arc::new(KubeCluster {
            settings,
            client,
            cache,
            pods,
            events,
            last_event: Mutex::new(HashMap::new()),
            clock,
        }))
    }

    /// Waits (at most `timeout`) until the node and ENIConfig caches have completed their first list. Returns
    /// whether they have. Reads the local cache only.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let start = self.clock.now();
        loop {
            if self.api_status().synced {
                return true;
            }
            if self.clock.now().saturating_sub(start) >= timeout {
                return false;
            }
            self.clock.sleep(Duration::from_millis(100)).await;
        }
    }

    /// The cluster's EC2 schedule on this API ([`crate::schedule_lease`]), in the pod's namespace.
    pub fn ec2_schedule(&self) -> crate::schedule_lease::LeaseSchedule {
        crate::schedule_lease::LeaseSchedule::new(
            self.client.clone(),
            &self.settings.pod_namespace,
            Arc::clone(&self.clock),
        )
    }

    fn queue(&self, job: PodJob) {
        if let Some(tx) = &self.pods {
            if tx.send(job).is_err() {
                tracing::warn!("the pod annotation worker has stopped; annotation not written");
            }
        }
    }
}

#[async_trait]
impl Cluster for KubeCluster {
    async fn node(&self) -> Option<ClusterNode> {
        lock(&self.cache).node.clone()
    }

    async fn eni_config(&self, name: &str) -> Option<EniConfig> {
        lock(&self.cache).eni_configs.get(name).cloned()
    }

    fn api_status(&self) -> ApiStatus {
        let now = self.clock.now();
        let c = lock(&self.cache);
        let synced = c.node_synced && c.eni_configs_synced;
        let fresh = |e: &Option<(String, Duration)>| {
            e.as_ref()
                .filter(|(_, at)| now.saturating_sub(*at) < ERROR_FRESH)
                .map(|(m, _)| m.clone())
        };
        let mut detail = Vec::new();
        if let Some(e) = fresh(&c.node_error) {
            detail.push(format!("node watch: {e}"));
        }
        if let Some(e) = fresh(&c.eni_config_error) {
            detail.push(format!("ENIConfig watch: {e}"));
        }
        if detail.is_empty() {
            detail.push(match &c.node {
                Some(n) => format!(
                    "node {} (capacity.pods {}, {}), {} ENIConfig(s), {} list(s)",
                    self.settings.node_name,
                    n.capacity_pods.map_or("unset".into(), |p| p.to_string()),
                    if n.unschedulable {
                        "cordoned"
                    } else {
                        "schedulable"
                    },
                    c.eni_configs.len(),
                    c.lists
                ),
                None if c.node_synced => format!("node {} not found", self.settings.node_name),
                None => "listing".into(),
            });
        }
        ApiStatus {
            configured: true,
            synced,
            required_by: self.settings.required_by.clone(),
            detail: detail.join("; "),
        }
    }

    fn pod_ip_assigned(&self, namespace: &str, name: &str, ip: &str) {
        if namespace.is_empty() || name.is_empty() {
            return;
        }
        self.queue(PodJob::Set {
            namespace: namespace.into(),
            name: name.into(),
            ip: ip.into(),
        });
    }

    fn pod_ip_released(&self, namespace: &str, name: &str, ip: &str) {
        if namespace.is_empty() || name.is_empty() {
            return;
        }
        self.queue(PodJob::Clear {
            namespace: namespace.into(),
            name: name.into(),
            ip: ip.into(),
        });
    }

    fn warning_event(&self, reason: &str, message: &str) {
        let now = self.clock.now();
        {
            let mut last = lock(&self.last_event);
            if last
                .get(reason)
                .is_some_and(|t| now.saturating_sub(*t) < EVENT_INTERVAL)
            {
                return;
            }
            last.insert(reason.to_string(), now);
        }
        let _ = self.events.send((reason.to_string(), message.to_string()));
    }
}

/// Keeps `cache.node` equal to the node object (list, then watch; every re-list replaces it).
async fn watch_node(client: Client, name: String, cache: Arc<Mutex<Cache>>, clock: Arc<dyn Clock>) {
    let api: Api<K8sNode> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher::watcher(api, config)
        .backoff(RetryBackoff::default())
        .boxed();
    let mut listing: Option<ClusterNode> = None;
    while let Some(ev) = stream.next().await {
        let mut c = lock(&cache);
        match ev {
            Ok(Event::Init) => listing = None,
            Ok(Event::InitApply(n)) => listing = Some(cluster_node(&n)),
            Ok(Event::InitDone) => {
                c.node = listing.take();
                if !c.node_synced {
                    tracing::info!(node = %name, found = c.node.is_some(), "node cache synced");
                }
                c.node_synced = true;
                c.node_error = None;
                c.lists += 1;
            }
            Ok(Event::Apply(n)) => {
                c.node = Some(cluster_node(&n));
                c.node_error = None;
            }
            Ok(Event::Delete(_)) => c.node = None,
            Err(e) => {
                if c.node_error.is_none() {
                    tracing::warn!(error = %e, "node watch failed; retrying (the last known node stays in use)");
                }
                c.node_error = Some((e.to_string(), clock.now()));
            }
        }
    }
}

/// Keeps `cache.eni_configs` equal to the cluster's `ENIConfig`s.
async fn watch_eni_configs(client: Client, cache: Arc<Mutex<Cache>>, clock: Arc<dyn Clock>) {
    let api: Api<DynamicObject> = Api::all_with(client, &eni_config_resource());
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .backoff(RetryBackoff::default())
        .boxed();
    let mut listing = BTreeMap::new();
    while let Some(ev) = stream.next().await {
        let mut c = lock(&cache);
        match ev {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(o)) => {
                if let Some(cfg) = eni_config(&o) {
                    listing.insert(cfg.name.clone(), cfg);
                }
            }
            Ok(Event::InitDone) => {
                c.eni_configs = std::mem::take(&mut listing);
                c.eni_configs_synced = true;
                c.eni_config_error = None;
                c.lists += 1;
            }
            Ok(Event::Apply(o)) => {
                if let Some(cfg) = eni_config(&o) {
                    c.eni_configs.insert(cfg.name.clone(), cfg);
                }
                c.eni_config_error = None;
            }
            Ok(Event::Delete(o)) => {
                if let Some(n) = &o.metadata.name {
                    c.eni_configs.remove(n);
                }
            }
            // No ENIConfig CRD in the cluster: there are no ENIConfigs (a fact, not a failure to wait for).
            Err(watcher::Error::InitialListFailed(e)) if not_found(&e) => {
                if !c.eni_configs_synced || !c.eni_configs.is_empty() {
                    tracing::info!("no ENIConfig CRD (crd.k8s.amazonaws.com/v1alpha1 eniconfigs) in the cluster");
                }
                c.eni_configs.clear();
                c.eni_configs_synced = true;
                c.eni_config_error = None;
            }
            Err(e) => {
                if c.eni_config_error.is_none() {
                    tracing::warn!(error = %e, "ENIConfig watch failed; retrying");
                }
                c.eni_config_error = Some((e.to_string(), clock.now()));
            }
        }
    }
}

/// Whether a failed write may succeed if tried again.
fn retriable(e: &::kube::Error) -> bool {
    match e {
        ::kube::Error::Api(s) => s.code == 409 || s.code == 429 || s.code >= 500,
        _ => true,
    }
}

fn not_found(e: &::kube::Error) -> bool {
    matches!(e, ::kube::Error::Api(s) if s.code == 404)
}

async fn set_annotation(api: &Api<Pod>, name: &str, ip: &str) -> Result<(), ::kube::Error> {
    let patch = serde_json::json!({"metadata": {"annotations": {POD_IPS_ANNOTATION: ip}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// Clears the annotation if it still holds `ip`, patching against the resourceVersion read.
async fn clear_annotation(api: &Api<Pod>, name: &str, ip: &str) -> Result<(), ::kube::Error> {
    let pod = api.get(name).await?;
    let current = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POD_IPS_ANNOTATION));
    if current.map(String::as_str) != Some(ip) {
        return Ok(());
    }
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": pod.metadata.resource_version,
        "annotations": {POD_IPS_ANNOTATION: ""},
    }});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// Writes the queued annotations in order, each retried (see the module docs).
async fn annotation_worker(client: Client, mut rx: mpsc::UnboundedReceiver<PodJob>) {
    while let Some(job) = rx.recv().await {
        let (namespace, name) = match &job {
            PodJob::Set {
                namespace, name, ..
            }
            | PodJob::Clear {
                namespace, name, ..
            } => (namespace.clone(), name.clone()),
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        for attempt in 1..=WRITE_ATTEMPTS {
            let result = match &job {
                PodJob::Set { ip, .. } => set_annotation(&api, &name, ip).await,
                PodJob::Clear { ip, .. } => clear_annotation(&api, &name, ip).await,
            };
            match result {
                Ok(()) => {
                    tracing::debug!(pod = %format!("{namespace}/{name}"), ?job, "pod annotation written");
                    break;
                }
                Err(e) if not_found(&e) => break,
                Err(e) if retriable(&e) && attempt < WRITE_ATTEMPTS => {
                    tokio::time::sleep(retry_delay(attempt)).await;
                }
                Err(e) => {
                    tracing::warn!(pod = %format!("{namespace}/{name}"), error = %e, attempt,
                        "cannot write the {POD_IPS_ANNOTATION} annotation; giving up");
                    break;
                }
            }
        }
    }
}

/// The Event object for a Warning about the aws-node pod.
pub fn warning(
    settings: &KubeSettings,
    pod: &str,
    reason: &str,
    message: &str,
    wall: Duration,
) -> CoreEvent {
    let time =
        k8s_openapi::jiff::Timestamp::from_second(i64::try_from(wall.as_secs()).unwrap_or(0))
            .ok()
            .map(Time);
    CoreEvent {
        metadata: ObjectMeta {
            generate_name: Some(format!("{pod}.")),
            namespace: Some(settings.pod_namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.to_string()),
            namespace: Some(settings.pod_namespace.clone()),
            ..ObjectReference::default()
        },
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        type_: Some("Warning".into()),
        count: Some(1),
        first_timestamp: time.clone(),
        last_timestamp: time,
        reporting_component: Some("aws-node".into()),
        reporting_instance: Some(settings.node_name.clone()),
        source: Some(k8s_openapi::api::core::v1::EventSource {
            component: Some("aws-node".into()),
            host: Some(settings.node_name.clone()),
        }),
        ..CoreEvent::default()
    }
}

/// Posts the queued Warning events (a few attempts each; events are best effort).
async fn event_worker(
    client: Client,
    settings: KubeSettings,
    clock: Arc<dyn Clock>,
    mut rx: mpsc::UnboundedReceiver<(String, String)>,
) {
    let api: Api<CoreEvent> = Api::namespaced(client, &settings.pod_namespace);
    while let Some((reason, message)) = rx.recv().await {
        let Some(pod) = &settings.pod_name else {
            tracing::debug!(reason, "MY_POD_NAME is not set: no Kubernetes event");
            continue;
        };
        let ev = warning(&settings, pod, &reason, &message, clock.wall());
        for attempt in 1..=3 {
            match api.create(&PostParams::default(), &ev).await {
                Ok(_) => break,
                Err(e) if attempt < 3 && retriable(&e) => {
                    tokio::time::sleep(retry_delay(attempt)).await
                }
                Err(e) => {
                    tracing::warn!(reason, error = %e, "cannot create the Kubernetes event");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::env::env_map as env;

    #[test]
    fn no_configuration_is_fine_unless_a_setting_needs_the_api() {
        assert_eq!(
            KubeSettings::from_env(&env(&[]), false, vec![]).ok(),
            Some(None)
        );
        let err = KubeSettings::from_env(&env(&[]), true, vec![]).expect_err("needed");
        assert!(err.to_string().contains("ANNOTATE_POD_IP"), "{err}");
        let err = KubeSettings::from_env(&env(&[("KUBECONFIG", "/k")]), true, vec![])
            .expect_err("no node");
        assert!(err.to_string().contains("MY_NODE_NAME"), "{err}");
        let s = KubeSettings::from_env(
            &env(&[
                ("KUBECONFIG", "/k"),
                ("MY_NODE_NAME", "n1"),
                ("CLUSTER_ENDPOINT", "https://h:6443"),
            ]),
            false,
            vec!["AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG".into()],
        )
        .expect("settings")
        .expect("configured");
        assert_eq!(s.node_name, "n1");
        assert_eq!(s.pod_namespace, "kube-system");
        assert_eq!(s.endpoint.as_deref(), Some("https://h:6443"));
        assert_eq!(
            s.required_by,
            vec!["AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG".to_string()]
        );
    }

    #[test]
    fn eni_configs_keep_spec_subnet_first_and_accept_a_list() {
        let o: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "crd.k8s.amazonaws.com/v1alpha1", "kind": "ENIConfig",
            "metadata": {"name": "us-east-1a"},
            "spec": {"subnet": "subnet-a", "subnets": ["subnet-b", "subnet-a"], "securityGroups": ["sg-1", "sg-2"]}
        }))
        .expect("object");
        let cfg = eni_config(&o).expect("named");
        assert_eq!(cfg.subnets, vec!["subnet-a", "subnet-b"]);
        assert_eq!(cfg.security_groups, vec!["sg-1", "sg-2"]);
        let old: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "crd.k8s.amazonaws.com/v1alpha1", "kind": "ENIConfig",
            "metadata": {"name": "old"}, "spec": {"subnet": "subnet-x"}
        }))
        .expect("object");
        assert_eq!(eni_config(&old).expect("named").subnets, vec!["subnet-x"]);
    }

    #[test]
    fn the_node_object_gives_capacity_and_cordon() {
        let n: K8sNode = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "labels": {"a": "b"}},
            "spec": {"unschedulable": true},
            "status": {"capacity": {"pods": "17", "cpu": "2"}}
        }))
        .expect("node");
        let c = cluster_node(&n);
        assert_eq!(c.capacity_pods, Some(17));
        assert!(c.unschedulable);
        assert_eq!(c.labels.get("a").map(String::as_str), Some("b"));
        let bare: K8sNode =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "n2"}})).expect("node");
        assert_eq!(cluster_node(&bare), ClusterNode::default());
    }

    #[test]
    fn a_warning_names_the_pod_and_the_reason() {
        let s = KubeSettings {
            node_name: "n1".into(),
            pod_namespace: "kube-system".into(),
            ..KubeSettings::default()
        };
        let ev = warning(
            &s,
            "aws-node-abc",
            REASON_MISSING_IAM,
            "no",
            Duration::from_secs(1_700_000_000),
        );
        assert_eq!(ev.involved_object.name.as_deref(), Some("aws-node-abc"));
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert_eq!(ev.reason.as_deref(), Some(REASON_MISSING_IAM));
        assert!(ev.first_timestamp.is_some());
    }
}
