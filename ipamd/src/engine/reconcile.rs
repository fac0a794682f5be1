//! Keeping the datastore, the host and EC2 in agreement: the reconcile pass, and the timers of the periodic jobs
//! ([`Timers`]: reconcile, the check of restored pods ([`super::recovery`]), the leaked-ENI cleanup
//! ([`super::leak_gc`]), the VPC refresh ([`super::refresh`])).
//!
//! **Reconcile** (every 60 s, skipped while the pool acted in the last 60 s, as the anchor: right after an action
//! IMDS is expected to lag; but never skipped for more than 5 minutes in a row, and run at once when EC2 said an
//! ENI we hold does not exist). IMDS is read (no EC2 call) and compared with the datastore; EC2 is asked only about
//! what differs, because IMDS is eventually consistent and has made the anchor delete in-use ENIs and hand out
//! unassigned IPs (#1967, #3019, #3887):
//! - an ENI in IMDS but not in the datastore (attached by someone, or by us before a crash or a failed host
//!   setup) is described in EC2; unless tagged `no_manage=true` it is set up on the host and adopted with EC2's
//!   addresses;
//! - an ENI whose IMDS addresses differ from the datastore's is described in EC2 and EC2's list wins: missing
//!   addresses are added (except those we gave back less than 60 s ago), addresses EC2 no longer has are removed
//!   even if a pod holds them (the pod has lost it already; counted as force-removed);
//! - an ENI in the datastore but not in IMDS is removed only if EC2 confirms it is gone or no longer attached to
//!   this instance;
//! - the host side of every ENI and the node-wide rules are re-applied (idempotent: repairs drift such as a
//!   deleted rule or route).

use std::collections::BTreeMap;
use std::time::Duration;

use super::enis::{mac_of, RELEASED_MEMORY};
use super::leak_gc::{LEAK_CHECK_INTERVAL, LEAK_CHECK_JITTER};
use super::Node;
use crate::core::datastore::{Eni, IpamKey};
use crate::host::HostNetError;
use crate::sync::lock;
use ec2_api::Ec2Error;
use ec2_api::ImdsError;

/// Reconcile period (anchor `nodeIPPoolReconcileInterval`).
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(60);
/// A reconcile is not skipped for longer than this.
pub const RECONCILE_MAX_SKIP: Duration = Duration::from_secs(300);

