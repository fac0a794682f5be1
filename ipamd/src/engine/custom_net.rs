//! Custom networking (`AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true`): where new ENIs go when the node's `ENIConfig`
//! says so, and what happens when it cannot.
//!
//! - **Selection** (the anchor's order, [`crate::kube::ClusterNode::eni_config_name`]): the node label
//!   `vpc.amazonaws.com/externalEniConfig`, the annotation named by `ENI_CONFIG_ANNOTATION_DEF`, the label named
//!   by `ENI_CONFIG_LABEL_DEF`, else `default`. Read from the cluster's cache, never on the ADD path.
//! - **Subnet** ([`eni_config_placement`], pure): the `ENIConfig` lists one subnet (`spec.subnet`, the anchor's)
//!   or several (`spec.subnets`, ours); EC2 describes them (one DescribeSubnets) and the new ENI goes to the one
//!   in the node's VPC and availability zone with the most free addresses, the earlier listed on a tie. Subnets
//!   of other zones are skipped (one `ENIConfig` may list a subnet per zone); a subnet EC2 does not know is an
//!   error, not skipped (a typo must not go unnoticed). Security groups: the `ENIConfig`'s, else the primary
//!   ENI's (as the anchor).
//! - **Problems** ([`EniConfigProblem`]): no node object, the named `ENIConfig` absent or empty, no subnet in the
//!   node's zone, an unknown subnet. The pool then attaches no ENI (never a silent fallback to the node's
//!   subnet; an ENI with room still gets addresses, as in the anchor), an ADD that needs a new ENI fails at once
//!   naming the `ENIConfig` and the cause (`ENI_CONFIG_INVALID`), and `ipamd status`, readiness and the metric
//!   `awscni_eniconfig_invalid` say so. A failed check of the same `ENIConfig` (unknown subnet, other zone) is
//!   reused for [`RECHECK_FAILED_AFTER`] so waking ADDs do not become DescribeSubnets calls; a changed `ENIConfig`
//!   is checked at once, and so is one whose check failed in EC2 itself (throttling, timeouts).
//! - **The primary ENI** carries no pod addresses ([`crate::core::datastore::Eni::excluded_for_pods`], set at
//!   startup), and max-pods leaves it out (`ipamd max-pods --cni-custom-networking-enabled`).
//! - A changed `ENIConfig` affects new ENIs only: attached ENIs and the addresses on them stay.
//!
//! [`Node::run_eni_config_watch`] re-reads the selection every few seconds for status, metrics and
//! `/v1/eni-configs`, and checks the subnets again only when the `ENIConfig` changed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::enis::Placement;
use super::Node;
use crate::core::snapshot::EniConfigStatus;
use crate::kube::{EniConfig, EniConfigKeys};
use crate::sync::lock;
use ec2_api::{Ec2, Ec2Error, NodeMetadata, SubnetDescription, SubnetFilter};

/// How long a failed check of an unchanged `ENIConfig` is reused before EC2 is asked again.
pub const RECHECK_FAILED_AFTER: Duration = Duration::from_secs(60);

/// Why custom networking cannot place a new ENI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EniConfigProblem {
    #[error(
        "the node object is not known (no Kubernetes API or cluster objects, or not synced yet), so the node's \
         ENIConfig is not known"
    )]
    NodeUnknown,
    #[error("the ENIConfig name {origin} is empty")]
    EmptyName { origin: String },
    #[error("ENIConfig {name:?} ({origin}) does not exist")]
    Missing { name: String, origin: String },
    #[error("ENIConfig {name:?} names no subnet (spec.subnet or spec.subnets)")]
    NoSubnet { name: String },
    #[error("ENIConfig {name:?}: subnet {subnet} does not exist in EC2")]
    UnknownSubnet { name: String, subnet: String },
    #[error(
        "ENIConfig {name:?}: none of its subnets is in the node's availability zone {zone} and VPC {vpc} ({})",
        found.join(", ")
    )]
    OtherZone {
        name: String,
        zone: String,
        vpc: String,
        /// `subnet-x in us-east-1b (vpc-y)` for each subnet.
        found: Vec<String>,
    },
    #[error("ENIConfig {name:?}: cannot describe its subnets: {error}")]
    Ec2 { name: String, error: Ec2Error },
}

