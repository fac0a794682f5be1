//! The VPC refresh: the VPC's CIDR blocks and the primary ENI's security groups, re-read while the node runs.
//!
//! Both are read from IMDS at startup, but neither is fixed: an operator may associate a secondary CIDR block
//! with the VPC (its addresses must then be excluded from SNAT and connmark, or pods' traffic to them is
//! translated and marked as if it left the VPC) or change the primary ENI's security groups (which the pods on
//! other ENIs must follow). As the anchor does (`updateCIDRsRulesOnChange` and `RefreshSGIDs`, every 30 s), every
//! [`VPC_REFRESH_INTERVAL`] (and on a requested reconcile, SIGUSR1) [`Node::refresh_vpc`] reads the primary
//! ENI's `vpc-ipv4-cidr-blocks` and `security-group-ids` once from IMDS and compares them as sets with what is in
//! force ([`VpcView`]):
//!
//! - **CIDRs changed**: the node-wide host settings are applied once with the new set (the SNAT chain's and the
//!   connmark chain's exclusions, [`crate::host::HostNetwork::setup_host`]); unchanged, nothing is written. The
//!   new set is what the plugin is told from then on, and what the reconcile pass re-applies. A failed apply
//!   keeps the old set, so the next refresh tries again.
//! - **Security groups changed**: new ENIs get the new groups at once, and every ENI ipamd manages (in the
//!   datastore, or attached and waiting for its host setup) is given them with ModifyNetworkInterfaceAttribute
//!   (`Groups`), one call per ENI, under the pool task's actor and pacing. Never the primary ENI (it is where the
//!   groups come from), never an ENI left alone ([`super::foreign`]: trunk, EFA, `no_manage`, untagged with
//!   `MANAGE_UNTAGGED_ENI=false`), and nothing under custom networking (ENIs there carry their `ENIConfig`'s
//!   groups) or with `DISABLE_NETWORK_RESOURCE_PROVISIONING=true`, as the anchor. An ENI whose call failed is
//!   tried again at the next refresh (the anchor only tries again at the next change); one EC2 no longer has is
//!   forgotten (reconcile removes it).
//!
//! An empty answer (IMDS served nothing for the field) changes nothing. Every check is counted by item and
//! outcome ([`RefreshCounts`], the metric `awscni_vpc_refresh_total`), and every ENI given new groups
//! (`awscni_security_group_updates_total`).

use std::collections::BTreeSet;
use std::time::Duration;

use ec2_api::{Ec2, Ec2Error, ImdsError, NodeMetadata};
use ipnetwork::Ipv4Network;

use super::Node;
use crate::sync::lock;

/// How often the VPC's CIDR blocks and the primary ENI's security groups are re-read (the anchor's 30 s).
pub const VPC_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// Why a refresh read nothing.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("reading the VPC's CIDR blocks and security groups from IMDS: {0}")]
    Imds(#[from] ImdsError),
}

/// Checks of one item, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Read, and the same as in force: nothing written.
    pub unchanged: u64,
    /// Read, different, and applied.
    pub applied: u64,
    /// Not read, or not (wholly) applied.
    pub failed: u64,
}

/// What the refreshes did since startup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefreshCounts {
    /// The VPC's CIDR blocks (SNAT and connmark exclusions).
    pub cidrs: Outcomes,
    /// The primary ENI's security groups.
    pub groups: Outcomes,
    /// ENIs given new security groups (ModifyNetworkInterfaceAttribute calls that succeeded).
    pub enis_updated: u64,
}

/// The VPC facts in force (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct VpcView {
    pub(crate) cidrs: Vec<Ipv4Network>,
    pub(crate) security_groups: Vec<String>,
    /// ENIs still to be given `security_groups` (their call failed; tried again at the next refresh).
    pub(crate) groups_pending: BTreeSet<String>,
    pub(crate) counts: RefreshCounts,
}

