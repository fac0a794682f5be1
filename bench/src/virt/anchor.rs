//! A model of the anchor's (aws-node's) IPv4 pool manager: its startup, its EC2 calls and its pool loop, written
//! from their description (no anchor code), driven through the same simulator as our engine.
//!
//! Modelled:
//! - **Startup**: IMDS ENIs, one DescribeNetworkInterfaces (up to 12 tries, else startup fails), CreateTags on an ENI missing the instance tag, then
//!   one pre-scaling increase if the pool is low.
//! - **Loop** every 5 s: sleep 2.5 s, `updateIPPoolIfRequired` (too low → increase; else too high → decrease;
//!   then, if `shouldRemoveExtraENIs`, free one ENI), sleep 2.5 s, reconcile if no pool action for 60 s. Nothing
//!   wakes it early: an ADD that finds no address fails and waits for the next pass.
//! - **Counts**: `available = total − assigned`, so addresses in their cooldown count as available (#2896).
//! - **Too low**: never once total ≥ max-pods; with WARM_IP/MINIMUM_IP `short = max(WARM_IP − available,
//!   MIN_IP − total, 0) > 0`; else `available < WARM_ENI × IPs-per-ENI` (PD: `16 × WARM_PREFIX`), or a target
//!   of 0 with nothing available.
//! - **Increase** (not within 120 s of a subnet-full error): one AssignPrivateIpAddresses on the lowest ENI with
//!   room for min(room, short with IP targets, else a full ENI) (PD: prefixes, the IP-target shortage in /28s or
//!   the WARM_PREFIX shortfall); on a non-limit error one retry with 1; PrivateIpAddressLimitExceeded → one
//!   DescribeNetworkInterfaces. If nothing was added and an ENI slot is free: DescribeSubnets (subnet
//!   discovery), CreateNetworkInterface with the ENI's worth of addresses (or the IP-target shortage),
//!   DescribeInstances for a free device index, AttachNetworkInterface (failure: DeleteNetworkInterface),
//!   ModifyNetworkInterfaceAttribute(DeleteOnTermination), then poll IMDS until it shows the ENI. Allocation is
//!   in whole ENIs/prefixes, so the total may pass max-pods (no cap on the increase itself).
//! - **Too high** only with IP targets (`over = min(available − WARM_IP, total − MIN_IP) > 0`) or PD with
//!   WARM_PREFIX (free prefixes > target); at most every 30 s; one UnassignPrivateIpAddresses per ENI with free,
//!   cooled addresses (or fully free /28s), remembered for 60 s so reconcile does not re-add them.
//! - **Free ENI** (one per pass) when `available ≥ (WARM_ENI + 1) × IPs-per-ENI` (PD: `(WARM_PREFIX + 1) × 16`;
//!   always with IP targets): a non-primary ENI at least 1 minute old with no pod and no address in cooldown,
//!   not needed for WARM_IP/MIN_IP; DescribeNetworkInterfaces for its attachment, DetachNetworkInterface, 2 s,
//!   DeleteNetworkInterface (retried with backoff).
//! - **Reconcile**: IMDS read; an ENI whose IMDS addresses differ from the datastore is re-read with
//!   DescribeNetworkInterfaces (EC2's list wins, recently freed addresses excepted); an unknown ENI triggers a
//!   DescribeNetworkInterfaces of all ENIs.
//! - **Leaked-ENI check**: after a random 0–300 s, then hourly: one DescribeNetworkInterfaces with filters.
//! - **EC2 client**: the SDK's standard retryer ([`super::SdkRetryEc2`]); no client-side rate limit.
//!
//! Not modelled: trunk/branch ENIs (security groups for pods), custom networking, multiple network cards, IPv6,
//! the unschedulable-node taint, the checkpoint file, the API server. Where the description leaves a choice
//! open (which ENI to fill or free first), the lowest device is filled first and the highest freed first, as in
//! our engine, so the comparison is about policy, not tie-breaking.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ec2_api::clock::Clock;
use ec2_api::{
    CreateEniRequest, Ec2, Ec2Error, EniFilter, IpRequest, SubnetFilter, ENI_DESCRIPTION_PREFIX,
    TAG_CREATED_AT, TAG_INSTANCE_ID,
};
use ec2_api::{Imds, NodeMetadata};
use ipamd::config::Config;
use ipamd::core::datastore::{Datastore, Eni, IpamKey, PodMeta};
use ipamd::core::pool::{PoolPolicy, PREFIX_SIZE};
use tokio::sync::Notify;

