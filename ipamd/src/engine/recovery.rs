//! Restart recovery: the checkpoint's assignments put back on the addresses EC2 confirms, and checked against
//! the host before and after the socket opens.
//!
//! As the anchor does, with the anchor's restart bugs #3887, #3019, #1967 and #711 closed.
//! In this order, before the socket opens:
//! 1. the checkpoint is read first of all ([`crate::engine::checkpoint::read`]); a bad file stops ipamd and is kept;
//! 2. the node's ENIs come from IMDS, and their addresses from EC2 (DescribeNetworkInterfaces, retried; never
//!    IMDS's address lists, which lag); a fresh node, whose IMDS shows the primary ENI alone and no secondary
//!    address and whose checkpoint is empty, has nothing to confirm and makes no call ([`nothing_to_confirm`]);
//! 3. each checkpointed assignment is put back on the address EC2 confirmed (`Node::restore`). An address no
//!    known ENI has makes ipamd ask EC2 for every ENI attached to the instance, and adopt those IMDS does not list
//!    yet (a crash in the middle of an attach, anchor #66); an address EC2 does not have at all is dropped and
//!    logged (its pod has lost it; handing it to anyone is what caused duplicate IPs in the anchor). The restored
//!    state is written back at once;
//! 4. the pool is filled (its counts already include the restored pods, so nothing restored is handed out);
//! 5. the socket is bound, and *before the first connection is accepted* (they wait in the listen backlog) each
//!    restored pod's host veth is looked up ([`Node::start_serving`]): gone and older than [`RESTORE_GRACE`]:
//!    its address is released and its 512/1536 rules and host route removed (as the anchor). A DEL that came
//!    while ipamd was down or recovering found no socket, so the plugin tore the pod down from prevResult and
//!    succeeded (the anchor's contract); its veth is gone, so this step releases the address: the DEL is
//!    honoured, neither lost nor failed.
//! 6. Restored pods stay *unconfirmed* until a check at least [`RESTORE_SETTLE`] after the socket opened has seen
//!    their veth: a plugin still tearing down (DEL) or still building (an ADD answered just before the crash)
//!    when step 5 ran is caught by the pool task's next check (every [`RESTORE_RECHECK`] once settled) or the
//!    next reconcile pass, which repeat the check for unconfirmed pods.
//!
//! Every reconcile period the same check runs for every pod, restored or not: a DEL that could not reach ipamd
//! (stalled past the plugin's deadline) succeeded after tearing down from prevResult, and its address is released
//! once the pod's veth has been gone for [`RESTORE_GRACE`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::checkpoint::CheckpointEntry;
use super::enis::mac_of;
use super::{Node, NodeError};
use crate::core::datastore::{Eni, IpamKey, RestoreError};
use crate::sync::lock;
use ec2_api::{Ec2, EniDescription, EniFilter};

/// A restored pod's veth must have been seen at least this long after the socket opened to be confirmed.
pub const RESTORE_SETTLE: Duration = Duration::from_secs(15);
/// A restored assignment younger than this is not released for a missing veth: its plugin may still be
/// building the pod.
pub const RESTORE_GRACE: Duration = Duration::from_secs(15);
/// After the settle time, unconfirmed restored pods are checked this often by the pool task.
pub const RESTORE_RECHECK: Duration = Duration::from_secs(5);

/// The wait between startup attempts to confirm the node's ENIs with EC2 (1, 2, 4, ... s, equal jitter, at
/// most a minute); retried for as long as the failure is transient.
pub const STARTUP_RETRY: crate::ratelimit::Backoff = crate::ratelimit::Backoff {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(60),
};

/// Whether a starting node has nothing for EC2 to confirm (no startup DescribeNetworkInterfaces): IMDS lists
/// only the primary ENI on card 0, with its primary address alone (no secondary address, no prefix), nothing
/// was checkpointed, and not IPv6 mode (whose /80 is read from EC2's description). Such a node (a fresh
/// instance) has no trunk, EFA or leaked ENI of its own and no address IMDS could misreport: its pool starts
/// empty and every address it hands out comes from EC2's own answers to its Assign and Create calls. Should EC2
/// have addresses on the primary ENI that IMDS does not show yet, the node merely does not use them until
/// reconcile (which describes ENIs whose IMDS view differs) or an `IpLimitExceeded` re-read brings them in.
pub(crate) fn nothing_to_confirm(
    imds_enis: &[ec2_api::ImdsEni],
    entries: &[CheckpointEntry],
    ipv6: bool,
) -> bool {
    !ipv6
        && entries.is_empty()
        && matches!(imds_enis, [only] if only.device_number == 0
            && only.ipv4s.len() <= 1
            && only.ipv4_prefixes.is_empty())
}

