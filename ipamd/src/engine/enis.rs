//! The ENI lifecycle: addresses asked of EC2 and given back, ENIs attached and freed.
//!
//! - **attach**: where the ENI goes comes from [`placement`] (subnet discovery) or, with custom networking, from
//!   the node's `ENIConfig` ([`super::custom_net`]);
//!   CreateNetworkInterface (one `ClientToken` across all its retries: idempotent) with description
//!   `aws-K8S-<instance>`, the tags (`instance_id`, `createdAt`, the
//!   cluster tags with `CLUSTER_NAME`, `ADDITIONAL_ENI_TAGS`) and its first addresses already assigned;
//!   DescribeInstances for a free device index on network card 0 (asked once the ENI exists, so a throttled
//!   create repeats no Describe; none free: the new ENI is deleted and the pool is at its ENI limit);
//!   AttachNetworkInterface (failure: the new ENI is deleted at once); DeleteOnTermination (failure: the ENI is
//!   detached and deleted); wait for IMDS to show it (bounded: IMDS lags); host setup (table, routes, rule, MTU);
//!   only then are its addresses handed out.
//! - **free**: only an ENI the policy picked (never the primary, never with pods or IPs in cooldown): out of the
//!   datastore first (no ADD can take its IPs meanwhile), host teardown, DetachNetworkInterface, then
//!   DeleteNetworkInterface retried while EC2 still sees it in use; NotFound counts as done.
//! - **assign / release**: addresses given back are out of the datastore before EC2 is asked, and remembered for
//!   [`RELEASED_MEMORY`] so a lagging IMDS or EC2 view cannot bring them back (see [`super::reconcile`]).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use datapath::MacAddr;
use ipnetwork::Ipv4Network;

use super::custom_net::EniConfigProblem;
use super::{Node, NodeError};
use crate::core::datastore::{DatastoreError, Eni};
use crate::sync::lock;
use ec2_api::{
    CreateEniRequest, Ec2, Ec2Error, EniDescription, IpRequest, SubnetDescription, SubnetFilter,
    ENI_DESCRIPTION_PREFIX, TAG_CLUSTER_NAME, TAG_CREATED_AT, TAG_ENI_OWNER, TAG_ENI_OWNER_VALUE,
    TAG_INSTANCE_ID,
};
use ec2_api::{ImdsEni, ImdsError, NodeMetadata};

/// How long given-back addresses are not re-added from a stale view (anchor `ipReconcileCooldown`).
pub const RELEASED_MEMORY: Duration = Duration::from_secs(60);

/// How long subnet discovery's DescribeSubnets answer places new ENIs before it is asked again: a node growing
/// by several ENIs in a burst (a cold start: one per 14 pods) describes the subnets once, not once per ENI. A
/// subnet that ran out meanwhile answers the create with an exhaustion, and the next candidate is tried with a
/// fresh list ([`Node::create_in_next_subnet`]).
pub const SUBNET_CACHE_TTL: Duration = Duration::from_secs(60);

/// Subnet tag that makes a subnet a candidate for new ENIs (subnet discovery).
pub const TAG_CNI_SUBNET: &str = "kubernetes.io/role/cni";

pub(crate) fn mac_of(eni: &EniDescription) -> Result<MacAddr, NodeError> {
    MacAddr::parse(&eni.mac).ok_or_else(|| NodeError::BadMac {
        eni: eni.id.clone(),
        mac: eni.mac.clone(),
    })
}

/// Where a new ENI goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub subnet_id: String,
    pub security_groups: Vec<String>,
}