use super::PoolNode;
use crate::error::BenchError;

const MONITOR_HALF: Duration = Duration::from_millis(2500);
const RECONCILE_QUIET: Duration = Duration::from_secs(60);
const DECREASE_INTERVAL: Duration = Duration::from_secs(30);
const RECONCILE_COOLDOWN: Duration = Duration::from_secs(60);
const INSUFFICIENT_CIDR_COOLDOWN: Duration = Duration::from_secs(120);
const MIN_ENI_LIFETIME: Duration = Duration::from_secs(60);
const LEAK_INTERVAL: Duration = Duration::from_secs(3600);

#[derive(Debug, Default)]
struct State {
    last_action: Duration,
    last_decrease: Option<Duration>,
    insufficient_until: Option<Duration>,
    freed: HashMap<Ipv4Addr, Duration>,
}

/// See the module docs.
pub struct AnchorNode {
    ec2: Arc<dyn Ec2>,
    imds: Arc<dyn Imds>,
    clock: Arc<dyn Clock>,
    policy: PoolPolicy,
    config: Config,
    meta: NodeMetadata,
    ds: Mutex<Datastore>,
    st: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn u(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Counts as the anchor sees them.
#[derive(Debug, Clone, Copy)]
struct Counts {
    total: u32,
    /// total − assigned: cooldown included.
    available: u32,
    free_prefixes: u32,
}

impl PoolNode for AnchorNode {
    fn add(&self, key: &IpamKey) -> bool {
        let now = self.clock.now();
        lock(&self.ds).assign(key, &PodMeta::default(), now).is_ok()
    }
    fn del(&self, key: &IpamKey) {
        let now = self.clock.now();
        let _ = lock(&self.ds).unassign(key, now);
    }
}

impl AnchorNode {
    /// Startup, as the anchor's nodeInit: the node and its ENIs from IMDS, their addresses from one
    /// DescribeNetworkInterfaces (up to 12 tries).
    pub async fn init(
        ec2: Arc<dyn Ec2>,
        imds: Arc<dyn Imds>,
        clock: Arc<dyn Clock>,
        config: Config,
        max_pods: Option<u32>,
    ) -> Result<Arc<AnchorNode>, BenchError> {
        let meta = imds
            .node()
            .await
            .map_err(|e| BenchError::Node(e.to_string()))?;
        let limits = instance_limits::lookup(&meta.instance_type)
            .ok_or_else(|| BenchError::Node(format!("unknown type {}", meta.instance_type)))?;
        // Same max-pods, ENI and per-ENI limits as our engine: the comparison is about policy only.
        let policy =
            ipamd::core::pool::policy_for(limits, &config, max_pods).map_err(BenchError::Node)?;
        let node = Arc::new(AnchorNode {
            ec2,
            imds,
            policy,
            ds: Mutex::new(Datastore::new(config.ip_cooldown)),
            st: Mutex::new(State {
                last_action: clock.now(),
                ..State::default()
            }),
            clock,
            config,
            meta,
        });
        let enis: Vec<_> = node
            .imds
            .enis()
            .await
            .map_err(|e| BenchError::Node(e.to_string()))?
            .into_iter()
            .filter(|e| e.network_card == 0)
            .collect();
        let ids: Vec<String> = enis.iter().map(|e| e.eni_id.clone()).collect();
        // DescribeAllENIs: up to 12 tries; nodeInit fails (and the container restarts) when none works.
        let mut wait = Duration::from_millis(200);
        let mut described = None;
        for _ in 0..12 {
            match node.ec2.describe_network_interfaces(&ids).await {
                Ok(d) => {
                    described = Some(d);
                    break;
                }
                Err(_) => {
                    node.clock.sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
        let described = described.ok_or_else(|| {
            BenchError::Node("DescribeNetworkInterfaces failed 12 times at startup".into())
        })?;
        let now = node.clock.now();
        for ie in enis {
            let Some(mac) = datapath::MacAddr::parse(&ie.mac) else {
                continue;
            };
            let Some(primary) = ie.ipv4s.first().copied() else {
                continue;
            };
            let d = described.iter().find(|d| d.id == ie.eni_id);
            if let Some(d) = d {
                if !d.tags.contains_key(TAG_INSTANCE_ID) {
                    let mut tags = std::collections::BTreeMap::new();
                    tags.insert(TAG_INSTANCE_ID.to_string(), node.meta.instance_id.clone());
                    let _ = node.ec2.create_tags(&ie.eni_id, &tags).await;
                }
            }
            let (ips, prefixes) = match d {
                Some(d) => (d.secondary_ips.clone(), d.ipv4_prefixes.clone()),
                None => (ie.ipv4s[1..].to_vec(), ie.ipv4_prefixes.clone()),
            };
            let mut eni = Eni::new(&ie.eni_id, mac, ie.device_number, primary, ie.subnet_cidr);
            eni.attached_at = now;
            let mut ds = lock(&node.ds);
            ds.add_eni(eni);
            let _ = ds.add_ips(&ie.eni_id, &ips);
            let _ = ds.add_prefixes(&ie.eni_id, &prefixes);
        }
        if node.too_low() {
            node.increase().await;
        }
        Ok(node)
    }

    /// The pool manager loop and the hourly leaked-ENI check, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: Arc<Notify>) {
        let first_leak = Duration::from_secs(300).mul_f64(rand::random::<f64>());
        let mut next_leak = self.clock.now() + first_leak;
        loop {
            tokio::select! {
                () = shutdown.notified() => return,
                () = self.clock.sleep(MONITOR_HALF) => {}
            }
            self.update_pool_if_required().await;
            tokio::select! {
                () = shutdown.notified() => return,
                () = self.clock.sleep(MONITOR_HALF) => {}
            }
            let quiet = self.clock.now().saturating_sub(lock(&self.st).last_action);
            if quiet >= RECONCILE_QUIET {
                self.reconcile().await;
            }
            if self.clock.now() >= next_leak {
                next_leak = self.clock.now() + LEAK_INTERVAL;
                let filter = EniFilter {
                    vpc_id: Some(self.meta.vpc_id.clone()),
                    status: Some("available".into()),
                    tag_keys: vec![TAG_INSTANCE_ID.to_string()],
                    ..EniFilter::default()
                };
                let _ = self.ec2.list_network_interfaces(&filter).await;
            }
        }
    }

    fn counts(&self) -> Counts {
        let now = self.clock.now();
        let s = lock(&self.ds).stats(now);
        Counts {
            total: u(s.total),
            available: u(s.total - s.assigned),
            free_prefixes: u(s.free_prefixes),
        }
    }

    fn ip_targets(&self) -> bool {
        self.policy.uses_ip_targets()
    }

    /// Addresses short with IP targets (0 without them).
    fn ip_short(&self, c: &Counts) -> u32 {
        if !self.ip_targets() {
            return 0;
        }
        self.policy
            .warm_ip_target
            .saturating_sub(c.available)
            .max(self.policy.minimum_ip_target.saturating_sub(c.total))
    }

    fn too_low(&self) -> bool {
        let c = self.counts();
        if c.total >= self.policy.max_pods {
            return false;
        }
        if self.ip_targets() {
            return self.ip_short(&c) > 0;
        }
        let (per_unit, target) = if self.policy.prefix_delegation {
            (PREFIX_SIZE, self.policy.warm_prefix_target)
        } else {
            (self.policy.ips_per_eni, self.policy.warm_eni_target)
        };
        (target == 0 && c.available == 0) || c.available < per_unit * target
    }

    fn too_high(&self) -> bool {
        let c = self.counts();
        if self.ip_targets() {
            return self.over(&c) > 0;
        }
        self.policy.prefix_delegation && c.free_prefixes > self.policy.warm_prefix_target
    }

    fn over(&self, c: &Counts) -> u32 {
        c.available
            .saturating_sub(self.policy.warm_ip_target)
            .min(c.total.saturating_sub(self.policy.minimum_ip_target))
    }

    async fn update_pool_if_required(&self) {
        if self.config.disable_provisioning {
            return;
        }
        if self.too_low() {
            self.increase().await;
        } else if self.too_high() {
            self.decrease().await;
        }
        if self.should_remove_extra_enis() {
            self.try_free_eni().await;
        }
    }

    fn mark_action(&self) {
        lock(&self.st).last_action = self.clock.now();
    }

    /// Prefixes (PD) or addresses (secondary IPs) to ask for now.
    fn wanted(&self) -> u32 {
        let c = self.counts();
        let short = self.ip_short(&c);
        if self.policy.prefix_delegation {
            if self.ip_targets() {
                short.div_ceil(PREFIX_SIZE).max(1)
            } else {
                (PREFIX_SIZE * self.policy.warm_prefix_target)
                    .saturating_sub(c.available)
                    .div_ceil(PREFIX_SIZE)
                    .max(1)
            }
        } else if self.ip_targets() && short > 0 {
            short
        } else {
            self.policy.ips_per_eni
        }
    }

    async fn increase(&self) {
        let now = self.clock.now();
        if lock(&self.st).insufficient_until.is_some_and(|t| now < t) {
            return;
        }
        let slots_per_eni = self.policy.slots_per_eni();
        let target = {
            let ds = lock(&self.ds);
            let mut enis: Vec<&Eni> = ds.enis().collect();
            enis.sort_by_key(|e| e.device_number);
            enis.iter()
                .map(|e| {
                    let prefixes = u(e.prefixes().count());
                    let secondaries = u(e.ip_count()).saturating_sub(prefixes * PREFIX_SIZE);
                    (e.id.clone(), prefixes + secondaries)
                })
                .find(|(_, used)| *used < slots_per_eni)
        };
        let added = match target {
            Some((eni_id, used)) => {
                let count = self.wanted().min(slots_per_eni - used).max(1);
                let req = if self.policy.prefix_delegation {
                    IpRequest::Prefixes(count)
                } else {
                    IpRequest::Secondary(count)
                };
                self.assign(&eni_id, req).await
            }
            None => false,
        };
        if !added && u(lock(&self.ds).enis().count()) < self.policy.max_enis {
            self.allocate_eni().await;
        }
    }

    fn note_error(&self, e: &Ec2Error) {
        if matches!(e, Ec2Error::SubnetExhausted { .. }) {
            lock(&self.st).insufficient_until = Some(self.clock.now() + INSUFFICIENT_CIDR_COOLDOWN);
        }
    }

    async fn assign(&self, eni_id: &str, req: IpRequest) -> bool {
        let got = match self.ec2.assign_private_ips(eni_id, req).await {
            Ok(g) => g,
            Err(Ec2Error::IpLimitExceeded { .. }) => {
                self.resync(eni_id).await;
                return false;
            }
            Err(e) => {
                self.note_error(&e);
                if req.count() <= 1 {
                    return false;
                }
                let one = match req {
                    IpRequest::Secondary(_) => IpRequest::Secondary(1),
                    IpRequest::Prefixes(_) => IpRequest::Prefixes(1),
                };
                match self.ec2.assign_private_ips(eni_id, one).await {
                    Ok(g) => g,
                    Err(e) => {
                        self.note_error(&e);
                        return false;
                    }
                }
            }
        };
        let mut ds = lock(&self.ds);
        let _ = ds.add_ips(eni_id, &got.ips);
        let _ = ds.add_prefixes(eni_id, &got.prefixes);
        drop(ds);
        self.mark_action();
        true
    }

    async fn resync(&self, eni_id: &str) {
        let Ok(described) = self
            .ec2
            .describe_network_interfaces(&[eni_id.to_string()])
            .await
        else {
            return;
        };
        let now = self.clock.now();
        let freed: Vec<Ipv4Addr> = {
            let mut st = lock(&self.st);
            st.freed
                .retain(|_, t| now.saturating_sub(*t) < RECONCILE_COOLDOWN);
            st.freed.keys().copied().collect()
        };
        let skip = |ip: Ipv4Addr| freed.contains(&ip);
        let mut ds = lock(&self.ds);
        for d in described {
            let _ = ds.sync_eni(&d.id, &d.secondary_ips, &d.ipv4_prefixes, &skip);
        }
    }

    async fn allocate_eni(&self) {
        if self.config.subnet_discovery {
            let filter = SubnetFilter {
                ids: Vec::new(),
                vpc_id: Some(self.meta.vpc_id.clone()),
                availability_zone: Some(self.meta.availability_zone.clone()),
            };
            if let Err(e) = self.ec2.describe_subnets(&filter).await {
                self.note_error(&e);
                return;
            }
        }
        let count = self.wanted().min(self.policy.slots_per_eni()).max(1);
        let ips = if self.policy.prefix_delegation {
            IpRequest::Prefixes(count)
        } else {
            IpRequest::Secondary(count)
        };
        let mut tags = std::collections::BTreeMap::new();
        tags.insert(TAG_INSTANCE_ID.to_string(), self.meta.instance_id.clone());
        tags.insert(
            TAG_CREATED_AT.to_string(),
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + self.clock.wall())
                .to_string(),
        );
        let eni = match self
            .ec2
            .create_network_interface(CreateEniRequest {
                subnet_id: self.meta.subnet_id.clone(),
                description: format!("{ENI_DESCRIPTION_PREFIX}{}", self.meta.instance_id),
                security_groups: self.meta.security_groups.clone(),
                tags,
                ips,
            })
            .await
        {
            Ok(e) => e,
            Err(e) => {
                self.note_error(&e);
                return;
            }
        };
        let device = match self.ec2.describe_instance(&self.meta.instance_id).await {
            Ok(inst) => {
                let used: Vec<u32> = inst
                    .attachments
                    .iter()
                    .filter(|(card, _)| *card == 0)
                    .map(|(_, d)| *d)
                    .collect();
                (1..self.policy.max_enis.max(2)).find(|d| !used.contains(d))
            }
            Err(_) => None,
        };
        let Some(device) = device else {
            let _ = self.ec2.delete_network_interface(&eni.id).await;
            return;
        };
        let attachment = match self
            .ec2
            .attach_network_interface(&eni.id, &self.meta.instance_id, device, 0)
            .await
        {
            Ok(a) => a,
            Err(_) => {
                let _ = self.ec2.delete_network_interface(&eni.id).await;
                return;
            }
        };
        if self
            .ec2
            .set_delete_on_termination(&eni.id, &attachment)
            .await
            .is_err()
        {
            self.free_in_ec2(&eni.id).await;
            return;
        }
        // WaitForENIAndIPsAttached: poll IMDS, backoff from 100 ms, 12 tries.
        let mut wait = Duration::from_millis(100);
        for _ in 0..12 {
            if let Ok(enis) = self.imds.enis().await {
                if enis.iter().any(|e| e.eni_id == eni.id) {
                    break;
                }
            }
            self.clock.sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(60));
        }
        let Some(mac) = datapath::MacAddr::parse(&eni.mac) else {
            return;
        };
        let mut new = Eni::new(&eni.id, mac, device, eni.primary_ip, eni.subnet_cidr);
        new.attached_at = self.clock.now();
        let mut ds = lock(&self.ds);
        ds.add_eni(new);
        let _ = ds.add_ips(&eni.id, &eni.secondary_ips);
        let _ = ds.add_prefixes(&eni.id, &eni.ipv4_prefixes);
        drop(ds);
        self.mark_action();
    }

    async fn decrease(&self) {
        let now = self.clock.now();
        if lock(&self.st)
            .last_decrease
            .is_some_and(|t| now.saturating_sub(t) < DECREASE_INTERVAL)
        {
            return;
        }
        let c = self.counts();
        let cooldown = self.config.ip_cooldown;
        // (eni, ips, prefixes) to give back, highest device first.
        let plan: Vec<(String, Vec<Ipv4Addr>, Vec<ipnetwork::Ipv4Network>)> = {
            let ds = lock(&self.ds);
            let mut enis: Vec<&Eni> = ds.enis().collect();
            enis.sort_by_key(|e| std::cmp::Reverse(e.device_number));
            let mut out = Vec::new();
            if self.policy.prefix_delegation && !self.ip_targets() {
                let mut extra = c
                    .free_prefixes
                    .saturating_sub(self.policy.warm_prefix_target)
                    as usize;
                for e in enis {
                    let p: Vec<_> = e
                        .releasable_prefixes(now, cooldown)
                        .into_iter()
                        .take(extra)
                        .collect();
                    extra -= p.len();
                    if !p.is_empty() {
                        out.push((e.id.clone(), Vec::new(), p));
                    }
                }
            } else {
                let mut over = self.over(&c) as usize;
                for e in enis {
                    if self.policy.prefix_delegation {
                        let n = over / PREFIX_SIZE as usize;
                        let p: Vec<_> = e
                            .releasable_prefixes(now, cooldown)
                            .into_iter()
                            .take(n)
                            .collect();
                        over -= p.len() * PREFIX_SIZE as usize;
                        if !p.is_empty() {
                            out.push((e.id.clone(), Vec::new(), p));
                        }
                    } else {
                        let ips: Vec<_> = e
                            .releasable_ips(now, cooldown)
                            .into_iter()
                            .take(over)
                            .collect();
                        over -= ips.len();
                        if !ips.is_empty() {
                            out.push((e.id.clone(), ips, Vec::new()));
                        }
                    }
                }
            }
            out
        };
        lock(&self.st).last_decrease = Some(now);
        for (eni_id, ips, prefixes) in plan {
            {
                let mut ds = lock(&self.ds);
                if ds.remove_ips(&eni_id, &ips, now).is_err()
                    || ds.remove_prefixes(&eni_id, &prefixes, now).is_err()
                {
                    continue;
                }
            }
            match self
                .ec2
                .unassign_private_ips(&eni_id, &ips, &prefixes)
                .await
            {
                Ok(()) => {
                    let mut st = lock(&self.st);
                    for ip in ips
                        .iter()
                        .copied()
                        .chain(prefixes.iter().map(|p| p.network()))
                    {
                        st.freed.insert(ip, now);
                    }
                }
                Err(_) => {
                    let mut ds = lock(&self.ds);
                    let _ = ds.add_ips(&eni_id, &ips);
                    let _ = ds.add_prefixes(&eni_id, &prefixes);
                }
            }
            self.mark_action();
        }
    }

    fn should_remove_extra_enis(&self) -> bool {
        if self.ip_targets() {
            return true;
        }
        let c = self.counts();
        let (per_unit, target) = if self.policy.prefix_delegation {
            (PREFIX_SIZE, self.policy.warm_prefix_target)
        } else {
            (self.policy.ips_per_eni, self.policy.warm_eni_target)
        };
        c.available >= (target + 1) * per_unit
    }

    async fn try_free_eni(&self) {
        let now = self.clock.now();
        let c = self.counts();
        let cooldown = self.config.ip_cooldown;
        let candidate = {
            let ds = lock(&self.ds);
            let mut enis: Vec<&Eni> = ds.enis().collect();
            enis.sort_by_key(|e| std::cmp::Reverse(e.device_number));
            enis.into_iter()
                .find(|e| {
                    let ips = u(e.ip_count());
                    let needed = self.ip_targets()
                        && (c.total.saturating_sub(ips) < self.policy.minimum_ip_target
                            || c.available.saturating_sub(ips) < self.policy.warm_ip_target);
                    !e.is_primary
                        && e.assigned_count() == 0
                        && e.cooldown_count(now, cooldown) == 0
                        && now.saturating_sub(e.attached_at) >= MIN_ENI_LIFETIME
                        && !needed
                })
                .map(|e| e.id.clone())
        };
        let Some(eni_id) = candidate else {
            return;
        };
        if lock(&self.ds).remove_eni(&eni_id, now, false).is_err() {
            return;
        }
        self.mark_action();
        self.free_in_ec2(&eni_id).await;
    }

    /// FreeENI: look up the attachment, detach, wait 2 s, delete (retried).
    async fn free_in_ec2(&self, eni_id: &str) {
        let attachment = match self
            .ec2
            .describe_network_interfaces(&[eni_id.to_string()])
            .await
        {
            Ok(d) => d.into_iter().next().and_then(|d| d.attachment_id),
            Err(_) => return,
        };
        if let Some(a) = attachment {
            if self.ec2.detach_network_interface(&a).await.is_err() {
                return;
            }
            self.clock.sleep(Duration::from_secs(2)).await;
        }
        let mut wait = Duration::from_millis(500);
        for _ in 0..12 {
            match self.ec2.delete_network_interface(eni_id).await {
                Ok(()) | Err(Ec2Error::NotFound { .. }) => return,
                Err(_) => {
                    self.clock.sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    async fn reconcile(&self) {
        let Ok(imds) = self.imds.enis().await else {
            return;
        };
        let imds: Vec<_> = imds.into_iter().filter(|e| e.network_card == 0).collect();
        let (unknown, differing) = {
            let ds = lock(&self.ds);
            let unknown = imds.iter().any(|ie| ds.eni(&ie.eni_id).is_none());
            let differing: Vec<String> = imds
                .iter()
                .filter_map(|ie| {
                    let e = ds.eni(&ie.eni_id)?;
                    let mut a: Vec<Ipv4Addr> = e.ips().collect();
                    a.sort();
                    let mut b: Vec<Ipv4Addr> = ie.ipv4s.iter().skip(1).copied().collect();
                    b.extend(ie.ipv4_prefixes.iter().flat_map(|p| p.iter()));
                    b.sort();
                    (a != b).then(|| e.id.clone())
                })
                .collect();
            (unknown, differing)
        };
        if unknown {
            let ids: Vec<String> = imds.iter().map(|e| e.eni_id.clone()).collect();
            let _ = self.ec2.describe_network_interfaces(&ids).await;
        }
        for id in differing {
            self.resync(&id).await;
        }
    }
}
