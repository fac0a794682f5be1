//! IPv6 mode (`ENABLE_IPv6=true`, `ENABLE_IPv4=false`): the anchor's, whose pods take addresses of one /80
//! prefix on the primary ENI.
//!
//! ```text
//!   startup:  primary ENI (IMDS) ─▶ its /80 per EC2 (DescribeNetworkInterfaces)
//!             none yet ─▶ AssignIpv6Addresses(Ipv6PrefixCount=1) ─▶ datastore<V6>: the ENI and its /80
//!   ADD:      datastore<V6> carves the next address of the /80 ─▶ checkpoint ("ipv6") ─▶ AddNetworkReply.IPv6Addr
//!   DEL:      the address cools down (a fresh one is carved meanwhile: a /80 never runs short)
//! ```
//!
//! As in the anchor: no secondary ENIs, no warm pool (the pool task holds, reconcile and the leaked-ENI job do
//! not run: one /80 holds 2^48 addresses), no SNAT or connmark rules on the node (IPv6 pods keep their address;
//! their IPv4 egress is the `egress-cni` plugin's), and max-pods is the prefix-delegation number (kubelet's
//! limit; the datastore never runs short of addresses before it). The node's sysctls (`all/forwarding`=1,
//! primary `accept_ra`=2, `all/disable_ipv6`=0) are the installer's, as they are the anchor's init container's.
//!
//! The IPv6 datastore ([`Datastore<V6>`]) sits next to the IPv4 one, which stays empty in this mode; both are
//! written to the one checkpoint (IPv6 entries in the `ipv6` member), and a write covers the sum of their
//! generations ([`Node::generation`]). Lock order: the IPv4 datastore before the IPv6 one.

use std::net::Ipv6Addr;

use datapath::MacAddr;
use ec2_api::{Ec2, Ec2Error, EniDescription, ImdsEni};
use ipnetwork::Ipv6Network;

use super::admission::AddFailure;
use super::checkpoint::CheckpointError;
use super::{Node, NodeError};
use crate::core::datastore::{Allocation, AssignError, Datastore, Eni, IpamKey, PodMeta};
use crate::core::family::V6;
use crate::sync::lock;
use aws_cni_proto::FailureReason;

/// Why IPv6 mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum Ipv6Error {
    #[error(
        "ENABLE_IPv6=true but the primary ENI {eni} is in a subnet without an IPv6 CIDR (IMDS \
         subnet-ipv6-cidr-blocks is empty): an IPv6 cluster needs dual-stack or IPv6 subnets"
    )]
    NoIpv6Subnet { eni: String },
    #[error(
        "ENABLE_IPv6=true needs prefix delegation, which instance type {instance_type} does not support (Nitro \
         only)"
    )]
    NotNitro { instance_type: String },
    #[error(
        "ENABLE_IPv6=true: cannot assign an IPv6 /80 prefix to the primary ENI {eni}: {source}"
    )]
    Assign {
        eni: String,
        #[source]
        source: Ec2Error,
    },
    #[error(
        "ENABLE_IPv6=true with DISABLE_NETWORK_RESOURCE_PROVISIONING=true, but the primary ENI {eni} has no IPv6 \
         prefix to use"
    )]
    NoPrefix { eni: String },
    #[error("datastore: {0}")]
    Datastore(String),
}

impl Node {
    /// Whether the node runs in IPv6 mode.
    pub fn ipv6(&self) -> bool {
        self.config.ipv6
    }

    /// The sum of both datastores' generations: what a checkpoint write covers.
    pub(crate) fn generation(&self) -> u64 {
        let v4 = lock(&self.ds).generation();
        v4 + lock(&self.ds6).generation()
    }

