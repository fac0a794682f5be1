//! The `rpc.CNIBackend` service: what `aws-cni` calls for every ADD and DEL.
//!
//! Wire-compatible with the anchor's daemon, with two deliberate differences: any `ClientVersion` is accepted
//! (the anchor refuses a plugin of another build, which turns every rolling upgrade into failed ADDs), and a
//! failed ADD says why in `FailureReason`/`FailureMessage` (tags 100+, ignored by the anchor's plugin).
//!
//! An ADD with no address free waits for one on its way (see [`crate::engine`]) up to `AWS_CNI_ADD_WAIT_SECONDS`,
//! and never past the caller's own deadline: when the request carries `grpc-timeout` (our plugin sets it; so
//! does any gRPC client with a deadline), the wait ends [`crate::engine::admission::ADD_DEADLINE_MARGIN`] before it.
//!
//! Both calls answer only once their change is in the checkpoint ([`crate::engine::checkpoint`], group commit), so an ADD
//! the plugin saw succeed survives any crash of ipamd, and so does a DEL. A DEL whose write fails still releases
//! the address in memory and says so (`INTERNAL`); the plugin then tears the pod down itself.
//!
//! A DEL may offer the pod's host veth (`HostVethName`/`HostVethIfIndex`, tags 100+): once the address is
//! released, the offer goes to the [`crate::reaper`], and `VethDeferred` tells the plugin whether the reaper took
//! it (else the plugin deletes the veth itself, as it does with the anchor's ipamd).

use std::sync::Arc;
use std::time::Duration;

use aws_cni_proto::{
    AddNetworkReply, AddNetworkRequest, CniBackend, DelNetworkReply, DelNetworkRequest,
    FailureReason, IpAllocationMetadata,
};
use tonic::{Request, Response, Status};

use crate::core::datastore::{Allocation, IpamKey, PodMeta};
use crate::core::family::V6;
use crate::engine::admission::{AddSpans, ADD_DEADLINE_MARGIN};
use crate::engine::Node;
use crate::metrics::Metrics;
use crate::reaper::{Reaper, VethOffer};

/// Longest pod name Kubernetes allows (a DNS subdomain).
pub const MAX_POD_NAME_LEN: usize = 253;
/// Longest namespace name Kubernetes allows (a DNS label).
pub const MAX_POD_NAMESPACE_LEN: usize = 63;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct CniService {
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    reaper: Option<Reaper>,
}

impl CniService {
    /// A service that never takes a DEL's veth (the plugin deletes it itself).
    pub fn new(node: Arc<Node>, metrics: Arc<Metrics>) -> CniService {
        CniService {
            node,
            metrics,
            reaper: None,
        }
    }

    /// Hands the veths DELs offer to `reaper`.
    pub fn with_reaper(mut self, reaper: Reaper) -> CniService {
        self.reaper = Some(reaper);
        self
    }

    /// Whether the reaper took the host veth the DEL offered (false when it offered none).
    fn defer_veth(&self, req: &DelNetworkRequest) -> bool {
        if req.host_veth_name.is_empty() {
            return false;
        }
        let Some(reaper) = &self.reaper else {
            return false;
        };
        let offer = VethOffer {
            name: req.host_veth_name.clone(),
            index: req.host_veth_if_index,
            netns: (req.host_netns_ino != 0).then_some(datapath::NetnsId {
                dev: req.host_netns_dev,
                ino: req.host_netns_ino,
            }),
        };
        match reaper.offer(&offer) {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(container = %req.container_id, veth = %offer.name, reason = %e,
                    "DelNetwork: the plugin deletes the veth itself");
                false
            }
        }
    }
}

fn metadata(a: &Allocation) -> IpAllocationMetadata {
    IpAllocationMetadata {
        i_pv4_addr: a.ip.to_string(),
        i_pv6_addr: String::new(),
        device_number: i32::try_from(a.device_number).unwrap_or(i32::MAX),
        route_table_id: i32::try_from(a.route_table).unwrap_or(i32::MAX),
    }
}