impl EniConfigProblem {
    /// One word for the metric's `cause` label.
    pub fn cause(&self) -> &'static str {
        match self {
            EniConfigProblem::NodeUnknown => "node-unknown",
            EniConfigProblem::EmptyName { .. } | EniConfigProblem::Missing { .. } => "missing",
            EniConfigProblem::NoSubnet { .. } => "no-subnet",
            EniConfigProblem::UnknownSubnet { .. } => "unknown-subnet",
            EniConfigProblem::OtherZone { .. } => "other-zone",
            EniConfigProblem::Ec2 { .. } => "ec2-error",
        }
    }
}

/// Where a new ENI goes under custom networking (pure): the subnet of `cfg` in the node's VPC and zone with the
/// most free addresses (the earlier listed on a tie), given EC2's description of `cfg`'s subnets; and the
/// security groups of `cfg`, else the primary ENI's. Returns the chosen subnet's description too.
pub fn eni_config_placement(
    node: &NodeMetadata,
    cfg: &EniConfig,
    described: &[SubnetDescription],
) -> Result<(Placement, SubnetDescription), EniConfigProblem> {
    if cfg.subnets.is_empty() {
        return Err(EniConfigProblem::NoSubnet {
            name: cfg.name.clone(),
        });
    }
    let mut best: Option<&SubnetDescription> = None;
    let mut found = Vec::new();
    for id in &cfg.subnets {
        let Some(d) = described.iter().find(|d| d.id == *id) else {
            return Err(EniConfigProblem::UnknownSubnet {
                name: cfg.name.clone(),
                subnet: id.clone(),
            });
        };
        if d.availability_zone != node.availability_zone || d.vpc_id != node.vpc_id {
            found.push(format!(
                "{} in {} ({})",
                d.id, d.availability_zone, d.vpc_id
            ));
            continue;
        }
        if best.is_none_or(|b| d.available_ip_count > b.available_ip_count) {
            best = Some(d);
        }
    }
    let Some(best) = best else {
        return Err(EniConfigProblem::OtherZone {
            name: cfg.name.clone(),
            zone: node.availability_zone.clone(),
            vpc: node.vpc_id.clone(),
            found,
        });
    };
    let security_groups = if cfg.security_groups.is_empty() {
        node.security_groups.clone()
    } else {
        cfg.security_groups.clone()
    };
    Ok((
        Placement {
            subnet_id: best.id.clone(),
            security_groups,
        },
        best.clone(),
    ))
}

/// The engine's custom-networking state.
#[derive(Debug, Default)]
pub(crate) struct CustomNetState {
    /// What status, metrics and introspection show.
    pub(crate) status: EniConfigStatus,
    /// The `ENIConfig` whose subnets were last checked, when, and the outcome.
    pub(crate) checked: Option<(EniConfig, Duration, Result<Placement, EniConfigProblem>)>,
    /// The pool wanted a new ENI and custom networking refused it for this reason (cleared by the next pool
    /// step that does not need one, or that places one).
    pub(crate) blocked: Option<EniConfigProblem>,
}

impl Node {
    /// The node's `ENIConfig` from the cluster's cache, and where its name came from.
    async fn selected_eni_config(
        &self,
        keys: &EniConfigKeys,
    ) -> Result<(EniConfig, String), EniConfigProblem> {
        let cluster = &self.deps.cluster;
        let node = cluster.node().await.ok_or(EniConfigProblem::NodeUnknown)?;
        let (name, source) = node.eni_config_name(keys);
        let source = source.to_string();
        {
            let mut st = lock(&self.custom_net);
            st.status.name = Some(name.clone());
            st.status.source = source.clone();
        }
        if name.is_empty() {
            return Err(EniConfigProblem::EmptyName { origin: source });
        }
        match cluster.eni_config(&name).await {
            Some(cfg) => Ok((cfg, source)),
            None => Err(EniConfigProblem::Missing {
                name,
                origin: source,
            }),
        }
    }