    /// Startup in IPv6 mode: the primary ENI and its /80 (EC2's, or a new one) in the IPv6 datastore.
    pub(super) async fn init_ipv6(
        &self,
        ie: &ImdsEni,
        mac: MacAddr,
        described: Option<&EniDescription>,
    ) -> Result<(), NodeError> {
        let eni_id = ie.eni_id.clone();
        let subnet = ie
            .subnet_ipv6_cidrs
            .first()
            .copied()
            .or_else(|| described.and_then(|d| d.subnet_ipv6_cidr))
            .ok_or_else(|| Ipv6Error::NoIpv6Subnet {
                eni: eni_id.clone(),
            })?;
        let mut prefixes: Vec<Ipv6Network> = described
            .map(|d| d.ipv6_prefixes.clone())
            .unwrap_or_default();
        if prefixes.is_empty() {
            if self.config.disable_provisioning {
                return Err(Ipv6Error::NoPrefix { eni: eni_id }.into());
            }
            prefixes = self
                .ec2
                .assign_ipv6_prefixes(&eni_id, 1)
                .await
                .map_err(|source| Ipv6Error::Assign {
                    eni: eni_id.clone(),
                    source,
                })?;
            if prefixes.is_empty() {
                return Err(Ipv6Error::Assign {
                    eni: eni_id,
                    source: Ec2Error::Other {
                        api: ec2_api::Api::AssignIpv6Addresses.name(),
                        code: "NoPrefixAssigned".into(),
                        message: "EC2 answered without an assigned IPv6 prefix".into(),
                    },
                }
                .into());
            }
            tracing::info!(eni = %eni_id, prefixes = ?prefixes, "assigned an IPv6 prefix to the primary ENI");
        }
        let primary_ip = ie
            .ipv6s
            .first()
            .copied()
            .or_else(|| described.and_then(|d| d.ipv6_addresses.first().copied()))
            .unwrap_or(Ipv6Addr::UNSPECIFIED);
        let mut eni = Eni::<V6>::of(&eni_id, mac, 0, primary_ip, subnet);
        eni.attached_at = self.deps.clock.now();
        let mut ds = lock(&self.ds6);
        ds.add_eni(eni);
        ds.add_prefixes(&eni_id, &prefixes)
            .map_err(|e| Ipv6Error::Datastore(e.to_string()))?;
        Ok(())
    }

    /// Assigns an IPv6 address to `key` (or returns the one it holds); memory only.
    pub fn add6(&self, key: &IpamKey, meta: &PodMeta) -> Result<Allocation<V6>, AddFailure> {
        self.try_assign6(key, meta)
            .map(|(a, _, _)| a)
            .map_err(|e| self.explain6(e))
    }

    fn try_assign6(
        &self,
        key: &IpamKey,
        meta: &PodMeta,
    ) -> Result<(Allocation<V6>, bool, u64), AssignError> {
        self.assign_in(&self.ds6, key, meta)
    }

    fn explain6(&self, err: AssignError) -> AddFailure {
        let AssignError::NoFreeIp { in_cooldown } = err;
        let prefixes: usize = lock(&self.ds6).enis().map(|e| e.prefixes().count()).sum();
        if prefixes == 0 {
            return AddFailure {
                reason: FailureReason::NotReady,
                message: "IPv6 mode: the primary ENI has no IPv6 prefix yet".into(),
            };
        }
        AddFailure {
            reason: FailureReason::AllFreeIpsInCooldown,
            message: format!(
                "every address of the node's IPv6 prefix is held or cooling down ({in_cooldown} cooling)"
            ),
        }
    }

    /// [`Node::add6`] that returns only once the assignment is in the checkpoint (as [`Node::add_durable`]).
    pub async fn add6_durable(
        &self,
        key: &IpamKey,
        meta: &PodMeta,
    ) -> Result<Allocation<V6>, AddFailure> {
        let (alloc, fresh, generation) =
            self.try_assign6(key, meta).map_err(|e| self.explain6(e))?;
        self.make_durable(&self.ds6, key, &alloc, fresh, generation)
            .await?;
        Ok(alloc)
    }