/// What restoring the checkpoint did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Assignments put back.
    pub restored: usize,
    /// Assignments whose address EC2 does not have for this node (dropped).
    pub stale: Vec<(IpamKey, IpAddr)>,
    /// Assignments that clashed with another (same address or same key twice; dropped).
    pub conflicts: usize,
    /// ENIs attached per EC2 but missing from IMDS, adopted to place restored addresses.
    pub adopted_enis: Vec<String>,
}

impl Node {
    /// DescribeNetworkInterfaces for the ENIs IMDS lists (one call for all of them); `None` for an ENI EC2 does
    /// not know. Without EC2's word nothing may be handed out, so this waits for it: throttling and other
    /// transient failures are retried for as long as they last, with jittered exponential backoff
    /// ([`STARTUP_RETRY`], capped at a minute) on top of the API's throttle gate, rather than exiting and
    /// being restarted by Kubernetes (whose CrashLoopBackOff waits up to 5 minutes, and whose every restart
    /// reads IMDS and calls EC2 again). Each failed attempt is logged with what comes next. A permanent error
    /// (not authorized, a malformed request) fails at once: retrying cannot fix an IAM policy.
    pub(crate) async fn describe_at_startup(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, Option<EniDescription>>, NodeError> {
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            match self.describe_each(ids).await {
                Ok(d) => {
                    if attempt > 1 {
                        tracing::info!(attempt, "EC2 confirmed the node's ENIs");
                    }
                    return Ok(d);
                }
                Err(e) if e.is_retryable() => {
                    let wait = STARTUP_RETRY.delay(attempt).max(self.ec2.hold(e.api()));
                    tracing::warn!(error = %e, attempt, retry_in = ?wait,
                        "cannot confirm the node's ENIs with EC2 yet; not serving until it does");
                    self.deps.clock.sleep(wait).await;
                }
                Err(last) => {
                    return Err(NodeError::Unverified {
                        attempts: attempt,
                        last,
                    })
                }
            }
        }
    }

    /// Step 3 of the recovery (see the module docs): puts the checkpoint's assignments back on the addresses EC2
    /// confirmed, and writes the result back to the checkpoint.
    pub(crate) async fn restore(
        &self,
        entries: Vec<CheckpointEntry>,
    ) -> Result<RestoreReport, NodeError> {
        let mut report = RestoreReport::default();
        let mut unknown = Vec::new();
        let (entries, v6): (Vec<_>, Vec<_>) = entries.into_iter().partition(|e| e.ip.is_ipv4());
        for e in v6 {
            self.restore_one6(&e, &mut report);
        }
        for e in entries {
            match self.restore_one(&e) {
                Ok(()) => report.restored += 1,
                Err(RestoreError::UnknownIp(_)) => unknown.push(e),
                Err(err) => {
                    tracing::error!(container = %e.key.container_id, ip = %e.ip, error = %err,
                        "checkpoint entry clashes with another; dropped");
                    report.conflicts += 1;
                }
            }
        }
        if !unknown.is_empty() {
            report.adopted_enis = self.adopt_enis_missing_from_imds().await;
            for e in unknown {
                match self.restore_one(&e) {
                    Ok(()) => report.restored += 1,
                    Err(RestoreError::UnknownIp(ip)) => {
                        tracing::warn!(container = %e.key.container_id, pod = %format!("{}/{}", e.meta.namespace, e.meta.name),
                            %ip, "checkpointed address is not assigned to this node in EC2: the pod has lost it; dropped");
                        report.stale.push((e.key.clone(), IpAddr::V4(ip)));
                    }
                    Err(err) => {
                        tracing::error!(container = %e.key.container_id, ip = %e.ip, error = %err,
                            "checkpoint entry clashes with another; dropped");
                        report.conflicts += 1;
                    }
                }
            }
        }
        {
            let ds = lock(&self.ds);
            let ds6 = lock(&self.ds6);
            lock(&self.recovery).unconfirmed = ds
                .records()
                .into_iter()
                .map(|r| r.key)
                .chain(ds6.records().into_iter().map(|r| r.key))
                .collect();
        }
        // The anchor rewrites the file after a restore; so do we, before anything is served.
        if self.checkpoint.is_some() {
            self.flush_checkpoint().await?;
        }
        if report.restored + report.stale.len() + report.conflicts > 0 {
            tracing::info!(
                restored = report.restored,
                stale = report.stale.len(),
                conflicts = report.conflicts,
                adopted_enis = ?report.adopted_enis,
                "restored the checkpoint"
            );
        }
        Ok(report)
    }

