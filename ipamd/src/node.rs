//! The node: datastore + EC2 + IMDS + host networking, and the pool task that keeps IPs ready.
//!
//! Request path (ADD/DEL) and pool path never wait on each other: an ADD takes the datastore lock for a few
//! microseconds, never calls EC2 or IMDS, and if no IP is free it fails at once with the specific reason while it
//! wakes the pool task. The pool task alone talks to EC2, one step at a time ([`crate::pool::decide`]), and only
//! takes the datastore lock to read counts or to add what EC2 returned.
//!
//! Startup follows the anchor (§3.1): read the node and its ENIs from IMDS, configure each ENI on the host, load
//! their secondary IPs, then fill the pool before serving.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aws_cni_proto::FailureReason;
use datapath::MacAddr;
use instance_limits::max_pods::{compute, CniVersion, MaxPodsOptions, DEFAULT_CNI_VERSION};
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::config::Config;
use crate::datastore::{Allocation, AssignError, Datastore, Eni, IpamKey, PodMeta, PoolStats};
use crate::ec2::{
    CreateEniRequest, Ec2, Ec2Error, IpRequest, ENI_DESCRIPTION_PREFIX, TAG_CREATED_AT,
    TAG_INSTANCE_ID,
};
use crate::hostnet::{HostNetError, HostNetwork};
use crate::imds::{Imds, ImdsError, NodeMetadata};
use crate::pool::{decide, Decision, EniRoom, PoolPolicy};

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("reading instance metadata: {0}")]
    Imds(#[from] ImdsError),
    #[error("instance type {0:?} is not in the instance-limits table")]
    UnknownInstanceType(String),
    #[error("instance type {instance_type}: cannot compute max-pods: {reason}")]
    MaxPods {
        instance_type: String,
        reason: String,
    },
    #[error("ENI {eni} from IMDS has an invalid MAC {mac:?}")]
    BadMac { eni: String, mac: String },
    #[error(transparent)]
    HostNet(#[from] HostNetError),
    #[error("datastore: {0}")]
    Datastore(#[from] crate::datastore::DatastoreError),
}

/// Why an ADD got no IP: a reason code the plugin maps to a CNI error, and a sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddFailure {
    pub reason: FailureReason,
    pub message: String,
}

/// Outside worlds the node talks to.
#[derive(Clone)]
pub struct NodeDeps {
    pub ec2: Arc<dyn Ec2>,
    pub imds: Arc<dyn Imds>,
    pub hostnet: Arc<dyn HostNetwork>,
    pub clock: Arc<dyn Clock>,
}

#[derive(Debug, Default)]
struct PoolStatus {
    /// The last EC2 failure of the pool task, cleared by the next success.
    last_error: Option<Ec2Error>,
    /// What the pool task decided last (for status pages and logs).
    last_decision: Option<Decision>,
}

/// See the module docs.
pub struct Node {
    deps: NodeDeps,
    config: Config,
    meta: NodeMetadata,
    subnet_id: String,
    policy: PoolPolicy,
    ds: Mutex<Datastore>,
    status: Mutex<PoolStatus>,
    wake: Notify,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("instance", &self.meta.instance_id)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Datastore operations do not panic; if one ever did, keep the data rather than poison every request.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Node {
    /// Discovers the node and its ENIs and loads them. Does not call EC2.
    pub async fn init(
        deps: NodeDeps,
        config: Config,
        max_pods_override: Option<u32>,
    ) -> Result<Arc<Node>, NodeError> {
        let meta = deps.imds.node().await?;
        let limits = instance_limits::lookup(&meta.instance_type)
            .ok_or_else(|| NodeError::UnknownInstanceType(meta.instance_type.clone()))?;
        let max_enis = config.max_eni.map_or(limits.enis, |m| m.min(limits.enis));
        let max_pods = match max_pods_override {
            Some(n) => n,
            None => {
                let version: CniVersion = DEFAULT_CNI_VERSION.parse().map_err(
                    |e: instance_limits::max_pods::MaxPodsError| NodeError::MaxPods {
                        instance_type: meta.instance_type.clone(),
                        reason: e.to_string(),
                    },
                )?;
                let mut opts = MaxPodsOptions::new(version);
                opts.cni_max_eni = config.max_eni;
                opts.show_max_allowed = true; // the ENI-derived limit, as eni-max-pods.txt
                compute(limits, &opts)
                    .map_err(|e| NodeError::MaxPods {
                        instance_type: meta.instance_type.clone(),
                        reason: e.to_string(),
                    })?
                    .max_pods
            }
        };
        let policy = PoolPolicy {
            warm_eni_target: config.warm_eni_target,
            warm_ip_target: config.warm_ip_target,
            minimum_ip_target: config.minimum_ip_target,
            ips_per_eni: limits.ipv4_per_eni.saturating_sub(1),
            max_enis,
            max_pods,
        };
        let mut ds = Datastore::new(config.ip_cooldown);
        let mut subnet_id = String::new();
        for ie in deps.imds.enis().await? {
            let mac = MacAddr::parse(&ie.mac).ok_or_else(|| NodeError::BadMac {
                eni: ie.eni_id.clone(),
                mac: ie.mac.clone(),
            })?;
            let Some((primary_ip, secondary)) = ie.ipv4s.split_first() else {
                continue;
            };
            if ie.device_number == 0 {
                subnet_id = ie.subnet_id.clone();
            }
            let eni = Eni::new(
                &ie.eni_id,
                mac,
                ie.device_number,
                *primary_ip,
                ie.subnet_cidr,
            );
            deps.hostnet.setup_eni(&eni, config.eni_mtu).await?;
            ds.add_eni(eni);
            ds.add_ips(&ie.eni_id, secondary)?;
        }
        tracing::info!(
            instance = %meta.instance_id,
            instance_type = %meta.instance_type,
            max_enis,
            ips_per_eni = policy.ips_per_eni,
            max_pods,
            enis = ds.stats(deps.clock.now()).enis,
            "node initialised"
        );
        Ok(Arc::new(Node {
            deps,
            config,
            meta,
            subnet_id,
            policy,
            ds: Mutex::new(ds),
            status: Mutex::new(PoolStatus::default()),
            wake: Notify::new(),
        }))
    }

    /// The node's metadata as read at startup.
    pub fn metadata(&self) -> &NodeMetadata {
        &self.meta
    }

    /// The pool policy in force.
    pub fn policy(&self) -> PoolPolicy {
        self.policy
    }

    /// Current counts.
    pub fn stats(&self) -> PoolStats {
        lock(&self.ds).stats(self.deps.clock.now())
    }

    /// A copy of the datastore (for status output and tests).
    pub fn datastore(&self) -> Datastore {
        lock(&self.ds).clone()
    }

    /// Assigns an IP to `key` (or returns the one it holds). Never waits on EC2.
    pub fn add(&self, key: &IpamKey, meta: &PodMeta) -> Result<Allocation, AddFailure> {
        let now = self.deps.clock.now();
        let res = lock(&self.ds).assign(key, meta, now);
        // Whatever happened, the pool may now be below target.
        self.wake.notify_one();
        res.map_err(|e| self.explain(e))
    }

    /// Releases the IP of `key`; `None` when it held none (repeated DEL).
    pub fn del(&self, key: &IpamKey) -> Option<Allocation> {
        let res = lock(&self.ds).unassign(key, self.deps.clock.now());
        self.wake.notify_one();
        res
    }

    fn explain(&self, err: AssignError) -> AddFailure {
        let AssignError::NoFreeIp { in_cooldown } = err;
        let stats = self.stats();
        let status = lock(&self.status);
        let total = u32::try_from(stats.total).unwrap_or(u32::MAX);
        let at_eni_limit = matches!(status.last_decision, Some(Decision::AtEniLimit { .. }));
        let cannot_grow =
            total >= self.policy.max_pods || at_eni_limit || self.config.disable_provisioning;
        let cooldown_secs = self.config.ip_cooldown.as_secs();
        let (reason, message) = if in_cooldown > 0 && cannot_grow {
            (
                FailureReason::AllFreeIpsInCooldown,
                format!(
                    "all {in_cooldown} free address(es) are in their {cooldown_secs}s reuse cooldown and the node \
                     cannot get more ({total} addresses, max-pods {}, {} of {} ENIs)",
                    self.policy.max_pods, stats.enis, self.policy.max_enis
                ),
            )
        } else if total >= self.policy.max_pods {
            (
                FailureReason::MaxPodsReached,
                format!(
                    "node holds {total} addresses, its max-pods limit ({}), all assigned",
                    self.policy.max_pods
                ),
            )
        } else if at_eni_limit {
            (
                FailureReason::NodeAtEniLimit,
                format!(
                    "all {} ENIs of this instance type are attached and full ({total} addresses, {} assigned)",
                    self.policy.max_enis, stats.assigned
                ),
            )
        } else if let Some(e) = &status.last_error {
            let reason = match e {
                Ec2Error::Throttled { .. } => FailureReason::Ec2Throttled,
                Ec2Error::SubnetExhausted { .. } => FailureReason::SubnetExhausted,
                _ => FailureReason::Ec2Error,
            };
            (reason, format!("no free IP and the pool cannot grow: {e}"))
        } else if self.config.disable_provisioning {
            (
                FailureReason::NoFreeIpPoolGrowing,
                "no free IP and DISABLE_NETWORK_RESOURCE_PROVISIONING=true: ipamd will not ask EC2 for more"
                    .to_string(),
            )
        } else if in_cooldown > 0 {
            (
                FailureReason::AllFreeIpsInCooldown,
                format!(
                    "all {in_cooldown} free address(es) are in their {cooldown_secs}s reuse cooldown; the pool \
                     is growing"
                ),
            )
        } else {
            (
                FailureReason::NoFreeIpPoolGrowing,
                format!("no free IP yet ({total} addresses, all assigned); the pool is growing"),
            )
        };
        AddFailure { reason, message }
    }

    fn rooms(&self) -> Vec<EniRoom> {
        lock(&self.ds)
            .enis()
            .map(|e| EniRoom {
                eni_id: e.id.clone(),
                device_number: e.device_number,
                ips: u32::try_from(e.ip_count()).unwrap_or(u32::MAX),
            })
            .collect()
    }

    /// Decides and carries out one pool step. Returns what was decided.
    pub async fn pool_step(&self) -> Result<Decision, Ec2Error> {
        let decision = decide(&self.policy, &self.stats(), &self.rooms());
        let result = if self.config.disable_provisioning {
            Ok(())
        } else {
            match &decision {
                Decision::Hold | Decision::AtEniLimit { .. } => Ok(()),
                Decision::AssignIps { eni_id, count } => self.assign_ips(eni_id, *count).await,
                Decision::AttachEni { ips } => self.attach_eni(*ips).await,
            }
        };
        let mut st = lock(&self.status);
        st.last_decision = Some(decision.clone());
        match result {
            Ok(()) => {
                st.last_error = None;
                Ok(decision)
            }
            Err(e) => {
                st.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    async fn assign_ips(&self, eni_id: &str, count: u32) -> Result<(), Ec2Error> {
        let ips = self
            .deps
            .ec2
            .assign_private_ips(eni_id, IpRequest::Secondary(count))
            .await?
            .ips;
        let added = lock(&self.ds).add_ips(eni_id, &ips);
        match added {
            Ok(n) => tracing::info!(eni = eni_id, added = n, "assigned secondary IPs"),
            Err(e) => {
                tracing::error!(eni = eni_id, error = %e, "EC2 returned IPs the datastore refused")
            }
        }
        Ok(())
    }

    async fn attach_eni(&self, ips: u32) -> Result<(), Ec2Error> {
        let used: Vec<u32> = lock(&self.ds).enis().map(|e| e.device_number).collect();
        let Some(device_index) = (1..self.policy.max_enis).find(|d| !used.contains(d)) else {
            return Ok(());
        };
        let mut tags = BTreeMap::new();
        tags.insert(TAG_INSTANCE_ID.to_string(), self.meta.instance_id.clone());
        tags.insert(
            TAG_CREATED_AT.to_string(),
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + self.deps.clock.wall())
                .to_string(),
        );
        let eni = self
            .deps
            .ec2
            .create_network_interface(CreateEniRequest {
                subnet_id: self.subnet_id.clone(),
                description: format!("{ENI_DESCRIPTION_PREFIX}{}", self.meta.instance_id),
                security_groups: self.meta.security_groups.clone(),
                tags,
                ips: IpRequest::Secondary(ips),
            })
            .await?;
        let attachment = match self
            .deps
            .ec2
            .attach_network_interface(&eni.id, &self.meta.instance_id, device_index, 0)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                // A created-but-unattached ENI is a leak waiting to happen: delete it now.
                if let Err(del) = self.deps.ec2.delete_network_interface(&eni.id).await {
                    tracing::warn!(eni = %eni.id, error = %del, "could not delete ENI after failed attach; \
                        the leaked-ENI cleanup will retry");
                }
                return Err(e);
            }
        };
        if let Err(e) = self
            .deps
            .ec2
            .set_delete_on_termination(&eni.id, &attachment)
            .await
        {
            tracing::warn!(eni = %eni.id, error = %e, "could not set DeleteOnTermination");
        }
        let Some(mac) = MacAddr::parse(&eni.mac) else {
            return Err(Ec2Error::Other {
                api: "CreateNetworkInterface",
                code: "InvalidMac".into(),
                message: format!("EC2 returned MAC {:?} for {}", eni.mac, eni.id),
            });
        };
        let new = Eni::new(&eni.id, mac, device_index, eni.primary_ip, eni.subnet_cidr);
        if let Err(e) = self.deps.hostnet.setup_eni(&new, self.config.eni_mtu).await {
            // Keep the ENI (EC2 has it attached) but do not hand out its IPs: pods on it would have no route.
            tracing::error!(eni = %eni.id, error = %e, "ENI attached but host setup failed; will retry");
            return Err(Ec2Error::Other {
                api: "AttachNetworkInterface",
                code: "HostSetupFailed".into(),
                message: e.to_string(),
            });
        }
        let mut ds = lock(&self.ds);
        ds.add_eni(new);
        if let Err(e) = ds.add_ips(&eni.id, &eni.secondary_ips) {
            tracing::error!(eni = %eni.id, error = %e, "datastore refused the new ENI's IPs");
        }
        tracing::info!(eni = %eni.id, device_index, ips = eni.secondary_ips.len(), "attached ENI");
        Ok(())
    }

    /// Runs pool steps until the pool holds its target (or cannot grow). Used before serving.
    pub async fn fill(&self) -> Result<(), Ec2Error> {
        for _ in 0..64 {
            match self.pool_step().await? {
                Decision::Hold | Decision::AtEniLimit { .. } => return Ok(()),
                _ => {}
            }
        }
        Ok(())
    }

    /// The pool task: wakes on every ADD/DEL and every `interval`, grows the pool, backs off on EC2 errors with
    /// jitter. Returns when `shutdown` fires.
    pub async fn run_pool(self: Arc<Self>, interval: Duration, shutdown: Arc<Notify>) {
        let mut failures: u32 = 0;
        loop {
            let mut delay = None;
            for _ in 0..16 {
                match self.pool_step().await {
                    Ok(Decision::Hold | Decision::AtEniLimit { .. }) => {
                        failures = 0;
                        break;
                    }
                    Ok(_) => failures = 0,
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        let base = Duration::from_millis(500)
                            .saturating_mul(1u32 << failures.min(7))
                            .min(Duration::from_secs(60));
                        let jitter = base.mul_f64(rand::random::<f64>() * 0.5);
                        tracing::warn!(error = %e, retry_in = ?(base + jitter), "pool step failed");
                        delay = Some(base + jitter);
                        break;
                    }
                }
            }
            let wait = delay.unwrap_or(interval);
            tokio::select! {
                () = shutdown.notified() => return,
                () = self.wake.notified(), if delay.is_none() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The VPC CIDRs reported to the plugin (read once at startup, never per ADD).
    pub fn vpc_cidrs(&self) -> Vec<String> {
        self.meta.vpc_cidrs.iter().map(|c| c.to_string()).collect()
    }

    /// The IP of the node's primary ENI.
    pub fn primary_ip(&self) -> Ipv4Addr {
        self.meta.local_ipv4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::hostnet::RecordingHostNetwork;
    use crate::sim::{NoHotplug, SimEc2, SimSpec};

    async fn node(instance_type: &str, config: Config) -> (Arc<Node>, SimEc2, ManualClock) {
        let sim = SimEc2::launch(SimSpec::new(instance_type), Arc::new(NoHotplug))
            .await
            .expect("sim");
        let clock = ManualClock::default();
        let deps = NodeDeps {
            ec2: Arc::new(sim.clone()),
            imds: Arc::new(sim.clone()),
            hostnet: Arc::new(RecordingHostNetwork::default()),
            clock: Arc::new(clock.clone()),
        };
        let n = Node::init(deps, config, None).await.expect("init");
        (n, sim, clock)
    }

    fn key(i: usize) -> IpamKey {
        IpamKey {
            network_name: "aws-cni".into(),
            container_id: format!("c{i}"),
            if_name: "eth0".into(),
        }
    }

    #[tokio::test]
    async fn fill_then_add_never_calls_ec2_while_ips_are_free() {
        let (n, sim, _) = node("m5.large", Config::default()).await;
        n.fill().await.expect("fill");
        assert_eq!(n.stats().available, 9);
        let before = sim.calls();
        for i in 0..9 {
            n.add(&key(i), &PodMeta::default()).expect("free ip");
        }
        assert_eq!(sim.calls(), before, "ADD must not call EC2");
    }

    #[tokio::test]
    async fn m5_large_fills_to_27_ips_and_reports_eni_limit() {
        let (n, sim, _) = node("m5.large", Config::default()).await;
        let mut ips = std::collections::HashSet::new();
        for i in 0..27 {
            n.fill().await.expect("fill");
            let a = n.add(&key(i), &PodMeta::default()).expect("ip");
            assert!(ips.insert(a.ip));
        }
        n.fill().await.expect("fill");
        let err = n.add(&key(99), &PodMeta::default()).expect_err("full");
        assert_eq!(err.reason, FailureReason::NodeAtEniLimit, "{}", err.message);
        assert_eq!(n.stats().enis, 3);
        assert_eq!(sim.calls().get("CreateNetworkInterface"), Some(&2));
    }

    #[tokio::test]
    async fn cooldown_failure_is_named_and_lifts_after_the_period() {
        let cfg = Config {
            max_eni: Some(1),
            ..Config::default()
        };
        let (n, _, clock) = node("t3.nano", cfg).await; // 1 ENI allowed, 2 IPv4 per ENI -> 1 secondary IP
        n.fill().await.expect("fill");
        n.add(&key(1), &PodMeta::default()).expect("ip");
        n.del(&key(1));
        n.fill().await.expect("fill");
        let err = n.add(&key(2), &PodMeta::default()).expect_err("cooling");
        assert_eq!(
            err.reason,
            FailureReason::AllFreeIpsInCooldown,
            "{}",
            err.message
        );
        clock.advance(Duration::from_secs(31));
        n.add(&key(2), &PodMeta::default()).expect("after cooldown");
    }
}