    /// Releases the IPv6 address of `key`; `None` when it held none. Memory only.
    pub fn del6(&self, key: &IpamKey) -> Option<Allocation<V6>> {
        self.release_in(&self.ds6, key).0
    }

    /// [`Node::del6`] that returns only once the release is in the checkpoint (as [`Node::del_durable`]).
    pub async fn del6_durable(
        &self,
        key: &IpamKey,
    ) -> Result<Option<Allocation<V6>>, CheckpointError> {
        self.released_durably(self.release_in(&self.ds6, key)).await
    }

    /// IPv6 mode: the primary ENI's IPv6 address (what the policy agent gets as `NodeIPv6`); `None` otherwise.
    pub fn node_ipv6(&self) -> Option<Ipv6Addr> {
        lock(&self.ds6)
            .enis()
            .find(|e| e.is_primary)
            .map(|e| e.primary_ip)
            .filter(|ip| !ip.is_unspecified())
    }

    /// A copy of the IPv6 datastore (status output and tests).
    pub fn datastore6(&self) -> Datastore<V6> {
        lock(&self.ds6).clone()
    }
}

impl From<Ipv6Error> for NodeError {
    fn from(e: Ipv6Error) -> NodeError {
        NodeError::Ipv6(e)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::engine::checkpoint::Checkpoint;
    use crate::engine::{NodeDeps, NodeFacts, Recovery};
    use crate::host::fakes::FakeHost;
    use crate::ratelimit::PacingConfig;
    use ec2_api::clock::{Clock, ManualClock};
    use ec2_sim::SimEc2;

    fn v6_config() -> Config {
        Config {
            ipv6: true,
            prefix_delegation: true,
            warm_prefix_target: 1,
            ..Config::default()
        }
    }

    fn key(c: &str) -> IpamKey {
        IpamKey {
            network_name: "aws-cni".into(),
            container_id: c.into(),
            if_name: "eth0".into(),
        }
    }

    fn meta(name: &str) -> PodMeta {
        PodMeta {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    async fn start(
        sim: &SimEc2,
        clock: &ManualClock,
        config: Config,
        checkpoint: Option<PathBuf>,
    ) -> Result<Arc<Node>, NodeError> {
        start_with_pods(sim, clock, config, checkpoint, None).await
    }

    async fn start_with_pods(
        sim: &SimEc2,
        clock: &ManualClock,
        config: Config,
        checkpoint: Option<PathBuf>,
        pods: Option<FakeHost>,
    ) -> Result<Arc<Node>, NodeError> {
        let deps = NodeDeps::sim(sim, clock);
        let recovery = match checkpoint {
            None => Recovery::default(),
            Some(path) => Recovery {
                entries: crate::engine::checkpoint::read(&path)
                    .expect("checkpoint")
                    .unwrap_or_default(),
                checkpoint: Some(Arc::new(Checkpoint::new(path))),
                pods: pods.map(|p| Arc::new(p) as Arc<dyn crate::host::HostNetwork>),
                ..Recovery::default()
            },
        };
        let facts = NodeFacts::discover(deps.imds.as_ref()).await?;
        Node::init_recovering(deps, facts, config, None, PacingConfig::default(), recovery).await
    }

    /// A directory of its own for a checkpoint file, removed with the guard (also when the test fails).
    struct CheckpointDir(PathBuf);

    impl CheckpointDir {
        fn new(name: &str) -> CheckpointDir {
            let dir = std::env::temp_dir().join(format!("ipamd-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("mkdir");
            CheckpointDir(dir)
        }

        fn path(&self) -> PathBuf {
            self.0.join("ipam.json")
        }
    }

    impl Drop for CheckpointDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn prefix_of(sim: &SimEc2) -> Ipv6Network {
        let primary = sim
            .all_enis()
            .into_iter()
            .find(|e| e.device_index == Some(0))
            .expect("primary");
        assert_eq!(primary.ipv6_prefixes.len(), 1, "{primary:?}");
        primary.ipv6_prefixes[0]
    }

    #[tokio::test]
    async fn startup_takes_one_80_on_the_primary_eni_and_pods_get_addresses_of_it() {
        let (sim, clock) = ec2_sim::on_manual_clock("m5.large", |_| {}).await;
        let n = start(&sim, &clock, v6_config(), None).await.expect("init");
        assert_eq!(sim.calls().get("AssignIpv6Addresses"), Some(&1));
        let prefix = prefix_of(&sim);
        assert_eq!(prefix.prefix(), 80);
        // No warm pool, no secondary ENI, no IPv4 address for pods.
        n.fill().await.expect("fill");
        assert_eq!(sim.calls().get("CreateNetworkInterface"), None);
        assert_eq!(sim.calls().get("AssignPrivateIpAddresses"), None);
        assert_eq!(n.datastore().enis().count(), 0);
        // max-pods is the prefix-delegation number, as the anchor's calculator gives it for IPv6 (which needs
        // prefix delegation): m5.large's 3 x (10 - 1) x 16 + 2, capped at 110 for 2 vCPUs.
        assert_eq!(n.policy().max_pods, 110);
        let before = sim.calls();
        let a = n.add6(&key("a"), &meta("a")).expect("address");
        let b = n.add6(&key("b"), &meta("b")).expect("address");
        assert!(
            prefix.contains(a.ip) && prefix.contains(b.ip),
            "{a:?} {b:?}"
        );
        assert_ne!(a.ip, b.ip);
        assert_eq!((a.device_number, a.route_table), (0, datapath::MAIN_TABLE));
        // A repeated ADD gets the same address; none of this calls EC2.
        assert_eq!(n.add6(&key("a"), &meta("a")).expect("again").ip, a.ip);
        assert_eq!(sim.calls(), before, "ADD must not call EC2");
        // DEL: the address cools down; the next pod gets a fresh one.
        assert_eq!(n.del6(&key("a")).map(|x| x.ip), Some(a.ip));
        assert_eq!(n.del6(&key("a")), None, "a repeated DEL releases nothing");
        let c = n.add6(&key("c"), &meta("c")).expect("address");
        assert!(c.ip != a.ip && c.ip != b.ip && prefix.contains(c.ip));
        assert_eq!(n.stats().assigned, 2);
        assert!(n.stats().available > 1_000_000, "{:?}", n.stats());
        assert_eq!(n.snapshot().enis[0].addresses.len(), 3);
        // Metrics name the held IPv6 addresses (awscni_assigned_ip_per_cidr, one /128 each).
        let m = crate::metrics::Metrics::new().expect("metrics");
        m.refresh(&n.snapshot());
        let text = m.render();
        assert!(
            text.contains(&format!("cidr=\"{}/128\"}} 1", b.ip)),
            "{text}"
        );
        assert!(
            text.contains(&format!("cidr=\"{}/128\"}} 0", a.ip)),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_restart_keeps_ipv6_pods_and_takes_no_second_prefix() {
        let (sim, clock) = ec2_sim::on_manual_clock("m5.large", |_| {}).await;
        let dir = CheckpointDir::new("ipv6");
        let path = dir.path();
        let n = start(&sim, &clock, v6_config(), Some(path.clone()))
            .await
            .expect("init");
        let a = n.add6_durable(&key("a"), &meta("a")).await.expect("ADD");
        let b = n.add6_durable(&key("b"), &meta("b")).await.expect("ADD");
        let text = std::fs::read_to_string(&path).expect("checkpoint");
        assert!(text.contains(&format!("\"ipv6\":\"{}\"", a.ip)), "{text}");
        assert!(!text.contains("\"ipv4\""), "{text}");
        drop(n);
        clock.advance(std::time::Duration::from_secs(5));
        let n = start(&sim, &clock, v6_config(), Some(path.clone()))
            .await
            .expect("restart");
        assert_eq!(sim.calls().get("AssignIpv6Addresses"), Some(&1));
        assert_eq!(n.datastore6().lookup(&key("a")).map(|x| x.ip), Some(a.ip));
        assert_eq!(n.datastore6().lookup(&key("b")).map(|x| x.ip), Some(b.ip));
        let c = n.add6_durable(&key("c"), &meta("c")).await.expect("ADD");
        assert!(c.ip != a.ip && c.ip != b.ip);
        assert_eq!(
            n.del6_durable(&key("a")).await.expect("DEL").map(|x| x.ip),
            Some(a.ip)
        );
        let back = crate::engine::checkpoint::read(&path)
            .expect("read")
            .expect("file");
        let ips: Vec<String> = back.iter().map(|e| e.ip.to_string()).collect();
        assert_eq!(ips.len(), 2, "{ips:?}");
        assert!(!ips.contains(&a.ip.to_string()));
    }

    #[tokio::test]
    async fn a_restored_ipv6_pod_whose_veth_is_gone_is_released_and_one_whose_veth_is_there_is_kept(
    ) {
        let (sim, clock) = ec2_sim::on_manual_clock("m5.large", |_| {}).await;
        let dir = CheckpointDir::new("ipv6-gone");
        let path = dir.path();
        let n = start(&sim, &clock, v6_config(), Some(path.clone()))
            .await
            .expect("init");
        let kept = n.add6_durable(&key("k"), &meta("kept")).await.expect("ADD");
        let gone = n.add6_durable(&key("g"), &meta("gone")).await.expect("ADD");
        drop(n);
        clock.advance(std::time::Duration::from_secs(60));
        let pods = FakeHost::default();
        crate::sync::lock(&pods.veths)
            .insert(datapath::host_veth_name("eni", "default", "kept", 0));
        let n = start_with_pods(&sim, &clock, v6_config(), Some(path.clone()), Some(pods))
            .await
            .expect("restart");
        assert_eq!(n.start_serving().await, 1);
        assert_eq!(
            n.datastore6().lookup(&key("k")).map(|a| a.ip),
            Some(kept.ip)
        );
        assert_eq!(n.datastore6().lookup(&key("g")), None);
        let text = std::fs::read_to_string(&path).expect("checkpoint");
        assert!(
            text.contains(&kept.ip.to_string()) && !text.contains(&gone.ip.to_string()),
            "{text}"
        );
    }

    #[tokio::test]
    async fn ipv6_mode_is_refused_on_a_node_that_cannot_have_it() {
        // Xen: no prefix delegation, so no /80.
        let (sim, clock) = ec2_sim::on_manual_clock("t2.medium", |_| {}).await;
        let err = start(&sim, &clock, v6_config(), None)
            .await
            .expect_err("not Nitro");
        assert!(err.to_string().contains("Nitro"), "{err}");
        // An IPv4-only subnet.
        let (sim, clock) =
            ec2_sim::on_manual_clock("m5.large", |s| s.subnet_ipv6_cidr = None).await;
        let err = start(&sim, &clock, v6_config(), None)
            .await
            .expect_err("no IPv6 subnet");
        assert!(err.to_string().contains("subnet-ipv6-cidr-blocks"), "{err}");
        // Provisioning disabled and no prefix yet.
        let (sim, clock) = ec2_sim::on_manual_clock("m5.large", |_| {}).await;
        let cfg = Config {
            disable_provisioning: true,
            ..v6_config()
        };
        let err = start(&sim, &clock, cfg, None).await.expect_err("no prefix");
        assert!(err.to_string().contains("no IPv6 prefix"), "{err}");
        assert_eq!(sim.calls().get("AssignIpv6Addresses"), None);
        let _ = clock.now();
    }
}
