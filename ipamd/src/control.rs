//! The `rpc.IpamdControl` service (ours): readiness for CNI STATUS, allocation listing for CHECK and
//! `ipamd status`, and garbage collection for CNI GC.
//!
//! Readiness means "an ADD would get an address now, or the pool can still grow to serve it": a free address
//! (not cooling down), or room to add addresses (an ENI with free slots, or a free ENI slot) below max-pods.
//! Not ready says why, with the same reasons an ADD would get.
//!
//! GC runs in the daemon, under one datastore lock per release, so a pod ADDed while the collection runs is never
//! released: only keys absent from the runtime's list of valid attachments are.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use aws_cni_proto::{
    Allocation as PbAllocation, EniStatus, FailureReason, GcReply, GcRequest, IpamdControl,
    ListAllocationsReply, ListAllocationsRequest, PoolCounts, StatusReply, StatusRequest,
};
use tonic::{Request, Response, Status};

use crate::core::datastore::{Allocation, IpamKey, PodMeta};
use crate::core::family::IpVersion;
use crate::engine::Node;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct ControlService {
    node: Arc<Node>,
}

impl ControlService {
    pub fn new(node: Arc<Node>) -> ControlService {
        ControlService { node }
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Whether the node can serve an ADD, and if not, why.
pub fn readiness(node: &Node) -> (bool, FailureReason, String, PoolCounts) {
    let s = node.stats();
    let p = node.policy();
    let ds = node.datastore();
    let counts = PoolCounts {
        total: to_u32(s.total),
        assigned: to_u32(s.assigned),
        cooldown: to_u32(s.cooldown),
        available: to_u32(s.available),
        enis: to_u32(s.enis),
        max_enis: p.max_enis,
        max_pods: p.max_pods,
        ips_per_eni: p.ips_per_eni,
    };
    let api = node.api_status();
    if api.blocks_new_pods() {
        let msg = format!("Kubernetes API: {}", api.describe());
        return (false, FailureReason::NotReady, msg, counts);
    }
    if s.available > 0 {
        let msg = format!("{} address(es) free", s.available);
        return (true, FailureReason::FailureUnspecified, msg, counts);
    }
    if counts.total >= p.max_pods {
        let reason = if s.cooldown > 0 {
            FailureReason::AllFreeIpsInCooldown
        } else {
            FailureReason::MaxPodsReached
        };
        let msg = format!(
            "node holds {} addresses, its max-pods limit ({}); {} cooling down",
            counts.total, p.max_pods, s.cooldown
        );
        return (false, reason, msg, counts);
    }
    // Custom networking's primary ENI takes no pods: its room is not the pool's.
    let room_on_enis = ds
        .enis()
        .any(|e| !e.excluded_for_pods && to_u32(e.ip_count()) < p.ips_per_eni);
    if !room_on_enis && counts.enis < p.max_enis {
        if let Some(problem) = node.eni_config_blocked() {
            let msg =
                format!("no free address and custom networking cannot attach a new ENI: {problem}");
            return (false, FailureReason::EniConfigInvalid, msg, counts);
        }
    }
    if room_on_enis || counts.enis < p.max_enis {
        let msg = "no free address yet; the pool is growing".to_string();
        return (true, FailureReason::FailureUnspecified, msg, counts);
    }
    if s.cooldown > 0 {
        let msg = format!(
            "all {} free address(es) are cooling down and every ENI is attached and full",
            s.cooldown
        );
        return (false, FailureReason::AllFreeIpsInCooldown, msg, counts);
    }
    let msg = format!(
        "all {} ENIs are attached and full ({} addresses, all assigned)",
        p.max_enis, counts.total
    );
    (false, FailureReason::NodeAtEniLimit, msg, counts)
}

/// One `Gc` request: the network it cleans and the attachments (container, interface) that stay.
struct Gc<'a> {
    network_name: &'a str,
    valid: &'a HashSet<(String, String)>,
}

impl Gc<'_> {
    /// Releases (with `del`) every assignment of the network that is not a valid attachment, and lists it in
    /// `reply.released`; the valid ones go to `reply.kept`. Run once per datastore; `what` names its addresses
    /// in the log.
    fn sweep<V: IpVersion>(
        &self,
        assignments: Vec<(IpamKey, PodMeta, Allocation<V>)>,
        del: impl Fn(&IpamKey) -> Option<Allocation<V>>,
        what: &str,
        reply: &mut GcReply,
    ) where
        V::Addr: Into<IpAddr>,
    {
        for (key, meta, alloc) in assignments {
            if key.network_name != self.network_name {
                continue;
            }
            if self
                .valid
                .contains(&(key.container_id.clone(), key.if_name.clone()))
            {
                reply.kept.push(pb(&key, &meta, &alloc));
            } else if let Some(a) = del(&key) {
                tracing::info!(container = %key.container_id, ip = %a.ip, "GC released a stale {what}");
                reply.released.push(pb(&key, &meta, &a));
            }
        }
    }
}