impl VpcView {
    /// The facts as read at startup.
    pub(crate) fn of(meta: &NodeMetadata) -> VpcView {
        VpcView {
            cidrs: meta.vpc_cidrs.clone(),
            security_groups: meta.security_groups.clone(),
            groups_pending: BTreeSet::new(),
            counts: RefreshCounts::default(),
        }
    }
}

/// What one refresh did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefreshReport {
    /// The new CIDR set, when it changed and was applied.
    pub cidrs: Option<Vec<Ipv4Network>>,
    /// The new security groups, when they changed.
    pub security_groups: Option<Vec<String>>,
    /// ENIs given the security groups by this refresh.
    pub enis_updated: Vec<String>,
    /// What failed (each failure, the rest went on).
    pub failures: Vec<String>,
}

fn same<T: Ord + Clone>(a: &[T], b: &[T]) -> bool {
    a.iter().cloned().collect::<BTreeSet<T>>() == b.iter().cloned().collect::<BTreeSet<T>>()
}

impl Node {
    /// The VPC's CIDR blocks in force (read at startup, then by every refresh that found a change).
    pub fn vpc_cidr_blocks(&self) -> Vec<Ipv4Network> {
        lock(&self.vpc).cidrs.clone()
    }

    /// The primary ENI's security groups in force (new ENIs get them unless custom networking says otherwise).
    pub fn security_groups(&self) -> Vec<String> {
        lock(&self.vpc).security_groups.clone()
    }

    /// What the refreshes did since startup.
    pub fn refresh_counts(&self) -> RefreshCounts {
        lock(&self.vpc).counts
    }

    /// The node's metadata with the VPC facts in force (for placing a new ENI).
    pub(crate) fn live_meta(&self) -> NodeMetadata {
        let v = lock(&self.vpc);
        NodeMetadata {
            vpc_cidrs: v.cidrs.clone(),
            security_groups: v.security_groups.clone(),
            ..self.meta.clone()
        }
    }

    /// Whether new security groups are pushed to the ENIs ipamd manages (see the module docs).
    fn pushes_groups(&self) -> bool {
        self.config.custom_networking.is_none() && !self.config.disable_provisioning
    }

    /// Re-reads the VPC's CIDR blocks and the primary ENI's security groups and applies what changed (see the
    /// module docs). Takes the pool task's actor for the EC2 calls.
    pub async fn refresh_vpc(&self) -> Result<RefreshReport, RefreshError> {
        let meta = match self.deps.imds.node().await {
            Ok(m) => m,
            Err(e) => {
                let mut v = lock(&self.vpc);
                v.counts.cidrs.failed += 1;
                v.counts.groups.failed += 1;
                return Err(e.into());
            }
        };
        let mut report = RefreshReport::default();
        self.refresh_cidrs(meta.vpc_cidrs, &mut report).await;
        self.refresh_groups(meta.security_groups, &mut report).await;
        Ok(report)
    }

    async fn refresh_cidrs(&self, new: Vec<Ipv4Network>, report: &mut RefreshReport) {
        let old = self.vpc_cidr_blocks();
        if new.is_empty() || same(&old, &new) {
            lock(&self.vpc).counts.cidrs.unchanged += 1;
            return;
        }
        let Some(mac) = datapath::MacAddr::parse(&self.meta.primary_mac) else {
            lock(&self.vpc).counts.cidrs.failed += 1;
            report.failures.push(format!(
                "primary MAC {:?} is invalid",
                self.meta.primary_mac
            ));
            return;
        };
        let mut plan = self.host_plan(mac);
        plan.snat.vpc_cidrs.clone_from(&new);
        match self.deps.hostnet.setup_host(&plan).await {
            Ok(()) => {
                tracing::info!(old = ?old, new = ?new, "the VPC's CIDR blocks changed: SNAT and connmark exclusions updated");
                let mut v = lock(&self.vpc);
                v.cidrs.clone_from(&new);
                v.counts.cidrs.applied += 1;
                report.cidrs = Some(new);
            }
            Err(e) => {
                tracing::warn!(error = %e, new = ?new, "the VPC's CIDR blocks changed but the host rules could not be updated; the next refresh tries again");
                lock(&self.vpc).counts.cidrs.failed += 1;
                report.failures.push(format!("host rules for {new:?}: {e}"));
            }
        }
    }