    /// Describes `cfg`'s subnets (one call; when EC2 says one does not exist, one call each to name it).
    async fn describe_eni_config_subnets(
        &self,
        cfg: &EniConfig,
    ) -> Result<Vec<SubnetDescription>, EniConfigProblem> {
        let by_ids = |ids: Vec<String>| SubnetFilter {
            ids,
            ..SubnetFilter::default()
        };
        let ec2_problem = |error| EniConfigProblem::Ec2 {
            name: cfg.name.clone(),
            error,
        };
        match self
            .ec2
            .describe_subnets(&by_ids(cfg.subnets.clone()))
            .await
        {
            Ok(d) => Ok(d),
            Err(Ec2Error::NotFound { .. }) => {
                let mut all = Vec::new();
                for id in &cfg.subnets {
                    match self.ec2.describe_subnets(&by_ids(vec![id.clone()])).await {
                        Ok(d) => all.extend(d),
                        // Left out: eni_config_placement names it.
                        Err(Ec2Error::NotFound { .. }) => {}
                        Err(e) => return Err(ec2_problem(e)),
                    }
                }
                Ok(all)
            }
            Err(e) => Err(ec2_problem(e)),
        }
    }

    /// Where a new ENI goes under custom networking, or why it cannot go anywhere (recorded for status,
    /// readiness and ADD errors). A failed check of an unchanged `ENIConfig` is reused for
    /// [`RECHECK_FAILED_AFTER`].
    pub(super) async fn custom_placement(
        &self,
        keys: &EniConfigKeys,
    ) -> Result<Placement, EniConfigProblem> {
        let res = self.check_eni_config(keys, true).await;
        if let Err(p) = &res {
            tracing::warn!(problem = %p, "custom networking: no new ENI can be placed");
        }
        res
    }

    /// Selects and checks the node's `ENIConfig`. `fresh`: always ask EC2 (a new ENI is about to be created and
    /// needs today's free counts), unless the same `ENIConfig` failed within [`RECHECK_FAILED_AFTER`]; else only
    /// when the `ENIConfig` changed since the last check.
    async fn check_eni_config(
        &self,
        keys: &EniConfigKeys,
        fresh: bool,
    ) -> Result<Placement, EniConfigProblem> {
        let (cfg, _) = match self.selected_eni_config(keys).await {
            Ok(c) => c,
            Err(p) => {
                self.record_eni_config(None, Err(p.clone()));
                return Err(p);
            }
        };
        let now = self.deps.clock.now();
        let reuse = lock(&self.custom_net)
            .checked
            .as_ref()
            .filter(|(c, at, res)| {
                *c == cfg
                    && match res {
                        Ok(_) => !fresh,
                        // EC2's own failures (throttling, timeouts) are asked again: PacedEc2 paces them.
                        Err(EniConfigProblem::Ec2 { .. }) => false,
                        Err(_) => now.saturating_sub(*at) < RECHECK_FAILED_AFTER,
                    }
            })
            .map(|(_, _, res)| res.clone());
        if let Some(res) = reuse {
            self.record_eni_config(None, res.clone());
            return res;
        }
        let outcome = match self.describe_eni_config_subnets(&cfg).await {
            Ok(described) => eni_config_placement(&self.live_meta(), &cfg, &described),
            Err(p) => Err(p),
        };
        let (res, chosen) = match outcome {
            Ok((placement, subnet)) => (Ok(placement), Some(subnet)),
            Err(p) => (Err(p), None),
        };
        lock(&self.custom_net).checked = Some((cfg, now, res.clone()));
        self.record_eni_config(chosen, res.clone());
        res
    }