/// One assignment as the control service lists it: `IPv4Addr` set, or in IPv6 mode `IPv6Addr` (the other empty).
fn pb<V: IpVersion>(key: &IpamKey, meta: &PodMeta, a: &Allocation<V>) -> PbAllocation
where
    V::Addr: Into<IpAddr>,
{
    let mut out = PbAllocation {
        network_name: key.network_name.clone(),
        container_id: key.container_id.clone(),
        if_name: key.if_name.clone(),
        device_number: i32::try_from(a.device_number).unwrap_or(i32::MAX),
        route_table_id: i32::try_from(a.route_table).unwrap_or(i32::MAX),
        eniid: a.eni_id.clone(),
        k8s_pod_namespace: meta.namespace.clone(),
        k8s_pod_name: meta.name.clone(),
        ..PbAllocation::default()
    };
    match a.ip.into() {
        IpAddr::V4(ip) => out.i_pv4_addr = ip.to_string(),
        IpAddr::V6(ip) => out.i_pv6_addr = ip.to_string(),
    }
    out
}

/// Every assignment of both IP versions, as the control service lists them.
fn all_allocations(node: &Node) -> Vec<(IpamKey, PbAllocation)> {
    let mut out: Vec<(IpamKey, PbAllocation)> = node
        .datastore()
        .assignments()
        .iter()
        .map(|(k, m, a)| (k.clone(), pb(k, m, a)))
        .collect();
    out.extend(
        node.datastore6()
            .assignments()
            .iter()
            .map(|(k, m, a)| (k.clone(), pb(k, m, a))),
    );
    out
}