    async fn refresh_groups(&self, new: Vec<String>, report: &mut RefreshReport) {
        let changed = {
            let mut v = lock(&self.vpc);
            let changed = !new.is_empty() && !same(&v.security_groups, &new);
            if changed {
                tracing::info!(old = ?v.security_groups, new = ?new, "the primary ENI's security groups changed");
                v.security_groups.clone_from(&new);
                report.security_groups = Some(new.clone());
                v.groups_pending.clear();
            }
            changed
        };
        if changed && self.pushes_groups() {
            let mut ours: BTreeSet<String> = lock(&self.ds)
                .enis()
                .filter(|e| !e.is_primary)
                .map(|e| e.id.clone())
                .collect();
            ours.extend(lock(&self.foreign).pending.iter().cloned());
            lock(&self.vpc).groups_pending = ours;
        }
        let (pending, groups) = {
            let v = lock(&self.vpc);
            (v.groups_pending.clone(), v.security_groups.clone())
        };
        let mut failed = false;
        let mut pushed = false;
        if !pending.is_empty() {
            let _actor = self.actor.lock().await;
            for eni in pending {
                match self.ec2.set_security_groups(&eni, &groups).await {
                    Ok(()) => {
                        let mut v = lock(&self.vpc);
                        v.groups_pending.remove(&eni);
                        v.counts.enis_updated += 1;
                        report.enis_updated.push(eni);
                        pushed = true;
                    }
                    Err(Ec2Error::NotFound { .. }) => {
                        lock(&self.vpc).groups_pending.remove(&eni);
                    }
                    Err(e) => {
                        tracing::warn!(eni = %eni, error = %e, "cannot give the ENI the primary ENI's security groups; the next refresh tries again");
                        report
                            .failures
                            .push(format!("security groups of {eni}: {e}"));
                        failed = true;
                    }
                }
            }
        }
        let mut v = lock(&self.vpc);
        if failed {
            v.counts.groups.failed += 1;
        } else if changed || pushed {
            v.counts.groups.applied += 1;
        } else {
            v.counts.groups.unchanged += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::core::datastore::{IpamKey, PodMeta};
    use crate::engine::NodeDeps;
    use crate::host::fakes::FakeHost;
    use ec2_api::clock::{Clock, ManualClock};
    use ec2_sim::{ForeignEni, SimEc2};

    async fn node_with(
        config: Config,
        tune: impl FnOnce(&mut ec2_sim::SimSpec),
    ) -> (Arc<Node>, SimEc2, FakeHost, ManualClock) {
        let (sim, clock) = ec2_sim::on_manual_clock("t3.nano", tune).await;
        let host = FakeHost::default();
        let deps = NodeDeps {
            ec2: Arc::new(sim.clone()),
            imds: Arc::new(sim.clone()),
            hostnet: Arc::new(host.clone()),
            clock: Arc::new(clock.clone()),
            cluster: Arc::new(crate::kube::NoCluster),
        };
        let n = Node::start(deps, config, None).await.expect("init");
        (n, sim, host, clock)
    }

    fn key(i: usize) -> IpamKey {
        IpamKey {
            network_name: "aws-cni".into(),
            container_id: format!("c{i}"),
            if_name: "eth0".into(),
        }
    }

    /// Two pods on t3.nano: the second needs a second ENI (one secondary IP per ENI).
    async fn two_enis(n: &Node) -> String {
        for i in 0..2 {
            n.fill().await.expect("fill");
            n.add(&key(i), &PodMeta::default()).expect("ip");
        }
        let ds = n.datastore();
        let ours: Vec<_> = ds.enis().filter(|e| !e.is_primary).collect();
        assert_eq!(ours.len(), 1, "a second ENI");
        ours[0].id.clone()
    }

    fn cidr(s: &str) -> Ipv4Network {
        s.parse().expect("cidr")
    }

    #[tokio::test]
    async fn a_new_vpc_cidr_is_excluded_from_snat_once_and_nothing_is_written_while_unchanged() {
        let (n, sim, host, _) = node_with(Config::default(), |_| {}).await;
        let writes = || host.host_plans().len();
        let before = writes();
        // Nothing changed: nothing written.
        n.refresh_vpc().await.expect("refresh");
        n.refresh_vpc().await.expect("refresh");
        assert_eq!(writes(), before, "unchanged CIDRs rewrite no rule");
        assert_eq!(n.refresh_counts().cidrs.unchanged, 2);
        // A CIDR block associated with the VPC: applied once, with both blocks.
        sim.set_vpc_secondary_cidrs(vec![cidr("100.64.0.0/16")]);
        let r = n.refresh_vpc().await.expect("refresh");
        let want = vec![cidr("10.0.0.0/16"), cidr("100.64.0.0/16")];
        assert_eq!(r.cidrs.as_ref(), Some(&want));
        assert_eq!(writes(), before + 1);
        let plan = host.host_plans().last().cloned().expect("a plan");
        assert_eq!(plan.snat.vpc_cidrs, want);
        assert_eq!(n.vpc_cidrs(), ["10.0.0.0/16", "100.64.0.0/16"]);
        // Later host plans (reconcile's drift repair) keep the new set.
        assert_eq!(n.host_plan(plan.primary_mac).snat.vpc_cidrs, want);
        n.refresh_vpc().await.expect("refresh");
        assert_eq!(writes(), before + 1, "applied once");
        let c = n.refresh_counts().cidrs;
        assert_eq!((c.unchanged, c.applied, c.failed), (3, 1, 0));
        // Disassociated again: applied again.
        sim.set_vpc_secondary_cidrs(vec![]);
        n.refresh_vpc().await.expect("refresh");
        assert_eq!(n.vpc_cidr_blocks(), [cidr("10.0.0.0/16")]);
        assert_eq!(writes(), before + 2);
    }

    #[tokio::test]
    async fn a_failed_host_update_keeps_the_old_set_and_is_tried_again() {
        let (n, sim, host, _) = node_with(Config::default(), |_| {}).await;
        sim.set_vpc_secondary_cidrs(vec![cidr("100.64.0.0/16")]);
        host.fail_setup_host(true);
        let r = n.refresh_vpc().await.expect("read");
        assert!(r.cidrs.is_none() && r.failures.len() == 1, "{r:?}");
        assert_eq!(n.vpc_cidr_blocks(), [cidr("10.0.0.0/16")]);
        host.fail_setup_host(false);
        let r = n.refresh_vpc().await.expect("read");
        assert!(r.cidrs.is_some(), "{r:?}");
        let c = n.refresh_counts().cidrs;
        assert_eq!((c.applied, c.failed), (1, 1));
    }

    #[tokio::test]
    async fn new_primary_groups_never_go_to_the_primary_or_a_foreign_eni() {
        let (n, sim, _, _) = node_with(Config::default(), |s| {
            s.foreign_enis = vec![ForeignEni {
                interface_type: "efa".into(),
                tags: Default::default(),
            }];
        })
        .await;
        let foreign: Vec<String> = sim
            .all_enis()
            .into_iter()
            .filter(|e| e.interface_type == "efa")
            .map(|e| e.id)
            .collect();
        assert_eq!(foreign.len(), 1);
        let old = sim.security_groups_of(&foreign[0]);
        // t3.nano has 2 ENI slots; the EFA takes one, so the pool stays on the primary ENI: one pod.
        n.fill().await.expect("fill");
        n.add(&key(0), &PodMeta::default()).expect("ip");
        let calls = || {
            sim.calls()
                .get("ModifyNetworkInterfaceAttribute")
                .copied()
                .unwrap_or(0)
        };
        let before = calls();
        n.refresh_vpc().await.expect("refresh");
        assert_eq!(calls(), before, "unchanged groups: no EC2 call");
        sim.set_primary_security_groups(vec!["sg-0new".into()]);
        let r = n.refresh_vpc().await.expect("refresh");
        assert_eq!(r.security_groups, Some(vec!["sg-0new".to_string()]));
        assert!(r.enis_updated.is_empty(), "no ENI of ours but the primary");
        assert_eq!(calls(), before, "never the primary nor a foreign ENI");
        assert_eq!(sim.security_groups_of(&foreign[0]), old);
        assert_eq!(n.security_groups(), ["sg-0new"]);
    }

    #[tokio::test]
    async fn our_secondary_enis_get_the_new_groups_and_a_failed_call_is_retried() {
        let (n, sim, _, _) = node_with(Config::default(), |_| {}).await;
        let eni = two_enis(&n).await;
        assert_eq!(sim.security_groups_of(&eni), n.security_groups());
        sim.set_primary_security_groups(vec!["sg-0a".into(), "sg-0b".into()]);
        sim.inject_faults(
            ec2_sim::Fault::Unauthorized,
            Some("ModifyNetworkInterfaceAttribute"),
            1,
        );
        let r = n.refresh_vpc().await.expect("refresh");
        assert_eq!(r.failures.len(), 1, "{r:?}");
        assert_ne!(sim.security_groups_of(&eni), ["sg-0a", "sg-0b"]);
        let r = n.refresh_vpc().await.expect("refresh");
        assert_eq!(r.enis_updated, vec![eni.clone()]);
        assert_eq!(sim.security_groups_of(&eni), ["sg-0a", "sg-0b"]);
        let c = n.refresh_counts();
        assert_eq!(
            (c.groups.applied, c.groups.failed, c.enis_updated),
            (1, 1, 1)
        );
        // Done: the next refresh calls nothing.
        let calls = sim.calls().get("ModifyNetworkInterfaceAttribute").copied();
        n.refresh_vpc().await.expect("refresh");
        assert_eq!(
            sim.calls().get("ModifyNetworkInterfaceAttribute").copied(),
            calls
        );
    }

    #[tokio::test]
    async fn an_eni_created_after_the_change_has_the_new_groups() {
        let (n, sim, _, _) = node_with(Config::default(), |_| {}).await;
        sim.set_primary_security_groups(vec!["sg-0later".into()]);
        n.refresh_vpc().await.expect("refresh");
        let eni = two_enis(&n).await;
        assert_eq!(sim.security_groups_of(&eni), ["sg-0later"]);
        // Created with them: the one Modify is the attachment's DeleteOnTermination.
        assert_eq!(sim.calls().get("ModifyNetworkInterfaceAttribute"), Some(&1));
    }

    #[tokio::test]
    async fn the_pool_task_refreshes_every_30_seconds() {
        let (n, sim, _, clock) = node_with(Config::default(), |_| {}).await;
        let stop = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(Arc::clone(&n).run_pool(Duration::from_secs(5), Arc::clone(&stop)));
        sim.set_vpc_secondary_cidrs(vec![cidr("100.64.0.0/16")]);
        let start = clock.now();
        let mut refreshed = false;
        for _ in 0..200 {
            clock.advance(Duration::from_secs(1));
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(2)).await;
            refreshed = n.vpc_cidr_blocks().len() == 2;
            if refreshed {
                break;
            }
        }
        assert!(refreshed, "the pool task refreshed");
        // Not before the period (the clock is virtual: scheduling cannot make it early).
        assert!(
            clock.now() - start >= VPC_REFRESH_INTERVAL,
            "{:?}",
            clock.now() - start
        );
        // The task may be mid-step (not waiting on `stop`): end it outright.
        task.abort();
        let _ = task.await;
    }
}