/// IPv6 mode's reply, as the anchor's: `IPv6Addr` set, `IPv4Addr` empty; the primary ENI's device 0 and table
/// main (254). The plugin puts it on the pod as a /128 with its default route via fe80::1.
fn metadata6(a: &Allocation<V6>) -> IpAllocationMetadata {
    IpAllocationMetadata {
        i_pv4_addr: String::new(),
        i_pv6_addr: a.ip.to_string(),
        device_number: i32::try_from(a.device_number).unwrap_or(i32::MAX),
        route_table_id: i32::try_from(a.route_table).unwrap_or(i32::MAX),
    }
}

/// One assignment, whichever the IP version: its address (for logs), ENI, and the reply's metadata.
struct Granted {
    ip: String,
    eni_id: String,
    metadata: IpAllocationMetadata,
}

impl CniService {
    async fn add_any(
        &self,
        key: &IpamKey,
        meta: &PodMeta,
        wait: Duration,
        spans: &mut AddSpans,
    ) -> Result<Granted, crate::engine::admission::AddFailure> {
        if self.node.ipv6() {
            let a = self.node.add6_durable(key, meta).await?;
            return Ok(Granted {
                ip: a.ip.to_string(),
                metadata: metadata6(&a),
                eni_id: a.eni_id,
            });
        }
        let a = self.node.add_durable_timed(key, meta, wait, spans).await?;
        Ok(Granted {
            ip: a.ip.to_string(),
            metadata: metadata(&a),
            eni_id: a.eni_id,
        })
    }

    async fn del_any(
        &self,
        key: &IpamKey,
    ) -> Result<Option<Granted>, crate::engine::checkpoint::CheckpointError> {
        if self.node.ipv6() {
            return Ok(self.node.del6_durable(key).await?.map(|a| Granted {
                ip: a.ip.to_string(),
                metadata: metadata6(&a),
                eni_id: a.eni_id,
            }));
        }
        Ok(self.node.del_durable(key).await?.map(|a| Granted {
            ip: a.ip.to_string(),
            metadata: metadata(&a),
            eni_id: a.eni_id,
        }))
    }
}

/// The caller's deadline from the `grpc-timeout` header (`<digits><H|M|S|m|u|n>`), if it sent one.
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How long an ADD may wait for an address: the configured bound, cut to end a margin before the caller's
/// deadline when it sent one.
fn add_wait_bound(configured: Duration, caller: Option<Duration>) -> Duration {
    match caller {
        Some(d) => configured.min(d.saturating_sub(ADD_DEADLINE_MARGIN)),
        None => configured,
    }
}

fn key_of(network_name: &str, container_id: &str, if_name: &str) -> Result<IpamKey, String> {
    if container_id.is_empty() {
        return Err("ContainerID is empty".into());
    }
    if if_name.is_empty() {
        return Err("IfName is empty".into());
    }
    Ok(IpamKey {
        network_name: if network_name.is_empty() {
            "aws-cni".to_string()
        } else {
            network_name.to_string()
        },
        container_id: container_id.to_string(),
        if_name: if_name.to_string(),
    })
}