/// Why a reconcile pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("reading IMDS: {0}")]
    Imds(#[from] ImdsError),
    #[error(transparent)]
    Ec2(#[from] Ec2Error),
    #[error(transparent)]
    HostNet(#[from] HostNetError),
}

/// What a reconcile pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Whether the pass ran (false: skipped because the pool acted recently).
    pub ran: bool,
    pub adopted: Vec<String>,
    pub removed: Vec<String>,
    /// ENIs whose addresses were re-read from EC2.
    pub synced: Vec<String>,
}

/// When the periodic jobs run next.
#[derive(Debug, Clone)]
pub struct Timers {
    next_reconcile: Duration,
    last_reconcile: Duration,
    next_leak_check: Duration,
    next_vpc_refresh: Duration,
}

fn jitter(max: Duration) -> Duration {
    max.mul_f64(rand::random::<f64>())
}

impl Timers {
    pub fn new(now: Duration) -> Timers {
        Timers {
            next_reconcile: now + RECONCILE_INTERVAL,
            last_reconcile: now,
            next_leak_check: now + jitter(LEAK_CHECK_JITTER),
            next_vpc_refresh: now + super::refresh::VPC_REFRESH_INTERVAL,
        }
    }

    /// Runs whichever job is due. Failures are logged; the next period retries.
    pub async fn run_due(&mut self, node: &Node) {
        let now = node.deps.clock.now();
        // Restored pods still unconfirmed are checked as soon as the settle time allows, not only at the next
        // reconcile: their addresses are held until then.
        if node.restored_check_due(now) {
            let _actor = node.actor.lock().await;
            node.check_restored().await;
        }
        let wanted = std::mem::take(&mut lock(&node.status).reconcile_wanted);
        // The VPC's CIDR blocks and security groups ([`super::refresh`]): every 30 s, and on a requested pass.
        if now >= self.next_vpc_refresh || wanted {
            self.next_vpc_refresh = now + super::refresh::VPC_REFRESH_INTERVAL;
            if let Err(e) = node.refresh_vpc().await {
                tracing::warn!(error = %e, "VPC refresh failed; the next period retries");
            }
        }
        if now >= self.next_reconcile || wanted {
            self.next_reconcile = now + RECONCILE_INTERVAL;
            let force = wanted || now.saturating_sub(self.last_reconcile) >= RECONCILE_MAX_SKIP;
            match node.reconcile(force).await {
                Ok(r) if r.ran => self.last_reconcile = now,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reconcile failed"),
            }
            // Every pod, not only restored ones, has its veth looked up each period: a DEL that could not reach
            // ipamd (stalled, restarting) tore the pod down from prevResult and succeeded, and its address comes
            // back here once the pod's veth is gone (after the same grace as a restored pod's).
            if node.pods.is_some() {
                let mut keys: Vec<IpamKey> = lock(&node.ds)
                    .assignments()
                    .into_iter()
                    .map(|(k, _, _)| k)
                    .collect();
                keys.extend(lock(&node.ds6).assignments().into_iter().map(|(k, _, _)| k));
                lock(&node.recovery).unconfirmed.extend(keys);
                let _actor = node.actor.lock().await;
                node.check_restored().await;
            }
        }
        if now >= self.next_leak_check {
            self.next_leak_check = now + LEAK_CHECK_INTERVAL + jitter(LEAK_CHECK_JITTER);
            // Not in IPv6 mode, as the anchor (it creates no ENIs there).
            if !node.config.disable_leaked_eni_cleanup
                && !node.config.disable_provisioning
                && !node.config.ipv6
            {
                match node.cleanup_leaked_enis().await {
                    Ok(n) if n > 0 => tracing::info!(deleted = n, "deleted leaked ENIs"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "leaked-ENI cleanup failed"),
                }
            }
        }
    }
}

fn same_addresses(ds_eni: &Eni, imds: &ec2_api::ImdsEni) -> bool {
    let mut a: Vec<_> = ds_eni.ips().collect();
    a.sort();
    let mut b: Vec<_> = imds.ipv4s.iter().skip(1).copied().collect();
    b.extend(imds.ipv4_prefixes.iter().flat_map(|p| p.iter()));
    b.sort();
    a == b
}

impl Node {
    /// One reconcile pass (see the module docs). `force` ignores the recent-action skip.
    pub async fn reconcile(&self, force: bool) -> Result<ReconcileReport, ReconcileError> {
        if self.config.ipv6 {
            // IPv6 mode: one /80 on the primary ENI, no pool to reconcile (see `super::ipv6`).
            return Ok(ReconcileReport::default());
        }
        let _actor = self.actor.lock().await;
        let now = self.deps.clock.now();
        let recent = lock(&self.status)
            .last_action
            .is_some_and(|t| now.saturating_sub(t) < RECONCILE_INTERVAL);
        let mut report = ReconcileReport::default();
        // Host-only, and cheap: restored pods not yet confirmed (see the module docs).
        if !lock(&self.recovery).unconfirmed.is_empty() {
            self.check_restored().await;
        }
        if recent && !force {
            return Ok(report);
        }
        report.ran = true;
        let imds = self.imds_enis().await?;
        let known: BTreeMap<String, Eni> = lock(&self.ds)
            .enis()
            .map(|e| (e.id.clone(), e.clone()))
            .collect();

        let mut to_describe = Vec::new();
        let attached: Vec<String> = imds.iter().map(|ie| ie.eni_id.clone()).collect();
        self.forget_detached_foreign(&attached);
        self.settle_pending_gone(&attached).await;
        for ie in &imds {
            match known.get(&ie.eni_id) {
                None if self.is_foreign(&ie.eni_id) => {}
                None => to_describe.push(ie.eni_id.clone()),
                Some(e) if !same_addresses(e, ie) => to_describe.push(ie.eni_id.clone()),
                Some(_) => {}
            }
        }
        let vanished: Vec<String> = known
            .keys()
            .filter(|id| !imds.iter().any(|ie| ie.eni_id == **id))
            .cloned()
            .collect();
        to_describe.extend(vanished.iter().cloned());
        let described = self.describe_each(&to_describe).await?;

        // Adopt new ENIs.
        for ie in imds.iter().filter(|ie| !known.contains_key(&ie.eni_id)) {
            let Some(Some(d)) = described.get(&ie.eni_id) else {
                continue;
            };
            if d.instance_id.as_deref() != Some(self.meta.instance_id.as_str()) {
                continue;
            }
            if self.leave_alone(d, ie.device_number) {
                continue;
            }
            let Ok(mac) = mac_of(d) else {
                continue;
            };
            let mut eni = Eni::new(&d.id, mac, ie.device_number, d.primary_ip, d.subnet_cidr);
            eni.attached_at = now;
            self.deps
                .hostnet
                .setup_eni(&eni, self.config.eni_mtu)
                .await?;
            let released = lock(&self.status).released.clone();
            let ips: Vec<_> = d
                .secondary_ips
                .iter()
                .filter(|ip| !released.contains_key(ip))
                .copied()
                .collect();
            let prefixes: Vec<_> = d
                .ipv4_prefixes
                .iter()
                .filter(|p| !released.contains_key(&p.network()))
                .copied()
                .collect();
            if let Err(e) = self.load_eni(eni, &ips, &prefixes) {
                tracing::warn!(eni = %d.id, error = %e, "adopted ENI has addresses the datastore refused");
            }
            self.settled(&d.id);
            self.finish_adoption(d).await;
            tracing::info!(eni = %d.id, device = ie.device_number, "adopted ENI found in IMDS");
            report.adopted.push(d.id.clone());
        }

        // Addresses that drifted: EC2 wins.
        let drifted: Vec<String> = imds
            .iter()
            .filter(|ie| {
                known
                    .get(&ie.eni_id)
                    .is_some_and(|e| !same_addresses(e, ie))
            })
            .map(|ie| ie.eni_id.clone())
            .collect();
        {
            let mut st = lock(&self.status);
            st.released
                .retain(|_, t| now.saturating_sub(*t) < RELEASED_MEMORY);
            let released = st.released.clone();
            let skip = |ip| released.contains_key(&ip);
            let mut ds = lock(&self.ds);
            for id in &drifted {
                let Some(Some(d)) = described.get(id) else {
                    continue;
                };
                match ds.sync_eni(id, &d.secondary_ips, &d.ipv4_prefixes, &skip) {
                    Ok(r) => {
                        st.force_removed += r.evicted.len() as u64;
                        if !r.evicted.is_empty() {
                            tracing::warn!(eni = %id, pods = ?r.evicted, "EC2 no longer has addresses pods held");
                        }
                        if r.added + r.removed > 0 {
                            report.synced.push(id.clone());
                        }
                    }
                    Err(e) => tracing::warn!(eni = %id, error = %e, "cannot sync ENI"),
                }
            }
        }

        // ENIs gone from IMDS: removed only when EC2 agrees.
        for id in &vanished {
            let gone = match described.get(id) {
                Some(None) => true,
                Some(Some(d)) => {
                    d.instance_id.as_deref() != Some(self.meta.instance_id.as_str())
                        || d.device_index.is_none()
                }
                None => false,
            };
            let Some(eni) = known.get(id) else {
                continue;
            };
            if !gone || eni.is_primary {
                continue;
            }
            let evicted = lock(&self.ds).remove_eni(id, now, true).unwrap_or_default();
            lock(&self.status).force_removed += evicted.len() as u64;
            if let Err(e) = self.deps.hostnet.teardown_eni(eni).await {
                tracing::warn!(eni = %id, error = %e, "host teardown of a vanished ENI failed");
            }
            tracing::warn!(eni = %id, pods = ?evicted, "ENI is gone from EC2; removed");
            report.removed.push(id.clone());
        }

        // Drift on the host: re-apply (idempotent).
        let enis: Vec<Eni> = lock(&self.ds).enis().cloned().collect();
        for eni in &enis {
            self.deps
                .hostnet
                .setup_eni(eni, self.config.eni_mtu)
                .await?;
        }
        if let Some(mac) = datapath::MacAddr::parse(&self.meta.primary_mac) {
            self.deps.hostnet.setup_host(&self.host_plan(mac)).await?;
        }
        // Pods' rules 512/1536 and host routes, put back where a host network manager removed them.
        let (pods, pool) = crate::host::drift::pod_routes(&lock(&self.ds), &self.veth_prefix);
        match self.deps.hostnet.repair_pods(&pods, &pool).await {
            Ok(done) => lock(&self.status).routing_repairs += done.total() as u64,
            Err(e) => {
                tracing::warn!(error = %e, "drift repair of pods' rules and routes failed; next reconcile retries")
            }
        }
        self.wake.notify_one();
        tracing::info!(
            adopted = ?report.adopted,
            removed = ?report.removed,
            synced = ?report.synced,
            unconfirmed = lock(&self.recovery).unconfirmed.len(),
            "reconcile pass finished"
        );
        Ok(report)
    }

    /// Asks the pool task for a full reconcile pass at its next turn (SIGUSR1 in the daemon).
    pub fn request_reconcile(&self) {
        lock(&self.status).reconcile_wanted = true;
        self.wake.notify_one();
    }
}