/// Where a new ENI goes without custom networking, decided from what is known (pure): with the candidate
/// subnets of subnet discovery (`subnets`, the node's VPC and availability zone), the one with most free
/// addresses among the node's subnet and the subnets tagged `kubernetes.io/role/cni` (value "0" excludes), the
/// node's subnet on a tie; none qualifying, or no discovery: the node's subnet. The security groups are the
/// primary ENI's. (Custom networking: [`super::custom_net::eni_config_placement`].)
pub fn placement(node: &NodeMetadata, subnets: Option<&[SubnetDescription]>) -> Placement {
    let subnet_id = subnets
        .and_then(|subnets| {
            subnets
                .iter()
                .filter(|s| match s.tags.get(TAG_CNI_SUBNET) {
                    Some(v) => v != "0",
                    None => s.id == node.subnet_id,
                })
                .max_by_key(|s| (s.available_ip_count, s.id == node.subnet_id))
        })
        .map_or_else(|| node.subnet_id.clone(), |s| s.id.clone());
    Placement {
        subnet_id,
        security_groups: node.security_groups.clone(),
    }
}

impl Node {
    pub(super) async fn assign(&self, eni_id: &str, req: IpRequest) -> Result<(), Ec2Error> {
        let got = match self.ec2.assign_private_ips(eni_id, req).await {
            Ok(got) => got,
            Err(e @ Ec2Error::IpLimitExceeded { .. }) => {
                // Our view of the ENI is behind EC2's: re-read it.
                tracing::warn!(eni = eni_id, error = %e, "ENI fuller than we thought; re-reading it");
                self.resync_enis(&[eni_id.to_string()]).await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let mut ds = lock(&self.ds);
        let res = ds
            .add_ips(eni_id, &got.ips)
            .and_then(|a| ds.add_prefixes(eni_id, &got.prefixes).map(|b| a + b));
        match res {
            Ok(n) => tracing::info!(eni = eni_id, ?req, added = n, "assigned addresses"),
            Err(e) => {
                tracing::error!(eni = eni_id, error = %e, "EC2 returned addresses the datastore refused")
            }
        }
        Ok(())
    }

    /// Re-reads ENIs from EC2 and makes the datastore match (addresses only).
    pub(crate) async fn resync_enis(&self, ids: &[String]) -> Result<(), Ec2Error> {
        let described = self.ec2.describe_network_interfaces(ids).await?;
        let now = self.deps.clock.now();
        let mut st = lock(&self.status);
        st.released
            .retain(|_, t| now.saturating_sub(*t) < RELEASED_MEMORY);
        let released = st.released.clone();
        let skip = |ip: Ipv4Addr| released.contains_key(&ip);
        let mut ds = lock(&self.ds);
        for d in described {
            match ds.sync_eni(&d.id, &d.secondary_ips, &d.ipv4_prefixes, &skip) {
                Ok(r) => {
                    if !r.evicted.is_empty() {
                        tracing::warn!(eni = %d.id, pods = ?r.evicted, "EC2 no longer has addresses pods held");
                    }
                    st.force_removed += r.evicted.len() as u64;
                    if r.added + r.removed > 0 {
                        tracing::info!(eni = %d.id, added = r.added, removed = r.removed, "ENI addresses synced with EC2");
                    }
                }
                Err(e) => tracing::warn!(eni = %d.id, error = %e, "cannot sync ENI"),
            }
        }
        Ok(())
    }

    pub(super) async fn release(
        &self,
        eni_id: &str,
        ips: &[Ipv4Addr],
        prefixes: &[Ipv4Network],
    ) -> Result<(), Ec2Error> {
        let now = self.deps.clock.now();
        // Out of the datastore first, so no ADD takes them while EC2 is asked.
        {
            let mut ds = lock(&self.ds);
            let res = ds
                .remove_ips(eni_id, ips, now)
                .and_then(|()| ds.remove_prefixes(eni_id, prefixes, now));
            if let Err(e) = res {
                tracing::debug!(eni = eni_id, error = %e, "release skipped: addresses changed");
                return Ok(());
            }
        }
        match self.ec2.unassign_private_ips(eni_id, ips, prefixes).await {
            Ok(()) => {
                let mut st = lock(&self.status);
                for ip in ips
                    .iter()
                    .copied()
                    .chain(prefixes.iter().map(|p| p.network()))
                {
                    st.released.insert(ip, now);
                }
                tracing::info!(
                    eni = eni_id,
                    ips = ips.len(),
                    prefixes = prefixes.len(),
                    "gave addresses back to EC2"
                );
                Ok(())
            }
            Err(e) => {
                // EC2 may or may not have applied it: let reconcile find out; until then, use them again.
                let mut ds = lock(&self.ds);
                if let Err(err) = ds
                    .add_ips(eni_id, ips)
                    .and_then(|_| ds.add_prefixes(eni_id, prefixes))
                {
                    tracing::warn!(eni = eni_id, error = %err, "cannot restore addresses after failed release");
                }
                Err(e)
            }
        }
    }

    /// Where a new ENI goes: with custom networking, where the node's `ENIConfig` says (or why nowhere: never
    /// the node's subnet instead); else with subnet discovery on, the candidate subnets EC2 describes, and
    /// [`placement`] decides.
    pub(super) async fn placement(&self) -> Result<Placement, EniConfigProblem> {
        if let Some(keys) = &self.config.custom_networking {
            return self.custom_placement(keys).await;
        }
        if !self.config.subnet_discovery {
            return Ok(placement(&self.live_meta(), None));
        }
        let filter = SubnetFilter {
            ids: Vec::new(),
            vpc_id: Some(self.meta.vpc_id.clone()),
            availability_zone: Some(self.meta.availability_zone.clone()),
        };
        let now = self.deps.clock.now();
        let cached = lock(&self.status)
            .subnet_cache
            .as_ref()
            .filter(|(at, _)| now.saturating_sub(*at) < SUBNET_CACHE_TTL)
            .map(|(_, subnets)| subnets.clone());
        if let Some(subnets) = cached {
            return Ok(placement(&self.live_meta(), Some(&subnets)));
        }
        Ok(match self.ec2.describe_subnets(&filter).await {
            Ok(subnets) => {
                let at = placement(&self.live_meta(), Some(&subnets));
                lock(&self.status).subnet_cache = Some((self.deps.clock.now(), subnets));
                at
            }
            Err(e) => {
                tracing::warn!(error = %e, "subnet discovery failed; using the node's subnet");
                placement(&self.live_meta(), None)
            }
        })
    }

    pub(super) fn eni_tags(&self) -> BTreeMap<String, String> {
        let mut tags = self.config.additional_eni_tags.clone();
        tags.insert(TAG_INSTANCE_ID.to_string(), self.meta.instance_id.clone());
        tags.insert(
            TAG_CREATED_AT.to_string(),
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + self.deps.clock.wall())
                .to_string(),
        );
        if !self.config.cluster_name.is_empty() {
            tags.insert(
                TAG_CLUSTER_NAME.to_string(),
                self.config.cluster_name.clone(),
            );
            tags.insert(TAG_ENI_OWNER.to_string(), TAG_ENI_OWNER_VALUE.to_string());
        }
        tags
    }

    /// Creates and attaches an ENI at `at` (from [`Node::placement`]) with `request`'s addresses.
    pub(super) async fn attach_eni(
        &self,
        request: IpRequest,
        at: Placement,
    ) -> Result<(), Ec2Error> {
        let Placement {
            subnet_id,
            security_groups,
        } = at;
        // One token for this logical create: every retry (the pacer's, the SDK's) carries it, so a create that
        // timed out after EC2 made the ENI returns that ENI instead of making a second one.
        let client_token = format!(
            "aws-cni-{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let req = CreateEniRequest {
            subnet_id,
            description: format!("{ENI_DESCRIPTION_PREFIX}{}", self.meta.instance_id),
            security_groups,
            tags: self.eni_tags(),
            ips: request,
        };
        let eni = match self
            .ec2
            .create_network_interface_with_token(req.clone(), &client_token)
            .await
        {
            Ok(eni) => eni,
            // Discovery placed it: the next candidate subnet may serve (see `subnets`).
            Err(e @ Ec2Error::SubnetExhausted { .. })
                if self.config.subnet_discovery && self.config.custom_networking.is_none() =>
            {
                // The cached free counts were wrong for this subnet: the next placement asks EC2 again.
                lock(&self.status).subnet_cache = None;
                self.create_in_next_subnet(&req, &client_token, e).await?
            }
            Err(e) => return Err(e),
        };
        // The free device index is asked only now that the ENI exists: a create that EC2 throttles (and that
        // the pool retries later) costs no DescribeInstances, so there is one per ENI created (see
        // [`Node::free_device_index`]).
        let device_index = match self.free_device_index().await {
            Ok(d) => d,
            Err(e) => {
                if let Err(del) = self.ec2.delete_network_interface(&eni.id).await {
                    tracing::warn!(eni = %eni.id, error = %del, "could not delete ENI that found no device \
                        index; the leaked-ENI cleanup will retry");
                }
                return Err(e);
            }
        };
        let attachment = match self
            .ec2
            .attach_network_interface(&eni.id, &self.meta.instance_id, device_index, 0)
            .await
        {
            Ok(a) => a,
            // The attach may have happened although its answer was lost (a timeout, a retry that found it done).
            Err(e) if self.attached_here(&eni.id).await.is_some() => {
                let a = self.attached_here(&eni.id).await.unwrap_or_default();
                tracing::info!(eni = %eni.id, error = %e, attachment = %a, "attach answered an error but EC2 \
                    shows the ENI attached here: continuing");
                a
            }
            Err(e) => {
                // A created-but-unattached ENI is a leak waiting to happen: delete it now.
                if let Err(del) = self.ec2.delete_network_interface(&eni.id).await {
                    tracing::warn!(eni = %eni.id, error = %del, "could not delete ENI after failed attach; \
                        the leaked-ENI cleanup will retry");
                }
                return Err(e);
            }
        };
        if let Err(e) = self
            .ec2
            .set_delete_on_termination(&eni.id, &attachment)
            .await
        {
            tracing::warn!(eni = %eni.id, error = %e, "could not set DeleteOnTermination; freeing the ENI");
            self.detach_and_delete(&eni.id, Some(attachment)).await;
            return Err(e);
        }
        self.wait_for_imds(&eni.id).await;
        let mac = mac_of(&eni).map_err(|e| Ec2Error::Other {
            api: "CreateNetworkInterface",
            code: "InvalidMac".into(),
            message: e.to_string(),
        })?;
        let mut new = Eni::new(&eni.id, mac, device_index, eni.primary_ip, eni.subnet_cidr);
        new.attached_at = self.deps.clock.now();
        if let Err(e) = self.deps.hostnet.setup_eni(&new, self.config.eni_mtu).await {
            // Keep the ENI (EC2 has it attached) but do not hand out its IPs: pods on it would have no route.
            // It takes its slot (no other ENI is attached in its place) and reconcile, asked for now, adopts it
            // once the host side works.
            tracing::error!(eni = %eni.id, error = %e, "ENI attached but host setup failed; reconcile will finish it");
            self.setup_pending(&eni.id);
            return Err(Ec2Error::Other {
                api: "AttachNetworkInterface",
                code: "HostSetupFailed".into(),
                message: e.to_string(),
            });
        }
        if let Err(e) = self.load_eni(new, &eni.secondary_ips, &eni.ipv4_prefixes) {
            tracing::error!(eni = %eni.id, error = %e, "datastore refused the new ENI's addresses");
        }
        tracing::info!(
            eni = %eni.id,
            device_index,
            subnet = %eni.subnet_id,
            ips = eni.secondary_ips.len(),
            prefixes = eni.ipv4_prefixes.len(),
            "attached ENI"
        );
        Ok(())
    }

    /// DescribeInstances for a free device index on network card 0 (`EniLimitExceeded`: none). Called once an
    /// ENI has been created, and never failed fast on a throttle: the new ENI waits for it (else it would be
    /// deleted again).
    async fn free_device_index(&self) -> Result<u32, Ec2Error> {
        let instance = crate::ratelimit::FAIL_FAST_ON_THROTTLE
            .scope(false, self.ec2.describe_instance(&self.meta.instance_id))
            .await?;
        let used: Vec<u32> = instance
            .attachments
            .iter()
            .filter(|(card, _)| *card == 0)
            .map(|(_, d)| *d)
            .collect();
        // Device indexes span the instance's slots, those of ENIs left alone included (the policy's count has
        // them taken off already, so an EFA at index 1 must not hide index 2).
        (1..self.base_policy().max_enis.max(2))
            .find(|d| !used.contains(d))
            .ok_or(Ec2Error::EniLimitExceeded {
                api: "DescribeInstances",
            })
    }

    /// Waits (bounded, with backoff) until IMDS lists the ENI, as the anchor does after an attach.
    pub(super) async fn wait_for_imds(&self, eni_id: &str) {
        let mut wait = Duration::from_millis(100);
        for _ in 0..12 {
            match self.deps.imds.enis().await {
                Ok(enis) if enis.iter().any(|e| e.eni_id == eni_id) => return,
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "IMDS read failed while waiting for an ENI"),
            }
            self.deps.clock.sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
        tracing::warn!(
            eni = eni_id,
            "IMDS does not show the new ENI yet; continuing with EC2's view"
        );
    }

    pub(super) async fn free_eni(&self, eni_id: &str) -> Result<(), Ec2Error> {
        let now = self.deps.clock.now();
        let eni = {
            let mut ds = lock(&self.ds);
            let Some(eni) = ds.eni(eni_id).cloned() else {
                return Ok(());
            };
            if eni.is_primary {
                return Ok(());
            }
            if let Err(e) = ds.remove_eni(eni_id, now, false) {
                tracing::debug!(eni = eni_id, error = %e, "ENI no longer free; kept");
                return Ok(());
            }
            eni
        };
        if let Err(e) = self.deps.hostnet.teardown_eni(&eni).await {
            tracing::warn!(eni = eni_id, error = %e, "host teardown of the ENI failed");
        }
        {
            let mut st = lock(&self.status);
            for ip in eni.ips() {
                st.released.insert(ip, now);
            }
        }
        self.detach_and_delete(eni_id, None).await;
        tracing::info!(eni = eni_id, device = eni.device_number, "freed ENI");
        Ok(())
    }

    /// Detaches (if attached) and deletes an ENI, retrying as the anchor does. Failures are logged: a leftover
    /// ENI is found again by reconcile (still attached) or by the leaked-ENI cleanup (available).
    pub(crate) async fn detach_and_delete(&self, eni_id: &str, attachment: Option<String>) {
        let attachment = match attachment {
            Some(a) => Some(a),
            None => match self
                .ec2
                .describe_network_interfaces(&[eni_id.to_string()])
                .await
            {
                Ok(d) => d.into_iter().next().and_then(|d| d.attachment_id),
                Err(Ec2Error::NotFound { .. }) => return,
                Err(e) => {
                    tracing::warn!(eni = eni_id, error = %e, "cannot look up the ENI's attachment");
                    return;
                }
            },
        };
        if let Some(a) = attachment {
            if let Err(e) = self.ec2.detach_network_interface(&a).await {
                if !matches!(e, Ec2Error::NotFound { .. }) {
                    tracing::warn!(eni = eni_id, error = %e, "detach failed; reconcile will retry");
                    return;
                }
            }
            // The anchor waits for the detachment to settle before deleting.
            self.deps.clock.sleep(Duration::from_secs(2)).await;
        }
        let mut wait = Duration::from_millis(500);
        for _ in 0..6 {
            match self.ec2.delete_network_interface(eni_id).await {
                Ok(()) | Err(Ec2Error::NotFound { .. }) => return,
                Err(e) => {
                    tracing::debug!(eni = eni_id, error = %e, "delete failed; retrying");
                    self.deps.clock.sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
        tracing::warn!(
            eni = eni_id,
            "could not delete the ENI; the leaked-ENI cleanup will"
        );
    }

    /// Describes ENIs one call for all; if one is unknown to EC2 (the whole call fails), one by one.
    pub(crate) async fn describe_each(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, Option<EniDescription>>, Ec2Error> {
        let mut out = HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        match self.ec2.describe_network_interfaces(ids).await {
            Ok(v) => {
                for d in v {
                    out.insert(d.id.clone(), Some(d));
                }
            }
            Err(Ec2Error::NotFound { .. }) => {
                for id in ids {
                    match self
                        .ec2
                        .describe_network_interfaces(std::slice::from_ref(id))
                        .await
                    {
                        Ok(v) => {
                            out.insert(id.clone(), v.into_iter().next());
                        }
                        Err(Ec2Error::NotFound { .. }) => {
                            out.insert(id.clone(), None);
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) => return Err(e),
        }
        Ok(out)
    }

    /// Puts an ENI (set up on the host) into the datastore with the addresses EC2 gave it.
    pub(super) fn load_eni(
        &self,
        eni: Eni,
        ips: &[Ipv4Addr],
        prefixes: &[Ipv4Network],
    ) -> Result<(), DatastoreError> {
        let id = eni.id.clone();
        let mut ds = lock(&self.ds);
        ds.add_eni(eni);
        ds.add_ips(&id, ips)?;
        ds.add_prefixes(&id, prefixes)?;
        Ok(())
    }

    /// The ENIs IMDS lists on network card 0 (the only card the node's pods use).
    pub(crate) async fn imds_enis(&self) -> Result<Vec<ImdsEni>, ImdsError> {
        Ok(self
            .deps
            .imds
            .enis()
            .await?
            .into_iter()
            .filter(|e| e.network_card == 0)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_meta() -> NodeMetadata {
        NodeMetadata {
            instance_id: "i-1".into(),
            instance_type: "m5.large".into(),
            availability_zone: "us-east-1a".into(),
            primary_mac: "02:00:00:00:00:01".into(),
            local_ipv4: Ipv4Addr::new(10, 0, 0, 10),
            vpc_cidrs: vec![],
            region: "us-east-1".into(),
            vpc_id: "vpc-1".into(),
            subnet_id: "subnet-node".into(),
            security_groups: vec!["sg-node".into()],
        }
    }

    fn subnet(id: &str, free: u64, tag: Option<&str>) -> SubnetDescription {
        let mut tags = BTreeMap::new();
        if let Some(v) = tag {
            tags.insert(TAG_CNI_SUBNET.to_string(), v.to_string());
        }
        SubnetDescription {
            id: id.into(),
            cidr: "10.0.0.0/24".parse().expect("cidr"),
            availability_zone: "us-east-1a".into(),
            vpc_id: "vpc-1".into(),
            available_ip_count: free,
            tags,
        }
    }

    fn at(subnet_id: &str, sgs: &[&str]) -> Placement {
        Placement {
            subnet_id: subnet_id.into(),
            security_groups: sgs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn without_discovery_or_eni_config_an_eni_goes_where_the_node_is() {
        assert_eq!(
            placement(&node_meta(), None),
            at("subnet-node", &["sg-node"])
        );
    }

    #[test]
    fn discovery_picks_the_tagged_or_node_subnet_with_most_free_addresses() {
        let subnets = [
            subnet("subnet-node", 50, None),
            subnet("subnet-untagged", 900, None),
            subnet("subnet-cni", 200, Some("1")),
            subnet("subnet-excluded", 800, Some("0")),
        ];
        assert_eq!(
            placement(&node_meta(), Some(&subnets)),
            at("subnet-cni", &["sg-node"])
        );
        // A tie goes to the node's subnet; nothing qualifying falls back to it.
        let tie = [
            subnet("subnet-cni", 50, Some("1")),
            subnet("subnet-node", 50, None),
        ];
        assert_eq!(placement(&node_meta(), Some(&tie)).subnet_id, "subnet-node");
        assert_eq!(
            placement(&node_meta(), Some(&[subnet("subnet-x", 5, None)])).subnet_id,
            "subnet-node"
        );
    }
}