#[tonic::async_trait]
impl CniBackend for CniService {
    async fn add_network(
        &self,
        request: Request<AddNetworkRequest>,
    ) -> Result<Response<AddNetworkReply>, Status> {
        let clock = Arc::clone(self.node.clock());
        let started = clock.now();
        self.metrics.add_ip_req_count.inc();
        let wait = add_wait_bound(self.node.knobs().add_wait, grpc_timeout(request.metadata()));
        let req = request.into_inner();
        let key = match key_of(&req.network_name, &req.container_id, &req.if_name) {
            Ok(k) => k,
            Err(msg) => {
                return Ok(Response::new(AddNetworkReply {
                    success: false,
                    failure_reason: FailureReason::InvalidRequest as i32,
                    failure_message: msg,
                    ..Default::default()
                }))
            }
        };
        // Kubernetes bounds both (a DNS subdomain, a DNS label); anything longer is no pod, and would make every
        // checkpoint write carry it.
        if req.k8s_pod_name.len() > MAX_POD_NAME_LEN
            || req.k8s_pod_namespace.len() > MAX_POD_NAMESPACE_LEN
        {
            return Ok(Response::new(AddNetworkReply {
                success: false,
                failure_reason: FailureReason::InvalidRequest as i32,
                failure_message: format!(
                    "K8S_POD_NAME may have at most {MAX_POD_NAME_LEN} bytes and K8S_POD_NAMESPACE at most \
                     {MAX_POD_NAMESPACE_LEN} (got {} and {})",
                    req.k8s_pod_name.len(),
                    req.k8s_pod_namespace.len()
                ),
                ..Default::default()
            }));
        }
        let meta = PodMeta {
            namespace: req.k8s_pod_namespace.clone(),
            name: req.k8s_pod_name.clone(),
        };
        // A setting that needs the Kubernetes API (ANNOTATE_POD_IP) holds new pods until its caches first synced;
        // a pod ipamd already knows (a repeated ADD, a pod restored from the checkpoint) never waits for it.
        let api = self.node.api_status();
        if api.blocks_new_pods() && !self.node.knows(&key) {
            return Ok(Response::new(AddNetworkReply {
                success: false,
                failure_reason: FailureReason::NotReady as i32,
                failure_message: format!(
                    "ipamd is waiting for the Kubernetes API: {}",
                    api.describe()
                ),
                ..Default::default()
            }));
        }
        let mut spans = AddSpans::default();
        let reply = match self.add_any(&key, &meta, wait, &mut spans).await {
            Ok(a) => {
                self.node
                    .pod_ip_assigned(&meta.namespace, &meta.name, &a.ip.to_string());
                // The spans are what the benchmark's breakdown reads (assignment, checkpoint until durable).
                tracing::info!(
                    pod = %format!("{}/{}", meta.namespace, meta.name),
                    container = %key.container_id,
                    ip = %a.ip,
                    eni = %a.eni_id,
                    elapsed_us = clock.now().saturating_sub(started).as_micros() as u64,
                    assign_us = spans.assign.as_micros() as u64,
                    durable_us = spans.durable.as_micros() as u64,
                    "AddNetwork"
                );
                AddNetworkReply {
                    success: true,
                    ip_allocation_metadata: vec![a.metadata],
                    // The anchor leaves the IPv4 fields empty in IPv6 mode.
                    vp_cv4_cid_rs: if self.node.ipv6() {
                        Vec::new()
                    } else {
                        self.node.vpc_cidrs()
                    },
                    eniid: a.eni_id,
                    ..Default::default()
                }
            }
            Err(f) => {
                self.metrics.no_available_ip_addresses.inc();
                self.metrics
                    .add_failures
                    .with_label_values(&[f.reason.as_str_name()])
                    .inc();
                tracing::warn!(
                    pod = %format!("{}/{}", meta.namespace, meta.name),
                    container = %key.container_id,
                    reason = f.reason.as_str_name(),
                    "AddNetwork failed: {}", f.message
                );
                AddNetworkReply {
                    success: false,
                    failure_reason: f.reason as i32,
                    failure_message: f.message,
                    ..Default::default()
                }
            }
        };
        self.metrics
            .add_latency_seconds
            .observe(clock.now().saturating_sub(started).as_secs_f64());
        Ok(Response::new(reply))
    }