    fn record_eni_config(
        &self,
        chosen: Option<SubnetDescription>,
        res: Result<Placement, EniConfigProblem>,
    ) {
        let mut st = lock(&self.custom_net);
        match res {
            Ok(p) => {
                // Fixed (a watch saw the ENIConfig change): the pool may place an ENI again, and ADDs may wait
                // for it rather than fail on the old verdict.
                if st.blocked.take().is_some() {
                    tracing::info!("custom networking: the node's ENIConfig is usable again");
                    self.wake.notify_one();
                    self.adds.poke();
                }
                if let Some(s) = chosen {
                    st.status.subnet = Some(s.id);
                    st.status.availability_zone = s.availability_zone;
                    st.status.free_addresses = s.available_ip_count;
                }
                st.status.security_groups = p.security_groups;
                st.status.problem = None;
                st.status.cause.clear();
            }
            Err(p) => {
                if matches!(p, EniConfigProblem::NodeUnknown) {
                    st.status.name = None;
                    st.status.source.clear();
                }
                st.status.cause = p.cause().to_string();
                st.status.problem = Some(p.to_string());
            }
        }
    }

    /// Notes that the pool wanted a new ENI and custom networking refused it (`Some`), or that it no longer
    /// stands in the way (`None`).
    pub(super) fn set_eni_config_blocked(&self, problem: Option<EniConfigProblem>) {
        lock(&self.custom_net).blocked = problem;
    }

    /// Why the pool cannot get a new ENI under custom networking right now, if that is what stops it.
    pub fn eni_config_blocked(&self) -> Option<EniConfigProblem> {
        lock(&self.custom_net).blocked.clone()
    }

    /// Custom networking's state for reporting; `None` when it is off.
    pub fn eni_config_status(&self) -> Option<EniConfigStatus> {
        self.config.custom_networking.as_ref()?;
        Some(lock(&self.custom_net).status.clone())
    }

    /// Reads the node's `ENIConfig` again (its subnets are checked with EC2 only when it changed) for status,
    /// metrics and introspection; a usable one lifts the pool's block.
    pub(crate) async fn refresh_eni_config(&self, keys: &EniConfigKeys) {
        if let Err(p) = self.check_eni_config(keys, false).await {
            tracing::debug!(problem = %p, "custom networking: ENIConfig check");
        }
    }