#[tonic::async_trait]
impl IpamdControl for ControlService {
    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        let (ready, reason, message, counts) = readiness(&self.node);
        let meta = self.node.metadata();
        let ds = self.node.datastore();
        let now = self.node.clock().now();
        let mut enis: Vec<EniStatus> = ds
            .enis()
            .map(|e| {
                let total = to_u32(e.ip_count());
                let assigned = to_u32(e.assigned_count());
                let cooldown = to_u32(e.cooldown_count(now, ds.cooldown()));
                EniStatus {
                    eniid: e.id.clone(),
                    device_number: i32::try_from(e.device_number).unwrap_or(i32::MAX),
                    is_primary: e.is_primary,
                    total,
                    assigned,
                    cooldown,
                    available: total.saturating_sub(assigned + cooldown),
                    prefixes: e.prefixes().map(|p| p.to_string()).collect(),
                }
            })
            .collect();
        if self.node.ipv6() {
            // IPv6 mode: the primary ENI and its /80 (its uncarved addresses count as free).
            let ds6 = self.node.datastore6();
            let s6 = ds6.stats(now);
            enis = ds6
                .enis()
                .map(|e| {
                    let assigned = to_u32(e.assigned_count());
                    let cooldown = to_u32(e.cooldown_count(now, ds6.cooldown()));
                    EniStatus {
                        eniid: e.id.clone(),
                        device_number: i32::try_from(e.device_number).unwrap_or(i32::MAX),
                        is_primary: e.is_primary,
                        total: to_u32(s6.total),
                        assigned,
                        cooldown,
                        available: to_u32(s6.available),
                        prefixes: e.prefixes().map(|p| p.to_string()).collect(),
                    }
                })
                .collect();
        }
        let (decision, error) = self.node.last_decision();
        let snat = self.node.snat_report();
        let cn = self.node.eni_config_status();
        Ok(Response::new(StatusReply {
            ready,
            reason: reason as i32,
            message,
            counts: Some(counts),
            instance_id: meta.instance_id.clone(),
            instance_type: meta.instance_type.clone(),
            enis,
            last_decision: decision.map(|d| format!("{d:?}")).unwrap_or_default(),
            last_error: error.map(|e| e.to_string()).unwrap_or_default(),
            snat_backend: snat.as_ref().map(|s| s.backend.clone()).unwrap_or_default(),
            snat_backend_reason: snat.map(|s| s.reason).unwrap_or_default(),
            custom_networking: cn.is_some(),
            eni_config: cn.as_ref().and_then(|c| c.name.clone()).unwrap_or_default(),
            eni_config_source: cn.as_ref().map(|c| c.source.clone()).unwrap_or_default(),
            eni_config_subnet: cn
                .as_ref()
                .and_then(|c| {
                    c.subnet.as_ref().map(|s| {
                        format!(
                            "{s} ({}, {} free addresses)",
                            c.availability_zone, c.free_addresses
                        )
                    })
                })
                .unwrap_or_default(),
            eni_config_security_groups: cn
                .as_ref()
                .map(|c| c.security_groups.clone())
                .unwrap_or_default(),
            eni_config_problem: cn.and_then(|c| c.problem).unwrap_or_default(),
            kubernetes_api: self.node.api_status().describe(),
            ec2_schedule: self.node.ec2.schedule_status().describe(),
            eni_changes_paused: self.node.enis_frozen(),
            address_mode: self.node.address_mode().as_str().to_string(),
            pool_knobs: self.node.knobs().to_string(),
            vpc_cidrs: self.node.vpc_cidrs(),
            security_groups: self.node.security_groups(),
        }))
    }

    async fn list_allocations(
        &self,
        request: Request<ListAllocationsRequest>,
    ) -> Result<Response<ListAllocationsReply>, Status> {
        let req = request.into_inner();
        let allocations = all_allocations(&self.node)
            .into_iter()
            .filter(|(k, _)| req.network_name.is_empty() || k.network_name == req.network_name)
            .filter(|(k, _)| req.container_id.is_empty() || k.container_id == req.container_id)
            .map(|(_, a)| a)
            .collect();
        Ok(Response::new(ListAllocationsReply { allocations }))
    }

    async fn gc(&self, request: Request<GcRequest>) -> Result<Response<GcReply>, Status> {
        let req = request.into_inner();
        if req.network_name.is_empty() {
            return Err(Status::invalid_argument("Gc needs a NetworkName"));
        }
        let valid: HashSet<(String, String)> = req
            .valid
            .iter()
            .map(|a| (a.container_id.clone(), a.if_name.clone()))
            .collect();
        let mut reply = GcReply::default();
        let gc = Gc {
            network_name: &req.network_name,
            valid: &valid,
        };
        gc.sweep(
            self.node.datastore().assignments(),
            |key| self.node.del(key),
            "address",
            &mut reply,
        );
        gc.sweep(
            self.node.datastore6().assignments(),
            |key| self.node.del6(key),
            "IPv6 address",
            &mut reply,
        );
        Ok(Response::new(reply))
    }
}