    async fn del_network(
        &self,
        request: Request<DelNetworkRequest>,
    ) -> Result<Response<DelNetworkReply>, Status> {
        let clock = Arc::clone(self.node.clock());
        let started = clock.now();
        let req = request.into_inner();
        // The label takes the reasons plugins send; anything else a client makes up is counted as "other", so
        // the number of series stays bounded whatever callers send.
        let reason = match req.reason.as_str() {
            "" | "PodDeleted" => "PodDeleted",
            "SetupNSFailed" => "SetupNSFailed",
            _ => "other",
        };
        self.metrics
            .del_ip_req_count
            .with_label_values(&[reason])
            .inc();
        let key = match key_of(&req.network_name, &req.container_id, &req.if_name) {
            Ok(k) => k,
            Err(msg) => {
                return Ok(Response::new(DelNetworkReply {
                    success: false,
                    failure_reason: FailureReason::InvalidRequest as i32,
                    failure_message: msg,
                    ..Default::default()
                }))
            }
        };
        let released = match self.del_any(&key).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(container = %key.container_id, error = %e, "DelNetwork: checkpoint not written");
                return Ok(Response::new(DelNetworkReply {
                    success: false,
                    failure_reason: FailureReason::Internal as i32,
                    failure_message: format!("the address was released but {e}"),
                    ..Default::default()
                }));
            }
        };
        // A veth is taken only from a DEL that released an address: a DEL for a key ipamd holds nothing for (a
        // repeated or stale DEL, a caller naming another pod's veth) gets nothing deleted on its behalf.
        if let Some(a) = &released {
            self.node
                .pod_ip_released(&req.k8s_pod_namespace, &req.k8s_pod_name, &a.ip.to_string());
        }
        let veth_deferred = released.is_some() && self.defer_veth(&req);
        tracing::info!(
            pod = %format!("{}/{}", req.k8s_pod_namespace, req.k8s_pod_name),
            container = %key.container_id,
            reason,
            ip = ?released.as_ref().map(|a| a.ip.as_str()),
            veth_deferred,
            "DelNetwork"
        );
        self.metrics
            .del_latency_seconds
            .observe(clock.now().saturating_sub(started).as_secs_f64());
        // Unknown key: a repeated DEL, or a pod ipamd never saw. Success with no IP, so DEL stays idempotent.
        Ok(Response::new(DelNetworkReply {
            success: true,
            ip_allocation_metadata: released.into_iter().map(|a| a.metadata).collect(),
            veth_deferred,
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::engine::NodeDeps;
    use crate::host::fakes::FakeHost;
    use crate::reaper::{ReaperConfig, ReaperMetrics};
    use datapath::NetnsId;

    const NS: NetnsId = NetnsId {
        dev: 4,
        ino: 4026532000,
    };

    async fn node() -> Arc<Node> {
        let (sim, clock) = ec2_sim::on_manual_clock("m5.large", |_| {}).await;
        let deps = NodeDeps {
            ec2: Arc::new(sim.clone()),
            imds: Arc::new(sim),
            hostnet: Arc::new(FakeHost::default()),
            clock: Arc::new(clock),
            cluster: Arc::new(crate::kube::NoCluster),
        };
        let n = Node::start(deps, Config::default(), None)
            .await
            .expect("init");
        n.fill().await.expect("fill");
        n
    }

    fn add(container: &str) -> AddNetworkRequest {
        AddNetworkRequest {
            container_id: container.into(),
            if_name: "eth0".into(),
            network_name: "aws-cni".into(),
            k8s_pod_name: container.into(),
            k8s_pod_namespace: "default".into(),
            ..Default::default()
        }
    }

    fn del(container: &str, veth: Option<(&str, u32)>, netns: NetnsId) -> DelNetworkRequest {
        let mut r = DelNetworkRequest {
            container_id: container.into(),
            if_name: "eth0".into(),
            network_name: "aws-cni".into(),
            ..Default::default()
        };
        if let Some((name, index)) = veth {
            r.host_veth_name = name.into();
            r.host_veth_if_index = index;
            r.host_netns_dev = netns.dev;
            r.host_netns_ino = netns.ino;
        }
        r
    }

    async fn del_reply(svc: &CniService, req: DelNetworkRequest) -> DelNetworkReply {
        svc.del_network(Request::new(req))
            .await
            .expect("DelNetwork")
            .into_inner()
    }

    #[tokio::test]
    async fn del_defers_the_offered_veth_only_when_the_reaper_takes_it() {
        let node = node().await;
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let links = Arc::new(FakeHost::default());
        links.add(7, "eniaaaaaaaaaaa");
        links.add(8, "enibbbbbbbbbbb");
        let rm = ReaperMetrics::unregistered();
        let (reaper, task) = Reaper::spawn(
            ReaperConfig {
                veth_prefix: "eni".into(),
                netns: NS,
                capacity: 8,
                delay: Duration::ZERO,
            },
            links.clone(),
            rm.clone(),
        );
        let svc = CniService::new(Arc::clone(&node), Arc::clone(&metrics)).with_reaper(reaper);
        for c in ["c1", "c2", "c3"] {
            let r = svc.add_network(Request::new(add(c))).await.expect("ADD");
            assert!(r.into_inner().success);
        }

        // Offered from our namespace: taken, the address released as always.
        let r = del_reply(&svc, del("c1", Some(("eniaaaaaaaaaaa", 7)), NS)).await;
        assert!(r.success && r.veth_deferred, "{r:?}");
        assert_eq!(r.ip_allocation_metadata.len(), 1);
        // Nothing offered (the anchor's plugin, or no veth found): nothing deferred.
        let r = del_reply(&svc, del("c2", None, NS)).await;
        assert!(r.success && !r.veth_deferred, "{r:?}");
        // Offered from another namespace: refused, the plugin deletes it; the address is released all the same.
        let other = NetnsId { dev: 4, ino: 1 };
        let r = del_reply(&svc, del("c3", Some(("enibbbbbbbbbbb", 8)), other)).await;
        assert!(r.success && !r.veth_deferred, "{r:?}");
        assert_eq!(r.ip_allocation_metadata.len(), 1);
        // A repeated DEL of c1 (the veth is still there or already gone) is still a success.
        let r = del_reply(&svc, del("c1", Some(("eniaaaaaaaaaaa", 7)), NS)).await;
        assert!(r.success && r.ip_allocation_metadata.is_empty(), "{r:?}");

        let report = task.shutdown(Duration::from_secs(5)).await;
        assert!(report.drained && report.abandoned == 0);
        assert!(!links.exists(7), "the taken veth was not deleted");
        assert!(links.exists(8), "a refused veth was deleted");
        assert_eq!(rm.count("refused"), 1);
    }

    #[tokio::test]
    async fn without_a_reaper_nothing_is_deferred() {
        let node = node().await;
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let svc = CniService::new(node, metrics);
        let r = svc.add_network(Request::new(add("c1"))).await.expect("ADD");
        assert!(r.into_inner().success);
        let r = del_reply(&svc, del("c1", Some(("eniaaaaaaaaaaa", 7)), NS)).await;
        assert!(r.success && !r.veth_deferred, "{r:?}");
    }

    fn md(v: &str) -> tonic::metadata::MetadataMap {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("grpc-timeout", v.parse().expect("ascii"));
        m
    }

    #[test]
    fn grpc_timeout_units_parse_and_junk_is_ignored() {
        assert_eq!(grpc_timeout(&md("10S")), Some(Duration::from_secs(10)));
        assert_eq!(
            grpc_timeout(&md("9500m")),
            Some(Duration::from_millis(9500))
        );
        assert_eq!(grpc_timeout(&md("2M")), Some(Duration::from_secs(120)));
        assert_eq!(grpc_timeout(&md("1H")), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(&md("7u")), Some(Duration::from_micros(7)));
        assert_eq!(grpc_timeout(&md("7n")), Some(Duration::from_nanos(7)));
        for junk in ["S", "10", "10s", "1.5S", "1234567890S"] {
            assert_eq!(grpc_timeout(&md(junk)), None, "{junk}");
        }
        assert_eq!(grpc_timeout(&tonic::metadata::MetadataMap::new()), None);
    }

    #[test]
    fn the_wait_ends_a_margin_before_the_callers_deadline() {
        let eight = Duration::from_secs(8);
        assert_eq!(add_wait_bound(eight, None), eight);
        assert_eq!(
            add_wait_bound(eight, Some(Duration::from_secs(10))),
            eight,
            "the configured bound is the smaller"
        );
        assert_eq!(
            add_wait_bound(eight, Some(Duration::from_secs(5))),
            Duration::from_secs(5) - ADD_DEADLINE_MARGIN
        );
        assert_eq!(
            add_wait_bound(eight, Some(Duration::from_millis(500))),
            Duration::ZERO,
            "a deadline inside the margin: no waiting at all"
        );
    }
}