    /// Re-reads the node's `ENIConfig` every `interval` (checking its subnets with EC2 only when it changed),
    /// so status, metrics and `/v1/eni-configs` follow the cluster. Returns at once when custom networking is
    /// off, and when `shutdown` fires.
    pub async fn run_eni_config_watch(self: Arc<Self>, interval: Duration, shutdown: Arc<Notify>) {
        let Some(keys) = self.config.custom_networking.clone() else {
            return;
        };
        loop {
            self.refresh_eni_config(&keys).await;
            tokio::select! {
                () = shutdown.notified() => return,
                () = self.deps.clock.sleep(interval) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use super::*;

    fn node() -> NodeMetadata {
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

    fn subnet(id: &str, zone: &str, free: u64) -> SubnetDescription {
        SubnetDescription {
            id: id.into(),
            cidr: "10.1.0.0/24".parse().expect("cidr"),
            availability_zone: zone.into(),
            vpc_id: "vpc-1".into(),
            available_ip_count: free,
            tags: BTreeMap::new(),
        }
    }

    fn cfg(subnets: &[&str], sgs: &[&str]) -> EniConfig {
        EniConfig {
            name: "pods".into(),
            subnets: subnets.iter().map(|s| s.to_string()).collect(),
            security_groups: sgs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_subnet_in_the_nodes_zone_with_most_free_addresses_wins() {
        let described = [
            subnet("subnet-a1", "us-east-1a", 100),
            subnet("subnet-b", "us-east-1b", 5000),
            subnet("subnet-a2", "us-east-1a", 300),
        ];
        let (p, chosen) = eni_config_placement(
            &node(),
            &cfg(&["subnet-a1", "subnet-b", "subnet-a2"], &["sg-pods"]),
            &described,
        )
        .expect("placed");
        assert_eq!(
            p.subnet_id, "subnet-a2",
            "the other zone's bigger subnet is skipped"
        );
        assert_eq!(p.security_groups, ["sg-pods"]);
        assert_eq!(chosen.available_ip_count, 300);
        // A tie goes to the subnet listed first; no security groups: the primary ENI's.
        let tie = [
            subnet("subnet-a1", "us-east-1a", 300),
            subnet("subnet-a2", "us-east-1a", 300),
        ];
        let (p, _) = eni_config_placement(&node(), &cfg(&["subnet-a2", "subnet-a1"], &[]), &tie)
            .expect("placed");
        assert_eq!(p.subnet_id, "subnet-a2");
        assert_eq!(p.security_groups, ["sg-node"]);
        // The anchor's single spec.subnet.
        let (p, _) =
            eni_config_placement(&node(), &cfg(&["subnet-a1"], &[]), &described).expect("one");
        assert_eq!(p.subnet_id, "subnet-a1");
    }

    #[test]
    fn an_eni_config_that_cannot_place_an_eni_says_why() {
        let described = [
            subnet("subnet-b", "us-east-1b", 5000),
            SubnetDescription {
                vpc_id: "vpc-other".into(),
                ..subnet("subnet-a-elsewhere", "us-east-1a", 10)
            },
        ];
        let other = eni_config_placement(
            &node(),
            &cfg(&["subnet-b", "subnet-a-elsewhere"], &[]),
            &described,
        )
        .expect_err("no subnet in the zone and VPC");
        assert_eq!(other.cause(), "other-zone");
        let msg = other.to_string();
        assert!(
            msg.contains("\"pods\"")
                && msg.contains("us-east-1a")
                && msg.contains("subnet-b in us-east-1b")
                && msg.contains("vpc-other"),
            "{msg}"
        );
        let unknown =
            eni_config_placement(&node(), &cfg(&["subnet-b", "subnet-typo"], &[]), &described)
                .expect_err("unknown subnet");
        assert_eq!(
            unknown,
            EniConfigProblem::UnknownSubnet {
                name: "pods".into(),
                subnet: "subnet-typo".into()
            }
        );
        assert_eq!(
            eni_config_placement(&node(), &cfg(&[], &[]), &described)
                .expect_err("no subnet")
                .cause(),
            "no-subnet"
        );
    }

    mod engine {
        use std::sync::Arc;

        use aws_cni_proto::FailureReason;
        use ec2_sim::{SimEc2, SimSubnet};

        use crate::config::Config;
        use crate::core::datastore::{IpamKey, PodMeta};
        use crate::engine::{Node, NodeDeps};
        use crate::host::fakes::FakeHost;
        use crate::kube::{ClusterNode, EniConfig, EniConfigKeys, FakeCluster};
        use crate::sync::lock;

        const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

        /// A simulated m5.large in us-west-2a with subnets 10.0.64.0/20 and 10.0.80.0/24 in its zone and
        /// 10.0.96.0/20 in us-west-2b; custom networking on with ENI_CONFIG_LABEL_DEF=topology.kubernetes.io/zone.
        async fn node_with(cluster: &FakeCluster) -> (Arc<Node>, SimEc2, Vec<String>) {
            let (sim, clock) = ec2_sim::on_manual_clock("m5.large", |s| {
                s.extra_subnets = [
                    ("10.0.64.0/20", None),
                    ("10.0.80.0/24", None),
                    ("10.0.96.0/20", Some("us-west-2b".to_string())),
                ]
                .into_iter()
                .map(|(c, z)| SimSubnet {
                    cidr: c.parse().expect("cidr"),
                    tags: Default::default(),
                    availability_zone: z,
                })
                .collect();
            })
            .await;
            let ids: Vec<String> = sim.subnets().into_iter().map(|(id, _, _)| id).collect();
            let deps = NodeDeps {
                ec2: Arc::new(sim.clone()),
                imds: Arc::new(sim.clone()),
                hostnet: Arc::new(FakeHost::default()),
                clock: Arc::new(clock),
                cluster: Arc::new(cluster.clone()),
            };
            let config = Config {
                custom_networking: Some(EniConfigKeys {
                    label: ZONE_LABEL.into(),
                    ..EniConfigKeys::default()
                }),
                ..Config::default()
            };
            let n = Node::start(deps, config, None).await.expect("init");
            (n, sim, ids)
        }

        fn zone_node(cluster: &FakeCluster) {
            let mut node = ClusterNode::default();
            node.labels.insert(ZONE_LABEL.into(), "us-west-2a".into());
            *lock(&cluster.node) = Some(node);
        }

        fn put(cluster: &FakeCluster, name: &str, subnets: &[&String], sgs: &[&str]) {
            lock(&cluster.eni_configs).insert(
                name.into(),
                EniConfig {
                    name: name.into(),
                    subnets: subnets.iter().map(|s| s.to_string()).collect(),
                    security_groups: sgs.iter().map(|s| s.to_string()).collect(),
                },
            );
        }

        fn key(c: &str) -> IpamKey {
            IpamKey {
                network_name: "aws-cni".into(),
                container_id: c.into(),
                if_name: "eth0".into(),
            }
        }

        #[tokio::test]
        async fn the_vpc_refresh_leaves_the_eni_configs_groups_on_its_enis() {
            let cluster = FakeCluster::default();
            zone_node(&cluster);
            let (probe, _, ids) = node_with(&FakeCluster::default()).await;
            drop(probe);
            put(&cluster, "us-west-2a", &[&ids[1]], &["sg-pods"]);
            let (n, sim, _) = node_with(&cluster).await;
            n.fill().await.expect("fill");
            let enis = sim.all_enis();
            let eni = enis
                .iter()
                .find(|e| e.device_index != Some(0))
                .expect("an ENI in the ENIConfig's subnet");
            let calls = sim.calls().get("ModifyNetworkInterfaceAttribute").copied();
            sim.set_primary_security_groups(vec!["sg-0node2".into()]);
            let r = n.refresh_vpc().await.expect("refresh");
            assert_eq!(r.security_groups, Some(vec!["sg-0node2".to_string()]));
            assert!(r.enis_updated.is_empty(), "{r:?}");
            assert_eq!(sim.security_groups_of(&eni.id), ["sg-pods"]);
            assert_eq!(
                sim.calls().get("ModifyNetworkInterfaceAttribute").copied(),
                calls
            );
        }

        #[tokio::test]
        async fn pods_land_on_an_eni_in_the_eni_configs_zone_subnet_with_its_security_groups() {
            let cluster = FakeCluster::default();
            zone_node(&cluster);
            // ids: [node subnet, 10.0.64.0/20 (a), 10.0.80.0/24 (a), 10.0.96.0/20 (b)]
            let (probe, _, ids) = node_with(&FakeCluster::default()).await;
            drop(probe);
            put(
                &cluster,
                "us-west-2a",
                &[&ids[2], &ids[3], &ids[1]],
                &["sg-pods"],
            );
            let (n, sim, _) = node_with(&cluster).await;
            n.fill().await.expect("fill");
            let enis = sim.all_enis();
            let secondary: Vec<_> = enis.iter().filter(|e| e.device_index != Some(0)).collect();
            assert_eq!(secondary.len(), 1, "one ENI for the warm target: {enis:?}");
            let eni = secondary[0];
            assert_eq!(
                eni.subnet_id, ids[1],
                "the zone's subnet with most free addresses"
            );
            assert_eq!(sim.security_groups_of(&eni.id), ["sg-pods"]);
            let primary = enis
                .iter()
                .find(|e| e.device_index == Some(0))
                .expect("primary");
            assert!(
                primary.secondary_ips.is_empty(),
                "the primary ENI carries no pod addresses"
            );
            let a = n.add(&key("c1"), &PodMeta::default()).expect("an address");
            assert_eq!(a.eni_id, eni.id);
            let status = n.eni_config_status().expect("custom networking on");
            assert_eq!(status.name.as_deref(), Some("us-west-2a"));
            assert_eq!(status.subnet.as_deref(), Some(ids[1].as_str()));
            assert_eq!(status.problem, None);
            // max-pods leaves the primary ENI out: (3 - 1) x 9 + 2.
            assert_eq!(n.policy().max_pods, 20);

            // A changed ENIConfig affects new ENIs only.
            put(&cluster, "us-west-2a", &[&ids[2]], &["sg-other"]);
            for i in 2..=9 {
                n.add(&key(&format!("c{i}")), &PodMeta::default())
                    .expect("the first ENI's addresses");
            }
            n.fill().await.expect("grow");
            let enis = sim.all_enis();
            assert!(
                enis.iter().any(|e| e.id == eni.id && e.subnet_id == ids[1]),
                "kept"
            );
            let newer = enis
                .iter()
                .find(|e| e.device_index == Some(2))
                .expect("a second ENI");
            assert_eq!(newer.subnet_id, ids[2]);
            assert_eq!(sim.security_groups_of(&newer.id), ["sg-other"]);
        }

        #[tokio::test]
        async fn a_missing_eni_config_fails_the_add_naming_it_and_attaches_nothing() {
            let cluster = FakeCluster::default();
            zone_node(&cluster);
            let (n, sim, ids) = node_with(&cluster).await;
            n.fill().await.expect("fill holds");
            assert_eq!(sim.calls().get("CreateNetworkInterface"), None);
            let err = n
                .add_durable_within(
                    &key("c1"),
                    &PodMeta::default(),
                    std::time::Duration::from_secs(5),
                )
                .await
                .expect_err("no ENI anywhere");
            assert_eq!(err.reason, FailureReason::EniConfigInvalid);
            assert!(
                err.message.contains("\"us-west-2a\"")
                    && err.message.contains("does not exist")
                    && err.message.contains(ZONE_LABEL),
                "{}",
                err.message
            );
            let (ready, reason, _, _) = crate::control::readiness(&n);
            assert!(!ready);
            assert_eq!(reason, FailureReason::EniConfigInvalid);
            let status = n.eni_config_status().expect("on");
            assert_eq!(status.cause, "missing");

            // Only a subnet of another zone: still nothing, and the cause says so.
            put(&cluster, "us-west-2a", &[&ids[3]], &[]);
            n.fill().await.expect("fill holds");
            assert_eq!(sim.calls().get("CreateNetworkInterface"), None);
            let err = n
                .add(&key("c2"), &PodMeta::default())
                .expect_err("other zone");
            assert!(err.message.contains("us-west-2b"), "{}", err.message);
            assert_eq!(n.eni_config_status().expect("on").cause, "other-zone");
            // The same verdict is reused for a minute: waking ADDs do not each cost a DescribeSubnets.
            let described = sim.calls().get("DescribeSubnets").copied();
            assert!(described.is_some());
            n.fill().await.expect("fill holds");
            n.fill().await.expect("fill holds");
            assert_eq!(sim.calls().get("DescribeSubnets").copied(), described);

            // Fixed: the watch lifts the block at its next look (the changed ENIConfig is checked at once, not
            // after the failed check's minute), and the next pool step places the ENI.
            put(&cluster, "us-west-2a", &[&ids[3], &ids[2]], &[]);
            let keys = n.config.custom_networking.clone().expect("on");
            n.refresh_eni_config(&keys).await;
            assert_eq!(n.eni_config_blocked(), None);
            let (ready, _, msg, _) = crate::control::readiness(&n);
            assert!(ready, "{msg}");
            assert_eq!(n.eni_config_status().expect("on").problem, None);
            n.fill().await.expect("fill");
            assert_eq!(sim.calls().get("CreateNetworkInterface"), Some(&1));
            assert!(n.add(&key("c3"), &PodMeta::default()).is_ok());
            assert_eq!(n.eni_config_blocked(), None);
        }

        #[tokio::test]
        async fn without_a_node_object_nothing_is_placed_and_status_says_why() {
            let (n, sim, _) = node_with(&FakeCluster::default()).await;
            n.fill().await.expect("fill holds");
            assert_eq!(sim.calls().get("CreateNetworkInterface"), None);
            let status = n.eni_config_status().expect("on");
            assert_eq!(status.cause, "node-unknown");
            assert_eq!(status.name, None);
        }
    }
}