    pub(super) fn restore_one(&self, e: &CheckpointEntry) -> Result<(), RestoreError> {
        let IpAddr::V4(ip) = e.ip else {
            return Err(RestoreError::UnknownIp(Ipv4Addr::UNSPECIFIED));
        };
        let now = self.deps.clock.now();
        let age = self.deps.clock.wall().saturating_sub(e.wall);
        lock(&self.ds)
            .restore(&e.key, &e.meta, ip, now.saturating_sub(age), e.wall)
            .map(|_| ())
    }

    /// [`Node::check_restored`] for one IPv6 pod: `Some(true)` released (its veth is gone and it is old enough),
    /// `Some(false)` decided (confirmed, or nothing to look for), `None` undecided. Its host route is the
    /// plugin's, removed with the veth.
    async fn check_restored6(
        &self,
        key: &IpamKey,
        rec: &crate::core::datastore::AssignmentRecord<crate::core::family::V6>,
        pods: &std::sync::Arc<dyn crate::host::HostNetwork>,
        settled: bool,
    ) -> Option<bool> {
        if rec.meta.name.is_empty() {
            return Some(false);
        }
        let veth =
            datapath::host_veth_name(&self.veth_prefix, &rec.meta.namespace, &rec.meta.name, 0);
        match pods.veth_exists(&veth).await {
            Ok(true) => settled.then_some(false),
            Ok(false) if self.deps.clock.wall().saturating_sub(rec.wall) >= RESTORE_GRACE => {
                let now = self.deps.clock.now();
                let gone = {
                    let mut ds = lock(&self.ds6);
                    (ds.record(key).as_ref() == Some(rec))
                        .then(|| ds.unassign(key, now))
                        .flatten()
                };
                let Some(a) = gone else {
                    return Some(false);
                };
                tracing::warn!(container = %key.container_id, pod = %format!("{}/{}", rec.meta.namespace, rec.meta.name),
                    ip = %a.ip, %veth, "pod is gone (no host veth): released its IPv6 address");
                Some(true)
            }
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(%veth, error = %e, "cannot look up a restored pod's veth");
                None
            }
        }
    }

    /// An IPv6 entry: put back on the node's /80 (IPv6 mode), else dropped as stale (a node that left IPv6
    /// mode has no /80 in its datastore: the pod lost its address).
    fn restore_one6(&self, e: &CheckpointEntry, report: &mut RestoreReport) {
        let IpAddr::V6(ip) = e.ip else {
            return;
        };
        let now = self.deps.clock.now();
        let age = self.deps.clock.wall().saturating_sub(e.wall);
        let res = lock(&self.ds6).restore(&e.key, &e.meta, ip, now.saturating_sub(age), e.wall);
        match res {
            Ok(_) => report.restored += 1,
            Err(RestoreError::UnknownIp(_)) => {
                tracing::warn!(container = %e.key.container_id, pod = %format!("{}/{}", e.meta.namespace, e.meta.name),
                    %ip, "checkpointed IPv6 address is not in this node's IPv6 prefix: the pod has lost it; dropped");
                report.stale.push((e.key.clone(), e.ip));
            }
            Err(err) => {
                tracing::error!(container = %e.key.container_id, %ip, error = %err,
                    "checkpoint entry clashes with another; dropped");
                report.conflicts += 1;
            }
        }
    }

    /// ENIs EC2 says are attached to this instance (network card 0) that the datastore does not have: set up on
    /// the host and adopted with EC2's addresses. Returns their IDs.
    pub(super) async fn adopt_enis_missing_from_imds(&self) -> Vec<String> {
        let filter = EniFilter {
            attachment_instance_id: Some(self.meta.instance_id.clone()),
            ..EniFilter::default()
        };
        let attached = match self.ec2.list_network_interfaces(&filter).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the instance's ENIs in EC2");
                return Vec::new();
            }
        };
        let now = self.deps.clock.now();
        let mut adopted = Vec::new();
        for d in attached {
            let Some(device) = d.device_index else {
                continue;
            };
            if d.network_card_index != 0 || lock(&self.ds).eni(&d.id).is_some() {
                continue;
            }
            if self.leave_alone(&d, device) {
                continue;
            }
            let Ok(mac) = mac_of(&d) else {
                continue;
            };
            let mut eni = Eni::new(&d.id, mac, device, d.primary_ip, d.subnet_cidr);
            eni.attached_at = now;
            if let Err(e) = self.deps.hostnet.setup_eni(&eni, self.config.eni_mtu).await {
                tracing::warn!(eni = %d.id, error = %e, "ENI attached per EC2 but not usable on the host yet");
                continue;
            }
            if let Err(e) = self.load_eni(eni, &d.secondary_ips, &d.ipv4_prefixes) {
                tracing::warn!(eni = %d.id, error = %e, "adopted ENI has addresses the datastore refused");
            }
            self.finish_adoption(&d).await;
            tracing::info!(eni = %d.id, device, "adopted an ENI IMDS does not list yet");
            adopted.push(d.id);
        }
        adopted
    }

    /// Step 5 of the recovery: call with the socket bound and before accepting. Releases restored pods whose
    /// veth is gone, notes when serving began, and writes the checkpoint if anything changed.
    pub async fn start_serving(&self) -> usize {
        let released = self.check_restored().await;
        lock(&self.recovery).serving_since = Some(self.deps.clock.now());
        if released > 0 {
            if let Err(e) = self.flush_checkpoint().await {
                tracing::error!(error = %e, "checkpoint write failed after releasing gone pods; will retry");
            }
        }
        released
    }

    /// Whether unconfirmed restored pods wait for a check that could now decide them.
    pub(crate) fn restored_check_due(&self, now: Duration) -> bool {
        let mut r = lock(&self.recovery);
        let due = !r.unconfirmed.is_empty()
            && r.serving_since.is_some_and(|s| now >= s + RESTORE_SETTLE)
            && r.last_check.is_none_or(|t| now >= t + RESTORE_RECHECK);
        if due {
            r.last_check = Some(now);
        }
        due
    }

    /// Restored pods still unconfirmed (their veth not yet seen late enough).
    pub fn unconfirmed_restored(&self) -> usize {
        lock(&self.recovery).unconfirmed.len()
    }

    /// Restored assignments released so far because their pod was gone.
    pub fn released_restored(&self) -> u64 {
        lock(&self.recovery).released
    }

    /// Looks up the veth of every unconfirmed restored pod: gone (and old enough) releases it; present, late
    /// enough after the socket opened, confirms it. Returns how many were released.
    pub(crate) async fn check_restored(&self) -> usize {
        let Some(pods) = self.pods.clone() else {
            lock(&self.recovery).unconfirmed.clear();
            return 0;
        };
        let now = self.deps.clock.now();
        let wall = self.deps.clock.wall();
        let (keys, settled) = {
            let r = lock(&self.recovery);
            (
                r.unconfirmed.iter().cloned().collect::<Vec<_>>(),
                r.serving_since.is_some_and(|s| now >= s + RESTORE_SETTLE),
            )
        };
        let mut done = Vec::new();
        let mut released = 0;
        for key in keys {
            let Some(rec) = lock(&self.ds).record(&key) else {
                // IPv6 mode's pods (or released meanwhile, by a DEL).
                let Some(rec6) = lock(&self.ds6).record(&key) else {
                    done.push(key);
                    continue;
                };
                match self.check_restored6(&key, &rec6, &pods, settled).await {
                    Some(true) => {
                        released += 1;
                        done.push(key);
                    }
                    Some(false) => done.push(key),
                    None => {}
                }
                continue;
            };
            if rec.meta.name.is_empty() {
                // No pod name, no veth name to look for (as the anchor): kept.
                done.push(key);
                continue;
            }
            let veth =
                datapath::host_veth_name(&self.veth_prefix, &rec.meta.namespace, &rec.meta.name, 0);
            match pods.veth_exists(&veth).await {
                Ok(true) => {
                    if settled {
                        done.push(key);
                    }
                }
                Ok(false) if wall.saturating_sub(rec.wall) >= RESTORE_GRACE => {
                    let gone = {
                        let mut ds = lock(&self.ds);
                        // Only if it is still the same assignment.
                        (ds.record(&key).as_ref() == Some(&rec))
                            .then(|| ds.unassign(&key, now))
                            .flatten()
                    };
                    done.push(key.clone());
                    let Some(a) = gone else {
                        continue;
                    };
                    released += 1;
                    for e in pods.remove_pod_routing(a.ip).await {
                        tracing::warn!(ip = %a.ip, error = %e, "cannot remove a gone pod's rules");
                    }
                    tracing::warn!(container = %key.container_id, pod = %format!("{}/{}", rec.meta.namespace, rec.meta.name),
                        ip = %a.ip, %veth, "pod is gone (no host veth): released its address");
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(%veth, error = %e, "cannot look up a restored pod's veth"),
            }
        }
        {
            let mut r = lock(&self.recovery);
            for k in &done {
                r.unconfirmed.remove(k);
            }
            r.released += released as u64;
        }
        if released > 0 {
            self.flush.notify_one();
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::core::datastore::{PodMeta, MIGRATED_IF_NAME, MIGRATED_NETWORK_NAME};
    use crate::engine::checkpoint::Checkpoint;
    use crate::engine::{NodeDeps, Recovery};
    use crate::host::fakes::FakeHost;
    use crate::ratelimit::PacingConfig;
    use ec2_api::clock::{Clock, ManualClock};
    use ec2_api::Imds;
    use ec2_api::IpRequest;
    use ec2_sim::{NoHotplug, SimEc2, SimSpec};

    struct Box_ {
        sim: SimEc2,
        clock: ManualClock,
        pods: FakeHost,
        dir: PathBuf,
    }

    impl Box_ {
        async fn new(name: &str, tweak: impl FnOnce(&mut SimSpec)) -> Box_ {
            let clock = ManualClock::default();
            let mut spec = SimSpec::new("m5.large");
            spec.clock = Arc::new(clock.clone());
            tweak(&mut spec);
            let sim = SimEc2::launch(spec, Arc::new(NoHotplug))
                .await
                .expect("sim");
            let dir =
                std::env::temp_dir().join(format!("ipamd-recovery-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("mkdir");
            Box_ {
                sim,
                clock,
                pods: FakeHost::default(),
                dir,
            }
        }

        fn path(&self) -> PathBuf {
            self.dir.join("ipam.json")
        }

        /// An ipamd (re)started on the same instance, restoring what the checkpoint holds.
        async fn ipamd(&self) -> Arc<Node> {
            let entries = crate::engine::checkpoint::read(&self.path())
                .expect("checkpoint")
                .unwrap_or_default();
            let deps = NodeDeps {
                ec2: Arc::new(self.sim.clone()),
                imds: Arc::new(self.sim.clone()),
                hostnet: Arc::new(FakeHost::default()),
                clock: Arc::new(self.clock.clone()),
                cluster: Arc::new(crate::kube::NoCluster),
            };
            let recovery = Recovery {
                checkpoint: Some(Arc::new(Checkpoint::new(self.path()))),
                entries,
                pods: Some(Arc::new(self.pods.clone())),
                veth_prefix: "eni".into(),
            };
            let config = Config {
                warm_ip_target: 2,
                minimum_ip_target: 20,
                ..Config::default()
            };
            let facts = crate::engine::NodeFacts::discover(deps.imds.as_ref())
                .await
                .expect("facts");
            Node::init_recovering(deps, facts, config, None, PacingConfig::default(), recovery)
                .await
                .expect("init")
        }

        /// ADDs a pod the way the plugin does: the durable ADD, then its veth.
        async fn add(&self, node: &Node, name: &str) -> Ipv4Addr {
            let a = node
                .add_durable(&key(name), &meta(name))
                .await
                .expect("ADD");
            lock(&self.pods.veths).insert(veth(name));
            a.ip
        }

        fn checkpointed(&self) -> Vec<(String, Ipv4Addr)> {
            let mut v: Vec<_> = crate::engine::checkpoint::read(&self.path())
                .expect("read")
                .unwrap_or_default()
                .into_iter()
                .filter_map(|e| match e.ip {
                    IpAddr::V4(ip) => Some((e.key.container_id, ip)),
                    IpAddr::V6(_) => None,
                })
                .collect();
            v.sort();
            v
        }
    }

    impl Drop for Box_ {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn key(name: &str) -> IpamKey {
        IpamKey {
            network_name: "aws-cni".into(),
            container_id: format!("ctr-{name}"),
            if_name: "eth0".into(),
        }
    }

    fn meta(name: &str) -> PodMeta {
        PodMeta {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn veth(name: &str) -> String {
        datapath::host_veth_name("eni", "default", name, 0)
    }

    fn held(node: &Node) -> Vec<(String, Ipv4Addr)> {
        let mut v: Vec<_> = node
            .datastore()
            .assignments()
            .into_iter()
            .map(|(k, _, a)| (k.container_id, a.ip))
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn restart_keeps_every_pod_and_hands_out_none_of_their_addresses() {
        let b = Box_::new("restart", |_| {}).await;
        let node = b.ipamd().await;
        node.fill().await.expect("fill");
        let mut ips = HashSet::new();
        for i in 0..6 {
            assert!(ips.insert(b.add(&node, &format!("p{i}")).await));
        }
        let before = held(&node);
        assert_eq!(b.checkpointed(), before, "every answered ADD is on disk");
        drop(node); // a crash: nothing is flushed on the way out

        b.clock.advance(Duration::from_secs(60));
        let node = b.ipamd().await;
        assert_eq!(held(&node), before);
        assert_eq!(node.start_serving().await, 0);
        node.fill().await.expect("fill");
        for i in 6..12 {
            let ip = b.add(&node, &format!("p{i}")).await;
            assert!(ips.insert(ip), "{ip} handed out twice");
        }
        // Restored pods are confirmed once a check late enough has seen their veths.
        assert_eq!(node.unconfirmed_restored(), 6);
        b.clock.advance(RESTORE_SETTLE);
        node.check_restored().await;
        assert_eq!(node.unconfirmed_restored(), 0);
        assert_eq!(node.datastore().assignments().len(), 12);
    }

    #[tokio::test]
    async fn gone_pods_are_released_and_young_ones_wait_for_their_plugin() {
        let b = Box_::new("gone", |_| {}).await;
        let node = b.ipamd().await;
        node.fill().await.expect("fill");
        let kept = b.add(&node, "kept").await;
        let deleted = b.add(&node, "deleted").await;
        b.clock.advance(Duration::from_secs(100));
        // Answered just before the crash: its plugin had not built the veth yet.
        let young = node
            .add_durable(&key("young"), &meta("young"))
            .await
            .expect("ADD")
            .ip;
        drop(node);
        // While ipamd is down, the runtime DELs "deleted": the plugin tears the pod down itself.
        lock(&b.pods.veths).remove(&veth("deleted"));

        b.clock.advance(Duration::from_secs(2));
        let node = b.ipamd().await;
        assert_eq!(
            node.datastore().assignments().len(),
            3,
            "restore keeps all until the host is checked"
        );
        assert_eq!(
            node.start_serving().await,
            1,
            "the DEL made while ipamd was down is honoured"
        );
        assert_eq!(
            lock(&b.pods.removed).clone(),
            vec![deleted],
            "its rules are removed"
        );
        let now_held: Vec<Ipv4Addr> = held(&node).into_iter().map(|(_, ip)| ip).collect();
        assert!(
            now_held.contains(&kept) && now_held.contains(&young) && !now_held.contains(&deleted)
        );
        assert!(!b.checkpointed().iter().any(|(_, ip)| *ip == deleted));

        // The young pod's plugin finishes after the restart: confirmed, not released.
        lock(&b.pods.veths).insert(veth("young"));
        b.clock.advance(RESTORE_SETTLE);
        node.reconcile(true).await.expect("reconcile");
        assert_eq!(node.unconfirmed_restored(), 0);
        assert_eq!(node.released_restored(), 1);
        assert_eq!(node.datastore().assignments().len(), 2);
    }

    #[tokio::test]
    async fn an_answered_add_whose_pod_never_came_is_released_after_the_grace() {
        let b = Box_::new("orphan", |_| {}).await;
        let node = b.ipamd().await;
        node.fill().await.expect("fill");
        let orphan = node
            .add_durable(&key("orphan"), &meta("orphan"))
            .await
            .expect("ADD")
            .ip;
        drop(node);
        let node = b.ipamd().await;
        assert_eq!(node.start_serving().await, 0, "too young to judge");
        node.check_restored().await;
        assert_eq!(node.datastore().assignments().len(), 1);
        b.clock.advance(RESTORE_SETTLE.max(RESTORE_GRACE));
        assert_eq!(node.check_restored().await, 1);
        assert!(node.datastore().assignments().is_empty());
        assert_eq!(lock(&b.pods.removed).clone(), vec![orphan]);
    }

    #[tokio::test]
    async fn addresses_ec2_no_longer_has_are_never_restored_nor_handed_out() {
        // IMDS lags by ten minutes: at the restart it still lists the addresses EC2 has taken back (#3887).
        let b = Box_::new("ec2wins", |s| s.imds_lag = Duration::from_secs(600)).await;
        let node = b.ipamd().await;
        node.fill().await.expect("fill");
        let lost = b.add(&node, "lost").await;
        b.add(&node, "fine").await;
        let eni = node.datastore().lookup(&key("lost")).expect("held").eni_id;
        let free: Vec<Ipv4Addr> = node
            .datastore()
            .eni(&eni)
            .expect("eni")
            .ips()
            .filter(|ip| {
                node.datastore()
                    .assignments()
                    .iter()
                    .all(|(_, _, a)| a.ip != *ip)
            })
            .collect();
        drop(node);
        // Someone (another tool, a failed release) unassigns addresses in EC2 while ipamd is down.
        let mut gone = free.clone();
        gone.push(lost);
        b.sim
            .unassign_private_ips(&eni, &gone, &[])
            .await
            .expect("unassign");

        let node = b.ipamd().await;
        let ds = node.datastore();
        let ips: Vec<Ipv4Addr> = ds
            .enis()
            .flat_map(|e| e.ips().collect::<Vec<_>>())
            .collect();
        for ip in &gone {
            assert!(!ips.contains(ip), "{ip} is only in IMDS's stale view");
        }
        assert_eq!(
            held(&node),
            vec![(
                "ctr-fine".to_string(),
                ds.lookup(&key("fine")).expect("fine").ip
            )]
        );
        assert!(!b.checkpointed().iter().any(|(_, ip)| *ip == lost));
        drop(ds);
        node.start_serving().await;
        node.fill().await.expect("fill");
        for i in 0..8 {
            let ip = b.add(&node, &format!("n{i}")).await;
            // EC2 may give a released address out again (through the pool): then it is EC2's again.
            let in_ec2 = b
                .sim
                .all_enis()
                .iter()
                .any(|e| e.device_index.is_some() && e.secondary_ips.contains(&ip));
            assert!(in_ec2, "{ip} was handed out though EC2 does not have it");
        }
    }

    #[tokio::test]
    async fn an_eni_attached_in_ec2_but_not_yet_in_imds_is_adopted_with_its_pods() {
        let b = Box_::new("lagging", |s| s.imds_lag = Duration::from_secs(600)).await;
        // The crash came mid-attach: EC2 has the ENI attached, IMDS does not show it yet, the checkpoint has a
        // pod on one of its addresses (written after the attach, before the crash).
        let me = b.sim.instance_id();
        let eni = b
            .sim
            .create_network_interface(ec2_api::CreateEniRequest {
                subnet_id: ec2_sim::SIM_SUBNET_ID.into(),
                description: "aws-K8S-i".into(),
                security_groups: vec![],
                tags: BTreeMap::new(),
                ips: IpRequest::Secondary(3),
            })
            .await
            .expect("create");
        b.sim
            .attach_network_interface(&eni.id, &me, 1, 0)
            .await
            .expect("attach");
        let pod_ip = eni.secondary_ips[1];
        let wall = b.clock.wall();
        let text = format!(
            r#"{{"version":"vpc-cni-ipam/1","allocations":[{{"networkName":"aws-cni","containerID":"ctr-a","ifName":"eth0","ipv4":"{pod_ip}","allocationTimestamp":{},"metadata":{{"k8sPodNamespace":"default","k8sPodName":"a"}}}}]}}"#,
            wall.as_nanos()
        );
        std::fs::write(b.path(), text).expect("write");
        let node = b.ipamd().await;
        assert_eq!(
            node.datastore().lookup(&key("a")).map(|a| (a.ip, a.eni_id)),
            Some((pod_ip, eni.id.clone()))
        );
        assert!(
            node.datastore().eni(&eni.id).is_some(),
            "ENI adopted from EC2's list"
        );
    }

    #[tokio::test]
    async fn migrated_placeholder_is_released_by_the_pods_del() {
        let b = Box_::new("placeholder", |_| {}).await;
        let node = b.ipamd().await;
        node.fill().await.expect("fill");
        let ip = b.add(&node, "x").await;
        drop(node);
        // The same assignment as the anchor recorded it after its CRI migration.
        let text = format!(
            r#"{{"version":"vpc-cni-ipam/1","allocations":[{{"networkName":"{MIGRATED_NETWORK_NAME}","containerID":"ctr-x","ifName":"{MIGRATED_IF_NAME}","ipv4":"{ip}","allocationTimestamp":0,"metadata":{{}}}}]}}"#
        );
        std::fs::write(b.path(), text).expect("write");
        let node = b.ipamd().await;
        assert_eq!(node.datastore().assignments().len(), 1);
        let released = node.del_durable(&key("x")).await.expect("DEL");
        assert_eq!(released.map(|a| a.ip), Some(ip));
        assert!(b.checkpointed().is_empty());
    }

    #[tokio::test]
    async fn an_add_whose_checkpoint_cannot_be_written_fails_and_gives_the_address_back() {
        let b = Box_::new("unwritable", |_| {}).await;
        let node = b.ipamd().await;
        node.fill().await.expect("fill");
        let before = node.stats();
        // The temp file's place taken by a directory: every write fails.
        std::fs::create_dir_all(b.dir.join("ipam.json.tmp")).expect("mkdir");
        let err = node
            .add_durable(&key("p"), &meta("p"))
            .await
            .expect_err("must fail");
        assert_eq!(err.reason, aws_cni_proto::FailureReason::Internal);
        assert!(err.message.contains("ipam.json"), "{}", err.message);
        let after = node.stats();
        assert_eq!(
            (after.assigned, after.available),
            (before.assigned, before.available)
        );
        std::fs::remove_dir_all(b.dir.join("ipam.json.tmp")).expect("rmdir");
        b.add(&node, "p").await;
        assert_eq!(b.checkpointed().len(), 1);
    }

    #[tokio::test]
    async fn concurrent_adds_share_checkpoint_writes() {
        let b = Box_::new("group", |_| {}).await;
        let node = b.ipamd().await;
        node.fill().await.expect("fill");
        let writes = node.checkpoint().expect("checkpoint").writes();
        let adds = (0..8).map(|i| {
            let node = Arc::clone(&node);
            async move { node.add_durable(&key(&format!("g{i}")), &meta("g")).await }
        });
        for r in futures::future::join_all(adds).await {
            r.expect("ADD");
        }
        let used = node.checkpoint().expect("checkpoint").writes() - writes;
        assert!((1..8).contains(&used), "{used} writes for 8 ADDs");
        assert_eq!(b.checkpointed().len(), 8);
    }

    #[tokio::test]
    async fn an_eni_ec2_detached_while_imds_still_lists_it_is_not_loaded() {
        let b = Box_::new("detached", |s| s.imds_lag = Duration::from_secs(600)).await;
        let node = b.ipamd().await;
        node.fill().await.expect("fill");
        let mut on_secondary = None;
        for i in 0..12 {
            let name = format!("p{i}");
            b.add(&node, &name).await;
            let a = node.datastore().lookup(&key(&name)).expect("held");
            if a.device_number != 0 {
                on_secondary = Some((name, a));
                break;
            }
        }
        let (name, a) = on_secondary.expect("a pod on a secondary ENI");
        drop(node);
        // IMDS has caught up with the attach by now; the detach below it will show only in ten minutes.
        b.clock.advance(Duration::from_secs(601));
        let attachment = b
            .sim
            .all_enis()
            .into_iter()
            .find(|e| e.id == a.eni_id)
            .and_then(|e| e.attachment_id)
            .expect("attached");
        b.sim
            .detach_network_interface(&attachment)
            .await
            .expect("detach");
        assert!(
            b.sim
                .enis()
                .await
                .expect("imds")
                .iter()
                .any(|e| e.eni_id == a.eni_id),
            "IMDS must still list it for this test"
        );
        let node = b.ipamd().await;
        assert!(
            node.datastore().eni(&a.eni_id).is_none(),
            "detached ENI loaded from IMDS"
        );
        assert!(node.datastore().lookup(&key(&name)).is_none());
        assert!(!b.checkpointed().iter().any(|(_, ip)| *ip == a.ip));
    }
}
